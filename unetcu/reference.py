"""The NumPy reference of every op, forward and backward: the oracle the kernels are tested against
(call it with float64 arrays) and the `numpy` engine of the op layer (float32).

Shapes are NCHW. Weights use PyTorch's layouts: conv (K, C, kh, kw), up-conv (C_in, C_out, 2, 2),
bias (K,). Backward functions return gradients; the op layer decides whether to accumulate.
Each function computes in the dtype its inputs promote to.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64, and inf if out holds any NaN or Inf (a NaN never passes).
    How every kernel result is compared with the reference (tests, demo, benchmarks)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"rel_err: shapes differ, {out.shape} vs {ref.shape}")
    if not np.all(np.isfinite(out)):
        return float("inf")
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))


def tf32_round(a):
    """a (float32 values, any float dtype) rounded to tf32 (10 explicit mantissa bits) to nearest,
    ties away from zero: what __float_to_tf32 does before a tensor-core product. Same dtype back."""
    a = np.asarray(a)
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    finite = np.isfinite(bits.view(np.float32))
    r = np.where(finite, (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000), bits).astype(np.uint32)
    return r.view(np.float32).astype(a.dtype)


PRECISIONS = ("fp32", "tf32")  # of the 3x3 convolutions' products; everything else is fp32


def check_precision(precision, who: str | None = None) -> str:
    """The one check of a precision argument (ops, model, predict, large images): returns it, or
    raises ValueError naming `who`."""
    if precision not in PRECISIONS:
        raise ValueError(f"{who + ': ' if who else ''}precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def _operands(precision, *arrays):
    """The products' operands as the given precision computes them: "fp32" as they are, "tf32"
    rounded (the sums stay exact; the kernels accumulate in fp32)."""
    check_precision(precision)
    return arrays if precision == "fp32" else tuple(tf32_round(a) for a in arrays)


# ---- conv3x3 (valid, stride 1) -------------------------------------------------------------------
def conv3x3_forward(x, w, b, relu=True, precision="fp32"):
    """x (N, C, H, W), w (K, C, 3, 3), b (K,) -> (N, K, H-2, W-2); ReLU applied if relu."""
    x, w = _operands(precision, x, w)
    win = sliding_window_view(x, (3, 3), axis=(2, 3))  # (N, C, H-2, W-2, 3, 3)
    out = np.einsum("nchwij,kcij->nkhw", win, w, optimize=True) + b[None, :, None, None]
    return np.maximum(out, 0) if relu else out


def relu_mask(dout, out):
    """The gradient through a fused ReLU, from what forward kept (its output): dout where out > 0."""
    return dout if out is None else np.where(out > 0, dout, 0)


def conv3x3_backward_data(dout, w, out=None, precision="fp32"):
    """dout (N, K, H-2, W-2), w (K, C, 3, 3) -> dx (N, C, H, W). out: forward's ReLU output, or None."""
    g, w = _operands(precision, relu_mask(dout, out), w)
    gp = np.pad(g, ((0, 0), (0, 0), (2, 2), (2, 2)))
    win = sliding_window_view(gp, (3, 3), axis=(2, 3))  # (N, K, H, W, 3, 3)
    return np.einsum("nkhwij,kcij->nchw", win, w[:, :, ::-1, ::-1], optimize=True)


def conv3x3_backward_weight(dout, x, out=None, precision="fp32"):
    """dout (N, K, H-2, W-2), x (N, C, H, W) -> (dw (K, C, 3, 3), db (K,)). db is exact in both
    precisions (a sum, no product)."""
    g = relu_mask(dout, out)
    gr, x = _operands(precision, g, x)
    win = sliding_window_view(x, (3, 3), axis=(2, 3))
    return np.einsum("nkhw,nchwij->kcij", gr, win, optimize=True), g.sum(axis=(0, 2, 3))


# ---- maxpool2x2 (stride 2) -----------------------------------------------------------------------
def maxpool2x2_forward(x):
    """x (N, C, H, W), H and W even -> (out (N, C, H/2, W/2), argmax (N, C, H/2, W/2) uint8).
    argmax is the position in the 2x2 window, 0..3 row-major; ties go to the first."""
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    idx = win.argmax(axis=-1)
    return np.take_along_axis(win, idx[..., None], -1)[..., 0], idx.astype(np.uint8)


