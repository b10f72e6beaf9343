// upconv2x2.cu - 2x2 up-convolution (transposed convolution, kernel 2, stride 2): forward (+bias),
// backward-data, backward-weight (+bias).
//
// x is (N, C, H, W), w is (C, K, 2, 2) (PyTorch's ConvTranspose2d layout), b is (K,),
// out is (N, K, 2H, 2W): out[n,k,2y+i,2x+j] = b[k] + sum_c x[n,c,y,x] * w[c,k,i,j].
// Every output pixel has exactly one input pixel, so there is no overlap to reduce.
// Activation gradients are written (=), parameter gradients accumulated (+=).
#include "common.cuh"

// One thread per output element, a 1-D grid over N*K*2H*2W.
extern "C" __global__ void upconv2x2_forward_kernel1(const float* x, const float* w, const float* b, float* out,
                                                     int N, int C, int H, int W, int K) {
    int H2 = 2 * H, W2 = 2 * W;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * K * H2 * W2) return;
    int ox = idx % W2, oy = (idx / W2) % H2, k = (idx / (W2 * H2)) % K, n = idx / (W2 * H2 * K);
    int ij = (oy & 1) * 2 + (ox & 1);
    const float* xp = x + ((size_t)n * C * H + (oy >> 1)) * W + (ox >> 1);
    float acc = b[k];
    for (int c = 0; c < C; ++c) acc += xp[(size_t)c * H * W] * w[(c * K + k) * 4 + ij];
    out[idx] = acc;
}

// One thread per input element: dx[n,c,y,x] = sum_{k,i,j} dout[n,k,2y+i,2x+j] * w[c,k,i,j].
extern "C" __global__ void upconv2x2_backward_data_kernel1(const float* dout, const float* w, float* dx,
                                                           int N, int C, int H, int W, int K) {
    int H2 = 2 * H, W2 = 2 * W;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * H * W) return;
    int xx = idx % W, yy = (idx / W) % H, c = (idx / (W * H)) % C, n = idx / (W * H * C);
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
        const float* d = dout + ((size_t)(n * K + k) * H2 + 2 * yy) * W2 + 2 * xx;
        const float* wp = w + (c * K + k) * 4;
        acc += d[0] * wp[0] + d[1] * wp[1] + d[W2] * wp[2] + d[W2 + 1] * wp[3];
    }
    dx[idx] = acc;
}

// One block per (c, k) pair: dw[c,k,i,j] += sum_{n,y,x} x[n,c,y,x] * dout[n,k,2y+i,2x+j], the four
// sums spread over the block's threads then block-reduced; blocks with c == 0 also accumulate
// db[k] += sum dout[n,k,:,:]. grid = (C, K), block = 256.
extern "C" __global__ void upconv2x2_backward_weight_kernel1(const float* dout, const float* x, float* dw, float* db,
                                                             int N, int C, int H, int W, int K) {
    __shared__ float scratch[32];
    int c = blockIdx.x, k = blockIdx.y;
    int H2 = 2 * H, W2 = 2 * W;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, bacc = 0.0f;
    for (int p = threadIdx.x; p < N * H * W; p += blockDim.x) {
        int n = p / (H * W), yy = (p / W) % H, xx = p % W;
        float v = x[((size_t)(n * C + c) * H + yy) * W + xx];
        const float* d = dout + ((size_t)(n * K + k) * H2 + 2 * yy) * W2 + 2 * xx;
        acc[0] += v * d[0];
        acc[1] += v * d[1];
        acc[2] += v * d[W2];
        acc[3] += v * d[W2 + 1];
        bacc += d[0] + d[1] + d[W2] + d[W2 + 1];
    }
    for (int ij = 0; ij < 4; ++ij) {
        float s = block_sum(acc[ij], scratch);
        if (threadIdx.x == 0) dw[(c * K + k) * 4 + ij] += s;
    }
    if (c == 0) {  // uniform across the block
        float s = block_sum(bacc, scratch);
        if (threadIdx.x == 0) db[k] += s;
    }
}
