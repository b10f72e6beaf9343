"""dropout: inverted dropout with a counter-based RNG (kernels/dropout.cu).

Element i is kept when u(seed, i) >= p and scaled by 1/(1-p); the draw depends only on (seed, i),
so backward recomputes the mask from the same seed and every engine drops the same elements.
seed: an int, or a uint64 array of shape (1,) on the op's engine (read by the kernel from memory,
so a captured CUDA graph draws a new mask when the array's value changes).
Variants: 1 (seed as an argument), 2 (seed in device memory); the seed's type picks one.
"""
from __future__ import annotations

import numpy as np

from .. import reference
from ._core import as_np, check, check_size, empty, f32, grid1d, i32, kernel, pick_variant, resolve

FILE = "dropout.cu"
FORWARD = {1: "dropout_forward_kernel1", 2: "dropout_forward_kernel2"}
BACKWARD = {1: "dropout_backward_kernel1", 2: "dropout_backward_kernel2"}


def _run(op, table, x, p, seed, engine, variant):
    engine = resolve(engine)
    x = check(op, "x" if table is FORWARD else "dout", x, engine)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: p must lie in [0, 1), got {p}")
    on_device = hasattr(seed, "dtype")
    if on_device:
        seed = check(op, "seed", seed, engine, (1,), np.uint64, names=("1",))
    elif not 0 <= int(seed) < 2**64:
        raise ValueError(f"{op}: seed must be a non-negative 64-bit integer, got {seed}")
    check_size(op, x.size)
    if engine == "numpy":
        return as_np(reference.dropout_forward(x, p, int(seed[0]) if on_device else int(seed)))
    name = pick_variant(op, table, variant if variant is not None else (2 if on_device else 1))
    if name.endswith("2") != on_device:
        raise ValueError(f"{op}: variant {variant} takes the seed {'in a (1,) uint64 array' if name.endswith('2') else 'as an int'}")
    out = empty(engine, x.shape)
    kernel(FILE, name, engine)(
        *grid1d(x.size), (x, out, i32(x.size), f32(p), f32(1.0 / (1.0 - p)), seed if on_device else np.uint64(seed)))
    return out


def dropout_forward(x, p=0.5, seed=0, engine=None, variant=None):
    """x * keep / (1 - p), keep = u(seed, i) >= p. Training only: at inference skip the op."""
    return _run("dropout_forward", FORWARD, x, p, seed, engine, variant)


def dropout_backward(dout, p=0.5, seed=0, engine=None, variant=None):
    """dx = dout * keep / (1 - p) with forward's keep mask (same p and seed)."""
    return _run("dropout_backward", BACKWARD, dout, p, seed, engine, variant)
