"""Block-wise prediction (unetcu.large, Dask + zarr) against the in-memory path: peak memory and
throughput as the image grows, vs block size and worker count.

Writes synthetic images of --sizes pixels a side as zarr (uint8, 512x512 chunks, built chunk by
chunk from a few synthetic-cell patches, so writing never holds the image), saves an untrained
tiny-preset model (depth 3, 8 channels; the weights do not change the work), and predicts each
image in a fresh subprocess:
  in-memory   the image read whole, data.standardise, tiling.predict_probs, probs written to zarr
              (what `unetcu predict` does for one page, with a zarr output)
  blocks      large.predict_zarr on Dask's threaded scheduler, --workers threads, --blocks pixels
The subprocess reports its own peak RSS (getrusage: the scheduler's threads are in it) and its
wall time. Every block-wise result is compared with the in-memory one of the same image.

    python -m benchmarks.bench_large [--sizes 2048 4096 8192] [--blocks 388 776 1552] [--workers 1 2]
        [--matrix-up-to 2048] [--tile T] [--json large.json] [--results benchmarks/RESULTS.md] [--figure]
    python -m benchmarks.bench_large --plan 8192:388:1 --no-memory --append   # one more run, added

The full blocks x workers matrix runs on sizes up to --matrix-up-to; larger sizes run the
in-memory path and the middle block size with the most workers (the numpy engine predicts about
0.2 Mpx/s on 2 cores, so 8192^2 takes minutes per run). --figure also draws
benchmarks/figures/blocks.png (a block grid over a stitched prediction; --model CKPT for a
trained net). Updates only its own section of RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import update_section

HERE = Path(__file__).resolve().parent
SECTION = "## Block-wise prediction of large images (benchmarks/bench_large.py)"

CHILD = r"""
import json, resource, sys, time
import numpy as np, zarr
mode, model, src, out, block, workers, tile = sys.argv[1:8]
t0 = time.perf_counter()
if mode == "memory":
    from unetcu.data import standardise
    from unetcu.model import UNet
    from unetcu.tiling import predict_probs
    m = UNet.load(model, engine="numpy")
    img = zarr.open_array(src, mode="r")[...]
    probs = predict_probs(m, standardise(img), tile=int(tile))
    del img
    z = zarr.create_array(out, shape=probs.shape, chunks=(1, 1024, 1024), dtype="float32")
    z[...] = probs
else:
    from unetcu.large import predict_zarr
    predict_zarr(model, src, out, engine="numpy", tile=int(tile), block=int(block), workers=int(workers),
                 progress=False)
