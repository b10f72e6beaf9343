// Kernels with planted bugs for the sanitizer tools (unetcu sanitize), each next to its correct
// twin. Lines marked BUG-<name> are the lines the reports must name.
#define TILE 16

// C[M,N] = A[M,K] @ B[K,N], 16x16 tiles through shared memory. sync_load / sync_use switch the two
// barriers: without the first, a thread reads a tile element another thread has not written yet
// (RAW); without the second, the next tile's load overwrites elements others still read (WAR).
__device__ void tiled_gemm(const float* A, const float* B, float* C, int M, int N, int K, bool sync_load, bool sync_use) {
    __shared__ float As[TILE][TILE];
    __shared__ float Bs[TILE][TILE];
    int tx = threadIdx.x, ty = threadIdx.y;
    int row = blockIdx.y * TILE + ty, col = blockIdx.x * TILE + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        As[ty][tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : 0.0f;  // BUG-gemm-write-a
        Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(k0 + ty) * N + col] : 0.0f;
        if (sync_load) __syncthreads();
        for (int k = 0; k < TILE; ++k) acc += As[ty][k] * Bs[k][tx];  // BUG-gemm-read
        if (sync_use) __syncthreads();
    }
    if (row < M && col < N) C[row * N + col] = acc;
}
extern "C" __global__ void gemm_ok(const float* A, const float* B, float* C, int M, int N, int K) {
    tiled_gemm(A, B, C, M, N, K, true, true);
}
extern "C" __global__ void gemm_no_sync_after_load(const float* A, const float* B, float* C, int M, int N, int K) {
    tiled_gemm(A, B, C, M, N, K, false, true);
}
extern "C" __global__ void gemm_no_sync_after_use(const float* A, const float* B, float* C, int M, int N, int K) {
    tiled_gemm(A, B, C, M, N, K, true, false);
}

// The last warp of a block sum through shared memory, the pre-Volta way: lanes read what other lanes
// wrote with nothing between but the assumption of lockstep. with_syncwarp puts __syncwarp() where
// independent thread scheduling needs it.
__device__ void warp_sum(const float* x, float* y, bool with_syncwarp) {
    __shared__ float s[64];
    int t = threadIdx.x;
    s[t] = x[blockIdx.x * 64 + t];
    __syncthreads();
    if (t < 32) {
        for (int off = 32; off > 0; off >>= 1) {
            float v = s[t] + (t + off < 64 ? s[t + off] : 0.0f);  // BUG-warp-read
            if (with_syncwarp) __syncwarp();
            s[t] = v;  // BUG-warp-write
            if (with_syncwarp) __syncwarp();
        }
        if (t == 0) y[blockIdx.x] = s[0];
    }
}
extern "C" __global__ void warp_sum_ok(const float* x, float* y) { warp_sum(x, y, true); }
extern "C" __global__ void warp_sum_no_syncwarp(const float* x, float* y) { warp_sum(x, y, false); }

// Global memory: every thread adds into y[0] without an atomic (a race); the atomic version is fine.
extern "C" __global__ void global_sum_plain(const float* x, float* y, int n) {
    int i = threadIdx.x;
    if (i < n) y[0] += x[i];  // BUG-global-race
}
extern "C" __global__ void global_sum_atomic(const float* x, float* y, int n) {
    int i = threadIdx.x;
    if (i < n) atomicAdd(y, x[i]);
}

// Each thread reads its neighbour's shared slot; only the first `written` threads write theirs.
extern "C" __global__ void read_unwritten_shared(float* y, int written) {
    extern __shared__ float s[];
    int t = threadIdx.x;
    if (t < written) s[t] = (float)t;
    __syncthreads();
    y[t] = s[(t + 1) % blockDim.x];  // BUG-uninit-shared
}
// A static __shared__ array read where nobody wrote it.
extern "C" __global__ void read_unwritten_static_shared(float* y) {
    __shared__ float table[64];
    int t = threadIdx.x;
    if (t % 2 == 0) table[t] = 1.0f;
    __syncthreads();
    y[t] = table[t ^ 1];  // BUG-uninit-static
}

// y = x + scratch, where the caller never filled scratch.
extern "C" __global__ void add_scratch(const float* x, const float* scratch, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] + scratch[i];  // BUG-uninit-global
}
// The same buffer, written first by this kernel: clean.
extern "C" __global__ void fill_then_add(const float* x, float* scratch, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { scratch[i] = 2.0f * x[i]; y[i] = x[i] + scratch[i]; }
}

// A float4 load at x + offset: misaligned unless offset is a multiple of 4 floats.
extern "C" __global__ void load_float4(const float* x, float* y, int offset) {
    int i = threadIdx.x;
    float4 v = reinterpret_cast<const float4*>(x + offset)[i];  // BUG-misaligned
    y[i] = v.x + v.y + v.z + v.w;
}

// A static __shared__ array written one past its end by the last thread of a 33-thread block.
extern "C" __global__ void static_shared_overflow(float* y) {
    __shared__ float row[32];
    int t = threadIdx.x;
    row[t] = (float)t;  // BUG-static-oob
    __syncthreads();
    y[t] = row[t % 32];
}

// synccheck: __syncwarp whose mask names lanes that returned.
extern "C" __global__ void syncwarp_exited_lanes(float* y) {
    int t = threadIdx.x;
    if (t >= 16) return;
    y[t] = 1.0f;
    __syncwarp();  // BUG-syncwarp-exited
}
// synccheck: __syncthreads inside a branch that splits every warp.
extern "C" __global__ void barrier_in_divergent_warp(float* y) {
    int t = threadIdx.x;
    if (t % 2 == 0) {
        y[t] = 1.0f;
        __syncthreads();  // BUG-divergent-warp
    }
    y[t] += 1.0f;
}
