"""The autograd-free trainer: one large tile per step (the paper's choice), weighted cross-entropy
with the paper's weight maps, elastic augmentation, periodic validation, checkpoints, bit-exact
resume, a progress bar, a CSV log and PNG plots.

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

import csv
import io
import json
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from . import augment
from .data import Sample
from .files import atomic_write, same_file
from .instances import object_radius
from .metrics import iou
from .model import UNet, output_size
from .optim import Optimizer, clip_gradients, lr_at
from .weightmap import class_balance, weight_map

PRESETS = {
    # name: (depth, base_channels, input tile)
    "paper": (5, 64, 572),
    "small": (4, 16, 188),
    "tiny": (3, 8, 92),
}
DEFAULT_STEPS = {"paper": 10000, "small": 1500, "tiny": 300}  # per preset; 1000 for a custom network


def default_preset(engine: str) -> str:
    """The preset `unetcu train` picks: the paper's network on a GPU, the small one on a CPU."""
    return "paper" if engine == "cuda" else "small"


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainConfig:
    steps: int = 1000
    optimizer: str = "adam"       # sgd | adam | adamw (see optim.py); the defaults: benchmarks/RESULTS.md's ablation
    lr: float = 0.001
    warmup: int | None = None     # steps of linear warm-up from 0; None: min(100, steps // 10)
    schedule: str = "cosine"      # constant | cosine | poly, after the warm-up
    momentum: float = 0.99        # sgd only
    weight_decay: float = 0.0
    clip: float = 0.0             # > 0: scale the gradients down to this global L2 norm when above it
    batch: int = 1
    tile: int = 188
    augment: str = "elastic"      # elastic | flips | none
    elastic_sigma: float = 10.0
    w0: float = 10.0
    sigma: float = 5.0
    val_every: int = 100
    ckpt_every: int = 250
    seed: int = 0
    out: str = "runs/unet"
    cuda_graph: bool = False      # replay the whole step as one CUDA graph (cuda engine only)
    run: dict = field(default_factory=dict)  # how the run was started (data source, preset): saved in the
    #                                          checkpoint so that --resume needs nothing else

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else min(100, self.steps // 10)

    def lr_at(self, step: int) -> float:
        """The learning rate of step (from 1), see optim.lr_at."""
        return lr_at(step, self.steps, self.lr, self.warmup_steps, self.schedule)


def check_saved_options(path, state: dict) -> None:
    """Refuse a checkpoint whose training state is not what `unetcu train` writes: an option this
    unetcu does not know (written by a newer unetcu, say: dropping it would resume a different run
    without a word), or a step, generator state or history of the wrong kind (a damaged or edited
    file). The options' values are checked against the command line's rules by the CLI."""
    from dataclasses import fields
    from .model import written_by
    from . import __version__
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("run", {}), dict):
        raise ValueError(f"--resume {path}: holds no training options (a model saved outside `unetcu train`, or a "
                         "damaged file): it cannot be resumed; start a new run")
    unknown = sorted(set(config) - {f.name for f in fields(TrainConfig)})
    unknown += sorted(f"run.{k}" for k in set(config.get("run", {})) - RUN_KEYS)
    if unknown:
        writer = written_by(path)
        cause = ("that this unetcu does not know (the same version: an edited or damaged file)"
                 if writer.endswith(f" {__version__}") else f"that this unetcu {__version__} does not know; update unetcu "
                 "to continue the run")
        raise ValueError(f"--resume {path}: {writer} with training option(s) {', '.join(map(repr, unknown))} {cause}")
    step, rng, history = state.get("step"), state.get("rng"), state.get("history", [])
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        raise ValueError(f"--resume {path}: its step is {step!r}, not a count of steps: a damaged or edited file")
    if not isinstance(rng, dict) or not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise ValueError(f"--resume {path}: its generator state or history is not what unetcu train writes: a damaged "
                         "or edited file")


# the keys of TrainConfig.run (how a run was started) that this unetcu writes
RUN_KEYS = {"val_data", "val_fraction", "labels", "classes", "n_synthetic", "no_dropout", "data_files", "val_data_files",
            "data", "preset", "ranks"}


@dataclass
class Prepared:
    """A training image with its class map and weight map, as arrays of the model's engine."""
    image: object
    classes: object
    weights: object
    name: str


def check_classes(samples: list[Sample], n_classes: int):
    for s in samples:
        top = int(s.classes().max())
        if top >= n_classes:
            raise ValueError(f"{s.name}: label value {top} is outside the model's {n_classes} classes (0..{n_classes - 1})")


