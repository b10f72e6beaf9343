#pragma once
// <cooperative_groups/reduce.h> under the emulator: cg::reduce over a thread_block_tile as a
// butterfly of tile.shfl_xor calls, so every lane ends with the same value (a+b == b+a in IEEE);
// over a coalesced group (any set of lanes) as a tree of shfl_down by rank, then a broadcast.
#include <cooperative_groups.h>
namespace cooperative_groups {
template <typename T> struct plus { T operator()(T a, T b) const { return a + b; } };
template <typename T> struct less { T operator()(T a, T b) const { return b < a ? b : a; } };
template <typename T> struct greater { T operator()(T a, T b) const { return a < b ? b : a; } };
template <typename T> struct bit_and { T operator()(T a, T b) const { return a & b; } };
template <typename T> struct bit_or { T operator()(T a, T b) const { return a | b; } };
template <typename T> struct bit_xor { T operator()(T a, T b) const { return a ^ b; } };

template <unsigned N, typename T, typename Op>
inline T reduce(const thread_block_tile<N>& g, T v, Op op, EMU_SITE) {
    for (unsigned o = N / 2; o > 0; o /= 2) v = op(v, g.shfl_xor(v, o, emu_file_, emu_line_));
    return v;
}
template <typename T, typename Op>
inline T reduce(const coalesced_group& g, T v, Op op, EMU_SITE) {
    // after the step with offset o, rank r holds the ranks [r, r + 2o) (those that exist)
    unsigned n = g.size(), r = g.thread_rank();
    for (unsigned o = 1; o < n; o *= 2) {
        T other = g.shfl_down(v, o, emu_file_, emu_line_);
        if (r + o < n) v = op(v, other);
    }
    return g.shfl(v, 0, emu_file_, emu_line_);
}
}  // namespace cooperative_groups
