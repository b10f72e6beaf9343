// conv3x3.cu - valid 3x3 convolution, stride 1: forward (+bias, +optional fused ReLU),
// backward-data, backward-weight (+bias).
//
// x is (N, C, H, W), w is (K, C, 3, 3), b is (K,), out is (N, K, Ho, Wo) with Ho = H-2, Wo = W-2.
// out[n,k,y,x] = b[k] + sum_{c,i,j} x[n,c,y+i,x+j] * w[k,c,i,j], then max(0, .) if relu.
//
// The fused ReLU's backward uses what forward kept: the backward kernels take forward's output
// `out` (or nullptr when there was no ReLU) and use g = out > 0 ? dout : 0 as the gradient.
// Activation gradients are written (=), parameter gradients accumulated (+=).
#include "common.cuh"

__device__ __forceinline__ float relu_grad(const float* dout, const float* out, int idx) {
    return (out == nullptr || out[idx] > 0.0f) ? dout[idx] : 0.0f;
}

// ---- forward -------------------------------------------------------------------------------------

// Variant 1: one thread per output element, a 1-D grid over N*K*Ho*Wo. Plain and obviously right.
extern "C" __global__ void conv3x3_forward_kernel1(const float* x, const float* w, const float* b, float* out,
                                                   int N, int C, int H, int W, int K, int relu) {
    int Ho = H - 2, Wo = W - 2;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * K * Ho * Wo) return;
    int ox = idx % Wo, oy = (idx / Wo) % Ho, k = (idx / (Wo * Ho)) % K, n = idx / (Wo * Ho * K);
    float acc = b[k];
    for (int c = 0; c < C; ++c) {
        const float* xp = x + ((size_t)(n * C + c) * H + oy) * W + ox;
        const float* wp = w + (k * C + c) * 9;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) acc += xp[i * W + j] * wp[i * 3 + j];
    }
    out[idx] = relu ? fmaxf(acc, 0.0f) : acc;
}

// Variant 2: shared-memory tiles + register blocking.
// A block of 16x16 threads computes a 16x16 tile of output pixels for F2_K output channels (each
// thread F2_K accumulators, one pixel). Input channels go in chunks of F2_C: the 18x18 input
// halo tiles of the chunk and the chunk's F2_K x F2_C x 9 weights are staged in shared memory, so
// each input element is read from global memory once per block instead of 9*F2_K times.
// grid = (ceil(Wo/16) * ceil(Ho/16), ceil(K/F2_K), N), block = (16, 16).
#define F2_T 16
#define F2_K 8
#define F2_C 4
extern "C" __global__ void conv3x3_forward_kernel2(const float* x, const float* w, const float* b, float* out,
                                                   int N, int C, int H, int W, int K, int relu) {
    __shared__ float xs[F2_C][F2_T + 2][F2_T + 2];
    __shared__ float ws[F2_K][F2_C][9];
    int Ho = H - 2, Wo = W - 2;
    int tiles_x = CEIL_DIV(Wo, F2_T);
    int ty0 = (blockIdx.x / tiles_x) * F2_T, tx0 = (blockIdx.x % tiles_x) * F2_T;
    int k0 = blockIdx.y * F2_K, n = blockIdx.z;
    int tid = threadIdx.y * F2_T + threadIdx.x;
    float acc[F2_K];
    for (int kk = 0; kk < F2_K; ++kk) acc[kk] = 0.0f;
    for (int c0 = 0; c0 < C; c0 += F2_C) {
        // stage the halo tiles; out-of-image elements and channels past C load as 0
        for (int e = tid; e < F2_C * (F2_T + 2) * (F2_T + 2); e += F2_T * F2_T) {
            int cc = e / ((F2_T + 2) * (F2_T + 2)), r = (e / (F2_T + 2)) % (F2_T + 2), q = e % (F2_T + 2);
            int c = c0 + cc, yy = ty0 + r, xx = tx0 + q;
            xs[cc][r][q] = (c < C && yy < H && xx < W) ? x[((size_t)(n * C + c) * H + yy) * W + xx] : 0.0f;
        }
        for (int e = tid; e < F2_K * F2_C * 9; e += F2_T * F2_T) {
            int kk = e / (F2_C * 9), cc = (e / 9) % F2_C, ij = e % 9;
            int k = k0 + kk, c = c0 + cc;
            ws[kk][cc][ij] = (k < K && c < C) ? w[(k * C + c) * 9 + ij] : 0.0f;
        }
        __syncthreads();
        for (int cc = 0; cc < F2_C; ++cc) {
            float v[9];
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) v[i * 3 + j] = xs[cc][threadIdx.y + i][threadIdx.x + j];
            for (int kk = 0; kk < F2_K; ++kk)
                for (int ij = 0; ij < 9; ++ij) acc[kk] += v[ij] * ws[kk][cc][ij];
        }
        __syncthreads();  // the next chunk overwrites xs and ws
    }
    int oy = ty0 + threadIdx.y, ox = tx0 + threadIdx.x;
    if (oy < Ho && ox < Wo) {
        for (int kk = 0; kk < F2_K; ++kk) {
            int k = k0 + kk;
            if (k < K) {
                float v = acc[kk] + b[k];
                out[((size_t)(n * K + k) * Ho + oy) * Wo + ox] = relu ? fmaxf(v, 0.0f) : v;
            }
        }
    }
}

