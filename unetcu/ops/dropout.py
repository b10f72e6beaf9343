"""dropout: inverted dropout with a counter-based RNG (kernels/dropout.cu).

Element i is kept when its 24-bit draw k(seed, i) >= reference.dropout_threshold(p) (k / 2^24 >= p,
exactly) and scaled by 1/(1-p); the draw depends only on (seed, i),
so backward recomputes the mask from the same seed and every engine drops the same elements.
seed: an int, or a uint64 array of shape (1,) on the op's engine (read by the kernel from memory,
so a captured CUDA graph draws a new mask when the array's value changes).
Variants: 1 (seed as an argument), 2 (seed in device memory); the seed's type picks one.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import reference
from ..engines.runtime import resolve_engine
from ._core import Variant, as_np, check, check_size, empty, f32, grid1d, i32, kernel, launch, pick_variant, register

FILE = "dropout.cu"
SEED_IN_MEMORY = 2  # the variant that reads the seed from a (1,) uint64 array; variant=None picks it for one
for _d in ("forward", "backward"):
    register(Variant(f"dropout_{_d}", 1, f"dropout_{_d}_kernel1", FILE, "one thread per element, seed as an argument",
                     default=True),
             Variant(f"dropout_{_d}", SEED_IN_MEMORY, f"dropout_{_d}_kernel2", FILE,
                     "one thread per element, seed read from device memory (a CUDA graph replays it)",
                     note="run when the seed is a (1,) uint64 array (variant=None picks it then)"))


def _run(op, x, p, seed, engine, variant):
    engine = resolve_engine(engine)
    x = check(op, "x" if op.endswith("forward") else "dout", x, engine)
    if not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: p must lie in [0, 1), got {p!r}")
    on_device = hasattr(seed, "dtype") and not isinstance(seed, np.generic)  # an array, not a NumPy scalar
    if on_device:
        seed = check(op, "seed", seed, engine, (1,), np.uint64, names=("1",))
    elif not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**64:  # 1.5 is no seed: never truncated
        raise ValueError(f"{op}: seed must be an integer in [0, 2^64) or a (1,) uint64 array, got {seed!r}")
    check_size(op, x.size)
    rec = pick_variant(op, variant if variant is not None else (SEED_IN_MEMORY if on_device else None))
    if (rec.number == SEED_IN_MEMORY) != on_device:
        raise ValueError(f"{op}: variant {variant} takes the seed {'in a (1,) uint64 array' if not on_device else 'as an int'}")
    if engine == "numpy":
        return as_np(op, reference.dropout_forward(x, p, int(seed[0]) if on_device else int(seed)), x)
    out = empty(engine, x.shape)
    threshold = np.uint32(reference.dropout_threshold(p))  # an integer: no engine rounds p
    kernel(FILE, launch(rec, "grid1d"), engine)(
        *grid1d(x.size), (x, out, i32(x.size), threshold, f32(1.0 / (1.0 - p)), seed if on_device else np.uint64(seed)))
    return out


def dropout_forward(x, p=0.5, seed=0, engine=None, variant=None):
    """x * keep / (1 - p), keep = draw k(seed, i) / 2^24 >= p. Training only: at inference skip the op."""
    return _run("dropout_forward", x, p, seed, engine, variant)


def dropout_backward(dout, p=0.5, seed=0, engine=None, variant=None):
    """dx = dout * keep / (1 - p) with forward's keep mask (same p and seed)."""
    return _run("dropout_backward", dout, p, seed, engine, variant)
