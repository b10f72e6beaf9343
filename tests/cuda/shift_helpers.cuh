#pragma once
// the lanes below n: (1u << 32) - 1 is all 32 on the GPU, whose shift clamps the count
__device__ inline unsigned lane_mask(int n) { return (1u << n) - 1u; }
