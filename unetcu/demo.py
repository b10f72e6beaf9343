"""`unetcu demo`: run kernels/examples/demo.cu (tiled SGEMM, shuffle reduction, softmax, wmma tf32 GEMM) on
an engine, check each result against NumPy in float64 and print the error and time of each."""
from __future__ import annotations

import time

import numpy as np

from .engines import runtime
from .engines.emu import aligned, thread_order
from .reference import rel_err


def run(engine: str | None = None, size: int = 64, seed: int = 0, order: str = "forward", out=print) -> dict:
    """Launch each demo kernel once at `size`, return {kernel: (relative error, seconds)}."""
    engine = runtime.resolve_engine(engine, kernels=True)
    xp = runtime.xp(engine)
    mod = runtime.load("examples/demo.cu", engine)
    rng = np.random.default_rng(seed)
    n16 = max(16, size // 16 * 16)
    M, N, K = size + 3, size - 5, size + 7  # odd sizes, not multiples of the tile
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    x = (rng.standard_normal(size * size + 17) + 1).astype(np.float32)  # a sum far from 0
    S = rng.standard_normal((size + 1, 3 * size + 1)).astype(np.float32) * 4
    At = rng.standard_normal((n16, n16)).astype(np.float32)
    Bt = rng.standard_normal((n16, n16 + 16)).astype(np.float32)

    def dev(a):
        return xp.asarray(a) if engine == "cuda" else aligned(a)

    def nan(shape):
        return dev(np.full(shape, np.nan, np.float32))

    i32 = np.int32
    e = np.exp(S - S.max(1, keepdims=True))
    tf32 = lambda a: ((a.view(np.uint32) + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)
    cases = [
        ("sgemm_tiled_kernel1", lambda C: (((N + 15) // 16, (M + 15) // 16), (16, 16), (dev(A), dev(B), C, i32(M), i32(N), i32(K))),
         (M, N), A.astype(np.float64) @ B),
        ("reduce_sum_kernel1", lambda C: ((8,), (256,), (dev(x), C, i32(x.size))), (1,), np.array([x.sum(dtype=np.float64)])),
        ("softmax_rows_kernel1", lambda C: (((S.shape[0] + 3) // 4,), (32, 4), (dev(S), C, i32(S.shape[0]), i32(S.shape[1]))),
         S.shape, e / e.sum(1, keepdims=True)),
        ("wmma_tf32_gemm_kernel1", lambda C: (((n16 + 16) // 16, n16 // 16), (32,), (dev(At), dev(Bt), C, i32(n16), i32(n16 + 16), i32(n16))),
         (n16, n16 + 16), tf32(At).astype(np.float64) @ tf32(Bt)),
    ]
    results = {}
    out(f"unetcu demo: kernels/examples/demo.cu on engine '{engine}'" + (f" (thread order {order})" if engine == "emu" else ""))
    out(f"{'kernel':<26} {'shape':<14} {'rel. L2 error':>14} {'time':>10}")
    with thread_order(order, seed):
        for name, make, shape, ref in cases:
            C = dev(np.zeros(shape, np.float32)) if name.startswith("reduce") else nan(shape)
            grid, block, args = make(C)
            fn = mod.get_function(name)
            if engine == "cuda":
                xp.cuda.Device().synchronize()
            t = time.perf_counter()
            fn(grid, block, args)
            if engine == "cuda":
                xp.cuda.Device().synchronize()
            dt = time.perf_counter() - t
            got = C.get() if engine == "cuda" else C
            err = rel_err(got, ref)
            results[name] = (err, dt)
            out(f"{name:<26} {str(tuple(shape)):<14} {err:>14.2e} {dt * 1e3:>8.2f}ms")
    if engine == "emu":
        out("(emulated on the CPU: these times say nothing about GPU speed)")
    return results
