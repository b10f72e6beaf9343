"""The training step as one CUDA graph: captured once, replayed with a single launch per step.

A U-Net step is ~150 kernel launches (23 convolutions in three directions, pools, up-convs, the
loss, clipping, 46 SGD updates) plus their Python: at batch 1 the smaller layers take microseconds
and the launches start to show. A CUDA graph replays the whole sequence from one launch.

What capture needs, and how it is met here:
  - fixed addresses: the batch is copied into static input buffers; parameters, momentum and the
    gradient buffers keep theirs (SGD updates the parameters in place);
  - no host reads inside: the loss and the bad-label flag stay on the device (softmax_xent
    sync=False), clipping scales on the device, the dropout seed is read from device memory;
  - memory that stays put: every buffer the step allocates comes from a private CuPy memory pool
    that nothing else draws from. The first call runs the step eagerly (a real step: kernels get
    compiled and the pool gets exactly the blocks the step needs), then captures it; replays
    allocate nothing.
CUDA only (the emulator has no graphs); the step must keep its shapes (one GraphStep per batch
shape).
"""
from __future__ import annotations

import numpy as np

from .optim import clip_gradients
from .step import Step


class GraphStep(Step):
    """step(x, labels, weights, dropout_seed) -> (loss, bad_label) as Python values; each call is
    one step of `model` (forward, loss, backward, optional clipping, optimizer.step at lr): the
    same functions the eager trainer calls, captured. The graph bakes lr and the step number in,
    so only an optimizer whose update does not change with them (SGD at a constant lr) fits.
    As a train.Step: compute() keeps the batch, update() runs the whole step (the update is part of
    the graph, so all of it runs with Ctrl-C held) and raises ValueError for a label outside the
    model's classes, which the graph can only flag, after its update."""

    def __init__(self, model, optimizer, lr, clip=0.0):
        if model.engine != "cuda":
            raise ValueError(f"GraphStep: CUDA graphs need the cuda engine, the model runs on '{model.engine}'")
        if optimizer.name != "sgd":
            raise ValueError(f"GraphStep: a CUDA graph replays a fixed update; {optimizer.name}'s changes every step")
        import cupy
        self.cp = cupy
        self.model, self.optimizer = model, optimizer
        self.lr, self.clip = lr, clip
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.graph = None
        self.inputs = None  # static x, labels, weights, seed
        self.outputs = None  # the captured step's (loss, bad) arrays

    def compute(self, x, labels, weights, dropout_seed: int, step: int):
        self.batch = (x, labels, weights, dropout_seed)

    def update(self, step: int) -> float:
        loss, bad = self(*self.batch)
        self.batch = None
        if bad:
            raise ValueError(f"step {step}: a label lies outside the model's {self.model.config['n_classes']} classes")
        return loss

    def _body(self):
        x, lab, wt, seed = self.inputs
        (loss, bad), grads = self.model.loss_and_grads(x, lab, wt, dropout_seed=seed, sync=False)
        if self.clip > 0:
            clip_gradients(grads, self.clip, self.cp, sync=False)
        self.optimizer.step(self.model.params, grads, self.lr, t=1)
        return loss, bad

    def __call__(self, x, labels, weights, dropout_seed: int):
        cp = self.cp
        cp.cuda.get_current_stream().synchronize()  # the inputs may still be in the making there
        with self.stream:
            if self.inputs is None:
                self.inputs = (cp.empty(x.shape, np.float32), cp.empty(labels.shape, np.int32),
                               cp.empty(weights.shape, np.float32), cp.empty(1, np.uint64))
            x0, l0, w0, s0 = self.inputs
            for name, buf, a in (("x", x0, x), ("labels", l0, labels), ("weights", w0, weights)):
                if buf.shape != a.shape or buf.dtype != a.dtype:
                    raise ValueError(f"GraphStep: {name} must be {buf.dtype} {buf.shape} (the captured step's), "
                                     f"got {a.dtype} {a.shape}")
                buf[...] = cp.asarray(a)
            s0[...] = np.uint64(dropout_seed)
            if self.graph is None:
                with cp.cuda.using_allocator(self.pool.malloc):
                    loss, bad = self._body()  # eager: compiles, fills the private pool, is a real step
                    result = (float(loss[0]), int(bad[0]))
                    del loss, bad
                    self.stream.begin_capture()
                    try:
                        outputs = self._body()
                    except BaseException:
                        self.stream.end_capture()  # leave capture mode; the partial graph is dropped
                        raise
                    self.graph, self.outputs = self.stream.end_capture(), outputs
                self.stream.synchronize()
                return result
            self.graph.launch(stream=self.stream)
            loss, bad = self.outputs
            return float(loss[0]), int(bad[0])  # the one read back per step
