"""adam: Adam and AdamW, fused and in place (kernels/adam.cu), torch.optim.Adam/AdamW's rule:
m <- b1*m + (1-b1)*g; v <- b2*v + (1-b2)*g^2; param <- param - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps),
bc = 1 - b^step; weight decay as L2 in g (Adam) or decoupled param *= 1 - lr*wd (AdamW). Variants: 1.
"""
from __future__ import annotations

import math

import numpy as np

from .. import cpu, reference
from ..engines.runtime import resolve_engine
from ._core import Variant, check, check_size, f32, float_dtype, grid1d, i32, kernel, launch, pick_variant, register

FILE = "adam.cu"
register(Variant("adam_update", 1, "adam_update_kernel1", FILE, "one thread per parameter, in place"))


def adam_update(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False,
                engine=None, variant=None):
    """Update param and the moments m, v in place (all float32, contiguous, param's shape); step is
    the number of this update, from 1 (it sets the bias corrections). decoupled=True: AdamW.
    Returns param. Raises ValueError for step < 1 or a non-contiguous param/m/v."""
    op = "adam_update"
    engine = resolve_engine(engine)
    if int(step) < 1:
        raise ValueError(f"{op}: step counts from 1, got {step}")
    for name, a in (("param", param), ("m", m), ("v", v)):
        if check(op, name, a, engine) is not a:
            raise ValueError(f"{op}: {name} must be C-contiguous (it is updated in place)")
    grad = check(op, "grad", grad, engine, param.shape)
    check(op, "m", m, engine, param.shape)
    check(op, "v", v, engine, param.shape)
    check_size(op, param.size)
    rec = pick_variant(op, variant)
    if engine == "numpy":
        if float_dtype(op, param, grad, m, v) == np.float32:  # all float32 or all float64 (the oracle)
            return cpu.adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled)
        # Python floats: NumPy keeps float32 arrays float32 and rounds 1 - beta (computed in double) once
        p, m1, v1 = reference.adam(param, grad, m, v, int(step), float(lr), float(beta1), float(beta2), float(eps),
                                   float(weight_decay), bool(decoupled))
        param[...], m[...], v[...] = p, m1, v1
        return param
    bc1, bc2_sqrt = 1.0 - beta1 ** int(step), math.sqrt(1.0 - beta2 ** int(step))  # in double, once per step
    kernel(FILE, launch(rec, "grid1d"), engine)(
        *grid1d(param.size), (param, grad, m, v, i32(param.size), f32(lr), f32(beta1), f32(beta2), f32(1.0 - beta1),
                              f32(1.0 - beta2), f32(eps), f32(weight_decay), f32(bc1), f32(bc2_sqrt), i32(int(bool(decoupled)))))
    return param
