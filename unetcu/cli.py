"""The `unetcu` command."""
from __future__ import annotations

import argparse
import os
import sys


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
    from . import runtime, emu
    ok, why = runtime.gpu_status()
    print(f"cuda : {'usable' if ok else 'not usable'} ({why})")
    print(f"emu  : usable (g++ CPU emulator, {emu.num_threads()} OS thread(s), order {emu.get_order()[0]})")
    print(f"default kernel engine: {runtime.default_engine()}")
    print(f"kernels: {runtime.kernels_dir()}")
    print(f"CUDA include dir for <mma.h>: {runtime.cuda_include_dir() or 'not found'}")
    return 0


def _cmd_compile_check(a) -> int:
    from . import compile_check
    argv = list(a.files) + ["--arch", a.arch] + (["--compiler", a.compiler] if a.compiler else [])
    return compile_check.main(argv + (["--fail-on-spill"] if a.fail_on_spill else []))


def _cmd_asan(a) -> int:
    from .emu import asan_runtime
    if not a.command:
        print("unetcu asan: give a command, e.g. `unetcu asan python my_kernel_test.py`", file=sys.stderr)
        return 2
    env = dict(os.environ, LD_PRELOAD=asan_runtime(), UNETCU_EMU_SANITIZE="address",
               ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "detect_leaks=0"))
    os.execvpe(a.command[0], a.command, env)
    return 127


def _engine_default():
    from .ops import resolve_engine
    return resolve_engine(None)


