"""sgd: SGD with momentum, fused and in place (kernels/sgd.cu), Caffe's rule:
v <- momentum*v - lr*(grad + weight_decay*param); param <- param + v. Variants: 1.
"""
from __future__ import annotations

from .. import reference
from ..engines.runtime import resolve_engine
from ._core import Variant, check, check_size, f32, float_dtype, grid1d, i32, kernel, launch, pick_variant, register

FILE = "sgd.cu"
register(Variant("sgd_momentum_update", 1, "sgd_momentum_update_kernel1", FILE, "one thread per parameter, in place"))


def sgd_momentum_update(param, grad, velocity, lr, momentum=0.99, weight_decay=0.0, engine=None, variant=None):
    """Update param and velocity in place (both must be contiguous float32); returns param."""
    op = "sgd_momentum_update"
    engine = resolve_engine(engine)
    for name, a in (("param", param), ("velocity", velocity)):
        if check(op, name, a, engine) is not a:
            raise ValueError(f"{op}: {name} must be C-contiguous (it is updated in place)")
    grad = check(op, "grad", grad, engine, param.shape)
    check(op, "velocity", velocity, engine, param.shape)
    check_size(op, param.size)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        float_dtype(op, param, grad, velocity)  # all float32 or all float64
        p, v = reference.sgd_momentum(param, grad, velocity, f32(lr), f32(momentum), f32(weight_decay))
        param[...] = p
        velocity[...] = v
        return param
    kernel(FILE, launch(rec, "grid1d"), engine)(
        *grid1d(param.size), (param, grad, velocity, i32(param.size), f32(lr), f32(momentum), f32(weight_decay)))
    return param
