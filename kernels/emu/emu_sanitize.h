// emu_sanitize.h - racecheck and initcheck for the emulator (included by cuda_emu.h when the build
// has -DEMU_SANITIZE=1 (racecheck) or 2 (initcheck)).
//
// The build compiles the kernel with g++'s -fsanitize=thread instrumentation but links no TSan
// runtime: every load and store of the kernel calls __tsan_readN / __tsan_writeN, and the handlers
// below are ours. They look only at tracked memory: the block's shared memory (the dynamic buffer
// and every static __shared__ variable) and the launch's pointer arguments (global memory). The
// emulator's own data, fiber stacks and host memory are never looked at.
//
// racecheck keeps, per tracked byte, the last write and the last two reads of distinct threads:
// (CUDA thread, barrier interval, the thread's warp clock, call site, size). Two accesses of
// different threads conflict when at least one writes, both fall in the same barrier interval
// (no __syncthreads between them) and, for two lanes of one warp, no warp collective that both took
// part in lies between them. Warp collectives are tracked with a vector clock per lane (32 entries:
// what the lane knows of each lane of its warp), joined over the mask at every __syncwarp, shuffle,
// vote, reduce, match or wmma call. The decision depends only on these intervals, never on the
// order the scheduler ran the threads in, so a missing barrier is found in every order.
// Atomics are not accesses for racecheck (they are ordered by the hardware).
//
// initcheck keeps one byte per tracked byte: written or not. Shared memory starts every block
// unwritten; a tracked device allocation (unetcu.engines.sanitize.track, used by the ops' output buffers)
// starts unwritten and stays written across launches. A read of an unwritten byte is reported.
//
// Blocks run one after another on one OS thread in these builds (no OpenMP), so the state below is
// plain globals. Hazards are collected per launch, deduplicated by (kind, both call sites), and
// handed to Python by emu_san_take(), which names the lines (addr2line on the .so).
#pragma once
#include <dlfcn.h>
#include <algorithm>

namespace emu {
namespace san {

// (not instrumented; g++ inlines only functions with the same attribute into them, so every
// function of the hot path carries it and nothing of the STL is called there)
#define EMU_NOSAN __attribute__((no_sanitize_thread))
#define EMU_NOSAN_HOT __attribute__((no_sanitize_thread, always_inline))
enum { MAX_RANGES = 256 };
static const char* const DYNAMIC_SHARED = "extern __shared__";  // the dynamic buffer's range name (compared by address)

enum Kind : unsigned char { READ = 0, WRITE = 1 };

struct Access {  // one remembered access of a byte
    uint32_t epoch, site, clk;
    uint16_t tid;
    uint8_t size, pad;
};
struct RCell { Access w, r1, r2; };  // last write; the last reads by two distinct threads

struct Range {
    uintptr_t lo, hi;
    bool shared;
    const char* name;
    unsigned char* init;   // initcheck: 1 byte per byte (null: not tracked for initcheck)
    RCell* race;           // racecheck shadow (null: none)
    size_t race_bytes;     // what was mapped for it
    bool owns_init;
    int index;             // global: which range of the launch (the Python side names the argument)
    uint64_t* prof_read = nullptr;      // profile: one bit per byte read / written (global ranges)
    uint64_t* prof_written = nullptr;
    double prof_read_n = 0, prof_written_n = 0;  // distinct bytes, each weighted by its block's sample weight
};

struct Hazard {
    const char* kind;      // "RAW", "WAR", "WAW" or "UNINIT" (compared by address)
    bool shared, same_warp;
    const char* name;
    int index;
    uintptr_t offset;
    uint3 block, t1, t2;
    Access a1, a2;         // a1 the earlier access (racecheck only), a2 the current one
    unsigned long long count;
};

struct State {
    int mode = 0;                       // 1 racecheck, 2 initcheck, 3 profile (emu_profile.h)
    Sched* s = nullptr;                 // the running block's scheduler (one OS thread)
    Range global[MAX_RANGES];           // this launch's pointer arguments
    Range shared[MAX_RANGES];           // dynamic buffer and static __shared__ variables
    int n_global = 0, n_shared = 0;
    uint32_t* wclk = nullptr;           // [thread][32]: what each thread knows of its warp's clocks
    size_t wclk_n = 0;
    uint32_t epoch = 1;                 // barrier interval, unique over the process
    uintptr_t base = 0;                 // this .so's load address (sites are offsets from it)
    std::vector<Hazard> hazards;
    size_t dropped = 0;
    const Range* last = nullptr;
    bool busy = false;                  // inside a handler: accesses of out-of-line functions are ours
    uintptr_t stk_lo = 0, stk_span = 0; // the fiber stacks: never tracked, rejected first
};
inline State g;
// Bookkeeping called from instrumented code (vector growth, ...) must not see itself.
struct Busy {
    bool old;
    EMU_NOSAN Busy() : old(g.busy) { g.busy = true; }
    EMU_NOSAN ~Busy() { g.busy = old; }
};

EMU_NOSAN inline void* map_zeroed(size_t n) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) { fprintf(stderr, "unetcu emulator: cannot map %zu bytes of sanitizer shadow\n", n); abort(); }
    return p;
}

