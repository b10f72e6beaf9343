"""What the CPU emulator costs on this machine: __syncthreads and shuffle per thread, a tiled
SGEMM 128^3 and a wmma tf32 GEMM 128^3, with 1 and all OS threads. These are CPU timings of the
emulator, not GPU speeds. Usage: python -m benchmarks.bench_emulator [--baseline GIT_REV]
(--baseline: first the collectives again with kernels/emu as it was at GIT_REV, in the same run)"""
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
import time

import numpy as np

from unetcu.engines import emu, runtime
from unetcu.engines.emu import aligned

COSTS = r"""
extern "C" __global__ void barriers(float* y, int rounds) {
    float v = threadIdx.x;
    for (int r = 0; r < rounds; ++r) { v += 1.0f; __syncthreads(); }
    y[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
extern "C" __global__ void shuffles(float* y, int rounds) {
    float v = threadIdx.x;
    for (int r = 0; r < rounds; ++r) v = __shfl_xor_sync(0xffffffffu, v, 1) + 1.0f;
    y[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
"""


def best(fn, reps=5):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def collectives(mod, rounds: int = 200):
    """Print __syncthreads' and __shfl_xor_sync's cost per thread for blocks of 32, 256 and 1024."""
    for block in (32, 256, 1024):
        y = np.zeros(block, np.float32)
        t = best(lambda: mod.get_function("barriers")((1,), (block,), (y, np.int32(rounds))))
        s = best(lambda: mod.get_function("shuffles")((1,), (block,), (y, np.int32(rounds))))
        print(f"block {block:>4}: __syncthreads {t / rounds / block * 1e9:6.1f} ns/thread, "
              f"__shfl_xor_sync {s / rounds / block * 1e9:6.1f} ns/thread")


def baseline(rev: str):
    """__syncthreads and shuffle costs (1 OS thread) with the emulator headers of git revision `rev`."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        tar = subprocess.run(["git", "-C", str(root), "archive", rev, "kernels/emu"], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(tar)) as t:
            t.extractall(tmp)
        # emu.gxx.EMU_DIR is the name the build reads (emu.EMU_DIR is a copy of it)
        saved, emu.gxx.EMU_DIR = emu.gxx.EMU_DIR, Path(tmp) / "kernels" / "emu"
        os.environ["UNETCU_EMU_THREADS"] = "1"
        try:
            mod = runtime.compile(COSTS, engine="emu", filename="costs.cu")
            print(f"-- baseline: kernels/emu at {rev}, 1 OS thread")
            collectives(mod)
        finally:
            emu.gxx.EMU_DIR = saved
            os.environ.pop("UNETCU_EMU_THREADS")


def main():
    if "--baseline" in sys.argv:
        baseline(sys.argv[sys.argv.index("--baseline") + 1])
    print(f"emulator costs on {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"(CPU timings, not GPU speeds)")
    mod = runtime.compile(COSTS, engine="emu", filename="costs.cu")
    demo = runtime.load("examples/demo.cu", "emu")
    rng = np.random.default_rng(0)
    A = aligned(rng.standard_normal((128, 128)).astype(np.float32))
    B = aligned(rng.standard_normal((128, 128)).astype(np.float32))
    C = aligned(np.zeros((128, 128), np.float32))
    n = np.int32(128)
    for threads in ("1", str(os.cpu_count())):
        os.environ["UNETCU_EMU_THREADS"] = threads
        print(f"-- {threads} OS thread(s)")
        collectives(mod)
        t = best(lambda: demo.get_function("sgemm_tiled_kernel1")((8, 8), (16, 16), (A, B, C, n, n, n)))
        print(f"tiled SGEMM 128^3 (16x16 tiles): {t * 1e3:.1f} ms")
        t = best(lambda: demo.get_function("wmma_tf32_gemm_kernel1")((8, 8), (32,), (A, B, C, n, n, n)), reps=2)
        print(f"wmma tf32 GEMM 128^3: {t * 1e3:.1f} ms")
    os.environ.pop("UNETCU_EMU_THREADS")


if __name__ == "__main__":
    main()
