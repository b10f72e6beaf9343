"""What every op module shares: the variant registry, argument checks, kernel launches.

Engines (unetcu.engines.runtime): "cuda" (our kernels on the GPU, CuPy arrays), "emu" (the same kernels in
the CPU emulator, NumPy arrays), "numpy" (the reference in unetcu/reference.py, NumPy arrays).

Inputs are float32 (int32 labels, uint8 argmax); the numpy engine also takes float64 and keeps it
(UNet(engine="numpy", dtype=np.float64) is the float64 oracle of the tests). Another dtype is refused
with a TypeError that says how to convert (unetcu never changes precision behind your back); a
non-contiguous array is copied to a contiguous one (kernels index it as C-contiguous).

Variants: each op module registers its kernels as Variant records beside their launchers; the
registry (REGISTRY, pick_variant, default_variant) is what the launchers, the tests, the benchmarks,
the compile check and RESULTS.md read.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from ..engines import emu, runtime
from ..reference import PRECISIONS, check_precision

BLOCK = 256


# ---- the variant registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One kernel variant of one op (variant=number in the op's call).

    kernel: its __global__ function in kernels/<file>; an implicit GEMM is compiled once per block
    tile, as f"{kernel}_{BM}x{BN}" for each (BM, BN) in tiles. helpers: other kernels of the file it
    launches besides it (a weight transpose before it; a bias or split-reduction kernel after). algorithm: how it computes, in the
    field's terms. note: why its number differs from the other directions', where it does.
    launch: the grid the launcher builds for it (the op module's launchers know each by name; an
    unknown one is refused, never launched with another's grid). default: this record is what
    variant=None runs in its precision (else the highest number is). flops: the work formula,
    FLOPs of one launch of `kernel` as a function of its integer arguments by parameter name (the
    profiler's roofline); None for the memory-bound ops."""
    op: str
    number: int
    kernel: str
    file: str
    algorithm: str
    precision: str = "fp32"
    tiles: tuple = ()
    note: str = ""
    helpers: tuple = ()
    launch: str = "grid1d"  # one thread per element, 1-D blocks of BLOCK
    default: bool = False
    flops: object = None  # FLOPs of one launch from its integer arguments by name (unetcu profile); None: memory-bound

    @property
    def kernel_names(self) -> list[str]:
        """The compiled kernels behind this variant (one per tile shape for the implicit GEMMs)."""
        return [f"{self.kernel}_{bm}x{bn}" for bm, bn in self.tiles] or [self.kernel]


REGISTRY: dict[str, dict[int, Variant]] = {}  # op -> {number: Variant}, filled as the op modules load


def register(*records: Variant, flops=None):
    """Add variant records to the registry (with `flops` as the work formula of those that have
    none); ValueError for a bad precision or number, a number registered twice, or a second
    default of one op and precision."""
    for r in records:
        if flops is not None and r.flops is None:
            r = dataclasses.replace(r, flops=flops)
        check_precision(r.precision, f"variant {r.op} {r.number}")
        if not _is_number(r.number) or r.number < 1:
            raise ValueError(f"variant {r.op} {r.number!r}: numbers are integers from 1")
        if r.number in REGISTRY.setdefault(r.op, {}):
            raise ValueError(f"variant {r.number} of {r.op} is registered twice")
        if r.default and any(o.default and o.precision == r.precision for o in REGISTRY[r.op].values()):
            raise ValueError(f"variant {r.number} of {r.op}: {r.op} already has a {r.precision} default")
        REGISTRY[r.op][r.number] = r