EMU_NOSAN inline void free_range(Range& r) {
    if (r.race) munmap(r.race, r.race_bytes);
    if (r.prof_read) {
        size_t bits = (r.hi - r.lo + 63) / 64 * 8;
        munmap(r.prof_read, bits);
        munmap(r.prof_written, bits);
        r.prof_read = r.prof_written = nullptr;
    }
    if (r.owns_init && r.init) free(r.init);
    r.race = nullptr; r.init = nullptr;
}

EMU_NOSAN inline void add_shadow(Range& r, bool for_init) {
    size_t n = r.hi - r.lo;
    if (g.mode == 1) { r.race_bytes = n * sizeof(RCell); r.race = (RCell*)map_zeroed(r.race_bytes); }
    if (g.mode == 2 && for_init) { r.init = (unsigned char*)calloc(n, 1); r.owns_init = true; }
    if (g.mode == 3 && !r.shared) {
        size_t bits = (n + 63) / 64 * 8;
        r.prof_read = (uint64_t*)map_zeroed(bits);
        r.prof_written = (uint64_t*)map_zeroed(bits);
    }
}

// A shared variable or the dynamic buffer: registered once per address, unwritten at every block start.
EMU_NOSAN inline void shared_range(const void* p, size_t n, const char* name) {
    Busy busy;
    uintptr_t lo = (uintptr_t)p;
    for (int i = 0; i < g.n_shared; ++i) {
        Range& r = g.shared[i];
        if (r.lo == lo) {
            if (r.hi - lo == n) { if (r.init) memset(r.init, 0, n); return; }
            free_range(r);
            r = g.shared[--g.n_shared];
            break;
        }
    }
    if (g.n_shared == MAX_RANGES) { fprintf(stderr, "unetcu emulator: more than %d shared variables\n", (int)MAX_RANGES); abort(); }
    Range r{lo, lo + n, true, name, nullptr, nullptr, 0, false, -1};
    add_shadow(r, true);
    g.shared[g.n_shared++] = r;
    g.last = nullptr;
}

}  // namespace san
}  // namespace emu
#if EMU_SANITIZE == 3
#include "emu_profile.h"
#endif
namespace emu {
namespace san {

EMU_NOSAN_HOT inline const Range* find(uintptr_t a) {
    if (g.last && a >= g.last->lo && a < g.last->hi) return g.last;
    for (int i = 0; i < g.n_shared; ++i) if (a >= g.shared[i].lo && a < g.shared[i].hi) return g.last = &g.shared[i];
    for (int i = 0; i < g.n_global; ++i) if (a >= g.global[i].lo && a < g.global[i].hi) return g.last = &g.global[i];
    return nullptr;
}

EMU_NOSAN inline void report(const char* kind, const Range& r, uintptr_t addr, int t1, const Access& a1,
                             int t2, const Access& a2) {
    for (Hazard& h : g.hazards)
        if (h.kind == kind && h.a1.site == a1.site && h.a2.site == a2.site && h.name == r.name && h.index == r.index) { ++h.count; return; }
    if (g.hazards.size() >= 64) { ++g.dropped; return; }
    Sched* s = g.s;
    Hazard h;
    h.kind = kind; h.shared = r.shared; h.name = r.name; h.index = r.index; h.offset = addr - r.lo;
    h.block = blockIdx;
    h.t1 = t1 >= 0 ? s->fibers[t1].tid : uint3{0, 0, 0};
    h.t2 = s->fibers[t2].tid;
    h.a1 = a1; h.a2 = a2; h.count = 1;
    h.same_warp = t1 >= 0 && (t1 >> 5) == (t2 >> 5);
    g.hazards.push_back(h);
}

// Whether the remembered access `a` (of another thread) is ordered before thread `t`'s access now.
EMU_NOSAN_HOT inline bool ordered(const Access& a, int t) {
    if (a.epoch != g.epoch) return true;           // a __syncthreads (or the block's end) lies between
    if ((int)a.tid == t) return true;
    if ((a.tid >> 5) != (t >> 5)) return false;    // other warps: only __syncthreads orders them
    return g.wclk[(size_t)t * 32 + (a.tid & 31)] >= a.clk;
}

EMU_NOSAN_HOT inline void access_impl(uintptr_t a, size_t n, Kind kind, void* pc) {
    Sched* s = g.s;
    const Range* r = find(a);
    if (!r) return;
    int t = s->cur;
    uint32_t site = (uint32_t)((uintptr_t)pc - 1 - g.base);
#if EMU_SANITIZE == 3
    prof::access(r, a, n, kind == WRITE, t, site);
    return;
#endif
    if (g.mode == 2) {
        if (!r->init) return;
        unsigned char* sh = r->init + (a - r->lo);
        size_t m = n < r->hi - a ? n : r->hi - a;
        if (kind == WRITE) { memset(sh, 1, m); return; }
        for (size_t i = 0; i < m; ++i)
            if (!sh[i]) {
                Access cur{g.epoch, site, 0, (uint16_t)t, (uint8_t)n, 0};
                report("UNINIT", *r, a + i, -1, cur, t, cur);
                memset(sh, 1, m);  // once per access
                return;
            }
        return;
    }
    Access cur{g.epoch, site, g.wclk[(size_t)t * 32 + (t & 31)], (uint16_t)t, (uint8_t)n, 0};
    size_t m = n < r->hi - a ? n : r->hi - a;
    bool found = false;
    for (size_t i = 0; i < m; ++i) {
        RCell& c = r->race[a - r->lo + i];
        if (kind == WRITE) {
            if (!found && c.w.epoch && !ordered(c.w, t)) { report("WAW", *r, a + i, c.w.tid, c.w, t, cur); found = true; }
            if (!found && c.r1.epoch && !ordered(c.r1, t)) { report("WAR", *r, a + i, c.r1.tid, c.r1, t, cur); found = true; }
            if (!found && c.r2.epoch && !ordered(c.r2, t)) { report("WAR", *r, a + i, c.r2.tid, c.r2, t, cur); found = true; }
            c.w = cur;
            c.r1.epoch = c.r2.epoch = 0;
        } else {
            if (!found && c.w.epoch && !ordered(c.w, t)) { report("RAW", *r, a + i, c.w.tid, c.w, t, cur); found = true; }
            if (c.r1.epoch != g.epoch || c.r1.tid == t) c.r1 = cur;
            else c.r2 = cur;
        }
    }
}

EMU_NOSAN_HOT inline void access(uintptr_t a, size_t n, Kind kind, void* pc) {
    if (a - g.stk_lo < g.stk_span || g.busy || !g.s || g.s->cur < 0) return;
    g.busy = true;
    access_impl(a, n, kind, pc);
    g.busy = false;
}

EMU_NOSAN inline void atomic_access(uintptr_t a, size_t n, void* pc) {
    // initcheck: an atomic reads the old value, then writes; racecheck: atomics do not race;
    // profile: its bytes are compulsory traffic both ways, it is not a load or store request
#if EMU_SANITIZE == 3
    if (a - g.stk_lo < g.stk_span || g.busy || !g.s || g.s->cur < 0) return;
    if (const Range* r = find(a)) {
        prof::compulsory(*const_cast<Range*>(r), a, n, false);
        prof::compulsory(*const_cast<Range*>(r), a, n, true);
    }
    (void)pc;
    return;
#endif
    if (g.mode != 2) return;
    access(a, n, READ, pc);
    access(a, n, WRITE, pc);
}

// ---- hooks from the scheduler -------------------------------------------------------------------
// wmma: each emulated lane does the whole warp's load or store; only the first lane's accesses
// count (on the GPU the lanes share the work, ordered with the warp by the call's rendezvous).
struct WarpShared {
    bool old;
#if EMU_SANITIZE == 3
    EMU_NOSAN explicit WarpShared(int lane) : old(g.busy) { if (lane != 0) g.busy = true; else prof::p.wmma_i = 0; }
    EMU_NOSAN ~WarpShared() { g.busy = old; prof::p.wmma_i = -1; }
#else
    EMU_NOSAN explicit WarpShared(int lane) : old(g.busy) { if (lane != 0) g.busy = true; }
    EMU_NOSAN ~WarpShared() { g.busy = old; }
#endif
};

EMU_NOSAN inline void block_start(Sched* s) {
    Busy busy;
    g.s = s;
    ++g.epoch;
    g.stk_lo = (uintptr_t)s->stacks;
    g.stk_span = s->nstacks * s->stack_size;
    size_t n = (size_t)s->nthreads * 32;
    if (g.wclk_n < n) { free(g.wclk); g.wclk = (uint32_t*)malloc(n * sizeof(uint32_t)); g.wclk_n = n; }
    memset(g.wclk, 0, n * sizeof(uint32_t));
    for (int t = 0; t < s->nthreads; ++t) g.wclk[(size_t)t * 32 + (t & 31)] = 1;
    if (s->smem && s->smem_bytes) shared_range(s->smem, s->smem_bytes, DYNAMIC_SHARED);
}
#if EMU_SANITIZE == 3
EMU_NOSAN inline void block_end() { ++g.epoch; prof::flush(); }
EMU_NOSAN inline void barrier() { ++g.epoch; prof::flush(); }
#else
EMU_NOSAN inline void block_end() { ++g.epoch; }
EMU_NOSAN inline void barrier() { ++g.epoch; }
#endif
// A warp collective completed for the lanes of `mask` of the warp starting at thread w0.
EMU_NOSAN inline void warp_sync(int w0, unsigned mask) {
    Busy busy;
    uint32_t join[32] = {0};
    for (int j = 0; j < 32; ++j)
        if (mask >> j & 1u)
            for (int k = 0; k < 32; ++k) { uint32_t c = g.wclk[(size_t)(w0 + j) * 32 + k]; if (c > join[k]) join[k] = c; }
    for (int j = 0; j < 32; ++j)
        if (mask >> j & 1u) {
            uint32_t* v = &g.wclk[(size_t)(w0 + j) * 32];
            memcpy(v, join, sizeof join);
            v[j] += 1;
        }
}

EMU_NOSAN inline void launch_begin(const uintptr_t* ranges, int nranges) {
    Busy busy;
    // ranges: [lo, hi, init shadow or 0] per pointer argument
    Dl_info info;
    if (!g.base && dladdr((void*)&map_zeroed, &info)) g.base = (uintptr_t)info.dli_fbase;
    for (int i = 0; i < g.n_global; ++i) free_range(g.global[i]);
    g.n_global = 0;
    // the dynamic shared buffer is reallocated when a launch asks for another size: its old range
    // must not claim whatever memory takes that address next (block_start registers the new one)
    for (int i = 0; i < g.n_shared;)
        if (g.shared[i].name == DYNAMIC_SHARED) { free_range(g.shared[i]); g.shared[i] = g.shared[--g.n_shared]; }
        else ++i;
    if (nranges > MAX_RANGES) nranges = MAX_RANGES;
    for (int i = 0; i < nranges; ++i) {
        Range r{ranges[3 * i], ranges[3 * i + 1], false, "", (unsigned char*)ranges[3 * i + 2], nullptr, 0, false, i};
        if (r.hi <= r.lo) continue;
        add_shadow(r, false);
        g.global[g.n_global++] = r;
    }
    g.hazards.clear();
    g.dropped = 0;
    g.last = nullptr;
}

EMU_NOSAN inline void launch_end() {
    Busy busy;
    for (int i = 0; i < g.n_global; ++i) free_range(g.global[i]);
    g.n_global = 0;
    g.last = nullptr;
    g.s = nullptr;
}

// One line per hazard: kind|space|name|offset|block|t1|t2|a1 site,size|a2 site,size|same warp|count
EMU_NOSAN inline size_t take(char* buf, size_t n) {
    Busy busy;
    std::string out;
    for (const Hazard& h : g.hazards)
        out += format("%s|%s|%s%d|%zu|%u,%u,%u|%u,%u,%u|%u,%u,%u|%u,%u|%u,%u|%d|%llu\n", h.kind,
                      h.shared ? "shared" : "global", h.name, h.index, (size_t)h.offset, h.block.x, h.block.y, h.block.z,
                      h.t1.x, h.t1.y, h.t1.z, h.t2.x, h.t2.y, h.t2.z, h.a1.site, h.a1.size, h.a2.site, h.a2.size,
                      (int)h.same_warp, h.count);
    if (g.dropped) out += format("DROPPED|%zu\n", g.dropped);
    snprintf(buf, n, "%s", out.c_str());
    return out.size();
}

}  // namespace san
}  // namespace emu

