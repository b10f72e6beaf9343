// emu_profile.h - `unetcu profile`: Nsight-Compute-style memory counters from the emulator (the
// profile build: -DEMU_SANITIZE=3, included by emu_sanitize.h, whose instrumentation calls
// access() below for every load and store of tracked memory: shared memory and the launch's
// pointer arguments).
//
// The model (kernels/emu/README.md says the same for users):
//   request   one warp-level load or store instruction instance: the lanes of one warp (32
//             consecutive threads of the block) that execute the same access site (the machine
//             instruction's address in this build) for the k-th time in the same barrier interval.
//             A lane that reaches the site fewer times than others (a divergent branch, a shorter
//             loop, an early return) is an inactive lane of the later requests: right where the
//             lanes that skip do so at the end (a bound check past the right edge, a partial warp),
//             but a lane that skips an earlier pass (a left halo's check failing on the first
//             iteration only) has its passes matched one early, as the emulator does not see loop
//             iterations. A request counts when at least one lane is active. Accesses wider than 16
//             bytes (a struct copy) are 16-byte pieces, each its own request, as nvcc emits them.
//   sectors   global memory: the distinct 32-byte segments the active lanes' bytes fall in, with
//             each pointer argument's first byte taken as 256-byte aligned (cudaMalloc's).
//   wavefronts shared memory: 32 banks of 4 bytes. A request is served in phases: the whole warp
//             for accesses up to 4 bytes, half-warps (lanes 0-15, 16-31) for 8-byte and quarter-warps
//             for 16-byte accesses. A phase takes as many wavefronts as the most distinct 4-byte
//             words any one bank holds among its lanes' bytes (lanes reading one word: a broadcast,
//             one wavefront). Bank conflicts = wavefronts - active phases.
//   compulsory bytes: the distinct bytes of each pointer argument read (written) by the launch
//             (with a sample of blocks: each block's new bytes times its weight, capped at the size).
// Atomics count toward the compulsory bytes (read and written), not toward requests. wmma: the
// emulated lane 0 does the whole warp's load or store; its i-th access of one call is counted as
// lane i % 32's (i / 32)-th, the tile's elements spread over the warp's lanes in row order.
#pragma once
#include <unordered_map>

