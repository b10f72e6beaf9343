"""Regenerate benchmarks/RESULTS.md (and the per-layer plot) from the JSON the benchmarks wrote.

    python -m benchmarks.make_results DIR [--out benchmarks/RESULTS.md]

DIR holds kernels.json (bench_kernels.py), step.json (bench_step.py) and optionally
quality/runs.jsonl (quality.py), ablation/runs.jsonl (ablation.py), large.json (bench_large.py) and cpu.json (bench_cpu.py). Nothing in RESULTS.md is
typed by hand.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path




def _load(d: Path, name: str):
    for p in (d / name, d / name.split(".")[0] / name):
        if p.is_file():
            return json.loads(p.read_text())
    return None


def _fmt(v, nd=3):
    return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def kernels_section(k, plot_name):
    m = k["machine"]
    gpu = k["engine"] == "cuda"
    out = [f"## Kernels ({'GPU: ' + str(m.get('gpu')) if gpu else 'CPU, engine ' + k['engine'] + ': not comparable with GPU figures'})",
           "", f"Measured {m['date']}, commit {m.get('commit')}, tile {k['tile']}, batch {k['batch']}; "
           f"driver {m.get('driver')}, CUDA runtime {m.get('cuda_runtime')}, CuPy {m.get('cupy')}, "
           f"PyTorch {m.get('torch')}, cuDNN {m.get('cudnn')}." if gpu else
           f"Measured {m['date']}, commit {m.get('commit')}, on {m['machine']} with {m['cpus']} cores (CPU timings).", ""]
    if k.get("ceilings"):
        out += ["Ceilings measured in the same run: " + ", ".join(f"{a} {_fmt(b, 1)}" for a, b in k["ceilings"].items()), ""]
    out += ["| op | layer | direction | variant | precision | shape | ms | TFLOP/s or GB/s | cuDNN fp32 ms | cuDNN tf32 ms "
            "| cuDNN / ours (same precision) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in k["rows"]:
        if "TFLOPs" in r:
            perf = f"{r['TFLOPs']:.2f} TFLOP/s" if r["TFLOPs"] >= 0.1 else f"{r['TFLOPs'] * 1e3:.2f} GFLOP/s"
        else:
            perf = f"{r['GBps']:.1f} GB/s" if "GBps" in r else r.get("error", "")
        out.append(f"| {r['op']} | {r['layer']} | {r['direction']} | {r['variant']} | {r.get('precision', 'fp32')} | {r['shape']} | {_fmt(r.get('ms'))} | "
                   f"{perf} | {_fmt(r.get('cudnn_ms'))} | {_fmt(r.get('cudnn_tf32_ms'))} | {_fmt(r.get('ratio_vs_cudnn'), 2)} |")
    if plot_name:
        out += ["", f"![per-layer TFLOP/s]({plot_name})"]
    return out


def plot_layers(k, path):
    """Per-layer TFLOP/s of the conv forward (default variant) vs cuDNN."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in k["rows"] if r["op"] == "conv3x3" and "TFLOPs" in r]
    if not rows:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, d in zip(axes, ("forward", "backward_data", "backward_weight")):
        for j, prec in enumerate(("fp32", "tf32")):
            rs = [r for r in rows if r["direction"] == d and r.get("precision", "fp32") == prec]
            best = {}
            for r in rs:  # the fastest variant per layer
                if r["layer"] not in best or r["TFLOPs"] > best[r["layer"]]["TFLOPs"]:
                    best[r["layer"]] = r
            if not best:
                continue
            layers = list(best)
            x0 = [i + 0.2 * (2 * j) for i in range(len(layers))]
            ax.bar(x0, [best[l]["TFLOPs"] for l in layers], width=0.2, label=f"unetcu {prec} (best variant)")
            if all("ratio_vs_cudnn" in best[l] for l in layers):  # cuDNN TFLOP/s = ours / (cuDNN ms / our ms)
                ax.bar([x + 0.2 for x in x0], [best[l]["TFLOPs"] / best[l]["ratio_vs_cudnn"] for l in layers], width=0.2,
                       label=f"cuDNN {prec}")
            ax.set_xticks(range(len(layers)), layers, rotation=70, fontsize=7)
        ax.set_title(f"conv3x3 {d}")
        ax.set_ylabel("TFLOP/s")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    m = k["machine"]
    where = (f"{m.get('gpu')}, {m['date']}" if k["engine"] == "cuda"
             else f"CPU, engine {k['engine']}, tiny shapes, {m['date']}: not GPU speeds")
    fig.suptitle(f"per-layer TFLOP/s ({where})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def step_section(s):
    m = s["machine"]
    out = [f"## Training step ({'GPU: ' + str(m.get('gpu')) if s['engine'] == 'cuda' else 'CPU: not comparable with GPU figures'})", "",
           f"Measured {m['date']}, commit {m.get('commit')}. PyTorch in the same precision as the row "
           "(fp32: TF32 off; tf32: TF32 on for convolutions and matmuls). graph: the step as one CUDA graph; "
           "unfused: fuse=False (crop_concat materialised, ReLU masks read in both backward kernels).", "",
           "| preset | batch | engine | precision | our step ms | graph step ms | unfused step ms | our forward ms | our peak MB "
           "| PyTorch step ms | PyTorch forward ms | PyTorch peak MB | PyTorch / ours |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["steps"]:
        o, t = r["ours"], r.get("torch", {})
        g, u = r.get("ours_graph", {}), r.get("ours_unfused", {})
        out.append(f"| {r['preset']} | {r['batch']} | {r.get('engine', s['engine'])} | {r.get('precision', 'fp32')} | "
                   f"{_fmt(o['step_ms'], 2)} | {_fmt(g.get('step_ms'), 2) or g.get('error', '')} | "
                   f"{_fmt(u.get('step_ms'), 2) or u.get('error', '')} | {_fmt(o.get('forward_ms'), 2)} | "
                   f"{_fmt(o.get('peak_MB'), 0)} | {_fmt(t.get('step_ms'), 2)} | {_fmt(t.get('forward_ms'), 2)} | "
                   f"{_fmt(t.get('peak_MB'), 0)} | {_fmt(r.get('ratio_vs_torch'), 2)} |")
    a = s.get("augment")
    if a:
        out += ["", f"Weight map of a 512x512 image with {a['weightmap_cells']} cells: {a['weightmap_512_ms']:.1f} ms (CPU). "
                f"Elastic warp of a 572 tile (image bicubic, labels nearest, weights bilinear): ours {a['warp_ours_ms']:.2f} ms "
                f"on {a['warp_ours_where']}; scipy.ndimage {a['warp_scipy_cpu_ms']:.1f} ms on the CPU"
                + (f"; elasticdeform {a['warp_elasticdeform_cpu_ms']:.1f} ms" if a.get("warp_elasticdeform_cpu_ms") else "; elasticdeform not installed") + "."]
    return out


def conv_ratio_section(k):
    """Per layer, the default variant (default tile) of each direction and precision: ratio to cuDNN
    in the same precision, and the layers below 1.0x."""
    from unetcu import ops
    cols = [(d, p) for d in ("forward", "backward_data", "backward_weight") for p in ("fp32", "tf32")]
    default = {(d, p): ops.default_variant(f"conv3x3_{d}", p) for d, p in cols}
    table, layers = {}, []
    for r in k["rows"]:
        if r["op"] != "conv3x3" or (r["direction"], r.get("precision", "fp32")) not in default:
            continue
        key = (r["direction"], r.get("precision", "fp32"))
        if r["variant"] != default[key]:
            continue
        if r["layer"] not in layers:
            layers.append(r["layer"])
        table[r["layer"], key] = r
    if not table:
        return []
    gpu = k["engine"] == "cuda"
    out = ["## conv3x3 per layer: default variants vs cuDNN in the same precision", "",
           "cuDNN time / our time (> 1: we are faster), default variant and tile of each direction; "
           + ("" if gpu else "CPU run: no cuDNN, so only our times (ms) are shown.") , "",
           "| layer | " + " | ".join(f"{d} {p} (v{default[d, p]})" for d, p in cols) + " |",
           "|---|" + "---|" * len(cols)]
    below = []
    for layer in layers:
        cells = []
        for c in cols:
            r = table.get((layer, c))
            if r is None:
                cells.append("")
            elif "ratio_vs_cudnn" in r:
                cells.append(f"x{r['ratio_vs_cudnn']:.3g}")
                if r["ratio_vs_cudnn"] < 1.0:
                    below.append(f"{layer} {c[0]} {c[1]} x{r['ratio_vs_cudnn']:.3g}")
            else:
                cells.append(r.get("error", f"{_fmt(r.get('ms'))} ms"))
        out.append(f"| {layer} | " + " | ".join(cells) + " |")
    if gpu:
        out += ["", f"Below 1.0x ({len(below)}): " + ("; ".join(below) if below else "none") + "."]
    return out


def ablation_section(runs):
    """The recipe ablation (benchmarks/ablation.py's runs.jsonl), one table per set."""
    from benchmarks.ablation import report
    r0 = runs[0]
    return ["## Training recipe ablation (benchmarks/ablation.py)", "",
            f"Measured {r0.get('date', '')} on {r0.get('machine', '')}: the small network trained in the peer harness "
            "(PyTorch at its CPU speed on unetcu's tiles, weight maps, overlap-tile prediction and metrics; unetcu's "
            "gradients equal this net's), one factor changed at a time from unetcu's former recipe (SGD momentum "
            "0.99, lr 1e-3, clip 1, elastic warp, He init) and from the plain PyTorch recipe (Adam 1e-3, random "
            "windows with flips, PyTorch's init, w0 0). rand_error, info_error: foreground-restricted, best over "
            "thresholds; seg: connected components of p > 0.5; seg_ws_prob: seeded watershed from cores p > 0.9; "
            "seg_ws_dist: watershed from the distance transform's maxima at least 7 px apart (predict's watershed spaces "
            "them by the training objects' size instead: see the quality table).", report(runs), ""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    a = ap.parse_args(argv)
    d, out = Path(a.dir), Path(a.out)
    k, s = _load(d, "kernels.json"), _load(d, "step.json")
    qf = d / "quality" / "runs.jsonl"
    q = [json.loads(line) for line in qf.open()] if qf.exists() else []
    abl = [json.loads(line) for line in open(d / "ablation" / "runs.jsonl")] if (d / "ablation" / "runs.jsonl").exists() else []
    lg, cpu = _load(d, "large.json"), _load(d, "cpu.json")
    if not (k or s or q or abl or lg or cpu):
        print(f"make_results: no kernels.json, step.json, quality/runs.jsonl, ablation/runs.jsonl or large.json in {d}",
              file=sys.stderr)
        return 1
    lines = ["# unetcu benchmark results", "",
             f"Generated by `benchmarks/make_results.py` from the JSON the benchmarks wrote to `{d.name}/` "
             "(`benchmarks/device_check.sh` on a GPU machine); do not edit by hand.", ""]
    if k:
        plot = out.with_name("layers.png")
        lines += conv_ratio_section(k) + [""]
        lines += kernels_section(k, plot.name if plot_layers(k, plot) else None) + [""]
    if s:
        lines += step_section(s) + [""]
    if q:
        from benchmarks.quality import section as quality_section
        lines += quality_section(q)
    if abl:
        lines += ablation_section(abl)
    if lg:
        from benchmarks.bench_large import section as large_section
        lines += large_section(lg) + [""]
    if cpu:
        from benchmarks.bench_cpu import section as cpu_section
        lines += cpu_section(cpu) + [""]
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