// ---- the instrumentation's entry points (g++ -fsanitize=thread calls these; no TSan runtime) -----
#define EMU_SAN_RW(N) \
    extern "C" EMU_NOSAN void __tsan_read##N(void* p) { ::emu::san::access((uintptr_t)p, N, ::emu::san::READ, __builtin_return_address(0)); } \
    extern "C" EMU_NOSAN void __tsan_write##N(void* p) { ::emu::san::access((uintptr_t)p, N, ::emu::san::WRITE, __builtin_return_address(0)); } \
    extern "C" EMU_NOSAN void __tsan_unaligned_read##N(void* p) { ::emu::san::access((uintptr_t)p, N, ::emu::san::READ, __builtin_return_address(0)); } \
    extern "C" EMU_NOSAN void __tsan_unaligned_write##N(void* p) { ::emu::san::access((uintptr_t)p, N, ::emu::san::WRITE, __builtin_return_address(0)); } \
    extern "C" EMU_NOSAN void __tsan_volatile_read##N(void* p) { ::emu::san::access((uintptr_t)p, N, ::emu::san::READ, __builtin_return_address(0)); } \
    extern "C" EMU_NOSAN void __tsan_volatile_write##N(void* p) { ::emu::san::access((uintptr_t)p, N, ::emu::san::WRITE, __builtin_return_address(0)); }
