"""conv3x3: valid 3x3 convolution, stride 1 (kernels/conv3x3.cu, kernels/igemm.cuh).

x (N, C, H, W), w (K, C, 3, 3), b (K,) -> out (N, K, H-2, W-2), with an optional fused ReLU.
The backward functions take forward's output `out` when forward applied the ReLU: the gradient
flows only where out > 0 (what forward kept, nothing recomputed).

Variants (fp32 unless marked; see kernels/README.md for the path from the first to the last):
  forward          1 thread per output, 2 shared-memory tiles, 3 implicit GEMM (default),
                   4 implicit GEMM on tf32 tensor cores (precision="tf32")
  backward_data    1 thread per input element, 2 implicit GEMM (default), 3 tf32
  backward_weight  1 thread per weight + bias kernel, 2 block per (c, k), 3 implicit GEMM split over
                   pixels (default), 4 tf32
The *_concat ops are the same convolutions when the input is crop_concat(skip, up): the implicit-
GEMM kernels read the two maps directly, so the concatenation and its gradient are never stored.

precision: "fp32" (default) or "tf32" (the products' operands rounded to tf32, a 10-bit mantissa,
products summed in fp32: relative error ~3e-4 per convolution, measured). It picks the default
variant of that precision; a variant of the other precision is refused.
tile: (BM, BN) of the implicit-GEMM kernels, one of TILES; None picks per layer (pick_tile).
splits: how many slices of the pixels backward-weight's implicit GEMM reduces in parallel; None
picks (pick_splits).
"""
from __future__ import annotations

import functools

import numpy as np

from .. import cpu, reference
from ..engines.runtime import resolve_engine
from ._core import (Variant, accumulate_reference, as_np, check, check_size, empty, grid1d, i32, kernel, param_grads,
                    float_dtype, launch, pick_variant, register, REGISTRY)

FILE = "conv3x3.cu"
# Implicit-GEMM block tiles (BM x BN), largest first; each is its own kernel (<name>_<BM>x<BN>).
TILES = ((128, 128), (128, 64), (64, 64))
H100_SMS = 132  # what pick_tile assumes off a GPU, so emu and numpy runs choose as an H100 would

IGEMM, IGEMM_TF32 = "implicit GEMM (igemm.cuh)", "implicit GEMM on tf32 tensor cores (mma.h)"
_NO_SHARED = ("no shared-memory-tile variant in this direction (forward's 2), so the implicit GEMMs "
              "are numbered one lower than forward's")
_BIAS, _REDUCE = "conv3x3_backward_bias_kernel1", "conv3x3_backward_weight_reduce_kernel1"
_TRANSPOSE = "conv3x3_weight_transpose_kernel1"  # backward-data's implicit GEMMs read w through it
_SAME_KERNEL = "the same kernel as the plain op's variant of this number (it reads skip and up itself)"


def conv_flops(p: dict) -> float:
    """2 x the multiply-adds of a valid 3x3 conv (any direction) from a kernel's integer arguments:
    N, K, H, W (the input's size) and C, or Cs + Cu for the two-source kernels."""
    c = p["C"] if "C" in p else p["Cs"] + p["Cu"]
    return 2.0 * p["N"] * p["K"] * c * 9 * (p["H"] - 2) * (p["W"] - 2)


