"""Optimizers and learning-rate schedules of the trainer, over the fused update kernels.

    sgd    momentum SGD, Caffe's rule (the paper trained with Caffe): v <- m v - lr (g + wd p); p <- p + v
           (kernels/sgd.cu)
    adam   Adam (Kingma & Ba 2015) as torch.optim.Adam computes it, weight decay as L2 (kernels/adam.cu)
    adamw  AdamW (Loshchilov & Hutter 2019): the decay scales the weights, decoupled from the moments

Schedules (lr_at): a linear warm-up from 0 over `warmup` steps, then constant, cosine (from lr towards
0: the last step runs at lr (1 - cos(pi/n))/2, n the steps after the warm-up) or poly ((1 - t)^0.9,
DeepLab's). Gradient clipping by the global L2 norm (clip_gradients)
comes before every update. Each optimizer's state (velocity; or the moments m and v) lives on the
model's engine and is saved in the checkpoint, so a resumed run continues the same trajectory.
"""
from __future__ import annotations

import math

import numpy as np

from . import ops

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "poly")


def lr_at(step: int, steps: int, lr: float, warmup: int = 0, schedule: str = "constant") -> float:
    """The learning rate of step (counted from 1) of a run of `steps`: lr * step / warmup during the
    warm-up, then lr (constant), lr * (1 + cos(pi t)) / 2 (cosine) or lr * (1 - t)^0.9 (poly), with
    t = (step - warmup - 1) / (steps - warmup) in [0, 1). Raises ValueError for an unknown schedule."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup > 0 and step <= warmup:
        return lr * step / warmup
    t = min(max((step - warmup - 1) / max(steps - warmup, 1), 0.0), 1.0)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly":
        return lr * (1.0 - t) ** 0.9
    return lr


def clip_gradients(grads, max_norm: float, xp=np, sync=True):
    """Scale all gradients in place so that their global L2 norm is at most max_norm; returns the
    norm before clipping (a float; with sync=False a (1,) device array, and the scale
    min(1, max_norm / norm) is applied on the device without reading anything back)."""
    sq = sum(xp.sum(g.astype(np.float64) ** 2) for g in grads.values())
    if not sync:
        norm = xp.sqrt(xp.reshape(sq, (1,)))
        scale = xp.minimum(1.0, max_norm / xp.maximum(norm, 1e-30)).astype(np.float32)
        for g in grads.values():
            g *= scale
        return norm
    norm = float(xp.sqrt(sq))
    if norm > max_norm:
        scale = np.float32(max_norm / norm)
        for g in grads.values():
            g *= scale
    return norm


class Optimizer:
    """One of OPTIMIZERS over a model's parameters (a dict of float32 arrays on its engine).

    state: the arrays a checkpoint keeps, keyed "NAME" (sgd: the velocity; a checkpoint of any
    version holds these) or "m:NAME" and "v:NAME" (adam, adamw: the first and second moments).
    Raises ValueError for an unknown optimizer."""

    def __init__(self, name: str, params: dict, engine: str, xp=np, momentum: float = 0.99,
                 weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        if name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
        self.name, self.engine = name, engine
        self.momentum, self.weight_decay, self.betas, self.eps = momentum, weight_decay, betas, eps
        keys = list(params) if name == "sgd" else [f"{s}:{k}" for s in ("m", "v") for k in params]
        self.state = {k: xp.zeros_like(params[k.split(":")[-1]]) for k in keys}

    def load_state(self, arrays: dict, where: str = "the checkpoint"):
        """Take the state saved by a run of the same optimizer; ValueError for another's."""
        if set(arrays) != set(self.state):
            other = "sgd" if not any(":" in k for k in arrays) else "adam or adamw"
            raise ValueError(f"{where} holds the state of {other}, not of {self.name}: resume with the run's own --optimizer")
        for k, a in arrays.items():
            if a.shape != self.state[k].shape:
                raise ValueError(f"{where}: optimizer state {k} has shape {a.shape}, the parameter {self.state[k].shape}")
            self.state[k][...] = a

    def step(self, params: dict, grads: dict, lr: float, t: int):
        """Update every parameter in place with its gradient; t is the step number, from 1."""
        for k, p in params.items():
            if self.name == "sgd":
                ops.sgd_momentum_update(p, grads[k], self.state[k], lr, self.momentum, self.weight_decay,
                                        engine=self.engine)
            else:
                ops.adam_update(p, grads[k], self.state[f"m:{k}"], self.state[f"v:{k}"], t, lr, *self.betas, self.eps,
                                self.weight_decay, decoupled=self.name == "adamw", engine=self.engine)
