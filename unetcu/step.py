"""The Step interface: one training step on a batch, the same for every way of stepping, so that
train.train has one loop. Three implementations: EagerStep (here), graph.GraphStep (the whole step
replayed as one CUDA graph), distributed.DistributedStep (one rank of an MPI job). run.Run.of picks one.
"""
from __future__ import annotations

import math

from .optim import clip_gradients


class Step:
    """One training step on a batch, in the parts the loop calls:

      begin(rng_state, step)      before the first step (the ranks check they start alike)
      compute(x, labels, weights, dropout_seed, step)
                                  the forward and backward pass; changes nothing that a checkpoint
                                  holds, so a Ctrl-C may stop it at once
      update(step) -> loss        the update of the weights and optimizer state, run with Ctrl-C
                                  held; returns the step's loss (a float; NaN/Inf: the run diverged,
                                  and an eager step made no update)
      checkpoint(rng_state, step) before a checkpoint is written (the ranks check they are alike)
      where_nonfinite() -> str    where a non-finite loss came from, for its message ("" or " on rank r")
    """

    def begin(self, rng_state, step: int):
        pass

    def checkpoint(self, rng_state, step: int):
        pass

    def where_nonfinite(self) -> str:
        return ""


class EagerStep(Step):
    """model.loss_and_grads, then clipping (cfg.clip > 0) and the optimizer's update at cfg.lr_at(step)."""

    def __init__(self, model, optimizer, cfg):
        # model: model.UNet; optimizer: optim.Optimizer; cfg: run.TrainConfig (clip, lr_at)
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.loss, self.grads = math.nan, None

    def compute(self, x, labels, weights, dropout_seed: int, step: int):
        loss, self.grads = self.model.loss_and_grads(x, labels, weights, dropout_seed=dropout_seed)
        self.loss = float(loss) + 0.0  # -0.0 (a perfect tile) reads as 0

    def update(self, step: int) -> float:
        if math.isfinite(self.loss):
            if self.cfg.clip > 0:
                clip_gradients(self.grads, self.cfg.clip, self.model.xp)
            self.optimizer.step(self.model.params, self.grads, self.cfg.lr_at(step), step)
        self.grads = None
        return self.loss
