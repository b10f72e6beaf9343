// tests/test_emulator.py: every way of declaring dynamic shared memory names the same buffer.
#include "extern_shared_forms.cuh"

extern "C" { extern __shared__ float g_in_block[]; }

// out is (4, n): each block reverses its slice of x through the dynamic buffer, written through
// one declaration and read back through four others
extern "C" __global__ void reverse_through_every_name(const float* x, float* out, int n) {
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t, r = blockIdx.x * blockDim.x + blockDim.x - 1 - t;
    extern
        __shared__ __align__(sizeof(float4))
        float
        split[];
    split[t] = x[i];
    __syncthreads();
    out[r] = smem_f()[t];
    out[n + r] = ((const float*)smem_v())[t];
    out[2 * n + r] = __int_as_float(smem_i()[t]);
    out[3 * n + r] = __uint_as_float(smem_s_u()[t]) + g_in_block[t] - split[t];
}

// out is the transpose of each block's 8 x 8 tile of x, staged in a `T name[][N]` array
extern "C" __global__ void transpose_tile(const float* x, float* out) {
    extern __shared__ float tile[][8 + 1];  // padded rows, as against bank conflicts
    int b = blockIdx.x * 64;
    tile[threadIdx.y][threadIdx.x] = x[b + threadIdx.y * 8 + threadIdx.x];
    __syncthreads();
    out[b + threadIdx.y * 8 + threadIdx.x] = tile[threadIdx.x][threadIdx.y];
}
