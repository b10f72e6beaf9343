"""The emulator runs real CUDA C on the CPU: correct kernels give NumPy's answers in every thread
order, and planted bugs are caught with an error that names the kernel and the .cu line."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import rel_err
from unetcu import emu, runtime
from unetcu.emu import EmulatorError, aligned

HERE = Path(__file__).resolve().parent
BUGS = HERE / "cuda" / "planted_bugs.cu"
i32 = np.int32


def bug_line(tag: str) -> int:
    for n, line in enumerate(BUGS.read_text().splitlines(), 1):
        if f"BUG-{tag}" in line:
            return n
    raise KeyError(tag)


@pytest.fixture(scope="module")
def demo():
    return runtime.load("demo.cu", "emu")


@pytest.fixture(scope="module")
def bugs():
    return runtime.compile(BUGS.read_text(), engine="emu", filename=str(BUGS))


def nan_array(shape):
    return aligned(np.full(shape, np.nan, np.float32))


# ---- correct kernels, every thread order ---------------------------------------------------------
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (17, 33, 5), (45, 19, 70)])
def test_sgemm_tiled(demo, order, rng, M, N, K):
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    C = nan_array((M, N))
    demo.get_function("sgemm_tiled_kernel1")(((N + 15) // 16, (M + 15) // 16), (16, 16), (A, B, C, i32(M), i32(N), i32(K)))
    assert rel_err(C, A.astype(np.float64) @ B) < 1e-6


@pytest.mark.parametrize("n,grid,block", [(1, 1, 32), (1000, 3, 96), (4097, 5, 1024)])
def test_reduce_sum_with_atomics(demo, order, rng, n, grid, block):
    x = (rng.standard_normal(n) + 1).astype(np.float32)  # a sum far from 0, so a relative error means something
    out = np.zeros(1, np.float32)
    demo.get_function("reduce_sum_kernel1")((grid,), (block,), (x, out, i32(n)))
    assert rel_err(out, [x.sum(dtype=np.float64)]) < 1e-5


@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 31), (13, 100)])
def test_softmax_shfl_xor(demo, order, rng, rows, cols):
    x = (rng.standard_normal((rows, cols)) * 5).astype(np.float32)
    y = nan_array((rows, cols))
    demo.get_function("softmax_rows_kernel1")(((rows + 3) // 4,), (32, 4), (x, y, i32(rows), i32(cols)))
    e = np.exp(x - x.max(1, keepdims=True))
    assert rel_err(y, e / e.sum(1, keepdims=True)) < 1e-6


def tf32_round(a):  # round to nearest, ties away from zero, 10 mantissa bits
    return ((a.view(np.uint32) + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def tf32_trunc(a):
    return (a.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.mark.parametrize("M,N,K", [(16, 16, 8), (48, 32, 24)])
def test_wmma_tf32_gemm(demo, order, rng, M, N, K):
    A = aligned(rng.standard_normal((M, K)).astype(np.float32))
    B = aligned(rng.standard_normal((K, N)).astype(np.float32))
    C = nan_array((M, N))
    demo.get_function("wmma_tf32_gemm_kernel1")((N // 16, M // 16), (32,), (A, B, C, i32(M), i32(N), i32(K)))
    exact = A.astype(np.float64) @ B
    assert rel_err(C, tf32_round(A).astype(np.float64) @ tf32_round(B)) < 1e-6
    assert 1e-5 < rel_err(C, exact) < 3e-3  # it really is tf32, not fp32


WMMA_SRC = r"""
#include <mma.h>
#include <cuda_fp16.h>
using namespace nvcuda;
// tf32 inputs that were NOT converted: the tensor core truncates them
extern "C" __global__ void tf32_unconverted(const float* A, const float* B, float* C) {
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
    wmma::fill_fragment(c, 0.0f);
    wmma::load_matrix_sync(a, A, 8);
    wmma::load_matrix_sync(b, B, 8);   // B given as (N, K) row-major = (K, N) col-major
    wmma::mma_sync(c, a, b, c);
    wmma::store_matrix_sync(C, c, 16, wmma::mem_col_major);
}
// half m16n16k16, fp32 accumulation, accumulator loaded from memory
extern "C" __global__ void half_mma(const __half* A, const __half* B, float* C) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::load_matrix_sync(c, C, 16, wmma::mem_row_major);
    wmma::load_matrix_sync(a, A, 16);
    wmma::load_matrix_sync(b, B, 16);
    wmma::mma_sync(c, a, b, c);
    wmma::store_matrix_sync(C, c, 16, wmma::mem_row_major);
}
extern "C" __global__ void misaligned(const float* A, float* C) {
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
    wmma::load_matrix_sync(c, A + 1, 16, wmma::mem_row_major);
    wmma::store_matrix_sync(C, c, 16, wmma::mem_row_major);
}
"""


@pytest.fixture(scope="module")
def wmma_mod():
    return runtime.compile(WMMA_SRC, engine="emu", filename="wmma_test.cu")


def test_wmma_truncates_unconverted_tf32(wmma_mod, order, rng):
    A = aligned(rng.standard_normal((16, 8)).astype(np.float32))
    Bt = aligned(rng.standard_normal((16, 8)).astype(np.float32))
    C = nan_array((16, 16))
    wmma_mod.get_function("tf32_unconverted")((1,), (32,), (A, Bt, C))
    ref = tf32_trunc(A).astype(np.float64) @ tf32_trunc(Bt).T
    assert rel_err(C.T, ref) < 1e-6  # stored column-major


def test_wmma_half(wmma_mod, order, rng):
    A = aligned(rng.standard_normal((16, 16)).astype(np.float16))
    B = aligned(rng.standard_normal((16, 16)).astype(np.float16))
    C0 = rng.standard_normal((16, 16)).astype(np.float32)
    C = aligned(C0)
    wmma_mod.get_function("half_mma")((1,), (32,), (A, B, C))
    assert rel_err(C, A.astype(np.float64) @ B + C0) < 1e-6


def test_wmma_checks_alignment(wmma_mod):
    A = aligned(np.ones(512, np.float32))
    with pytest.raises(EmulatorError, match=r"wmma_test.cu:\d+: pointer .* is not 32-byte aligned"):
        wmma_mod.get_function("misaligned")((1,), (32,), (A, nan_array((16, 16))))


# ---- a kernel source the tests never saw, through the public API ---------------------------------
UNSEEN = r"""
template <typename T, int SCALE>
__global__ void scale_add(const T* x, T* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += (T)SCALE * x[i];
}
// counts positive entries per block with __syncthreads_count and per warp with __ballot_sync
extern "C" __global__ void count_positive(const float* x, int n, int* per_block, unsigned* ballots) {
    extern __shared__ int scratch[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int p = i < n && x[i] > 0.0f;
    scratch[threadIdx.x] = p;
    int c = __syncthreads_count(p);
    unsigned b = __ballot_sync(0xffffffffu, scratch[threadIdx.x]);
    if (threadIdx.x % 32 == 0) ballots[i / 32] = b;
    if (threadIdx.x == 0) { per_block[blockIdx.x] = c; atomicAdd(per_block + gridDim.x, c); }
}
"""


def test_runtime_api_on_unseen_kernel(order, rng):
    mod = runtime.compile(UNSEEN, engine="emu", name_expressions=("scale_add<float, 3>",), filename="unseen.cu")
    n = 1000
    x = rng.standard_normal(n).astype(np.float32)
    y0 = rng.standard_normal(n).astype(np.float32)
    y = y0.copy()
    mod.get_function("scale_add<float, 3>")(((n + 127) // 128,), (128,), (x, y, i32(n)))
    assert rel_err(y, y0 + 3.0 * x) < 1e-7

    grid, block = 4, 256
    per_block = np.zeros(grid + 1, np.int32)
    ballots = np.zeros(grid * block // 32, np.uint32)
    mod.get_function("count_positive")((grid,), (block,), (x, i32(n), per_block, ballots), shared_mem=block * 4)
    pos = np.zeros(grid * block, bool)
    pos[:n] = x > 0
    assert per_block[:grid].tolist() == pos.reshape(grid, block).sum(1).tolist()
    assert per_block[grid] == pos.sum()
    bits = (pos.reshape(-1, 32) * (1 << np.arange(32, dtype=np.uint64))).sum(1).astype(np.uint32)
    assert ballots.tolist() == bits.tolist()


# ---- planted bugs --------------------------------------------------------------------------------
def test_missing_barrier_fails_in_some_order(bugs, rng):
    n = 200
    x = rng.standard_normal(n).astype(np.float32) + 10
    ref = np.concatenate([[0.0], x[:-1]])
    results = {}
    for order in ("forward", "reverse", "random"):
        with emu.thread_order(order, seed=1):
            for name in ("shift_no_barrier", "shift_with_barrier"):
                y = nan_array(n)
                bugs.get_function(name)((1,), (256,), (x, y, i32(n)), shared_mem=256 * 4)
                results[order, name] = rel_err(y, ref) < 1e-7
    assert all(results[o, "shift_with_barrier"] for o in ("forward", "reverse", "random"))
    assert results["forward", "shift_no_barrier"]  # this order hides the bug ...
    assert not results["reverse", "shift_no_barrier"]  # ... the others show it
    assert not results["random", "shift_no_barrier"]


def test_divergent_barrier_is_an_error(bugs, order):
    with pytest.raises(EmulatorError) as e:
        bugs.get_function("divergent_barrier")((1,), (32,), (nan_array(32),))
    msg = str(e.value)
    assert "divergent __syncthreads" in msg and "divergent_barrier" in msg
    assert f"planted_bugs.cu:{bug_line('divergent-a')}" in msg and f"planted_bugs.cu:{bug_line('divergent-b')}" in msg


def test_return_before_barrier_is_an_error(bugs, order):
    with pytest.raises(EmulatorError, match=rf"divergent __syncthreads at .*planted_bugs.cu:{bug_line('return-barrier')}.*exited"):
        bugs.get_function("return_before_barrier")((1,), (64,), (nan_array(64), i32(40)))


def test_shuffle_after_return_is_an_error(bugs, order, rng):
    x = rng.standard_normal(32).astype(np.float32)
    with pytest.raises(EmulatorError, match=rf"__shfl_down_sync at .*planted_bugs.cu:{bug_line('shuffle')}.*exited.*shuffle_after_return"):
        bugs.get_function("shuffle_after_return")((1,), (32,), (x, nan_array(1), i32(20)))


def test_warp_deadlock_is_an_error(bugs, order):
    with pytest.raises(EmulatorError, match=r"deadlock.*warp_deadlock"):
        bugs.get_function("warp_deadlock")((1,), (32,), (nan_array(32),))


def test_mask_naming_missing_lanes_is_an_error(bugs):
    with pytest.raises(EmulatorError, match=rf"planted_bugs.cu:{bug_line('missing-lanes')}.*does not exist"):
        bugs.get_function("mask_names_missing_lanes")((1,), (48,), (nan_array(48),))


def test_assert_raises(bugs, order):
    x = np.arange(64, dtype=np.int32)
    bugs.get_function("failing_assert")((1,), (64,), (x, i32(64)))  # holds: no error
    x[37] = -1
    with pytest.raises(EmulatorError, match=rf"assertion `x\[t\] >= 0` failed at .*planted_bugs.cu:{bug_line('assert')}.*thread \(37,0,0\)"):
        bugs.get_function("failing_assert")((1,), (64,), (x, i32(64)))


@pytest.mark.parametrize("args,match", [
    (lambda y: (y, 100), r"argument 1 must be a numpy.int32 scalar, got int"),
    (lambda y: (y, np.int64(100)), r"argument 1 must be a numpy.int32 scalar, got int64"),
    (lambda y: (y, np.float32(100)), r"argument 1 must be a numpy.int32"),
    (lambda y: (y,), r"takes 2 arguments"),
    (lambda y: (y, i32(1), i32(2)), r"takes 2 arguments"),
    (lambda y: (y.astype(np.float64), i32(100)), r"argument 0 points to f32, got an array of float64"),
    (lambda y: (y[::2], i32(50)), r"not C-contiguous"),
    (lambda y: ([1.0], i32(1)), r"needs a NumPy array"),
])
def test_wrong_arguments_rejected_before_launch(bugs, args, match):
    y = np.full(100, 7.0, np.float32)
    with pytest.raises((TypeError, ValueError), match=match):
        bugs.get_function("out_of_bounds")((1,), (128,), args(y))
    assert np.all(y == 7.0)


def test_launch_limits(bugs):
    f = bugs.get_function("out_of_bounds")
    y = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="more than 1024 threads"):
        f((1,), (64, 32), (y, i32(1)))
    with pytest.raises(ValueError, match="shared_mem"):
        f((1,), (32,), (y, i32(1)), shared_mem=64 * 1024)
    with pytest.raises(AttributeError, match="no kernel 'nope'"):
        bugs.get_function("nope")


@pytest.mark.asan
def test_out_of_bounds_write_caught_by_asan(tmp_path):
    script = tmp_path / "oob.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        from unetcu import runtime
        m = runtime.compile(open({str(BUGS)!r}).read(), engine="emu", filename={str(BUGS)!r})
        y = np.zeros(100, np.float32)
        m.get_function("out_of_bounds")((1,), (128,), (y, np.int32(100)))
        print("NOT CAUGHT")
    """))
    env = dict(os.environ, UNETCU_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "unetcu.cli", "asan", sys.executable, str(script)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "NOT CAUGHT" not in r.stdout
    assert "heap-buffer-overflow" in r.stderr
    assert re.search(rf"in out_of_bounds .*planted_bugs.cu:{bug_line('oob')}", r.stderr), r.stderr[-3000:]


def test_asan_build_refuses_without_libasan(monkeypatch):
    monkeypatch.setenv("UNETCU_EMU_SANITIZE", "address")
    with pytest.raises(EmulatorError, match="libasan preloaded"):
        runtime.compile("extern \"C\" __global__ void k(float* y) { y[0] = 1.0f; }", engine="emu", filename="k.cu")


# ---- build cache, engines ------------------------------------------------------------------------
def test_build_cache_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETCU_CACHE_DIR", str(tmp_path))
    src = 'extern "C" __global__ void k(float* y) { y[threadIdx.x] = %s; }'
    y = np.zeros(4, np.float32)
    runtime.compile(src % "1.0f", engine="emu", filename="k.cu").get_function("k")((1,), (4,), (y,))
    built = sorted((tmp_path / "emu").glob("*.so"))
    runtime.compile(src % "1.0f", engine="emu", filename="k.cu")
    assert sorted((tmp_path / "emu").glob("*.so")) == built and len(built) == 1
    runtime.compile(src % "2.0f", engine="emu", filename="k.cu").get_function("k")((1,), (4,), (y,))
    assert len(list((tmp_path / "emu").glob("*.so"))) == 2
    assert y.tolist() == [2.0] * 4


def test_compile_error_is_reported():
    with pytest.raises(emu.EmuCompileError, match=r"bad.cu:2"):
        runtime.compile('extern "C" __global__ void k(float* y) {\n  y[0] = undefined_name; }', engine="emu", filename="bad.cu")


def test_engine_selection():
    with pytest.raises(ValueError, match="unknown kernel engine"):
        runtime.resolve_engine("opencl")
    assert runtime.resolve_engine("emu") == "emu"
    if not runtime.gpu_available():
        with pytest.raises(RuntimeError, match="no GPU is usable"):
            runtime.resolve_engine("cuda")
        assert runtime.default_engine() == "emu"


def test_kernel_names_parser():
    src = textwrap.dedent("""
        // __global__ void commented_out(int x)
        extern "C" __global__ void __launch_bounds__(256) a_kernel(float* x) {}
        extern "C" {
        __global__ void b_kernel(const float* __restrict__ x, int n) {}
        }
        template <int N> __global__ void templated(float* x) {}
        static __device__ void helper() {}
    """)
    assert emu.kernel_names(src) == ["a_kernel", "b_kernel"]


# ---- the same kernels on a GPU -------------------------------------------------------------------
@pytest.mark.gpu
def test_demo_kernels_match_between_cuda_and_emu():
    from unetcu import demo
    gpu = demo.run("cuda", size=96, seed=3, out=lambda *a: None)
    cpu = demo.run("emu", size=96, seed=3, out=lambda *a: None)
    for name in cpu:
        assert gpu[name][0] < 1e-5 and cpu[name][0] < 1e-5, (name, gpu[name], cpu[name])


WARP_SRC = r"""
// per warp: an inclusive scan with __shfl_up_sync, a broadcast within 16-lane halves, votes,
// and lane 0 publishing through shared memory behind a __syncwarp
extern "C" __global__ void warp_ops(const int* x, int* scan, int* half_first, int* votes, int* from_lane0) {
    __shared__ int slot[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = x[i];
    for (int d = 1; d < 32; d <<= 1) {
        int u = __shfl_up_sync(0xffffffffu, v, d);
        if (lane >= d) v += u;
    }
    scan[i] = v;
    half_first[i] = __shfl_sync(0xffffffffu, x[i], 0, 16);
    int all_pos = __all_sync(0xffffffffu, x[i] > 0), any_big = __any_sync(0xffffffffu, x[i] > 90);
    if (lane == 0) votes[blockIdx.x * (blockDim.x / 32) + warp] = all_pos + 2 * any_big;
    if (lane == 0) slot[warp] = x[i] * 7;
    __syncwarp();
    from_lane0[i] = slot[warp];
}
"""


def test_warp_scan_broadcast_votes_syncwarp(order, rng):
    mod = runtime.compile(WARP_SRC, engine="emu", filename="warp_ops.cu")
    grid, block = 3, 64
    n = grid * block
    x = rng.integers(-5, 100, n).astype(np.int32)
    outs = [np.full(n, -999, np.int32) for _ in range(2)] + [np.full(grid * block // 32, -999, np.int32), np.full(n, -999, np.int32)]
    mod.get_function("warp_ops")((grid,), (block,), (x, *outs))
    scan, half, votes, lane0 = outs
    w = x.reshape(-1, 32)
    assert scan.tolist() == np.cumsum(w, axis=1).ravel().tolist()
    assert half.tolist() == np.repeat(x.reshape(-1, 16)[:, 0], 16).tolist()
    assert votes.tolist() == ((w > 0).all(1) + 2 * (w > 90).any(1)).tolist()
    assert lane0.tolist() == np.repeat(w[:, 0] * 7, 32).tolist()
