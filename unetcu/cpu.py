"""The numpy engine's float32 ops: the valid 3x3 convolution, the 2x2 up-convolution and the 1x1 head
each lowered to GEMMs per image through NumPy's BLAS, and max-pooling in one Numba pass;
apart from the float64 oracle in reference.py (which stays the plain, obviously right einsum code the
kernels are tested against, and which these are tested against: tests/test_cpu.py).

The lowering (im2col over a flat image): an image x (C, H, W) is read as its flat (C, H*W) rows.
The output pixel (y, x) of a valid 3x3 convolution is computed at the flat position p = y*W + x of a
grid as wide as the input (the last two columns of each row are garbage and are dropped), and tap
(dy, dx) reads the flat input at p + dy*W + dx. So each tap's operand is one *contiguous* slice of
every channel's row, x_flat[:, s : s + L] with s = dy*W + dx and L = (H-3)*W + W-2 (the last valid
output's flat position + 1, which keeps every read inside the image): im2col is 9 slice copies
(memcpy speed) instead of a gather, and the GEMM is (K, 9C + 1) @ (9C + 1, L), the bias riding on a
row of ones, in chunks of CHUNK columns that stay in cache.
Backward-weight is the same im2col times the gradient laid out on the same wide grid (zeros in the
garbage columns); backward-data is the forward convolution of the gradient zero-padded by 2 with
the kernel flipped and transposed (C and K swapped), as in reference.conv3x3_backward_data.

Buffers (the im2col matrix, the wide output) are kept per thread and shape and reused across calls:
a training step allocates them once. Threads: NumPy's BLAS uses its own thread pool (OpenBLAS: all
cores unless OPENBLAS_NUM_THREADS says otherwise); `unetcu train` names it and its threads (blas_info()).
"""
from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit

from .reference import tf32_round

_local = threading.local()  # predict's Dask threads run the numpy engine concurrently: a buffer per thread


def blas_info() -> str:
    """The BLAS behind NumPy's matmul and its thread count, e.g. 'openblas 0.3.31, 2 threads'
    (threadpoolctl), for the run's banner: the numpy engine's speed is mostly this library's."""
    from threadpoolctl import threadpool_info
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    # NumPy's own (numpy.libs/...): SciPy may load a second OpenBLAS that NumPy's matmul never calls
    libs = [i for i in libs if "numpy" in i.get("filepath", "")] or libs
    return ", ".join(f"{i['internal_api']} {i.get('version') or ''}".rstrip() + f", {i['num_threads']} threads"
                     for i in libs) or "no BLAS found by threadpoolctl"


def _buffer(name: str, shape, init=None) -> np.ndarray:
    """A float32 scratch array of this shape, reused by the next call of the same name and shape on this
    thread (its contents are whatever the last call left); init(a) runs once, when it is created."""
    cache = getattr(_local, "buffers", None)
    if cache is None:
        cache = _local.buffers = {}
    key = (name, tuple(shape))
    a = cache.get(key)
    if a is None:
        if len(cache) > 64:  # a run of many shapes (predict over odd image sizes): keep the memory bounded
            cache.clear()
        a = cache[key] = np.empty(shape, np.float32)
        if init is not None:
            init(a)
    return a


def _ones_row(a):
    a[-1] = 1.0


CHUNK = 2048  # output columns per GEMM: the chunk's im2col rows stay in L2 (9C+1 x 2048 floats: 1.2 MB at C=16)