register(
    Variant("conv3x3_forward", 1, "conv3x3_forward_kernel1", FILE, "direct: one thread per output"),
    Variant("conv3x3_forward", 2, "conv3x3_forward_kernel2", FILE, "direct: shared-memory input and weight tiles",
            launch="tile16x16x8"),
    Variant("conv3x3_forward", 3, "conv3x3_forward_kernel3", FILE, IGEMM, tiles=TILES, launch="igemm"),
    Variant("conv3x3_forward", 4, "conv3x3_forward_kernel4", FILE, IGEMM_TF32, "tf32", TILES, launch="igemm"),
    Variant("conv3x3_forward_concat", 1, "conv3x3_forward_concat_kernel1", FILE,
            "direct: one thread per output, reading skip and up", note="no 2: the shared-tile kernel has no two-source form"),
    Variant("conv3x3_forward_concat", 3, "conv3x3_forward_kernel3", FILE, IGEMM, tiles=TILES, note=_SAME_KERNEL, launch="igemm"),
    Variant("conv3x3_forward_concat", 4, "conv3x3_forward_kernel4", FILE, IGEMM_TF32, "tf32", TILES, _SAME_KERNEL, launch="igemm"),
    Variant("conv3x3_backward_data", 1, "conv3x3_backward_data_kernel1", FILE, "direct: one thread per input element"),
    Variant("conv3x3_backward_data", 2, "conv3x3_backward_data_kernel2", FILE, IGEMM, tiles=TILES, note=_NO_SHARED,
            helpers=(_TRANSPOSE,), launch="igemm"),
    Variant("conv3x3_backward_data", 3, "conv3x3_backward_data_kernel3", FILE, IGEMM_TF32, "tf32", TILES, _NO_SHARED,
            (_TRANSPOSE,), launch="igemm"),
    Variant("conv3x3_backward_data_concat", 2, "conv3x3_backward_data_kernel2", FILE, IGEMM, tiles=TILES,
            note=_SAME_KERNEL + "; the direct kernel has no split output", helpers=(_TRANSPOSE,), launch="igemm"),
    Variant("conv3x3_backward_data_concat", 3, "conv3x3_backward_data_kernel3", FILE, IGEMM_TF32, "tf32", TILES,
            _SAME_KERNEL, (_TRANSPOSE,), launch="igemm"),
    Variant("conv3x3_backward_weight", 1, "conv3x3_backward_weight_kernel1", FILE, "direct: one thread per weight",
            helpers=(_BIAS,)),
    Variant("conv3x3_backward_weight", 2, "conv3x3_backward_weight_kernel2", FILE,
            "one block per (c, k): a block-wide reduction over the pixels", launch="block_per_ck"),
    Variant("conv3x3_backward_weight", 3, "conv3x3_backward_weight_kernel3", FILE, IGEMM + ", split over the pixels",
            tiles=TILES, helpers=(_REDUCE,), launch="igemm"),
    Variant("conv3x3_backward_weight", 4, "conv3x3_backward_weight_kernel4", FILE,
            IGEMM_TF32 + ", split over the pixels", "tf32", TILES, helpers=(_REDUCE,), launch="igemm"),
    Variant("conv3x3_backward_weight_concat", 3, "conv3x3_backward_weight_kernel3", FILE, IGEMM + ", split over the pixels",
            tiles=TILES, note=_SAME_KERNEL + "; 1 and 2 have no two-source form", helpers=(_REDUCE,), launch="igemm"),
    Variant("conv3x3_backward_weight_concat", 4, "conv3x3_backward_weight_kernel4", FILE,
            IGEMM_TF32 + ", split over the pixels", "tf32", TILES, _SAME_KERNEL, (_REDUCE,), launch="igemm"),
    flops=conv_flops,
)


@functools.lru_cache(maxsize=None)
def _device_sms(device: int) -> int:
    import cupy
    return cupy.cuda.Device(device).attributes["MultiProcessorCount"]


def _sms(engine: str) -> int:
    if engine != "cuda":
        return H100_SMS
    import cupy
    return _device_sms(cupy.cuda.Device().id)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# A guess of each tile's throughput relative to 128x128 when the SM is busy: the 8x8 register tile
# does 64 FMAs per 10 shared-memory reads, 8x4 does 32 per 9, 4x4 16 per 5. To be calibrated on a
# GPU with `unetcu bench kernels --tiles`.
TILE_EFFICIENCY = {(128, 128): 1.0, (128, 64): 0.85, (64, 64): 0.7}


