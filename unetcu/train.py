"""The autograd-free trainer's loop: one large tile per step (the paper's choice), weighted
cross-entropy with the paper's weight maps, elastic augmentation, periodic validation, checkpoints
and bit-exact resume. What runs is decided in run.py (plan_run -> Run: options, presets, the recipe
TrainConfig, data); the progress bar, log.csv and the plots are report.py's; a step is a step.Step
(EagerStep, graph.GraphStep, distributed.DistributedStep).

Optimizer (optim.py): Adam, lr 0.001, a linear warm-up over min(100, steps/10) steps (pinned when the run
starts), then a cosine decay towards 0, no clipping, by default; the paper's SGD with momentum 0.99 (Caffe's rule) is --optimizer sgd.
Chosen by benchmarks/ablation.py (the table in benchmarks/RESULTS.md): on held-out ISBI 2012 and
DIC-HeLa after 1500 steps of the small net, Adam with the schedule segmented better than SGD 0.99
(lr 0.001, clipping at 1, the former defaults) and better than a plain PyTorch recipe. Under SGD
0.99 the small net on DIC-HeLa died without clipping (lr 0.001 after ~600 steps, 0.003 at once);
the paper network's recipe is untested without a GPU.
Determinism: every random draw (tile position, augmentation, dropout mask) comes from one NumPy
generator seeded by `seed`, whose state is saved in each checkpoint, so a resumed run repeats the
uninterrupted run's losses exactly on the numpy engine (emu and cuda sum the loss with float
atomics, so their last bits may differ).
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import augment
from .data import Sample
from .files import same_file
from .metrics import iou
from .model import UNet, output_size
from .report import CsvLog, Progress, plot_curves, plot_samples
from .run import RUN_FILES, Prepared, TrainConfig, check_out, targets, weights

class TrainingDiverged(RuntimeError):
    pass


def draw_batch(data: list[Prepared], cfg: TrainConfig, model: UNet, rng: np.random.Generator, part=(0, 1)):
    """(x (B, 1, T, T), labels (B, O, O), weights (B, O, O)) on the model's engine.
    part (rank, ranks): the draws of ranks x B tiles are taken from rng in turn and this rank keeps
    tiles rank*B .. rank*B + B - 1 (the others' elastic warps are skipped), see distributed.py."""
    return render_batch(draw_plan(data, cfg, model, rng, part), cfg, model)


def draw_plan(data: list[Prepared], cfg: TrainConfig, model: UNet, rng: np.random.Generator, part=(0, 1)) -> list:
    """draw_batch's random numbers, in its order: (image, warp parameters or window) for each tile this
    rank keeps. Cheap: render_batch does the work, so the loop can render a step ahead (TileAhead)."""
    if cfg.augment not in ("elastic", "flips", "none"):
        raise ValueError(f"augment must be elastic, flips or none, got {cfg.augment!r}")
    o = output_size(cfg.tile, model.config["depth"])
    plan = []
    for i in range(cfg.batch * part[1]):
        d = data[int(rng.integers(len(data)))]
        if cfg.augment == "elastic":
            drawn = augment.draw_params(rng, d.image.shape, sigma=cfg.elastic_sigma)
        else:
            drawn = augment.draw_window(rng, d.image.shape, cfg.tile, o, flips=cfg.augment == "flips")
        if i // cfg.batch == part[0]:
            plan.append((d, drawn))
    return plan


def render_batch(plan: list, cfg: TrainConfig, model: UNet):
    """The tiles of a draw_plan: elastic warps (Numba) or windows, stacked on the model's engine."""
    t = cfg.tile
    o = output_size(t, model.config["depth"])
    xs, ls, ws = [], [], []
    for d, drawn in plan:
        if cfg.augment == "elastic":
            img, lab, wt, _ = augment.warp(d.image, d.classes, d.weights, drawn, t, o,
                                           target="cuda" if model.engine == "cuda" else "cpu")
        else:
            img, lab, wt = augment.window(d.image, d.classes, d.weights, t, o, drawn)
        xs.append(img), ls.append(lab), ws.append(wt)
    xp = model.xp
    return (xp.ascontiguousarray(xp.stack([xp.asarray(a) for a in xs])[:, None]),
            xp.ascontiguousarray(xp.stack([xp.asarray(a) for a in ls]).astype(np.int32)),
            xp.ascontiguousarray(xp.stack([xp.asarray(a) for a in ws]).astype(np.float32)))


class TileAhead:
    """The next step's tiles rendered in a worker thread while this step computes (CPU engines: the
    elastic warp and the window copies overlap the step's NumPy work, which releases the GIL). Every
    random number is still drawn in the loop's thread and in the order of a loop without it (this
    step's tiles, its dropout seed, then the next step's tiles), so a seed gives the same tiles, and a
    checkpoint keeps the generator's state from before the next step's draws: a resume repeats the run
    exactly. The first step's tiles are drawn by draw_batch in the loop's thread (the warp compiles there)."""

    def __init__(self, data, cfg, model, rng, part=(0, 1)):
        from concurrent.futures import ThreadPoolExecutor
        self.data, self.cfg, self.model, self.rng, self.part = data, cfg, model, rng, part
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="unetcu-tiles")
        self.pending = None

    def tiles(self):
        """This step's (x, labels, weights): rendered ahead when ahead() was called, else drawn now."""
        if self.pending is None:
            return draw_batch(self.data, self.cfg, self.model, self.rng, self.part)
        pending, self.pending = self.pending, None
        return pending.result()  # an exception of the worker (a Ctrl-C too) is raised here

    def ahead(self):
        """Draw the next step's tiles now and render them in the worker. Returns the generator's state
        before these draws: the state a checkpoint of this step keeps."""
        state = self.rng.bit_generator.state
        plan = draw_plan(self.data, self.cfg, self.model, self.rng, self.part)
        self.pending = self.pool.submit(render_batch, plan, self.cfg, self.model)
        return state

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


