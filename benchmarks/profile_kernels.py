"""`unetcu profile`'s counters for every registered variant of every op at the paper network's layer
shapes (572 tile, batch 1, depth 5, 64 channels), written as a section of benchmarks/RESULTS.md.

    python -m benchmarks.profile_kernels [--sample 3] [--jobs 2] [--out DIR] [--results benchmarks/RESULTS.md]

The emulator cannot run a paper-sized grid instrumented in reasonable time, so each launch runs a
sample of its blocks (`--sample S`: per grid dimension the first, the last and S-2 between) and the
counts are scaled (profile.sample_weights). The sample is checked first on a smaller layer (the
small preset's 16 -> 16 conv at 92 px), full grid against sample, and the largest deviation is
printed with the table. Layers: every distinct non-convolution layer, and for the 3x3 convolutions
one per level (down{l}.conv2 and the concatenating up{l}.conv1): the levels differ in size and
channels, the two convs of a level hardly. Backward-weight's variant 1 (one thread per weight, each
looping over every pixel) is profiled at the small layer only: one of its blocks at the paper's
first level is 80 M instrumented loads.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

BEGIN, END = "<!-- profile_kernels:begin -->", "<!-- profile_kernels:end -->"
KEYS = ("l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum", "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum",
        "l1tex__t_requests_pipe_lsu_mem_global_op_st.sum", "l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum",
        "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum", "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum",
        "unetcu__compulsory_bytes_read", "unetcu__compulsory_bytes_written")


def _setup(sample):
    os.environ["UNETCU_PROFILE"] = "1"
    if sample:
        os.environ["UNETCU_PROFILE_SAMPLE"] = str(sample)
    else:
        os.environ.pop("UNETCU_PROFILE_SAMPLE", None)


def cases(tile=572, depth=5, base=64):
    """(layer dict, case index) pairs: which op cases of bench_kernels.CASES run on which layer."""
    from benchmarks.bench_kernels import CASES
    from unetcu import UNet
    from unetcu.distributed import dropout_chw
    net = UNet(depth=depth, base_channels=base, engine="numpy")
    layers = net.layers(tile, batch=1)
    c, h, w = dropout_chw(net.config, tile)
    layers += [dict(op="dropout", name=f"down{depth - 1}.dropout", N=1, C=c, H=h, W=w),
               dict(op="update", name="all params", n=net.n_params)]
    out, seen = [], set()
    for L in layers:
        if L["op"] == "conv3x3" and not L["name"].endswith("conv2"):
            continue  # one conv per level (conv2); the concatenating conv1s come with crop_concat
        key = tuple(sorted((k, v) for k, v in L.items() if k != "name"))
        if key in seen:
            continue
        seen.add(key)
        out += [(L, i) for i in range(len(CASES[L["op"]]))]
    return out


def profile_case(args):
    """Every variant of one case on one layer, under the profiler; the launches' summaries."""
    L, i, sample, skip_slow = args
    _setup(sample)
    import numpy as np

    from benchmarks.bench_kernels import CASES, Bench
    from unetcu import ops
    from unetcu.engines import profile

    class One(Bench):  # one buffer, not three rotations: nothing is timed
        def rand(self, *shape, scale=1.0):
            a = (self.rng.standard_normal(shape) * scale).astype(np.float32)
            return [a, a, a]

    case = CASES[L["op"]][i]
    b = One("emu", None, 1)
    x = case.inputs(b, L)
    rows = []
    for rec in ops.variants(case.op):
        if skip_slow and rec.op == "conv3x3_backward_weight" and rec.number == 1:
            continue
        kw = dict(engine="emu", variant=rec.number, **({"precision": rec.precision} if rec.precision != "fp32" else {}))
        t = time.time()
        with profile.collect() as got:
            case.ours(x, 0, **kw)
        for g in got:
            rows.append(dict(layer=L["name"], op=rec.op, variant=rec.number, precision=rec.precision, kernel=g["kernel"],
                             grid=g["grid"], block=g["block"], grid_blocks=g["grid_blocks"], sampled_blocks=g["sampled_blocks"],
                             registers=g["registers"], occupancy=g["occupancy"], metrics=g["metrics"],
                             waste=[s for s in g["sites"] if s.get("sectors", s.get("wavefronts")) > s["ideal"] + 1e-9][:2],
                             seconds=round(time.time() - t, 1)))
        print(f"{L['name']:<16} {rec.op:<32} v{rec.number} {time.time() - t:6.1f} s", file=sys.stderr, flush=True)
    return rows


