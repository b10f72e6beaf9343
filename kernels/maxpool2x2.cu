// maxpool2x2.cu - 2x2 max-pooling, stride 2: forward keeps the argmax, backward routes through it.
//
// x is (N, C, H, W) with H, W even; out and argmax are (N, C, H/2, W/2). argmax holds the winner's
// position in its window, 0..3 row-major (ties go to the first), as one byte, so backward needs
// neither x nor out. Activation gradients are written (=).
#include "common.cuh"

// One thread per output element, a 1-D grid over N*C*(H/2)*(W/2).
extern "C" __global__ void maxpool2x2_forward_kernel1(const float* x, float* out, unsigned char* argmax,
                                                      int N, int C, int H, int W) {
    int Ho = H / 2, Wo = W / 2;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * Ho * Wo) return;
    int ox = idx % Wo, oy = (idx / Wo) % Ho, nc = idx / (Wo * Ho);
    const float* p = x + ((size_t)nc * H + 2 * oy) * W + 2 * ox;
    float v[4] = {p[0], p[1], p[W], p[W + 1]};
    int best = 0;
    for (int q = 1; q < 4; ++q)
        if (v[q] > v[best]) best = q;  // strict: ties keep the first
    out[idx] = v[best];
    argmax[idx] = (unsigned char)best;
}

// One thread per output element writes all four inputs of its window (the windows tile dx
// exactly, so every dx element is written once).
extern "C" __global__ void maxpool2x2_backward_kernel1(const float* dout, const unsigned char* argmax, float* dx,
                                                       int N, int C, int H, int W) {
    int Ho = H / 2, Wo = W / 2;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * C * Ho * Wo) return;
    int ox = idx % Wo, oy = (idx / Wo) % Ho, nc = idx / (Wo * Ho);
    float* p = dx + ((size_t)nc * H + 2 * oy) * W + 2 * ox;
    float g = dout[idx];
    int a = argmax[idx];
    p[0] = a == 0 ? g : 0.0f;
    p[1] = a == 1 ? g : 0.0f;
    p[W] = a == 2 ? g : 0.0f;
    p[W + 1] = a == 3 ? g : 0.0f;
}
