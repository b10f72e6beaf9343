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

// ==== implicit GEMM (igemm.cuh): forward 3 (fp32) / 4 (tf32), backward-data 2 / 3, backward-weight 3 / 4 ====
//
// Each direction is one "problem" for the core in igemm.cuh: how to gather A[m][r] and B[r][n] from
// the tensors and where C[m][n] goes. The conv's input may be one map or the concatenation of the
// centre crop of a skip map and an up-sampled map (an expanding level's first conv): the gather
// reads both directly, so the concatenated tensor and its gradient are never written (a fusion
// cuDNN cannot do). One kernel per tile shape (BM x BN), picked per layer by the op layer.
// fp32 kernels ask for two resident blocks per SM (__launch_bounds__(256, 2): at most 128
// registers), except backward-weight 128x128, which spills 12 bytes under that cap (NVRTC 13.0)
// and says (256, 1) (with no minimum, ptxas chose 128 registers and spilled anyway); the tf32
// ones would spill too (128x128: 184-228 registers) and run one 8-warp block per SM.
#include "igemm.cuh"

// The conv input x (N, C, H, W): channels c < Cs come from the window at (oy, ox) of
// skip (N, Cs, Hs, Ws), the others from up (N, C - Cs, H, W). A plain input: skip = x, Cs = C.
struct ConvInput {
    const float* skip;
    const float* up;
    int Cs, Hs, Ws, oy, ox, C, H, W;
    __device__ float at(int n, int c, int y, int x) const {
        return c < Cs ? skip[((size_t)(n * Cs + c) * Hs + y + oy) * Ws + x + ox]
                      : up[((size_t)(n * (C - Cs) + c - Cs) * H + y) * W + x];
    }
};

// Forward: M = N*Ho*Wo output pixels, N = K output channels, R = 9*C (r = c*9 + i*3 + j).
// A[m][r] = x[n, c, oy+i, ox+j] (consecutive m are consecutive pixels), B[r][k] = w[k, r]
// (contiguous along r), C -> out[n, k, oy, ox] with bias and ReLU in the epilogue.
struct ConvForward {
    int M, N, R;
    static constexpr bool kAContigK = false, kBContigK = true, kColSums = false, kBVec = true;
    ConvInput in;
    const float *w, *b;
    float* out;
    int Ho, Wo, relu;
    struct ARow { int n, y, x; };
    __device__ ARow a_row(int m) const {
        int q = m % (Ho * Wo);
        return {m / (Ho * Wo), q / Wo, q % Wo};
    }
    struct KPos { int r, c, i, j; };  // r = c*9 + i*3 + j
    __device__ KPos k_pos(int r) const {
        int c = r / 9, ij = r - 9 * c, i = ij / 3;
        return {r, c, i, ij - 3 * i};
    }
    __device__ float load_a(const ARow& p, const KPos& t) const { return in.at(p.n, t.c, p.y + t.i, p.x + t.j); }
    using BCol = int;
    __device__ BCol b_col(int k) const { return k * R; }
    __device__ float load_b(BCol wrow, const KPos& t) const { return w[wrow + t.r]; }
    // w[k, r..r+3] in one load: rows of R = 9C floats stay 16-byte aligned when C % 4 == 0
    __device__ bool b_vec() const { return R % 4 == 0 && aligned16(w); }
    __device__ float4 load_b4(BCol wrow, int r) const { return load_float4(w + wrow + r); }
    using CRow = size_t;  // offset of out[n, 0, oy, ox]
    __device__ CRow c_row(int m) const {
        int hw = Ho * Wo;
        return (size_t)(m / hw) * N * hw + m % hw;
    }
    __device__ void store(CRow o, int k, float v) const {
        v += b[k];
        out[o + (size_t)k * Ho * Wo] = relu ? fmaxf(v, 0.0f) : v;
    }
    __device__ void col_sum(int, float) const {}
};

#define CONV_FORWARD_PARAMS const float *skip, const float *up, const float *w, const float *b, float *out, int N, \
    int Cs, int Hs, int Ws, int Cu, int H, int W, int K, int oy, int ox, int relu
#define CONV_FORWARD_PROBLEM ConvForward{N * (H - 2) * (W - 2), K, 9 * (Cs + Cu), {skip, up, Cs, Hs, Ws, oy, ox, Cs + Cu, H, W}, \
    w, b, out, H - 2, W - 2, relu}
