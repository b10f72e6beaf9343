"""crop_concat: centre-crop the skip map to the up-sampled map's size and concatenate along
channels, skip first (kernels/crop_concat.cu).

Crop offset rule: the window starts at ((Hs - H) // 2, (Ws - W) // 2) — centred, rounded down
when the difference is odd (in the U-Net it is always even: 64->56, 136->104, 280->200, 568->392).
backward returns (dskip at the skip's full size, zero outside the crop; dup).
Variants: 1 (one thread per element).
"""
from __future__ import annotations

from .. import reference
from ..engines.runtime import resolve_engine
from ._core import Variant, as_np, check, check_size, empty, grid1d, i32, kernel, launch, pick_variant, register

FILE = "crop_concat.cu"
register(Variant("crop_concat_forward", 1, "crop_concat_forward_kernel1", FILE, "one thread per output element"),
         Variant("crop_concat_backward", 1, "crop_concat_backward_kernel1", FILE, "one thread per element of dskip and dup"))


def crop_concat_forward(skip, up, engine=None, variant=None):
    """skip (N, Cs, Hs, Ws), up (N, Cu, H, W) -> (N, Cs + Cu, H, W)."""
    op = "crop_concat_forward"
    engine = resolve_engine(engine)
    skip = check(op, "skip", skip, engine, (None,) * 4, names=("N", "Cs", "Hs", "Ws"))
    n, cs, hs, ws = skip.shape
    up = check(op, "up", up, engine, (n, None, None, None), names=("N", "Cu", "H", "W"))
    _, cu, h, w = up.shape
    oy, ox = _offsets(op, (hs, ws), (h, w))
    check_size(op, skip.size + up.size)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        return as_np(op, reference.crop_concat_forward(skip, up), skip, up)
    out = empty(engine, (n, cs + cu, h, w))
    kernel(FILE, launch(rec, "grid1d"), engine)(
        *grid1d(out.size), (skip, up, out, i32(n), i32(cs), i32(hs), i32(ws), i32(cu), i32(h), i32(w), i32(oy), i32(ox)))
    return out


def crop_concat_backward(dout, skip_shape, engine=None, variant=None):
    """dout (N, Cs + Cu, H, W) and the skip's shape (N, Cs, Hs, Ws) -> (dskip, dup)."""
    op = "crop_concat_backward"
    engine = resolve_engine(engine)
    n, cs, hs, ws = (int(s) for s in skip_shape)
    dout = check(op, "dout", dout, engine, (n, None, None, None), names=("N", "Cs+Cu", "H", "W"))
    _, co, h, w = dout.shape
    if co <= cs:
        raise ValueError(f"{op}: dout has {co} channels, not more than the skip's {cs}")
    cu = co - cs
    oy, ox = _offsets(op, (hs, ws), (h, w))
    check_size(op, n * cs * hs * ws + dout.size)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        dskip, dup = reference.crop_concat_backward(dout, (n, cs, hs, ws))
        return as_np(op, dskip, dout), as_np(op, dup, dout)
    dskip = empty(engine, (n, cs, hs, ws))
    dup = empty(engine, (n, cu, h, w))
    kernel(FILE, launch(rec, "grid1d"), engine)(
        *grid1d(dskip.size + dup.size), (dout, dskip, dup, i32(n), i32(cs), i32(hs), i32(ws), i32(cu), i32(h), i32(w), i32(oy), i32(ox)))
    return dskip, dup


def _offsets(op, skip_hw, up_hw):
    try:
        return reference.crop_offsets(skip_hw, up_hw)
    except ValueError as e:
        raise ValueError(f"{op}: {str(e).split(': ', 1)[1]}") from None