def _im2col_chunks(xi: np.ndarray):
    """Yield (j0, j1, cols) over xi (C, H, W): cols (9C + 1, j1 - j0) holds flat columns j0..j1 of the
    im2col matrix, row t*C + c = channel c's flat row read from tap t = 3*dy + dx, the last row ones (so
    the bias is the GEMM's last column, and db the last column of dw's GEMM). Chunks of CHUNK columns
    keep the matrix in cache between its 9 slice copies and the GEMM that reads it (20-25 % faster at
    the 188 tile than one (9C + 1, L) matrix that streams through memory)."""
    c, h, w = xi.shape
    length = (h - 3) * w + w - 2
    flat = xi.reshape(c, h * w)
    buf = _buffer("conv.cols", (9 * c + 1, min(CHUNK, length)), _ones_row)
    for j0 in range(0, length, CHUNK):
        j1 = min(length, j0 + CHUNK)
        cols = buf[:, :j1 - j0]
        for t in range(9):
            s = (t // 3) * w + t % 3 + j0
            cols[t * c:(t + 1) * c] = flat[:, s:s + j1 - j0]
        yield j0, j1, cols


def _tf32(precision, *arrays):
    """The products' operands as `precision` computes them (reference._operands' rule)."""
    return arrays if precision == "fp32" else tuple(tf32_round(a) for a in arrays)


def conv3x3_forward(x, w, b, relu=True, precision="fp32"):
    """x (N, C, H, W), w (K, C, 3, 3), b (K,) float32 -> (N, K, H-2, W-2) float32, ReLU applied if relu.
    Same as reference.conv3x3_forward to float32 rounding (a different summation order)."""
    x, w = _tf32(precision, x, w)
    n, c, h, wd = x.shape
    k = w.shape[0]
    ho, wo = h - 2, wd - 2
    # (K, 9C + 1): column t*C + c = w[:, c, dy, dx] (im2col's row order), then the bias
    wb = np.concatenate([w.transpose(0, 2, 3, 1).reshape(k, 9 * c), b[:, None]], axis=1)
    out = np.empty((n, k, ho, wo), np.float32)
    wide = _buffer("conv.wide", (k, ho * wd))  # the output on the input-wide grid
    for i in range(n):
        for j0, j1, cols in _im2col_chunks(x[i]):
            np.matmul(wb, cols, out=wide[:, j0:j1])
        valid = wide.reshape(k, ho, wd)[:, :, :wo]
        if relu:
            np.maximum(valid, 0, out=out[i])
        else:
            out[i] = valid
    return out


def _masked(dout, out, dst):
    """dst = the gradient through forward's ReLU (dout where out > 0), or dout itself without one."""
    if out is None:
        dst[...] = dout
    else:
        np.multiply(dout, out > 0, out=dst)


@njit(nogil=True, cache=True)
def _zero_where_not_positive(d, m):
    for i in range(d.size):
        if not m[i] > 0:  # a NaN in m zeroes too
            d[i] = 0


def relu_mask_(dx, x):
    """dx *= (x > 0) in place, as reference.relu_mask (0 wherever x > 0 fails, NaN x included, whatever dx
    holds there): the gradient through the ReLU that produced x. dx C-contiguous, x of its shape. One
    pass (np.where or a masked np.copyto take 10x longer: they branch per element through NumPy's
    generic masked loops)."""
    _zero_where_not_positive(dx.reshape(-1), np.ascontiguousarray(x).reshape(-1))
    return dx


def conv3x3_backward_weight(dout, x, out=None, precision="fp32"):
    """dout (N, K, H-2, W-2), x (N, C, H, W) float32 -> (dw (K, C, 3, 3), db (K,)); dout is masked by
    out > 0 when forward's ReLU output `out` is given (as reference.conv3x3_backward_weight; db is
    exact in both precisions)."""
    n, c, h, wd = x.shape
    k, ho, wo = dout.shape[1:]
    wide = _buffer("conv.gwide", (k, ho, wd))  # the gradient on the input-wide grid, 0 in the garbage columns
    wide[:, :, wo:] = 0
    dwb = np.zeros((k, 9 * c + 1), np.float32)
    db = np.zeros(k, np.float32)
    for i in range(n):
        _masked(dout[i], None if out is None else out[i], wide[:, :, :wo])
        if precision != "fp32":  # db from the unrounded gradient; the products from the rounded one
            db += wide.sum(axis=(1, 2))
            wide[...] = tf32_round(wide)
        # (K, L) @ (L, 9C + 1) by chunks of L, BLAS reading the transposed view as it is; the last column is db.
        # Each image's sum is added whole: a batch of N gives what N processes of one image sum (distributed)
        g = wide.reshape(k, ho * wd)
        dwi = np.zeros_like(dwb)
        for j0, j1, cols in _im2col_chunks(_tf32(precision, x[i])[0]):
            dwi += g[:, j0:j1] @ cols.T
        dwb += dwi
    if precision == "fp32":
        db = dwb[:, -1].copy()
    return np.ascontiguousarray(dwb[:, :-1].reshape(k, 3, 3, c).transpose(0, 3, 1, 2)), db


def _zeros(a):
    a[...] = 0.0


def conv3x3_backward_data(dout, w, out=None, precision="fp32"):
    """dout (N, K, H-2, W-2), w (K, C, 3, 3) float32 -> dx (N, C, H, W): the forward convolution of the
    (ReLU-masked) gradient zero-padded by 2 with w flipped and transposed."""
    n, k, ho, wo = dout.shape
    g = _buffer("conv.gpad", (n, k, ho + 4, wo + 4), _zeros)  # the border stays 0: only the inside is written
    _masked(dout, out, g[:, :, 2:-2, 2:-2])
    wt = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, K, 3, 3)
    return conv3x3_forward(g, wt, np.zeros(w.shape[1], np.float32), relu=False, precision=precision)


