"""A training run as one object: every decision made before the first step, and every refusal, here.

    run = plan_run({"data": "examples", "steps": 500})   # the options as `unetcu train` takes them
    history = unetcu.train.train(run)                    # the loop (train.py)

plan_run(options, resume) is what `unetcu train` calls after parsing; Run.of(model, samples, ...) is
the same run built from Python objects (a model and samples made elsewhere). Both end in Run.of,
so the rules below hold for either. Where each decision lives:

    option values       RULES (one table: the command line's types and choices, and what a
                        resumed checkpoint's values are held to), check_values
    preset, network     plan_run: PRESETS, default_preset (paper on a GPU, small on a CPU)
    engine, precision   plan_run: runtime.resolve_engine; the precision is the model's
    data source         plan_run: synthetic cells or load_folder, split_train_val; _data_files records
                        each file's hash so that a resume can check (and follow a moved folder)
    resume              _resumed_options (what a resume may change: RESUME_MAY_CHANGE) and Run.of
                        (weights, optimizer state, generator state, history, number of ranks)
    recipe              TrainConfig (the loop's settings); check_recipe: schedule, warm-up, the
                        CUDA-graph rule; prepare: the weight maps
    output folder       check_out: never another run's files without --overwrite
    optimizer, step     Run.of: Optimizer (optim.py); the Step (step.py: eager, graph.py, distributed.py)
    mpirun without --distributed   plan_run (distributed.refuse_undistributed)
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from .files import same_file
from .optim import OPTIMIZERS, SCHEDULES, Optimizer
from .engines.runtime import ENGINES
from .reference import PRECISIONS
from .optim import lr_at


# ---- the recipe ------------------------------------------------------------------------------------
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


RUN_FILES = ("checkpoint.npz", "log.csv", "curves.png", "samples.png")


@dataclass
class Prepared:
    """A training image with its class map and weight map, as arrays of the model's engine."""
    image: object
    classes: object
    weights: object
    name: str


def targets(sample, model) -> np.ndarray:
    """The class map (H, W) int32 the model learns for a data.Sample: the border target
    (data.border_classes) for a model with a border class, else the sample's classes()."""
    from .data import border_classes
    border = model.config.get("border", 0)
    if border and sample.semantic:
        raise ValueError(f"{sample.name}: a model with a border class learns it from instance labels; this image's "
                         "labels are read as class ids (--labels classes): use --border off")
    return border_classes(sample.instances, border) if border else sample.classes()


def weights(sample, classes: np.ndarray, cfg, model) -> np.ndarray:
    """The weight map (H, W) float32 of a data.Sample whose target is `classes` (targets()): class
    balancing alone for class-id labels, the border target's map for a model with a border class,
    else the paper's (weightmap.py)."""
    from .weightmap import border_weight_map, class_balance, weight_map
    if sample.semantic:  # no instances: class balancing only
        return class_balance(classes, model.config["n_classes"])
    if model.config.get("border", 0):
        return border_weight_map(sample.instances, classes, cfg.w0, cfg.sigma)
    return weight_map(sample.instances, cfg.w0, cfg.sigma, model.config["n_classes"], classes=classes)


BORDER_TOUCHING = 0.1  # --border auto: on when at least this fraction of the training objects touch another


def border_width(samples, setting: str = "auto") -> int:
    """The border class's width in px for a model trained on data.Sample's (0: no border class):
    setting "off" -> 0; "on" -> a tenth of the training objects' median radius, at least 2 px
    (DIC-HeLa's cells 6 px, DSB 2018's nuclei 2); "auto" -> that where at least BORDER_TOUCHING of
    the training objects touch another (data.touching_fraction; instance labels only), else 0:
    membrane labels like ISBI 2012's (1 % of its objects touch another) keep the 2-class model.
    Decided from the training labels only, never from images the model is scored on."""
    from .data import touching_fraction
    from .instances import object_radius
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"--border must be auto, on or off, got {setting!r}")
    maps = [s.instances for s in samples if not s.semantic]
    if setting == "off" or not maps or (setting == "auto" and touching_fraction(maps) < BORDER_TOUCHING):
        return 0
    radius = object_radius(maps)
    return max(2, int(round(0.1 * radius))) if radius else 2