def prepare(samples: list[Sample], cfg: TrainConfig, model: UNet) -> list[Prepared]:
    out = []
    for s in samples:
        cls = s.classes()
        if s.semantic:  # no instances: class balancing only
            w = class_balance(cls, model.config["n_classes"])
        else:
            w = weight_map(s.instances, cfg.w0, cfg.sigma, model.config["n_classes"])
        xp = model.xp if cfg.augment == "elastic" else np  # the elastic warp runs where the model runs
        out.append(Prepared(xp.asarray(s.image), xp.asarray(cls), xp.asarray(w), s.name))
    return out


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


class Progress:
    """A one-line progress bar on a terminal. Elsewhere (a log file, CI) a line after the first step,
    then every ~5% of the run or every 30 s, whichever comes first."""

    def __init__(self, total, start=0, stream=sys.stderr, enabled=True, every_s=30.0):
        self.total, self.start, self.stream, self.enabled = total, start, stream, enabled
        self.t0 = self.t_line = time.perf_counter()
        self.tty = getattr(stream, "isatty", lambda: False)()
        self.every, self.every_s = max(1, (total - start) // 20), every_s
        self.open_line = False

    def update(self, step, **info):
        if not self.enabled:
            return
        now = time.perf_counter()
        done = step - self.start
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        bar = "#" * int(30 * step / self.total)
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        line = f"step {step}/{self.total} [{bar:<30}] {text} {rate:.2f} steps/s ETA {_fmt_time(eta)}"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
            self.open_line = step != self.total
            if step == self.total:
                self.stream.write("\n")
        elif done == 1 or done % self.every == 0 or step == self.total or now - self.t_line >= self.every_s:
            self.stream.write(line + "\n")
            self.t_line = now
        self.stream.flush()

    def begin(self, note=""):
        """A first line at once, before the first step (which may take a while: compiling, caches)."""
        if self.enabled:
            line = f"step {self.start}/{self.total} [{'#' * int(30 * self.start / self.total):<30}] starting{note}"
            self.stream.write(("\r" + line[:160].ljust(160)) if self.tty else line + "\n")
            self.open_line = self.tty
            self.stream.flush()

    def close(self):
        """End a bar left open on a terminal (so the next message starts on its own line)."""
        if self.enabled and self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False


def _fmt_time(s):
    if not math.isfinite(s):
        return "?"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def evaluate(model: UNet, samples: list[Sample], cfg: TrainConfig, tile=None):
    """(mean per-pixel weighted loss, mean foreground IoU) over whole images (overlap-tile), each
    image's IoU by metrics.iou, as `unetcu evaluate` computes it (1 when both are empty)."""
    from .tiling import predict_probs
    losses, ious = [], []
    for s in samples:
        probs = predict_probs(model, s.image, tile=tile or cfg.tile)
        cls = s.classes()
        w = class_balance(cls, model.config["n_classes"]) if s.semantic else weight_map(s.instances, cfg.w0, cfg.sigma, model.config["n_classes"])
        p = np.clip(np.take_along_axis(probs, cls[None].astype(np.int64), 0)[0], 1e-12, 1)
        losses.append(float(-(w * np.log(p)).mean()))
        ious.append(iou(probs.argmax(0) > 0, cls > 0))
    return float(np.mean(losses)), float(np.mean(ious))


RUN_FILES = ("checkpoint.npz", "log.csv", "curves.png", "samples.png")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training: `step` is the last finished step, `checkpoint` the file that holds
    it (None when no step had finished). The logs are written up to that step."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(step, checkpoint)
        self.step, self.checkpoint = step, checkpoint


def check_out(out, resume=None, overwrite=False):
    """Refuse (FileExistsError) to train into a folder that holds another run's files, unless the run
    continues there (resume from out/checkpoint.npz) or overwrite is asked for: a new run must never
    replace a trained model by accident."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    found = [f for f in RUN_FILES if (out / f).exists()]
    ckpt = out / "checkpoint.npz"
    if not found or overwrite or (resume and ckpt.exists() and same_file(resume, ckpt)):
        return
    go_on = f"continue it with --resume {ckpt}, " if ckpt.exists() else ""
    raise FileExistsError(f"{out} already holds a training run ({', '.join(found)}): {go_on}"
                          "train into another --out, or replace it with --overwrite")


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


def train(model: UNet, train_samples: list[Sample], val_samples: list[Sample], cfg: TrainConfig,
          resume: str | None = None, progress: bool = True, log=print, overwrite: bool = False, dist=None):
    """Train in place; returns the history (list of dicts, one per step).

    Writes into cfg.out: checkpoint.npz (weights + momentum + generator state + history + cfg, every
    cfg.ckpt_every steps and at the end), log.csv (a row per step, as it goes), curves.png (redrawn
    at each validation) and samples.png (at the end). Every file is replaced atomically.
    Raises FileExistsError if cfg.out holds another run (see check_out; overwrite=True replaces it),
    ValueError for a checkpoint of another network, TrainingDiverged on a NaN/Inf loss, and
    TrainingInterrupted (a KeyboardInterrupt) on Ctrl-C, after saving the last finished step.
    Nothing is created in cfg.out, and with overwrite nothing of the old run removed, before the
    first step has finished.
    dist: a distributed.Distributed to train as one rank of an MPI job (every rank calls train with
    the same arguments; rank 0 alone logs and writes files); None trains in this process alone."""
    out = Path(cfg.out)
    root = dist is None or dist.root
    log, progress = (log, progress) if root else (lambda *a: None, False)
    check_out(out, resume, overwrite)
    o = output_size(cfg.tile, model.config["depth"])
    rng = np.random.default_rng(cfg.seed)
    cfg.lr_at(1)  # an unknown schedule fails here, before any work
    if cfg.warmup_steps >= cfg.steps and not resume:  # (a resumed run may be cut short on purpose)
        raise ValueError(f"--warmup {cfg.warmup_steps} must be below --steps {cfg.steps}: the learning rate would never reach "
                         f"--lr {cfg.lr}")
    if cfg.warmup is None:  # pinned now: a resumed run with other --steps keeps its warm-up
        cfg = replace(cfg, warmup=cfg.warmup_steps)
    if cfg.cuda_graph and model.engine != "cuda":
        raise ValueError(f"--cuda-graph needs the cuda engine; this model runs on '{model.engine}'")
    if cfg.cuda_graph and (cfg.optimizer != "sgd" or cfg.schedule != "constant" or cfg.warmup_steps):
        raise ValueError("--cuda-graph replays one SGD update at a fixed learning rate: use it with --optimizer sgd "
                         "--schedule constant --warmup 0")
    start, history, momentum = 0, [], None
    if resume:
        loaded, momentum, state = UNet.load(resume, engine=model.engine, with_state=True)
        if loaded.config != model.config:
            raise ValueError(f"--resume {resume}: its network {loaded.config} differs from this one {model.config}")
        model.params = loaded.params
        start = int(state.get("step", 0))
        rng.bit_generator.state = state["rng"]
        history = state.get("history", [])
        from .distributed import check_ranks
        check_ranks(state.get("config", {}).get("run", {}), dist, resume)
    if dist is not None:
        cfg = replace(cfg, run={**cfg.run, "ranks": dist.size})
    opt = Optimizer(cfg.optimizer, model.params, model.engine, model.xp, cfg.momentum, cfg.weight_decay)
    if momentum:
        opt.load_state(momentum, f"--resume {resume}")
    if not train_samples:
        raise ValueError("no training images")
    check_classes(list(train_samples) + list(val_samples), model.config["n_classes"])
    if start >= cfg.steps:
        raise ValueError(f"--resume {resume}: the run is at step {start} already; give --steps above {start} to go on")
    data = prepare(train_samples, cfg, model)
    radius = object_radius([s.instances for s in train_samples if not s.semantic])  # for predict --instances watershed
    graph_step = None
    if cfg.cuda_graph:
        from .graph import GraphStep
        graph_step = GraphStep(model, opt, cfg.lr, cfg.clip)

    if dist is not None:  # every rank is here, with the same state; the all-reduce opens
        dist.begin(model, opt, cfg, rng.bit_generator.state, start)
    if resume:
        log(f"resumed from {resume} at step {start}")
    blas = ""
    if model.engine == "numpy":  # its speed is mostly the BLAS's: say which, and on how many threads
        from .cpu import blas_info
        blas = f" ({blas_info()})"
    log(f"training {model.n_params:,} parameters on engine '{model.engine}'{blas}: tile {cfg.tile} -> {o}, batch {cfg.batch}, "
        f"{len(data)} training / {len(val_samples)} validation images, {describe(cfg)}, "
        f"augment {cfg.augment}, steps {start}..{cfg.steps}" + (f"; {dist.describe()}" if dist else ""))
    ckpt = out / "checkpoint.npz"
    csv_log = None

    def open_run():  # at the first finished step: until then nothing is created, and nothing replaced
        nonlocal csv_log
        if overwrite:
            for f in RUN_FILES:
                if not resume or not (out / f).exists() or not same_file(resume, out / f):
                    (out / f).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        csv_log = CsvLog(out / "log.csv", history[:-1])
    bar = Progress(cfg.steps, start, enabled=progress)
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
        state = dict(step=step, rng=rng_state, history=history, config=asdict(cfg), object_radius=radius)
        model.save(ckpt, momentum=opt.state, state=_jsonable(state))

    def step_done(step, loss, rng_state):  # the step's row, and the state a checkpoint of this step holds
        row = dict(step=step, loss=loss, lr=cfg.lr_at(step),
                   seconds=time.perf_counter() - t_start)
        history.append(row)
        return step, rng_state, row

    interrupts = _Interrupts()
    # CPU engines render the next step's tiles in a worker thread; on a GPU the warp is one kernel on
    # the training stream (and CuPy's current stream is per thread)
    ahead = TileAhead(data, cfg, model, rng, dist.part if dist else (0, 1)) if model.engine != "cuda" else None
    bar.begin(" (the first step also compiles the elastic warp)" if cfg.augment == "elastic" else "")
    try:
        # numpy's overflow warnings would spill source lines before the one-line message: a non-finite
        # loss or weight is what ends a diverged run here, checked at every step and every checkpoint
        with interrupts, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for step in range(start + 1, cfg.steps + 1):
                interrupts.check()
                if ahead is not None:
                    x, lab, wt = ahead.tiles()
                else:
                    x, lab, wt = draw_batch(data, cfg, model, rng, *([dist.part] if dist else []))
                interrupts.check()  # the warp compiles in the first draw: a Ctrl-C it swallowed stops here
                dropout_seed = int(rng.integers(2**63))
                # the state after this step's draws, before the next step's (drawn now when rendered ahead)
                rng_state = ahead.ahead() if ahead is not None and step < cfg.steps else rng.bit_generator.state
                if graph_step is not None:  # the update is part of the graph: a bad loss is known only after it
                    with interrupts.hold():
                        loss, bad = graph_step(x, lab, wt, dropout_seed)
                        done, done_rng, row = step_done(step, loss, rng_state)
                    if bad:
                        raise ValueError(f"step {step}: a label lies outside the model's {model.config['n_classes']} classes")
                elif dist is not None:  # every rank's tiles: the mean loss and gradient (distributed.py)
                    loss, grads = dist.loss_and_grads(model, x, lab, wt, dropout_seed, step)
                else:
                    loss, grads = model.loss_and_grads(x, lab, wt, dropout_seed=dropout_seed)
                loss = float(loss) + 0.0  # -0.0 (a perfect tile) reads as 0
                if not math.isfinite(loss):
                    kept = f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint was written yet"
                    where = dist.where_nonfinite() if dist else ""
                    raise TrainingDiverged(f"loss became {loss} at step {step}{where}; training stopped ({kept}). "
                                           "Lower the learning rate (--lr).")
                if graph_step is None:
                    with interrupts.hold():
                        if cfg.clip > 0:
                            clip_gradients(grads, cfg.clip, model.xp)
                        opt.step(model.params, grads, cfg.lr_at(step), step)
                        done, done_rng, row = step_done(step, loss, rng_state)  # before a held Ctrl-C is raised
                if dist is not None and (step % cfg.ckpt_every == 0 or step == cfg.steps):
                    dist.check_same(model, opt, done_rng, step)  # every rank: the same weights, or stop
                if not root:
                    continue
                if csv_log is None:
                    open_run()
                if val_samples and (step % cfg.val_every == 0 or step == cfg.steps):
                    row["val_loss"], row["val_iou"] = evaluate(model, val_samples, cfg)
                csv_log.append(row)
                if "val_iou" in row:
                    plot_curves(history, out / "curves.png")
                bar.update(step, loss=loss, **({"val_iou": row["val_iou"]} if "val_iou" in row else {}))
                if step % cfg.ckpt_every == 0 or step == cfg.steps:
                    save(step, done_rng)
            if root:
                plot_curves(history, out / "curves.png")
            if root and val_samples:
                plot_samples(model, val_samples[:3], out / "samples.png", cfg)
    except KeyboardInterrupt:
        bar.close()
        with _sigint_ignored():  # more Ctrl-C while the last step is saved would lose it
            if done > start and root:
                if csv_log is None:
                    open_run()
                if history[-1]["step"] > csv_log.last:  # interrupted after the update, before the log
                    csv_log.append(history[-1])
                save(done, done_rng)
                if dist is None:  # mpirun kills the ranks about a second after its SIGTERM: the message first
                    plot_curves(history, out / "curves.png")
        kept = done > start or (resume and ckpt.exists() and same_file(resume, ckpt))  # not an old run's
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


class CsvLog:
    """log.csv, a row per step as training goes (so a long run can be watched). Opening it rewrites
    the file atomically from `history` (a resumed run's earlier steps), then rows are appended."""
    KEYS = ["step", "loss", "lr", "val_loss", "val_iou", "seconds"]

    def __init__(self, path, history=()):
        self.path = Path(path)
        self.last = history[-1]["step"] if history else 0
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.KEYS, lineterminator="\n")
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in self.KEYS})
        atomic_write(self.path, lambda p: Path(p).write_text(buf.getvalue()))

    def append(self, row):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.KEYS, lineterminator="\n").writerow({k: row.get(k, "") for k in self.KEYS})
        self.last = row["step"]


