"""The `unetcu` command."""
from __future__ import annotations

import argparse
import os
import sys

from .reference import PRECISIONS
from .engines.runtime import ENGINES
from .run import RULES, number


def _cmd_demo(a) -> int:
    from . import demo
    res = demo.run(a.engine, size=a.size, seed=a.seed, order=a.order)
    tol = {"wmma_tf32_gemm_kernel1": 1e-5}
    bad = [k for k, (err, _) in res.items() if not err <= tol.get(k, 1e-5)]
    if bad:
        print(f"unetcu demo: results differ from NumPy for {', '.join(bad)}", file=sys.stderr)
        return 1
    print("all results match NumPy")
    return 0


def _cmd_engines(a) -> int:
    from .engines import runtime, emu
    ok, why = runtime.gpu_status()
    env = os.environ.get(runtime.ENGINE_ENV)
    print(f"cuda : {'usable' if ok else 'not usable'} ({why})")
    print(f"emu  : usable (these CUDA kernels on the CPU through the g++ emulator, {emu.num_threads()} OS thread(s), "
          f"order {emu.get_order()[0]}; slow: for checking kernels)")
    print("numpy: usable (the float32 reference on the CPU; trains the small preset at a few steps/s)")
    if env:
        reason = f"{runtime.ENGINE_ENV}={env}"
    else:
        reason = "a GPU is usable" if ok else f"no GPU is usable; --engine or {runtime.ENGINE_ENV} chooses another"
    try:
        engine = runtime.resolve_engine(None)
    except (ValueError, RuntimeError) as e:
        print(f"train, predict use: none: {e}")
        return 1
    print(f"train, predict use: {engine} ({reason})")
    print(f"demo and runtime.compile use: {runtime.resolve_engine(None, kernels=True)} (kernels need cuda or emu)")
    print(f"kernels: {runtime.kernels_dir()}")
    print(f"CUDA include dir for <mma.h>: {runtime.cuda_include_dir() or 'not found'}")
    return 0


def _refuse_existing(out, overwrite, suffix, inputs=()):
    """--out as a Path: a NAME`suffix` file in an existing folder, not one of the inputs, new unless overwrite."""
    from pathlib import Path
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file name NAME{suffix}")
    if any(out.exists() and Path(i).exists() and os.path.samefile(out, i) for i in inputs):
        raise ValueError(f"--out {out} is the input itself: give another name (an input is never replaced)")
    if out.suffix.lower() != suffix:
        raise ValueError(f"--out {out}: give NAME{suffix}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; give --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: no folder {out.parent}")
    return out


def _cmd_export(a) -> int:
    from pathlib import Path
    from . import export
    from .files import atomic_write
    from .model import UNet
    suffixes = {"bioimageio": ".zip", "onnx": ".onnx"}
    if Path(a.out).is_dir():
        raise IsADirectoryError(f"--out {a.out} is a folder; give a file name NAME.zip or NAME.onnx")
    suffix = Path(a.out).suffix.lower()
    fmt = a.format or {v: k for k, v in suffixes.items()}.get(suffix)
    if fmt is None:
        raise ValueError(f"--out {a.out}: give NAME.zip (bioimage.io package) or NAME.onnx")
    if suffix != suffixes[fmt]:
        raise ValueError(f"--out {a.out}: --format {fmt} writes NAME{suffixes[fmt]}")
    out = _refuse_existing(a.out, a.overwrite, suffixes[fmt], [a.checkpoint])
    license = a.license or "CC-BY-4.0"
    if fmt == "bioimageio":
        export.check_fields(a.name, license)
    model, _, state = UNet.load(a.checkpoint, engine="numpy", with_state=True)  # not a checkpoint: one line here
    onx = export.to_onnx(model, object_radius=state.get("object_radius"))
    diff = export.onnx_difference(onx, model)
    if not diff <= 1e-4:  # float32 sums in another order differ by ~1e-6 (~1e-5 for the paper net's random weights)
        raise ValueError(f"onnxruntime's probabilities differ from unetcu's by {diff:.3g}: nothing written")
    c = model.config
    smallest, step, margin = export.size_rule(c["depth"])
    shapes = (f"input (batch, {c['in_channels']}, y, x) with y, x = {smallest} + k*{step}; output (batch, "
              f"{c['n_classes']}, y - {margin}, x - {margin}) probabilities")
    if fmt == "onnx":
        import onnx
        atomic_write(out, lambda tmp: onnx.save(onx, tmp))
        print(f"wrote {out}: ONNX opset {export.OPSET}, {shapes}; onnxruntime reproduces unetcu's probabilities "
              f"to {diff:.1g}. The input must be standardised first (zero mean, unit variance per image)")
        return 0
    result = {}
    atomic_write(out, lambda tmp: result.update(status=export.package(a.checkpoint, tmp, name=a.name, author=a.author,
                                                                      license=license, test=not a.no_test)))
    status = result["status"]
    print(f"wrote {out}: bioimage.io model package (format 0.5): ONNX opset {export.OPSET} weights, {shapes}, "
          f"per-image standardisation as its preprocessing (feed raw pixels); onnxruntime reproduces unetcu's "
          f"probabilities to {diff:.1g}; bioimageio.core's test: {status or 'not run (--no-test)'}; license "
          f"{license}{'' if a.license else ' (--license to choose another)'}")
    return 0