def check_classes(samples: list, model):
    """Refuse (ValueError, naming the image) a label value outside the model's classes."""
    n_classes = model.config["n_classes"]
    for s in samples:
        top = int(targets(s, model).max())
        if top >= n_classes:
            raise ValueError(f"{s.name}: label value {top} is outside the model's {n_classes} classes (0..{n_classes - 1})")


def prepare(samples: list, cfg: TrainConfig, model) -> list[Prepared]:
    """Each training sample (data.Sample) with its class map (targets) and weight map (weights), on
    the engine where its tiles are made."""
    out = []
    for s in samples:
        cls = targets(s, model)
        w = weights(s, cls, cfg, model)
        xp = model.xp if cfg.augment == "elastic" else np  # the elastic warp runs where the model runs
        out.append(Prepared(xp.asarray(s.image), xp.asarray(cls), xp.asarray(w), s.name))
    return out


# ---- the options and their rules ------------------------------------------------------------------
def number(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """A rule for a number option (an argparse type): int or float within [lo, hi] (open ends where
    asked); NaN and inf never pass. Raises argparse.ArgumentTypeError with what it must be."""
    name = "an integer" if kind is int else "a number"
    rng = [f"{'>' if lo_open else '>='} {lo}" if lo is not None else "", f"{'<' if hi_open else '<='} {hi}" if hi is not None else ""]
    want = f"{name} " + " and ".join(r for r in rng if r)

    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        ok = v == v and abs(v) != float("inf") and (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return v
    parse.__name__ = name
    parse.kind, parse.want = kind, want  # what a value given from Python or saved in a checkpoint must be (check_values)
    return parse


# The rule of every train option: a number rule, a tuple of choices, bool (a flag) or str (a path).
RULES = dict(
    data=str, val_data=str, val_fraction=number(float, 0, 1, hi_open=True),
    labels=("auto", "binary", "instance", "classes", "threshold"), classes=number(int, 2, 256),
    border=("auto", "on", "off"),
    preset=("auto", "paper", "small", "tiny"), engine=ENGINES, precision=PRECISIONS, cuda_graph=bool,
    steps=number(int, 1, 10**8), optimizer=OPTIMIZERS, lr=number(float, 1e-10, 10), warmup=number(int, 0, 10**8),
    schedule=SCHEDULES, momentum=number(float, 0, 1, hi_open=True), weight_decay=number(float, 0, 1),
    clip=number(float, 0, 1e6), batch=number(int, 1, 100000), tile=number(int, 1, 100000),
    augment=("elastic", "flips", "none"), w0=number(float, 0, 1000), sigma=number(float, 0.1, 1000),
    no_dropout=bool, n_synthetic=number(int, 1, 100000), val_every=number(int, 1), ckpt_every=number(int, 1),
    seed=number(int, 0), out=str, no_progress=bool, overwrite=bool)

# Every option's default. plan_run takes None (or a missing key) as "not given", so that a resumed
# run can take the options it was started with from its checkpoint.
TRAIN_DEFAULTS = dict(data="synthetic", val_data=None, val_fraction=0.2, labels="auto", classes=2, border="off", preset="auto",
                      engine=None, precision="fp32", cuda_graph=False, steps=None, optimizer="adam", lr=0.001,
                      warmup=None, schedule="cosine", momentum=0.99,
                      weight_decay=0.0, clip=0.0, batch=1, tile=None, augment="elastic", w0=10.0, sigma=5.0,
                      no_dropout=False, n_synthetic=16, val_every=100, ckpt_every=250, seed=0, out=None,
                      no_progress=False, overwrite=False)
# what a resumed run may change; every other option given with a resume must equal the run's own
RESUME_MAY_CHANGE = {"steps", "lr", "weight_decay", "clip", "val_every", "ckpt_every", "engine", "precision",
                     "cuda_graph", "out", "no_progress", "overwrite"}
# the keys of TrainConfig.run (how a run was started) that this unetcu writes
RUN_KEYS = {"val_data", "val_fraction", "labels", "classes", "border", "n_synthetic", "no_dropout", "data_files", "val_data_files",
            "data", "preset", "ranks"}


def flag(name: str) -> str:
    """The command-line spelling of an option: val_data -> --val-data."""
    return "--" + name.replace("_", "-")


def _valid(rule, v) -> bool:
    kind = getattr(rule, "kind", None)
    if isinstance(rule, tuple):
        return isinstance(v, str) and v in rule
    if kind is not None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or v == int(v))
        try:
            return ok and rule(str(int(v) if kind is int else v)) is not None
        except argparse.ArgumentTypeError:
            return False
    return isinstance(v, rule)


def _rule_text(rule) -> str:
    if isinstance(rule, tuple):
        return "one of " + ", ".join(rule)
    return {bool: "True or False", str: "a str"}.get(rule) or rule.want


def check_values(values: dict, where: str = "", why: str = "") -> dict:
    """Each option's value held to its rule (RULES): ValueError naming the first that breaks it
    and what it must be. Returns the values with integer options' whole numbers as int (20.0 -> 20).
    where, why: the message's start and end (a resumed checkpoint's values: "--resume PATH: the run's ")."""
    out = {}
    for k, v in values.items():
        if k not in RULES:
            raise ValueError(f"{where}{flag(k)}: unetcu train has no such option")
        rule = RULES[k]
        if v is not None or TRAIN_DEFAULTS.get(k) is not None:  # None: unset (warmup, val_data, ...)
            if not _valid(rule, v):
                raise ValueError(f"{where}{flag(k)} is {v!r}, which {flag(k)} does not take: it must be "
                                 f"{_rule_text(rule)}{why}")
            if getattr(rule, "kind", None) is int:
                v = int(v)
        out[k] = v
    return out


def _check_sigma(sigma, where: str = "", why: str = "") -> None:
    """The elastic warp's strength (TrainConfig.elastic_sigma, no command-line option): pixels, > 0."""
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and 0 < sigma < 1e6):  # NaN fails too
        raise ValueError(f"{where}elastic_sigma is {sigma!r}, not a warp strength in pixels (> 0){why}")