def maxpool2x2_backward(dout, argmax):
    """dout, argmax (N, C, h, w) -> dx (N, C, 2h, 2w): each gradient goes to its window's max."""
    n, c, h, w = dout.shape
    onehot = argmax[..., None] == np.arange(4)
    win = np.where(onehot, dout[..., None], 0).reshape(n, c, h, w, 2, 2)
    return win.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, 2 * h, 2 * w)


# ---- upconv2x2 (transposed conv, kernel 2, stride 2) ---------------------------------------------
def upconv2x2_forward(x, w, b):
    """x (N, C, H, W), w (C, K, 2, 2), b (K,) -> (N, K, 2H, 2W)."""
    n, _, h, wd = x.shape
    out = np.einsum("ncyx,ckij->nkyixj", x, w, optimize=True).reshape(n, w.shape[1], 2 * h, 2 * wd)
    return out + b[None, :, None, None]


def upconv2x2_backward_data(dout, w):
    """dout (N, K, 2H, 2W), w (C, K, 2, 2) -> dx (N, C, H, W)."""
    n, k, h2, w2 = dout.shape
    d = dout.reshape(n, k, h2 // 2, 2, w2 // 2, 2)
    return np.einsum("nkyixj,ckij->ncyx", d, w, optimize=True)


def upconv2x2_backward_weight(dout, x):
    """dout (N, K, 2H, 2W), x (N, C, H, W) -> (dw (C, K, 2, 2), db (K,))."""
    n, k, h2, w2 = dout.shape
    d = dout.reshape(n, k, h2 // 2, 2, w2 // 2, 2)
    return np.einsum("ncyx,nkyixj->ckij", x, d, optimize=True), dout.sum(axis=(0, 2, 3))


# ---- crop_concat ---------------------------------------------------------------------------------
def crop_offsets(skip_hw, up_hw):
    """Centre crop: the top-left corner of the up-sized window in the skip map, rounded down
    ((Hs - H) // 2, (Ws - W) // 2). The U-Net's differences are always even, so it is exact there."""
    (hs, ws), (h, w) = skip_hw, up_hw
    if h > hs or w > ws:
        raise ValueError(f"crop_concat: the up-sampled map ({h}x{w}) is larger than the skip map ({hs}x{ws})")
    return (hs - h) // 2, (ws - w) // 2


def crop_concat_forward(skip, up):
    """skip (N, Cs, Hs, Ws), up (N, Cu, H, W) -> (N, Cs + Cu, H, W): the cropped skip first."""
    oy, ox = crop_offsets(skip.shape[2:], up.shape[2:])
    h, w = up.shape[2:]
    return np.concatenate([skip[:, :, oy:oy + h, ox:ox + w], up], axis=1)


def crop_concat_backward(dout, skip_shape):
    """dout (N, Cs + Cu, H, W) -> (dskip (N, Cs, Hs, Ws), zero outside the crop; dup (N, Cu, H, W))."""
    n, cs, hs, ws = skip_shape
    h, w = dout.shape[2:]
    oy, ox = crop_offsets((hs, ws), (h, w))
    dskip = np.zeros(skip_shape, dtype=dout.dtype)
    dskip[:, :, oy:oy + h, ox:ox + w] = dout[:, :cs]
    return dskip, dout[:, cs:].copy()


# ---- softmax + weighted cross-entropy ------------------------------------------------------------
def softmax(logits):
    """logits (N, K, H, W) -> probabilities over K (max-subtracted, so large logits do not overflow)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_xent(logits, labels, weights):
    """Loss and dlogits of E = -(1/P) sum_x w(x) log p_label(x)(x), P = N*H*W pixels.

    logits (N, K, H, W); labels (N, H, W) integers in [0, K); weights (N, H, W).
    Normalised per pixel (by P, not by sum w), so the loss reads as a per-pixel value."""
    n, k, h, w = logits.shape
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"softmax_xent: labels must lie in [0, {k}), found {labels.min()}..{labels.max()}")
    # accurate where the label's margin is large (p_label -> 1): log s = log1p(r), r the sum of the
    # non-max exp (the max's is 1), and p_label - 1 = -(the other classes' exp) / s, never 1 - 1
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    top = np.zeros(z.shape, bool)
    np.put_along_axis(top, z.argmax(axis=1)[:, None], True, 1)
    r = np.where(top, 0, e).sum(axis=1, keepdims=True)
    lab = labels[:, None].astype(np.int64)
    lp = np.take_along_axis(z, lab, 1)[:, 0] - np.log1p(r[:, 0])
    p_count = n * h * w
    loss = -(weights * lp).sum() / p_count
    s = 1 + r
    d = e / s
    at_label = np.zeros(z.shape, bool)
    np.put_along_axis(at_label, lab, True, 1)
    np.put_along_axis(d, lab, -np.where(at_label, 0, e).sum(axis=1, keepdims=True) / s, 1)
    return loss, d * weights[:, None] / p_count


# ---- conv1x1 (the head) --------------------------------------------------------------------------
def conv1x1_forward(x, w, b):
    """x (N, C, H, W), w (K, C, 1, 1), b (K,) -> (N, K, H, W)."""
    return np.einsum("nchw,kc->nkhw", x, w[:, :, 0, 0], optimize=True) + b[None, :, None, None]


def conv1x1_backward_data(dout, w):
    return np.einsum("nkhw,kc->nchw", dout, w[:, :, 0, 0], optimize=True)


def conv1x1_backward_weight(dout, x):
    return np.einsum("nkhw,nchw->kc", dout, x, optimize=True)[:, :, None, None], dout.sum(axis=(0, 2, 3))


# ---- dropout -------------------------------------------------------------------------------------
def dropout_bits(seed: int, count: int) -> np.ndarray:
    """The counter-based RNG the dropout kernels use: splitmix64 of seed*golden + index, its top 24
    bits (uint32 in [0, 2^24)). Element i's draw depends only on (seed, i), so backward recomputes
    the mask instead of storing it, and every engine draws the same numbers."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.arange(count, dtype=np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.uint32)


def dropout_threshold(p: float) -> int:
    """The integer the kernels compare each 24-bit draw k with: k >= ceil(p * 2^24) exactly when
    k / 2^24 >= p (p * 2^24 is exact in float64). One integer for every engine: p rounded to fp32
    (0.9 -> 15099494 / 2^24) would keep a draw of 15099494 that p = 0.9 drops."""
    return math.ceil(p * (1 << 24))


def dropout_forward(x, p: float, seed: int):
    """Inverted dropout: keep when the draw k(seed, i) >= dropout_threshold(p) (probability 1-p) and
    scale by 1/(1-p), so inference is the identity."""
    keep = dropout_bits(seed, x.size).reshape(x.shape) >= dropout_threshold(p)
    return np.where(keep, x * (1.0 / (1.0 - p)), 0).astype(x.dtype, copy=False)


def dropout_backward(dout, p: float, seed: int):
    return dropout_forward(dout, p, seed)


# ---- SGD with momentum ---------------------------------------------------------------------------
def sgd_momentum(param, grad, velocity, lr: float, momentum: float = 0.99, weight_decay: float = 0.0):
    """Caffe's rule: v <- momentum*v - lr*(grad + weight_decay*param); param <- param + v.
    Returns new (param, velocity)."""
    v = momentum * velocity - lr * (grad + weight_decay * param)
    return param + v, v


def adam(param, grad, m, v, step: int, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0, decoupled: bool = False):
    """Adam (Kingma & Ba 2015, Algorithm 1) as torch.optim.Adam computes it; decoupled=True is AdamW
    (Loshchilov & Hutter 2019): the decay scales the weights instead of entering the gradient.
    step counts from 1. Returns new (param, m, v)."""
    if decoupled:
        param = param * (1 - lr * weight_decay)
    else:
        grad = grad + weight_decay * param
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    return param - (lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + eps), m, v
