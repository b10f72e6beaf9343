"""upconv2x2: 2x2 up-convolution, stride 2 (kernels/upconv2x2.cu).

x (N, C, H, W), w (C, K, 2, 2) (PyTorch's ConvTranspose2d layout), b (K,) -> (N, K, 2H, 2W).
Variants: 1 for each direction (forward and backward-data one thread per element, backward-weight
one block per (c, k) pair with the bias fused).
"""
from __future__ import annotations

import numpy as np

from .. import cpu, reference
from ..engines.runtime import resolve_engine
from ._core import (Variant, accumulate_reference, as_np, check, check_size, empty, grid1d, i32, kernel, param_grads,
                    float_dtype, launch, pick_variant, register)

FILE = "upconv2x2.cu"
register(Variant("upconv2x2_forward", 1, "upconv2x2_forward_kernel1", FILE, "one thread per output"),
         Variant("upconv2x2_backward_data", 1, "upconv2x2_backward_data_kernel1", FILE, "one thread per input element"),
         Variant("upconv2x2_backward_weight", 1, "upconv2x2_backward_weight_kernel1", FILE,
                 "one block per (c, k): a block-wide reduction over the pixels", launch="block_per_ck"),
         flops=lambda p: 2.0 * p["N"] * p["C"] * p["K"] * 4 * p["H"] * p["W"])  # H, W: the input's


def upconv2x2_forward(x, w, b, engine=None, variant=None):
    op = "upconv2x2_forward"
    engine = resolve_engine(engine)
    x = check(op, "x", x, engine, (None,) * 4, names=("N", "C", "H", "W"))
    n, c, h, wd = x.shape
    w = check(op, "w", w, engine, (c, None, 2, 2), names=("C", "K", 2, 2))
    k = w.shape[1]
    b = check(op, "b", b, engine, (k,), names=("K",))
    check_size(op, n * max(c, 4 * k) * h * wd)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        return as_np(op, (cpu if x.dtype == np.float32 else reference).upconv2x2_forward(x, w, b), x, w, b)
    out = empty(engine, (n, k, 2 * h, 2 * wd))
    kernel(FILE, launch(rec, "grid1d"), engine)(*grid1d(out.size), (x, w, b, out, i32(n), i32(c), i32(h), i32(wd), i32(k)))
    return out


def upconv2x2_backward_data(dout, w, engine=None, variant=None):
    """dx (N, C, H, W) from dout (N, K, 2H, 2W)."""
    op = "upconv2x2_backward_data"
    engine = resolve_engine(engine)
    dout = check(op, "dout", dout, engine, (None,) * 4, names=("N", "K", "2H", "2W"))
    n, k, h2, w2 = dout.shape
    if h2 % 2 or w2 % 2:
        raise ValueError(f"{op}: dout must have even height and width, got {h2}x{w2}")
    w = check(op, "w", w, engine, (None, k, 2, 2), names=("C", "K", 2, 2))
    c = w.shape[0]
    check_size(op, dout.size + n * c * h2 * w2)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        return as_np(op, (cpu if dout.dtype == np.float32 else reference).upconv2x2_backward_data(dout, w), dout, w)
    dx = empty(engine, (n, c, h2 // 2, w2 // 2))
    kernel(FILE, launch(rec, "grid1d"), engine)(*grid1d(dx.size), (dout, w, dx, i32(n), i32(c), i32(h2 // 2), i32(w2 // 2), i32(k)))
    return dx


def upconv2x2_backward_weight(dout, x, dw=None, db=None, engine=None, variant=None):
    """Accumulate dw (C, K, 2, 2) += and db (K,) +=; returns (dw, db)."""
    op = "upconv2x2_backward_weight"
    engine = resolve_engine(engine)
    x = check(op, "x", x, engine, (None,) * 4, names=("N", "C", "H", "W"))
    n, c, h, wd = x.shape
    dout = check(op, "dout", dout, engine, (n, None, 2 * h, 2 * wd), names=("N", "K", "2H", "2W"))
    k = dout.shape[1]
    dw, db = param_grads(op, engine, dw, db, (c, k, 2, 2), k, float_dtype(op, dout, x))
    check_size(op, dout.size + x.size)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        return accumulate_reference(dw, db, (cpu if dout.dtype == np.float32 else reference).upconv2x2_backward_weight(dout, x))
    kernel(FILE, launch(rec, "block_per_ck"), engine)((c, k), (256,), (dout, x, dw, db, i32(n), i32(c), i32(h), i32(wd), i32(k)))
    return dw, db
