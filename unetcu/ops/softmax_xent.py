"""softmax_xent: per-pixel softmax + weighted cross-entropy, loss and dlogits in one pass; and the
inference softmax (kernels/softmax_xent.cu).

E = -(1/P) sum_x w(x) log p_label(x)(x), P = N*H*W: normalised per pixel, not by sum w, so the
reported loss is a per-pixel value. Labels outside [0, K) raise ValueError (never a wrong number).
Variants: 1 (one thread per pixel).
"""
from __future__ import annotations

import numpy as np

from .. import reference
from ..engines.runtime import resolve_engine
from ._core import Variant, as_np, check, check_size, empty, grid1d, i32, kernel, launch, pick_variant, register, zeros

FILE = "softmax_xent.cu"
register(Variant("softmax_xent", 1, "softmax_xent_forward_backward_kernel1", FILE,
                 "one thread per pixel; the loss summed by atomics"),
         Variant("softmax", 1, "softmax_forward_kernel1", FILE, "one thread per pixel"))


def softmax_xent(logits, labels, weights, engine=None, variant=None, sync=True):
    """logits (N, K, H, W) float32, labels (N, H, W) int32, weights (N, H, W) float32
    -> (loss as a Python float, dlogits (N, K, H, W)).
    sync=False reads nothing back (for a captured CUDA graph): returns ((loss, bad), dlogits) with
    loss a (1,) float32 array and bad a (1,) int32 array, nonzero if a label was outside [0, K)."""
    op = "softmax_xent"
    engine = resolve_engine(engine)
    logits = check(op, "logits", logits, engine, (None,) * 4, names=("N", "K", "H", "W"))
    n, k, h, w = logits.shape
    labels = check(op, "labels", labels, engine, (n, h, w), np.int32, names=("N", "H", "W"))
    weights = check(op, "weights", weights, engine, (n, h, w), names=("N", "H", "W"))
    check_size(op, logits.size)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        if not sync:
            bad = np.array([int(((labels < 0) | (labels >= k)).any())], np.int32)
            if bad[0]:  # the reference raises on bad labels; report them the way the kernel does
                return (np.array([np.nan], np.float32), bad), np.zeros(logits.shape, np.float32)
        loss, d = reference.softmax_xent(logits, labels, weights)
        return (float(loss), as_np(op, d, logits, weights)) if sync else ((np.array([loss], np.float32), bad), as_np(op, d, logits, weights))
    dlogits = empty(engine, logits.shape)
    loss = zeros(engine, (1,))
    bad = zeros(engine, (1,), np.int32)
    kernel(FILE, launch(rec, "grid1d"), engine)(
        *grid1d(n * h * w), (logits, labels, weights, dlogits, loss, bad, i32(n), i32(k), i32(h * w)))
    if not sync:
        return (loss, bad), dlogits
    if int(bad[0]):
        lo, hi = int(labels.min()), int(labels.max())
        raise ValueError(f"{op}: labels must lie in [0, {k}), found {lo}..{hi}")
    return float(loss[0]), dlogits


def softmax(logits, engine=None, variant=None):
    """Class probabilities (N, K, H, W) of logits (N, K, H, W)."""
    op = "softmax"
    engine = resolve_engine(engine)
    logits = check(op, "logits", logits, engine, (None,) * 4, names=("N", "K", "H", "W"))
    n, k, h, w = logits.shape
    rec = pick_variant(op, variant)
    if engine == "numpy":
        return as_np(op, reference.softmax(logits), logits)
    probs = empty(engine, logits.shape)
    kernel(FILE, launch(rec, "grid1d"), engine)(*grid1d(n * h * w), (logits, probs, i32(n), i32(k), i32(h * w)))
    return probs