SMALL = dict(op="conv3x3", name="16->16 @92 (small preset)", N=1, C=16, H=92, W=92, K=16)


def sample_check(sample):
    """Full grid against the sample on the small preset's 16->16 conv at 92 px, every direction's
    default variant: the largest relative deviation per key; and the full grid's rows of the
    variants left out at the paper's shapes (backward-weight 1)."""
    small = SMALL
    from benchmarks.bench_kernels import CASES
    from unetcu import ops
    out, extra = {}, []
    for i, case in enumerate(CASES["conv3x3"]):
        with mp.get_context("spawn").Pool(1) as pool:  # each in a fresh process: the build mode is per process
            full = pool.map(profile_case, [(small, i, None, False)])[0]
        with mp.get_context("spawn").Pool(1) as pool:
            part = pool.map(profile_case, [(small, i, sample, False)])[0]
        d = ops.default_variant(case.op)
        extra += [r for r in full if r["op"] == "conv3x3_backward_weight" and r["variant"] == 1]
        for f, p in zip(full, part):
            if f["variant"] != d:
                continue
            dev = max(abs(p["metrics"][k] - f["metrics"][k]) / f["metrics"][k] for k in KEYS if f["metrics"][k])
            out[f["kernel"]] = dict(deviation=dev, sampled=p["sampled_blocks"], blocks=f["grid_blocks"])
    return out, extra


