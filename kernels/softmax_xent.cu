// softmax_xent.cu - per-pixel softmax over classes + weighted cross-entropy, loss and dlogits in
// one pass; and the inference softmax.
//
// logits, dlogits, probs are (N, K, H, W); labels (int32) and weights are (N, H, W).
// E = -(1/P) sum_x w(x) log p_label(x)(x) with P = N*H*W: normalised per pixel (not by sum w), so
// the loss reads as a per-pixel value whatever the weight map's scale.
// dlogits[n,k,x] = w(x) * (p_k(x) - [k == label(x)]) / P  (written, =).
// Softmax subtracts the per-pixel max first, so large logits cannot overflow exp.
// A label outside [0, K) sets *bad_label and contributes nothing; the host turns that into an error.
#include "common.cuh"

// One thread per pixel (a 1-D grid over N*H*W), looping over the K classes; each block reduces its
// pixels' losses and adds them with one atomicAdd to *loss (which the caller zeroes).
extern "C" __global__ void softmax_xent_forward_backward_kernel1(const float* logits, const int* labels, const float* weights,
                                                                 float* dlogits, float* loss, int* bad_label,
                                                                 int N, int K, int HW) {
    __shared__ float scratch[32];
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    float contrib = 0.0f;
    if (idx < N * HW) {  // no early return: every thread must reach block_sum
        int n = idx / HW, p = idx % HW;
        const float* z = logits + (size_t)n * K * HW + p;
        float* d = dlogits + (size_t)n * K * HW + p;
        int label = labels[idx];
        float inv_p = 1.0f / (float)(N * HW);
        if (label < 0 || label >= K) {
            atomicOr(bad_label, 1);
            for (int k = 0; k < K; ++k) d[(size_t)k * HW] = 0.0f;
        } else {
            // With p = e_k / s, s = sum_k e_k and e_k = exp(z_k - max): the max term is exactly 1,
            // so s = 1 + r and log s = log1p(r), and 1 - p_label = (sum of the other e_k) / s.
            // Written this way nothing cancels when the net is confident (p -> 1), where the
            // naive log(s) and p - 1 lose all their digits in fp32.
            int km = 0;
            for (int k = 1; k < K; ++k)
                if (z[(size_t)k * HW] > z[(size_t)km * HW]) km = k;
            float m = z[(size_t)km * HW], r = 0.0f, others = 0.0f;
            for (int k = 0; k < K; ++k) {
                float e = k == km ? 1.0f : expf(z[(size_t)k * HW] - m);
                if (k != km) r += e;
                if (k != label) others += e;
            }
            float s = 1.0f + r, wt = weights[idx] * inv_p;
            for (int k = 0; k < K; ++k) {
                float e = k == km ? 1.0f : expf(z[(size_t)k * HW] - m);
                d[(size_t)k * HW] = k == label ? -wt * others / s : wt * e / s;
            }
            contrib = wt * (log1pf(r) - (z[(size_t)label * HW] - m));
        }
    }
    contrib = block_sum(contrib, scratch);
    if (threadIdx.x == 0) atomicAdd(loss, contrib);
}

// probs = softmax over K of logits; one thread per pixel.
extern "C" __global__ void softmax_forward_kernel1(const float* logits, float* probs, int N, int K, int HW) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * HW) return;
    int n = idx / HW, p = idx % HW;
    const float* z = logits + (size_t)n * K * HW + p;
    float* q = probs + (size_t)n * K * HW + p;
    float m = z[0];
    for (int k = 1; k < K; ++k) m = fmaxf(m, z[(size_t)k * HW]);
    float s = 0.0f;
    for (int k = 0; k < K; ++k) s += expf(z[(size_t)k * HW] - m);
    for (int k = 0; k < K; ++k) q[(size_t)k * HW] = expf(z[(size_t)k * HW] - m) / s;
}
