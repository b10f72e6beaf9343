// conv1x1.cu - the 1x1 convolution of the head (64 features -> classes): forward (+bias),
// backward-data, backward-weight (+bias).
//
// x is (N, C, H, W), w is (K, C, 1, 1), b is (K,), out is (N, K, H, W):
// out[n,k,p] = b[k] + sum_c w[k,c] * x[n,c,p]. Activation gradients are written (=), parameter
// gradients accumulated (+=).
#include "common.cuh"

// One thread per output element, a 1-D grid over N*K*H*W.
extern "C" __global__ void conv1x1_forward_kernel1(const float* x, const float* w, const float* b, float* out,
                                                   int N, int C, int HW, int K) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * K * HW) return;
    int p = idx % HW, k = (idx / HW) % K, n = idx / (HW * K);
    const float* xp = x + (size_t)n * C * HW + p;
    float acc = b[k];
    for (int c = 0; c < C; ++c) acc += xp[(size_t)c * HW] * w[k * C + c];
    out[idx] = acc;
}

// One thread per input element: dx[n,c,p] = sum_k w[k,c] * dout[n,k,p].
extern "C" __global__ void conv1x1_backward_data_kernel1(const float* dout, const float* w, float* dx,
                                                         int N, int C, int HW, int K) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * HW) return;
    int p = idx % HW, c = (idx / HW) % C, n = idx / (HW * C);
    const float* d = dout + (size_t)n * K * HW + p;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += d[(size_t)k * HW] * w[k * C + c];
    dx[idx] = acc;
}

// One block per (c, k): dw[k,c] += sum_{n,p} dout[n,k,p] * x[n,c,p], block-reduced; blocks with
// c == 0 also accumulate db[k] += sum dout[n,k,:]. grid = (C, K), block = 256.
extern "C" __global__ void conv1x1_backward_weight_kernel1(const float* dout, const float* x, float* dw, float* db,
                                                           int N, int C, int HW, int K) {
    __shared__ float scratch[32];
    int c = blockIdx.x, k = blockIdx.y;
    float acc = 0.0f, bacc = 0.0f;
    for (int q = threadIdx.x; q < N * HW; q += blockDim.x) {
        int n = q / HW, p = q % HW;
        float d = dout[((size_t)n * K + k) * HW + p];
        acc += d * x[((size_t)n * C + c) * HW + p];
        bacc += d;
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) dw[k * C + c] += acc;
    if (c == 0) {  // uniform across the block
        bacc = block_sum(bacc, scratch);
        if (threadIdx.x == 0) db[k] += bacc;
    }
}