def check_config(cfg: TrainConfig, model) -> None:
    """A recipe built in Python held to the command line's rules: every TrainConfig value that is an
    option (RULES), the tile the network takes, the memory the engine has (model.check_memory)."""
    from .model import check_memory, output_size
    check_values({f.name: getattr(cfg, f.name) for f in fields(TrainConfig) if f.name in RULES})
    _check_sigma(cfg.elastic_sigma)
    try:
        output_size(cfg.tile, model.config["depth"])
    except ValueError as e:
        raise ValueError(f"--tile: {e}") from None
    c = model.config
    check_memory(model.engine, cfg.tile, cfg.batch, c["depth"], c["base_channels"], c["n_classes"], training=True)


def check_saved_options(path, state: dict) -> None:
    """Refuse a checkpoint whose training state is not what `unetcu train` writes: an option this
    unetcu does not know (written by a newer unetcu, say: dropping it would resume a different run
    without a word), or a step, generator state or history of the wrong kind (a damaged or edited
    file). The options' values are held to RULES by _resumed_options."""
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


def check_out(out, resume=None, overwrite=False):
    """Refuse (FileExistsError) to train into a folder that holds another run's files, unless the run
    continues there (resume from out/checkpoint.npz) or overwrite is asked for: a new run must never
    replace a trained model by accident."""
    if not str(out).strip():
        raise ValueError(f"--out {str(out)!r}: give the run's folder")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    up = next((p for p in out.parents if p.exists()), None)  # the folder it will be made in: not a file
    if up is not None and not up.is_dir():
        raise FileExistsError(f"--out {out}: {up} is a file, not a folder")
    found = [f for f in RUN_FILES if (out / f).exists()]
    ckpt = out / "checkpoint.npz"
    if not found or overwrite or (resume and ckpt.exists() and same_file(resume, ckpt)):
        return
    go_on = f"continue it with --resume {ckpt}, " if ckpt.exists() else ""
    raise FileExistsError(f"{out} already holds a training run ({', '.join(found)}): {go_on}"
                          "train into another --out, or replace it with --overwrite")