def _cmd_train(a) -> int:
    from . import data as D
    from .model import UNet
    from .train import PRESETS, TrainConfig, TrainingDiverged, train
    engine = a.engine or _engine_default()
    preset = a.preset if a.preset != "auto" else ("paper" if engine == "cuda" else "small")
    depth, base, tile = PRESETS[preset]
    tile = a.tile or tile
    steps = a.steps or {"paper": 10000, "small": 1500, "tiny": 300}[preset]
    if a.data == "synthetic":
        size = (max(256, tile // 2), max(256, tile // 2))
        train_s = D.synthetic_dataset(a.n_synthetic, size, seed=a.seed * 2 + 1)
        val_s = D.synthetic_dataset(max(1, a.n_synthetic // 8), size, seed=a.seed * 2 + 2)
        source = f"{len(train_s)} synthetic images of {size[0]}x{size[1]} (seed {a.seed})"
    else:
        allsamples = D.load_folder(a.data, a.labels)
        if a.val_data:
            train_s, val_s = allsamples, D.load_folder(a.val_data, a.labels)
        else:
            nval = int(round(a.val_fraction * len(allsamples)))
            if a.val_fraction > 0 and len(allsamples) > 1:
                nval = min(max(1, nval), len(allsamples) - 1)
            train_s, val_s = allsamples[:len(allsamples) - nval], allsamples[len(allsamples) - nval:]
        source = f"{a.data}: {len(train_s)} training, {len(val_s)} validation images"
    print(f"data: {source}")
    model = UNet(in_channels=1, n_classes=a.classes, depth=depth, base_channels=base,
                 dropout=0.0 if a.no_dropout else 0.5, engine=engine, seed=a.seed, precision=a.precision)
    cfg = TrainConfig(steps=steps, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay, clip=a.clip, batch=a.batch, tile=tile,
                      augment=a.augment, w0=a.w0, sigma=a.sigma, val_every=a.val_every, ckpt_every=a.ckpt_every, seed=a.seed, out=a.out,
                      cuda_graph=a.cuda_graph)
    try:
        history = train(model, train_s, val_s, cfg, resume=a.resume, progress=not a.no_progress)
    except TrainingDiverged as e:
        print(f"unetcu train: {e}", file=sys.stderr)
        return 3
    last = [r for r in history if "val_iou" in r]
    if last:
        print(f"validation: loss {last[-1]['val_loss']:.4f}, IoU {last[-1]['val_iou']:.4f} at step {last[-1]['step']}")
    print(f"wrote {a.out}/checkpoint.npz, log.csv, curves.png" + (", samples.png" if val_s else ""))
    print(f"next: unetcu predict {a.out}/checkpoint.npz IMAGES... --out predictions")
    return 0


def _cmd_predict(a) -> int:
    from .predict import predict_files
    predict_files(a.model, a.images, a.out, engine=a.engine, tile=a.tile, batch=a.batch, tta=a.tta,
                  progress=not a.no_progress, precision=a.precision, overwrite=a.overwrite)
    return 0


def _cmd_evaluate(a) -> int:
    import json
    from .metrics import METRIC_NAMES, evaluate_files, format_table
    rows = evaluate_files(a.pred, a.labels, a.label_mode)
    print(format_table(rows))
    if a.json:
        import numpy as np
        mean = {m: float(np.nanmean([r[m] for _, r in rows])) for m in METRIC_NAMES}
        with open(a.json, "w") as f:
            json.dump({"images": dict(rows), "mean": mean}, f, indent=1)
    return 0


def _cmd_bench(a) -> int:
    from pathlib import Path
    scripts = {"kernels": "bench_kernels.py", "step": "bench_step.py", "emulator": "bench_emulator.py",
               "quality": "quality.py"}
    bench_dir = Path(__file__).resolve().parent.parent / "benchmarks"
    script = bench_dir / scripts[a.which]
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: the benchmarks live in the source checkout, run from there")
    import subprocess
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(bench_dir.parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.call([sys.executable, str(script), *a.args], cwd=str(bench_dir), env=env)


PRECISION_ARG = dict(choices=("fp32", "tf32"), default="fp32",
                     help="3x3 convolutions in fp32 (default) or tf32 (tensor cores, operands rounded to 10 mantissa "
                          "bits: ~3e-4 relative error per convolution)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unetcu", description="U-Net on hand-written CUDA kernels, with a CPU emulator for the same kernels.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    d = sub.add_parser("demo", help="run the demo kernels (SGEMM, reduction, softmax, wmma) and check them against NumPy",
                       description="Run kernels/demo.cu on an engine and compare each result with NumPy.")
    d.add_argument("--engine", choices=("cuda", "emu"), help="default: cuda if a GPU is usable, else emu")
    d.add_argument("--size", type=int, default=64, help="problem size (default 64)")
    d.add_argument("--seed", type=int, default=0, help="random seed for inputs and the random thread order")
    d.add_argument("--order", choices=("forward", "reverse", "random"), default="forward",
                   help="emulator thread order inside a block (default forward)")
    d.set_defaults(func=_cmd_demo)
    t = sub.add_parser("train", help="train a U-Net (default: synthetic touching cells, no download needed)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a U-Net with SGD (momentum 0.99), one large tile per step, the paper's weight "
                                   "maps (w0=10, sigma=5) and elastic deformations.",
                       epilog="Presets: paper = depth 5, 64 base channels, 572 tile (31 M parameters; the default on a GPU);\n"
                              "small = depth 4, 16 channels, 188 tile (the default on a CPU: ~5 steps/s on 2 cores);\n"
                              "tiny = depth 3, 8 channels, 92 tile (smoke tests).\n"
                              "Data folders hold images/ and labels/ (or train/images, train/labels); images and labels\n"
                              "pair by file name or by their last number. Writes OUT/checkpoint.npz (for predict and\n"
                              "--resume), OUT/log.csv, OUT/curves.png and OUT/samples.png.")
    t.add_argument("--data", default="synthetic", help="'synthetic' (default) or a folder of images/ and labels/")
    t.add_argument("--val-data", help="a separate validation folder (default: the last --val-fraction of --data)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="share of --data held out for validation (default 0.2)")
    t.add_argument("--labels", choices=("auto", "binary", "instance", "classes"), default="auto",
                   help="how to read label images: binary (0/255 foreground), instance (0 = background, 1..n objects), "
                        "classes (pixel values are class ids), auto = binary if two values else instance")
    t.add_argument("--classes", type=int, default=2, help="number of classes (default 2: background, object)")
    t.add_argument("--preset", choices=("auto", "paper", "small", "tiny"), default="auto",
                   help="network size (default: paper on a GPU, small on a CPU)")
    t.add_argument("--engine", choices=("numpy", "emu", "cuda"), help="default: cuda if a GPU is usable, else numpy")
    t.add_argument("--precision", **PRECISION_ARG)
    t.add_argument("--cuda-graph", action="store_true",
                   help="capture the training step once as a CUDA graph and replay it (cuda engine only)")
    t.add_argument("--steps", type=int, help="training steps (default: paper 10000, small 1500, tiny 300)")
    t.add_argument("--lr", type=float, default=0.001, help="learning rate (default 0.001)")
    t.add_argument("--momentum", type=float, default=0.99, help="SGD momentum (default 0.99, the paper's)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--clip", type=float, default=1.0, help="clip the gradients' global L2 norm to this value (default 1; 0: off)")
    t.add_argument("--batch", type=int, default=1, help="tiles per step (default 1, the paper's)")
    t.add_argument("--tile", type=int, help="input tile size (default: the preset's)")
    t.add_argument("--augment", choices=("elastic", "flips", "none"), default="elastic",
                   help="elastic = elastic warp + rotation + shift + flips + gray values (default)")
    t.add_argument("--w0", type=float, default=10.0, help="weight of the border term of the weight map (default 10; 0 = class balancing only)")
    t.add_argument("--sigma", type=float, default=5.0, help="width of the border term in pixels (default 5)")
    t.add_argument("--no-dropout", action="store_true", help="switch off dropout at the end of the contracting path")
    t.add_argument("--n-synthetic", type=int, default=16, help="synthetic training images (default 16)")
    t.add_argument("--val-every", type=int, default=100, help="validate every N steps (default 100)")
    t.add_argument("--ckpt-every", type=int, default=250, help="checkpoint every N steps (default 250)")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint (same losses as without the break)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/unet", help="output folder (default runs/unet)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)
    pr = sub.add_parser("predict", help="segment images with a trained model (overlap-tile)",
                        description="Segment images of any size with overlap-tile inference (mirrored borders). For each "
                                    "input NAME writes NAME_prob.tif (float32 class probabilities, one page per class), "
                                    "NAME_labels.png (class per pixel; for 2 classes 0/255), NAME_instances.png "
                                    "(16-bit connected components of the foreground) and NAME_overlay.png (a colour "
                                    "preview: each object in its own colour over the gray image). Refuses, before "
                                    "writing anything, an output that would replace an input or an existing file "
                                    "(unless --overwrite). Colour becomes gray by ITU-R 601 luma, alpha is dropped; "
                                    "see the README's Input formats.")
    pr.add_argument("model", help="a checkpoint.npz written by unetcu train")
    pr.add_argument("images", nargs="+", help="PNG/TIFF/JPEG/BMP images (a multi-page TIFF gives one output per page)")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--engine", choices=("numpy", "emu", "cuda"), help="default: cuda if a GPU is usable, else numpy")
    pr.add_argument("--precision", **PRECISION_ARG)
    pr.add_argument("--tile", type=int, help="input tile size (default: 572 for the paper net, else about 388 output)")
    pr.add_argument("--batch", type=int, default=4, help="tiles per forward pass (default 4)")
    pr.add_argument("--tta", action="store_true", help="average over the 8 rotations/flips (8x slower)")
    pr.add_argument("--overwrite", action="store_true",
                    help="replace existing output files (never an input file)")
    pr.add_argument("--no-progress", action="store_true")
    pr.set_defaults(func=_cmd_predict)
    ev = sub.add_parser("evaluate", help="score predictions against label images (pixel error, IoU, SEG, Rand, VI)",
                        description="Score predictions against ground truth with the ISBI 2012 and cell tracking "
                                    "challenge metrics: pixel error (misclassification rate, and 1 - max pixel F-score), "
                                    "foreground IoU, SEG, foreground-restricted Rand error and information error "
                                    "(thresholds 0.0..1.0 by 0.1 on probability maps; ground-truth background ignored).")
    ev.add_argument("pred", help="a prediction file or folder (NAME_prob.tif, NAME_instances.png or label images)")
    ev.add_argument("labels", help="a label image or folder; pairs by name or by last number")
    ev.add_argument("--label-mode", choices=("auto", "binary", "instance", "threshold"), default="auto",
                    help="how to read labels (auto: binary if two values, else instance ids; threshold: foreground "
                         "where value > midpoint of min and max, for masks saved lossily)")
    ev.add_argument("--json", help="also write the scores to this JSON file")
    ev.set_defaults(func=_cmd_evaluate)
    b = sub.add_parser("bench", help="run a benchmark: kernels, step, emulator or quality (from a source checkout)",
                       description="Run benchmarks/bench_kernels.py, bench_step.py, bench_emulator.py or quality.py; "
                                   "arguments after the name go to the script (e.g. unetcu bench kernels --json k.json).")
    b.add_argument("which", choices=("kernels", "step", "emulator", "quality"))
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
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if not getattr(a, "func", None):
        p.print_help()
        return 2
    try:
        return a.func(a)
    except (RuntimeError, ValueError, FileNotFoundError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"unetcu {a.cmd}: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
