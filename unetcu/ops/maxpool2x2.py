"""maxpool2x2: 2x2 max-pooling, stride 2 (kernels/maxpool2x2.cu).

forward: x (N, C, H, W), H and W even -> (out (N, C, H/2, W/2), argmax uint8 of the same shape,
the winner's position 0..3 row-major in its window, ties to the first). backward routes dout to
the argmax; it needs neither x nor out. An odd size is an error: the U-Net never pools one.
Variants: 1 (one thread per output element).
"""
from __future__ import annotations

import numpy as np

from .. import cpu, reference
from ..engines.runtime import resolve_engine
from ._core import Variant, as_np, check, check_size, empty, grid1d, i32, kernel, launch, pick_variant, register

FILE = "maxpool2x2.cu"
register(Variant("maxpool2x2_forward", 1, "maxpool2x2_forward_kernel1", FILE, "one thread per output"),
         Variant("maxpool2x2_backward", 1, "maxpool2x2_backward_kernel1", FILE, "one thread per output of forward"))


def maxpool2x2_forward(x, engine=None, variant=None):
    op = "maxpool2x2_forward"
    engine = resolve_engine(engine)
    x = check(op, "x", x, engine, (None,) * 4, names=("N", "C", "H", "W"))
    n, c, h, w = x.shape
    if h % 2 or w % 2 or h == 0 or w == 0:
        raise ValueError(f"{op}: x must have even, non-zero height and width, got {h}x{w} "
                         "(choose the input size with unetcu.valid_input_size)")
    check_size(op, x.size)
    rec = pick_variant(op, variant)
    if engine == "numpy":  # float32: the fast path; float64: the oracle
        out, am = (cpu if x.dtype == np.float32 else reference).maxpool2x2_forward(x)
        return as_np(op, out, x), am
    out = empty(engine, (n, c, h // 2, w // 2))
    argmax = empty(engine, (n, c, h // 2, w // 2), np.uint8)
    kernel(FILE, launch(rec, "grid1d"), engine)(*grid1d(out.size), (x, out, argmax, i32(n), i32(c), i32(h), i32(w)))
    return out, argmax


def maxpool2x2_backward(dout, argmax, engine=None, variant=None):
    """dx (N, C, 2h, 2w): dout[n,c,y,x] at its window's argmax, 0 elsewhere."""
    op = "maxpool2x2_backward"
    engine = resolve_engine(engine)
    dout = check(op, "dout", dout, engine, (None,) * 4, names=("N", "C", "H/2", "W/2"))
    argmax = check(op, "argmax", argmax, engine, dout.shape, np.uint8, names=("N", "C", "H/2", "W/2"))
    n, c, h, w = dout.shape
    check_size(op, 4 * dout.size)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        return as_np(op, (cpu if dout.dtype == np.float32 else reference).maxpool2x2_backward(dout, argmax), dout)
    dx = empty(engine, (n, c, 2 * h, 2 * w))
    kernel(FILE, launch(rec, "grid1d"), engine)(*grid1d(dout.size), (dout, argmax, dx, i32(n), i32(c), i32(2 * h), i32(2 * w)))
    return dx