def _cmd_import(a) -> int:
    from . import export
    out = _refuse_existing(a.out, a.overwrite, ".npz", [a.model])
    model = export.from_onnx(a.model)
    radius = model.object_radius
    model.save(out, state={"object_radius": radius} if radius else None)
    c = model.config
    size = (f"training objects' radius {radius:.1f} px kept for predict's defaults" if radius else
            "no training object size in the file: predict keeps every object unless --min-size")
    print(f"wrote {out}: a U-Net of depth {c['depth']}, {c['base_channels']} base channels, {c['n_classes']} classes "
          f"({model.n_params:,} parameters) that gives the ONNX graph's probabilities; {size}")
    return 0


def _cmd_compile_check(a) -> int:
    from .engines import compile_check
    argv = list(a.files) + ["--arch", a.arch] + (["--compiler", a.compiler] if a.compiler else [])
    return compile_check.main(argv + (["--fail-on-spill"] if a.fail_on_spill else []))


def _cmd_asan(a) -> int:
    from .engines.emu import asan_runtime
    command = a.command[1:] if a.command[:1] == ["--"] else a.command  # `--` as unetcu sanitize takes it
    if not command:
        print("unetcu asan: give a command, e.g. `unetcu asan python my_kernel_test.py`", file=sys.stderr)
        return 2
    env = dict(os.environ, LD_PRELOAD=asan_runtime(), UNETCU_EMU_SANITIZE="address",
               ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "detect_leaks=0"))
    try:
        os.execvpe(command[0], command, env)
    except OSError as e:
        print(f"unetcu asan: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr)
    return 127


def _cmd_sanitize(a) -> int:
    from .engines import sanitize
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        print("unetcu sanitize: give a command after --, e.g. `unetcu sanitize --tool racecheck -- python my_test.py`",
              file=sys.stderr)
        return 2
    return sanitize.run(a.tool, cmd)


def _cmd_profile(a) -> int:
    from .engines import profile
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        print("unetcu profile: give a command after --, e.g. `unetcu profile --json p.json -- python my_test.py`",
              file=sys.stderr)
        return 2
    if a.sample is not None and a.sample < 3:
        print(f"unetcu profile: --sample {a.sample}: the sample is at least 3 indices per grid dimension "
              "(the first, the last and one between)", file=sys.stderr)
        return 2
    if a.json is not None and a.json and not os.path.isdir(os.path.dirname(os.path.abspath(a.json))):
        print(f"unetcu profile: --json {a.json}: its folder does not exist", file=sys.stderr)
        return 2
    return profile.run(cmd, a.kernel, a.json, a.sample)


# ---- train ---------------------------------------------------------------------------------------
# Every train option is parsed with default None, so that an option given on the command line can be
# told from a default: run.plan_run takes a resumed run's own options from its checkpoint.
def _cmd_train(a) -> int:
    from . import distributed
    from .run import TRAIN_DEFAULTS
    options = {k: v for k, v in vars(a).items() if k in TRAIN_DEFAULTS}
    if a.distributed:  # as one rank of `mpirun -n N` (distributed.py)
        return distributed.as_rank(lambda dist: _train(options, a.resume, dist),
                                   engine_hint=a.engine or os.environ.get("UNETCU_ENGINE"))
    return _train(options, a.resume)


def _train(options: dict, resume, dist=None) -> int:
    """Plan the run (every refusal before anything is written), run its loop, say what it wrote."""
    from .distributed import resume_command
    from .run import plan_run
    from .train import TrainingDiverged, TrainingInterrupted, train
    run = plan_run(options, resume, dist)
    out = run.out
    try:
        history = train(run, log=print)
    except TrainingDiverged as e:
        print(f"unetcu train: {e}", file=sys.stderr)
        return 3
    except TrainingInterrupted as e:
        _ignore_sigint()
        if e.checkpoint is None:
            print("unetcu train: interrupted before the first step finished; nothing was saved"
                  + (f" ({out}/ holds what it held before)" if out.exists() else ""), file=sys.stderr)
        else:
            print(f"unetcu train: interrupted; step {e.step} saved in {e.checkpoint} (logs in {out}/); "
                  f"resume with: {resume_command(e.checkpoint, dist.size if dist else 1)}", file=sys.stderr)
        return 130
    last = [r for r in history if "val_iou" in r]
    if last:
        print(f"validation: loss {last[-1]['val_loss']:.4f}, IoU {last[-1]['val_iou']:.4f} at step {last[-1]['step']}")
    print(f"wrote {out}/checkpoint.npz, log.csv, curves.png" + (", samples.png" if run.val_samples else ""))
    print(f"next: unetcu predict {out}/checkpoint.npz IMAGES... --out predictions")
    return 0


def _cmd_synth(a) -> int:
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from .data import synthetic_cells
    from .files import atomic_write
    out = Path(a.out)
    names = [f"synth_{i:03d}.png" for i in range(a.count)]
    targets = [out / sub / n for sub in ("images", "labels") for n in names]
    existing = [t for t in targets if t.exists()]
    if existing and not a.overwrite:
        raise FileExistsError(f"{existing[0]} exists ({len(existing)} of the {len(targets)} files to write do): "
                              "choose another folder or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; expected a folder for images/ and labels/")
    made = [d for d in (out, out / "images", out / "labels") if not d.exists()]
    written = []
    try:
        for d in made:
            d.mkdir(parents=True)
        for i, name in enumerate(names):
            img, inst = synthetic_cells((a.size, a.size), seed=a.seed * 100003 + i)
            if inst.max() >= 2**16:
                raise ValueError(f"{name}: {inst.max()} cells do not fit a 16-bit label image; use a smaller --size")
            # 8-bit gray image; 16-bit instance ids (0 = background), both lossless PNG
            written.append(atomic_write(out / "images" / name,
                                        lambda p: Image.fromarray(np.round(img * 255).astype(np.uint8)).save(p, format="PNG")))
            written.append(atomic_write(out / "labels" / name,
                                        lambda p: Image.fromarray(inst.astype(np.uint16)).save(p, format="PNG")))
    except BaseException:  # Ctrl-C or an error: no image without its label, no empty folders
        for f in written:
            f.unlink(missing_ok=True)
        for d in reversed(made):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    print(f"wrote {a.count} images of {a.size}x{a.size} to {out}/images and their instance labels "
          f"(16-bit PNG, 0 = background) to {out}/labels")
    return 0


def _cmd_predict(a) -> int:
    from .predict import PredictInterrupted, predict_files
    large = a.out.rstrip("/\\").endswith(".zarr")
    if large:
        return _predict_large(a)
    from .large import is_zarr_store
    for opt in ("block", "workers", "scheduler"):
        if getattr(a, opt) is not None:
            raise ValueError(f"--{opt} applies to block-wise prediction (--out NAME.zarr), not to --out {a.out}")
    zarr_in = [i for i in a.images if is_zarr_store(i)]
    if zarr_in:
        raise ValueError(f"{zarr_in[0]} is a zarr store: it is predicted block-wise into zarr; give --out NAME.zarr")
    try:
        predict_files(a.model, a.images, a.out, engine=a.engine, tile=a.tile, batch=a.batch, tta=a.tta,
                      progress=not a.no_progress, precision=a.precision, overwrite=a.overwrite,
                      instances=a.instances, min_distance=a.min_distance, min_size=a.min_size)
    except PredictInterrupted as e:
        _ignore_sigint()
        print(f"unetcu predict: interrupted after {len(e.done)} of {len(e.done) + len(e.left)} pages: their outputs "
              f"are complete in {e.out}/, no output of the others (first: {e.left[0]}) was written", file=sys.stderr)
        return 130
    return 0


def _predict_large(a) -> int:
    from .large import BlocksInterrupted, predict_zarr
    if len(a.images) != 1:
        raise ValueError(f"--out {a.out}: block-wise prediction takes one zarr store or TIFF per run, got {len(a.images)}")
    if a.tta:
        raise ValueError("--tta is not available for block-wise prediction (--out NAME.zarr): the rotated image's "
                         "tiles would not line up with the blocks")
    if a.instances != "auto" or a.min_distance is not None or a.min_size is not None:
        raise ValueError("--instances/--min-distance/--min-size apply to NAME_instances.png; block-wise prediction (--out NAME.zarr) "
                         "writes probabilities and labels only")
    try:
        s = predict_zarr(a.model, a.images[0], a.out, engine=a.engine, precision=a.precision, tile=a.tile,
                         block=a.block, batch=a.batch, scheduler=a.scheduler, workers=a.workers,
                         overwrite=a.overwrite, progress=not a.no_progress)
    except BlocksInterrupted as e:
        _ignore_sigint()
        print(f"unetcu predict: interrupted with {e.done} of {e.total} blocks written in {e.out}; rerun the same "
              "command to predict the others", file=sys.stderr)
        return 130
    shape = "x".join(map(str, s["shape"]))
    print(f"{a.images[0]}: {shape} in {s['blocks']} blocks of {s['block']} (tile {s['tile']}), {s['computed']} "
          f"predicted, {s['skipped']} already written, {s['seconds']:.1f} s -> {a.out} (probs, labels)")
    return 0


def _cmd_evaluate(a) -> int:
    import json
    from .metrics import METRIC_NAMES, evaluate_files, format_table
    from pathlib import Path
    from .files import atomic_write, same_file
    if a.json == "":
        raise ValueError("--json needs a file name")
    if a.json:  # refused before any work: never an input, never an existing file without --overwrite
        j = Path(a.json)
        if j.is_dir():
            raise IsADirectoryError(f"--json {j} is a folder; expected a file name")
        for given in (a.pred, a.labels):
            g = Path(given)
            if j.exists() and (same_file(j, g) or (g.is_dir() and same_file(j.parent, g))):
                raise FileExistsError(f"--json {j} is one of the inputs ({g}); choose another file name")
        if j.exists() and not a.overwrite:
            raise FileExistsError(f"--json {j} already exists; choose another name or give --overwrite")
    rows = evaluate_files(a.pred, a.labels, a.label_mode)
    print(format_table(rows))
    if a.json:
        import numpy as np
        mean = {m: float(np.nanmean([r[m] for _, r in rows])) for m in METRIC_NAMES}
        text = json.dumps({"images": dict(rows), "mean": mean}, indent=1)
        atomic_write(a.json, lambda p: Path(p).write_text(text))
    return 0


BENCHMARKS = {"kernels": "bench_kernels", "step": "bench_step", "emulator": "bench_emulator", "quality": "quality"}


def _cmd_bench(a) -> int:
    from pathlib import Path
    checkout = Path(__file__).resolve().parent.parent  # the benchmarks package sits beside unetcu/
    module = BENCHMARKS[a.which]
    if not (checkout / "benchmarks" / f"{module}.py").is_file():
        raise FileNotFoundError(f"benchmarks/{module}.py not found beside {checkout / 'unetcu'}: the benchmarks live in "
                                "the source checkout; install unetcu from one with pip install -e")
    import subprocess  # python -m with the checkout first on the path; relative paths stay the caller's
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH")) if p))
    return subprocess.call([sys.executable, "-m", f"benchmarks.{module}", *a.args], env=env)


PRECISION_ARG = dict(choices=PRECISIONS,
                     help="3x3 convolutions in fp32 (default) or tf32 (tensor cores, operands rounded to 10 mantissa "
                          "bits: ~3e-4 relative error per convolution)")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `unetcu train: argument --steps: must be ... (see unetcu train -h)`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="unetcu", description="U-Net on hand-written CUDA kernels, with a CPU emulator for the same kernels.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    d = sub.add_parser("demo", help="run the demo kernels (SGEMM, reduction, softmax, wmma) and check them against NumPy",
                       description="Run kernels/examples/demo.cu on an engine and compare each result with NumPy.")
    d.add_argument("--engine", choices=("cuda", "emu"), help="default: cuda if a GPU is usable, else emu")
    d.add_argument("--size", type=number(int, 8, 1024), default=64, help="problem size, 8..1024 (default 64)")
    d.add_argument("--seed", type=number(int, 0), default=0, help="random seed for inputs and the random thread order")
    d.add_argument("--order", choices=("forward", "reverse", "random"), default="forward",
                   help="emulator thread order inside a block (default forward)")
    d.set_defaults(func=_cmd_demo)
    t = sub.add_parser("train", help="train a U-Net (default: synthetic touching cells, no download needed)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a U-Net, one large tile per step, with the paper's weight maps (w0=10, sigma=5)\n"
                                   "and elastic deformations; Adam with a warm-up and a cosine decay by default, the\n"
                                   "paper's SGD (momentum 0.99) with --optimizer sgd.",
                       epilog="Presets: paper = depth 5, 64 base channels, 572 tile (31 M parameters; the default on a GPU);\n"
                              "small = depth 4, 16 channels, 188 tile (the default on a CPU: ~8 steps/s on 2 cores);\n"
                              "tiny = depth 3, 8 channels, 92 tile (smoke tests).\n"
                              "Data folders hold images/ and labels/ (or train/images, train/labels); images and labels\n"
                              "pair by file name or by their last number. Writes OUT/checkpoint.npz (for predict and\n"
                              "--resume), OUT/log.csv (a row per step), OUT/curves.png (redrawn at each validation) and\n"
                              "OUT/samples.png. A folder that holds a run is never overwritten without --overwrite.\n"
                              "Ctrl-C saves the last finished step and says how to resume (under mpirun too).")
    t.add_argument("--data", help="'synthetic' (default) or a folder of images/ and labels/")
    t.add_argument("--val-data", help="a separate validation folder (default: the last --val-fraction of --data)")
    t.add_argument("--val-fraction", type=RULES["val_fraction"],
                   help="share of --data held out for validation, in [0, 1) (default 0.2)")
    t.add_argument("--labels", choices=RULES["labels"],
                   help="how to read label images: binary (exactly two values, the higher is foreground), instance "
                        "(0 = background, 1..n objects), classes (pixel values are class ids), threshold (foreground "
                        "where value > the midpoint of min and max: for masks saved lossily), auto = binary if two "
                        "values else instance, and class ids with --classes above 2 (binary, instance, threshold give 2 "
                        "classes); the run prints how they were read (see the README's Input formats)")
    t.add_argument("--classes", type=RULES["classes"],
                   help="number of classes, 2..256 (default 2: background, object); above 2 the labels are class ids "
                        "0..N-1")
    t.add_argument("--border", choices=RULES["border"],
                   help="learn where touching objects meet as a third class (background, cell, border) and split "
                        "objects along it: on, off (the default) or auto (on when at least a tenth of the training "
                        "objects touch another; instance labels, 2 classes)")
    t.add_argument("--preset", choices=RULES["preset"],
                   help="network size (default: paper on a GPU, small on a CPU)")
    t.add_argument("--engine", choices=ENGINES, help="default: cuda if a GPU is usable, else numpy")
    t.add_argument("--precision", **PRECISION_ARG)
    t.add_argument("--cuda-graph", action="store_true", default=None,
                   help="capture the training step once as a CUDA graph and replay it (cuda engine only)")
    t.add_argument("--steps", type=RULES["steps"], help="training steps, 1..1e8 (default: paper 10000, small 1500, tiny 300)")
    t.add_argument("--optimizer", choices=RULES["optimizer"],
                   help="adam, adamw (PyTorch's rules) or sgd (momentum, Caffe's rule, the paper's) (default adam: "
                        "see the README's Training)")
    t.add_argument("--lr", type=RULES["lr"], help="learning rate, 1e-10..10 (default 0.001)")
    t.add_argument("--warmup", type=RULES["warmup"],
                   help="steps of linear learning-rate warm-up from 0 (default min(100, steps/10))")
    t.add_argument("--schedule", choices=RULES["schedule"],
                   help="learning rate after the warm-up: constant, cosine (decaying towards 0 over the run) or poly "
                        "((1-t)^0.9) (default cosine)")
    t.add_argument("--momentum", type=RULES["momentum"], help="SGD momentum in [0, 1) (default 0.99, the paper's)")
    t.add_argument("--weight-decay", type=RULES["weight_decay"],
                   help="weight decay in [0, 1]: L2 for sgd and adam, decoupled for adamw (default 0)")
    t.add_argument("--clip", type=RULES["clip"],
                   help="clip the gradients' global L2 norm to this value (default 0: off)")
    t.add_argument("--batch", type=RULES["batch"], help="tiles per step, 1..100000 (default 1, the paper's)")
    t.add_argument("--tile", type=RULES["tile"], help="input tile size, 1..100000 (default: the preset's)")
    t.add_argument("--augment", choices=RULES["augment"],
                   help="elastic = elastic warp + rotation + shift + flips + gray values (default)")
    t.add_argument("--w0", type=RULES["w0"], help="weight of the border term of the weight map, 0..1000 (default 10; 0 = class balancing only)")
    t.add_argument("--sigma", type=RULES["sigma"], help="width of the border term in pixels, 0.1..1000 (default 5)")
    t.add_argument("--no-dropout", action="store_true", default=None, help="switch off dropout at the end of the contracting path")
    t.add_argument("--n-synthetic", type=RULES["n_synthetic"], help="synthetic training images (default 16)")
    t.add_argument("--val-every", type=RULES["val_every"], help="validate every N steps, >= 1 (default 100)")
    t.add_argument("--ckpt-every", type=RULES["ckpt_every"], help="checkpoint every N steps, >= 1 (default 250)")
    t.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue the run of this checkpoint with its own options (same losses as without the break); "
                        "--steps, --lr, --clip, --weight-decay, --val-every, --ckpt-every, --engine, --precision, --cuda-graph, "
                        "--out, --no-progress, --overwrite may change "
                        "(a new --steps stretches the schedule's decay to the new last step); --data and --val-data may "
                        "give the new place of a moved folder, which must hold the run's files (the checkpoint records a "
                        "hash of each)")
    t.add_argument("--seed", type=RULES["seed"], help="seed of the initial weights, synthetic images and every random draw (default 0)")
    t.add_argument("--out", help="output folder (default runs/unet; with --resume, the checkpoint's folder)")
    t.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the run already in --out (without it, a folder holding a run is refused)")
    t.add_argument("--no-progress", action="store_true", default=None, help="no progress bar")
    t.add_argument("--distributed", action="store_true",
                   help="train on the N processes of `mpirun -n N` (data-parallel, each with --batch tiles; the same "
                        "steps as one process with N x --batch; every rank must run the same code with the same options "
                        "on the same files; see the README's Distributed training)")
    t.set_defaults(func=_cmd_train)
    sy = sub.add_parser("synth", help="write example images and instance labels (synthetic touching cells)",
                        description="Write COUNT synthetic images of touching cells to OUT/images (8-bit PNG) and their "
                                    "instance labels to OUT/labels (16-bit PNG, 0 = background, 1..n = cells): a data "
                                    "folder for train --data, predict and evaluate. Deterministic by --seed.")
    sy.add_argument("out", help="output folder")
    sy.add_argument("--count", type=number(int, 1, 10000), default=8, help="number of images (default 8)")
    sy.add_argument("--size", type=number(int, 16, 8192), default=256, help="image side in pixels, 16..8192 (default 256)")
    sy.add_argument("--seed", type=number(int, 0), default=100, help="seed (default 100; train's synthetic images use others)")
    sy.add_argument("--overwrite", action="store_true", help="replace files of the same names")
    sy.set_defaults(func=_cmd_synth)
    pr = sub.add_parser("predict", help="segment images with a trained model (overlap-tile)",
                        description="Segment images of any size with overlap-tile inference (mirrored borders). For each "
                                    "input NAME writes NAME_prob.tif (float32 class probabilities, one page per class), "
                                    "NAME_labels.png (class per pixel; for 2 classes 0/255), NAME_instances.png "
                                    "(16-bit object ids: the foreground split by --instances, without specks under "
                                    "--min-size; near black in a photo viewer) and NAME_overlay.png (the picture to look at: "
                                    "each object in its own colour over the gray image). Refuses, before "
                                    "writing anything, an output that would replace an input or an existing file "
                                    "(unless --overwrite). Colour becomes gray by ITU-R 601 luma, alpha is dropped; "
                                    "see the README's Input formats. With --out NAME.zarr: a zarr store (2-D, or 3-D "
                                    "z-stack; OME-Zarr level 0) or a TIFF is predicted block by block on Dask into "
                                    "NAME.zarr (probs, labels), the same result as in memory; a rerun resumes.")
    pr.add_argument("model", help="a checkpoint.npz written by unetcu train")
    pr.add_argument("images", nargs="+", help="PNG/TIFF/JPEG/BMP images (a multi-page TIFF gives one output per page); "
                                              "with --out NAME.zarr one zarr store or TIFF")
    pr.add_argument("--out", required=True, help="output folder; NAME.zarr: predict block-wise on Dask into a zarr "
                                                 "store (see the README's Large images)")
    pr.add_argument("--engine", choices=ENGINES, help="default: cuda if a GPU is usable, else numpy")
    pr.add_argument("--precision", default="fp32", **PRECISION_ARG)
    pr.add_argument("--tile", type=number(int, 1, 100000), help="input tile size (default: 572 for the paper net, else about 388 output)")
    pr.add_argument("--batch", type=number(int, 1, 100000), default=4, help="tiles per forward pass, 1..100000 (default 4)")
    pr.add_argument("--tta", action="store_true", help="average over the 8 rotations/flips (8x slower)")
    pr.add_argument("--instances", choices=("auto", "components", "watershed"), default="auto",
                    help="how NAME_instances.png splits the foreground into objects: components (connected), "
                         "watershed (touching round objects split at their necks; see the README) or auto (the "
                         "default: watershed for a model whose training objects touched one another, else "
                         "components); a model with a border class (train --border) splits its cell class so, then "
                         "grows it into the border")
    pr.add_argument("--min-distance", type=number(int, 1, 100000), metavar="PX",
                    help="watershed: least distance between two objects' centres in pixels (default: 0.9 x the "
                         "median radius of the objects the model was trained on)")
    pr.add_argument("--min-size", type=number(int, 0, 10**9), metavar="PX",
                    help="leave objects of fewer pixels out of NAME_instances.png, and say how many (default: a tenth "
                         "of the median area of the objects the model was trained on; 0 keeps every object)")
    pr.add_argument("--overwrite", action="store_true",
                    help="replace existing output files (never an input file)")
    pr.add_argument("--no-progress", action="store_true", help="no line per image (progress bar for zarr) on stderr")
    pr.add_argument("--block", type=number(int, 1, 10**6),
                    help="zarr: output block side in pixels, a multiple of the output tile (default about 1024)")
    pr.add_argument("--workers", type=number(int, 1, 4096), help="zarr: workers (threads, or processes) of the local Dask scheduler (default: one per core)")
    pr.add_argument("--scheduler", metavar="ADDRESS",
                    help="zarr: a Dask distributed scheduler's SCHEME://HOST:PORT as `dask scheduler` prints it "
                         "(tcp://host:8786; tls, ws, wss, ucx; HOST:PORT alone is tcp), checked before connecting; "
                         "one that does not answer within 10 s is an error; or 'threads' (default), 'processes' or "
                         "'sync' on this machine. Ctrl-C cancels the run's blocks on the cluster")
    pr.set_defaults(func=_cmd_predict)
    ev = sub.add_parser("evaluate", help="score predictions against label images (pixel error, IoU, SEG, Rand, VI)",
                        description="Score predictions against ground truth with the ISBI 2012 and cell tracking "
                                    "challenge metrics: pixel error (misclassification rate, and 1 - max pixel F-score), "
                                    "foreground IoU, SEG, foreground-restricted Rand error and information error "
                                    "(thresholds 0.0..1.0 by 0.1 on probability maps; ground-truth background ignored). "
                                    "A multi-page label stack pairs its page k with the k-th prediction (per-page files "
                                    "in the order of their last number, or the pages of a prediction stack).")
    ev.add_argument("pred", help="a prediction file or folder (NAME_prob.tif, NAME_instances.png or label images), "
                                 "or a multi-page stack")
    ev.add_argument("labels", help="a label image, folder or multi-page stack (the ground truth); pairs by name or by "
                                   "last number, a stack page by page")
    ev.add_argument("--label-mode", choices=("auto", "binary", "instance", "threshold"), default="auto",
                    help="how to read labels (auto: binary if two values, else instance ids; threshold: foreground "
                         "where value > midpoint of min and max, for masks saved lossily)")
    ev.add_argument("--json", help="also write the scores to this JSON file (a new file: see --overwrite)")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --json file (never an input)")
    ev.set_defaults(func=_cmd_evaluate)
    x = sub.add_parser("export", help="write a trained model as a bioimage.io model package (ONNX weights) or an .onnx file",
                       description="Write CHECKPOINT as a bioimage.io model package (format 0.5: ONNX weights, the "
                                   "input and output sizes of a valid-convolution net, per-image standardisation as "
                                   "preprocessing, test tensors made by unetcu, a cover, a README with the training's "
                                   "provenance) that deepImageJ, ilastik, napari and the BioImage Model Zoo open, checked "
                                   "by bioimageio.core's own test before it is written; or, with NAME.onnx, the bare "
                                   "ONNX file. Needs the export extra (onnx, onnxruntime, bioimageio.core).")
    x.add_argument("checkpoint", help="a checkpoint.npz written by unetcu train")
    x.add_argument("--out", required=True, help="NAME.zip (bioimage.io package) or NAME.onnx")
    x.add_argument("--format", choices=("bioimageio", "onnx"), help="default: from --out's suffix")
    x.add_argument("--name", help="the package's name (default: from the checkpoint's folder)")
    x.add_argument("--author", help="the package's author (default: $USER)")
    x.add_argument("--license", help="SPDX license id of the weights (default CC-BY-4.0)")
    x.add_argument("--no-test", action="store_true", help="skip bioimageio.core's test of the package")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    x.set_defaults(func=_cmd_export)
    im = sub.add_parser("import", help="turn an ONNX U-Net (or a bioimage.io package of one) into a unetcu checkpoint",
                        description="Read MODEL (.onnx, or a bioimage.io package .zip / rdf.yaml with ONNX weights) of "
                                    "unetcu's architecture and write a checkpoint that predicts the same probabilities "
                                    "(checked with onnxruntime); any other architecture is refused in one line.")
    im.add_argument("model", help="MODEL.onnx, PACKAGE.zip or rdf.yaml")
    im.add_argument("--out", required=True, help="the checkpoint to write (NAME.npz)")
    im.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    im.set_defaults(func=_cmd_import)
    b = sub.add_parser("bench", help="run a benchmark: kernels, step, emulator or quality (from a source checkout)",
                       description="Run python -m benchmarks.bench_kernels, bench_step, bench_emulator or quality in "
                                   "the source checkout; arguments after the name go to the benchmark (e.g. unetcu bench "
                                   "kernels --json k.json).")
    b.add_argument("which", choices=tuple(BENCHMARKS))
    b.add_argument("args", nargs=argparse.REMAINDER)
    b.set_defaults(func=_cmd_bench)
    e = sub.add_parser("engines", help="say which kernel engines are usable here and why")
    e.set_defaults(func=_cmd_engines)
    c = sub.add_parser("compile-check", help="compile every kernels/*.cu for sm_90 and print registers/spills",
                       description="Compile every kernels/*.cu with the runtime's options (CuPy NVRTC, else nvcc) "
                                   "and print ptxas's registers, stack, spills and shared memory per kernel.")
    c.add_argument("files", nargs="*", help=".cu files (default: all of kernels/)")
    c.add_argument("--arch", default="90", help="compute capability (default 90 = H100)")
    c.add_argument("--compiler", choices=("nvrtc", "nvcc"))
    c.add_argument("--fail-on-spill", action="store_true", help="exit 1 if any kernel spills")
    c.set_defaults(func=_cmd_compile_check)
    s = sub.add_parser("asan", help="run a command with emulated kernels built under AddressSanitizer",
                       description="Run COMMAND with libasan preloaded and UNETCU_EMU_SANITIZE=address, so every "
                                   "emulator build is instrumented and an out-of-bounds access is reported at its .cu line.")
    s.add_argument("command", nargs=argparse.REMAINDER, help="the command, e.g. python script.py")
    s.set_defaults(func=_cmd_asan)
    z = sub.add_parser("sanitize", help="run a command with emulated kernels checked by a compute-sanitizer tool",
                       description="Run COMMAND with every emulated kernel checked by one of compute-sanitizer's tools "
                                   "(memcheck, racecheck, initcheck, synccheck) on the CPU; hazards are reported in "
                                   "compute-sanitizer's shape and the exit status is 1 if there was any.")
    z.add_argument("--tool", choices=("memcheck", "racecheck", "initcheck", "synccheck"), default="memcheck",
                   help="the check (default memcheck)")
    z.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. -- python my_test.py")
    z.set_defaults(func=_cmd_sanitize)
    f = sub.add_parser("profile", help="run a command with emulated kernels counted as Nsight Compute would (no GPU)",
                       description="Run COMMAND with every emulated kernel instrumented and print, per launch, Nsight "
                                   "Compute's memory counters (global requests and sectors, shared wavefronts and bank "
                                   "conflicts), the compulsory bytes, the theoretical occupancy on sm_90 and a roofline "
                                   "bound for H100 SXM and H200. Counts, never times: see the README's \"Nsight Compute "
                                   "counters without a GPU\".")
    f.add_argument("--kernel", metavar="REGEX", help="profile only the kernels whose name matches (re.search)")
    f.add_argument("--json", metavar="FILE", help="also write the launches' records, keyed by ncu's metric names")
    f.add_argument("--sample", type=int, metavar="S",
                   help="run only S block indices per grid dimension (first, last, S-2 between) and scale the "
                        "counts: for large grids; the command's own results are then not meaningful")
    f.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. -- python my_test.py")
    f.set_defaults(func=_cmd_profile)
    return p


def _ignore_sigint():
    """After a Ctrl-C, more of them while the one-line report is printed would end the process with
    a traceback or by the signal instead of exit 130."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv=None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # a line at a time into a log file or a pipe, not at exit
        sys.stdout.reconfigure(line_buffering=True)
    p = build_parser()
    a = p.parse_args(argv)
    if not getattr(a, "func", None):
        p.print_help()
        return 2
    import signal
    sigint = signal.getsignal(signal.SIGINT)
    try:
        return a.func(a)
    except (RuntimeError, ValueError, FileNotFoundError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"unetcu {a.cmd}: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _ignore_sigint()
        print(f"unetcu {a.cmd}: interrupted", file=sys.stderr)
        return 130
    finally:  # main(argv) called from Python gets its Ctrl-C back (the `unetcu` command just exits)
        if argv is not None and sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:
            signal.signal(signal.SIGINT, sigint)


if __name__ == "__main__":
    sys.exit(main())