// Fused with crop_concat: the input is concat(crop(skip), up) along channels, read straight from the
// two maps, so the concatenated tensor (the largest activation of each expanding level) is never
// written. skip is (N, Cs, Hs, Ws) read from offset (oy, ox), up is (N, Cu, H, W), w is
// (K, Cs + Cu, 3, 3), out is (N, K, H-2, W-2). Variant 1: one thread per output element.
extern "C" __global__ void conv3x3_forward_concat_kernel1(const float* skip, const float* up, const float* w,
                                                          const float* b, float* out, int N, int Cs, int Hs, int Ws,
                                                          int Cu, int H, int W, int K, int oy, int ox, int relu) {
    int Ho = H - 2, Wo = W - 2, C = Cs + Cu;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * K * Ho * Wo) return;
    int x = idx % Wo, y = (idx / Wo) % Ho, k = (idx / (Wo * Ho)) % K, n = idx / (Wo * Ho * K);
    float acc = b[k];
    for (int c = 0; c < Cs; ++c) {
        const float* xp = skip + ((size_t)(n * Cs + c) * Hs + oy + y) * Ws + ox + x;
        const float* wp = w + (k * C + c) * 9;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) acc += xp[i * Ws + j] * wp[i * 3 + j];
    }
    for (int c = 0; c < Cu; ++c) {
        const float* xp = up + ((size_t)(n * Cu + c) * H + y) * W + x;
        const float* wp = w + (k * C + Cs + c) * 9;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) acc += xp[i * W + j] * wp[i * 3 + j];
    }
    out[idx] = relu ? fmaxf(acc, 0.0f) : acc;
}

// ---- backward-data -------------------------------------------------------------------------------

// Variant 1: one thread per input element: dx[n,c,y,x] = sum_{k,i,j} g[n,k,y-i,x-j] * w[k,c,i,j]
// over the (y-i, x-j) that are inside the output. A 1-D grid over N*C*H*W.
extern "C" __global__ void conv3x3_backward_data_kernel1(const float* dout, const float* out, const float* w,
                                                         float* dx, int N, int C, int H, int W, int K) {
    int Ho = H - 2, Wo = W - 2;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * H * W) return;
    int xx = idx % W, yy = (idx / W) % H, c = (idx / (W * H)) % C, n = idx / (W * H * C);
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
        const float* wp = w + (k * C + c) * 9;
        for (int i = 0; i < 3; ++i) {
            int oy = yy - i;
            if (oy < 0 || oy >= Ho) continue;
            for (int j = 0; j < 3; ++j) {
                int ox = xx - j;
                if (ox < 0 || ox >= Wo) continue;
                acc += relu_grad(dout, out, ((n * K + k) * Ho + oy) * Wo + ox) * wp[i * 3 + j];
            }
        }
    }
    dx[idx] = acc;
}