EMU_SAN_RW(1) EMU_SAN_RW(2) EMU_SAN_RW(4) EMU_SAN_RW(8) EMU_SAN_RW(16)
#undef EMU_SAN_RW
extern "C" EMU_NOSAN void __tsan_read_range(void* p, unsigned long n) {
    ::emu::san::access((uintptr_t)p, n, ::emu::san::READ, __builtin_return_address(0));
}
extern "C" EMU_NOSAN void __tsan_write_range(void* p, unsigned long n) {
    ::emu::san::access((uintptr_t)p, n, ::emu::san::WRITE, __builtin_return_address(0));
}
extern "C" EMU_NOSAN void __tsan_init() {}
extern "C" EMU_NOSAN void __tsan_func_entry(void*) {}
extern "C" EMU_NOSAN void __tsan_func_exit() {}
extern "C" EMU_NOSAN void __tsan_vptr_update(void**, void*) {}
extern "C" EMU_NOSAN void __tsan_vptr_read(void**) {}
extern "C" EMU_NOSAN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" EMU_NOSAN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// The atomics themselves, done with the compiler's builtins in uninstrumented functions.
#define EMU_SAN_ATOMIC(B, T) \
    extern "C" EMU_NOSAN T __tsan_atomic##B##_load(const volatile T* a, int) { \
        ::emu::san::atomic_access((uintptr_t)a, sizeof(T), __builtin_return_address(0)); \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
    extern "C" EMU_NOSAN void __tsan_atomic##B##_store(volatile T* a, T v, int) { \
        ::emu::san::atomic_access((uintptr_t)a, sizeof(T), __builtin_return_address(0)); \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
    EMU_SAN_RMW(B, T, exchange, __atomic_exchange_n) EMU_SAN_RMW(B, T, fetch_add, __atomic_fetch_add) \
    EMU_SAN_RMW(B, T, fetch_sub, __atomic_fetch_sub) EMU_SAN_RMW(B, T, fetch_and, __atomic_fetch_and) \
    EMU_SAN_RMW(B, T, fetch_or, __atomic_fetch_or) EMU_SAN_RMW(B, T, fetch_xor, __atomic_fetch_xor) \
    EMU_SAN_RMW(B, T, fetch_nand, __atomic_fetch_nand) \
    extern "C" EMU_NOSAN int __tsan_atomic##B##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) { \
        ::emu::san::atomic_access((uintptr_t)a, sizeof(T), __builtin_return_address(0)); \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); } \
    extern "C" EMU_NOSAN int __tsan_atomic##B##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) { \
        ::emu::san::atomic_access((uintptr_t)a, sizeof(T), __builtin_return_address(0)); \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); } \
    extern "C" EMU_NOSAN T __tsan_atomic##B##_compare_exchange_val(volatile T* a, T c, T v, int, int) { \
        ::emu::san::atomic_access((uintptr_t)a, sizeof(T), __builtin_return_address(0)); \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); return c; }
