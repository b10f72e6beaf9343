#pragma once
// <cooperative_groups.h> under the emulator: the block- and warp-level subset, each call mapped
// onto the collective it stands for (block sync = __syncthreads, tile operations = the *_sync
// warp intrinsics with the tile's lanes as mask and its size as width), so the emulator checks
// them exactly as it checks those: divergent syncs, exited lanes, lanes at different calls.
//
// Grid- and multi-grid-wide synchronization is refused at compile time, by design: the emulator
// runs one block at a time to completion, so a barrier across blocks could never be reached by
// the blocks that have not started. Split such a kernel into two launches.
namespace cooperative_groups {

namespace emu_detail {
inline unsigned block_rank() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
inline unsigned block_size() { return blockDim.x * blockDim.y * blockDim.z; }
}  // namespace emu_detail

class thread_block {
public:
    void sync(EMU_SITE) const { emu::block_barrier(emu::OP_SYNCTHREADS, 0, emu_file_, emu_line_); }
    unsigned thread_rank() const { return emu_detail::block_rank(); }
    unsigned size() const { return emu_detail::block_size(); }
    unsigned long long num_threads() const { return emu_detail::block_size(); }
    dim3 group_index() const { return dim3(blockIdx); }
    dim3 thread_index() const { return dim3(threadIdx); }
    dim3 group_dim() const { return blockDim; }
    dim3 dim_threads() const { return blockDim; }
};
inline thread_block this_thread_block() { return thread_block(); }

// A tile of N consecutive threads (thread rank order) inside one warp. Its rank among the tiles
// of its parent is fixed when it is made, as the parent may be the block or a larger tile.
template <unsigned N> class thread_block_tile {
    static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "thread_block_tile<N>: N is a power of two <= 32");
    unsigned first_lane() const { return emu_detail::block_rank() & 31u & ~(N - 1); }
    unsigned meta_rank_ = 0, meta_size_ = 1;
public:
    thread_block_tile() = default;
    thread_block_tile(unsigned meta_rank, unsigned meta_size) : meta_rank_(meta_rank), meta_size_(meta_size) {}
    // the tile's lanes within its warp, as the mask of the warp intrinsics
    unsigned mask() const { return (N == 32 ? 0xffffffffu : (1u << N) - 1u) << first_lane(); }
    void sync(EMU_SITE) const { emu::warp_collective(emu::OP_SYNCWARP, mask(), 0, 0, 32, emu_file_, emu_line_); }
    unsigned thread_rank() const { return emu_detail::block_rank() & (N - 1); }
    static constexpr unsigned size() { return N; }
    static constexpr unsigned long long num_threads() { return N; }
    unsigned meta_group_rank() const { return meta_rank_; }
    unsigned meta_group_size() const { return meta_size_; }
    template <typename T> T shfl(T v, int src, EMU_SITE) const {
        return emu::shfl(emu::OP_SHFL_IDX, mask(), v, src, (int)N, emu_file_, emu_line_);
    }
    template <typename T> T shfl_up(T v, unsigned d, EMU_SITE) const {
        return emu::shfl(emu::OP_SHFL_UP, mask(), v, (int)d, (int)N, emu_file_, emu_line_);
    }
    template <typename T> T shfl_down(T v, unsigned d, EMU_SITE) const {
        return emu::shfl(emu::OP_SHFL_DOWN, mask(), v, (int)d, (int)N, emu_file_, emu_line_);
    }
    template <typename T> T shfl_xor(T v, unsigned m, EMU_SITE) const {
        return emu::shfl(emu::OP_SHFL_XOR, mask(), v, (int)m, (int)N, emu_file_, emu_line_);
    }
    int any(int p, EMU_SITE) const { return (int)emu::warp_collective(emu::OP_ANY, mask(), p != 0, 0, 32, emu_file_, emu_line_); }
    int all(int p, EMU_SITE) const { return (int)emu::warp_collective(emu::OP_ALL, mask(), p != 0, 0, 32, emu_file_, emu_line_); }
    // bit i is the tile's thread of rank i, as on the GPU
    unsigned ballot(int p, EMU_SITE) const {
        return (unsigned)(emu::warp_collective(emu::OP_BALLOT, mask(), p != 0, 0, 32, emu_file_, emu_line_) >> first_lane());
    }
    template <typename T> unsigned match_any(T v, EMU_SITE) const {
        return __match_any_sync(mask(), v, emu_file_, emu_line_) >> first_lane();
    }
    template <typename T> unsigned match_all(T v, int& pred, EMU_SITE) const {
        return __match_all_sync(mask(), v, &pred, emu_file_, emu_line_) >> first_lane();
    }
};

// CUDA: "the parent group size must be evenly divisible by the size" of the tiles.
template <unsigned N, typename Parent>
inline thread_block_tile<N> tiled_partition(const Parent& parent, EMU_SITE) {
    if (parent.size() % N != 0)
        emu::fail_here(emu::format("tiled_partition<%u> at %s:%d: the parent group's %u threads are not a multiple of %u "
                                   "(CUDA requires the parent size to be evenly divisible by the tile size)",
                                   N, emu_file_, emu_line_, (unsigned)parent.size(), N));
    return thread_block_tile<N>((unsigned)parent.thread_rank() / N, (unsigned)parent.size() / N);
}
class thread_group {};
template <typename Parent> thread_group tiled_partition(const Parent&, unsigned)
    __attribute__((error("the emulator supports tiled_partition<N>(group) only (a compile-time tile size); "
                         "the run-time size form returns a type-erased thread_group it does not have")));

class grid_group {
public:
    unsigned long long thread_rank() const {
        unsigned long long b = blockIdx.x + (unsigned long long)gridDim.x * (blockIdx.y + (unsigned long long)gridDim.y * blockIdx.z);
        return b * emu_detail::block_size() + emu_detail::block_rank();
    }
    unsigned long long size() const {
        return (unsigned long long)gridDim.x * gridDim.y * gridDim.z * emu_detail::block_size();
    }
    unsigned long long num_threads() const { return size(); }
    bool is_valid() const { return true; }
    void sync() const
        __attribute__((error("grid_group::sync() is not supported by the emulator, by design: it runs one block at a time "
                             "to completion, so a grid-wide barrier could never be reached; split the kernel into two launches")));
};
inline grid_group this_grid() { return grid_group(); }
class multi_grid_group {};
multi_grid_group this_multi_grid()
    __attribute__((error("multi-grid groups are not supported by the emulator, by design: it runs one block at a time, "
                         "so cross-block (and cross-device) synchronization could never complete")));
class coalesced_group {};
coalesced_group coalesced_threads()
    __attribute__((error("coalesced_threads() is not supported by the emulator: it depends on which lanes the hardware "
                         "happens to run together, which the emulator does not model; use tiled_partition<N>")));

inline void sync(const thread_block& g, EMU_SITE) { emu::block_barrier(emu::OP_SYNCTHREADS, 0, emu_file_, emu_line_); (void)g; }
template <unsigned N> inline void sync(const thread_block_tile<N>& g, EMU_SITE) { g.sync(emu_file_, emu_line_); }
void sync(const grid_group&)
    __attribute__((error("cooperative_groups::sync(grid) is not supported by the emulator, by design: it runs one block at "
                         "a time to completion, so a grid-wide barrier could never be reached; split the kernel into two launches")));

}  // namespace cooperative_groups