def check_recipe(cfg: TrainConfig, engine: str, resuming: bool) -> None:
    """Refuse (ValueError) a schedule that cannot run: an unknown schedule, a warm-up as long as the
    run, a CUDA graph off the cuda engine or with an update that changes every step."""
    cfg.lr_at(1)  # an unknown schedule fails here, before any work
    if cfg.warmup_steps >= cfg.steps and not resuming:  # (a resumed run may be cut short on purpose)
        raise ValueError(f"--warmup {cfg.warmup_steps} must be below --steps {cfg.steps}: the learning rate would never reach "
                         f"--lr {cfg.lr}")
    if cfg.cuda_graph and engine != "cuda":
        raise ValueError(f"--cuda-graph needs the cuda engine; this run uses {engine}")
    if cfg.cuda_graph and (cfg.optimizer != "sgd" or cfg.schedule != "constant" or cfg.warmup_steps):
        raise ValueError("--cuda-graph replays one SGD update at a fixed learning rate: use it with --optimizer sgd "
                         "--schedule constant --warmup 0")


@dataclass
class Run:
    """Everything one training run needs, decided and checked: train.train(run) runs its loop.

    model (UNet, with the resumed weights), cfg (TrainConfig, warm-up pinned), train_samples and
    val_samples (data.Sample), data (the training images with their class and weight maps on the
    model's engine), optimizer (optim.Optimizer, resumed state loaded), rng (the one generator of
    every random draw, at the resumed state), start (the last finished step), history (a dict per
    step so far), resume (the checkpoint continued, or None), overwrite, dist (a
    distributed.Distributed for one rank of an MPI job, or None), object_radius and touching (of the training
    objects, for predict's defaults), step (the step.Step that computes and applies a step),
    progress (train shows a progress bar: plan_run's no_progress turns it off)."""
    model: object
    cfg: TrainConfig
    train_samples: list
    val_samples: list
    data: list[Prepared]
    optimizer: Optimizer
    rng: np.random.Generator
    step: object
    start: int = 0
    history: list = field(default_factory=list)
    resume: str | None = None
    overwrite: bool = False
    dist: object = None
    object_radius: float | None = None
    touching: float | None = None  # the fraction of training objects touching another (predict --instances auto)
    progress: bool = True
    trained: bool = False  # train(run) has run it: a Run trains once

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def root(self) -> bool:
        """This process logs and writes the run's files (rank 0, or the only process)."""
        return self.dist is None or self.dist.root

    @classmethod
    def of(cls, model, train_samples, val_samples, cfg: TrainConfig, resume: str | None = None,
           overwrite: bool = False, dist=None, resumed=None, checked: bool = False) -> "Run":
        """The run of `model` on these samples with this recipe, continuing checkpoint `resume` if given
        (resumed: its UNet.load(..., with_state=True), when already loaded; checked: plan_run made
        this run, from options it has checked, on data it recorded). Raises FileExistsError if
        cfg.out holds another run (check_out), ValueError for a recipe that cannot run (check_recipe),
        a checkpoint of another network or number of ranks, a label outside the model's classes, no
        training images, or a run already at cfg.steps."""
        from .data import touching_fraction
        from .instances import object_radius
        from .model import UNet
        if resume and resumed is None:
            resumed = UNet.load(resume, engine=model.engine, with_state=True)
            check_saved_options(resume, resumed[2])
            cfg = _as_resumed(cfg, resumed[2]["config"], resume)
        if not checked:  # a recipe and samples given in Python: the command line's rules, and a record of
            check_config(cfg, model)  # where the data came from (a resume from the command line refuses it)
            check_out(cfg.out, resume, overwrite)
            check_recipe(cfg, model.engine, bool(resume))
            cfg = replace(cfg, run={**cfg.run, "data": FROM_PYTHON, "data_files": None, "val_data_files": None})
        if cfg.warmup is None:  # pinned now: a resumed run with other --steps keeps its warm-up
            cfg = replace(cfg, warmup=cfg.warmup_steps)
        rng = np.random.default_rng(cfg.seed)
        start, history, momentum = 0, [], None
        if resume:
            from .distributed import check_ranks
            loaded, momentum, state = resumed
            if loaded.config != model.config:
                raise ValueError(f"--resume {resume}: its network {loaded.config} differs from this one {model.config}")
            model.params = loaded.params
            start = int(state.get("step", 0))
            rng.bit_generator.state = state["rng"]
            history = state.get("history", [])
            check_ranks(state.get("config", {}).get("run", {}), dist, resume)
        if dist is not None:
            cfg = replace(cfg, run={**cfg.run, "ranks": dist.size})
        opt = Optimizer(cfg.optimizer, model.params, model.engine, model.xp, cfg.momentum, cfg.weight_decay)
        if momentum:
            opt.load_state(momentum, f"--resume {resume}")
        if not train_samples:
            raise ValueError("no training images")
        check_classes(list(train_samples) + list(val_samples), model)
        _check_not_done(resume, start, cfg.steps)
        data = prepare(train_samples, cfg, model)
        maps = [s.instances for s in train_samples if not s.semantic]
        radius = object_radius(maps)  # predict --instances watershed: the seeds' spacing
        touching = touching_fraction(maps) if maps else None  # predict --instances auto: watershed when they touch
        return cls(model=model, cfg=cfg, train_samples=list(train_samples), val_samples=list(val_samples), data=data,
                   optimizer=opt, rng=rng, step=_step(model, opt, cfg, dist), start=start, history=history,
                   resume=resume, overwrite=overwrite, dist=dist, object_radius=radius, touching=touching)