# ---- maxpool2x2: one pass over the input in a Numba loop (NumPy's elementwise passes over the four
# window views cost 5x more: each comparison and select is a pass over memory) ------------------------
@njit(nogil=True, cache=True)
def _maxpool_forward(x, out, argmax):
    n, c, h, w = out.shape
    for i in range(n):
        for ch in range(c):
            for y in range(h):
                for xx in range(w):
                    best, pos = x[i, ch, 2 * y, 2 * xx], 0
                    for p in range(1, 4):
                        v = x[i, ch, 2 * y + p // 2, 2 * xx + p % 2]
                        if v > best or (v != v and best == best):  # a NaN wins, as in reference.py's argmax
                            best, pos = v, p
                    out[i, ch, y, xx], argmax[i, ch, y, xx] = best, pos


@njit(nogil=True, cache=True)
def _maxpool_backward(dout, argmax, dx):
    n, c, h, w = dout.shape
    for i in range(n):
        for ch in range(c):
            for y in range(h):
                for xx in range(w):
                    pos = argmax[i, ch, y, xx]  # dx is zeros: only the maximum's place is written
                    if pos < 4:  # (another value matches no place, as in reference.py)
                        dx[i, ch, 2 * y + pos // 2, 2 * xx + pos % 2] = dout[i, ch, y, xx]


def maxpool2x2_forward(x):
    """x (N, C, H, W) float32, H and W even -> (out (N, C, H/2, W/2), argmax uint8 0..3 row-major, ties
    to the first, a NaN taken as the maximum), as reference.maxpool2x2_forward."""
    n, c, h, w = x.shape
    out = np.empty((n, c, h // 2, w // 2), x.dtype)
    argmax = np.empty(out.shape, np.uint8)
    _maxpool_forward(np.ascontiguousarray(x), out, argmax)
    return out, argmax


def maxpool2x2_backward(dout, argmax):
    """dout, argmax (N, C, h, w) -> dx (N, C, 2h, 2w): each gradient at its window's argmax, 0 elsewhere."""
    n, c, h, w = dout.shape
    dx = np.zeros((n, c, 2 * h, 2 * w), dout.dtype)
    _maxpool_backward(np.ascontiguousarray(dout), np.ascontiguousarray(argmax), dx)
    return dx


# ---- upconv2x2 and conv1x1: one GEMM per image -----------------------------------------------------
# Per image, like the 3x3 convolutions: an image's arithmetic never depends on the batch it came in
# (BLAS rounds a row differently with the matrix's row count), so a batch of N computes exactly what
# N processes of one image each compute (train --distributed's ranks against one process).
def _up_rows(w):
    """w (C, K, 2, 2) -> (4K, C), row (k, i, j) = w[:, k, i, j]."""
    c, k = w.shape[:2]
    return np.ascontiguousarray(w.transpose(1, 2, 3, 0)).reshape(4 * k, c)


def _up_split(di):
    """di (K, 2H, 2W) -> (4K, H*W): row (k, i, j) holds the pixels (2y + i, 2x + j)."""
    k, h2, w2 = di.shape
    return np.ascontiguousarray(di.reshape(k, h2 // 2, 2, w2 // 2, 2).transpose(0, 2, 4, 1, 3)).reshape(4 * k, -1)


def upconv2x2_forward(x, w, b):
    """x (N, C, H, W), w (C, K, 2, 2), b (K,) -> (N, K, 2H, 2W), as reference.upconv2x2_forward."""
    n, c, h, wd = x.shape
    k = w.shape[1]
    wm = _up_rows(w)
    out = np.empty((n, k, 2 * h, 2 * wd), np.float32)
    for i in range(n):
        y = (wm @ x[i].reshape(c, h * wd)).reshape(k, 2, 2, h, wd)  # (k, i, j, y, x)
        np.add(y.transpose(0, 3, 1, 4, 2).reshape(k, 2 * h, 2 * wd), b[:, None, None], out=out[i])
    return out


def upconv2x2_backward_data(dout, w):
    """dout (N, K, 2H, 2W), w (C, K, 2, 2) -> dx (N, C, H, W)."""
    n, k, h2, w2 = dout.shape
    wt = _up_rows(w).T  # (C, 4K)
    return np.stack([(wt @ _up_split(dout[i])).reshape(-1, h2 // 2, w2 // 2) for i in range(n)])


def upconv2x2_backward_weight(dout, x):
    """dout (N, K, 2H, 2W), x (N, C, H, W) -> (dw (C, K, 2, 2), db (K,)), each image's sum added whole."""
    n, c = x.shape[:2]
    k = dout.shape[1]
    dw, db = np.zeros((c, 4 * k), np.float32), np.zeros(k, np.float32)
    for i in range(n):
        dw += x[i].reshape(c, -1) @ _up_split(dout[i]).T
        db += dout[i].sum(axis=(1, 2))
    return dw.reshape(c, k, 2, 2), db


def conv1x1_forward(x, w, b):
    """x (N, C, H, W), w (K, C, 1, 1), b (K,) -> (N, K, H, W)."""
    n, c, h, wd = x.shape
    wm = w[:, :, 0, 0]
    out = np.empty((n, w.shape[0], h, wd), np.float32)
    for i in range(n):
        np.add((wm @ x[i].reshape(c, -1)).reshape(-1, h, wd), b[:, None, None], out=out[i])
    return out


def conv1x1_backward_data(dout, w):
    """dout (N, K, H, W), w (K, C, 1, 1) -> dx (N, C, H, W)."""
    n, k, h, wd = dout.shape
    wt = w[:, :, 0, 0].T
    return np.stack([(wt @ dout[i].reshape(k, -1)).reshape(-1, h, wd) for i in range(n)])


def conv1x1_backward_weight(dout, x):
    """dout (N, K, H, W), x (N, C, H, W) -> (dw (K, C, 1, 1), db (K,)), each image's sum added whole."""
    n, c = x.shape[:2]
    k = dout.shape[1]
    dw, db = np.zeros((k, c), np.float32), np.zeros(k, np.float32)
    for i in range(n):
        dw += dout[i].reshape(k, -1) @ x[i].reshape(c, -1).T
        db += dout[i].sum(axis=(1, 2))
    return dw[:, :, None, None], db


# ---- adam_update: one pass, in place ----------------------------------------------------------------
@njit(nogil=True, cache=True)
def _adam(p, g, m, v, lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, weight_decay, bc1, bc2_sqrt, decoupled):
    one = np.float32(1)
    for i in range(p.size):  # kernels/adam.cu's adam_update_kernel1, line for line, in float32
        pi, gi = p[i], g[i]
        if decoupled:
            pi *= one - lr * weight_decay
        else:
            gi += weight_decay * pi
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * gi * gi
        m[i], v[i] = mi, vi
        p[i] = pi - (lr / bc1) * mi / (np.sqrt(vi) / bc2_sqrt + eps)


def adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """Adam/AdamW on float32 arrays, in place: param, m and v C-contiguous of one shape (ops.adam_update
    checks), grad of that shape. The arithmetic of kernels/adam.cu: float32 throughout, with 1 - beta,
    the bias correction 1 - beta1^step and sqrt(1 - beta2^step) computed in double once and rounded
    (reference.adam is the float64 oracle). One pass over memory instead of NumPy's ~15 array passes."""
    f = np.float32
    _adam(param.reshape(-1), np.ascontiguousarray(grad, np.float32).reshape(-1), m.reshape(-1), v.reshape(-1),
          f(lr), f(beta1), f(beta2), f(1.0 - beta1), f(1.0 - beta2), f(eps), f(weight_decay),
          f(1.0 - beta1 ** int(step)), f(math.sqrt(1.0 - beta2 ** int(step))), bool(decoupled))
    return param