def _savefig(fig, path):
    atomic_write(path, lambda p: fig.savefig(p, dpi=100, format=Path(path).suffix[1:]))


def loss_axis(loss, val_loss=()) -> tuple[float, float]:
    """(bottom, top) of the log loss axis: from the 2nd percentile of the positive losses / 1.5 (a
    few near-zero steps would stretch the axis over decades and flatten the curve) to 1.5 x the
    largest finite loss, at least one decade."""
    loss = np.asarray(loss, dtype=np.float64)
    finite = np.concatenate([loss[np.isfinite(loss)], np.asarray(val_loss, dtype=np.float64)])
    pos = finite[finite > 0]
    if not pos.size:
        return 1e-3, 1.0
    lo = float(np.percentile(pos, 2)) / 1.5
    return lo, max(lo * 10, float(pos.max()) * 1.5)


def plot_curves(history, path):
    """Training loss (per step and a running mean) and validation loss on a log axis, validation
    IoU beside it. The loss axis spans the 2nd..100th percentile of the steps' losses (a single
    near-zero step would otherwise stretch it over decades); steps below it are counted in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in history]
    loss = np.array([r["loss"] for r in history], dtype=np.float64)
    v = [r for r in history if "val_loss" in r]
    lo, hi = loss_axis(loss, [r["val_loss"] for r in v])
    below = int((loss < lo).sum())
    ax[0].plot(steps, loss, lw=0.5, alpha=0.4,
               label="training loss (per step)" + (f"; {below} below the axis" if below else ""))
    k = max(1, len(loss) // 50)
    if len(loss) >= k:
        ax[0].plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
    if v:
        ax[0].plot([r["step"] for r in v], [r["val_loss"] for r in v], "o-", label="validation loss")
        ax[1].plot([r["step"] for r in v], [r["val_iou"] for r in v], "o-", color="C2")
    ax[0].set_xlabel("step"), ax[0].set_ylabel("weighted cross-entropy per pixel"), ax[0].set_yscale("log")
    ax[0].legend(fontsize=7, framealpha=0.6)
    if not v:
        ax[1].text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax[1].transAxes, color="0.4")
    ax[0].set_ylim(lo, hi)
    ax[1].set_xlabel("step"), ax[1].set_ylabel("validation IoU (mean)"), ax[1].set_ylim(0, 1)
    ax[1].grid(alpha=0.3)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_samples(model, samples, path, cfg):
    """Image, truth and prediction side by side for a few validation images; objects in colours of
    their own (the truth's instances; the prediction's connected components), so cells the net
    merges show as one colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .metrics import segments
    from .tiling import predict_probs
    from .viz import colour_instances
    fig, ax = plt.subplots(len(samples), 3, figsize=(9, 3 * len(samples)), squeeze=False)
    for i, s in enumerate(samples):
        pred = predict_probs(model, s.image, tile=cfg.tile).argmax(0)
        truth = s.instances if not s.semantic else segments(s.classes() > 0)
        n_true, n_pred = int(np.unique(truth[truth > 0]).size), int(segments(pred > 0).max())
        panels = ((s.image, f"{s.name}: image"), (colour_instances(truth), f"truth: {n_true} objects"),
                  (colour_instances(segments(pred > 0)), f"prediction: {n_pred} objects"))
        for j, (a, title) in enumerate(panels):
            ax[i, j].imshow(a, cmap="gray", interpolation="nearest")
            ax[i, j].set_title(title, fontsize=8)
            ax[i, j].axis("off")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
