"""unetcu.ops: every op of the U-Net with one signature on every engine (numpy, emu, cuda).

Each function takes `engine=` (None: UNETCU_ENGINE, else cuda if a GPU is usable, else numpy) and
`variant=` (None: the default kernel variant; the numpy engine has one implementation and ignores
it). Arrays are NCHW float32 at the interface: NumPy on numpy/emu, CuPy on cuda. Wrong shapes
raise ValueError naming the op, the argument and the expected shape; other dtypes raise
TypeError; non-contiguous inputs are copied. Parameter gradients (dw, db) are accumulated (+=)
into the arrays you pass (or new zero arrays), activation gradients are returned fresh.
"""
from ._core import OP_ENGINES, default_variant as _default_variant, resolve as resolve_engine
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

# op -> {variant: kernel name(s)}, for the README, the benchmarks and the tests
from importlib import import_module as _im

_ad, _c1, _c3, _cc, _do, _mp, _sgd, _sx, _up = (_im(f"{__name__}.{m}") for m in (
    "adam", "conv1x1", "conv3x3", "crop_concat", "dropout", "maxpool2x2", "sgd", "softmax_xent", "upconv2x2"))

VARIANTS = {
    "conv3x3_forward": _c3.FORWARD, "conv3x3_forward_concat": _c3.FORWARD_CONCAT,
    "conv3x3_backward_data": _c3.BACKWARD_DATA, "conv3x3_backward_data_concat": _c3.BACKWARD_DATA_CONCAT,
    "conv3x3_backward_weight": _c3.BACKWARD_WEIGHT, "conv3x3_backward_weight_concat": _c3.BACKWARD_WEIGHT_CONCAT,
    "maxpool2x2_forward": _mp.FORWARD, "maxpool2x2_backward": _mp.BACKWARD,
    "upconv2x2_forward": _up.FORWARD, "upconv2x2_backward_data": _up.BACKWARD_DATA,
    "upconv2x2_backward_weight": _up.BACKWARD_WEIGHT,
    "crop_concat_forward": _cc.FORWARD, "crop_concat_backward": _cc.BACKWARD,
    "softmax_xent": _sx.FORWARD_BACKWARD, "softmax": _sx.SOFTMAX,
    "conv1x1_forward": _c1.FORWARD, "conv1x1_backward_data": _c1.BACKWARD_DATA,
    "conv1x1_backward_weight": _c1.BACKWARD_WEIGHT,
    "dropout_forward": _do.FORWARD, "dropout_backward": _do.BACKWARD,
    "sgd_momentum_update": _sgd.UPDATE, "adam_update": _ad.UPDATE,
}

# op -> the variant numbers that compute in tf32 (precision="tf32"); every other variant is fp32
TF32_VARIANTS = {op: {v for v, name in vs.items() if name in _c3.TF32} for op, vs in VARIANTS.items()}


def default_variant(op: str, precision: str = "fp32") -> int:
    """The variant an op runs when variant=None."""
    return _default_variant(VARIANTS[op], precision, _c3.TF32)


def kernel_names(op: str, variant: int) -> list[str]:
    """The compiled kernels behind one variant (the implicit GEMMs have one per tile shape)."""
    return _c3.kernel_names(VARIANTS[op][variant])


__all__ = ["OP_ENGINES", "VARIANTS", "TF32_VARIANTS", "default_variant", "kernel_names", "resolve_engine",
           "conv3x3_forward", "conv3x3_forward_concat", "conv3x3_backward_data", "conv3x3_backward_data_concat",
           "conv3x3_backward_weight", "conv3x3_backward_weight_concat",
           "maxpool2x2_forward", "maxpool2x2_backward",
           "upconv2x2_forward", "upconv2x2_backward_data", "upconv2x2_backward_weight",
           "crop_concat_forward", "crop_concat_backward", "softmax_xent", "softmax",
           "conv1x1_forward", "conv1x1_backward_data", "conv1x1_backward_weight",
           "dropout_forward", "dropout_backward", "sgd_momentum_update", "adam_update"]