dt = time.perf_counter() - t0
print(json.dumps(dict(seconds=dt, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def write_image(path: Path, size: int, seed: int = 0):
    """A size x size uint8 zarr of synthetic touching cells: 512x512 chunks, each one of four
    generated patches, flipped at random (the content only has to look like cells)."""
    import zarr
    from unetcu.data import synthetic_cells
    patches = [np.round(synthetic_cells((512, 512), seed=seed * 10 + k)[0] * 255).astype(np.uint8) for k in range(4)]
    z = zarr.create_array(str(path), shape=(size, size), chunks=(512, 512), dtype="uint8")
    rng = np.random.default_rng(seed)
    for y in range(0, size, 512):
        for x in range(0, size, 512):
            p = patches[rng.integers(4)][:: rng.choice((1, -1)), :: rng.choice((1, -1))]
            z[y:y + 512, x:x + 512] = p[:min(512, size - y), :min(512, size - x)]


def run(mode, model, src, out, tile, block=0, workers=0) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(model), str(src), str(out), str(block), str(workers),
                        str(tile)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"bench_large: {mode} run failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def max_diff(a_path, b_path, blocks: bool) -> float:
    import dask.array as da
    a = da.from_zarr(str(a_path))
    b = da.from_zarr(str(b_path), component="probs") if blocks else da.from_zarr(str(b_path))
    return float(abs(a - b).max().compute())


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), no GPU, Python {platform.python_version()}"


def section(res: dict) -> list[str]:
    runs = sorted(res["runs"], key=lambda r: (r["size"], r["mode"] != "memory", r.get("block") or 0, r.get("workers") or 0))
    out = [SECTION, "",
           f"Measured {res['date']} on {res['machine']}; dask {res['versions']['dask']}, zarr {res['versions']['zarr']}; "
           f"numpy engine, tiny preset untrained (depth 3, 8 channels), tile {res['tile']} (output {res['out_tile']}), "
           "uint8 zarr input in 512x512 chunks, float32 probabilities written to zarr. Each run in a fresh process: "
           "peak RSS of that process (Dask's threads included), wall time from opening the input to the last block "
           "written (block-wise: the statistics pass included). max |dp|: largest difference of any probability from "
           "the in-memory result of the same image (per-image statistics summed in another order; 0 = bit for bit). "
           "The cores were shared with other jobs (this benchmark ran at nice 15), so the seconds are upper bounds. "
           "The in-memory peak grows with the image (the image, its float64 standardisation, the padded copy and "
           "the probabilities); the block-wise peak is set by what each worker holds: its block's window and the "
           "numpy engine's forward pass over up to --batch (4) tiles of the block, whatever the image size.", "",
           "| image | path | block | workers | blocks | peak RSS MB | seconds | Mpx/s | max \\|dp\\| vs in-memory |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        blk = f"{r['block']}" if r["mode"] == "blocks" else ""
        timing = (f"{r['seconds']:.1f} | {r['mpx_s']:.3f}" if r.get("seconds") else
                  f"stopped after {r.get('stopped_after_blocks')} of {r['n_blocks']} blocks (peak so far) | ")
        out.append(f"| {r['size']}² | {'in-memory' if r['mode'] == 'memory' else 'blocks (Dask)'} | {blk} | "
                   f"{r.get('workers', '') or ''} | {r.get('n_blocks', '') or ''} | {r['peak_rss_mb']:.0f} | {timing} | "
                   f"{'' if r.get('max_diff') is None else format(r['max_diff'], '.1e')} |")
    return out


def figure(out: Path, model_path, work: Path):
    """A stitched block-wise prediction with its block grid: the blocks' borders fall on tile
    borders, and nothing shows at them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import zarr
    from unetcu.data import synthetic_cells
    from unetcu.large import predict_zarr
    img, _ = synthetic_cells((467, 625), seed=11)
    zarr.create_array(str(work / "fig.zarr"), shape=img.shape, chunks=(100, 100), dtype="float32", overwrite=True)[...] = img
    s = predict_zarr(model_path, work / "fig.zarr", work / "fig-out.zarr", engine="numpy", tile=92, block=156,
                     progress=False, overwrite=True)
    p = zarr.open_group(str(work / "fig-out.zarr"), mode="r")["probs"][1]
    from unetcu.data import standardise
    from unetcu.model import UNet
    from unetcu.tiling import predict_probs
    ref = predict_probs(UNet.load(model_path, engine="numpy"), standardise(img), tile=92)[1]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.6))
    ax[0].imshow(img, cmap="gray"), ax[0].set_title("input (zarr, 100x100 chunks)")
    ax[1].imshow(p, cmap="magma", vmin=0, vmax=1)
    ax[1].set_title(f"P(cell), stitched from {s['blocks']} blocks of {s['block']} px (tile {s['tile']})")
    ax[2].imshow(np.abs(p - ref), cmap="gray", vmin=0, vmax=1e-6)
    ax[2].set_title(f"|blocks - in memory|, max {np.abs(p - ref).max():.1e} (black = 0)")
    b = s["block"]
    for a in ax[1:]:
        for y in range(b, img.shape[0], b):
            a.axhline(y - 0.5, color="cyan", lw=0.8)
        for x in range(b, img.shape[1], b):
            a.axvline(x - 0.5, color="cyan", lw=0.8)
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--blocks", type=int, nargs="+", default=[388, 776, 1552])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--matrix-up-to", type=int, default=2048)
    ap.add_argument("--tile", type=int, help="input tile (default: predict's default for the largest size)")
    ap.add_argument("--json", default="large.json")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"), help="RESULTS.md to update ('' for none)")
    ap.add_argument("--figure", action="store_true")
    ap.add_argument("--append", action="store_true", help="add these runs to those already in --json")
    ap.add_argument("--plan", nargs="+", metavar="SIZE:BLOCK:WORKERS",
                    help="run exactly these block-wise runs (and each size's in-memory run unless --no-memory)")
    ap.add_argument("--no-memory", action="store_true", help="skip the in-memory runs (no max |dp| then)")
    ap.add_argument("--model", help="checkpoint for the figure (default: the untrained tiny net)")
    a = ap.parse_args(argv)
    from unetcu.model import UNet
    from unetcu.tiling import default_tile
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        work = Path(tmp)
        model = work / "tiny.npz"
        UNet(depth=3, base_channels=8, engine="numpy", seed=0).save(model)
        if a.figure:
            figure(HERE / "figures" / "blocks.png", a.model or model, work)
        tile = a.tile or default_tile(3, (max(a.sizes),) * 2)  # as predict picks for these sizes
        runs = json.loads(Path(a.json).read_text())["runs"] if a.append and Path(a.json).exists() else []
        given = [tuple(map(int, p.split(":"))) for p in a.plan or []]
        for size in (sorted({g[0] for g in given}) if given else a.sizes):
            src = work / f"img{size}.zarr"
            write_image(src, size)
            plan = [] if a.no_memory else [("memory", 0, 0)]
            if given:
                plan += [("blocks", b, w) for s_, b, w in given if s_ == size]
            elif size <= a.matrix_up_to:
                plan += [("blocks", b, w) for b in a.blocks for w in a.workers]
            else:
                plan += [("blocks", sorted(a.blocks)[len(a.blocks) // 2], max(a.workers))]
            for mode, block, workers in plan:
                out = work / f"{mode}{size}-{block}-{workers}.zarr"
                r = run(mode, model, src, out, tile, block, workers)
                r.update(mode=mode, size=size, mpx_s=size * size / 1e6 / r["seconds"])
                if mode == "blocks":
                    ref = work / f"memory{size}-0-0.zarr"
                    r.update(block=block, workers=workers, n_blocks=(-(-size // block)) ** 2,
                             max_diff=max_diff(ref, out, True) if ref.exists() else None)
                runs.append(r)
                print(json.dumps(r), flush=True)
                save(a, runs, tile)  # after every run: a long run stopped early keeps what it measured
                if mode == "blocks":
                    shutil.rmtree(out)
            shutil.rmtree(src)
            shutil.rmtree(work / f"memory{size}-0-0.zarr", ignore_errors=True)
    print(f"wrote {a.json}" + (f", updated {a.results}" if a.results else ""))
    return 0


def save(a, runs, tile):
    import dask
    import zarr
    from unetcu.model import output_size
    res = dict(date=time.strftime("%Y-%m-%d"), machine=machine(), tile=tile, out_tile=output_size(tile, 3),
               versions=dict(dask=dask.__version__, zarr=zarr.__version__), runs=runs)
    Path(a.json).write_text(json.dumps(res, indent=1))
    if a.results:
        update_section(Path(a.results), SECTION, section(res))


if __name__ == "__main__":
    sys.exit(main())
