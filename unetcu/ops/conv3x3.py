"""conv3x3: valid 3x3 convolution, stride 1 (kernels/conv3x3.cu).

x (N, C, H, W), w (K, C, 3, 3), b (K,) -> out (N, K, H-2, W-2), with an optional fused ReLU.
The backward functions take forward's output `out` when forward applied the ReLU: the gradient
flows only where out > 0 (what forward kept, nothing recomputed).

Variants: forward 1 (thread per output), 2 (shared-memory tiles, 8 channels per thread, default);
backward_data 1; backward_weight 1 (thread per weight + a bias kernel), 2 (block per (c, k)
pair with the bias fused, default).
"""
from __future__ import annotations

from .. import reference
from ._core import (accumulate_reference, as_np, check, check_size, empty, grid1d, i32, kernel, param_grads,
                    pick_variant, resolve)

FILE = "conv3x3.cu"
FORWARD = {1: "conv3x3_forward_kernel1", 2: "conv3x3_forward_kernel2"}
FORWARD_CONCAT = {1: "conv3x3_forward_concat_kernel1"}
BACKWARD_DATA = {1: "conv3x3_backward_data_kernel1"}
BACKWARD_WEIGHT = {1: "conv3x3_backward_weight_kernel1", 2: "conv3x3_backward_weight_kernel2"}


def _input(op, x, engine):
    x = check(op, "x", x, engine, (None,) * 4, names=("N", "C", "H", "W"))
    if x.shape[2] < 3 or x.shape[3] < 3:
        raise ValueError(f"{op}: x must be at least 3x3 for a valid 3x3 convolution, got {x.shape[2]}x{x.shape[3]}")
    return x


def _grad(op, dout, out, engine, shape):
    dout = check(op, "dout", dout, engine, shape, names=("N", "K", "H-2", "W-2"))
    if out is not None:
        out = check(op, "out", out, engine, shape, names=("N", "K", "H-2", "W-2"))
    return dout, out


def conv3x3_forward(x, w, b, relu=True, engine=None, variant=None):
    """out[n,k,y,x] = b[k] + sum_{c,i,j} x[n,c,y+i,x+j] w[k,c,i,j], then max(0, .) if relu."""
    op = "conv3x3_forward"
    engine = resolve(engine)
    x = _input(op, x, engine)
    n, c, h, wd = x.shape
    w = check(op, "w", w, engine, (None, c, 3, 3), names=("K", "C", 3, 3))
    k = w.shape[0]
    b = check(op, "b", b, engine, (k,), names=("K",))
    check_size(op, n * max(c, k) * h * wd)
    if engine == "numpy":
        return as_np(reference.conv3x3_forward(x, w, b, relu))
    name = pick_variant(op, FORWARD, variant)
    out = empty(engine, (n, k, h - 2, wd - 2))
    args = (x, w, b, out, i32(n), i32(c), i32(h), i32(wd), i32(k), i32(bool(relu)))
    if name.endswith("1"):
        grid, block = grid1d(out.size)
    else:
        grid, block = (-(-(wd - 2) // 16) * -(-(h - 2) // 16), -(-k // 8), n), (16, 16)
    kernel(FILE, name, engine)(grid, block, args)
    return out


def conv3x3_forward_concat(skip, up, w, b, relu=True, engine=None, variant=None):
    """conv3x3_forward(crop_concat_forward(skip, up), w, b, relu) without writing the concatenated
    tensor: the kernel reads the cropped skip map and the up-sampled map directly."""
    op = "conv3x3_forward_concat"
    engine = resolve(engine)
    skip = check(op, "skip", skip, engine, (None,) * 4, names=("N", "Cs", "Hs", "Ws"))
    n, cs, hs, ws = skip.shape
    up = _input(op, check(op, "up", up, engine, (n, None, None, None), names=("N", "Cu", "H", "W")), engine)
    _, cu, h, wd = up.shape
    oy, ox = reference.crop_offsets((hs, ws), (h, wd))
    w = check(op, "w", w, engine, (None, cs + cu, 3, 3), names=("K", "Cs+Cu", 3, 3))
    k = w.shape[0]
    b = check(op, "b", b, engine, (k,), names=("K",))
    check_size(op, n * max(cs + cu, k) * max(hs * ws, h * wd))
    if engine == "numpy":
        return as_np(reference.conv3x3_forward(reference.crop_concat_forward(skip, up), w, b, relu))
    name = pick_variant(op, FORWARD_CONCAT, variant)
    out = empty(engine, (n, k, h - 2, wd - 2))
    kernel(FILE, name, engine)(*grid1d(out.size), (skip, up, w, b, out, i32(n), i32(cs), i32(hs), i32(ws), i32(cu),
                                                   i32(h), i32(wd), i32(k), i32(oy), i32(ox), i32(bool(relu))))
    return out


def conv3x3_backward_data(dout, w, out=None, engine=None, variant=None):
    """dx (N, C, H, W) from dout (N, K, H-2, W-2); out: forward's ReLU output, or None without ReLU."""
    op = "conv3x3_backward_data"
    engine = resolve(engine)
    dout = check(op, "dout", dout, engine, (None,) * 4, names=("N", "K", "H-2", "W-2"))
    n, k, ho, wo = dout.shape
    w = check(op, "w", w, engine, (k, None, 3, 3), names=("K", "C", 3, 3))
    c = w.shape[1]
    dout, out = _grad(op, dout, out, engine, (n, k, ho, wo))
    check_size(op, n * max(c, k) * (ho + 2) * (wo + 2))
    if engine == "numpy":
        return as_np(reference.conv3x3_backward_data(dout, w, out))
    name = pick_variant(op, BACKWARD_DATA, variant)
    dx = empty(engine, (n, c, ho + 2, wo + 2))
    kernel(FILE, name, engine)(*grid1d(dx.size), (dout, out, w, dx, i32(n), i32(c), i32(ho + 2), i32(wo + 2), i32(k)))
    return dx


def conv3x3_backward_weight(dout, x, out=None, dw=None, db=None, engine=None, variant=None):
    """Accumulate dw (K, C, 3, 3) += and db (K,) += from dout and forward's input x; returns (dw, db).
    dw/db default to new zero arrays."""
    op = "conv3x3_backward_weight"
    engine = resolve(engine)
    x = _input(op, x, engine)
    n, c, h, wd = x.shape
    dout = check(op, "dout", dout, engine, (n, None, h - 2, wd - 2), names=("N", "K", "H-2", "W-2"))
    k = dout.shape[1]
    dout, out = _grad(op, dout, out, engine, dout.shape)
    dw, db = param_grads(op, engine, dw, db, (k, c, 3, 3), k)
    check_size(op, n * max(c, k) * h * wd)
    if engine == "numpy":
        return accumulate_reference(dw, db, reference.conv3x3_backward_weight(dout, x, out))
    name = pick_variant(op, BACKWARD_WEIGHT, variant)
    sizes = (i32(n), i32(c), i32(h), i32(wd), i32(k))
    if name.endswith("1"):
        kernel(FILE, name, engine)(*grid1d(dw.size), (dout, out, x, dw, *sizes))
        kernel(FILE, "conv3x3_backward_bias_kernel1", engine)((k,), (256,), (dout, out, db, i32(n), i32(h - 2), i32(wd - 2), i32(k)))
    else:
        kernel(FILE, name, engine)((c, k), (256,), (dout, out, x, dw, db, *sizes))
    return dw, db

