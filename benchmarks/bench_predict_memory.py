"""Peak memory of `unetcu predict` on multi-page TIFF stacks: predict streams one page at a time,
so the peak should stay near one page's working set whatever the page count.

Writes float32 stacks of --size x --size pixels with 1 page and with --pages pages, saves a small
untrained model (the net's size does not change how files are read and written), runs
`python -m unetcu.cli predict` on each in a subprocess and prints the child's peak RSS
(getrusage RUSAGE_CHILDREN, measured in a fresh wrapper process per run).

    python -m benchmarks.bench_predict_memory [--pages 100] [--size 512] [--engine numpy]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode); "
        "sys.stderr.write(r.stderr[-2000:] if r.returncode else '')")


def peak_rss_mb(cmd) -> float:
    r = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True)
    kb, rc = r.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"predict failed: {r.stderr}")
    return int(kb) / 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--engine", default="numpy")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    import tifffile
    from unetcu import UNet
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model = d / "checkpoint.npz"
        UNet(depth=2, base_channels=2, engine="numpy").save(model)
        rng = np.random.default_rng(0)
        page = rng.standard_normal((a.size, a.size)).astype(np.float32)
        for n in (1, a.pages):
            stack = d / f"stack{n}.tif"
            with tifffile.TiffWriter(stack) as t:  # written page by page: the benchmark itself stays small
                for k in range(n):
                    t.write(np.roll(page, k, axis=0), photometric="minisblack", contiguous=True)
            t0 = time.perf_counter()
            mb = peak_rss_mb([sys.executable, "-m", "unetcu.cli", "predict", str(model), str(stack),
                              "--out", str(d / f"out{n}"), "--engine", a.engine, "--no-progress"])
            rows.append(dict(pages=n, input_mb=round(stack.stat().st_size / 2**20, 1), peak_rss_mb=round(mb, 1),
                             seconds=round(time.perf_counter() - t0, 1)))
            print(f"{n:4d} pages of {a.size}x{a.size} float32 ({rows[-1]['input_mb']:7.1f} MB): "
                  f"peak RSS {mb:7.1f} MB, {rows[-1]['seconds']:.1f} s", flush=True)
    grow = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    print(f"peak RSS grows by {grow:.1f} MB from 1 to {a.pages} pages")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(rows=rows, growth_mb=grow), indent=1))


if __name__ == "__main__":
    main()