def _is_number(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def records(op: str) -> dict[int, Variant]:
    """REGISTRY[op], or a ValueError that lists the ops."""
    if op not in REGISTRY:
        raise ValueError(f"no op {op!r}; ops: {', '.join(REGISTRY)}")
    return REGISTRY[op]


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
    if a.dtype != np.dtype(dtype) and not (engine == "numpy" and dtype == np.float32 and a.dtype == np.float64):
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
        emu.allocated(a)  # the sanitizer's initcheck reports a kernel reading it before a kernel wrote it
    return a


def zeros(engine: str, shape, dtype=np.float32):
    return xp(engine).zeros(shape, dtype=dtype)


def kernel(filename: str, name: str, engine: str):
    fn = runtime.load(filename, engine).get_function(name)
    if engine != "cuda":
        # the variant that owns it (its first owner), for `unetcu profile`'s op name, FLOPs and roofline:
        # the engines sit below the ops, so they learn it from here and never look it up
        fn.variant = next((r for recs in REGISTRY.values() for r in recs.values() if name in r.kernel_names), None)
        return fn

    def launch(grid, block, args, shared_mem=0):
        # None stands for a null pointer (e.g. "no ReLU output"): an 8-byte zero for CuPy
        return fn(grid, block, tuple(np.uint64(0) if a is None else a for a in args), shared_mem=shared_mem)
    return launch


def grid1d(total: int) -> tuple[tuple[int], tuple[int]]:
    return ((max(1, -(-total // BLOCK)),), (BLOCK,))


def _of_precision(op: str, precision: str) -> list[int]:
    return sorted(v for v, r in records(op).items() if r.precision == precision)


def pick_variant(op: str, variant, precision: str = "fp32") -> Variant:
    """The record of variant number `variant` of op; None picks the default of the precision (the
    record marked default, else its highest number). A variant of the other precision is refused,
    so that a precision is never changed behind the caller's back."""
    check_precision(precision, op)
    mine = _of_precision(op, precision)
    if variant is None:
        if not mine:
            raise ValueError(f"{op}: no {precision} variant")
        marked = [v for v in mine if REGISTRY[op][v].default]
        return REGISTRY[op][(marked or mine)[-1]]
    if not _is_number(variant) or variant not in REGISTRY[op]:
        raise ValueError(f"{op}: no variant {variant!r}; available: {sorted(REGISTRY[op])}")
    if variant not in mine:
        other = REGISTRY[op][variant].precision
        raise ValueError(f"{op}: variant {variant} computes in {other}; pass precision={other!r} "
                         f"({precision} variants: {mine})")
    return REGISTRY[op][variant]


def launch(rec: Variant, *known: str) -> str:
    """rec's kernel name, if its launch is one of the grids this launcher builds; else ValueError
    (a new variant is never run with another variant's grid)."""
    if rec.launch not in known:
        raise ValueError(f"{rec.op}: variant {rec.number} wants launch {rec.launch!r}, which its launcher does not "
                         f"build (it builds {', '.join(known)}): add that grid to the launcher in ops/")
    return rec.kernel


def default_variant(op: str, precision: str = "fp32") -> int:
    """The number pick_variant(op, None, precision) chooses."""
    return pick_variant(op, None, precision).number


def i32(v) -> np.int32:
    if not -2**31 <= int(v) < 2**31:
        raise ValueError(f"size {v} does not fit the kernels' 32-bit indices")
    return np.int32(v)


def f32(v) -> np.float32:
    return np.float32(v)


def check_size(op: str, count: int):
    if count >= 2**31:
        raise ValueError(f"{op}: {count} elements exceed the kernels' 32-bit indexing; split the batch")


def float_dtype(op: str, *inputs):
    """The float type of an op's float inputs on the numpy engine: all float32, or all float64 (the
    float64 oracle). A mix is refused (TypeError): nothing is rounded or widened behind the caller's
    back. None entries (optional inputs) are skipped. The kernels' engines only take float32."""
    kinds = {np.dtype(a.dtype) for a in inputs if a is not None and np.dtype(a.dtype).kind == "f"}
    if len(kinds) > 1:
        raise TypeError(f"{op}: the float inputs mix {' and '.join(sorted(k.name for k in kinds))}: give them all as float32, "
                        "or all as float64 (engine numpy only), e.g. with .astype(np.float32)")
    return kinds.pop().type if kinds else np.float32


def as_np(op: str, a, *inputs):
    """For the numpy engine: a reference function's result in the op's float type (float_dtype of
    all its float inputs; TypeError for a mix)."""
    return np.ascontiguousarray(a, dtype=float_dtype(op, *inputs))


def param_grads(op: str, engine: str, dw, db, w_shape, b_len, dtype=np.float32):
    """The (dw, db) a backward-weight op accumulates into: the caller's arrays (checked; they must
    be contiguous float32, since they are updated in place) or new zero arrays."""
    out = []
    for name, a, shape in (("dw", dw, tuple(w_shape)), ("db", db, (b_len,))):
        if a is None:
            out.append(zeros(engine, shape, dtype))
        elif check(op, name, a, engine, shape) is not a:
            raise ValueError(f"{op}: {name} must be C-contiguous (it is accumulated in place)")
        elif a.dtype != np.dtype(dtype):
            raise TypeError(f"{op}: {name} is {a.dtype} and the inputs {np.dtype(dtype).name}: accumulate in the "
                            "inputs' float type")
        else:
            out.append(a)
    return out


def accumulate_reference(dw, db, grads):
    """The numpy engine's backward-weight: add the reference's (dw, db) into the accumulators."""
    gw, gb = grads
    dw += gw.astype(dw.dtype)
    db += gb.astype(db.dtype)
    return dw, db
