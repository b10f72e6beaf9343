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

    python -m benchmarks.bench_kernels [--engine cuda|emu|numpy] [--json FILE] [--quick] [--batch N]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from dataclasses import dataclass
from typing import Callable

from benchmarks.common import ceilings, cpu_median_ms, gpu_median_ms, machine_info, torch_or_none
from unetcu import UNet, ops, reference as R
from unetcu.distributed import dropout_chw
from unetcu.ops.dropout import SEED_IN_MEMORY
from unetcu.engines import runtime


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
        print(f"{r['op']:<13}{r['layer']:<15}{r['direction']:<23}v{str(r['variant']):<10}{ms} {perf} {cud} {r.get('error', '')}", flush=True)


# ---- the cases: one row per (layer, op, variant) ----------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One op of a layer, timed for every registered variant (unetcu.ops.REGISTRY[op]).

    inputs(b, L): the input buffers (3 rotations each) from the layer's shapes (UNet.layers);
    ours(x, i, **kw): run our op on rotation i with variant=/precision=/tile= in kw;
    work(L): FLOP (kind "compute") or bytes moved (kind "memory") of one call;
    cudnn(t, x, i): PyTorch's counterpart (cuDNN for the convolutions), None where it has none;
    result(r): the array (or number) a call's result is compared by."""
    direction: str
    op: str
    inputs: Callable
    ours: Callable
    work: Callable
    kind: str
    cudnn: Callable | None = None
    result: Callable = lambda r: r
    tf32_baseline: bool = False  # time cuDNN with TF32 on as well (the convolutions)
    family: str = ""  # the rows' op column, when it is not the layer's op (the optimizers)
    compare: bool = True  # check ours against cudnn before timing (not for in-place updates of shared buffers)


def conv_flops(L):
    """Multiply-adds x 2 of one direction of a valid 3x3 conv."""
    return 2.0 * L["N"] * L["K"] * L["C"] * 9 * (L["H"] - 2) * (L["W"] - 2)


def _conv3x3_inputs(b, L):
    N, C, H, W, K = L["N"], L["C"], L["H"], L["W"], L["K"]
    return dict(x=b.rand(N, C, H, W), w=b.rand(K, C, 3, 3, scale=(2 / (9 * C)) ** 0.5), b=b.rand(K),
                d=b.rand(N, K, H - 2, W - 2))


def _concat_inputs(b, L):
    N, Cs, Hs, Cu, H = L["N"], L["Cs"], L["Hs"], L["Cu"], L["H"]
    K = Cu  # the expanding level's convs keep the up-conv's channel count
    return dict(s=b.rand(N, Cs, Hs, Hs), u=b.rand(N, Cu, H, H), d=b.rand(N, Cs + Cu, H, H),
                w=b.rand(K, Cs + Cu, 3, 3, scale=(2 / (9 * (Cs + Cu))) ** 0.5), b=b.rand(K), g=b.rand(N, K, H - 2, H - 2))


def _tt(t, a):
    return t.from_dlpack(a)


def _sgd_reference(t, x, i):
    tv, tp = _tt(t, x["v"][i]), _tt(t, x["p"][i])
    tv.mul_(0.99).sub_(_tt(t, x["g"][i]), alpha=0.01)
    tp.add_(tv)


def _update_inputs(b, L):
    n = L["n"]
    return dict(p=b.rand(n), g=b.rand(n), v=b.rand(n), m=b.rand(n),
                v2=[b.xp.abs(a) for a in b.rand(n)])  # Adam's second moment is non-negative


def _dropout_seed(x, kw):
    """The seed in the form the variant takes: an int, or a (1,) uint64 array in device memory."""
    return x["seed"] if kw.get("variant") == SEED_IN_MEMORY else 12345


def _maxpool_bytes(L):
    return 4 * L["N"] * L["C"] * L["H"] * L["W"] * 1.25 + L["N"] * L["C"] * L["H"] * L["W"] / 4


def _concat_conv_flops(L):
    return conv_flops(dict(N=L["N"], C=L["Cs"] + L["Cu"], H=L["H"], W=L["H"], K=L["Cu"]))


