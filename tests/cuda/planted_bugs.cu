// Kernels with planted bugs: the emulator must catch each one. Lines marked BUG-<name> are the
// lines the error messages must name.

// y[i] = x[i-1] through shared memory, with the barrier missing: forward order hides it (thread
// i-1 has always written before thread i reads), reverse and random orders expose it.
extern "C" __global__ void shift_no_barrier(const float* x, float* y, int n) {
    extern __shared__ float s[];
    int t = threadIdx.x;
    s[t] = t < n ? x[t] : 0.0f;
    // __syncthreads(); is missing here
    if (t > 0 && t < n) y[t] = s[t - 1];
    if (t == 0) y[0] = 0.0f;
}

// the same, correct
extern "C" __global__ void shift_with_barrier(const float* x, float* y, int n) {
    extern __shared__ float s[];
    int t = threadIdx.x;
    s[t] = t < n ? x[t] : 0.0f;
    __syncthreads();
    if (t > 0 && t < n) y[t] = s[t - 1];
    if (t == 0) y[0] = 0.0f;
}

// half the block waits at one barrier, half at another
extern "C" __global__ void divergent_barrier(float* y) {
    if (threadIdx.x < 16) {
        __syncthreads();  // BUG-divergent-a
    } else {
        __syncthreads();  // BUG-divergent-b
    }
    y[threadIdx.x] = 1.0f;
}

// early return, then a barrier the returned threads never reach
extern "C" __global__ void return_before_barrier(float* y, int n) {
    int t = threadIdx.x;
    if (t >= n) return;
    __syncthreads();  // BUG-return-barrier
    y[t] = 1.0f;
}

// a full-mask warp reduction after an early return
extern "C" __global__ void shuffle_after_return(const float* x, float* y, int n) {
    int t = threadIdx.x;
    if (t >= n) return;
    float v = x[t];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);  // BUG-shuffle
    if (t == 0) y[0] = v;
}

// lane 0 waits at __syncthreads while the rest of its warp waits at a shuffle
extern "C" __global__ void warp_deadlock(float* y) {
    float v = 1.0f;
    if (threadIdx.x == 0) __syncthreads();
    else v = __shfl_sync(0xffffffffu, v, 0);
    y[threadIdx.x] = v;
}

// full mask in a warp that has only 16 threads (block of 48)
extern "C" __global__ void mask_names_missing_lanes(float* y) {
    float v = __shfl_xor_sync(0xffffffffu, 1.0f, 1);  // BUG-missing-lanes
    y[threadIdx.x] = v;
}

extern "C" __global__ void failing_assert(const int* x, int n) {
    int t = threadIdx.x;
    if (t < n) assert(x[t] >= 0);  // BUG-assert
}

// writes one element past the end
extern "C" __global__ void out_of_bounds(float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 1.0f;  // BUG-oob
}
