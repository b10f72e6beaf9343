"""conv1x1: the 1x1 convolution of the head, 64 features -> classes (kernels/conv1x1.cu).

x (N, C, H, W), w (K, C, 1, 1), b (K,) -> (N, K, H, W). Variants: 1 for each direction.
"""
from __future__ import annotations

import numpy as np

from .. import cpu, reference
from ..engines.runtime import resolve_engine
from ._core import (Variant, accumulate_reference, as_np, check, check_size, empty, grid1d, i32, kernel, param_grads,
                    float_dtype, launch, pick_variant, register)

FILE = "conv1x1.cu"
register(Variant("conv1x1_forward", 1, "conv1x1_forward_kernel1", FILE, "one thread per output"),
         Variant("conv1x1_backward_data", 1, "conv1x1_backward_data_kernel1", FILE, "one thread per input element"),
         Variant("conv1x1_backward_weight", 1, "conv1x1_backward_weight_kernel1", FILE,
                 "one block per (c, k): a block-wide reduction over the pixels", launch="block_per_ck"),
         flops=lambda p: 2.0 * p["N"] * p["C"] * p["K"] * p["HW"])


def conv1x1_forward(x, w, b, engine=None, variant=None):
    op = "conv1x1_forward"
    engine = resolve_engine(engine)
    x = check(op, "x", x, engine, (None,) * 4, names=("N", "C", "H", "W"))
    n, c, h, wd = x.shape
    w = check(op, "w", w, engine, (None, c, 1, 1), names=("K", "C", 1, 1))
    k = w.shape[0]
    b = check(op, "b", b, engine, (k,), names=("K",))
    check_size(op, n * max(c, k) * h * wd)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        return as_np(op, (cpu if x.dtype == np.float32 else reference).conv1x1_forward(x, w, b), x, w, b)
    out = empty(engine, (n, k, h, wd))
    kernel(FILE, launch(rec, "grid1d"), engine)(*grid1d(out.size), (x, w, b, out, i32(n), i32(c), i32(h * wd), i32(k)))
    return out


def conv1x1_backward_data(dout, w, engine=None, variant=None):
    op = "conv1x1_backward_data"
    engine = resolve_engine(engine)
    dout = check(op, "dout", dout, engine, (None,) * 4, names=("N", "K", "H", "W"))
    n, k, h, wd = dout.shape
    w = check(op, "w", w, engine, (k, None, 1, 1), names=("K", "C", 1, 1))
    c = w.shape[1]
    check_size(op, n * max(c, k) * h * wd)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        return as_np(op, (cpu if dout.dtype == np.float32 else reference).conv1x1_backward_data(dout, w), dout, w)
    dx = empty(engine, (n, c, h, wd))
    kernel(FILE, launch(rec, "grid1d"), engine)(*grid1d(dx.size), (dout, w, dx, i32(n), i32(c), i32(h * wd), i32(k)))
    return dx


def conv1x1_backward_weight(dout, x, dw=None, db=None, engine=None, variant=None):
    """Accumulate dw (K, C, 1, 1) += and db (K,) +=; returns (dw, db)."""
    op = "conv1x1_backward_weight"
    engine = resolve_engine(engine)
    x = check(op, "x", x, engine, (None,) * 4, names=("N", "C", "H", "W"))
    n, c, h, wd = x.shape
    dout = check(op, "dout", dout, engine, (n, None, h, wd), names=("N", "K", "H", "W"))
    k = dout.shape[1]
    dw, db = param_grads(op, engine, dw, db, (k, c, 1, 1), k, float_dtype(op, dout, x))
    check_size(op, n * max(c, k) * h * wd)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        return accumulate_reference(dw, db, (cpu if dout.dtype == np.float32 else reference).conv1x1_backward_weight(dout, x))
    kernel(FILE, launch(rec, "block_per_ck"), engine)((c, k), (256,), (dout, x, dw, db, i32(n), i32(c), i32(h * wd), i32(k)))
    return dw, db
