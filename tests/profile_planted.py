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
'''

if __name__ == "__main__":
    m = runtime.compile(SRC, engine="emu", filename="planted.cu")
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
