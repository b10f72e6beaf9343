"""Planted access patterns whose Nsight Compute counts are known; tests/test_profile.py runs this
file under `unetcu profile --json` and checks every count."""
import numpy as np

from unetcu.engines import emu, runtime

SRC = r'''
extern "C" __global__ void load_stride(const float* x, float* y, int stride, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[(size_t)i * stride];
}
extern "C" __global__ void load_float4(const float4* x, float4* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
}
// a 32x32 tile written by rows, read by columns (pad 0: every lane of a column read hits one bank;
// pad 1: the rows are 33 words apart, so a column falls on 32 banks), or every lane reading word 0
extern "C" __global__ void shared_tile(const float* x, float* y, int pad, int broadcast) {
    __shared__ float tile[32 * 33];
    int tx = threadIdx.x, ld = 32 + pad;
    for (int r = 0; r < 32; ++r) tile[r * ld + tx] = x[r * 32 + tx];
    __syncthreads();
    float s = 0.0f;
    for (int c = 0; c < 32; ++c) s += broadcast ? tile[c] : tile[tx * ld + c];
    y[tx] = s;
}
// 8- and 16-byte shared reads of consecutive elements: served by half- and quarter-warps
extern "C" __global__ void shared_vec(const float* x, float* y) {
    __shared__ __align__(16) float buf[32 * 4];
    int t = threadIdx.x;
    for (int k = 0; k < 4; ++k) buf[k * 32 + t] = x[k * 32 + t];
    __syncthreads();
    float2 a = reinterpret_cast<const float2*>(buf)[t];
    float4 b = reinterpret_cast<const float4*>(buf)[t];
    y[t] = a.x + a.y + b.x + b.y + b.z + b.w;
}
extern "C" __global__ void divergent(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && (threadIdx.x & 1) == 0) y[i] = x[i];
}
// a 32-byte struct per lane: nvcc copies it as two 16-byte loads and stores
struct Eight { float v[8]; };
extern "C" __global__ void copy_struct(const float* x, float* y) {
    reinterpret_cast<Eight*>(y)[threadIdx.x] = reinterpret_cast<const Eight*>(x)[threadIdx.x];
}
// dynamic shared memory, so that the next launch without it finds that buffer freed
extern "C" __global__ void dynamic_shared(const float* x, float* y) {
    extern __shared__ float buf[];
    buf[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = buf[31 - threadIdx.x];
}
// The README's example: a naive GEMM whose lanes differ in the row they walk along k, and a
// 32x32 shared-memory tiled one; C (M x N) = A (M x K) @ B (K x N), row-major, M, N, K multiples of 32
extern "C" __global__ void gemm_naive(const float* A, const float* B, float* C, int M, int N, int K) {
    int row = blockIdx.x * 32 + threadIdx.x, col = blockIdx.y * 32 + threadIdx.y;
    float s = 0.0f;
    for (int k = 0; k < K; ++k) {
        float a = A[row * K + k];  // the lanes' rows are K floats apart: a sector each
        float b = B[k * N + col];  // one column per warp: a broadcast
        s += a * b;
    }
    C[row * N + col] = s;
}
extern "C" __global__ void gemm_tiled(const float* A, const float* B, float* C, int M, int N, int K) {
    __shared__ float As[32][32], Bs[32][32];
    int tx = threadIdx.x, ty = threadIdx.y, row = blockIdx.y * 32 + ty, col = blockIdx.x * 32 + tx;
    float s = 0.0f;
    for (int k0 = 0; k0 < K; k0 += 32) {
        As[ty][tx] = A[row * K + k0 + tx];
        Bs[ty][tx] = B[(k0 + ty) * N + col];
        __syncthreads();
        for (int k = 0; k < 32; ++k) s += As[ty][k] * Bs[k][tx];
        __syncthreads();
    }
    C[row * N + col] = s;
}
'''

if __name__ == "__main__":
    import sys
    engine = sys.argv[sys.argv.index("--engine") + 1] if "--engine" in sys.argv else "emu"  # cuda: for ncu
    m = runtime.compile(SRC, engine=engine, filename="planted.cu")
    if engine == "cuda":  # the same launches on the GPU, arrays moved there (cudaMalloc aligns to 256)
        import cupy
        _launch = m.get_function

        class _Cuda:
            def get_function(self, name):
                k = _launch(name)

                def call(grid, block, args):
                    dev = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
                    k(grid, block, tuple(dev))
                    for a, d in zip(args, dev):  # results back, so the checks below hold on both
                        if isinstance(a, np.ndarray):
                            a[...] = cupy.asnumpy(d)
                return call
        m = _Cuda()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(64 * 32).astype(np.float32)
    y = np.zeros(64, np.float32)
    for stride in (1, 2, 32):
        m.get_function("load_stride")((2,), (32,), (x, y, np.int32(stride), np.int32(64)))
        assert np.array_equal(y, x[::stride][:64]), "load_stride computed wrongly under the profiler"
    x4, y4 = emu.aligned(rng.standard_normal(64 * 4).astype(np.float32)), emu.aligned(np.zeros(64 * 4, np.float32))
    m.get_function("load_float4")((2,), (32,), (x4, y4, np.int32(64)))
    assert np.array_equal(x4, y4)
    t, yt = rng.standard_normal(32 * 32).astype(np.float32), np.zeros(32, np.float32)
    for pad, bc in ((0, 0), (1, 0), (0, 1)):
        m.get_function("shared_tile")((1,), (32,), (t, yt, np.int32(pad), np.int32(bc)))
    m.get_function("shared_vec")((1,), (32,), (t, yt))
    yp = np.zeros(100, np.float32)
    m.get_function("load_stride")((3,), (48,), (x, yp, np.int32(1), np.int32(100)))  # partial warps and block
    assert np.array_equal(yp, x[:100])
    m.get_function("divergent")((1,), (32,), (x, y, np.int32(32)))
    x8, y8 = rng.standard_normal(32 * 8).astype(np.float32), np.zeros(32 * 8, np.float32)
    m.get_function("copy_struct")((1,), (32,), (x8, y8))
    assert np.array_equal(x8, y8)
    m.get_function("dynamic_shared")((1,), (32,), (x8, y8), shared_mem=40000)
    # fresh arrays may take the freed dynamic buffer's address: they are global memory all the same
    x2, y2 = rng.standard_normal(10000).astype(np.float32), np.zeros(10000, np.float32)
    m.get_function("load_stride")((40,), (256,), (x2, y2, np.int32(1), np.int32(10000)))
    assert np.array_equal(x2, y2)
    n = 64
    a, b = rng.standard_normal((n, n)).astype(np.float32), rng.standard_normal((n, n)).astype(np.float32)
    for name in ("gemm_naive", "gemm_tiled"):
        c = np.zeros((n, n), np.float32)
        m.get_function(name)((n // 32, n // 32), (32, 32), (a, b, c, np.int32(n), np.int32(n), np.int32(n)))
        assert np.allclose(c, a @ b, atol=1e-4), name
