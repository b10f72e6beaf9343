// crop_concat.cu - centre-crop the skip map and concatenate it with the up-sampled map.
//
// skip is (N, Cs, Hs, Ws), up is (N, Cu, H, W), out is (N, Cs + Cu, H, W): the cropped skip's
// channels first (as in the paper's figure), then up's. Crop offset (oy, ox) = ((Hs - H) / 2,
// (Ws - W) / 2), rounded down; passed in so the host owns the rule.
// Backward splits dout: dup = dout[:, Cs:], and dskip at the skip's full size, zero outside the
// crop, ready to add to the skip branch's gradient. Activation gradients are written (=).
#include "common.cuh"

// One thread per output element, a 1-D grid over N*(Cs+Cu)*H*W.
extern "C" __global__ void crop_concat_forward_kernel1(const float* skip, const float* up, float* out,
                                                       int N, int Cs, int Hs, int Ws, int Cu, int H, int W,
                                                       int oy, int ox) {
    int Co = Cs + Cu;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * Co * H * W) return;
    int xx = idx % W, yy = (idx / W) % H, c = (idx / (W * H)) % Co, n = idx / (W * H * Co);
    out[idx] = c < Cs ? skip[((size_t)(n * Cs + c) * Hs + yy + oy) * Ws + xx + ox]
                      : up[((size_t)(n * Cu + c - Cs) * H + yy) * W + xx];
}

// One thread per element of dskip (N*Cs*Hs*Ws) and then of dup (N*Cu*H*W): a 1-D grid over both,
// so every element of both gradients is written exactly once.
extern "C" __global__ void crop_concat_backward_kernel1(const float* dout, float* dskip, float* dup,
                                                        int N, int Cs, int Hs, int Ws, int Cu, int H, int W,
                                                        int oy, int ox) {
    int Co = Cs + Cu;
    int nskip = N * Cs * Hs * Ws;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < nskip) {
        int xs = idx % Ws, ys = (idx / Ws) % Hs, c = (idx / (Ws * Hs)) % Cs, n = idx / (Ws * Hs * Cs);
        int yy = ys - oy, xx = xs - ox;
        dskip[idx] = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? dout[((size_t)(n * Co + c) * H + yy) * W + xx] : 0.0f;
    } else if (idx < nskip + N * Cu * H * W) {
        int u = idx - nskip;
        int xx = u % W, yy = (u / W) % H, c = (u / (W * H)) % Cu, n = u / (W * H * Cu);
        dup[u] = dout[((size_t)(n * Co + Cs + c) * H + yy) * W + xx];
    }
}
