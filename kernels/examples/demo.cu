// demo.cu - small kernels that exercise every mechanism the layer kernels rely on: shared-memory
// tiles with __syncthreads, warp shuffles, float atomics and wmma tensor cores. They are the
// emulator's demo (`unetcu demo`) and its tests' subjects; each is checked against NumPy.
#include <mma.h>

// C = A @ B. A is (M, K), B is (K, N), C is (M, N), all row-major float32.
// One thread per C element; a 16x16 block stages 16x16 tiles of A and B in shared memory, so each
// global element is read M/16 (or N/16) times instead of K times.
#define TILE 16
extern "C" __global__ void sgemm_tiled_kernel1(const float* A, const float* B, float* C, int M, int N, int K) {
    __shared__ float As[TILE][TILE];
    __shared__ float Bs[TILE][TILE];
    int row = blockIdx.y * TILE + threadIdx.y;
    int col = blockIdx.x * TILE + threadIdx.x;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        // out-of-range elements load as 0 so the tile loop needs no bounds checks
        As[threadIdx.y][threadIdx.x] = (row < M && k0 + threadIdx.x < K) ? A[row * K + k0 + threadIdx.x] : 0.0f;
        Bs[threadIdx.y][threadIdx.x] = (col < N && k0 + threadIdx.y < K) ? B[(k0 + threadIdx.y) * N + col] : 0.0f;
        __syncthreads();
        for (int k = 0; k < TILE; ++k) acc += As[threadIdx.y][k] * Bs[k][threadIdx.x];
        __syncthreads();  // the next iteration overwrites the tiles
    }
    if (row < M && col < N) C[row * N + col] = acc;
}

// out[0] += sum(x). x is (n,). Grid-stride loop per thread, a warp-shuffle reduction per warp, the
// warps' partial sums through shared memory, one float atomicAdd per block.
extern "C" __global__ void reduce_sum_kernel1(const float* x, float* out, int n) {
    __shared__ float warp_sums[32];
    float s = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) s += x[i];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = s;
    __syncthreads();
    if (warp == 0) {
        int nwarps = blockDim.x / 32;
        s = lane < nwarps ? warp_sums[lane] : 0.0f;
        for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
        if (lane == 0) atomicAdd(out, s);
    }
}

// Row-wise softmax. x, y are (rows, cols); one warp per row (blockDim.x == 32, blockDim.y rows per
// block). Max and sum are butterfly reductions (__shfl_xor_sync), so every lane ends with the result.
extern "C" __global__ void softmax_rows_kernel1(const float* x, float* y, int rows, int cols) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    bool live = row < rows;  // no early return: the shuffles below need all 32 lanes
    const float* xr = x + (size_t)(live ? row : 0) * cols;
    float m = -__int_as_float(0x7f800000);
    for (int c = lane; live && c < cols; c += 32) m = fmaxf(m, xr[c]);
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    float s = 0.0f;
    for (int c = lane; live && c < cols; c += 32) s += __expf(xr[c] - m);
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    for (int c = lane; live && c < cols; c += 32) y[(size_t)row * cols + c] = __expf(xr[c] - m) / s;
}

// C = A @ B on tensor cores in tf32 with fp32 accumulation. A (M, K), B (K, N), C (M, N) row-major,
// M and N multiples of 16, K a multiple of 8, rows 32-byte aligned (lda, ldb, ldc multiples of 8).
// One warp per 16x16 tile of C; inputs rounded to tf32 with __float_to_tf32 (round to nearest).
extern "C" __global__ void wmma_tf32_gemm_kernel1(const float* A, const float* B, float* C, int M, int N, int K) {
    using namespace nvcuda;
    int tm = blockIdx.y * 16, tn = blockIdx.x * 16;
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
    wmma::fill_fragment(c, 0.0f);
    for (int k = 0; k < K; k += 8) {
        wmma::load_matrix_sync(a, A + (size_t)tm * K + k, K);
        wmma::load_matrix_sync(b, B + (size_t)k * N + tn, N);
        for (int i = 0; i < a.num_elements; ++i) a.x[i] = wmma::__float_to_tf32(a.x[i]);
        for (int i = 0; i < b.num_elements; ++i) b.x[i] = wmma::__float_to_tf32(b.x[i]);
        wmma::mma_sync(c, a, b, c);
    }
    wmma::store_matrix_sync(C + (size_t)tm * N + tn, c, N, wmma::mem_row_major);
}
