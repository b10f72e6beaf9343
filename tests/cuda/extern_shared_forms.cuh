#pragma once
// Dynamic shared memory declared the ways nvcc accepts it, in a header: two declarations and other
// code on one line, several names in one declaration, file scope sharing a line with a function,
// attributes, and a declaration inside a macro body (the CUDA samples' SharedMemory<T> pattern).
__device__ inline float* smem_f() { extern __shared__ float s_f[]; return s_f; } __device__ inline int* smem_i() { extern __shared__ int s_i[], s_j[]; return s_j; }
extern __shared__ __align__(16) float4 g_vec[]; __device__ inline float4* smem_v() { return g_vec; }
#define SMEM_ACCESSOR(T, name)                  \
    __device__ inline T* smem_##name() {        \
        extern __shared__ T name[];             \
        return name;                            \
    }
SMEM_ACCESSOR(unsigned, s_u)