CASES = {
    "conv3x3": [
        Case("forward", "conv3x3_forward", _conv3x3_inputs,
             lambda x, i, **kw: ops.conv3x3_forward(x["x"][i], x["w"][i], x["b"][i], relu=False, **kw), conv_flops,
             "compute", lambda t, x, i: t.nn.functional.conv2d(_tt(t, x["x"][i]), _tt(t, x["w"][i]), _tt(t, x["b"][i])),
             tf32_baseline=True),
        Case("backward_data", "conv3x3_backward_data", _conv3x3_inputs,
             lambda x, i, **kw: ops.conv3x3_backward_data(x["d"][i], x["w"][i], **kw), conv_flops, "compute",
             lambda t, x, i: t.nn.grad.conv2d_input(tuple(x["x"][i].shape), _tt(t, x["w"][i]), _tt(t, x["d"][i])),
             tf32_baseline=True),
        Case("backward_weight", "conv3x3_backward_weight", _conv3x3_inputs,
             lambda x, i, **kw: ops.conv3x3_backward_weight(x["d"][i], x["x"][i], **kw)[0], conv_flops, "compute",
             lambda t, x, i: t.nn.grad.conv2d_weight(_tt(t, x["x"][i]), tuple(x["w"][i].shape), _tt(t, x["d"][i])),
             tf32_baseline=True)],
    "maxpool2x2": [
        Case("forward", "maxpool2x2_forward", lambda b, L: dict(x=b.rand(L["N"], L["C"], L["H"], L["W"])),
             lambda x, i, **kw: ops.maxpool2x2_forward(x["x"][i], **kw), _maxpool_bytes, "memory",
             lambda t, x, i: t.nn.functional.max_pool2d(_tt(t, x["x"][i]), 2, return_indices=True), lambda r: r[0]),
        Case("backward", "maxpool2x2_backward",
             lambda b, L: dict(d=b.rand(L["N"], L["C"], L["H"] // 2, L["W"] // 2),
                               am=ops.maxpool2x2_forward(b.rand(L["N"], L["C"], L["H"], L["W"])[0], engine=b.engine)[1]),
             lambda x, i, **kw: ops.maxpool2x2_backward(x["d"][i], x["am"], **kw), _maxpool_bytes, "memory")],
    "upconv2x2": [
        Case("forward", "upconv2x2_forward",
             lambda b, L: dict(x=b.rand(L["N"], L["C"], L["H"], L["W"]), w=b.rand(L["C"], L["K"], 2, 2, scale=L["C"] ** -0.5),
                               b=b.rand(L["K"])),
             lambda x, i, **kw: ops.upconv2x2_forward(x["x"][i], x["w"][i], x["b"][i], **kw),
             lambda L: 2.0 * L["N"] * L["C"] * L["K"] * 4 * L["H"] * L["W"], "compute",
             lambda t, x, i: t.nn.functional.conv_transpose2d(_tt(t, x["x"][i]), _tt(t, x["w"][i]), _tt(t, x["b"][i]),
                                                              stride=2)),
        Case("backward_data", "upconv2x2_backward_data",
             lambda b, L: dict(d=b.rand(L["N"], L["K"], 2 * L["H"], 2 * L["W"]), w=b.rand(L["C"], L["K"], 2, 2)),
             lambda x, i, **kw: ops.upconv2x2_backward_data(x["d"][i], x["w"][i], **kw),
             lambda L: 2.0 * L["N"] * L["C"] * L["K"] * 4 * L["H"] * L["W"], "compute"),
        Case("backward_weight", "upconv2x2_backward_weight",
             lambda b, L: dict(d=b.rand(L["N"], L["K"], 2 * L["H"], 2 * L["W"]), x=b.rand(L["N"], L["C"], L["H"], L["W"])),
             lambda x, i, **kw: ops.upconv2x2_backward_weight(x["d"][i], x["x"][i], **kw),
             lambda L: 2.0 * L["N"] * L["C"] * L["K"] * 4 * L["H"] * L["W"], "compute")],
    "crop_concat": [
        Case("forward", "crop_concat_forward", _concat_inputs,
             lambda x, i, **kw: ops.crop_concat_forward(x["s"][i], x["u"][i], **kw),
             lambda L: 8.0 * L["N"] * (L["Cs"] + L["Cu"]) * L["H"] ** 2, "memory"),
        # the fusion cuDNN cannot do: the level's first conv reading skip and up directly
        Case("forward_concat", "conv3x3_forward_concat", _concat_inputs,
             lambda x, i, **kw: ops.conv3x3_forward_concat(x["s"][i], x["u"][i], x["w"][i], x["b"][i], **kw),
             _concat_conv_flops, "compute"),
        Case("backward_data_concat", "conv3x3_backward_data_concat", _concat_inputs,
             lambda x, i, **kw: ops.conv3x3_backward_data_concat(x["g"][i], x["w"][i], x["s"][i].shape[1], **kw),
             _concat_conv_flops, "compute"),
        Case("backward_weight_concat", "conv3x3_backward_weight_concat", _concat_inputs,
             lambda x, i, **kw: ops.conv3x3_backward_weight_concat(x["g"][i], x["s"][i], x["u"][i], **kw)[0],
             _concat_conv_flops, "compute"),
        Case("backward", "crop_concat_backward", _concat_inputs,
             lambda x, i, **kw: ops.crop_concat_backward(x["d"][i], tuple(x["s"][i].shape), **kw),
             lambda L: 4.0 * L["N"] * (L["Cs"] * L["Hs"] ** 2 + 2 * (L["Cs"] + L["Cu"]) * L["H"] ** 2), "memory")],
    "conv1x1": [
        Case("forward", "conv1x1_forward",
             lambda b, L: dict(x=b.rand(L["N"], L["C"], L["H"], L["W"]), w=b.rand(L["K"], L["C"], 1, 1), b=b.rand(L["K"])),
             lambda x, i, **kw: ops.conv1x1_forward(x["x"][i], x["w"][i], x["b"][i], **kw),
             lambda L: 4.0 * L["N"] * (L["C"] + L["K"]) * L["H"] * L["W"], "memory",
             lambda t, x, i: t.nn.functional.conv2d(_tt(t, x["x"][i]), _tt(t, x["w"][i]), _tt(t, x["b"][i]))),
        Case("backward_data", "conv1x1_backward_data",
             lambda b, L: dict(d=b.rand(L["N"], L["K"], L["H"], L["W"]), w=b.rand(L["K"], L["C"], 1, 1)),
             lambda x, i, **kw: ops.conv1x1_backward_data(x["d"][i], x["w"][i], **kw),
             lambda L: 4.0 * L["N"] * (L["C"] + L["K"]) * L["H"] * L["W"], "memory"),
        Case("backward_weight", "conv1x1_backward_weight",
             lambda b, L: dict(d=b.rand(L["N"], L["K"], L["H"], L["W"]), x=b.rand(L["N"], L["C"], L["H"], L["W"])),
             lambda x, i, **kw: ops.conv1x1_backward_weight(x["d"][i], x["x"][i], **kw),
             lambda L: 4.0 * L["N"] * (L["C"] + L["K"]) * L["H"] * L["W"], "memory")],
    "softmax_xent": [
        Case("forward+backward", "softmax_xent",
             lambda b, L: dict(z=b.rand(L["N"], L["K"], L["H"], L["W"], scale=3),
                               lab=b.xp.asarray(b.rng.integers(0, L["K"], (L["N"], L["H"], L["W"])).astype(np.int32)),
                               wt=b.xp.asarray(b.rng.uniform(1, 10, (L["N"], L["H"], L["W"])).astype(np.float32))),
             lambda x, i, **kw: ops.softmax_xent(x["z"][i], x["lab"], x["wt"], **kw),
             lambda L: 4.0 * L["N"] * L["H"] * L["W"] * (2 * L["K"] + 2), "memory",
             lambda t, x, i: (t.nn.functional.cross_entropy(_tt(t, x["z"][i]), _tt(t, x["lab"]).long(), reduction="none")
                              * _tt(t, x["wt"])).mean(),
             lambda r: r[0] if isinstance(r, tuple) else float(r)),
        Case("softmax", "softmax", lambda b, L: dict(z=b.rand(L["N"], L["K"], L["H"], L["W"], scale=3)),
             lambda x, i, **kw: ops.softmax(x["z"][i], **kw), lambda L: 8.0 * L["N"] * L["K"] * L["H"] * L["W"], "memory",
             lambda t, x, i: t.softmax(_tt(t, x["z"][i]), dim=1))],
    # the bottleneck's dropout (training only), at the last contracting conv's output
    "dropout": [
        Case(direction, f"dropout_{direction}",
             lambda b, L: dict(x=b.rand(L["N"], L["C"], L["H"], L["W"]),
                               seed=b.xp.asarray(np.array([12345], np.uint64))),
             lambda x, i, fn=fn, **kw: fn(x["x"][i], 0.5, _dropout_seed(x, kw), **kw),
             lambda L: 8.0 * L["N"] * L["C"] * L["H"] * L["W"], "memory")
        for direction, fn in (("forward", ops.dropout_forward), ("backward", ops.dropout_backward))],
    # the fused optimizer updates over all parameters as one flat buffer
    "update": [
        Case("update", "sgd_momentum_update", _update_inputs,
             lambda x, i, **kw: ops.sgd_momentum_update(x["p"][i], x["g"][i], x["v"][i], 0.01, **kw),
             lambda L: 4.0 * L["n"] * 5, "memory", _sgd_reference, family="sgd", compare=False),
        Case("update", "adam_update", _update_inputs,
             lambda x, i, **kw: ops.adam_update(x["p"][i], x["g"][i], x["m"][i], x["v2"][i], 10, 1e-3, **kw),
             lambda L: 4.0 * L["n"] * 7, "memory", family="adam")],
}


def _shape(L, conv=False):
    """The row's shape label: NxCxHxW (->K for a layer with weights); a concatenation's
    NxCsxHs+CuxH (->K when it is the conv reading it, conv=True); an update's parameter count."""
    if L["op"] == "update":
        return f"{L['n']}"
    if L["op"] == "crop_concat":
        return f"{L['N']}x{L['Cs']}x{L['Hs']}+{L['Cu']}x{L['H']}" + (f"->{L['Cu']}" if conv else "")
    c = L["C"] if "C" in L else L["K"]
    return f"{L['N']}x{c}x{L['H']}x{L['W']}" + (f"->{L['K']}" if "C" in L and "K" in L else "")


def run_case(b, case, L, e, sweep):
    """Every registered variant of case.op on layer L (every tile too with sweep), checked against
    PyTorch first where it has a counterpart."""
    t = b.torch
    x = case.inputs(b, L)
    theirs = (lambda i: case.cudnn(t, x, i)) if t is not None and case.cudnn is not None else None
    fused = L["op"] == "crop_concat" and case.op.startswith("conv3x3")  # the conv that reads the concatenation
    family = case.family or ("conv3x3" if fused else L["op"])
    layer = L["name"].replace("concat", "conv1") if fused else L["name"]
    shape = _shape(L, conv=fused)
    recs = ops.variants(case.op)
    if b.engine == "numpy":  # one implementation per precision: a row per precision, not per variant
        recs = [r for r in recs if r.number == ops.default_variant(case.op, r.precision)]
    for rec in recs:
        for tile in [None] + (list(rec.tiles) if sweep else []):
            kw = dict(variant=rec.number, **e, **({"tile": tile} if tile else {}),  # fp32 is every op's default
                      **({"precision": rec.precision} if rec.precision != "fp32" else {}))
            ours = lambda i, kw=kw: case.ours(x, i, **kw)
            check = None
            if theirs is not None and case.compare:
                check = lambda ours=ours: _rel(case.result(ours(0)), case.result(theirs(0)))
            label = rec.number if tile is None else f"{rec.number}@{tile[0]}x{tile[1]}"
            b.case(family, layer, case.direction, label, shape, ours, case.work(L), case.kind, theirs,
                   theirs if case.tf32_baseline else None, check, rec.precision)


def _rel(ours, theirs):
    if isinstance(ours, float):
        return abs(ours - float(theirs)) / abs(float(theirs))
    return R.rel_err(host(ours), host(theirs))


def relu_mask_fusion(b, L, e):
    """A level's conv1 backward with forward's ReLU output read in both its kernels (the op chain)
    vs with dout already masked by conv2's backward-data epilogue (fuse): the two kernels without
    `out`, plus what the mask costs conv2's backward-data. Rows 'mask:chain' and 'mask:fused'."""
    N, C, H, W, K = L["N"], L["C"], L["H"], L["W"], L["K"]
    x, w, d = b.rand(N, C, H, W), b.rand(K, C, 3, 3, scale=(2 / (9 * C)) ** 0.5), b.rand(N, K, H - 2, W - 2)
    out = b.rand(N, K, H - 2, W - 2)
    d2, w2 = b.rand(N, K, H - 4, W - 4), b.rand(K, K, 3, 3, scale=(2 / (9 * K)) ** 0.5)  # conv2 of the level
    fl, shape = conv_flops(L), _shape(L)
    b.case("conv3x3", L["name"], "bwd_mask:chain", "dflt", shape,
           lambda i: (ops.conv3x3_backward_data(d2[i], w2[i], **e), ops.conv3x3_backward_weight(d[i], x[i], out[i], **e),
                      ops.conv3x3_backward_data(d[i], w[i], out[i], **e)), 2 * fl, "compute")
    b.case("conv3x3", L["name"], "bwd_mask:fused", "dflt", shape,
           lambda i: (ops.conv3x3_backward_data(d2[i], w2[i], mask=out[i], **e), ops.conv3x3_backward_weight(d[i], x[i], **e),
                      ops.conv3x3_backward_data(d[i], w[i], **e)), 2 * fl, "compute")


def concat_fusion(b, L, e):
    """An expanding level's first conv on crop_concat(skip, up): the op chain (crop_concat, then the
    conv; backward through the concatenated tensor) vs the two-source kernels that never store it."""
    x = _concat_inputs(b, L)
    s, u, w, bias = x["s"], x["u"], x["w"], x["b"]
    N, Cs, Hs, K, H = L["N"], L["Cs"], L["Hs"], L["Cu"], L["H"]
    fl, name, shape = _concat_conv_flops(L), L["name"].replace("concat", "conv1"), _shape(L, conv=True)
    b.case("conv3x3", name, "concat+forward", "1+dflt", shape,
           lambda i: ops.conv3x3_forward(ops.crop_concat_forward(s[i], u[i], **e), w[i], bias[i], **e), fl, "compute")
    g = b.rand(N, K, H - 2, H - 2)
    cat = ops.crop_concat_forward(s[0], u[0], **e)
    b.case("conv3x3", name, "bwd_concat", "dflt", shape,
           lambda i: (ops.conv3x3_backward_weight_concat(g[i], s[i], u[i], **e),
                      ops.conv3x3_backward_data_concat(g[i], w[i], Cs, **e)), 2 * fl, "compute")
    b.case("conv3x3", name, "bwd+crop_concat", "dflt", shape,
           lambda i: (ops.conv3x3_backward_weight(g[i], cat, **e),
                      ops.crop_concat_backward(ops.conv3x3_backward_data(g[i], w[i], **e), (N, Cs, Hs, Hs), **e)),
           2 * fl, "compute")


def run(engine, tile, depth, base, batch, reps, torch, sweep=False, save=None):
    """Every case of CASES on every distinct layer of the network (UNet.layers, then the
    bottleneck's dropout and the update of all parameters), and the fusion comparisons; returns
    the rows."""
    b = Bench(engine, torch, reps, save)
    e = dict(engine=engine)
    net = UNet(depth=depth, base_channels=base, engine="numpy")
    layers = net.layers(tile, batch=batch)
    c, h, w = dropout_chw(net.config, tile)
    layers += [dict(op="dropout", name=f"down{depth - 1}.dropout", N=batch, C=c, H=h, W=w),
               dict(op="update", name="all params", n=net.n_params)]
    seen = set()
    for L in layers:
        key = tuple(sorted((k, v) for k, v in L.items() if k != "name"))
        if key in seen:
            continue
        seen.add(key)
        for case in CASES[L["op"]]:
            run_case(b, case, L, e, sweep)
        if L["op"] == "conv3x3" and L["name"].endswith("conv1") and L["name"] != "down0.conv1":
            relu_mask_fusion(b, L, e)  # down0.conv1 needs no input gradient
        if L["op"] == "crop_concat":
            concat_fusion(b, L, e)
    return b.rows


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=runtime.ENGINES)
    ap.add_argument("--batch", type=_positive, default=1, help="tiles per call, >= 1 (default 1)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--json", help="write all figures to this file")
    ap.add_argument("--tiles", action="store_true", help="also time every tile shape of the implicit-GEMM variants "
                    "(rows v3@128x64 ...), to check the per-layer tile choice")
    a = ap.parse_args(argv)
    try:
        engine = runtime.resolve_engine(a.engine)
    except (ValueError, RuntimeError) as e:  # a bad engine or no GPU: one line, not a traceback
        ap.error(str(e))
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