// ---- backward-weight -----------------------------------------------------------------------------

// Variant 1: one thread per weight: dw[k,c,i,j] += sum_{n,y,x} g[n,k,y,x] * x[n,c,y+i,x+j].
// A 1-D grid over K*C*9. The bias gradient is conv3x3_backward_bias_kernel1.
extern "C" __global__ void conv3x3_backward_weight_kernel1(const float* dout, const float* out, const float* x,
                                                           float* dw, int N, int C, int H, int W, int K) {
    int Ho = H - 2, Wo = W - 2;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= K * C * 9) return;
    int ij = idx % 9, c = (idx / 9) % C, k = idx / (9 * C);
    int i = ij / 3, j = ij % 3;
    float acc = 0.0f;
    for (int n = 0; n < N; ++n)
        for (int oy = 0; oy < Ho; ++oy)
            for (int ox = 0; ox < Wo; ++ox)
                acc += relu_grad(dout, out, ((n * K + k) * Ho + oy) * Wo + ox) *
                       x[((size_t)(n * C + c) * H + oy + i) * W + ox + j];
    dw[idx] += acc;
}

// db[k] += sum_{n,y,x} g[n,k,y,x]. One block per k (grid = K, block = 256), a block reduction.
extern "C" __global__ void conv3x3_backward_bias_kernel1(const float* dout, const float* out, float* db,
                                                         int N, int Ho, int Wo, int K) {
    __shared__ float scratch[32];
    int k = blockIdx.x;
    float acc = 0.0f;
    for (int p = threadIdx.x; p < N * Ho * Wo; p += blockDim.x) {
        int n = p / (Ho * Wo), r = p % (Ho * Wo);
        acc += relu_grad(dout, out, (n * K + k) * Ho * Wo + r);
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) db[k] += acc;
}

// Variant 2: one block per (c, k) pair, weight and bias gradient in one pass.
// The reduction over N*Ho*Wo pixels (long: 2.6 M for the first layer of a 572 tile) is spread over
// the block's threads, each keeping the 9 partial sums of the pair's 3x3 weights in registers,
// then 9 block reductions. Blocks with c == 0 also sum g for db[k]. grid = (C, K), block = 256.
extern "C" __global__ void conv3x3_backward_weight_kernel2(const float* dout, const float* out, const float* x,
                                                           float* dw, float* db, int N, int C, int H, int W, int K) {
    __shared__ float scratch[32];
    int c = blockIdx.x, k = blockIdx.y;
    int Ho = H - 2, Wo = W - 2;
    float acc[9], bacc = 0.0f;
    for (int ij = 0; ij < 9; ++ij) acc[ij] = 0.0f;
    for (int p = threadIdx.x; p < N * Ho * Wo; p += blockDim.x) {
        int n = p / (Ho * Wo), oy = (p / Wo) % Ho, ox = p % Wo;
        float g = relu_grad(dout, out, ((n * K + k) * Ho + oy) * Wo + ox);
        const float* xp = x + ((size_t)(n * C + c) * H + oy) * W + ox;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) acc[i * 3 + j] += g * xp[i * W + j];
        bacc += g;
    }
    for (int ij = 0; ij < 9; ++ij) {
        float s = block_sum(acc[ij], scratch);
        if (threadIdx.x == 0) dw[(k * C + c) * 9 + ij] += s;
    }
    if (c == 0) {  // uniform across the block, so every thread reaches block_sum's barriers
        float s = block_sum(bacc, scratch);
        if (threadIdx.x == 0) db[k] += s;
    }
}
