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
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"unetcu {a.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