def pick_tile(m: int, n: int, sms: int = H100_SMS) -> tuple[int, int]:
    """The tile with the least predicted time: (waves of blocks, two resident per SM) x (work per
    block) / TILE_EFFICIENCY. Whole waves matter: 298 blocks of 128x128 on 132 SMs are two waves
    whose second is 13 % full. A 128-wide N tile only when N > 64 (else half of it is empty)."""
    best = None
    for (bm, bn), eff in TILE_EFFICIENCY.items():
        if bn > 64 and n <= 64:
            continue
        cost = _cdiv(_cdiv(m, bm) * _cdiv(n, bn), 2 * sms) * bm * bn / eff
        if best is None or cost < best[0]:
            best = (cost, (bm, bn))
    return best[1]


def pick_splits(m: int, n: int, pixels: int, tile, sms: int = H100_SMS) -> int:
    """Backward-weight's product is short (M = 9C, N = K) with a long reduction (N*Ho*Wo pixels,
    325k for a 572 tile's first layers): split the pixels over blocks until every SM has two,
    keeping at least 512 pixels per split so the workspace (splits x K x 9C partial sums, added
    in order by a second kernel) stays a small part of the traffic."""
    tiles = _cdiv(m, tile[0]) * _cdiv(n, tile[1])
    return max(1, min(_cdiv(2 * sms, tiles), pixels // 512))


def _tile(op: str, tile, m: int, n: int, engine: str):
    if tile is None:
        return pick_tile(m, n, _sms(engine))
    if tuple(tile) not in TILES:
        raise ValueError(f"{op}: tile {tile!r} is not one of {TILES}")
    return tuple(tile)


def _variant(op, variant, precision, tile) -> Variant:
    rec = pick_variant(op, variant, precision)
    if tile is not None and not rec.tiles:
        raise ValueError(f"{op}: tile= applies to the implicit-GEMM variants only, not to {rec.kernel}")
    return rec


def _input(op, x, engine):
    x = check(op, "x", x, engine, (None,) * 4, names=("N", "C", "H", "W"))
    if x.shape[2] < 3 or x.shape[3] < 3:
        raise ValueError(f"{op}: x must be at least 3x3 for a valid 3x3 convolution, got {x.shape[2]}x{x.shape[3]}")
    return x


def _concat_input(op, skip, up, engine):
    """Check (skip, up) of a concatenated input; returns them with the crop offsets."""
    skip = check(op, "skip", skip, engine, (None,) * 4, names=("N", "Cs", "Hs", "Ws"))
    n, cs, hs, ws = skip.shape
    up = _input(op, check(op, "up", up, engine, (n, None, None, None), names=("N", "Cu", "H", "W")), engine)
    oy, ox = reference.crop_offsets((hs, ws), up.shape[2:])
    return skip, up, oy, ox


def _grad(op, dout, out, engine, shape):
    dout = check(op, "dout", dout, engine, shape, names=("N", "K", "H-2", "W-2"))
    if out is not None:
        out = check(op, "out", out, engine, shape, names=("N", "K", "H-2", "W-2"))
    return dout, out


def _input_dims(skip, up):
    """(N, C, H, W) of the conv's input: skip itself (up None) or crop_concat(skip, up)."""
    c = skip.shape[1] + (0 if up is None else up.shape[1])
    h, w = (skip if up is None else up).shape[2:]
    return skip.shape[0], c, h, w


def _reference_input(skip, up):
    return skip if up is None else reference.crop_concat_forward(skip, up)


def _source_args(skip, up, oy, ox, k):
    """The two-source kernels' pointers (skip, up) and sizes (N, Cs, Hs, Ws, Cu, H, W, K, oy, ox);
    a plain input x is skip = up = x with Cu = 0."""
    n, cs, hs, ws = skip.shape
    if up is None:
        return (skip, skip), tuple(i32(v) for v in (n, cs, hs, ws, 0, hs, ws, k, 0, 0))
    return (skip, up), tuple(i32(v) for v in (n, cs, hs, ws, *up.shape[1:], k, oy, ox))


# ---- forward -------------------------------------------------------------------------------------
def conv3x3_forward(x, w, b, relu=True, engine=None, variant=None, precision="fp32", tile=None):
    """out[n,k,y,x] = b[k] + sum_{c,i,j} x[n,c,y+i,x+j] w[k,c,i,j], then max(0, .) if relu."""
    op = "conv3x3_forward"
    engine = resolve_engine(engine)
    x = _input(op, x, engine)
    return _forward(op, x, None, 0, 0, w, b, relu, engine, variant, precision, tile)


def conv3x3_forward_concat(skip, up, w, b, relu=True, engine=None, variant=None, precision="fp32", tile=None):
    """conv3x3_forward(crop_concat_forward(skip, up), w, b, relu) without writing the concatenated
    tensor: the kernel reads the cropped skip map and the up-sampled map directly."""
    op = "conv3x3_forward_concat"
    engine = resolve_engine(engine)
    skip, up, oy, ox = _concat_input(op, skip, up, engine)
    return _forward(op, skip, up, oy, ox, w, b, relu, engine, variant, precision, tile)


def _forward(op, skip, up, oy, ox, w, b, relu, engine, variant, precision, tile):
    n, c, h, wd = _input_dims(skip, up)
    w = check(op, "w", w, engine, (None, c, 3, 3), names=("K", "C" if up is None else "Cs+Cu", 3, 3))
    k = w.shape[0]
    b = check(op, "b", b, engine, (k,), names=("K",))
    check_size(op, n * max(c, k) * skip.shape[2] * skip.shape[3])
    rec = _variant(op, variant, precision, tile)
    if engine == "numpy":
        if float_dtype(op, skip, up, w, b) == np.float32:  # the fast float32 path; float64 is the oracle
            return cpu.conv3x3_forward(_reference_input(skip, up), w, b, relu, precision)
        return as_np(op, reference.conv3x3_forward(_reference_input(skip, up), w, b, relu, precision), skip, up, w, b)
    out = empty(engine, (n, k, h - 2, wd - 2))
    if up is not None or rec.launch == "igemm":  # the two-source kernels: implicit GEMM, or concat variant 1
        name = launch(rec, "igemm", "grid1d")
        srcs, geom = _source_args(skip, up, oy, ox, k)
        if rec.launch == "igemm":
            m = n * (h - 2) * (wd - 2)
            bm, bn = _tile(op, tile, m, k, engine)
            name, grid, block = f"{name}_{bm}x{bn}", (_cdiv(m, bm), _cdiv(k, bn), 1), (256,)
        else:
            grid, block = grid1d(out.size)
        kernel(FILE, name, engine)(grid, block, (*srcs, w, b, out, *geom, i32(bool(relu))))
        return out
    name = launch(rec, "grid1d", "tile16x16x8")
    if rec.launch == "grid1d":
        grid, block = grid1d(out.size)
    else:  # a 16x16 pixel tile x 8 output channels per block
        grid, block = (_cdiv(wd - 2, 16) * _cdiv(h - 2, 16), _cdiv(k, 8), n), (16, 16)
    kernel(FILE, name, engine)(grid, block, (skip, w, b, out, i32(n), i32(c), i32(h), i32(wd), i32(k), i32(bool(relu))))
    return out


# ---- backward-data -------------------------------------------------------------------------------
def conv3x3_backward_data(dout, w, out=None, mask=None, engine=None, variant=None, precision="fp32", tile=None):
    """dx (N, C, H, W) from dout (N, K, H-2, W-2); out: forward's ReLU output, or None without ReLU.
    mask: this conv's input x when it is itself a ReLU output (the previous conv's `out`): dx is
    then also multiplied by x > 0, so that conv's backward needs no `out` (implicit-GEMM variants)."""
    op = "conv3x3_backward_data"
    engine = resolve_engine(engine)
    dout, w, out, (n, k, ho, wo), c = _backward_data_args(op, dout, w, out, engine)
    if mask is not None:
        mask = check(op, "mask", mask, engine, (n, c, ho + 2, wo + 2), names=("N", "C", "H", "W"))
    rec = _variant(op, variant, precision, tile)
    if mask is not None and not rec.tiles:
        raise ValueError(f"{op}: mask= needs an implicit-GEMM variant ({sorted(v for v, r in REGISTRY[op].items() if r.tiles)})")
    if engine == "numpy":
        dx = _numpy_backward_data(op, dout, w, out, precision, mask)
        if mask is not None:
            dx = cpu.relu_mask_(dx, mask) if dx.dtype == np.float32 else reference.relu_mask(dx, mask)
        return as_np(op, dx, dout, w, out, mask)
    dx = empty(engine, (n, c, ho + 2, wo + 2))
    if rec.launch == "igemm":
        _backward_data_igemm(op, rec.kernel, dout, out, w, mask, dx, dx, c, 0, engine, tile)
    else:
        kernel(FILE, launch(rec, "grid1d"), engine)(*grid1d(dx.size), (dout, out, w, dx, i32(n), i32(c), i32(ho + 2), i32(wo + 2), i32(k)))
    return dx


def conv3x3_backward_data_concat(dout, w, skip_channels, out=None, engine=None, variant=None, precision="fp32",
                                 tile=None):
    """The input gradient of a conv whose input was crop_concat(skip, up), split on the way out:
    returns (dwin (N, Cs, H, W), dup (N, Cu, H, W)) with Cs = skip_channels. dwin is the gradient of
    the cropped window of skip only (the rest of skip gets none): add it into skip's gradient at the
    crop offsets. Equals crop_concat_backward(conv3x3_backward_data(...)) without the (N, Cs+Cu, H, W)
    tensor in between."""
    op = "conv3x3_backward_data_concat"
    engine = resolve_engine(engine)
    dout, w, out, (n, k, ho, wo), c = _backward_data_args(op, dout, w, out, engine)
    cs = int(skip_channels)
    if not 0 < cs < c:
        raise ValueError(f"{op}: skip_channels must lie in 1..{c - 1} (w has {c} input channels), got {skip_channels}")
    rec = _variant(op, variant, precision, tile)
    if engine == "numpy":
        dx = _numpy_backward_data(op, dout, w, out, precision)
        return as_np(op, dx[:, :cs], dout, w, out), as_np(op, dx[:, cs:], dout, w, out)
    dwin, dup = empty(engine, (n, cs, ho + 2, wo + 2)), empty(engine, (n, c - cs, ho + 2, wo + 2))
    _backward_data_igemm(op, launch(rec, "igemm"), dout, out, w, None, dwin, dup, cs, c - cs, engine, tile)
    return dwin, dup


def _numpy_backward_data(op, dout, w, out, precision, *more):
    """The numpy engine's dx: the fast float32 path, or the float64 oracle."""
    if float_dtype(op, dout, w, out, *more) == np.float32:
        return cpu.conv3x3_backward_data(dout, w, out, precision)
    return reference.conv3x3_backward_data(dout, w, out, precision)


def _backward_data_args(op, dout, w, out, engine):
    dout = check(op, "dout", dout, engine, (None,) * 4, names=("N", "K", "H-2", "W-2"))
    n, k, ho, wo = dout.shape
    w = check(op, "w", w, engine, (k, None, 3, 3), names=("K", "C", 3, 3))
    c = w.shape[1]
    dout, out = _grad(op, dout, out, engine, (n, k, ho, wo))
    check_size(op, n * max(c, k) * (ho + 2) * (wo + 2))
    return dout, w, out, (n, k, ho, wo), c


def _backward_data_igemm(op, name, dout, out, w, mask, dskip, dup, cs, cu, engine, tile):
    n, k, ho, wo = dout.shape
    h, wd = ho + 2, wo + 2
    m = n * h * wd
    bm, bn = _tile(op, tile, m, cs + cu, engine)
    # B with c contiguous (K, 9, C): coalesced loads of the weights (kernels/conv3x3.cu, ConvBackwardData)
    wt = empty(engine, (k, 9, cs + cu))
    g, b = grid1d(wt.size)
    kernel(FILE, _TRANSPOSE, engine)(g, b, (w, wt, i32(k), i32(cs + cu)))
    kernel(FILE, f"{name}_{bm}x{bn}", engine)(
        (_cdiv(m, bm), _cdiv(cs + cu, bn), 1), (256,),
        (dout, out, wt, mask, dskip, dup, i32(n), i32(cs), i32(cu), i32(h), i32(wd), i32(k)))


# ---- backward-weight -----------------------------------------------------------------------------
def conv3x3_backward_weight(dout, x, out=None, dw=None, db=None, engine=None, variant=None, precision="fp32",
                            tile=None, splits=None):
    """Accumulate dw (K, C, 3, 3) += and db (K,) += from dout and forward's input x; returns (dw, db).
    dw/db default to new zero arrays."""
    op = "conv3x3_backward_weight"
    engine = resolve_engine(engine)
    x = _input(op, x, engine)
    return _backward_weight(op, dout, x, None, 0, 0, out, dw, db, engine, variant, precision, tile,
                            splits)


def conv3x3_backward_weight_concat(dout, skip, up, out=None, dw=None, db=None, engine=None, variant=None,
                                   precision="fp32", tile=None, splits=None):
    """conv3x3_backward_weight(dout, crop_concat_forward(skip, up), ...) reading skip and up directly."""
    op = "conv3x3_backward_weight_concat"
    engine = resolve_engine(engine)
    skip, up, oy, ox = _concat_input(op, skip, up, engine)
    return _backward_weight(op, dout, skip, up, oy, ox, out, dw, db, engine, variant, precision,
                            tile, splits)


def _backward_weight(op, dout, skip, up, oy, ox, out, dw, db, engine, variant, precision, tile, splits):
    n, c, h, wd = _input_dims(skip, up)
    dout = check(op, "dout", dout, engine, (n, None, h - 2, wd - 2), names=("N", "K", "H-2", "W-2"))
    k = dout.shape[1]
    dout, out = _grad(op, dout, out, engine, dout.shape)
    dw, db = param_grads(op, engine, dw, db, (k, c, 3, 3), k, float_dtype(op, dout, skip, up, out))
    check_size(op, n * max(c, k) * skip.shape[2] * skip.shape[3])
    rec = _variant(op, variant, precision, tile)
    name = rec.kernel
    if splits is not None and (not rec.tiles or int(splits) < 1):
        raise ValueError(f"{op}: splits= needs an implicit-GEMM variant and a count >= 1, got {splits!r} for {name}")
    if engine == "numpy":
        fast = dw.dtype == np.float32  # the fast float32 path; float64 is the oracle
        return accumulate_reference(dw, db, (cpu if fast else reference).conv3x3_backward_weight(
            dout, _reference_input(skip, up), out, precision))
    sizes = (i32(n), i32(c), i32(h), i32(wd), i32(k))
    name = launch(rec, "igemm", "grid1d", "block_per_ck")
    if rec.launch == "igemm":
        m, pixels = 9 * c, n * (h - 2) * (wd - 2)
        # no "two blocks per SM" rule here: the split over pixels fills the machine instead
        bm, bn = _tile(op, tile, m, k, engine) if tile is not None else (128 if m > 64 else 64, 128 if k > 64 else 64)
        z = int(splits) if splits is not None else pick_splits(m, k, pixels, (bm, bn), _sms(engine))
        # split: partial sums to a workspace, added in a fixed order by the reduce kernel (deterministic)
        work, workb = (empty(engine, (z, k, m)), empty(engine, (z, k))) if z > 1 else (None, None)
        srcs, geom = _source_args(skip, up, oy, ox, k)
        kernel(FILE, f"{name}_{bm}x{bn}", engine)(
            (_cdiv(m, bm), _cdiv(k, bn), z), (256,), (dout, out, *srcs, dw, db, work, workb, *geom))
        if z > 1:
            kernel(FILE, rec.helpers[0], engine)(
                *grid1d(k * m), (work, workb, dw, db, i32(z), i32(k * m), i32(k)))
    elif rec.launch == "grid1d":
        kernel(FILE, name, engine)(*grid1d(dw.size), (dout, out, skip, dw, *sizes))
        kernel(FILE, rec.helpers[0], engine)((k,), (256,), (dout, out, db, i32(n), i32(h - 2), i32(wd - 2), i32(k)))
    else:
        kernel(FILE, name, engine)((c, k), (256,), (dout, out, skip, dw, db, *sizes))
    return dw, db
