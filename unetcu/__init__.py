"""unetcu: the U-Net (Ronneberger et al., 2015) on hand-written CUDA kernels, with a CPU emulator
that runs the same kernels. See README.md.

Architecture: layers, each importing only those below it.

    app        cli.py           parses a command, calls one function below, turns its exceptions
                                into one-line messages and exit statuses
               run.py           plan_run(options, resume) -> Run: every decision of a training run
                                and its refusals, once (option rules RULES, presets, the recipe
                                TrainConfig, engine and precision, data source and its
                                fingerprints, weight maps, what a resume may change, the output
                                folder, the optimizer, which Step)
               train.py         train(run): the loop (tiles, Step.compute, Step.update with Ctrl-C
                                held, validation, checkpoints)
               step.py          the Step interface and EagerStep (forward/backward, clip, update)
               graph.py         the Step replayed as one CUDA graph (cuda engine)
               distributed.py   the Step as one MPI rank (all-reduce), the ranks' checks, as_rank
               report.py        what a run shows: progress bar, log.csv, curves.png, samples.png
               predict.py       predict's files: the checkpoint and its defaults, inputs, outputs
               large.py         the same, block-wise on Dask into zarr
               export.py        ONNX and bioimage.io packages, and import
    method     tiling.py        overlap-tile: tile geometry, mirror padding, the tile loop
               data.py, weightmap.py, augment.py, instances.py, metrics.py, viz.py
    model      model.py         UNet: parameters, forward, loss and gradients, save/load, shapes
               optim.py         SGD, Adam, AdamW, schedules, clipping
               files.py         atomic writes (every file the app writes)
    ops        ops/             one module per op family, its Variant records beside its launchers;
                                on the numpy engine an op runs cpu.py (BLAS, Numba) instead of a kernel
               reference.py     the NumPy oracle every op is tested against (float32 or float64)
    engines    engines/runtime.py   which engine (numpy, emu, cuda), compile and load kernels
               engines/emu/         the CPU emulator: source.py -> gxx.py -> launch.py
               engines/sanitize.py, engines/profile.py   tools plugged into the emulator's hook
    kernels    kernels/*.cu     the CUDA C, one file per op family
"""
__version__ = "0.2.0"  # before the imports: model.py records it in every checkpoint

from .model import UNet, output_size, valid_input_size
__all__ = ["UNet", "output_size", "valid_input_size"]
