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
from unetcu.engines import emu, runtime, sanitize
from unetcu.engines.emu import EmulatorError, aligned

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
    return runtime.load("examples/demo.cu", "emu")


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
    (lambda y: (y, 100), r"argument 1 \(n\) must be a numpy.int32 scalar, got int"),
    (lambda y: (y, np.int64(100)), r"argument 1 \(n\) must be a numpy.int32 scalar, got int64"),
    (lambda y: (y, np.float32(100)), r"argument 1 \(n\) must be a numpy.int32"),
    (lambda y: (y,), r"takes 2 arguments"),
    (lambda y: (y, i32(1), i32(2)), r"takes 2 arguments"),
    (lambda y: (y.astype(np.float64), i32(100)), r"argument 0 \(y\) points to f32, got an array of float64"),
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
    with pytest.raises(emu.CUDADriverError, match="^CUDA_ERROR_NOT_FOUND: named symbol not found .*no kernel 'nope'"):
        bugs.get_function("nope")


@pytest.mark.asan
def test_out_of_bounds_write_caught_by_asan(tmp_path):
    script = tmp_path / "oob.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        from unetcu.engines import runtime
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


def test_asan_front_end_takes_dashes_and_names_a_missing_command():
    """`unetcu asan -- CMD` as `unetcu sanitize -- CMD`; a command that does not exist is one line."""
    r = subprocess.run([sys.executable, "-m", "unetcu.cli", "asan", "--", sys.executable, "-c", "print('ran')"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ran" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "unetcu.cli", "asan", "--", "no_such_command_xyz"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 127 and r.stderr.strip() == ("unetcu asan: cannot run 'no_such_command_xyz': "
                                                        "No such file or directory"), r.stderr


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
    with pytest.raises(ValueError, match="unknown engine"):
        runtime.resolve_engine("opencl")
    assert runtime.resolve_engine("emu") == "emu"
    with pytest.raises(ValueError, match="engine numpy runs no kernels"):
        runtime.compile('extern "C" __global__ void k(float* y) { y[0] = 1; }', engine="numpy")
    if not runtime.gpu_available():
        with pytest.raises(RuntimeError, match="no GPU is usable"):
            runtime.resolve_engine("cuda")
        assert runtime.resolve_engine(None, kernels=True) == "emu"


@pytest.mark.parametrize("env", [None, "numpy", "emu"])
def test_what_runs_kernels_defaults_to_emu_without_a_gpu(monkeypatch, env):
    """demo and runtime.load with no engine: UNETCU_ENGINE unset or numpy (which has no kernels)
    means emu without a GPU, as `unetcu engines` says; an explicit numpy is refused."""
    from unetcu import demo
    if runtime.gpu_available():
        pytest.skip("with a GPU the default is cuda")
    if env is None:
        monkeypatch.delenv("UNETCU_ENGINE", raising=False)
    else:
        monkeypatch.setenv("UNETCU_ENGINE", env)
    res = demo.run(None, size=16, out=lambda *a: None)
    assert res and all(err < 1e-5 for err, _ in res.values()), res
    with pytest.raises(ValueError, match="engine numpy runs no kernels"):
        demo.run("numpy", size=16, out=lambda *a: None)
    with pytest.raises(RuntimeError, match="use engine emu"):
        demo.run("cuda", size=16, out=lambda *a: None)


def test_kernel_names_parser():
    src = textwrap.dedent("""
        // __global__ void commented_out(int x)
        extern "C" __global__ void __launch_bounds__(256) a_kernel(float* x) {}
        extern "C" {
        __global__ void b_kernel(const float* __restrict__ x, int n) {}
        }
        template <int N> __global__ void templated(float* x) {}
        static __device__ void helper() {}
        __global__ void mangled_kernel(int n) {}
        namespace ns { extern "C" __global__ void c_in_ns(int n) {} }
    """)
    assert emu.kernel_names(src) == ["a_kernel", "b_kernel", "mangled_kernel", "c_in_ns"]
    assert emu.kernel_linkage(src) == [("a_kernel", True), ("b_kernel", True), ("mangled_kernel", False), ("c_in_ns", True)]


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


# ---- CUDA as people write it: vector types, headers, sm_80 warp intrinsics, globals, groups ------
VEC_SRC = r"""
#include <cuda_fp16.h>
extern "C" __global__ void vec_ops(uint4* d, const uint4* s, const float4* f, float2* g, const double2* h,
                                   double* hs, const char4* c, int* cs, const __half2* p, float* ps, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint4 v = s[i];
    d[i] = make_uint4(v.w, v.z ^ 0x55u, v.y + 1u, v.x);
    float4 a = f[i];
    g[i] = make_float2(a.x * a.y, a.z - a.w);
    double2 b = h[i];
    hs[i] = b.x + b.y;
    char4 q = c[i];
    cs[i] = q.x + 2 * q.y + 3 * q.z + 4 * q.w;
    ps[i] = __low2float(p[i]) * __high2float(p[i]);
}
"""


@pytest.fixture(scope="module")
def vec_mod():
    return runtime.compile(VEC_SRC, engine="emu", filename="vec_types.cu")


def test_vector_type_pointers(vec_mod, order, rng):
    n = 77
    s = aligned(rng.integers(0, 2**32, (n, 4), dtype=np.uint32))
    f = aligned(rng.standard_normal((n, 4)).astype(np.float32))
    h = aligned(rng.standard_normal((n, 2)))
    c = aligned(rng.integers(-128, 128, (n, 4), dtype=np.int8))
    p = aligned(rng.standard_normal((n, 2)).astype(np.float16))
    d, g = aligned(np.zeros((n, 4), np.uint32)), nan_array((n, 2))
    hs, cs, ps = aligned(np.full(n, np.nan)), aligned(np.zeros(n, np.int32)), nan_array(n)
    vec_mod.get_function("vec_ops")((3,), (32,), (d, s, f, g, h, hs, c, cs, p, ps, np.uint32(n)))
    assert d.tolist() == np.stack([s[:, 3], s[:, 2] ^ 0x55, s[:, 1] + np.uint32(1), s[:, 0]], 1).tolist()
    assert rel_err(g, np.stack([f[:, 0].astype(np.float64) * f[:, 1], f[:, 2].astype(np.float64) - f[:, 3]], 1)) < 1e-7
    assert rel_err(hs, h.sum(1)) < 1e-15
    assert cs.tolist() == (c.astype(np.int32) @ np.array([1, 2, 3, 4])).tolist()
    assert rel_err(ps, p[:, 0].astype(np.float64) * p[:, 1]) < 1e-7


def test_vector_type_refusals(vec_mod):
    n = 4
    fn = vec_mod.get_function("vec_ops")
    args = [aligned(np.zeros((n, 4), np.uint32)), aligned(np.zeros((n, 4), np.uint32)), aligned(np.zeros((n, 4), np.float32)),
            aligned(np.zeros((n, 2), np.float32)), aligned(np.zeros((n, 2))), aligned(np.zeros(n)),
            aligned(np.zeros((n, 4), np.int8)), aligned(np.zeros(n, np.int32)), aligned(np.zeros((n, 2), np.float16)),
            aligned(np.zeros(n, np.float32)), np.uint32(n)]
    bad = list(args)
    bad[2] = aligned(np.zeros(4 * n + 1, np.float32))[1:]  # 4-byte aligned, not 16
    with pytest.raises(ValueError, match=r"vec_ops: argument 2 \(f\) points to 16-byte aligned vectors .* not 16-byte aligned"):
        fn((1,), (32,), tuple(bad))
    bad = list(args)
    bad[1] = bad[1].view(np.int32)
    with pytest.raises(TypeError, match=r"argument 1 \(s\) points to u32x4 vectors and needs an array of uint32, got int32"):
        fn((1,), (32,), tuple(bad))
    src = 'struct Pair { float a; int b; };\nextern "C" __global__ void by_value(float* y, Pair pair) { y[0] = pair.a; }\n'
    mod = runtime.compile(src, engine="emu", filename="by_value.cu")
    with pytest.raises(emu.EmuCompileError, match=r"kernel by_value: parameter 1 \(pair\) has type 'Pair', which the emulator cannot pass"):
        mod.get_function("by_value")


REDUCE_SRC = r"""
// sm_80 warp reductions and sm_70 matches, chosen the way a file specialises on the architecture
extern "C" __global__ void warp_reduce_match(const int* x, const unsigned* u, int* r, unsigned* ru, unsigned* any,
                                             unsigned* all, int* pred, int* low_half) {
    int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32, warp = i / 32;
    const unsigned full = 0xffffffffu;
#if __CUDA_ARCH__ >= 800
    r[3 * i] = __reduce_add_sync(full, x[i]);
    r[3 * i + 1] = __reduce_min_sync(full, x[i]);
    r[3 * i + 2] = __reduce_max_sync(full, x[i]);
    ru[6 * i] = __reduce_add_sync(full, u[i]);
    ru[6 * i + 1] = __reduce_min_sync(full, u[i]);
    ru[6 * i + 2] = __reduce_max_sync(full, u[i]);
    ru[6 * i + 3] = __reduce_and_sync(full, u[i] | 0xf0f0f0f0u);
    ru[6 * i + 4] = __reduce_or_sync(full, u[i] & 0x0f0f0f0fu);
    ru[6 * i + 5] = __reduce_xor_sync(full, u[i]);
    if (lane < 16) low_half[i] = __reduce_add_sync(0x0000ffffu, x[i]);
#endif
    any[i] = __match_any_sync(full, x[i] & 3);
    int p;
    all[i] = __match_all_sync(full, warp % 2 ? (float)(lane % 2) : 1.5f, &p);
    pred[i] = p;
}
"""


def test_warp_reduce_and_match(order, rng):
    mod = runtime.compile(REDUCE_SRC, engine="emu", filename="warp_reduce.cu")
    n = 96
    x = rng.integers(-1000, 1000, n).astype(np.int32)
    u = rng.integers(0, 2**32, n, dtype=np.uint32)
    r, ru = np.full(3 * n, -7, np.int32), np.zeros(6 * n, np.uint32)
    any_, all_, pred, low = np.zeros(n, np.uint32), np.full(n, 7, np.uint32), np.full(n, 7, np.int32), np.full(n, -7, np.int32)
    mod.get_function("warp_reduce_match")((1,), (n,), (x, u, r, ru, any_, all_, pred, low))
    w, wu = x.reshape(-1, 32), u.reshape(-1, 32)
    per_lane = lambda a: np.repeat(a, 32, axis=0).reshape(n, -1)
    assert r.reshape(n, 3).tolist() == per_lane(np.stack([w.sum(1), w.min(1), w.max(1)], 1)).tolist()
    want_u = np.stack([wu.sum(1, dtype=np.uint32), wu.min(1), wu.max(1), np.bitwise_and.reduce(wu | np.uint32(0xf0f0f0f0), 1),
                       np.bitwise_or.reduce(wu & np.uint32(0x0f0f0f0f), 1), np.bitwise_xor.reduce(wu, 1)], 1)
    assert ru.reshape(n, 6).tolist() == per_lane(want_u).tolist()
    assert low.reshape(-1, 32)[:, :16].tolist() == np.repeat(w[:, :16].sum(1), 16).reshape(-1, 16).tolist()
    key = w & 3
    bits = 1 << np.arange(32, dtype=np.uint64)
    want_any = [[int(((key[k] == key[k, j]) * bits).sum()) for j in range(32)] for k in range(len(w))]
    assert any_.reshape(-1, 32).tolist() == want_any
    even = np.arange(n) // 32 % 2 == 0  # warps 0 and 2 offer the same value, warp 1 does not
    assert all_.tolist() == np.where(even, 0xffffffff, 0).tolist() and pred.tolist() == even.astype(int).tolist()


def test_warp_reduce_after_return_is_an_error(order):
    src = ('extern "C" __global__ void k(int* y) {\n  if (threadIdx.x == 5) return;\n'
           '  y[threadIdx.x] = __reduce_add_sync(0xffffffffu, 1);\n}\n')
    mod = runtime.compile(src, engine="emu", filename="reduce_return.cu")
    with pytest.raises(EmulatorError, match=r"__reduce_add_sync at .*reduce_return.cu:3 .*lane 5 .*exited"):
        mod.get_function("k")((1,), (32,), (np.zeros(32, np.int32),))


GLOBALS_SRC = r"""
// a 17-tap filter in constant memory; a device counter of positive outputs; a device scale
__constant__ float c_k[17];
__device__ unsigned int d_positive;
__device__ float d_scale = 2.5f;
extern "C" __global__ void filter17(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n - 16) return;
    float s = 0.0f;
    for (int k = 0; k < 17; ++k) s += c_k[k] * x[i + k];
    y[i] = s * d_scale;
    if (s > 0.0f) atomicAdd(&d_positive, 1u);
}
"""


def test_get_global_constant_and_device(order, rng):
    mod = runtime.compile(GLOBALS_SRC, engine="emu", filename="globals.cu")
    c_k, count, scale = mod.get_global("c_k"), mod.get_global("d_positive"), mod.get_global("d_scale")
    assert (c_k.dtype, c_k.shape, count.dtype, count.shape, scale.dtype) == (np.float32, (17,), np.uint32, (), np.float32)
    taps = rng.standard_normal(17).astype(np.float32)
    c_k[...] = taps
    count[...] = 0
    scale[...] = np.float32(rng.uniform(0.5, 2.0))
    n = 300
    x = rng.standard_normal(n).astype(np.float32)
    y = nan_array(n - 16)
    mod.get_function("filter17")((3,), (128,), (x, y, i32(n)))
    windows = np.stack([x[i:i + 17] for i in range(n - 16)]).astype(np.float64)
    s = windows @ taps
    assert rel_err(y, s * scale) < 1e-6
    # the kernel decides s > 0 in fp32: an output within its rounding (1e-6 of |windows| @ |taps|) of 0
    # may count either way (1 draw in 400000 had one)
    m = 1e-6 * (np.abs(windows) @ np.abs(taps))
    assert int((s > m).sum()) <= int(count) <= int((s > -m).sum())
    with pytest.raises(emu.CUDADriverError, match=r"^CUDA_ERROR_NOT_FOUND: named symbol not found .*'nope'.*has: c_k, d_positive, d_scale"):
        mod.get_global("nope")


def test_kernel_without_extern_c_is_found_only_like_cupy(order, rng):
    src = "__global__ void plain(float* y, float v) { y[threadIdx.x] = v * threadIdx.x; }\n"
    mod = runtime.compile(src, engine="emu", filename="plain.cu")
    with pytest.raises(emu.CUDADriverError, match=r'^CUDA_ERROR_NOT_FOUND: named symbol not found .*plain.* not extern "C"'):
        mod.get_function("plain")
    v = np.float32(rng.standard_normal())
    y = nan_array(32)
    runtime.compile(src, engine="emu", name_expressions=("plain",), filename="plain.cu").get_function("plain")((1,), (32,), (y, v))
    assert y.tolist() == (v * np.arange(32, dtype=np.float32)).tolist()


HIST_SRC = r"""
// 16-bin histogram through shared bins; the _nozero variants forget to clear them first
__shared__ unsigned g_bins[16];
extern "C" __global__ void hist(const int* x, int n, unsigned* out) {
    __shared__ unsigned bins[16];
    if (threadIdx.x < 16) bins[threadIdx.x] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) atomicAdd(&bins[x[i]], 1u);
    __syncthreads();
    if (threadIdx.x < 16) atomicAdd(&out[threadIdx.x], bins[threadIdx.x]);
}
extern "C" __global__ void hist_nozero(const int* x, int n, unsigned* out) {
    static __shared__ unsigned bins[16], unused[3];
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) atomicAdd(&bins[x[i]], 1u);
    __syncthreads();
    if (threadIdx.x < 16) atomicAdd(&out[threadIdx.x], bins[threadIdx.x]);
}
extern "C" __global__ void hist_nozero_global(const int* x, int n, unsigned* out) {
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) atomicAdd(&g_bins[x[i]], 1u);
    __syncthreads();
    if (threadIdx.x < 16) atomicAdd(&out[threadIdx.x], g_bins[threadIdx.x]);
}
"""


@pytest.mark.parametrize("grid", [1, 3])
def test_static_shared_starts_poisoned(order, rng, grid):
    # a source never built in this process, so that its static shared memory is fresh (zeros)
    mod = runtime.compile(HIST_SRC + f"// {rng.integers(2**62)}\n", engine="emu", filename="hist.cu")
    n = 1000
    x = rng.integers(0, 16, n).astype(np.int32)
    want = np.bincount(x, minlength=16).astype(np.uint32)
    for name in ("hist_nozero", "hist_nozero_global", "hist"):
        out = np.zeros(16, np.uint32)
        with sanitize.expected():  # the *_nozero kernels read bins no thread wrote (initcheck says so)
            mod.get_function(name)((grid,), (64,), (x, i32(n), out))
        # every block's bins start at 0xffffffff, as garbage would, never at 0
        assert out.tolist() == (want if name == "hist" else want - np.uint32(grid)).tolist(), name


SHIFT_SRC = r"""
extern "C" __global__ void first_lanes_bcast(const int* x, int* y, int lanes) {
    unsigned mask = (1u << lanes) - 1u;  // undefined for lanes == 32
    if ((int)threadIdx.x < lanes) y[threadIdx.x] = __shfl_sync(mask, x[threadIdx.x], 1);
}
extern "C" __global__ void full_mask_by_shift(const int* x, int* y) {
    y[threadIdx.x] = __shfl_sync((1 << 32) - 1, x[threadIdx.x], 0);
}
"""


def test_shift_by_word_size_runs_as_on_the_gpu(order, rng, capfd):
    # (1u << 32) - 1 is the full mask on the GPU (its shift clamps the count): the kernel works there
    mod = runtime.compile(SHIFT_SRC + f"// {rng.integers(2**62)}\n", engine="emu", filename="shift_mask.cu")
    x = rng.integers(-100, 100, 32).astype(np.int32)
    with sanitize.expected():  # under `pytest --sanitize` the shifts are findings, not warnings
        for lanes in (20, 32, 32):
            y = np.full(32, -999, np.int32)
            mod.get_function("first_lanes_bcast")((1,), (32,), (x, y, i32(lanes)))
            assert y[:lanes].tolist() == [int(x[1])] * lanes
        y = np.full(32, -999, np.int32)
        mod.get_function("full_mask_by_shift")((1,), (32,), (x, y))
    assert y.tolist() == [int(x[0])] * 32
    err = capfd.readouterr().err
    if sanitize.tool():
        return
    # one warning per site, however often it runs
    assert len(re.findall(r"warning: shift_mask.cu:3: << by 32 of a 32-bit 'unsigned int' in kernel first_lanes_bcast", err)) == 1, err
    assert len(re.findall(r"warning: shift_mask.cu:7: << by 32 of a 32-bit 'int' .*computed as the GPU does \(0", err)) == 1, err


SHIFTS = HERE / "cuda" / "shifts.cu"


def gpu_shift(v, k, bits, signed, left):
    """What PTX shl/shr give: the 32-bit count clamps to the width."""
    c = int(k) & 0xFFFFFFFF
    v = int(v)
    if c >= bits:
        return 0 if left or not signed or v >= 0 else -1
    r = (v << c) if left else (v >> c)
    r &= (1 << bits) - 1
    return r - (1 << bits) if signed and r >> (bits - 1) else r


def test_shift_out_of_range_computes_what_the_gpu_computes(order, rng, capfd):
    # a build never loaded in this process, so that its warnings (once per site) are fresh
    mod = runtime.compile(SHIFTS.read_text() + f"// {rng.integers(2**62)}\n", engine="emu", filename=str(SHIFTS))
    n = 300
    x = rng.integers(-2**31, 2**31, n).astype(np.int32)
    c = np.where(rng.random(n) < 0.5, rng.integers(0, 32, n), rng.integers(-40, 200, n)).astype(np.int32)
    o32, u32 = np.full(5 * n, 7, np.int32), np.full(3 * n, 7, np.uint32)
    o64, u64 = np.full(2 * n, 7, np.int64), np.full(2 * n, 7, np.uint64)
    with sanitize.expected():
        mod.get_function("shift_every_type")((3,), (128,), (x, c, o32, u32, o64, u64, i32(n)))
    u = x.astype(np.int64) & 0xFFFFFFFF
    want32 = [gpu_shift(v, k, 32, True, True) for v, k in zip(x, c)] + [gpu_shift(v, k, 32, True, False) for v, k in zip(x, c)]
    want32 += [gpu_shift(v & 0xFF, k, 32, True, True) for v, k in zip(u, c)] + want32[:n]
    want32 += [gpu_shift(gpu_shift(1, k, 32, False, True) - 1, 0, 32, True, True) for k in c]
    assert o32.tolist() == want32
    assert u32.tolist() == ([gpu_shift(v, k, 32, False, True) for v, k in zip(u, c)] + [gpu_shift(v, k, 32, False, False) for v, k in zip(u, c)]
                            + [gpu_shift(v, k if k & 1 else k + 1, 32, False, False) for v, k in zip(u, c)])
    assert o64.tolist() == [gpu_shift(v, k, 64, True, True) for v, k in zip(x, c)] + [gpu_shift(v, k, 64, True, False) for v, k in zip(x, c)]
    assert u64.tolist() == [gpu_shift(v, k, 64, False, True) for v, k in zip(u, c)] + [gpu_shift(v, k, 64, False, False) for v, k in zip(u, c)]
    word = np.zeros(1, np.int32)
    with sanitize.expected():
        mod.get_function("or_bits")((4,), (256,), (word,))  # simpleAtomicIntrinsics: 1 << tid for tid up to 1023
    assert word[0] == -1
    masks = np.zeros(64, np.uint32)
    c[0] = 40  # so that the bare macro's line stops the kernel
    with sanitize.expected(), pytest.raises(EmulatorError, match="macro body"):
        mod.get_function("macro_mask")((1,), (32,), (c[:32].copy(), masks))
    assert masks[:32].tolist() == [gpu_shift(1, k, 32, False, True) - 1 & 0xFFFFFFFF for k in c[:32]]
    err = capfd.readouterr().err
    if sanitize.tool():
        return
    helper = HERE / "cuda" / "shift_helpers.cuh"
    assert re.search(rf"warning: {re.escape(str(helper))}:3: << by -?\d+ of a 32-bit 'unsigned int' in kernel shift_every_type", err), err
    assert re.search(rf"warning: {re.escape(str(SHIFTS))}:{line_of(SHIFTS.read_text(), 'atomicOr')}: << by \d+ of a 32-bit 'int' in "
                     r"kernel or_bits .*computed as the GPU does", err), err
    assert all(line.startswith("unetcu emulator: warning:") for line in err.splitlines()), err


def test_shift_rewrite_keeps_precedence(order, rng):
    # the emulator turns `a << n` into a call: operands must be what C++'s precedence makes them
    mod = runtime.compile(SHIFTS.read_text(), engine="emu", filename=str(SHIFTS))
    m = 64
    a = rng.integers(-2**20, 2**20, m).astype(np.int32)
    b = rng.integers(-2**20, 2**20, m).astype(np.int32)
    n = rng.integers(0, 12, m).astype(np.int32)
    out = np.full(16 * m, -7, np.int32)
    mod.get_function("shift_precedence")((1,), (m,), (a, b, n, out))

    def i32_(v):  # C's conversion to a 32-bit int
        v &= 0xFFFFFFFF
        return v - (1 << 32) if v >> 31 else v
    want = []
    for i in range(m):
        x, y, k = int(a[i]), int(b[i]), int(n[i])
        ux, uy = x & 0xFFFFFFFF, y & 0xFFFFFFFF
        w = i32_(x << (max(k - 1, 0)))
        want += [i32_((x + y) << (k + 1)), i32_(x << k) & y, x & i32_(y << k), x | (y >> k) ^ x, int(x == i32_(y << k)),
                 i32_(x << k) if k & 1 else y >> k, i32_(ux << k), i32_(ux >> k), -x >> (k * 2 % 7), i32_(int(a[i ^ 1]) << k),
                 int(i32_(2 * x << k) < y), w, i32_(((uy << k) & 0xFFFFFFFF) >> 1), int(x < (y >> k)),
                 i32_(int(not x) << k) | (~y >> k), i32_(i32_(x << k) + (y >> k) - (i32_(x << k) >> k))]
    assert out.tolist() == want


def test_shift_the_emulator_cannot_rewrite_stops_the_kernel(rng):
    # a shift in a macro body with a bare parameter keeps C++'s undefined behaviour (x86 would give
    # another value than the GPU): never a silent wrong result, an error at its line
    mod = runtime.compile(SHIFTS.read_text(), engine="emu", filename=str(SHIFTS))
    c = rng.integers(0, 32, 32).astype(np.int32)
    out = np.zeros(64, np.uint32)
    mod.get_function("macro_mask")((1,), (32,), (c, out))
    assert out.tolist() == [(1 << int(k)) - 1 for k in c] * 2
    c[5] = 32
    with pytest.raises(EmulatorError, match=rf"shift by 32 at .*shifts.cu:{line_of(SHIFTS.read_text(), 'FIRST_LANES_BARE(c[')}: "
                                            r"the count is not below the width .*macro body"):
        mod.get_function("macro_mask")((1,), (32,), (c, out))


CG_SRC = r"""
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
namespace cg = cooperative_groups;
// a block sum through warp tiles, and per 8-thread tile: sum, max, ballot, votes, shuffles
extern "C" __global__ void cg_ops(const float* x, int n, float* block_sums, float* tile_sums, int* tile_max,
                                  unsigned* ballots, int* votes, float* moved) {
    cg::thread_block block = cg::this_thread_block();
    cg::thread_block_tile<32> warp = cg::tiled_partition<32>(block);
    cg::thread_block_tile<8> t8 = cg::tiled_partition<8>(warp);
    __shared__ float partial[32];
    int i = block.group_index().x * block.size() + block.thread_rank();
    float v = i < n ? x[i] : 0.0f;
    float ws = cg::reduce(warp, v, cg::plus<float>());
    if (warp.thread_rank() == 0) partial[warp.meta_group_rank()] = ws;
    block.sync();
    if (block.thread_rank() == 0) {
        float s = 0.0f;
        for (unsigned k = 0; k < warp.meta_group_size(); ++k) s += partial[k];
        block_sums[blockIdx.x] = s;
    }
    tile_sums[i] = cg::reduce(t8, v, cg::plus<float>());
    tile_max[i] = cg::reduce(t8, (int)(v * 100.0f), cg::greater<int>());
    ballots[i] = t8.ballot(v > 0.0f);
    votes[i] = t8.any(v > 1.0f) + 2 * t8.all(v > -1.0f) + 4 * t8.meta_group_rank() + 16 * t8.meta_group_size();
    moved[2 * i] = t8.shfl(v, 3);
    moved[2 * i + 1] = warp.shfl_xor(v, 5) + t8.shfl_down(v, 1) - t8.shfl_up(v, 2);
    cg::sync(t8);
}
extern "C" __global__ void cg_partial_tile(float* y) {
    cg::thread_block_tile<32> warp = cg::tiled_partition<32>(cg::this_thread_block());
    y[threadIdx.x] = warp.shfl(1.0f, 0);
}
extern "C" __global__ void cg_tile_after_return(float* y) {
    cg::thread_block_tile<16> t = cg::tiled_partition<16>(cg::this_thread_block());
    if (t.thread_rank() == 3) return;
    y[threadIdx.x] = cg::reduce(t, 1.0f, cg::plus<float>());
}
"""


def test_cooperative_groups(order, rng):
    mod = runtime.compile(CG_SRC, engine="emu", filename="cg.cu")
    grid, block, n = 3, 96, 250
    N = grid * block
    x = np.zeros(N, np.float32)
    x[:n] = rng.standard_normal(n)
    bs, ts, mv = nan_array(grid), nan_array(N), nan_array(2 * N)
    tm, bal, votes = np.full(N, -9, np.int32), np.zeros(N, np.uint32), np.full(N, -9, np.int32)
    mod.get_function("cg_ops")((grid,), (block,), (x[:n].copy(), i32(n), bs, ts, tm, bal, votes, mv))
    # fp32 sums, each within 1e-6 of the sum of its terms' magnitudes (3 block sums can all cancel to
    # near 0: relative to themselves, 1 draw in 2700 failed); NaN fails
    x64 = x.astype(np.float64)
    assert (np.abs(bs - x64.reshape(grid, -1).sum(1)) <= 1e-6 * np.abs(x64).reshape(grid, -1).sum(1)).all(), bs
    t = x.reshape(-1, 8)
    t64 = t.astype(np.float64)
    assert (np.abs(ts - np.repeat(t64.sum(1), 8)) <= 1e-6 * np.repeat(np.abs(t64).sum(1), 8)).all(), ts
    assert tm.tolist() == np.repeat((t * np.float32(100)).astype(np.int32).max(1), 8).tolist()
    assert bal.tolist() == np.repeat(((t > 0) * (1 << np.arange(8))).sum(1), 8).tolist()
    tile_in_warp = np.arange(N) % 32 // 8  # t8 is partitioned from a warp: 4 tiles
    assert votes.tolist() == (np.repeat((t > 1).any(1) + 2 * (t > -1).all(1), 8) + 4 * tile_in_warp + 16 * 4).tolist()
    lane8 = np.arange(N) % 8
    up = np.where(lane8 >= 2, np.roll(x, 2), x)
    down = np.where(lane8 <= 6, np.roll(x, -1), x)
    xor5 = x.reshape(-1, 32)[:, np.arange(32) ^ 5].ravel()
    assert rel_err(mv[0::2], np.repeat(t[:, 3], 8)) == 0
    assert rel_err(mv[1::2], xor5.astype(np.float64) + down - up) < 1e-6


def line_of(src: str, text: str) -> int:
    return src[:src.index(text)].count("\n") + 1


def test_cooperative_groups_checks(order):
    mod = runtime.compile(CG_SRC, engine="emu", filename="cg.cu")
    line = line_of(CG_SRC, "cg::tiled_partition<32>(cg::this_thread_block())")
    with pytest.raises(EmulatorError, match=rf"tiled_partition<32> at .*cg.cu:{line}: the parent group's 48 threads are not a multiple of 32"):
        mod.get_function("cg_partial_tile")((1,), (48,), (nan_array(48),))
    line = line_of(CG_SRC, "cg::reduce(t, 1.0f")
    with pytest.raises(EmulatorError, match=rf"__shfl_xor_sync at .*cg.cu:{line} .*lane 3 .*exited"):
        mod.get_function("cg_tile_after_return")((1,), (32,), (nan_array(32),))


@pytest.mark.parametrize("call", ["cg::this_grid().sync()", "cg::sync(cg::this_grid())", "cg::this_multi_grid()"])
def test_grid_sync_refused_by_design(call):
    src = ("#include <cooperative_groups.h>\nnamespace cg = cooperative_groups;\n"
           f'extern "C" __global__ void k(float* y) {{\n  y[0] = 1.0f;\n  {call};\n}}\n')
    with pytest.raises(emu.EmuCompileError, match=r"grid_sync.cu:5:.*not supported by the emulator, by design: it runs one block at a time"):
        runtime.compile(src, engine="emu", filename="grid_sync.cu")


COOP = HERE / "cuda" / "coop_groups.cu"


@pytest.fixture(scope="module")
def coop():
    return runtime.compile(COOP.read_text(), engine="emu", filename=str(COOP))


def test_thread_group_by_value_and_runtime_tiles(coop, order, rng):
    # simpleCooperativeGroups' sumReduction(thread_group g, ...) over the block, a tile<16> and a
    # run-time tiled_partition(block, 8)
    n = 64
    x = rng.integers(-1000, 1000, n).astype(np.int32)
    out = np.full(3 * n, -7, np.int32)
    coop.get_function("sums_through_thread_group")((1,), (n,), (x, out), shared_mem=n * 4)
    want = []
    for size, extra in ((n, 0), (16, 0), (8, 1000)):  # the run-time tile is a coalesced group (type 1)
        s = np.full(n, -1 + extra)
        s[::size] = x.reshape(-1, size).sum(1) + extra
        want += s.tolist()
    assert out.tolist() == want


def test_coalesced_threads_warp_aggregated_atomics(coop, order, rng):
    n = 3000
    x = rng.integers(-5, 9, n).astype(np.int32)
    dst, count = np.full(n, -99, np.int32), np.zeros(1, np.int32)
    coop.get_function("compact_positive")((3,), (160,), (x, i32(n), dst, count))
    assert count[0] == (x > 0).sum() and sorted(dst[:count[0]].tolist()) == sorted(x[x > 0].tolist())
    assert (dst[count[0]:] == -99).all()
    nb = 6
    b = rng.integers(0, nb, n).astype(np.int32)
    idx, counters = np.full(nb * n, -1, np.int32), np.zeros(nb, np.int32)
    coop.get_function("bucket_indices")((2,), (96,), (b, i32(n), idx, counters))
    for k in range(nb):
        assert sorted(idx[k * n:k * n + counters[k]].tolist()) == np.flatnonzero(b == k).tolist()


def test_coalesced_group_operations(coop, order, rng):
    # one pass through the branch, so the group is exactly the warp's lanes with x > 0
    N = 96
    x = rng.integers(-60, 100, N).astype(np.int32)
    outs = [np.full(N, -7, np.int32) for _ in range(2)] + [np.zeros(N, np.uint32)] + [np.full(N, -7, np.int32) for _ in range(5)]
    coop.get_function("coalesced_ops")((1,), (N,), (x, *outs))
    rank, size, ballot, up, down, total, parity, meta = outs
    for w in range(N // 32):
        v = x[32 * w:32 * w + 32]
        lanes = np.flatnonzero(v > 0)
        for r, lane in enumerate(lanes):
            i = 32 * w + lane
            assert (rank[i], size[i]) == (r, len(lanes))
            assert ballot[i] == sum(1 << k for k, m in enumerate(lanes) if v[m] > 50)
            assert up[i] == v[lanes[r - 1] if r >= 1 else lane] and down[i] == v[lanes[r + 2] if r + 2 < len(lanes) else lane]
            assert total[i] == v[lanes].sum()
        odd = (v & 1).astype(bool)
        assert parity[32 * w:32 * w + 32].tolist() == np.where(odd, v[odd].sum(), v[~odd].sum()).tolist()
        labels = np.fmod(v, 3)  # C's % keeps the dividend's sign
        leaders = sorted({int(np.flatnonzero(labels == l)[0]) for l in labels})
        split = odd.any() and not odd.all()
        want = [leaders.index(int(np.flatnonzero(labels == labels[k])[0])) + 10 * len(leaders)
                + (100 * int(odd[k]) + 2000 if split else 1000) for k in range(32)]
        assert meta[32 * w:32 * w + 32].tolist() == want
    untouched = x <= 0
    assert (rank[untouched] == -7).all() and (ballot[untouched] == 0).all()


def test_grid_group_sync_through_thread_group_is_an_error(coop):
    with pytest.raises(EmulatorError, match=rf"^thread_group::sync\(\) of a grid group at .*coop_groups.cu:"
                                            rf"{line_of(COOP.read_text(), 'out[g.thread_rank()]') + 1} is not supported by the emulator, by design"):
        coop.get_function("grid_through_thread_group")((2,), (32,), (np.zeros(64, np.int32),))


@pytest.mark.parametrize("code,what", [
    ("cg::this_grid().sync();", r"grid_group::sync\(\) is not supported by the emulator, by design"),
    ("cg::sync(cg::this_grid());", r"cooperative_groups::sync\(grid\) is not supported by the emulator, by design"),
    ("cg::this_grid().barrier_wait(cg::this_grid().barrier_arrive());", r"grid_group::barrier_(arrive|wait)\(\) is not supported"),
    ("cg::this_multi_grid();", r"this_multi_grid\(\) \(multi-grid groups\) is not supported"),
    ("auto c = cg::this_cluster();", r"this_cluster\(\) \(thread block clusters\) is not supported"),
    ("auto t = cg::tiled_partition<64>(cg::this_thread_block());", r"the emulator supports thread_block_tile<N> for N a power of two <= 32"),
    ("auto l = cg::labeled_partition(cg::coalesced_threads(), 0.5f);", r"labeled_partition: the label must be an integral or pointer type"),
])
def test_cooperative_groups_refusals_are_one_line(code, what):
    # named at the kernel's line, also from a device function inlined into it, never g++'s trail
    src = ("#include <cooperative_groups.h>\nnamespace cg = cooperative_groups;\n"
           f"__device__ void helper() {{\n  {code}\n}}\n"
           'extern "C" __global__ void k(float* y) {\n  helper();\n}\n')
    with pytest.raises(emu.EmuCompileError) as e:
        runtime.compile(src, engine="emu", filename="refused.cu")
    assert re.fullmatch(rf"refused.cu:4: {what}[^\n]*", str(e.value)), str(e.value)


def test_refusal_in_a_template_kernel_names_its_line():
    # reduction's multi_warp_cg_reduce: the source builds (block_tile_memory is accepted) until a
    # tile wider than a warp is instantiated, which is refused at the kernel's line
    src = ("#include <cooperative_groups.h>\nnamespace cg = cooperative_groups;\n"
           "template <unsigned B, unsigned W> __global__ void k(float* y) {\n"
           "  __shared__ cg::block_tile_memory<B> scratch;\n"
           "  auto tile = cg::tiled_partition<W>(cg::this_thread_block(scratch));\n"
           "  y[threadIdx.x] = tile.thread_rank();\n}\n")
    mod = runtime.compile(src, engine="emu", filename="wide.cu", name_expressions=["k<64, 32>"])
    y = np.full(64, -1.0, np.float32)
    mod.get_function("k<64, 32>")((1,), (64,), (y,))
    assert y.tolist() == (np.arange(64) % 32).tolist()
    with pytest.raises(emu.EmuCompileError) as e:
        runtime.compile(src, engine="emu", filename="wide.cu", name_expressions=["k<128, 64>"])
    assert re.fullmatch(r"wide.cu:5: the emulator supports thread_block_tile<N> for N a power of two <= 32 \(one warp\)",
                        str(e.value)), str(e.value)


@pytest.mark.parametrize("header,what", [("cooperative_groups/memcpy_async.h", "asynchronous copies are not supported"),
                                         ("helper_cuda.h", "no such header: the emulator provides .*cuda_runtime_api.h")])
def test_missing_headers_are_one_line(header, what):
    with pytest.raises(emu.EmuCompileError) as e:
        runtime.compile(f'#include <cuda_runtime_api.h>\n#include <{header}>\nextern "C" __global__ void k() {{}}\n',
                        engine="emu", filename="inc.cu")
    assert re.fullmatch(rf"inc.cu:2: #include <{re.escape(header)}>: {what}[^\n]*", str(e.value)), str(e.value)


def write_headers(root: Path) -> Path:
    """A kernel whose shared memory is declared in headers: the CUDA samples' SharedMemory<T> in
    a header included by a relative path, a block reduction in one found through -I."""
    (root / "detail").mkdir(parents=True, exist_ok=True)
    (root / "inc").mkdir(exist_ok=True)
    (root / "detail" / "smem.cuh").write_text(textwrap.dedent("""\
        #pragma once
        // dynamic shared memory of any type, as the CUDA samples spell it
        template <class T> struct SharedMemory {
            __device__ inline operator T*() {
                extern __shared__ int s_int[];
                return (T*)s_int;
            }
        };
        template <> struct SharedMemory<double> {
            __device__ inline operator double*() {
                extern __shared__ double s_double[];
                return (double*)s_double;
            }
        };
        """))
    (root / "helper.cuh").write_text('#pragma once\n#include "detail/smem.cuh"\n')
    (root / "inc" / "warp_total.cuh").write_text(textwrap.dedent("""\
        #ifndef WARP_TOTAL_CUH
        #define WARP_TOTAL_CUH
        #include "../detail/smem.cuh"
        // the sum over the block of one value per thread, through a static shared array
        template <class T> __device__ T block_total(T v) {
            __shared__ T warp_part[32];
            for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
            if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = v;
            __syncthreads();
            T s = 0;
            for (unsigned w = 0; w < blockDim.x / 32; ++w) s += warp_part[w];
            return s;
        }
        #endif
        """))
    main = root / "hdr_kernel.cu"
    main.write_text(textwrap.dedent("""\
        #include "helper.cuh"
        #include <warp_total.cuh>
        #include "helper.cuh"
        // y[i] = x[i] - mean of x over the block, staged through dynamic shared memory
        extern "C" __global__ void center(const double* x, double* y) {
            double* s = SharedMemory<double>();
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            s[threadIdx.x] = x[i];
            double mean = block_total(x[i]) / blockDim.x;
            y[i] = s[threadIdx.x] - mean;
        }
        extern "C" __global__ void bad_index(int* y) {
            int* s = SharedMemory<int>();
            s[threadIdx.x] = (int)threadIdx.x;
            __syncthreads();
            y[threadIdx.x] = s[threadIdx.x ^ 1];
        }
        """))
    return main


def test_extern_shared_in_included_headers(order, rng, tmp_path):
    main = write_headers(tmp_path)
    mod = runtime.compile(main.read_text(), engine="emu", options=(f"-I{tmp_path / 'inc'}",), filename=str(main))
    grid, block = 3, 64
    x = rng.standard_normal(grid * block)
    y = aligned(np.full(grid * block, np.nan))
    mod.get_function("center")((grid,), (block,), (x, y), shared_mem=block * 8)
    xb = x.reshape(grid, block)
    assert rel_err(y, (xb - xb.mean(1, keepdims=True)).ravel()) < 1e-12
    yi = np.zeros(64, np.int32)
    mod.get_function("bad_index")((1,), (64,), (yi,), shared_mem=64 * 4)
    assert yi.tolist() == (np.arange(64) ^ 1).tolist()


def test_header_errors_name_the_header(tmp_path):
    main = write_headers(tmp_path)
    (tmp_path / "detail" / "smem.cuh").write_text(
        "#pragma once\n\n__device__ float* two() { extern __shared__ float a[]; extern __shared__ float b[32]; return a; }\n")
    with pytest.raises(emu.EmuCompileError, match=r"^\S*smem.cuh:3: `extern __shared__` declares dynamic shared memory, which must be "
                                                  r"unsized arrays[^\n]*$"):
        runtime.compile(main.read_text(), engine="emu", options=(f"-I{tmp_path / 'inc'}",), filename=str(main))
    (tmp_path / "detail" / "smem.cuh").write_text("#pragma once\n\n__device__ float* two() {\n  return undefined_name; }\n")
    with pytest.raises(emu.EmuCompileError, match=r"smem.cuh:4:\d+: error: .undefined_name. was not declared"):
        runtime.compile(main.read_text(), engine="emu", options=(f"-I{tmp_path / 'inc'}",), filename=str(main))


EXTERN_FORMS = HERE / "cuda" / "extern_shared_forms.cu"


def test_extern_shared_written_any_way_nvcc_accepts(order, rng):
    # several declarations or names on a line, code around them, split over lines, __align__, file
    # scope, an extern "C" block, a macro body, a header, `T name[][N]`: all one dynamic buffer
    mod = runtime.compile(EXTERN_FORMS.read_text(), engine="emu", filename=str(EXTERN_FORMS))
    grid, block = 3, 64
    n = grid * block
    x = rng.standard_normal(n).astype(np.float32)
    out = nan_array(4 * n)
    mod.get_function("reverse_through_every_name")((grid,), (block,), (x, out, i32(n)), shared_mem=block * 4)
    rev = x.reshape(grid, block)[:, ::-1].ravel()
    assert out.reshape(4, n).tolist() == [rev.tolist()] * 4
    x = rng.standard_normal(5 * 64).astype(np.float32)
    out = nan_array(5 * 64)
    mod.get_function("transpose_tile")((5,), (8, 8), (x, out), shared_mem=8 * 9 * 4)
    assert out.tolist() == x.reshape(5, 8, 8).transpose(0, 2, 1).ravel().tolist()


def test_extern_shared_lines_stay_and_refusals_name_them(tmp_path):
    # the emulator's rewriting keeps every line where it was: an error after a split declaration
    # at file scope is reported at its own line
    src = ('extern __shared__ float a[]; __device__ float f(int i) { return a[i]; }\n'
           'extern __shared__\n   float b[],\n   c[];\n'
           'extern "C" __global__ void k(float* y) { y[0] = f(0) + b[0] + c[0]; }\n'
           'extern "C" __global__ void broken(float* y) { y[0] = undeclared; }\n')
    with pytest.raises(emu.EmuCompileError, match=r"forms.cu:6:\d+: error: .undeclared. was not declared"):
        runtime.compile(src, engine="emu", filename="forms.cu")
    with pytest.raises(emu.EmuCompileError, match=r"^scalar.cu:2: `extern __shared__` declares dynamic shared memory, which "
                                                  r"must be unsized arrays[^\n]*$"):
        runtime.compile('extern "C" __global__ void k(float* y) {\n  extern __shared__ float s;\n  y[0] = s; }\n',
                        engine="emu", filename="scalar.cu")
