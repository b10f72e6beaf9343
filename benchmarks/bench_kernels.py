"""Kernel benchmark: every op and kernel variant at the U-Net's layer shapes, against cuDNN.

On a GPU (engine cuda): the 23 convolutions of a 572 tile in all three directions, the pools,
up-convs, crop-concats, the head, the loss on 388x388x2 and the SGD update over 31 M parameters.
Each case is checked against PyTorch (cuDNN) first, then timed with CUDA events (warm-up, median,
inputs rotated over 3 buffers so the L2 cache does not flatter). Printed per case: ms, TFLOP/s
(compute-bound) or GB/s (memory-bound), % of the ceiling measured in the same run (SGEMM with
TF32 off, device copy bandwidth), and the ratio cuDNN time / our time (> 1: we are faster), with
cuDNN in fp32 (TF32 off); cuDNN's TF32 time is listed beside it.

Without a GPU: the same cases at the tiny preset's shapes on the emu and numpy engines, timed with
the CPU clock — CPU timings, not comparable with anything on a GPU.

    python benchmarks/bench_kernels.py [--engine cuda|emu|numpy] [--json FILE] [--quick] [--batch N]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from common import (conv_flops, cpu_median_ms, gpu_median_ms, machine_info, torch_or_none, unet_layers, ceilings)
from unetcu import ops, reference as R, runtime
from unetcu.ops import conv3x3 as C3, resolve_engine


def host(a):
    return a.get() if hasattr(a, "get") else (a.cpu().numpy() if hasattr(a, "cpu") else np.asarray(a))


class Bench:
    def __init__(self, engine, torch, reps, save=None):
        self.engine, self.torch, self.reps, self.save = engine, torch, reps, save
        self.xp = runtime.xp(engine) if engine != "numpy" else np
        self.rows = []
        self.baseline = {}
        self.rng = np.random.default_rng(0)

    def rand(self, *shape, scale=1.0):
        return [self.xp.asarray((self.rng.standard_normal(shape) * scale).astype(np.float32)) for _ in range(3)]

    def time(self, fn):
        it = iter(range(10**9))
        call = lambda: fn(next(it) % 3)  # rotate over the 3 input buffers
        if self.engine == "cuda":
            return gpu_median_ms(call, reps=self.reps)
        return cpu_median_ms(call)

    def case(self, op, name, direction, variant, shape, ours, work, kind, theirs=None, theirs_tf32=None, check=None,
             precision="fp32"):
        """ours/theirs: callables of the buffer index; work: flops (kind 'compute') or bytes ('memory').
        The ratio is against cuDNN in the same precision: fp32 (TF32 off) for fp32 variants, cuDNN
        with TF32 on for tf32 variants (its other-precision time is recorded beside it)."""
        row = dict(op=op, layer=name, direction=direction, variant=variant, shape=shape, kind=kind, precision=precision)
        tol = 1e-4 if precision == "fp32" else 5e-3
        try:
            if check is not None:
                row["check_rel_err"] = check()
                if not row["check_rel_err"] <= tol:
                    row["error"] = f"result differs from the baseline (rel. error {row['check_rel_err']:.2e}); not timed"
                    self.rows.append(row)
                    self._print(row)
                    return
            row["ms"] = self.time(ours)
            if theirs is not None:
                key = (name, direction, shape)  # cuDNN is timed once per case, however many variants
                if key not in self.baseline:
                    t = self.torch
                    t.backends.cudnn.allow_tf32 = False
                    base = {"cudnn_ms": self.time(theirs)}
                    if theirs_tf32 is not None:
                        t.backends.cudnn.allow_tf32 = True
                        base["cudnn_tf32_ms"] = self.time(theirs_tf32)
                        t.backends.cudnn.allow_tf32 = False
                    self.baseline[key] = base
                row.update(self.baseline[key])
                same = row["cudnn_tf32_ms"] if precision == "tf32" else row["cudnn_ms"]
                row["ratio_vs_cudnn"] = same / row["ms"]
            if kind == "compute":
                row["TFLOPs"] = work / row["ms"] / 1e9
            else:
                row["GBps"] = work / row["ms"] / 1e6
        except Exception as e:  # recorded in the table and the JSON, never dropped
            row["error"] = f"{type(e).__name__}: {e}"
        self.rows.append(row)
        self._print(row)
        if self.save:
            self.save(self.rows)

    def _print(self, r):
        if "TFLOPs" in r:
            perf = f"{r['TFLOPs']:7.2f} TFLOP/s" if r["TFLOPs"] >= 0.1 else f"{r['TFLOPs'] * 1e3:7.2f} GFLOP/s"
        else:
            perf = f"{r['GBps']:7.1f} GB/s   " if "GBps" in r else " " * 15
        same = "cudnn_tf32_ms" if r.get("precision") == "tf32" else "cudnn_ms"
        cud = f"cuDNN{'-tf32' if same != 'cudnn_ms' else ''} {r[same]:8.3f} ms  x{r['ratio_vs_cudnn']:5.2f}" if "ratio_vs_cudnn" in r else ""
        ms = f"{r['ms']:9.3f} ms" if "ms" in r else " " * 12
        print(f"{r['op']:<13}{r['layer']:<15}{r['direction']:<16}v{str(r['variant']):<10}{ms} {perf} {cud} {r.get('error', '')}", flush=True)


def relu_mask_fusion(b, L, e, fl):
    """A level's conv1 backward with forward's ReLU output read in both its kernels (the op chain)
    vs with dout already masked by conv2's backward-data epilogue (fuse): the two kernels without
    `out`, plus what the mask costs conv2's backward-data. Rows 'mask:chain' and 'mask:fused'."""
    N, C, H, W, K = L["N"], L["C"], L["H"], L["W"], L["K"]
    x, w, d = b.rand(N, C, H, W), b.rand(K, C, 3, 3, scale=(2 / (9 * C)) ** 0.5), b.rand(N, K, H - 2, W - 2)
    out = b.rand(N, K, H - 2, W - 2)
    d2, w2 = b.rand(N, K, H - 4, W - 4), b.rand(K, K, 3, 3, scale=(2 / (9 * K)) ** 0.5)  # conv2 of the level
    shape = f"{N}x{C}x{H}x{W}->{K}"
    b.case("conv3x3", L["name"], "bwd_mask:chain", "dflt", shape,
           lambda i: (ops.conv3x3_backward_data(d2[i], w2[i], **e), ops.conv3x3_backward_weight(d[i], x[i], out[i], **e),
                      ops.conv3x3_backward_data(d[i], w[i], out[i], **e)), 2 * fl, "compute")
    b.case("conv3x3", L["name"], "bwd_mask:fused", "dflt", shape,
           lambda i: (ops.conv3x3_backward_data(d2[i], w2[i], mask=out[i], **e), ops.conv3x3_backward_weight(d[i], x[i], **e),
                      ops.conv3x3_backward_data(d[i], w[i], **e)), 2 * fl, "compute")