#define EMU_SAN_RMW(B, T, OP, BUILTIN) \
    extern "C" EMU_NOSAN T __tsan_atomic##B##_##OP(volatile T* a, T v, int) { \
        ::emu::san::atomic_access((uintptr_t)a, sizeof(T), __builtin_return_address(0)); \
        return BUILTIN(a, v, __ATOMIC_SEQ_CST); }
EMU_SAN_ATOMIC(8, unsigned char) EMU_SAN_ATOMIC(16, unsigned short) EMU_SAN_ATOMIC(32, unsigned int)
EMU_SAN_ATOMIC(64, unsigned long long)
#undef EMU_SAN_ATOMIC
#undef EMU_SAN_RMW

extern "C" __attribute__((visibility("default"))) EMU_NOSAN void emu_san_begin(int mode, const uintptr_t* ranges, int n) {
    ::emu::san::g.mode = mode;
    ::emu::san::launch_begin(ranges, n);
}
extern "C" __attribute__((visibility("default"))) EMU_NOSAN size_t emu_san_take(char* buf, size_t n) {
    ::emu::san::launch_end();
    return ::emu::san::take(buf, n);
}

#if EMU_SANITIZE == 3
// profile: which blocks run (weights per grid index and dimension, or all), then the counters
extern "C" __attribute__((visibility("default"))) EMU_NOSAN void emu_prof_begin(const double* weights, const unsigned* grid,
                                                                               int sampled) {
    ::emu::san::prof::begin(weights, grid, sampled);
}
extern "C" __attribute__((visibility("default"))) EMU_NOSAN size_t emu_prof_take(char* buf, size_t n) {
    return ::emu::san::prof::take(buf, n);
}
#endif
