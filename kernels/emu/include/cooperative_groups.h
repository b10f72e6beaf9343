#pragma once
// <cooperative_groups.h> under the emulator: the block- and warp-level groups, each call mapped
// onto the collective it stands for (block sync = __syncthreads, warp-level group operations = the
// *_sync warp intrinsics with the group's lanes as mask), so the emulator checks them exactly as it
// checks those: divergent syncs, exited lanes, lanes at different calls.
//
// Refused, each with one compile error naming the feature at the .cu line that uses it (the
// builder prints that one line): grid- and multi-grid-wide synchronization and thread block
// clusters, by design: the emulator runs one block at a time to completion, so a barrier across
// blocks could never be reached by the blocks that have not started. Split such a kernel into two
// launches.
namespace cooperative_groups {

namespace details {
// CUDA's group type ids (thread_group::get_type())
constexpr unsigned coalesced_group_id = 1, grid_group_id = 3, thread_block_id = 4;
}  // namespace details

class thread_group;
namespace emu_detail {
struct access;  // the run-time tiled_partition reads a group's lanes
inline unsigned block_rank() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
inline unsigned block_size() { return blockDim.x * blockDim.y * blockDim.z; }
inline unsigned lane() { return block_rank() & 31u; }
inline unsigned lanemask_lt() { return (1u << lane()) - 1u; }
inline unsigned long long grid_rank() {
    unsigned long long b = blockIdx.x + (unsigned long long)gridDim.x * (blockIdx.y + (unsigned long long)gridDim.y * blockIdx.z);
    return b * block_size() + block_rank();
}
inline unsigned long long grid_size() { return (unsigned long long)gridDim.x * gridDim.y * gridDim.z * block_size(); }
// bit i of the result is the i-th lane of `mask` (in lane order): a warp-wide mask seen in ranks
inline unsigned pack_lanes(unsigned mask, unsigned lanes) {
    unsigned out = 0, rank = 0;
    for (unsigned b = 0; b < 32; ++b)
        if (mask >> b & 1u) { if (lanes >> b & 1u) out |= 1u << rank; ++rank; }
    return out;
}
// the lane of the n-th member (n from 0) of `mask`, or 32 when it has fewer members
inline unsigned nth_lane(unsigned mask, unsigned n) {
    for (unsigned b = 0; b < 32; ++b)
        if ((mask >> b & 1u) && n-- == 0) return b;
    return 32;
}
}  // namespace emu_detail

// The generic group every group converts to (passed by value, as CUDA's sumReduction(thread_group
// g, ...) does): it keeps the kind and, for a warp-level group, its lanes, and dispatches on them.
class thread_group {
protected:
    unsigned type_ = details::thread_block_id;
    unsigned mask_ = 0;                   // a warp-level group's lanes within its warp
    unsigned meta_rank_ = 0, meta_size_ = 1;
    bool tiled_ = false;                  // lanes are consecutive ranks of the parent (a tile)
    explicit thread_group(unsigned type, unsigned mask = 0, unsigned meta_rank = 0, unsigned meta_size = 1,
                          bool tiled = false)
        : type_(type), mask_(mask), meta_rank_(meta_rank), meta_size_(meta_size), tiled_(tiled) {}
    friend struct emu_detail::access;
public:
    unsigned long long size() const {
        return type_ == details::coalesced_group_id ? (unsigned long long)__builtin_popcount(mask_)
             : type_ == details::grid_group_id ? emu_detail::grid_size() : emu_detail::block_size();
    }
    unsigned long long num_threads() const { return size(); }
    unsigned long long thread_rank() const {
        return type_ == details::coalesced_group_id ? (unsigned long long)__builtin_popcount(mask_ & emu_detail::lanemask_lt())
             : type_ == details::grid_group_id ? emu_detail::grid_rank() : emu_detail::block_rank();
    }
    void sync(EMU_SITE) const {
        if (type_ == details::coalesced_group_id)
            emu::warp_collective(emu::OP_SYNCWARP, mask_, 0, 0, 32, emu_file_, emu_line_);
        else if (type_ == details::grid_group_id)  // known only at run time here: the group was erased
            emu::fail_here(emu::format("thread_group::sync() of a grid group at %s:%d is not supported by the emulator, by "
                                       "design: it runs one block at a time to completion, so a grid-wide barrier could "
                                       "never be reached; split the kernel into two launches", emu_file_, emu_line_));
        else
            emu::block_barrier(emu::OP_SYNCTHREADS, 0, emu_file_, emu_line_);
    }
    unsigned get_type() const { return type_; }
};

class thread_block : public thread_group {
public:
    thread_block() : thread_group(details::thread_block_id) {}
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
// The scratch CUDA wants for tiles wider than a warp: accepted and unused, so that a source with
// such a kernel builds; instantiating thread_block_tile<64> is what is refused (one line).
template <unsigned MaxBlockSize = 1024> struct block_tile_memory {};
template <unsigned MaxBlockSize> inline thread_block this_thread_block(block_tile_memory<MaxBlockSize>&) { return thread_block(); }

// A group of lanes of one warp given by a mask: what coalesced_threads(), labeled_partition,
// binary_partition and the run-time tiled_partition of a coalesced group return. Its ranks are
// the lane order of its members; ballot and match results are packed into ranks, as on the GPU.
class coalesced_group : public thread_group {
    unsigned lane_of(unsigned rank, const char* what, const char* file, int line) const {
        unsigned l = emu_detail::nth_lane(mask_, rank);
        if (l >= 32)
            emu::fail_here(emu::format("coalesced_group::%s at %s:%d: source rank %u is not below the group's size %d",
                                       what, file, line, rank, __builtin_popcount(mask_)));
        return l;
    }
public:
    explicit coalesced_group(unsigned mask, unsigned meta_rank = 0, unsigned meta_size = 1, bool tiled = false)
        : thread_group(details::coalesced_group_id, mask, meta_rank, meta_size, tiled) {}
    unsigned size() const { return (unsigned)__builtin_popcount(mask_); }
    unsigned num_threads() const { return size(); }
    unsigned thread_rank() const { return (unsigned)__builtin_popcount(mask_ & emu_detail::lanemask_lt()); }
    unsigned meta_group_rank() const { return meta_rank_; }
    unsigned meta_group_size() const { return meta_size_; }
    unsigned mask() const { return mask_; }
    bool is_tiled() const { return tiled_; }
    void sync(EMU_SITE) const { emu::warp_collective(emu::OP_SYNCWARP, mask_, 0, 0, 32, emu_file_, emu_line_); }
    template <typename T> T shfl(T v, unsigned src_rank, EMU_SITE) const {
        return emu::shfl(emu::OP_SHFL_IDX, mask_, v, (int)lane_of(src_rank, "shfl", emu_file_, emu_line_), 32, emu_file_, emu_line_);
    }
    // by rank: the member `delta` ranks above (below), or the caller itself where there is none
    template <typename T> T shfl_down(T v, unsigned delta, EMU_SITE) const {
        unsigned r = thread_rank() + delta, l = r < size() ? emu_detail::nth_lane(mask_, r) : emu_detail::lane();
        return emu::shfl(emu::OP_SHFL_IDX, mask_, v, (int)l, 32, emu_file_, emu_line_);
    }
    template <typename T> T shfl_up(T v, unsigned delta, EMU_SITE) const {
        unsigned r = thread_rank(), l = r >= delta ? emu_detail::nth_lane(mask_, r - delta) : emu_detail::lane();
        return emu::shfl(emu::OP_SHFL_IDX, mask_, v, (int)l, 32, emu_file_, emu_line_);
    }
    int any(int p, EMU_SITE) const { return (int)emu::warp_collective(emu::OP_ANY, mask_, p != 0, 0, 32, emu_file_, emu_line_); }
    int all(int p, EMU_SITE) const { return (int)emu::warp_collective(emu::OP_ALL, mask_, p != 0, 0, 32, emu_file_, emu_line_); }
    unsigned ballot(int p, EMU_SITE) const {
        return emu_detail::pack_lanes(mask_, (unsigned)emu::warp_collective(emu::OP_BALLOT, mask_, p != 0, 0, 32, emu_file_, emu_line_));
    }
    template <typename T> unsigned match_any(T v, EMU_SITE) const {
        return emu_detail::pack_lanes(mask_, __match_any_sync(mask_, v, emu_file_, emu_line_));
    }
    template <typename T> unsigned match_all(T v, int& pred, EMU_SITE) const {
        return emu_detail::pack_lanes(mask_, __match_all_sync(mask_, v, &pred, emu_file_, emu_line_));
    }
};

// The lanes of the calling warp that are "converged" at this call. On the GPU that is whichever
// lanes the hardware happens to run together; here it is the lanes that wait at this call site
// when no lane of the block can run on (see emu::coalesce in cuda_emu.h): lanes that took another
// branch are not in it, lanes that reach the site later (another loop iteration) may be. A kernel
// that is correct for every grouping passes; one that assumes a full warp fails in some order.
inline coalesced_group coalesced_threads(EMU_SITE) { return coalesced_group(emu::coalesce(emu_file_, emu_line_)); }

// A tile of N consecutive threads (thread rank order) inside one warp. Its rank among the tiles
// of its parent is fixed when it is made, as the parent may be the block or a larger tile.
// (CUDA's second parameter, the parent type, is accepted and changes nothing.)
template <unsigned N, typename ParentT = void> class thread_block_tile;
template <unsigned N> class thread_block_tile<N, void> : public thread_group {
    static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0,
                  "the emulator supports thread_block_tile<N> for N a power of two <= 32 (one warp)");
    unsigned first_lane() const { return emu_detail::block_rank() & 31u & ~(N - 1); }
public:
    explicit thread_block_tile(unsigned meta_rank = 0, unsigned meta_size = 1)
        : thread_group(details::coalesced_group_id, 0, meta_rank, meta_size, true) {
        mask_ = (N == 32 ? 0xffffffffu : (1u << N) - 1u) << first_lane();
    }
    // the tile's lanes within its warp, as the mask of the warp intrinsics
    unsigned mask() const { return mask_; }
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
template <unsigned N, typename ParentT> class thread_block_tile : public thread_block_tile<N, void> {
public:
    using thread_block_tile<N, void>::thread_block_tile;
};

// CUDA: "the parent group size must be evenly divisible by the size" of the tiles.
template <unsigned N, typename Parent>
inline thread_block_tile<N, Parent> tiled_partition(const Parent& parent, EMU_SITE) {
    if (parent.size() % N != 0)
        emu::fail_here(emu::format("tiled_partition<%u> at %s:%d: the parent group's %u threads are not a multiple of %u "
                                   "(CUDA requires the parent size to be evenly divisible by the tile size)",
                                   N, emu_file_, emu_line_, (unsigned)parent.size(), N));
    return thread_block_tile<N, Parent>((unsigned)parent.thread_rank() / N, (unsigned)parent.size() / N);
}

// The run-time size form, as CUDA computes it: tiles of `tilesz` consecutive ranks (the last one
// may be partial), each a warp-level group; a coalesced parent stays coalesced.
namespace emu_detail {
struct access {
    static coalesced_group tile(const thread_group& p, unsigned tilesz, const char* file, int line) {
        if (tilesz == 0 || tilesz > 32 || (tilesz & (tilesz - 1)))
            emu::fail_here(emu::format("tiled_partition(group, %u) at %s:%d: the tile size must be a power of two <= 32 "
                                       "(the GPU aborts the kernel)", tilesz, file, line));
        if (p.type_ == details::grid_group_id)
            emu::fail_here(emu::format("tiled_partition(grid, %u) at %s:%d: only a block, a tile or a coalesced group can be "
                                       "partitioned", tilesz, file, line));
        unsigned rank = (unsigned)p.thread_rank(), size = (unsigned)p.size(), first = rank / tilesz * tilesz;
        unsigned meta_size = (size + tilesz - 1) / tilesz;
        if (p.type_ == details::coalesced_group_id && !p.tiled_) {  // the next tilesz members in lane order
            unsigned m = 0;
            for (unsigned r = first; r < first + tilesz && r < size; ++r) m |= 1u << nth_lane(p.mask_, r);
            return coalesced_group(m, rank / tilesz, meta_size, false);
        }
        unsigned len = size - first < tilesz ? size - first : tilesz;
        unsigned m = (len == 32 ? 0xffffffffu : (1u << len) - 1u) << (lane() & ~(tilesz - 1));
        return coalesced_group(m, rank / tilesz, meta_size, true);
    }
};
}  // namespace emu_detail
inline thread_group tiled_partition(const thread_group& parent, unsigned tilesz, EMU_SITE) {
    return emu_detail::access::tile(parent, tilesz, emu_file_, emu_line_);
}
inline thread_group tiled_partition(const thread_block& parent, unsigned tilesz, EMU_SITE) {
    return emu_detail::access::tile(parent, tilesz, emu_file_, emu_line_);
}
inline coalesced_group tiled_partition(const coalesced_group& parent, unsigned tilesz, EMU_SITE) {
    return emu_detail::access::tile(parent, tilesz, emu_file_, emu_line_);
}

// labeled_partition / binary_partition: the members of a warp-level group with the same label
// (a match over the parent's lanes), ranked among the partitions by their first lane, as CUDA does.
namespace emu_detail {
inline coalesced_group labeled(unsigned parent, unsigned long long label, const char* file, int line) {
    unsigned sub = __match_any_sync(parent, label, file, line);
    unsigned leader = (unsigned)__builtin_ctz(sub);
    unsigned leaders = __ballot_sync(parent, leader == lane(), file, line);
    return coalesced_group(sub, (unsigned)__builtin_popcount(leaders & ((1u << leader) - 1u)), (unsigned)__builtin_popcount(leaders));
}
inline coalesced_group binary(unsigned parent, bool pred, const char* file, int line) {
    unsigned set = __ballot_sync(parent, pred, file, line);
    if (set == parent || set == 0) return coalesced_group(parent, 0, 1);
    return coalesced_group(parent & (pred ? set : ~set), pred ? 1 : 0, 2);
}
template <typename L> unsigned long long label_bits(L label) {
    static_assert(std::is_integral<L>::value || std::is_pointer<L>::value,
                  "labeled_partition: the label must be an integral or pointer type");
    return (unsigned long long)label;
}
}  // namespace emu_detail
template <typename L> inline coalesced_group labeled_partition(const coalesced_group& g, L label, EMU_SITE) {
    if (std::is_same<L, bool>::value) return emu_detail::binary(g.mask(), label, emu_file_, emu_line_);
    return emu_detail::labeled(g.mask(), emu_detail::label_bits(label), emu_file_, emu_line_);
}
template <typename L, unsigned N, typename P> inline coalesced_group labeled_partition(const thread_block_tile<N, P>& g, L label, EMU_SITE) {
    if (std::is_same<L, bool>::value) return emu_detail::binary(g.mask(), label, emu_file_, emu_line_);
    return emu_detail::labeled(g.mask(), emu_detail::label_bits(label), emu_file_, emu_line_);
}
inline coalesced_group binary_partition(const coalesced_group& g, bool pred, EMU_SITE) {
    return emu_detail::binary(g.mask(), pred, emu_file_, emu_line_);
}
template <unsigned N, typename P> inline coalesced_group binary_partition(const thread_block_tile<N, P>& g, bool pred, EMU_SITE) {
    return emu_detail::binary(g.mask(), pred, emu_file_, emu_line_);
}

class grid_group : public thread_group {
public:
    grid_group() : thread_group(details::grid_group_id) {}
    unsigned long long thread_rank() const { return emu_detail::grid_rank(); }
    unsigned long long size() const { return emu_detail::grid_size(); }
    unsigned long long num_threads() const { return size(); }
    dim3 group_dim() const { return gridDim; }
    dim3 dim_blocks() const { return gridDim; }
    dim3 block_index() const { return dim3(blockIdx); }
    unsigned long long block_rank() const {
        return blockIdx.x + (unsigned long long)gridDim.x * (blockIdx.y + (unsigned long long)gridDim.y * blockIdx.z);
    }
    unsigned long long num_blocks() const { return (unsigned long long)gridDim.x * gridDim.y * gridDim.z; }
    bool is_valid() const { return true; }
#define EMU_GRID_REFUSAL(what) __attribute__((error(what " is not supported by the emulator, by design: it runs one block " \
    "at a time to completion, so a grid-wide barrier could never be reached; split the kernel into two launches")))
    void sync() const EMU_GRID_REFUSAL("grid_group::sync()");
    unsigned barrier_arrive() const EMU_GRID_REFUSAL("grid_group::barrier_arrive()");
    void barrier_wait(unsigned) const EMU_GRID_REFUSAL("grid_group::barrier_wait()");
};
inline grid_group this_grid() { return grid_group(); }
class multi_grid_group {};
multi_grid_group this_multi_grid()
    __attribute__((error("this_multi_grid() (multi-grid groups) is not supported by the emulator, by design: it runs one "
                         "block at a time, so cross-block (and cross-device) synchronization could never complete")));
class cluster_group {};
cluster_group this_cluster()
    __attribute__((error("this_cluster() (thread block clusters) is not supported by the emulator, by design: it runs one "
                         "block at a time, so the blocks of a cluster are never resident together (no cluster barrier, "
                         "no distributed shared memory)")));

inline void sync(const thread_block& g, EMU_SITE) { emu::block_barrier(emu::OP_SYNCTHREADS, 0, emu_file_, emu_line_); (void)g; }
template <unsigned N, typename P> inline void sync(const thread_block_tile<N, P>& g, EMU_SITE) { g.sync(emu_file_, emu_line_); }
inline void sync(const coalesced_group& g, EMU_SITE) { g.sync(emu_file_, emu_line_); }
inline void sync(const thread_group& g, EMU_SITE) { g.sync(emu_file_, emu_line_); }
void sync(const grid_group&) EMU_GRID_REFUSAL("cooperative_groups::sync(grid)");
#undef EMU_GRID_REFUSAL

// the older free-function spellings
template <typename G> inline auto thread_rank(const G& g) -> decltype(g.thread_rank()) { return g.thread_rank(); }
template <typename G> inline auto group_size(const G& g) -> decltype(g.size()) { return g.size(); }

}  // namespace cooperative_groups