FROM_PYTHON = "samples given in Python"  # TrainConfig.run["data"] of a run that Run.of started


def _check_not_done(resume, start: int, steps: int) -> None:
    if start >= steps:
        raise ValueError(f"--resume {resume}: the run is at step {start} already; give --steps above {start} to go on")


def _as_resumed(cfg: TrainConfig, saved: dict, resume) -> TrainConfig:
    """cfg held to a checkpoint's recipe (Run.of(..., resume=) from Python): what a resume may not
    change must equal the run's (as plan_run holds the command line's options), and a warm-up left
    unset is the run's own, pinned when it started."""
    for k, v in saved.items():
        # (another optimizer is refused by Optimizer.load_state, naming the state the checkpoint holds)
        if ((k in RULES or k == "elastic_sigma") and k not in RESUME_MAY_CHANGE | {"warmup", "optimizer"}
                and getattr(cfg, k, v) != v):
            raise ValueError(f"--resume {resume}: {k} {getattr(cfg, k)!r} differs from the run's {v!r}; a resumed run "
                             "keeps its data, network and sampling")
    if cfg.warmup is None and saved.get("warmup") is not None:
        cfg = replace(cfg, warmup=saved["warmup"])
    if saved.get("warmup") is not None and cfg.warmup != saved["warmup"]:
        raise ValueError(f"--resume {resume}: warmup {cfg.warmup} differs from the run's {saved['warmup']}")
    return replace(cfg, run={**saved.get("run", {}), **cfg.run})


def _step(model, opt, cfg, dist):
    """The Step of this run (step.py): its update replayed as one CUDA graph, one rank of an MPI
    job, or eager."""
    if cfg.cuda_graph:
        from .graph import GraphStep
        return GraphStep(model, opt, cfg.lr, cfg.clip)
    if dist is not None:
        from .distributed import DistributedStep
        return DistributedStep(model, opt, cfg, dist)
    from .step import EagerStep
    return EagerStep(model, opt, cfg)


