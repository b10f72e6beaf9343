// dropout.cu - inverted dropout with a counter-based RNG: forward and backward.
//
// x, out, dout, dx are any shape with n elements. Element i is kept when its 24-bit draw
// k(seed, i) >= threshold = ceil(p * 2^24), i.e. k / 2^24 >= p exactly (the host computes the
// integer: p rounded to fp32 would keep a draw the float64 p drops), and then scaled by
// scale = 1/(1-p), so inference needs no dropout at all. The draw depends only
// on (seed, i): backward recomputes the mask instead of storing it, and every engine (the NumPy
// reference included) draws the same numbers. Gradients are written (=).
#include "common.cuh"

// splitmix64 of seed*golden + i; the top 24 bits (a uniform draw in [0, 2^24)).
__device__ __forceinline__ unsigned int dropout_bits(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed * 0x9E3779B97F4A7C15ull + i + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (unsigned int)(z >> 40);
}

// One thread per element, a 1-D grid over n.
extern "C" __global__ void dropout_forward_kernel1(const float* x, float* out, int n, unsigned int threshold, float scale,
                                                   unsigned long long seed) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = dropout_bits(seed, i) >= threshold ? x[i] * scale : 0.0f;
}

// dx = dout masked and scaled exactly as forward masked and scaled x.
extern "C" __global__ void dropout_backward_kernel1(const float* dout, float* dx, int n, unsigned int threshold, float scale,
                                                    unsigned long long seed) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dx[i] = dropout_bits(seed, i) >= threshold ? dout[i] * scale : 0.0f;
}

// Variant 2: the seed is read from device memory (seed[0]), so a step captured once as a CUDA
// graph draws a fresh mask on every replay (a kernel argument would be frozen into the graph).
extern "C" __global__ void dropout_forward_kernel2(const float* x, float* out, int n, unsigned int threshold, float scale,
                                                   const unsigned long long* seed) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = dropout_bits(*seed, i) >= threshold ? x[i] * scale : 0.0f;
}

extern "C" __global__ void dropout_backward_kernel2(const float* dout, float* dx, int n, unsigned int threshold, float scale,
                                                    const unsigned long long* seed) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dx[i] = dropout_bits(*seed, i) >= threshold ? dout[i] * scale : 0.0f;
}