def run(engine, tile, depth, base, batch, reps, torch, sweep=False, save=None):
    b = Bench(engine, torch, reps, save)
    e = dict(engine=engine)
    t = torch
    tt = (lambda a: t.from_dlpack(a)) if t is not None else None
    seen = set()
    for L in unet_layers(tile, depth, base, batch=batch):
        key = tuple(sorted((k, v) for k, v in L.items() if k != "name"))
        if key in seen:
            continue
        seen.add(key)
        op, name = L["op"], L["name"]
        if op == "conv3x3":
            N, C, H, W, K = L["N"], L["C"], L["H"], L["W"], L["K"]
            x, w, bias = b.rand(N, C, H, W), b.rand(K, C, 3, 3, scale=(2 / (9 * C)) ** 0.5), b.rand(K)
            d = b.rand(N, K, H - 2, W - 2)
            fl = conv_flops(L)
            shape = f"{N}x{C}x{H}x{W}->{K}"
            cudnn = dict(
                forward=(lambda i: t.nn.functional.conv2d(tt(x[i]), tt(w[i]), tt(bias[i]))) if t else None,
                backward_data=(lambda i: t.nn.grad.conv2d_input((N, C, H, W), tt(w[i]), tt(d[i]))) if t else None,
                backward_weight=(lambda i: t.nn.grad.conv2d_weight(tt(x[i]), (K, C, 3, 3), tt(d[i]))) if t else None)
            calls = dict(
                forward=lambda i, **kw: ops.conv3x3_forward(x[i], w[i], bias[i], relu=False, **kw, **e),
                backward_data=lambda i, **kw: ops.conv3x3_backward_data(d[i], w[i], **kw, **e),
                backward_weight=lambda i, **kw: ops.conv3x3_backward_weight(d[i], x[i], **kw, **e)[0])
            for direction, call in calls.items():
                opname = f"conv3x3_{direction}"
                for v, kname in ops.VARIANTS[opname].items():
                    prec = "tf32" if v in ops.TF32_VARIANTS[opname] else "fp32"
                    tiles = [None] + (list(C3.TILES) if sweep and kname in C3.IGEMM else [])
                    for tile in tiles:
                        kw = dict(variant=v, precision=prec, **({"tile": tile} if tile else {}))
                        ours = lambda i, kw=kw, call=call: call(i, **kw)
                        theirs = cudnn[direction]
                        check = (lambda ours=ours, theirs=theirs: R.rel_err(host(ours(0)), host(theirs(0)))) if t else None
                        label = v if tile is None else f"{v}@{tile[0]}x{tile[1]}"
                        b.case(op, name, direction, label, shape, ours, fl, "compute", theirs, theirs, check, prec)
            if name.endswith("conv1") and name != "down0.conv1":  # down0.conv1 needs no input gradient
                relu_mask_fusion(b, L, e, fl)
        elif op == "maxpool2x2":
            N, C, H, W = L["N"], L["C"], L["H"], L["W"]
            x = b.rand(N, C, H, W)
            by = 4 * N * C * H * W * 1.25 + N * C * H * W / 4
            ours = lambda i: ops.maxpool2x2_forward(x[i], **e)
            theirs = (lambda i: t.nn.functional.max_pool2d(tt(x[i]), 2, return_indices=True)) if t else None
            check = (lambda: R.rel_err(host(ours(0)[0]), host(theirs(0)[0]))) if t else None
            b.case(op, name, "forward", 1, f"{N}x{C}x{H}x{W}", ours, by, "memory", theirs, None, check)
            out, am = ops.maxpool2x2_forward(x[0], **e)
            dout = b.rand(N, C, H // 2, W // 2)
            b.case(op, name, "backward", 1, f"{N}x{C}x{H}x{W}", lambda i: ops.maxpool2x2_backward(dout[i], am, **e),
                   4 * N * C * H * W * 1.25 + N * C * H * W / 4, "memory")
        elif op == "upconv2x2":
            N, C, H, W, K = L["N"], L["C"], L["H"], L["W"], L["K"]
            x, w, bias = b.rand(N, C, H, W), b.rand(C, K, 2, 2, scale=C ** -0.5), b.rand(K)
            d = b.rand(N, K, 2 * H, 2 * W)
            fl = 2.0 * N * C * K * 4 * H * W
            ours = lambda i: ops.upconv2x2_forward(x[i], w[i], bias[i], **e)
            theirs = (lambda i: t.nn.functional.conv_transpose2d(tt(x[i]), tt(w[i]), tt(bias[i]), stride=2)) if t else None
            check = (lambda: R.rel_err(host(ours(0)), host(theirs(0)))) if t else None
            b.case(op, name, "forward", 1, f"{N}x{C}x{H}x{W}->{K}", ours, fl, "compute", theirs, theirs, check)
            b.case(op, name, "backward_data", 1, f"{N}x{C}x{H}x{W}->{K}", lambda i: ops.upconv2x2_backward_data(d[i], w[i], **e), fl, "compute")
            b.case(op, name, "backward_weight", 1, f"{N}x{C}x{H}x{W}->{K}", lambda i: ops.upconv2x2_backward_weight(d[i], x[i], **e), fl, "compute")
        elif op == "crop_concat":
            N, Cs, Hs, Cu, H = L["N"], L["Cs"], L["Hs"], L["Cu"], L["H"]
            s, u = b.rand(N, Cs, Hs, Hs), b.rand(N, Cu, H, H)
            by = 8.0 * N * (Cs + Cu) * H * H
            b.case(op, name, "forward", 1, f"{N}x{Cs}x{Hs}+{Cu}x{H}", lambda i: ops.crop_concat_forward(s[i], u[i], **e), by, "memory")
            # the fusion cuDNN cannot do: the level's first conv reading skip and up directly
            K = Cu  # the expanding level's convs keep the up-conv's channel count
            w, bias = b.rand(K, Cs + Cu, 3, 3, scale=(2 / (9 * (Cs + Cu))) ** 0.5), b.rand(K)
            fl = conv_flops(dict(N=N, C=Cs + Cu, H=H, W=H, K=K))
            for v in ops.VARIANTS["conv3x3_forward_concat"]:
                prec = "tf32" if v in ops.TF32_VARIANTS["conv3x3_forward_concat"] else "fp32"
                b.case("conv3x3", name.replace("concat", "conv1"), "forward_concat", v, f"{N}x{Cs}x{Hs}+{Cu}x{H}->{K}",
                       lambda i, v=v, prec=prec: ops.conv3x3_forward_concat(s[i], u[i], w[i], bias[i], variant=v, precision=prec, **e),
                       fl, "compute", precision=prec)
            b.case("conv3x3", name.replace("concat", "conv1"), "concat+forward", "1+dflt", f"{N}x{Cs}x{Hs}+{Cu}x{H}->{K}",
                   lambda i: ops.conv3x3_forward(ops.crop_concat_forward(s[i], u[i], **e), w[i], bias[i], **e), fl, "compute")
            # backward of that conv, fused (two-source kernels) vs the op chain (concat input, crop_concat_backward)
            g = b.rand(N, K, H - 2, H - 2)
            cat = ops.crop_concat_forward(s[0], u[0], **e)
            b.case("conv3x3", name.replace("concat", "conv1"), "bwd_concat", "dflt", f"{N}x{Cs}x{Hs}+{Cu}x{H}->{K}",
                   lambda i: (ops.conv3x3_backward_weight_concat(g[i], s[i], u[i], **e),
                              ops.conv3x3_backward_data_concat(g[i], w[i], Cs, **e)), 2 * fl, "compute")
            b.case("conv3x3", name.replace("concat", "conv1"), "bwd+crop_concat", "dflt", f"{N}x{Cs}x{Hs}+{Cu}x{H}->{K}",
                   lambda i: (ops.conv3x3_backward_weight(g[i], cat, **e),
                              ops.crop_concat_backward(ops.conv3x3_backward_data(g[i], w[i], **e), (N, Cs, Hs, Hs), **e)),
                   2 * fl, "compute")
            d = b.rand(N, Cs + Cu, H, H)
            b.case(op, name, "backward", 1, f"{N}x{Cs}x{Hs}+{Cu}x{H}",
                   lambda i: ops.crop_concat_backward(d[i], (N, Cs, Hs, Hs), **e), 4.0 * N * (Cs * Hs * Hs + 2 * (Cs + Cu) * H * H), "memory")
        elif op == "conv1x1":
            N, C, H, W, K = L["N"], L["C"], L["H"], L["W"], L["K"]
            x, w, bias = b.rand(N, C, H, W), b.rand(K, C, 1, 1), b.rand(K)
            ours = lambda i: ops.conv1x1_forward(x[i], w[i], bias[i], **e)
            theirs = (lambda i: t.nn.functional.conv2d(tt(x[i]), tt(w[i]), tt(bias[i]))) if t else None
            check = (lambda: R.rel_err(host(ours(0)), host(theirs(0)))) if t else None
            b.case(op, name, "forward", 1, f"{N}x{C}x{H}x{W}->{K}", ours, 4.0 * N * (C + K) * H * W, "memory", theirs, None, check)
        elif op == "softmax_xent":
            N, K, H, W = L["N"], L["K"], L["H"], L["W"]
            z = b.rand(N, K, H, W, scale=3)
            lab = b.xp.asarray(b.rng.integers(0, K, (N, H, W)).astype(np.int32))
            wt = b.xp.asarray(b.rng.uniform(1, 10, (N, H, W)).astype(np.float32))
            ours = lambda i: ops.softmax_xent(z[i], lab, wt, **e)
            theirs = None
            if t:
                tl = tt(lab).long()
                theirs = lambda i: (t.nn.functional.cross_entropy(tt(z[i]), tl, reduction="none") * tt(wt)).mean()
            by = 4.0 * N * H * W * (2 * K + 2)
            check = (lambda: abs(ours(0)[0] - float(theirs(0))) / abs(float(theirs(0)))) if t else None
            b.case(op, name, "forward+backward", 1, f"{N}x{K}x{H}x{W}", ours, by, "memory", theirs, None, check)
    # SGD over all parameters as one flat buffer
    from unetcu import UNet
    n = UNet(depth=depth, base_channels=base, engine="numpy").n_params
    p, g, v = b.rand(n), b.rand(n), b.rand(n)
    theirs = None
    if t:
        def theirs(i):
            tv, tp = tt(v[i]), tt(p[i])
            tv.mul_(0.99).sub_(tt(g[i]), alpha=0.01)
            tp.add_(tv)
    b.case("sgd", "all params", "update", 1, f"{n}", lambda i: ops.sgd_momentum_update(p[i], g[i], v[i], 0.01, **e),
           4.0 * n * 5, "memory", theirs)
    return b.rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("cuda", "emu", "numpy"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--json", help="write all figures to this file")
    ap.add_argument("--tiles", action="store_true", help="also time every tile shape of the implicit-GEMM variants "
                    "(rows v3@128x64 ...), to check the per-layer tile choice")
    a = ap.parse_args(argv)
    engine = resolve_engine(a.engine)
    info = machine_info()
    torch = torch_or_none() if engine == "cuda" else None
    if engine == "cuda":
        tile, depth, base, reps = 572, 5, 64, 5 if a.quick else 20
        if torch is not None:
            torch.backends.cudnn.benchmark = True
        print(f"kernel benchmark on {info.get('gpu')} ({info['date']}, commit {info.get('commit')}); "
              f"cuDNN baseline: {'PyTorch ' + torch.__version__ if torch else 'none (torch not importable)'}")
        ceil = ceilings(torch)
        print("ceilings measured now: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in ceil.items()))
    else:
        tile, depth, base, reps = 92, 3, 8, 3
        ceil = {}
        print(f"kernel benchmark on the CPU, engine '{engine}', tiny shapes (tile {tile}, depth {depth}, {base} channels): "
              "CPU timings, not comparable with GPU figures or with cuDNN")
    header = dict(machine=info, engine=engine, tile=tile, batch=a.batch, ceilings=ceil)
    save = None
    if a.json:  # rewritten after every case, so a run stopped by a time limit keeps what it measured
        def save(rows):
            with open(a.json + ".tmp", "w") as f:
                json.dump(dict(header, rows=rows), f, indent=1)
            os.replace(a.json + ".tmp", a.json)
    rows = run(engine, tile, depth, base, a.batch, reps, torch, sweep=a.tiles, save=save)
    slow = sorted((r for r in rows if "ratio_vs_cudnn" in r), key=lambda r: r["ratio_vs_cudnn"])[:3]
    if slow:
        print("slowest relative to cuDNN: " + "; ".join(f"{r['op']} {r['layer']} {r['direction']} v{r['variant']} x{r['ratio_vs_cudnn']:.2f}" for r in slow))
    errors = [r for r in rows if "error" in r]
    if save:
        save(rows)
    if errors:
        print(f"{len(errors)} case(s) failed (see 'error' above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