def evaluate(model: UNet, samples: list[Sample], cfg: TrainConfig, tile=None):
    """(mean per-pixel weighted loss, mean foreground IoU) over whole images (overlap-tile), each
    image's IoU by metrics.iou, as `unetcu evaluate` computes it (1 when both are empty)."""
    from .tiling import predict_probs
    losses, ious = [], []
    for s in samples:
        probs = predict_probs(model, s.image, tile=tile or cfg.tile)
        cls = targets(s, model)
        w = weights(s, cls, cfg, model)
        p = np.clip(np.take_along_axis(probs, cls[None].astype(np.int64), 0)[0], 1e-12, 1)
        losses.append(float(-(w * np.log(p)).mean()))
        ious.append(iou(probs.argmax(0) > 0, cls > 0))
    return float(np.mean(losses)), float(np.mean(ious))


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training: `step` is the last finished step, `checkpoint` the file that holds
    it (None when no step had finished). The logs are written up to that step."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(step, checkpoint)
        self.step, self.checkpoint = step, checkpoint


class _Interrupts:
    """Ctrl-C (SIGINT) while a step updates the weights is held until the update is complete, so the
    weights, momentum and generator state saved after an interrupt are always those after a whole
    step; anywhere else it interrupts at once. Installed only in the main thread and only over
    Python's default handler (an application's own handler, or an ignored SIGINT, is left alone)."""

    def __init__(self):
        self.critical = self.pending = False
        self.old = None

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.old = signal.signal(signal.SIGINT, self._handle)
            self.old_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            sys.unraisablehook = self.old_hook

    def _unraisable(self, u):
        # our KeyboardInterrupt, dropped by a C callback: no traceback on the screen, check() raises it
        if not (u.exc_type is KeyboardInterrupt and self.pending):
            self.old_hook(u)

    def _handle(self, signum, frame):
        self.pending = True
        if not self.critical:
            raise KeyboardInterrupt

    def check(self):
        """Raise a Ctrl-C that came but was lost: a KeyboardInterrupt raised inside a C callback
        (llvmlite's, while Numba compiles the warp in the first step) is printed and dropped."""
        if self.pending:
            raise KeyboardInterrupt

    @contextmanager
    def hold(self):
        self.critical = True
        try:
            yield
        finally:
            self.critical = False
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt


