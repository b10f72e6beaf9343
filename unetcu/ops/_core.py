"""What every op module shares: the op engines, argument checks, kernel launches.

Op engines: "cuda" (our kernels on the GPU, CuPy arrays), "emu" (the same kernels in the CPU
emulator, NumPy arrays), "numpy" (the reference in unetcu/reference.py, NumPy arrays). Default: an
explicit engine= wins, then UNETCU_ENGINE, then cuda when a GPU is usable, else numpy.

Inputs are float32 (int32 labels, uint8 argmax). Another dtype is refused with a TypeError that
says how to convert (unetcu never changes precision behind your back); a non-contiguous array is
copied to a contiguous one (kernels index it as C-contiguous).
"""
from __future__ import annotations

import os

import numpy as np

from .. import runtime, sanitize

OP_ENGINES = ("numpy", "emu", "cuda")
BLOCK = 256


def resolve(engine: str | None) -> str:
    if engine is None:
        engine = os.environ.get("UNETCU_ENGINE") or ("cuda" if runtime.gpu_available() else "numpy")
    if engine not in OP_ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(OP_ENGINES)}")
    if engine != "numpy":
        runtime.resolve_engine(engine)  # raises if cuda is asked for without a GPU
    return engine


def xp(engine: str):
    return runtime.xp(engine)


def _fmt(spec) -> str:
    items = [str(s) for s in spec]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def check(op: str, name: str, a, engine: str, shape=None, dtype=np.float32, names=None):
    """Validate one array argument and return it C-contiguous.

    shape: a tuple of ints or None (any size) per dimension; names: the dimension names for the
    message, e.g. ("N", "C", "H", "W")."""
    mod = xp(engine)
    if not isinstance(a, mod.ndarray):
        kind = "CuPy" if engine == "cuda" else "NumPy"
        raise TypeError(f"{op}: {name} must be a {kind} array on engine '{engine}', got {type(a).__module__}.{type(a).__name__}")
    if shape is not None:
        spec = _fmt(names) if names else ""
        if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
            want = _fmt("?" if s is None else s for s in shape)
            raise ValueError(f"{op}: {name} must have shape {spec}{' = ' if spec else ''}{want}, got {tuple(a.shape)}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{op}: {name} must be {np.dtype(dtype).name}, got {a.dtype} "
                        f"(convert it explicitly, e.g. .astype(np.{np.dtype(dtype).name}))")
    return mod.ascontiguousarray(a)


def empty(engine: str, shape, dtype=np.float32):
    """An output buffer. On emu (and anywhere with UNETCU_POISON=1) it is poisoned first, NaN for
    floats and all-ones bits for integers, so an element a kernel forgets to write shows up."""
    a = xp(engine).empty(shape, dtype=dtype)
    if engine == "emu" or os.environ.get("UNETCU_POISON") == "1":
        a.fill(np.nan if np.dtype(dtype).kind == "f" else np.iinfo(dtype).max)
    if engine == "emu":
        sanitize.track(a)  # initcheck: a kernel reading it before a kernel wrote it is reported
    return a


def zeros(engine: str, shape, dtype=np.float32):
    return xp(engine).zeros(shape, dtype=dtype)


def kernel(filename: str, name: str, engine: str):
    fn = runtime.load(filename, engine).get_function(name)
    if engine != "cuda":
        return fn

    def launch(grid, block, args, shared_mem=0):
        # None stands for a null pointer (e.g. "no ReLU output"): an 8-byte zero for CuPy
        return fn(grid, block, tuple(np.uint64(0) if a is None else a for a in args), shared_mem=shared_mem)
    return launch


def grid1d(total: int) -> tuple[tuple[int], tuple[int]]:
    return ((max(1, -(-total // BLOCK)),), (BLOCK,))


PRECISIONS = ("fp32", "tf32")


def pick_variant(op: str, variants: dict, variant, precision: str = "fp32", tf32=frozenset()):
    """variants: {number: kernel name}; tf32: the names that compute in tf32. None picks the
    default of the precision: its highest number. A variant of the other precision is refused, so
    that a precision is never changed behind the caller's back."""
    if precision not in PRECISIONS:
        raise ValueError(f"{op}: precision must be one of {PRECISIONS}, got {precision!r}")
    mine = _of_precision(variants, precision, tf32)
    if variant is None:
        if not mine:
            raise ValueError(f"{op}: no {precision} variant")
        return variants[mine[-1]]
    if variant not in variants:
        raise ValueError(f"{op}: no variant {variant!r}; available: {sorted(variants)}")
    if variant not in mine:
        other = "tf32" if precision == "fp32" else "fp32"
        raise ValueError(f"{op}: variant {variant} computes in {other}; pass precision={other!r} "
                         f"({precision} variants: {mine})")
    return variants[variant]


def _of_precision(variants: dict, precision: str, tf32) -> list[int]:
    return sorted(v for v, name in variants.items() if (name in tf32) == (precision == "tf32"))


def default_variant(variants: dict, precision: str = "fp32", tf32=frozenset()) -> int:
    """The number pick_variant(..., None, precision) chooses."""
    return _of_precision(variants, precision, tf32)[-1]


def i32(v) -> np.int32:
    if not -2**31 <= int(v) < 2**31:
        raise ValueError(f"size {v} does not fit the kernels' 32-bit indices")
    return np.int32(v)


def f32(v) -> np.float32:
    return np.float32(v)


def check_size(op: str, count: int):
    if count >= 2**31:
        raise ValueError(f"{op}: {count} elements exceed the kernels' 32-bit indexing; split the batch")


def as_np(a):
    """For the numpy engine: the float32 result of a reference function."""
    return np.ascontiguousarray(a, dtype=np.float32)


def param_grads(op: str, engine: str, dw, db, w_shape, b_len):
    """The (dw, db) a backward-weight op accumulates into: the caller's arrays (checked; they must
    be contiguous float32, since they are updated in place) or new zero arrays."""
    out = []
    for name, a, shape in (("dw", dw, tuple(w_shape)), ("db", db, (b_len,))):
        if a is None:
            out.append(zeros(engine, shape))
        elif check(op, name, a, engine, shape) is not a:
            raise ValueError(f"{op}: {name} must be C-contiguous (it is accumulated in place)")
        else:
            out.append(a)
    return out


def accumulate_reference(dw, db, grads):
    """The numpy engine's backward-weight: add the reference's (dw, db) into the accumulators."""
    gw, gb = grads
    dw += gw.astype(dw.dtype)
    db += gb.astype(db.dtype)
    return dw, db