// grid = (ceil(N*Ho*Wo / BM), ceil(K / BN)), block = 256
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_forward_kernel3_128x128(CONV_FORWARD_PARAMS) { igemm_fp32<ConvForward, 128, 128>(CONV_FORWARD_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_forward_kernel3_128x64(CONV_FORWARD_PARAMS) { igemm_fp32<ConvForward, 128, 64>(CONV_FORWARD_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_forward_kernel3_64x64(CONV_FORWARD_PARAMS) { igemm_fp32<ConvForward, 64, 64>(CONV_FORWARD_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256) conv3x3_forward_kernel4_128x128(CONV_FORWARD_PARAMS) { igemm_tf32<ConvForward, 128, 128>(CONV_FORWARD_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256) conv3x3_forward_kernel4_128x64(CONV_FORWARD_PARAMS) { igemm_tf32<ConvForward, 128, 64>(CONV_FORWARD_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256) conv3x3_forward_kernel4_64x64(CONV_FORWARD_PARAMS) { igemm_tf32<ConvForward, 64, 64>(CONV_FORWARD_PROBLEM); }

// Backward-data: M = N*H*W input pixels, N = C input channels, R = 9*K (r = k*9 + i*3 + j).
// A[m][r] = g[n, k, y-i, x-j] (0 outside the output; g = dout, masked by forward's ReLU output
// `out` when given), B[r][c] = wt[k, i*3+j, c] (w transposed by conv3x3_weight_transpose_kernel1,
// so that consecutive c are consecutive floats: in w's own layout they are 9 apart and a warp's
// B load took 8.2 sectors per request instead of 4, `unetcu profile`), C -> dx. With `mask` (the conv's input when it is
// itself a ReLU output) the epilogue applies that ReLU's gradient too, so the previous layer's
// backward reads its dout without a mask. A concatenated input's gradient is split on the way
// out: c < Cs -> dskip (N, Cs, H, W) (the cropped window only), the rest -> dup (N, C - Cs, H, W).
struct ConvBackwardData {
    int M, N, R;
    static constexpr bool kAContigK = false, kBContigK = false, kColSums = false, kBVec = false;
    const float *dout, *out, *wt, *mask;  // wt: (K, 9, C)
    float *dskip, *dup;
    int Cs, H, W, K;
    struct ARow { int n, y, x; };
    __device__ ARow a_row(int m) const {
        int q = m % (H * W);
        return {m / (H * W), q / W, q % W};
    }
    struct KPos { int k, ij, i, j; };  // r = k*9 + ij, ij = i*3 + j
    __device__ KPos k_pos(int r) const {
        int k = r / 9, ij = r - 9 * k;
        return {k, ij, ij / 3, ij % 3};
    }
    __device__ float load_a(const ARow& p, const KPos& t) const {
        int Ho = H - 2, Wo = W - 2, y = p.y - t.i, x = p.x - t.j, k = t.k;
        if (y < 0 || y >= Ho || x < 0 || x >= Wo) return 0.0f;
        size_t o = ((size_t)(p.n * K + k) * Ho + y) * Wo + x;
        return (out == nullptr || out[o] > 0.0f) ? dout[o] : 0.0f;
    }
    using BCol = int;
    __device__ BCol b_col(int c) const { return c; }
    __device__ float load_b(BCol c, const KPos& t) const { return wt[(size_t)(t.k * 9 + t.ij) * N + c]; }
    __device__ bool b_vec() const { return false; }  // B is contiguous along n, not r: no float4s along r
    __device__ float4 load_b4(BCol, int) const { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
    using CRow = ARow;
    __device__ CRow c_row(int m) const { return a_row(m); }
    __device__ void store(const CRow& p, int c, float v) const {
        size_t hw = (size_t)p.y * W + p.x;
        if (c < Cs) {
            size_t o = (size_t)(p.n * Cs + c) * H * W + hw;
            dskip[o] = (mask == nullptr || mask[o] > 0.0f) ? v : 0.0f;
        } else {
            dup[(size_t)(p.n * (N - Cs) + c - Cs) * H * W + hw] = v;
        }
    }
    __device__ void col_sum(int, float) const {}
};

#define CONV_BACKWARD_DATA_PARAMS const float *dout, const float *out, const float *wt, const float *mask, float *dskip, \
    float *dup, int N, int Cs, int Cu, int H, int W, int K
#define CONV_BACKWARD_DATA_PROBLEM ConvBackwardData{N * H * W, Cs + Cu, 9 * K, dout, out, wt, mask, dskip, dup, Cs, H, W, K}

// wt[k, ij, c] = w[k, c, ij]: backward-data's B operand with c contiguous (see ConvBackwardData).
// K*9*C floats, a small fraction of the convolution's traffic; one thread per element of wt.
extern "C" __global__ void conv3x3_weight_transpose_kernel1(const float* w, float* wt, int K, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= K * 9 * C) return;
    int c = i % C, ij = (i / C) % 9, k = i / (9 * C);
    wt[i] = w[((size_t)k * C + c) * 9 + ij];
}
// grid = (ceil(N*H*W / BM), ceil(C / BN)), block = 256
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_backward_data_kernel2_128x128(CONV_BACKWARD_DATA_PARAMS) { igemm_fp32<ConvBackwardData, 128, 128>(CONV_BACKWARD_DATA_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_backward_data_kernel2_128x64(CONV_BACKWARD_DATA_PARAMS) { igemm_fp32<ConvBackwardData, 128, 64>(CONV_BACKWARD_DATA_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_backward_data_kernel2_64x64(CONV_BACKWARD_DATA_PARAMS) { igemm_fp32<ConvBackwardData, 64, 64>(CONV_BACKWARD_DATA_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256) conv3x3_backward_data_kernel3_128x128(CONV_BACKWARD_DATA_PARAMS) { igemm_tf32<ConvBackwardData, 128, 128>(CONV_BACKWARD_DATA_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256) conv3x3_backward_data_kernel3_128x64(CONV_BACKWARD_DATA_PARAMS) { igemm_tf32<ConvBackwardData, 128, 64>(CONV_BACKWARD_DATA_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256) conv3x3_backward_data_kernel3_64x64(CONV_BACKWARD_DATA_PARAMS) { igemm_tf32<ConvBackwardData, 64, 64>(CONV_BACKWARD_DATA_PROBLEM); }

// Backward-weight: M = 9*C (m = c*9 + i*3 + j, dw's inner index), N = K, R = N*Ho*Wo pixels.
// A[m][p] = x[n, c, oy+i, ox+j], B[p][k] = g[n, k, oy, ox] (both contiguous along p),
// C -> dw[k, m] +=, and the column sums of B -> db[k] += (the bias gradient, fused).
// The pixel reduction may be split over blockIdx.z. Then each split writes its partial dw and db
// to a workspace (ws: splits x K x M, wsb: splits x K) and conv3x3_backward_weight_reduce_kernel1
// adds them in split order: no atomics, so the result is the same bits on every run. Unsplit,
// every element has exactly one writer and is accumulated in place.
struct ConvBackwardWeight {
    int M, N, R;
    static constexpr bool kAContigK = true, kBContigK = true, kColSums = true, kBVec = true;
    ConvInput in;
    const float *dout, *out;
    float *dw, *db, *ws, *wsb;  // ws == nullptr: unsplit, accumulate into dw and db
    int Ho, Wo;
    struct ARow { int c, i, j; };
    __device__ ARow a_row(int m) const {
        int c = m / 9, ij = m - 9 * c;
        return {c, ij / 3, ij % 3};
    }
    struct KPos { int n, q, y, x; };  // pixel p = n*Ho*Wo + q, q = y*Wo + x
    __device__ KPos k_pos(int p) const {
        int n = p / (Ho * Wo), q = p - n * Ho * Wo, y = q / Wo;
        return {n, q, y, q - y * Wo};
    }
    __device__ float load_a(const ARow& t, const KPos& p) const { return in.at(p.n, t.c, p.y + t.i, p.x + t.j); }
    using BCol = int;
    __device__ BCol b_col(int k) const { return k; }
    __device__ float load_b(BCol k, const KPos& p) const {
        size_t o = (size_t)(p.n * N + k) * Ho * Wo + p.q;
        return (out == nullptr || out[o] > 0.0f) ? dout[o] : 0.0f;
    }
    // g[n, k, p..p+3] in one load: 4-pixel groups never straddle two images when Ho*Wo % 4 == 0
    __device__ bool b_vec() const {
        return (Ho * Wo) % 4 == 0 && aligned16(dout) && (out == nullptr || aligned16(out));
    }
    __device__ float4 load_b4(BCol k, int p) const {
        int n = p / (Ho * Wo);
        size_t o = (size_t)(n * N + k) * Ho * Wo + p - n * Ho * Wo;
        float4 g = load_float4(dout + o);
        if (out != nullptr) {
            float4 f = load_float4(out + o);
            g.x = f.x > 0.0f ? g.x : 0.0f; g.y = f.y > 0.0f ? g.y : 0.0f;
            g.z = f.z > 0.0f ? g.z : 0.0f; g.w = f.w > 0.0f ? g.w : 0.0f;
        }
        return g;
    }
    using CRow = int;
    __device__ CRow c_row(int m) const { return m; }
    __device__ void store(CRow m, int k, float v) const {
        if (ws != nullptr) ws[((size_t)blockIdx.z * N + k) * M + m] = v;
        else dw[k * M + m] += v;
    }
    __device__ void col_sum(int k, float s) const {
        if (ws != nullptr) wsb[blockIdx.z * N + k] = s;
        else db[k] += s;
    }
};

#define CONV_BACKWARD_WEIGHT_PARAMS const float *dout, const float *out, const float *skip, const float *up, float *dw, \
    float *db, float *ws, float *wsb, int N, int Cs, int Hs, int Ws, int Cu, int H, int W, int K, int oy, int ox
#define CONV_BACKWARD_WEIGHT_PROBLEM ConvBackwardWeight{9 * (Cs + Cu), K, N * (H - 2) * (W - 2), \
    {skip, up, Cs, Hs, Ws, oy, ox, Cs + Cu, H, W}, dout, out, dw, db, ws, wsb, H - 2, W - 2}
// grid = (ceil(9*C / BM), ceil(K / BN), splits of the pixels), block = 256; ws/wsb: nullptr when unsplit
extern "C" __global__ void __launch_bounds__(256, 1) conv3x3_backward_weight_kernel3_128x128(CONV_BACKWARD_WEIGHT_PARAMS) { igemm_fp32<ConvBackwardWeight, 128, 128>(CONV_BACKWARD_WEIGHT_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_backward_weight_kernel3_128x64(CONV_BACKWARD_WEIGHT_PARAMS) { igemm_fp32<ConvBackwardWeight, 128, 64>(CONV_BACKWARD_WEIGHT_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_backward_weight_kernel3_64x64(CONV_BACKWARD_WEIGHT_PARAMS) { igemm_fp32<ConvBackwardWeight, 64, 64>(CONV_BACKWARD_WEIGHT_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256) conv3x3_backward_weight_kernel4_128x128(CONV_BACKWARD_WEIGHT_PARAMS) { igemm_tf32<ConvBackwardWeight, 128, 128>(CONV_BACKWARD_WEIGHT_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256) conv3x3_backward_weight_kernel4_128x64(CONV_BACKWARD_WEIGHT_PARAMS) { igemm_tf32<ConvBackwardWeight, 128, 64>(CONV_BACKWARD_WEIGHT_PROBLEM); }
extern "C" __global__ void __launch_bounds__(256) conv3x3_backward_weight_kernel4_64x64(CONV_BACKWARD_WEIGHT_PARAMS) { igemm_tf32<ConvBackwardWeight, 64, 64>(CONV_BACKWARD_WEIGHT_PROBLEM); }

// The split reduction of backward-weight, in a fixed order: dw[i] += sum_z ws[z][i] and
// db[k] += sum_z wsb[z][k]. ws is (splits, n), wsb (splits, K); a 1-D grid over n (>= K).
extern "C" __global__ void conv3x3_backward_weight_reduce_kernel1(const float* ws, const float* wsb, float* dw, float* db,
                                                                  int splits, int n, int K) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += ws[(size_t)z * n + i];
    dw[i] += s;
    if (i < K) {
        float t = 0.0f;
        for (int z = 0; z < splits; ++z) t += wsb[z * K + i];
        db[i] += t;
    }
}