@contextmanager
def _sigint_ignored():
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def train(run, progress: bool | None = None, log=print):
    """Run the loop of `run` (run.Run, from run.plan_run or Run.of); returns the history (list of
    dicts, one per step). The model and optimizer are trained in place.

    Writes into run.cfg.out: checkpoint.npz (weights + optimizer state + generator state + history +
    cfg, every cfg.ckpt_every steps and at the end), log.csv (a row per step, as it goes), curves.png
    (redrawn at each validation) and samples.png (at the end); every file is replaced atomically
    (report.py). Nothing is created in cfg.out, and with run.overwrite nothing of the old run
    removed, before the first step has finished. Raises TrainingDiverged on a NaN/Inf loss or
    weight, ValueError for a label outside the classes (the CUDA graph's check), and
    TrainingInterrupted (a KeyboardInterrupt) on Ctrl-C, after saving the last finished step.
    With run.dist (one rank of an MPI job) rank 0 alone logs and writes files. progress: show the
    progress bar (None: run.progress); log: where the run's lines go."""
    model, cfg, opt, rng, stepper = run.model, run.cfg, run.optimizer, run.rng, run.step
    out, root, start, history = run.out, run.root, run.start, run.history
    if run.trained:
        raise ValueError(f"this Run has trained already (into {run.out}): plan another one (run.plan_run, Run.of)")
    check_out(run.out, run.resume, run.overwrite)  # what was written there since the run was planned
    run.trained = True
    progress = run.progress if progress is None else progress
    log, progress = (log, progress) if root else (lambda *a: None, False)
    stepper.begin(rng.bit_generator.state, start)  # every rank is here, with the same state
    if run.resume:
        log(f"resumed from {run.resume} at step {start}")
    blas = ""
    if model.engine == "numpy":  # its speed is mostly the BLAS's: say which, and on how many threads
        from .cpu import blas_info
        blas = f" ({blas_info()})"
    log(f"training {model.n_params:,} parameters on engine '{model.engine}'{blas}: tile {cfg.tile} -> "
        f"{output_size(cfg.tile, model.config['depth'])}, batch {cfg.batch}, {len(run.data)} training / "
        f"{len(run.val_samples)} validation images, {describe(cfg)}, augment {cfg.augment}, steps {start}..{cfg.steps}"
        + (f"; {run.dist.describe()}" if run.dist else ""))
    ckpt = out / "checkpoint.npz"
    csv_log = None

    def open_run():  # at the first finished step: until then nothing is created, and nothing replaced
        nonlocal csv_log
        if run.overwrite:
            for f in RUN_FILES:
                if not run.resume or not (out / f).exists() or not same_file(run.resume, out / f):
                    (out / f).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        csv_log = CsvLog(out / "log.csv", history[:-1])
    t_start = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)  # seconds go on across a resume
    done, done_rng = start, rng.bit_generator.state

    def save(step, rng_state):
        # a gradient can overflow while the loss stays finite: the next loss would say so, but the last
        # step's update is saved first, and a checkpoint of NaN weights predicts NaN everywhere
        bad = next((k for k, p in model.params.items() if not bool(model.xp.isfinite(p).all())), None)
        if bad is not None:
            kept = f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint was written"
            raise TrainingDiverged(f"the weights ({bad}) became non-finite at step {step}; training stopped "
                                   f"({kept}). Lower the learning rate (--lr) or clip the gradients (--clip).")
        state = dict(step=step, rng=rng_state, history=history, config=asdict(cfg), object_radius=run.object_radius,
                     touching=run.touching)
        model.save(ckpt, momentum=opt.state, state=_jsonable(state))

    interrupts = _Interrupts()
    part = run.dist.part if run.dist else (0, 1)
    # CPU engines render the next step's tiles in a worker thread; on a GPU the warp is one kernel on
    # the training stream (and CuPy's current stream is per thread)
    ahead = TileAhead(run.data, cfg, model, rng, part) if model.engine != "cuda" else None
    bar = Progress(cfg.steps, start, enabled=progress)
    bar.begin(" (the first step also compiles the elastic warp)" if cfg.augment == "elastic" else "")
    try:
        # numpy's overflow warnings would spill source lines before the one-line message: a non-finite
        # loss or weight is what ends a diverged run here, checked at every step and every checkpoint
        with interrupts, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for step in range(start + 1, cfg.steps + 1):
                interrupts.check()
                x, lab, wt = ahead.tiles() if ahead is not None else draw_batch(run.data, cfg, model, rng, part)
                interrupts.check()  # the warp compiles in the first draw: a Ctrl-C it swallowed stops here
                dropout_seed = int(rng.integers(2**63))
                # the state after this step's draws, before the next step's (drawn now when rendered ahead)
                rng_state = ahead.ahead() if ahead is not None and step < cfg.steps else rng.bit_generator.state
                stepper.compute(x, lab, wt, dropout_seed, step)
                with interrupts.hold():  # the update and its record are whole before a held Ctrl-C is raised
                    loss = stepper.update(step)
                    row = dict(step=step, loss=loss, lr=cfg.lr_at(step), seconds=time.perf_counter() - t_start)
                    if math.isfinite(loss):
                        history.append(row)
                        done, done_rng = step, rng_state
                if not math.isfinite(loss):
                    kept = f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint was written yet"
                    raise TrainingDiverged(f"loss became {loss} at step {step}{stepper.where_nonfinite()}; training "
                                           f"stopped ({kept}). Lower the learning rate (--lr).")
                if step % cfg.ckpt_every == 0 or step == cfg.steps:
                    stepper.checkpoint(done_rng, step)  # every rank: the same weights, or stop
                if not root:
                    continue
                if csv_log is None:
                    open_run()
                if run.val_samples and (step % cfg.val_every == 0 or step == cfg.steps):
                    row["val_loss"], row["val_iou"] = evaluate(model, run.val_samples, cfg)
                csv_log.append(row)
                if "val_iou" in row:
                    plot_curves(history, out / "curves.png")
                bar.update(step, loss=loss, **({"val_iou": row["val_iou"]} if "val_iou" in row else {}))
                if step % cfg.ckpt_every == 0 or step == cfg.steps:
                    save(step, done_rng)
            if root:
                plot_curves(history, out / "curves.png")
            if root and run.val_samples:
                plot_samples(model, run.val_samples[:3], out / "samples.png", cfg.tile)
    except KeyboardInterrupt:
        bar.close()
        with _sigint_ignored():  # more Ctrl-C while the last step is saved would lose it
            if done > start and root:
                if csv_log is None:
                    open_run()
                if history[-1]["step"] > csv_log.last:  # interrupted after the update, before the log
                    csv_log.append(history[-1])
                save(done, done_rng)
                if run.dist is None:  # mpirun kills the ranks about a second after its SIGTERM: the message first
                    plot_curves(history, out / "curves.png")
        kept = done > start or (run.resume and ckpt.exists() and same_file(run.resume, ckpt))  # not an old run's
        raise TrainingInterrupted(done, ckpt if kept else None) from None
    finally:
        if ahead is not None:  # a step ahead that is no longer wanted: waited for, never left running
            ahead.close()
    return history


def describe(cfg: TrainConfig) -> str:
    """The optimizer and learning rate of a run in words, for its log."""
    opt = f"sgd momentum {cfg.momentum}" if cfg.optimizer == "sgd" else cfg.optimizer
    sched = "" if cfg.schedule == "constant" else f" {cfg.schedule}"
    warm = f" after {cfg.warmup_steps} warm-up steps" if cfg.warmup_steps else ""
    return f"{opt}, lr {cfg.lr}{sched}{warm}" + (f", clip {cfg.clip}" if cfg.clip > 0 else "")


def _jsonable(x):
    return json.loads(json.dumps(x, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