def _r(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def section(rows, check, sample, date) -> str:
    out = [BEGIN, "## Kernel counters from the emulator (`unetcu profile`, no GPU)", "",
           f"Generated {date} by `python -m benchmarks.profile_kernels --sample {sample}` on the CPU emulator: counts, "
           "not times (kernels/emu/emu_profile.h states the model; the README's \"Nsight Compute counters without a "
           "GPU\" what they mean). Paper network (572 tile, batch 1, 64 base channels, depth 5), one 3x3 convolution "
           "per level (conv2, and the concatenating conv1 of the expanding levels), every registered variant. "
           f"Each launch runs a sample of its blocks (per grid dimension {sample} indices: first, last, between) and the "
           "counts are scaled; the sample against the full grid on the small preset's 16->16 conv at 92 px, largest "
           "relative deviation over the memory counters: " +
           "; ".join(f"{k} {v['deviation'] * 100:.2f} % ({v['sampled']} of {v['blocks']} blocks)" for k, v in check.items()) +
           ". Backward-weight variant 1 is profiled at that small layer only (at the paper's first level one of its "
           "blocks is ~80 M instrumented loads): its rows are the last. The tf32 variants' shared-memory counts "
           "(wmma fragments) follow the emulator's assumed spread of a tile over the lanes (CUDA leaves it "
           "unspecified): their bank conflicts are the model's, for a GPU to confirm.", "",
           "Columns: global sectors per request for loads and stores (ours / ideal: the fewest 32-byte sectors the "
           "request's distinct bytes fit), shared-memory wavefronts per load request and bank conflicts per 1000 "
           "shared load requests, theoretical occupancy on sm_90 from ptxas's registers, compulsory DRAM bytes "
           "(read + written), FLOPs from the op registry, and the roofline bound on an H200 at the variant's "
           "precision (fp32 67 TFLOP/s or tf32 495 TFLOP/s, 4.8 TB/s): a bound, not a time.", "",
           "| layer | op | v | kernel | blocks run / grid | ld sectors/req (ideal) | st sectors/req (ideal) | "
           "shared wf/ld req | conflicts /1k ld req | occupancy | regs | MB | GFLOP | H200 bound us |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        cells = []
        for op in ("ld", "st"):
            req = m[f"l1tex__t_requests_pipe_lsu_mem_global_op_{op}.sum"]
            cells.append(f"{m[f'l1tex__t_sectors_pipe_lsu_mem_global_op_{op}.sum'] / req:.2f} "
                         f"({m[f'unetcu__ideal_sectors_op_{op}'] / req:.2f})" if req else "-")
        sreq = m.get("unetcu__shared_requests_op_ld", 0)
        wf = m["l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum"] / sreq if sreq else None
        bc = 1000 * m["l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum"] / sreq if sreq else None
        prec = r["precision"] if r["precision"] in ("fp32", "tf32") else "fp32"
        occ = m["sm__maximum_warps_per_active_cycle_pct"]
        nbytes = (m["unetcu__compulsory_bytes_read"] + m["unetcu__compulsory_bytes_written"]) / 1e6
        run = f"{r['sampled_blocks']} / {r['grid_blocks']}" if r["sampled_blocks"] else f"all {r['grid_blocks']}"
        flop = m["unetcu__flop"]
        out.append(f"| {r['layer']} | {r['op']} | {r['variant']} | {r['kernel']} | {run} | {cells[0]} | {cells[1]} | "
                   f"{_r(wf)} | {_r(bc, 0)} | {_r(occ, 1)} % | {r['registers'] if r['registers'] is not None else '-'} | "
                   f"{nbytes:.1f} | {_r(None if flop is None else flop / 1e9)} | {m[f'unetcu__roofline_bound_us_h200_{prec}']:.1f} |")
    out += ["", END]
    return "\n".join(out)


def write_section(results: Path, text: str) -> None:
    doc = results.read_text()
    if BEGIN in doc:
        doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    results.write_text(doc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile_kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=int, default=3, help="block indices per grid dimension (default 3)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    ap.add_argument("--out", default="profile-out", help="folder for profile.json (default profile-out)")
    ap.add_argument("--results", help="write the table into this RESULTS.md (between its profile_kernels markers)")
    ap.add_argument("--only", help="profile only layers whose name contains this (a quick look)")
    ap.add_argument("--from-json", metavar="FILE", help="only write the table again from a profile.json")
    a = ap.parse_args(argv)
    if a.from_json:
        d = json.loads(Path(a.from_json).read_text())
        text = section(d["rows"], d["check"], d["sample"], d["date"])
        if a.results:
            write_section(Path(a.results), text)
        print(text)
        return 0
    if a.sample < 3 or a.jobs < 1:
        ap.error("--sample needs >= 3 and --jobs >= 1")
    os.makedirs(a.out, exist_ok=True)
    os.environ.setdefault("UNETCU_EMU_THREADS", "1")
    check, extra = sample_check(a.sample)
    print(f"sample check: {json.dumps(check)}", file=sys.stderr)
    todo = [(L, i, a.sample, True) for L, i in cases() if not a.only or a.only in L["name"]]
    todo.sort(key=lambda t: -(t[0].get("C", 1) * t[0].get("H", 1) ** 2 if t[0]["op"] == "conv3x3" else 0))  # long first
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        done = pool.map(profile_case, todo, chunksize=1)
    rows = [r for chunk in done for r in chunk]
    names = [L["name"] for L, _ in cases()]
    rows.sort(key=lambda r: (names.index(r["layer"]) if r["layer"] in names else 0, r["op"], r["variant"]))
    rows += extra
    date = time.strftime("%Y-%m-%d", time.gmtime())
    (Path(a.out) / "profile.json").write_text(json.dumps(dict(date=date, sample=a.sample, check=check, rows=rows), indent=1))
    text = section(rows, check, a.sample, date)
    if a.results:
        write_section(Path(a.results), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