namespace emu {
namespace san {
namespace prof {

struct Key {
    uint32_t site, warp, k;
    uint8_t write, part;  // part: the 16-byte piece of an access wider than 16 bytes
    bool operator==(const Key& o) const {
        return site == o.site && warp == o.warp && k == o.k && write == o.write && part == o.part;
    }
};
struct KeyHash {
    size_t operator()(const Key& a) const {
        uint64_t h = ((uint64_t)a.site << 32 | a.warp) * 0x9E3779B97F4A7C15ull;
        return (size_t)(h ^ ((uint64_t)a.k << 9 | (uint64_t)a.part << 1 | a.write) * 0xC2B2AE3D27D4EB4Full);
    }
};
struct Req {
    uint32_t mask = 0;
    bool shared = false;
    uint64_t addr[32];   // global: argument index << 40 | offset from its start; shared: host address
    uint8_t size[32];
};
struct Site { double requests = 0, units = 0, ideal = 0; };  // units: sectors or wavefronts

struct State {
    std::unordered_map<uint64_t, uint32_t> seen;    // (thread << 32 | site) -> executions this interval
    std::unordered_map<Key, Req, KeyHash> open;     // this interval's requests
    std::unordered_map<uint64_t, Site> sites;       // (site << 2 | shared << 1 | write) -> weighted sums
    std::vector<double> weight[3];                  // per grid index and dimension: 0 = block not run
    double block_weight = 1;
    int wmma_i = -1;                                // >= 0 inside a wmma call of lane 0
};
inline State p;

EMU_NOSAN inline uint64_t* bitmap(size_t bytes) { return (uint64_t*)map_zeroed((bytes + 63) / 64 * 8); }

// The distinct bytes of range r in [a, a + n): mark them, count the new ones (weighted by the
// block's sample weight: a sampled block stands for its stratum's blocks and their bytes).
EMU_NOSAN inline void mark(uint64_t* bits, double* count, uintptr_t off, size_t n) {
    for (size_t i = off; i < off + n; ++i) {
        uint64_t b = 1ull << (i & 63);
        if (!(bits[i >> 6] & b)) { bits[i >> 6] |= b; *count += p.block_weight; }
    }
}

EMU_NOSAN inline void compulsory(Range& r, uintptr_t a, size_t n, bool write) {
    if (r.shared || !r.prof_read) return;
    size_t m = n < r.hi - a ? n : r.hi - a;
    if (write) mark(r.prof_written, &r.prof_written_n, a - r.lo, m);
    else mark(r.prof_read, &r.prof_read_n, a - r.lo, m);
}

EMU_NOSAN inline void access(const Range* rc, uintptr_t a, size_t n, bool write, int t, uint32_t site) {
    Range& r = *const_cast<Range*>(rc);
    compulsory(r, a, n, write);
    if (p.wmma_i >= 0) t = (t & ~31) | (p.wmma_i++ & 31);  // wmma: lane 0 stands for the warp
    uint32_t k = p.seen[(uint64_t)t << 32 | site]++;
    int lane = t & 31;
    // the widest load or store is 16 bytes: a wider copy (a struct) is several instructions
    for (size_t off = 0, part = 0; off < n; off += 16, ++part) {
        Req& q = p.open[Key{site, (uint32_t)t >> 5, k, (uint8_t)write, (uint8_t)(part < 255 ? part : 255)}];
        if (q.mask >> lane & 1u) continue;  // (cannot happen: the k-th execution of a lane is unique)
        q.mask |= 1u << lane;
        q.shared = r.shared;
        uintptr_t b = a + off;
        q.addr[lane] = r.shared ? (uint64_t)b : ((uint64_t)r.index << 40 | (uint64_t)(b - r.lo));
        q.size[lane] = (uint8_t)(n - off < 16 ? n - off : 16);
    }
}

EMU_NOSAN inline int sort_unique(uint64_t* v, int n) {
    std::sort(v, v + n);
    return (int)(std::unique(v, v + n) - v);
}

// Sectors of a global request, and the fewest its bytes could occupy.
EMU_NOSAN inline void global_cost(const Req& q, double* sectors, double* ideal) {
    uint64_t sec[32 * 9], byte_lo[32], byte_hi[32];
    int ns = 0, nl = 0;
    for (int l = 0; l < 32; ++l) {
        if (!(q.mask >> l & 1u)) continue;
        uint64_t a = q.addr[l], e = a + q.size[l];
        for (uint64_t s = a >> 5; s <= (e - 1) >> 5 && ns < 32 * 9; ++s) sec[ns++] = s;
        byte_lo[nl] = a; byte_hi[nl++] = e;
    }
    *sectors = sort_unique(sec, ns);
    // distinct bytes: merge the lanes' intervals
    uint64_t idx[32];
    for (int i = 0; i < nl; ++i) idx[i] = byte_lo[i] << 8 | (uint64_t)i;  // offsets fit 48 bits
    std::sort(idx, idx + nl);
    uint64_t bytes = 0, end = 0;
    for (int i = 0; i < nl; ++i) {
        int j = (int)(idx[i] & 255);
        uint64_t lo = byte_lo[j] > end ? byte_lo[j] : end;
        if (byte_hi[j] > lo) bytes += byte_hi[j] - lo;
        if (byte_hi[j] > end) end = byte_hi[j];
    }
    *ideal = (double)((bytes + 31) / 32);
}

// Wavefronts of a shared request and its active phases (the conflict-free cost).
EMU_NOSAN inline void shared_cost(const Req& q, double* wavefronts, double* phases) {
    int size = 4;
    for (int l = 0; l < 32; ++l)
        if (q.mask >> l & 1u) { size = q.size[l]; break; }
    int per_phase = size <= 4 ? 32 : size <= 8 ? 16 : 8;
    double wf = 0, ph = 0;
    for (int l0 = 0; l0 < 32; l0 += per_phase) {
        uint64_t words[32 * 4];
        int nw = 0;
        for (int l = l0; l < l0 + per_phase; ++l) {
            if (!(q.mask >> l & 1u)) continue;
            uint64_t a = q.addr[l], e = a + (q.size[l] ? q.size[l] : 1);
            for (uint64_t w = a >> 2; w <= (e - 1) >> 2 && nw < 32 * 4; ++w) words[nw++] = w;
        }
        if (!nw) continue;
        nw = sort_unique(words, nw);
        int per_bank[32] = {0}, most = 0;
        for (int i = 0; i < nw; ++i) {
            int c = ++per_bank[words[i] & 31];
            if (c > most) most = c;
        }
        wf += most;
        ph += 1;
    }
    *wavefronts = wf;
    *phases = ph;
}

// The end of a barrier interval (or of the block): its requests are complete.
EMU_NOSAN inline void flush() {
    Busy busy;
    for (auto& kv : p.open) {
        const Req& q = kv.second;
        double units, ideal;
        if (q.shared) shared_cost(q, &units, &ideal);
        else global_cost(q, &units, &ideal);
        Site& s = p.sites[(uint64_t)kv.first.site << 2 | (uint64_t)q.shared << 1 | kv.first.write];
        s.requests += p.block_weight;
        s.units += p.block_weight * units;
        s.ideal += p.block_weight * ideal;
    }
    p.open.clear();
    p.seen.clear();
}

// The sample of blocks (Python chooses it): weight[d][i] for grid index i of dimension d.
EMU_NOSAN inline bool sampled(const uint3& b) {
    if (p.weight[0].empty()) { p.block_weight = 1; return true; }
    double w = p.weight[0][b.x] * p.weight[1][b.y] * p.weight[2][b.z];
    p.block_weight = w;
    return w > 0;
}

EMU_NOSAN inline void begin(const double* weights, const unsigned* grid, int sampled_grid) {
    Busy busy;
    p.sites.clear();
    p.open.clear();
    p.seen.clear();
    p.wmma_i = -1;
    for (int d = 0; d < 3; ++d) {
        p.weight[d].clear();
        if (sampled_grid) {
            p.weight[d].assign(weights, weights + grid[d]);
            weights += grid[d];
        }
    }
}

// One line per access site: S|site|shared|write|requests|units|ideal; one per argument:
// R|index|distinct bytes read|distinct bytes written
EMU_NOSAN inline size_t take(char* buf, size_t n) {
    Busy busy;
    std::string out;
    for (auto& kv : p.sites)
        out += format("S|%u|%d|%d|%.17g|%.17g|%.17g\n", (unsigned)(kv.first >> 2), (int)(kv.first >> 1 & 1),
                      (int)(kv.first & 1), kv.second.requests, kv.second.units, kv.second.ideal);
    for (int i = 0; i < g.n_global; ++i)
        out += format("R|%d|%.17g|%.17g\n", g.global[i].index, g.global[i].prof_read_n, g.global[i].prof_written_n);
    if (out.size() < n) memcpy(buf, out.c_str(), out.size() + 1);
    return out.size();
}

}  // namespace prof
}  // namespace san
}  // namespace emu
