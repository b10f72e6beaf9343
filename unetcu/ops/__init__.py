"""unetcu.ops: every op of the U-Net with one signature on every engine (numpy, emu, cuda).

Each function takes `engine=` (None: unetcu.engines.runtime.resolve_engine's default: UNETCU_ENGINE, else
cuda if a GPU is usable, else numpy) and `variant=` (None: the default kernel variant; the numpy
engine has one implementation and ignores it). Arrays are NCHW float32 at the interface: NumPy on
numpy/emu, CuPy on cuda; the numpy engine also takes float64 and computes and returns float64 (the
float64 oracle). Wrong shapes raise ValueError naming the op, the argument and the expected shape;
other dtypes raise TypeError; non-contiguous inputs are copied. Parameter gradients (dw, db) are accumulated (+=)
into the arrays you pass (or new zero arrays), activation gradients are returned fresh.
"""
from ._core import PRECISIONS, REGISTRY, Variant, check_precision, default_variant, records, register
from .adam import adam_update
from .conv1x1 import conv1x1_backward_data, conv1x1_backward_weight, conv1x1_forward
from .conv3x3 import (conv3x3_backward_data, conv3x3_backward_data_concat, conv3x3_backward_weight,
                      conv3x3_backward_weight_concat, conv3x3_forward, conv3x3_forward_concat)
from .crop_concat import crop_concat_backward, crop_concat_forward
from .dropout import dropout_backward, dropout_forward
from .maxpool2x2 import maxpool2x2_backward, maxpool2x2_forward
from .sgd import sgd_momentum_update
from .softmax_xent import softmax, softmax_xent
from .upconv2x2 import upconv2x2_backward_data, upconv2x2_backward_weight, upconv2x2_forward

# REGISTRY: op -> {variant number: Variant}, filled by the imports above (each op module registers
# its variants beside their launchers); the README, the benchmarks, the tests and the compile check
# read it.


def variants(op: str, precision: str | None = None) -> list[Variant]:
    """The registered variants of op in number order, optionally of one precision only.
    ValueError for an unknown op or precision."""
    if precision is not None:
        check_precision(precision, op)
    return [r for _, r in sorted(records(op).items()) if precision is None or r.precision == precision]


def kernel_names(op: str, variant: int) -> list[str]:
    """The compiled kernels behind one variant (the implicit GEMMs have one per tile shape).
    ValueError for an unknown op or variant."""
    recs = records(op)
    if variant not in recs:
        raise ValueError(f"{op}: no variant {variant!r}; available: {sorted(recs)}")
    return recs[variant].kernel_names


def kernel_owners() -> dict[str, list[str]]:
    """compiled kernel name -> the variants that launch it, as "op vN" (a kernel can serve several:
    the concat ops share the plain ops' implicit GEMMs), helpers included."""
    owners: dict[str, list[str]] = {}
    for op, recs in REGISTRY.items():
        for r in recs.values():
            for name in [*r.kernel_names, *r.helpers]:
                owners.setdefault(name, []).append(f"{op} v{r.number}")
    return owners


__all__ = ["PRECISIONS", "REGISTRY", "Variant", "check_precision", "register", "default_variant", "kernel_names", "kernel_owners", "variants",
           "conv3x3_forward", "conv3x3_forward_concat", "conv3x3_backward_data", "conv3x3_backward_data_concat",
           "conv3x3_backward_weight", "conv3x3_backward_weight_concat",
           "maxpool2x2_forward", "maxpool2x2_backward",
           "upconv2x2_forward", "upconv2x2_backward_data", "upconv2x2_backward_weight",
           "crop_concat_forward", "crop_concat_backward", "softmax_xent", "softmax",
           "conv1x1_forward", "conv1x1_backward_data", "conv1x1_backward_weight",
           "dropout_forward", "dropout_backward", "sgd_momentum_update", "adam_update"]
