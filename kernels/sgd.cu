// sgd.cu - SGD with momentum, fused and in place, Caffe's rule (the paper trained with Caffe):
//   v <- momentum * v - lr * (grad + weight_decay * param);   param <- param + v
// param, grad, velocity have n elements (all parameters of the net may be one flat buffer).
#include "common.cuh"

// One thread per parameter, a 1-D grid over n.
extern "C" __global__ void sgd_momentum_update_kernel1(float* param, const float* grad, float* velocity, int n,
                                                       float lr, float momentum, float weight_decay) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = momentum * velocity[i] - lr * (grad[i] + weight_decay * param[i]);
    velocity[i] = v;
    param[i] += v;
}
