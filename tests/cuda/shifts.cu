// tests/test_emulator.py, tests/test_sanitize.py: shifts by counts the GPU clamps. C++ leaves a
// count not below the width undefined; nvcc emits PTX shl/shr, whose count clamps to the width.
#include "shift_helpers.cuh"

// out is (10, n): value x[i] (or its low bits) shifted by count c[i] in each integer type
extern "C" __global__ void shift_every_type(const int* x, const int* c, int* o32, unsigned* u32,
                                            long long* o64, unsigned long long* u64, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int v = x[i], k = c[i];
    o32[i] = v << k;
    o32[n + i] = v >> k;                       // arithmetic: the sign fills in
    u32[i] = (unsigned)v << k;
    u32[n + i] = (unsigned)v >> k;
    o64[i] = (long long)v << k;
    o64[n + i] = (long long)v >> k;
    u64[i] = (unsigned long long)(unsigned)v << k;
    u64[n + i] = (unsigned long long)(unsigned)v >> k;
    unsigned char b = (unsigned char)v;
    o32[2 * n + i] = b << k;                   // promoted to int first
    int w = v; w <<= k; o32[3 * n + i] = w;    // compound assignment
    unsigned z = (unsigned)v; z >>= (k & 1) ? k : k + 1; u32[2 * n + i] = z;
    o32[4 * n + i] = lane_mask(k);             // a device function in a header
}

// simpleAtomicIntrinsics' OR: bit tid of one word for every thread of the grid
extern "C" __global__ void or_bits(int* word) {
    unsigned tid = blockDim.x * blockIdx.x + threadIdx.x;
    atomicOr(word, 1 << tid);
}

// a shift in a macro body is rewritten where the expansion cannot change its operands (the
// parameter in parentheses); with a bare parameter (n could be `c ? 1 : 2`) it is left alone and
// g++'s check stops the kernel at its line instead
#define FIRST_LANES(n) ((1u << (n)) - 1u)
#define FIRST_LANES_BARE(n) ((1u << n) - 1u)
extern "C" __global__ void macro_mask(const int* c, unsigned* out) {
    out[threadIdx.x] = FIRST_LANES(c[threadIdx.x]);
    __syncthreads();  // every thread has its first mask before any stops at the second
    out[blockDim.x + threadIdx.x] = FIRST_LANES_BARE(c[threadIdx.x]);
}

// shifts among other operators: each must keep C++'s precedence once the emulator makes it a call
__device__ inline int twice(int v) { return 2 * v; }
extern "C" __global__ void shift_precedence(const int* a, const int* b, const int* n, int* out) {
    int i = threadIdx.x, x = a[i], y = b[i], k = n[i], *o = out + 16 * i;
    o[0] = x + y << k + 1;
    o[1] = x << k & y;
    o[2] = x & y << k;
    o[3] = x | y >> k ^ x;
    o[4] = x == y << k;
    o[5] = k & 1 ? x << k : y >> k;
    o[6] = unsigned(x) << k;
    o[7] = (unsigned)x >> k;
    o[8] = -x >> k * 2 % 7;
    o[9] = a[i ^ 1] << k;
    o[10] = twice(x) << k < y;
    int w = x; w <<= k - 1 < 0 ? 0 : k - 1; o[11] = w;
    o[12] = static_cast<unsigned>(y) << k >> 1;
    o[13] = x < y >> k;
    o[14] = !x << k | ~y >> k;
    o[15] = (x << k) + (y >> k) - (x << k >> k);
}
