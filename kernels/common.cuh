// common.cuh - helpers shared by the op kernels.
#pragma once

// Conventions for every kernel file:
//  - arrays are NCHW float32, C-contiguous; weights in PyTorch's layouts;
//  - parameter gradients are accumulated (+=), activation gradients are written (=);
//  - sizes are int (the largest U-Net tensor, 64 x 570 x 570 x batch, is far below 2^31 for batch < 100);
//  - a kernel's comment states its shapes and its parallel decomposition.

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

// Sum over the 32 lanes of a warp; every lane gets the result. All 32 lanes must call it.
__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread must call
// it, and thread 0 gets the result. `scratch` is 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (threadIdx.x < (blockDim.x >> 5)) ? scratch[lane] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    return v;
}

// 16-byte loads. The caller checks alignment once (aligned16, uniform per block). A misaligned
// float4 load faults on a GPU but not on the emulator's CPU, so the emulator checks every one.
__device__ __forceinline__ bool aligned16(const void* p) { return ((size_t)p & 15) == 0; }
__device__ __forceinline__ float4 load_float4(const float* p) {
#ifdef UNETCU_EMU
    assert(aligned16(p));
#endif
    return *reinterpret_cast<const float4*>(p);
}
