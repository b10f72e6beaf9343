"""Run the default conv3x3 kernels once each on a few paper layers, for a profiler to read their
counters (ncu); prints nothing else of interest. device_check.sh runs it under

    ncu --clock-control none --csv --metrics <list> python3 -m benchmarks.profile_conv

Layers: down1.conv2 (128 -> 128 at 282², a big layer), down4.conv2 (1024 -> 1024 at 30², the
bottleneck) and up0.conv1 (the fused concat, 64 + 64 -> 64 at 392²): one call per kernel, fp32
and tf32 (compilation is host work and stays out of a kernel profile).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from unetcu import ops

LAYERS = {"down1.conv2": (128, 282, 128), "down4.conv2": (1024, 30, 1024)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="cuda", choices=("cuda", "emu"), help="emu: a tiny smoke run on the CPU")
    a = ap.parse_args(argv)
    e = a.engine
    xp = np if e == "emu" else __import__("cupy")
    rng = np.random.default_rng(0)
    rand = lambda *s: xp.asarray(rng.standard_normal(s).astype(np.float32))
    layers = LAYERS if e == "cuda" else {"tiny": (8, 12, 8)}
    for name, (c, hw, k) in layers.items():
        x, w, b, d = rand(1, c, hw, hw), rand(k, c, 3, 3), rand(k), rand(1, k, hw - 2, hw - 2)
        for prec in ("fp32", "tf32"):
            ops.conv3x3_forward(x, w, b, engine=e, precision=prec)
            ops.conv3x3_backward_data(d, w, engine=e, precision=prec)
            ops.conv3x3_backward_weight(d, x, engine=e, precision=prec)
        print(f"{name}: ran forward, backward-data, backward-weight in fp32 and tf32", flush=True)
    # the fused concat of up0.conv1: skip 64 x 568², up 64 x 392²
    cs, hs, cu, h = (64, 568, 64, 392) if e == "cuda" else (3, 14, 2, 8)
    s, u = rand(1, cs, hs, hs), rand(1, cu, h, h)
    w, b, d = rand(cu, cs + cu, 3, 3), rand(cu), rand(1, cu, h - 2, h - 2)
    ops.conv3x3_forward_concat(s, u, w, b, engine=e)
    ops.conv3x3_backward_data_concat(d, w, cs, engine=e)
    ops.conv3x3_backward_weight_concat(d, s, u, engine=e)
    print("up0.conv1 (fused concat): ran forward, backward-data, backward-weight in fp32", flush=True)
    if e == "cuda":
        xp.cuda.Device().synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
