// adam.cu - Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019), fused and in place, the
// rule of PyTorch's torch.optim.Adam / AdamW (the peer of the quality benchmark trains with it):
//   Adam:  g <- grad + weight_decay * param           (L2 folded into the gradient)
//   AdamW: g <- grad; param <- param * (1 - lr * weight_decay)   (decoupled decay)
//   m <- beta1 * m + (1 - beta1) * g;   v <- beta2 * v + (1 - beta2) * g^2
//   param <- param - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),   bc1 = 1 - beta1^t, bc2 = 1 - beta2^t
// t is the step number from 1; the host computes bc1, sqrt(bc2) and 1 - beta in double once per step
// (1 - 0.999f in float is 0.00099998713: v would carry a 1.3e-5 relative error from that alone).
// param, grad, m, v have n elements (all parameters of the net may be one flat buffer).
#include "common.cuh"

// One thread per parameter, a 1-D grid over n. Each element is read once and written once:
// the update is bound by memory (16 bytes read + 12 written per parameter).
extern "C" __global__ void adam_update_kernel1(float* param, const float* grad, float* m, float* v, int n,
                                               float lr, float beta1, float beta2, float one_minus_beta1,
                                               float one_minus_beta2, float eps, float weight_decay, float bc1,
                                               float bc2_sqrt, int decoupled) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float p = param[i];
    float g = grad[i];
    if (decoupled) p *= 1.0f - lr * weight_decay;
    else g += weight_decay * p;
    float mi = beta1 * m[i] + one_minus_beta1 * g;
    float vi = beta2 * v[i] + one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = p - (lr / bc1) * mi / (sqrtf(vi) / bc2_sqrt + eps);
}