def plan_run(options: dict, resume: str | None = None, dist=None, log=print) -> Run:
    """The run that `unetcu train` with these options starts (or continues, with resume = a
    checkpoint): options as the command line names them (val_data, no_dropout, ...; TRAIN_DEFAULTS'
    keys), None or missing for an option not given. Every refusal comes before anything is
    generated, loaded or created: a value outside its rule, an option a resume may not change, a
    tile the network cannot take or memory cannot hold, an --out holding another run, data whose
    files changed since the run started, labels outside the classes. dist: this rank's
    distributed.Distributed (the ranks check they run the same code, options and data first).
    log: where the data and label summary lines go. Raises ValueError, FileExistsError,
    FileNotFoundError, MemoryError with one-line messages."""
    from . import data as D
    from .distributed import refuse_undistributed
    from .engines import runtime
    from .model import UNet, check_memory, output_size
    if dist is None:
        refuse_undistributed()  # mpirun -n N without --distributed: N runs writing into one folder
    if "resume" in options:
        raise ValueError("resume is plan_run's second argument: plan_run(options, resume=CHECKPOINT)")
    given = check_values({k: v for k, v in options.items() if v is not None})
    o, resumed = _resumed_options(given, resume)
    engine = runtime.resolve_engine(o["engine"])
    if resumed:
        net = resumed[0].config
        preset = o["preset"] if o["preset"] != "auto" else "custom"
        depth, base, tile = net["depth"], net["base_channels"], o["tile"]
        n_classes, dropout = net["n_classes"], net["dropout"]
        n_classes = 2 if net.get("border") else n_classes  # the labels' classes: a border class is made from them
    else:
        preset = o["preset"] if o["preset"] != "auto" else default_preset(engine)
        depth, base, tile = PRESETS[preset]
        tile = o["tile"] or tile
        n_classes, dropout = o["classes"], 0.0 if o["no_dropout"] else 0.5
    steps = o["steps"] or DEFAULT_STEPS.get(preset, 1000)
    if resumed:
        _check_not_done(resume, int(resumed[2]["step"]), steps)
    try:
        output_size(tile, depth)
    except ValueError as e:
        raise ValueError(f"--tile: {e}") from None
    check_memory(engine, tile, o["batch"], depth, base, n_classes, training=True)
    check_out(o["out"], resume, o["overwrite"])
    if not resumed and o["border"] == "on" and (n_classes != 2 or o["labels"] == "classes"):
        raise ValueError("--border on adds a border class to instance labels (background, cell, border): it takes "
                         "2-class labels, not --classes above 2 or --labels classes")
    if given.get("momentum") is not None and o["optimizer"] != "sgd":
        raise ValueError(f"--momentum applies to --optimizer sgd; this run uses {o['optimizer']} (its moments have fixed betas)")
    cfg = TrainConfig(steps=steps, optimizer=o["optimizer"], lr=o["lr"], warmup=o["warmup"], schedule=o["schedule"],
                      momentum=o["momentum"], weight_decay=o["weight_decay"], clip=o["clip"],
                      batch=o["batch"], tile=tile, augment=o["augment"], w0=o["w0"], sigma=o["sigma"],
                      val_every=o["val_every"], ckpt_every=o["ckpt_every"], seed=o["seed"], out=o["out"],
                      cuda_graph=o["cuda_graph"])
    if resumed:  # what no option sets is the run's own: the elastic warp's strength
        sigma = resumed[2]["config"].get("elastic_sigma", cfg.elastic_sigma)
        _check_sigma(sigma, f"--resume {resume}: the run's ", " (a damaged or edited checkpoint)")
        cfg = replace(cfg, elastic_sigma=float(sigma))
    check_recipe(cfg, engine, bool(resume))
    o.update(_data_files(o, resume, resumed[2].get("config", {}).get("run") if resumed else None, log))
    if dist is not None:  # every rank: the same code, options and data, or none starts
        dist.check_setup(_rank_setup(o, engine, steps))
    if o["data"] == "synthetic":  # labels: the generator's instances, 2 classes
        for k in ("val_data", "val_fraction"):  # its validation images are generated too
            if given.get(k) is not None:
                raise ValueError(f"{flag(k)} applies to --data folders; the synthetic cells come with validation "
                                 "images of their own (--n-synthetic sets how many: an eighth of it)")
        if given.get("labels") not in (None, "auto"):
            raise ValueError(f"--labels {given['labels']} applies to label images of --data/--val-data folders; the "
                             "synthetic cells come with instance labels")
        if n_classes > 2:
            raise ValueError(f"--classes {n_classes}: the synthetic cells have 2 classes (background, cell interior); "
                             "more classes need --data with class-id labels")
        size = (max(256, tile // 2), max(256, tile // 2))
        train_s = D.synthetic_dataset(o["n_synthetic"], size, seed=o["seed"] * 2 + 1)
        val_s = D.synthetic_dataset(max(1, o["n_synthetic"] // 8), size, seed=o["seed"] * 2 + 2)
        source = f"{len(train_s)} training + {len(val_s)} validation synthetic images of {size[0]}x{size[1]} (seed {o['seed']})"
    else:
        # load_folder reads with D.label_mode_for(labels, n_classes): auto means class ids above 2 classes
        if o["val_data"] and os.path.realpath(o["val_data"]) == os.path.realpath(o["data"]):
            raise ValueError(f"--val-data {o['val_data']} is --data itself: validation on the training images would "
                             "measure nothing (omit --val-data to hold out --val-fraction of --data)")
        allsamples = D.load_folder(o["data"], o["labels"], n_classes)
        if o["val_data"]:
            train_s, val_s = allsamples, D.load_folder(o["val_data"], o["labels"], n_classes)
        else:
            train_s, val_s = D.split_train_val(allsamples, o["val_fraction"])
        source = f"{o['data']}: {len(train_s)} training, {len(val_s)} validation images"
    log(f"data: {source}")
    log(D.describe_labels(list(train_s) + list(val_s), n_classes))
    if resumed:
        model = resumed[0]
        model.precision = o["precision"]  # not part of the saved model: a resume may change it
        has = "on" if model.config["border"] else "off"
        if given.get("border") not in (None, "auto", has):  # (a checkpoint written before --border records none)
            raise ValueError(f"--resume {resume}: --border {given['border']} differs from the run's model (border class "
                             f"{has}); a resumed run keeps its network")
    else:
        border = border_width(train_s, o["border"]) if n_classes == 2 else 0
        if border:
            log(f"border class: on (--border {o['border']}): objects touching within {border} px are learnt as a third "
                "class, and predict grows each cell into it")
        model = UNet(in_channels=1, n_classes=3 if border else n_classes, depth=depth, base_channels=base, dropout=dropout,
                     engine=engine, seed=o["seed"], precision=o["precision"], border=border)
    run = {k: o[k] for k in ("val_data", "val_fraction", "labels", "classes", "border", "n_synthetic", "no_dropout",
                             "data_files", "val_data_files")}
    run.update(data=o["data"], preset=preset)
    planned = Run.of(model, train_s, val_s, replace(cfg, run=run), resume=resume, overwrite=o["overwrite"], dist=dist,
                     resumed=resumed, checked=True)
    planned.progress = not o["no_progress"]
    if not resumed and model.config["border"] and not any(int((d.classes == 2).sum()) for d in planned.data):
        log(f"note: --border {o['border']}: no training object lies within {model.config['border']} px of another, so "
            "the border class never occurs in the training labels (--border off trains the 2-class model)")
    return planned


def _is_folder(data) -> bool:
    return data not in (None, "synthetic")


def _resumed_options(given: dict, resume) -> tuple[dict, tuple | None]:
    """(options, resumed): the options of this run, a dict over TRAIN_DEFAULTS' keys (a resumed run's
    own, where not given and allowed to change); `resumed` is UNet.load(resume, with_state=True), or None."""
    from .model import UNet
    for k in ("data", "val_data"):  # folders are kept absolute, so a resume from elsewhere compares them right
        if k in given and given[k] != "synthetic":
            given[k] = os.path.abspath(given[k])
    if not resume:
        opts = {**TRAIN_DEFAULTS, **given}
        opts["out"] = "runs/unet" if opts["out"] is None else opts["out"]
        return opts, None
    resumed = UNet.load(resume, engine=given.get("engine"), with_state=True)
    state = resumed[2]
    check_saved_options(resume, state)
    saved = {k: v for k, v in state.get("config", {}).items() if k in TRAIN_DEFAULTS}
    saved.update(state.get("config", {}).get("run", {}))
    if "optimizer" not in state.get("config", {"optimizer": None}):  # written when SGD at a fixed lr was all there was
        saved.update(optimizer="sgd", warmup=0, schedule="constant")
    if "run" not in state.get("config", {}):  # written before checkpoints recorded their run's options
        saved = {k: v for k, v in saved.items() if k not in ("out",)}
    if saved.get("data") == FROM_PYTHON:
        raise ValueError(f"--resume {resume}: the run was started from Python on samples of its own (Run.of): resume "
                         "it the same way, Run.of(model, samples, ..., resume=CHECKPOINT)")
    saved.update(check_values({k: v for k, v in saved.items() if k in RULES}, f"--resume {resume}: the run's ",
                              " (a damaged or edited checkpoint)"))
    for k, v in given.items():
        if k in ("data", "val_data") and _is_folder(saved.get(k)) and _is_folder(v):
            continue  # a data folder may have moved: _data_files compares its files' content
        if k == "border":
            continue  # held to the model's own border class by plan_run (auto may have decided either way)
        if k not in RESUME_MAY_CHANGE and k in saved and saved[k] is None:
            raise ValueError(f"--resume {resume}: the run had no {flag(k)}; a resumed run keeps its data, network and "
                             f"sampling (omit {flag(k)}, or start a new run)")
        if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != v:
            raise ValueError(f"--resume {resume}: {flag(k)} {v} differs from the run's {saved[k]!r}; a resumed run keeps "
                             f"its data, network and sampling (omit {flag(k)}, or start a new run)")
    opts = {**TRAIN_DEFAULTS, **saved, **given}
    opts["out"] = os.path.dirname(os.path.abspath(resume)) if given.get("out") is None else given["out"]
    return opts, resumed


def _data_files(o, resume=None, saved=None, log=print) -> dict:
    """{"data_files": ..., "val_data_files": ...}: the content of the run's data folders
    (data.fingerprint; None for synthetic data), recorded in its checkpoint. With --resume the folders
    must hold the files the run recorded, at its path or another (a folder that was moved): a file
    that differs is refused (ValueError) by name. A checkpoint written before runs recorded their
    files cannot tell: its data is taken at the run's own path only."""
    from . import data as D
    files = {}
    for k in ("data", "val_data"):
        path, opt = o[k], flag(k)
        files[f"{k}_files"] = None
        if not _is_folder(path):
            continue
        was, had = (saved or {}).get(k), (saved or {}).get(f"{k}_files")
        if resume and path == was and not os.path.isdir(path):
            raise FileNotFoundError(f"--resume {resume}: the run's {opt} {was} is gone; if it was moved, give its new "
                                    f"place with {opt}")
        if resume and had is None and path != was:
            raise ValueError(f"--resume {resume}: {opt} {path} differs from the run's {was}, and this checkpoint (written "
                             "before unetcu recorded the content of a run's data) cannot tell whether it holds the same "
                             f"files: put the data back at {was} (or a link to it there), or start a new run")
        now = files[f"{k}_files"] = D.fingerprint(path)
        if resume and had is None:
            log(f"note: {resume} records no content of its {opt} (written before unetcu did): the files in {path} "
              "are taken as they are")
        elif resume and (diff := D.first_difference(had, now)):
            if path == was:
                raise ValueError(f"--resume {resume}: the run's {opt} {path} changed since the run started: {diff}; a "
                                 "resumed run trains on its own files (restore them, or start a new run)")
            raise ValueError(f"--resume {resume}: {opt} {path} does not hold the run's files (from {was}): {diff}; a "
                             "resumed run trains on its own files")
    return files


def _rank_setup(o, engine, steps) -> dict:
    """What must be the same on every rank of `train --distributed` (Distributed.check_setup): the
    options (data folders by their content, wherever each rank has them), the code and the data."""
    from .distributed import code_fingerprint
    skip = ("data", "val_data", "out", "no_progress", "overwrite", "data_files", "val_data_files")
    options = {k: v for k, v in o.items() if k in TRAIN_DEFAULTS and k not in skip}
    options.update(engine=engine, steps=steps, data="a folder" if _is_folder(o["data"]) else o["data"],
                   val_data="a folder" if _is_folder(o["val_data"]) else o["val_data"])
    return dict(code=code_fingerprint(), options=options, data=o["data_files"], val_data=o["val_data_files"],
                paths={"data": o["data"], "val_data": o["val_data"]})
