// tests/test_emulator.py: cooperative groups beyond the block and its tiles: the generic
// thread_group passed by value, run-time tiled_partition, coalesced_threads(), labeled_partition
// and binary_partition, cg::reduce over a coalesced group. Host headers a kernel file includes
// compile (the emulator builds device code, as NVRTC does).
#include <cuda_runtime.h>
#include <cuda_runtime_api.h>
#include <device_launch_parameters.h>
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
namespace cg = cooperative_groups;

// the sum of val over g, in rank 0 (others get -1); x holds g.size() ints of scratch
__device__ int group_sum(cg::thread_group g, int* x, int val) {
    int lane = (int)g.thread_rank();
    for (int i = (int)g.size() / 2; i > 0; i /= 2) {
        x[lane] = val;
        g.sync();
        if (lane < i) val += x[lane + i];
        g.sync();
    }
    return g.thread_rank() == 0 ? val : -1;
}

// out is (3, blockDim): the sum of x over the block, over each 16-thread tile and over each
// run-time 8-thread tile, in each group's rank 0; every group goes through a thread_group
extern "C" __global__ void sums_through_thread_group(const int* x, int* out) {
    extern __shared__ int scratch[];
    cg::thread_block block = cg::this_thread_block();
    int r = block.thread_rank(), n = block.size();
    out[r] = group_sum(block, scratch, x[r]);
    block.sync();
    cg::thread_block_tile<16> t16 = cg::tiled_partition<16>(block);
    out[n + r] = group_sum(t16, scratch + (r - t16.thread_rank()), x[r]);
    block.sync();
    cg::thread_group t8 = cg::tiled_partition(block, 8);
    out[2 * n + r] = group_sum(t8, scratch + (r - t8.thread_rank()), x[r]) + 1000 * (int)(t8.get_type() == 1);
}

// warp-aggregated atomics (one atomicAdd per coalesced group): the positive x compacted into dst
__device__ int aggregated_increment(int* counter) {
    cg::coalesced_group active = cg::coalesced_threads();
    int base = 0;
    if (active.thread_rank() == 0) base = atomicAdd(counter, (int)active.size());
    return active.shfl(base, 0) + (int)active.thread_rank();
}
extern "C" __global__ void compact_positive(const int* x, int n, int* dst, int* count) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        if (x[i] > 0) dst[aggregated_increment(count)] = x[i];
}

// the same per bucket, through labeled_partition of the coalesced lanes: index i of every x[i]
// in bucket b goes to idx[b * n + slot]
extern "C" __global__ void bucket_indices(const int* x, int n, int* idx, int* counters) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int b = x[i];
        cg::coalesced_group active = cg::coalesced_threads();
        cg::coalesced_group same = cg::labeled_partition(active, b);
        int base = 0;
        if (same.thread_rank() == 0) base = atomicAdd(&counters[b], (int)same.size());
        idx[b * n + same.shfl(base, 0) + (int)same.thread_rank()] = i;
    }
}

// per warp (a block of whole warps, x of one value per thread): among the lanes with x > 0,
// each lane's group rank and size, a ballot packed by rank, shuffles by rank, the group's sum,
// the odd and even sums of a binary partition of the warp, and labeled partitions' meta ranks
extern "C" __global__ void coalesced_ops(const int* x, int* rank, int* size, unsigned* ballot, int* up,
                                         int* down, int* sum, int* parity_sum, int* meta) {
    int i = blockIdx.x * blockDim.x + threadIdx.x, v = x[i];
    if (v > 0) {
        cg::coalesced_group g = cg::coalesced_threads();
        rank[i] = g.thread_rank();
        size[i] = g.size();
        ballot[i] = g.ballot(v > 50);
        up[i] = g.shfl_up(v, 1);
        down[i] = g.shfl_down(v, 2);
        sum[i] = cg::reduce(g, v, cg::plus<int>());
        cg::sync(g);
    }
    cg::thread_block_tile<32> warp = cg::tiled_partition<32>(cg::this_thread_block());
    cg::coalesced_group half = cg::binary_partition(warp, v & 1);
    parity_sum[i] = cg::reduce(half, v, cg::plus<int>());
    cg::coalesced_group by3 = cg::labeled_partition(warp, v % 3);
    meta[i] = by3.meta_group_rank() + 10 * by3.meta_group_size() + 100 * half.meta_group_rank() + 1000 * half.meta_group_size();
}

// a grid group erased into a thread_group cannot sync: known only at run time
extern "C" __global__ void grid_through_thread_group(int* out) {
    cg::thread_group g = cg::this_grid();
    out[g.thread_rank()] = (int)g.size();
    g.sync();
}
