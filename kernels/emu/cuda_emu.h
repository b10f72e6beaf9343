// cuda_emu.h - run CUDA C kernels on the CPU, unchanged.
//
// Force-included (g++ -include) before a kernels/*.cu file. It maps the CUDA dialect onto C++17:
// keywords become plain C++, threadIdx/blockIdx/... become thread_local variables, and every CUDA
// thread of a block becomes a *fiber* with its own stack. Fibers switch only at collective points
// (__syncthreads, __syncwarp, shuffles, votes, wmma), with a hand-written x86-64 context switch
// (~8 ns; glibc ucontext makes a syscall per switch and is ~15x slower).
//
// At a collective point a fiber records what it waits for and hands the CPU to the next ready
// fiber of the round (the last one to the per-block scheduler). When no fiber can run, the
// scheduler resolves the waits: a warp collective completes when every
// lane named in its mask waits at it; __syncthreads completes when every thread of the block waits
// at the same call site. Anything else (an exited lane, two different sites, a lane at a barrier
// while its warp waits at a shuffle) is reported as an error naming the kernel, block, thread and
// the .cu line. Errors never unwind through fibers: the failing fiber records the message and
// switches back to the scheduler for good, which abandons the launch.
//
// The thread order inside a round is forward, reverse or seeded-random (chosen per launch), so a
// missing barrier that one order hides shows up in another.
//
// Shared memory: `__shared__` is a block-scope `static thread_local` (one copy per OS thread, and
// one OS thread runs one block at a time); under AddressSanitizer it is plain `static` so ASan puts
// redzones around it. `extern __shared__ T name[];` is rewritten by the Python builder into a
// pointer to the launch's dynamic buffer (exactly shared_mem bytes). Both kinds are poisoned with
// 0xFF (a float NaN) at every block start, as the GPU gives garbage there, never zeros.
//
// Rules for kernels that run here and on the GPU: see kernels/emu/README.md.
#pragma once

#include <math.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <limits.h>
#include <float.h>
#include <sys/mman.h>
#include <unistd.h>
#include <dlfcn.h>
#include <atomic>
#include <string>
#include <vector>
#include <type_traits>
#include <utility>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif
// racecheck (1) and initcheck (2): see emu_sanitize.h
#if defined(EMU_SANITIZE)
#define EMU_SAN EMU_SANITIZE
#else
#define EMU_SAN 0
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif
#if EMU_SAN
#define EMU_NO_TSAN __attribute__((no_sanitize_thread))  // the emulator's own bookkeeping
#else
#define EMU_NO_TSAN
#endif

#if !defined(__x86_64__)
#error "the unetcu CUDA emulator's context switch is written for x86-64 only"
#endif

#define UNETCU_EMU 1
#define __CUDACC__ 1
#define __CUDA_ARCH__ 900

// ------------------------------------------------------------------------------------------------
// The CUDA dialect
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __constant__
#define __managed__
#define __align__(n) __attribute__((aligned(n)))  // GNU form: allowed among decl-specifiers, as in CUDA
#if EMU_ASAN || EMU_SAN
#define __shared__ static
#else
#define __shared__ static thread_local
#endif

#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#define assert(e) ((e) ? (void)0 : ::emu::assert_fail(#e, __FILE__, __LINE__))
#endif

// Vector types with CUDA's sizes and alignments (vector_types.h): a uint4 load is one 16-byte access
// on the GPU, so a kernel may rely on that alignment and a test must provide it.
namespace emu { template <typename V> struct vec_info { static constexpr const char* base = nullptr; static constexpr int lanes = 0; }; }
#define EMU_VEC_INFO(V, C, L) namespace emu { template <> struct vec_info<V> { \
    static constexpr const char* base = C; static constexpr int lanes = L; }; }
#define EMU_VEC1(T, N, C) struct alignas(sizeof(T)) N##1 { T x; }; \
    inline N##1 make_##N##1(T x) { return N##1{x}; } EMU_VEC_INFO(N##1, C, 1)
#define EMU_VEC2(T, N, C) struct alignas(2 * sizeof(T)) N##2 { T x, y; }; \
    inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; } EMU_VEC_INFO(N##2, C, 2)
#define EMU_VEC3(T, N, C) struct N##3 { T x, y, z; }; \
    inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; } EMU_VEC_INFO(N##3, C, 3)
#define EMU_VEC4(T, N, C, A) struct alignas(A) N##4 { T x, y, z, w; }; \
    inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; } EMU_VEC_INFO(N##4, C, 4)
#define EMU_VEC(T, N, C) EMU_VEC1(T, N, C) EMU_VEC2(T, N, C) EMU_VEC3(T, N, C) \
    EMU_VEC4(T, N, C, (sizeof(T) * 4 < 16 ? sizeof(T) * 4 : 16))
EMU_VEC(signed char, char, "i8")      EMU_VEC(unsigned char, uchar, "u8")
EMU_VEC(short, short, "i16")          EMU_VEC(unsigned short, ushort, "u16")
EMU_VEC(int, int, "i32")              EMU_VEC(unsigned int, uint, "u32")
EMU_VEC(long, long, "i64")            EMU_VEC(unsigned long, ulong, "u64")
EMU_VEC(long long, longlong, "i64")   EMU_VEC(unsigned long long, ulonglong, "u64")
EMU_VEC(float, float, "f32")          EMU_VEC(double, double, "f64")
// 8-byte elements: CUDA 13 also names the 16- and 32-byte aligned 4-vectors explicitly
#define EMU_VEC4A(T, N, C, A) struct alignas(A) N { T x, y, z, w; }; EMU_VEC_INFO(N, C, 4)
EMU_VEC4A(long, long4_16a, "i64", 16)                EMU_VEC4A(long, long4_32a, "i64", 32)
EMU_VEC4A(unsigned long, ulong4_16a, "u64", 16)      EMU_VEC4A(unsigned long, ulong4_32a, "u64", 32)
EMU_VEC4A(long long, longlong4_16a, "i64", 16)       EMU_VEC4A(long long, longlong4_32a, "i64", 32)
EMU_VEC4A(unsigned long long, ulonglong4_16a, "u64", 16) EMU_VEC4A(unsigned long long, ulonglong4_32a, "u64", 32)
EMU_VEC4A(double, double4_16a, "f64", 16)            EMU_VEC4A(double, double4_32a, "f64", 32)
#undef EMU_VEC4A
#undef EMU_VEC
#undef EMU_VEC1
#undef EMU_VEC2
#undef EMU_VEC3
#undef EMU_VEC4
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

// ---- half precision (storage type; arithmetic through float, like the GPU's fp32 path) ----------
struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) { _Float16 h = (_Float16)f; memcpy(&__x, &h, 2); }
    operator float() const { _Float16 h; memcpy(&h, &__x, 2); return (float)h; }
};
typedef __half half;
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return (float)h; }
inline __half __hadd(__half a, __half b) { return __half((float)a + (float)b); }
inline __half __hsub(__half a, __half b) { return __half((float)a - (float)b); }
inline __half __hmul(__half a, __half b) { return __half((float)a * (float)b); }
inline __half __hfma(__half a, __half b, __half c) { return __half(fmaf((float)a, (float)b, (float)c)); }
struct alignas(4) __half2 { __half x, y; };
typedef __half2 half2;
EMU_VEC_INFO(__half2, "f16", 2)
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return __half2{__half(a), __half(a)}; }
inline float __low2float(__half2 h) { return (float)h.x; }
inline float __high2float(__half2 h) { return (float)h.y; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2{__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2{__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return __half2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }

// ---- math intrinsics: the exact libm function stands in for each fast approximation --------------
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
inline long long __double_as_longlong(double d) { long long i; memcpy(&i, &d, 8); return i; }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __float2int_rn(float x) { return (int)lrintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline float __int2float_rn(int x) { return (float)x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __umul24(unsigned a, unsigned b) { return a * b; }
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }

// CUDA's global min/max overloads
#define EMU_MINMAX(T) inline T min(T a, T b) { return a < b ? a : b; } \
                      inline T max(T a, T b) { return a > b ? a : b; }
EMU_MINMAX(int) EMU_MINMAX(unsigned int) EMU_MINMAX(long long) EMU_MINMAX(unsigned long long)
EMU_MINMAX(long) EMU_MINMAX(unsigned long)
#undef EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }

// ---- atomics: real ones, because OpenMP may run several blocks at once ---------------------------
#define EMU_ATOMIC_INT(T) \
    inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); } \
    inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); } \
    inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); } \
    inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); } \
    inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); } \
    inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); } \
    inline T atomicCAS(T* p, T cmp, T v) { \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; } \
    inline T atomicMax(T* p, T v) { T o = *p; \
        while (o < v && !__atomic_compare_exchange_n(p, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return o; } \
    inline T atomicMin(T* p, T v) { T o = *p; \
        while (o > v && !__atomic_compare_exchange_n(p, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return o; }
EMU_ATOMIC_INT(int) EMU_ATOMIC_INT(unsigned int) EMU_ATOMIC_INT(unsigned long long) EMU_ATOMIC_INT(long long)
#undef EMU_ATOMIC_INT
// float/double: compare-and-swap on the bit pattern, as the GPU did before native float atomics
#define EMU_ATOMIC_FP(T, U) \
    inline T atomicAdd(T* p, T v) { U* q = (U*)p; U o = __atomic_load_n(q, __ATOMIC_RELAXED), n; T f; \
        do { memcpy(&f, &o, sizeof f); f += v; memcpy(&n, &f, sizeof f); } \
        while (!__atomic_compare_exchange_n(q, &o, n, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)); \
        memcpy(&f, &o, sizeof f); return f; } \
    inline T atomicExch(T* p, T v) { U n; memcpy(&n, &v, sizeof v); U o = __atomic_exchange_n((U*)p, n, __ATOMIC_RELAXED); \
        T f; memcpy(&f, &o, sizeof f); return f; }
EMU_ATOMIC_FP(float, unsigned int) EMU_ATOMIC_FP(double, unsigned long long)
#undef EMU_ATOMIC_FP
inline unsigned atomicInc(unsigned* p, unsigned lim) {
    unsigned o = *p, n;
    do { n = o >= lim ? 0u : o + 1u; } while (!__atomic_compare_exchange_n(p, &o, n, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return o;
}
inline unsigned atomicDec(unsigned* p, unsigned lim) {
    unsigned o = *p, n;
    do { n = (o == 0u || o > lim) ? lim : o - 1u; } while (!__atomic_compare_exchange_n(p, &o, n, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return o;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline long long clock64() { static thread_local long long t = 0; return t += 1; }

// ------------------------------------------------------------------------------------------------
// Fibers and the per-block scheduler
extern "C" void emu_switch_ctx(void** save_sp, void* next_sp) __attribute__((visibility("hidden")));
// Save the callee-saved registers on the current stack, store rsp, load the other rsp, restore.
asm(R"(
    .text
    .p2align 4
    .hidden emu_switch_ctx
    .globl emu_switch_ctx
    .type emu_switch_ctx,@function
emu_switch_ctx:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_ctx,.-emu_switch_ctx
)");

namespace emu {

enum State : int { READY, AT_BARRIER, AT_WARP, AT_COALESCE, DONE };
enum Op : int { OP_SYNCTHREADS, OP_SYNCTHREADS_COUNT, OP_SYNCTHREADS_AND, OP_SYNCTHREADS_OR,
                OP_SYNCWARP, OP_SHFL_IDX, OP_SHFL_UP, OP_SHFL_DOWN, OP_SHFL_XOR,
                OP_ALL, OP_ANY, OP_BALLOT, OP_WMMA,
                OP_REDUCE_ADD, OP_REDUCE_MIN, OP_REDUCE_MAX, OP_REDUCE_AND, OP_REDUCE_OR, OP_REDUCE_XOR,
                OP_MATCH_ANY, OP_MATCH_ALL, OP_COALESCE };
inline const char* op_name(int op) {
    static const char* names[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and",
        "__syncthreads_or", "__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
        "__shfl_xor_sync", "__all_sync", "__any_sync", "__ballot_sync", "a wmma operation",
        "__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_and_sync",
        "__reduce_or_sync", "__reduce_xor_sync", "__match_any_sync", "__match_all_sync",
        "coalesced_threads()"};
    return names[op];
}

struct Fiber {
    void* sp;
    State state;
    int op, line, arg, width;
    const char* file;
    unsigned mask;
    unsigned long long offer, result;  // a shuffle's or vote's value in, the collective's value out
    uint3 tid;
    void* asan_fake;
};

enum Order : int { FORWARD = 0, REVERSE = 1, RANDOM = 2 };

struct Sched {
    std::vector<Fiber> fibers;
    std::vector<int> order_buf;
    char* stacks = nullptr;
    size_t stack_size = 0, nstacks = 0;
    void* sp = nullptr;              // the scheduler's own context while a fiber runs
    int cur = -1, nthreads = 0;
    const char* kernel = "";
    void (*invoke)(void*, void**) = nullptr;
    void* fn = nullptr;
    void** args = nullptr;
    unsigned char* smem = nullptr;   // dynamic shared memory of the running block
    size_t smem_bytes = 0;
    int order = FORWARD;
    unsigned long long rng = 1;
    bool failed = false;
    std::string error;
    const void* asan_bottom = nullptr;
    size_t asan_size = 0;
    unsigned long long epoch = 0;    // unique per block run: static __shared__ is poisoned once per epoch
    // the running round: fibers hand the CPU straight to the next one in order_buf (see pass_on)
    int pos = 0;
    // counted as fibers arrive, so that the common cases resolve without a scan of the block
    int n_bar = 0, n_warp = 0, n_done = 0, n_coal = 0;
    bool bar_mismatch = false;
    const char* bar_file = nullptr;
    int bar_line = 0, bar_op = 0;
};
inline thread_local Sched* g_sched = nullptr;

inline Sched* sched() { return g_sched; }

inline std::string format(const char* fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}
inline std::string where(const Sched* s) {
    return format("kernel %s, block (%u,%u,%u)", s->kernel, blockIdx.x, blockIdx.y, blockIdx.z);
}
inline std::string who(const Fiber& f) { return format("thread (%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z); }

inline void to_scheduler(Sched* s, Fiber& f) {
#if EMU_ASAN
    __sanitizer_start_switch_fiber(f.state == DONE ? nullptr : &f.asan_fake, s->asan_bottom, s->asan_size);
#endif
    emu_switch_ctx(&f.sp, s->sp);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(f.asan_fake, &s->asan_bottom, &s->asan_size);
#endif
}

// A fiber that blocks (or ends) hands the CPU to the next READY fiber of this round itself: one
// context switch per fiber instead of two through the scheduler. The last one of the round
// returns to the scheduler. Under ASan every switch goes through the scheduler, which annotates
// the stack changes.
inline void pass_on(Sched* s, Fiber& f) {
#if !EMU_ASAN
    const int* ord = s->order_buf.data();
    int n = (int)s->order_buf.size();
    while (++s->pos < n) {
        int j = ord[s->pos];
        Fiber& g = s->fibers[j];
        if (g.state != READY) continue;
        s->cur = j;
        threadIdx = g.tid;
        emu_switch_ctx(&f.sp, g.sp);
        return;
    }
#endif
    to_scheduler(s, f);
}

// Abandon the launch from inside a fiber: record the message, never come back.
[[noreturn]] inline void fail_here(const std::string& what) {
    Sched* s = sched();
    Fiber& f = s->fibers[s->cur];
    if (!s->failed) {
        s->failed = true;
        s->error = what + " (" + where(s) + ", " + who(f) + ")";
    }
    f.state = DONE;
    to_scheduler(s, f);
    __builtin_unreachable();
}
[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line) {
    fail_here(format("assertion `%s` failed at %s:%d", expr, file, line));
}
[[noreturn]] inline void __trap_at(const char* file, int line) { fail_here(format("__trap() at %s:%d", file, line)); }

#if EMU_SAN
}  // namespace emu
#include "emu_sanitize.h"
namespace emu {
#define EMU_SAN_HOOK(call) ::emu::san::call
#else
#define EMU_SAN_HOOK(call) ((void)0)
#endif

// ---- collectives, as seen from a fiber ----------------------------------------------------------
inline unsigned long long block_barrier(int op, int pred, const char* file, int line) {
    Sched* s = sched();
    Fiber& f = s->fibers[s->cur];
    f.state = AT_BARRIER; f.op = op; f.file = file; f.line = line; f.offer = pred != 0;
    if (s->n_bar++ == 0) { s->bar_file = file; s->bar_line = line; s->bar_op = op; }
    else if (file != s->bar_file || line != s->bar_line || op != s->bar_op) s->bar_mismatch = true;
    pass_on(s, f);
    return f.result;
}

inline unsigned long long warp_collective(int op, unsigned mask, unsigned long long offer, int arg,
                                          int width, const char* file, int line) {
    Sched* s = sched();
    Fiber& f = s->fibers[s->cur];
    int lane = s->cur & 31;
    if (mask == 0)
        fail_here(format("%s at %s:%d: mask 0x00000000 names no lane", op_name(op), file, line));
    if (!(mask >> lane & 1u))
        fail_here(format("%s at %s:%d: mask 0x%08x does not name the calling lane %d", op_name(op), file, line, mask, lane));
    if (width <= 0 || width > 32 || (width & (width - 1)))
        fail_here(format("%s at %s:%d: width %d is not a power of two <= 32", op_name(op), file, line, width));
    f.state = AT_WARP; f.op = op; f.mask = mask; f.offer = offer; f.arg = arg; f.width = width;
    f.file = file; f.line = line;
    ++s->n_warp;
    pass_on(s, f);
    return f.result;
}

// cooperative_groups::coalesced_threads(): wait until no lane of the block can run on, then the
// group is the lanes of this warp that wait at this same call site (see resolve_coalesced). Not a
// synchronization on the GPU (it is __activemask()), so no sanitizer hook: ordering still needs a
// collective of the group.
inline unsigned coalesce(const char* file, int line) {
    Sched* s = sched();
    Fiber& f = s->fibers[s->cur];
    f.state = AT_COALESCE; f.op = OP_COALESCE; f.file = file; f.line = line;
    ++s->n_coal;
    pass_on(s, f);
    return (unsigned)f.result;
}

// ---- the scheduler ------------------------------------------------------------------------------
inline unsigned long long next_rand(unsigned long long& x) {  // xorshift64*
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    return x * 2685821657736338717ull;
}

[[noreturn]] inline void fiber_main() {
    Sched* s = sched();
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &s->asan_bottom, &s->asan_size);
#endif
    s->invoke(s->fn, s->args);
    Fiber& f = s->fibers[s->cur];
    f.state = DONE;
    ++s->n_done;
    pass_on(s, f);
    __builtin_unreachable();
}

inline void ensure_stacks(Sched* s, int n) {
    size_t want = 256 * 1024;
    if (const char* e = getenv("UNETCU_EMU_STACK_KB")) want = (size_t)atol(e) * 1024;
    if (EMU_ASAN) want *= 4;  // redzones and fake frames
    long page = sysconf(_SC_PAGESIZE);
    want = (want + page - 1) / page * page;
    if (s->stacks && s->nstacks >= (size_t)n && s->stack_size == want) return;
    if (s->stacks) munmap(s->stacks, s->nstacks * s->stack_size);
    // One reservation, touched lazily; the lowest page of every stack is a guard page.
    void* p = mmap(nullptr, (size_t)n * want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) { fprintf(stderr, "unetcu emulator: cannot reserve fiber stacks\n"); abort(); }
    s->stacks = (char*)p; s->nstacks = n; s->stack_size = want;
    for (int i = 0; i < n; ++i) mprotect(s->stacks + (size_t)i * want, page, PROT_NONE);
}

inline void init_fiber(Sched* s, int i) {
    Fiber& f = s->fibers[i];
    char* base = s->stacks + (size_t)i * s->stack_size;
    long page = sysconf(_SC_PAGESIZE);
#if EMU_ASAN
    __asan_unpoison_memory_region(base + page, s->stack_size - page);
#endif
    uintptr_t top = ((uintptr_t)(base + s->stack_size)) & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;                    // fiber_main's (never used) return address: rsp % 16 == 8 at entry
    *--sp = (void*)&fiber_main;         // where emu_switch_ctx's `ret` goes
    for (int r = 0; r < 6; ++r) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    f.sp = sp;
    f.state = READY;
    f.asan_fake = nullptr;
    (void)page;
    unsigned bx = blockDim.x, by = blockDim.y;
    f.tid = uint3{(unsigned)i % bx, ((unsigned)i / bx) % by, (unsigned)i / (bx * by)};
}

inline void run_fiber(Sched* s, int i) {
    s->cur = i;
    Fiber& f = s->fibers[i];
    threadIdx = f.tid;
#if EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, s->stacks + (size_t)i * s->stack_size, s->stack_size);
#endif
    emu_switch_ctx(&s->sp, f.sp);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

inline std::string lanes_str(unsigned m) { return format("0x%08x", m); }

inline bool set_error(Sched* s, const std::string& what) {
    if (!s->failed) { s->failed = true; s->error = what + " (" + where(s) + ")"; }
    return false;
}

// Complete the warp collective of fiber `i` if its whole mask has arrived. Returns true if released.
// A lane of the mask waiting at another collective is not yet an error: that collective (of other
// lanes, another mask) may still complete and the lane come on, as under independent thread
// scheduling. Only when no collective of the block can complete is it reported (`report`).
inline bool try_warp(Sched* s, int i, bool report = false) {
    Fiber& f = s->fibers[i];
    int w0 = i & ~31, nlanes = std::min(32, s->nthreads - w0);
    unsigned m = f.mask;
    for (int j = 0; j < 32; ++j) {
        if (!(m >> j & 1u)) continue;
        if (j >= nlanes)
            return set_error(s, format("%s at %s:%d: mask %s names lane %d of warp %d, which does not exist (the block has %d threads)",
                                       op_name(f.op), f.file, f.line, lanes_str(m).c_str(), j, w0 / 32, s->nthreads));
        const Fiber& g = s->fibers[w0 + j];
        if (g.state == DONE)
            return set_error(s, format("%s at %s:%d by %s waits for lane %d (%s), which has exited: a warp collective after an early return",
                                       op_name(f.op), f.file, f.line, who(f).c_str(), j, who(g).c_str()));
        if (g.state == AT_BARRIER) return false;  // may be a deadlock; decided when nothing else moves
        if (g.state != AT_WARP) return false;
        bool same_site = g.file == f.file && g.line == f.line;
        if (g.op != f.op || g.mask != m || (f.op != OP_SYNCWARP && !same_site)) {
            if (!report) return false;
            return set_error(s, format("lanes of warp %d disagree: %s is at %s (%s:%d, mask %s) but lane %d is at %s (%s:%d, mask %s)",
                                       w0 / 32, who(f).c_str(), op_name(f.op), f.file, f.line, lanes_str(m).c_str(), j,
                                       op_name(g.op), g.file, g.line, lanes_str(g.mask).c_str()));
        }
    }
    unsigned long long vote = 0;
    for (int j = 0; j < 32; ++j)
        if (m >> j & 1u) vote |= (unsigned long long)(s->fibers[w0 + j].offer != 0) << j;
    for (int j = 0; j < 32; ++j) {
        if (!(m >> j & 1u)) continue;
        Fiber& g = s->fibers[w0 + j];
        int w = g.width, base = j & ~(w - 1), src = j;
        switch (g.op) {
            case OP_SHFL_IDX: src = base + (g.arg & (w - 1)); break;
            case OP_SHFL_UP: src = (j - base) >= g.arg ? j - g.arg : j; break;
            case OP_SHFL_DOWN: src = (j - base) + g.arg < w ? j + g.arg : j; break;
            case OP_SHFL_XOR: src = j ^ g.arg; if (src >= base + w) src = j; break;
            default: break;
        }
        if (g.op >= OP_SHFL_IDX && g.op <= OP_SHFL_XOR) {
            if (src < 0 || src >= 32 || !(m >> src & 1u))
                return set_error(s, format("%s at %s:%d: lane %d reads lane %d, which is not in the mask %s",
                                           op_name(g.op), g.file, g.line, j, src, lanes_str(m).c_str()));
            g.result = s->fibers[w0 + src].offer;
        } else if (g.op == OP_ALL) {
            g.result = (vote & m) == m;
        } else if (g.op == OP_ANY) {
            g.result = vote != 0;
        } else if (g.op == OP_BALLOT) {
            g.result = vote;
        } else if (g.op >= OP_REDUCE_ADD && g.op <= OP_REDUCE_XOR) {
            // 32-bit reductions (sm_80's redux.sync); arg 1 = signed min/max
            unsigned r = (unsigned)g.offer;
            for (int k = 0; k < 32; ++k) {
                if (!(m >> k & 1u) || k == j) continue;
                unsigned v = (unsigned)s->fibers[w0 + k].offer;
                switch (g.op) {
                    case OP_REDUCE_ADD: r += v; break;
                    case OP_REDUCE_MIN: r = g.arg ? (unsigned)std::min((int)r, (int)v) : std::min(r, v); break;
                    case OP_REDUCE_MAX: r = g.arg ? (unsigned)std::max((int)r, (int)v) : std::max(r, v); break;
                    case OP_REDUCE_AND: r &= v; break;
                    case OP_REDUCE_OR: r |= v; break;
                    default: r ^= v; break;
                }
            }
            g.result = r;
        } else if (g.op == OP_MATCH_ANY || g.op == OP_MATCH_ALL) {
            // the lanes whose value has the same bits as this lane's; match_all's predicate in bit 32
            unsigned same = 0;
            for (int k = 0; k < 32; ++k)
                if ((m >> k & 1u) && s->fibers[w0 + k].offer == g.offer) same |= 1u << k;
            g.result = g.op == OP_MATCH_ANY ? same : same == m ? (1ull << 32) | m : 0;
        }
    }
    for (int j = 0; j < 32; ++j)
        if (m >> j & 1u) s->fibers[w0 + j].state = READY;
    s->n_warp -= __builtin_popcount(m);
    EMU_SAN_HOOK(warp_sync(w0, m));
    return true;
}

inline std::string describe_waits(Sched* s) {
    std::string out;
    int shown = 0;
    for (int i = 0; i < s->nthreads && shown < 6; ++i) {
        const Fiber& f = s->fibers[i];
        if (f.state == DONE) continue;
        out += format("; %s waits at %s (%s:%d)", who(f).c_str(), op_name(f.op), f.file, f.line);
        ++shown;
    }
    return out;
}

// Release every lane waiting in coalesced_threads(), grouped by warp and call site. Called only when
// no fiber can run, so each group holds every lane of its warp that can reach that site now.
inline void resolve_coalesced(Sched* s) {
    for (int i = 0; i < s->nthreads; ++i) {
        Fiber& f = s->fibers[i];
        if (f.state != AT_COALESCE) continue;
        int w0 = i & ~31;
        unsigned m = 0;
        for (int j = 0; j < 32 && w0 + j < s->nthreads; ++j) {
            const Fiber& g = s->fibers[w0 + j];
            if (g.state == AT_COALESCE && g.file == f.file && g.line == f.line) m |= 1u << j;
        }
        for (int j = 0; j < 32; ++j)
            if (m >> j & 1u) { s->fibers[w0 + j].result = m; s->fibers[w0 + j].state = READY; }
        s->n_coal -= __builtin_popcount(m);
    }
}

// Called when no fiber is READY. Returns 1 if some were released, 0 if the block finished,
// -1 on error (s->error set).
inline int resolve(Sched* s) {
    bool progress = false;
    int n = s->nthreads, at_barrier = 0, at_warp = 0, done = 0;
    for (int i = 0; i < n && s->n_warp > 0; ++i) {
        if (s->fibers[i].state == AT_WARP) {
            if (try_warp(s, i)) progress = true;
            if (s->failed) return -1;
        }
    }
    if (progress) return 1;
    if (s->n_coal > 0) { resolve_coalesced(s); return 1; }
    if (s->n_bar == n && !s->bar_mismatch) {  // the common case: every thread at one __syncthreads
        int op = s->bar_op;
        unsigned long long count = 0;
        if (op != OP_SYNCTHREADS)
            for (int i = 0; i < n; ++i) count += s->fibers[i].offer;
        unsigned long long r = op == OP_SYNCTHREADS_COUNT ? count
                             : op == OP_SYNCTHREADS_AND ? (count == (unsigned long long)n)
                             : op == OP_SYNCTHREADS_OR ? (count > 0) : 0;
        for (int i = 0; i < n; ++i) { s->fibers[i].result = r; s->fibers[i].state = READY; }
        s->n_bar = 0;
        s->bar_mismatch = false;
        EMU_SAN_HOOK(barrier());
        return 1;
    }
    if (s->n_done == n) return 0;
    int first_b = -1, first_d = -1;
    for (int i = 0; i < n; ++i) {
        State st = s->fibers[i].state;
        if (st == AT_BARRIER) { ++at_barrier; if (first_b < 0) first_b = i; }
        else if (st == AT_WARP) ++at_warp;
        else if (st == DONE) { ++done; if (first_d < 0) first_d = i; }
    }
    if (done == n) return 0;
    if (at_warp > 0) {
        for (int i = 0; i < n; ++i)  // lanes stuck at different collectives: name the first such pair
            if (s->fibers[i].state == AT_WARP && (try_warp(s, i, true), s->failed)) return -1;
        set_error(s, "warp-collective deadlock: lanes wait at a warp collective while lanes of its mask wait at __syncthreads" + describe_waits(s));
        return -1;
    }
    const Fiber& b = s->fibers[first_b];
    if (done > 0) {
        set_error(s, format("divergent __syncthreads at %s:%d: %d threads wait there but %s and %d others have exited",
                            b.file, b.line, at_barrier, who(s->fibers[first_d]).c_str(), done - 1));
        return -1;
    }
    unsigned long long count = 0;
    for (int i = 0; i < n; ++i) {
        const Fiber& f = s->fibers[i];
        if (f.file != b.file || f.line != b.line || f.op != b.op) {
            set_error(s, format("divergent __syncthreads: %s waits at %s (%s:%d) but %s waits at %s (%s:%d)",
                                who(b).c_str(), op_name(b.op), b.file, b.line, who(f).c_str(), op_name(f.op), f.file, f.line));
            return -1;
        }
        count += f.offer;
    }
    unsigned long long r = b.op == OP_SYNCTHREADS_COUNT ? count
                         : b.op == OP_SYNCTHREADS_AND ? (count == (unsigned long long)n)
                         : b.op == OP_SYNCTHREADS_OR ? (count > 0) : 0;
    for (int i = 0; i < n; ++i) { s->fibers[i].result = r; s->fibers[i].state = READY; }
    s->n_bar = 0;
    s->bar_mismatch = false;
    EMU_SAN_HOOK(barrier());
    return 1;
}

// Static __shared__ variables keep their storage from one block to the next on an OS thread, so a
// kernel that reads before it writes would see the previous block's values (and zeros in the
// first block) where the GPU gives garbage. The builder adds a poison_shared() after every
// block-scope declaration: the first thread of a block to pass it fills the variable with 0xFF.
// File-scope ones are listed in shared_registry() and filled when the block starts.
inline std::atomic<unsigned long long> g_epoch{0};
inline void poison_shared(void* p, size_t n, unsigned long long& epoch, const char* name) {
    Sched* s = sched();
    if (epoch != s->epoch) {
        epoch = s->epoch; memset(p, 0xFF, n);
        EMU_SAN_HOOK(shared_range(p, n, name));
    }
    (void)name;
}
struct SharedVar { void* (*addr)(); size_t bytes; const char* name; };
inline std::vector<SharedVar>& shared_registry() { static std::vector<SharedVar> r; return r; }
struct SharedRegistrar {
    SharedRegistrar(void* (*addr)(), size_t bytes, const char* name) { shared_registry().push_back(SharedVar{addr, bytes, name}); }
};

inline void run_block(Sched* s) {
    int n = s->nthreads;
    for (int i = 0; i < n; ++i) init_fiber(s, i);
    s->epoch = g_epoch.fetch_add(1, std::memory_order_relaxed) + 1;
    for (const SharedVar& v : shared_registry()) memset(v.addr(), 0xFF, v.bytes);
    if (s->smem && s->smem_bytes) memset(s->smem, 0xFF, s->smem_bytes);  // 0xFFFFFFFF is a float NaN
    EMU_SAN_HOOK(block_start(s));
#if EMU_SAN
    for (const SharedVar& v : shared_registry()) san::shared_range(v.addr(), v.bytes, v.name);
#endif
    s->n_bar = s->n_warp = s->n_done = s->n_coal = 0;
    s->bar_mismatch = false;
    std::vector<int>& ord = s->order_buf;
    ord.reserve(n);
    for (;;) {
        ord.clear();
        for (int k = 0; k < n; ++k) {
            int i = s->order == REVERSE ? n - 1 - k : k;
            if (s->fibers[i].state == READY) ord.push_back(i);
        }
        if (s->order == RANDOM)
            for (size_t k = ord.size(); k > 1; --k) std::swap(ord[k - 1], ord[next_rand(s->rng) % k]);
        // run_fiber returns when the round is over (the fibers pass the CPU on among themselves;
        // under ASan after each fiber), or at once on an error
        for (s->pos = 0; s->pos < (int)ord.size(); ++s->pos) {
            int i = ord[s->pos];
            if (s->fibers[i].state != READY) continue;
            run_fiber(s, i);
            if (s->failed) return;
        }
        if (resolve(s) <= 0) { EMU_SAN_HOOK(block_end()); return; }
    }
}

}  // namespace emu

// ---- the collectives as kernels call them (the call site is recorded for error messages) ---------
#define EMU_SITE const char* emu_file_ = __builtin_FILE(), int emu_line_ = __builtin_LINE()
inline void __syncthreads(EMU_SITE) { emu::block_barrier(emu::OP_SYNCTHREADS, 0, emu_file_, emu_line_); }
inline int __syncthreads_count(int p, EMU_SITE) { return (int)emu::block_barrier(emu::OP_SYNCTHREADS_COUNT, p, emu_file_, emu_line_); }
inline int __syncthreads_and(int p, EMU_SITE) { return (int)emu::block_barrier(emu::OP_SYNCTHREADS_AND, p, emu_file_, emu_line_); }
inline int __syncthreads_or(int p, EMU_SITE) { return (int)emu::block_barrier(emu::OP_SYNCTHREADS_OR, p, emu_file_, emu_line_); }
inline void __syncwarp(unsigned mask = 0xffffffffu, EMU_SITE) {
    emu::warp_collective(emu::OP_SYNCWARP, mask, 0, 0, 32, emu_file_, emu_line_);
}
namespace emu {
template <typename T> inline unsigned long long pack(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
    unsigned long long u = 0; memcpy(&u, &v, sizeof(T)); return u;
}
template <typename T> inline T unpack(unsigned long long u) { T v; memcpy(&v, &u, sizeof(T)); return v; }
template <typename T> inline T shfl(int op, unsigned mask, T v, int arg, int width, const char* file, int line) {
    return unpack<T>(warp_collective(op, mask, pack(v), arg, width, file, line));
}
}  // namespace emu
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, EMU_SITE) {
    return emu::shfl(emu::OP_SHFL_IDX, mask, v, src, width, emu_file_, emu_line_);
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, EMU_SITE) {
    return emu::shfl(emu::OP_SHFL_UP, mask, v, (int)delta, width, emu_file_, emu_line_);
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, EMU_SITE) {
    return emu::shfl(emu::OP_SHFL_DOWN, mask, v, (int)delta, width, emu_file_, emu_line_);
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, EMU_SITE) {
    return emu::shfl(emu::OP_SHFL_XOR, mask, v, lane_mask, width, emu_file_, emu_line_);
}
inline int __all_sync(unsigned mask, int p, EMU_SITE) { return (int)emu::warp_collective(emu::OP_ALL, mask, p != 0, 0, 32, emu_file_, emu_line_); }
inline int __any_sync(unsigned mask, int p, EMU_SITE) { return (int)emu::warp_collective(emu::OP_ANY, mask, p != 0, 0, 32, emu_file_, emu_line_); }
inline unsigned __ballot_sync(unsigned mask, int p, EMU_SITE) { return (unsigned)emu::warp_collective(emu::OP_BALLOT, mask, p != 0, 0, 32, emu_file_, emu_line_); }
// sm_80+ warp reductions and sm_70+ matches: the same mask rules as the shuffles
#define EMU_REDUCE(NAME, OP, T, SIGNED) inline T NAME(unsigned mask, T v, EMU_SITE) { \
    return (T)emu::warp_collective(emu::OP, mask, (unsigned)v, SIGNED, 32, emu_file_, emu_line_); }
EMU_REDUCE(__reduce_add_sync, OP_REDUCE_ADD, unsigned, 0) EMU_REDUCE(__reduce_add_sync, OP_REDUCE_ADD, int, 1)
EMU_REDUCE(__reduce_min_sync, OP_REDUCE_MIN, unsigned, 0) EMU_REDUCE(__reduce_min_sync, OP_REDUCE_MIN, int, 1)
EMU_REDUCE(__reduce_max_sync, OP_REDUCE_MAX, unsigned, 0) EMU_REDUCE(__reduce_max_sync, OP_REDUCE_MAX, int, 1)
EMU_REDUCE(__reduce_and_sync, OP_REDUCE_AND, unsigned, 0)
EMU_REDUCE(__reduce_or_sync, OP_REDUCE_OR, unsigned, 0)
EMU_REDUCE(__reduce_xor_sync, OP_REDUCE_XOR, unsigned, 0)
#undef EMU_REDUCE
template <typename T> inline unsigned __match_any_sync(unsigned mask, T v, EMU_SITE) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "__match_any_sync takes a 32- or 64-bit value");
    return (unsigned)emu::warp_collective(emu::OP_MATCH_ANY, mask, emu::pack(v), 0, 32, emu_file_, emu_line_);
}
template <typename T> inline unsigned __match_all_sync(unsigned mask, T v, int* pred, EMU_SITE) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "__match_all_sync takes a 32- or 64-bit value");
    unsigned long long r = emu::warp_collective(emu::OP_MATCH_ALL, mask, emu::pack(v), 0, 32, emu_file_, emu_line_);
    *pred = (int)(r >> 32);
    return (unsigned)r;
}
inline unsigned __activemask() {  // the lanes of this warp that have not exited
    emu::Sched* s = emu::sched();
    int w0 = s->cur & ~31;
    unsigned m = 0;
    for (int j = 0; j < 32 && w0 + j < s->nthreads; ++j)
        if (s->fibers[w0 + j].state != emu::DONE) m |= 1u << j;
    return m;
}
inline unsigned __lanemask_lt() { return (1u << (emu::sched()->cur & 31)) - 1u; }
#define __trap() ::emu::__trap_at(__FILE__, __LINE__)
namespace emu {
// What `extern __shared__ T name[];` becomes: the running block's dynamic shared memory.
inline void* dynamic_smem() { return sched()->smem; }
}  // namespace emu
// What the builder appends to a `__shared__` declaration (see poison_shared)
#define EMU_POISON_SHARED(v) do { __shared__ unsigned long long emu_epoch_; \
    ::emu::poison_shared(&(v), sizeof(v), emu_epoch_, #v); } while (0)
#define EMU_CAT2(a, b) a##b
#define EMU_CAT(a, b) EMU_CAT2(a, b)
#define EMU_POISON_SHARED_GLOBAL(v) static ::emu::SharedRegistrar EMU_CAT(emu_shared_reg_, __COUNTER__)( \
    []() -> void* { return (void*)&(v); }, sizeof(v), #v)

// ---- shifts, as the GPU computes them ---------------------------------------------------------------
// A shift by a count not below the width of the (promoted) left operand is undefined in C++, and
// the two machines disagree: x86 takes the count modulo the width (`1 << 40` is 256, `(1u << 32) - 1`
// is 0), the GPU's shl/shr clamp it (0, or the sign for an arithmetic >>; nvcc emits plain PTX
// shl.b32 / shr.s32 / shr.u32 / shl.b64 for `<<` and `>>`, whose count is an unsigned 32-bit
// register, so a negative count is a huge one). The builder turns each shift whose count is not a
// small literal into emu::shl / shr / shl_assign / shr_assign (unetcu/engines/emu/source.py,
// rewrite_shifts); they compute the GPU's value and record the site, which the Python side prints
// once as a warning, or reports as a finding under `unetcu sanitize`.
namespace emu {
template <typename T> struct shift_int
    : std::integral_constant<bool, std::is_integral<T>::value || (std::is_enum<T>::value && std::is_convertible<T, int>::value)> {};
template <typename T> inline const char* int_name() {
    return std::is_same<T, int>::value ? "int" : std::is_same<T, unsigned>::value ? "unsigned int"
         : std::is_same<T, long>::value ? "long" : std::is_same<T, unsigned long>::value ? "unsigned long"
         : std::is_same<T, long long>::value ? "long long" : std::is_same<T, unsigned long long>::value ? "unsigned long long"
         : "integer";
}
struct ShiftSite {
    const char* file; int line; const char* op; long long count; bool count_signed; unsigned bits; const char* type;
    unsigned long long hits; uint3 tid, bid; const char* kernel;
};
inline std::atomic_flag g_shift_lock = ATOMIC_FLAG_INIT;
inline std::vector<ShiftSite>& shift_sites() { static std::vector<ShiftSite> v; return v; }
// Off the fast path: one entry per site (and operator) for the launch, with its first thread.
__attribute__((noinline, cold)) EMU_NO_TSAN inline void shift_out_of_range(const char* op, long long count, bool count_signed,
                                                                      unsigned bits, const char* type, const char* file, int line) {
    while (g_shift_lock.test_and_set(std::memory_order_acquire)) {}
    std::vector<ShiftSite>& v = shift_sites();
    bool seen = false;
    for (ShiftSite& x : v)
        if (x.file == file && x.line == line && x.op == op) { ++x.hits; seen = true; break; }
    if (!seen)
        v.push_back(ShiftSite{file, line, op, count, count_signed, bits, type, 1, threadIdx, blockIdx,
                              g_sched ? g_sched->kernel : ""});
    g_shift_lock.clear(std::memory_order_release);
}
template <typename A, typename B, typename std::enable_if<shift_int<A>::value && shift_int<B>::value, int>::type = 0>
constexpr auto shl(A a, B b, const char* file = __builtin_FILE(), int line = __builtin_LINE()) -> decltype(+a) {
    using R = decltype(+a);  // the promoted type: a char or short is shifted as an int
    unsigned c = (unsigned)(unsigned long long)b;  // the GPU's 32-bit count register
    if (c >= sizeof(R) * 8) {
        shift_out_of_range("<<", (long long)b, std::is_signed<B>::value, sizeof(R) * 8, int_name<R>(), file, line);
        return 0;
    }
    return (R)((typename std::make_unsigned<R>::type)a << c);  // as unsigned: no C++ overflow, the GPU's bits
}
template <typename A, typename B, typename std::enable_if<shift_int<A>::value && shift_int<B>::value, int>::type = 0>
constexpr auto shr(A a, B b, const char* file = __builtin_FILE(), int line = __builtin_LINE()) -> decltype(+a) {
    using R = decltype(+a);
    unsigned c = (unsigned)(unsigned long long)b;
    if (c >= sizeof(R) * 8) {
        shift_out_of_range(">>", (long long)b, std::is_signed<B>::value, sizeof(R) * 8, int_name<R>(), file, line);
        return std::is_signed<R>::value && +a < 0 ? (R)-1 : (R)0;  // shr.s32 fills with the sign
    }
    return (R)(+a >> c);
}
// not integers (a stream, a class with its own operator): the operator itself
template <typename A, typename B, typename std::enable_if<!(shift_int<typename std::decay<A>::type>::value &&
                                                            shift_int<typename std::decay<B>::type>::value), int>::type = 0>
constexpr decltype(auto) shl(A&& a, B&& b, const char* = __builtin_FILE(), int = __builtin_LINE()) {
    return std::forward<A>(a) << std::forward<B>(b);
}
template <typename A, typename B, typename std::enable_if<!(shift_int<typename std::decay<A>::type>::value &&
                                                            shift_int<typename std::decay<B>::type>::value), int>::type = 0>
constexpr decltype(auto) shr(A&& a, B&& b, const char* = __builtin_FILE(), int = __builtin_LINE()) {
    return std::forward<A>(a) >> std::forward<B>(b);
}
template <typename A, typename B>
constexpr A& shl_assign(A& a, B&& b, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    if constexpr (shift_int<typename std::remove_cv<A>::type>::value && shift_int<typename std::decay<B>::type>::value)
        a = (typename std::remove_cv<A>::type)shl(a, b, file, line);
    else
        a <<= std::forward<B>(b);
    return a;
}
template <typename A, typename B>
constexpr A& shr_assign(A& a, B&& b, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    if constexpr (shift_int<typename std::remove_cv<A>::type>::value && shift_int<typename std::decay<B>::type>::value)
        a = (typename std::remove_cv<A>::type)shr(a, b, file, line);
    else
        a >>= std::forward<B>(b);
    return a;
}
}  // namespace emu
// The launch's out-of-range shifts, one line per site (file|line|op|count|bits|type|hits|thread|block|kernel),
// taken by the Python side after each launch.
extern "C" __attribute__((visibility("default"))) EMU_NO_TSAN size_t emu_shift_take(char* buf, size_t n) {
    while (emu::g_shift_lock.test_and_set(std::memory_order_acquire)) {}
    std::string out;
    for (const emu::ShiftSite& x : emu::shift_sites())
        out += emu::format(x.count_signed ? "%s|%d|%s|%lld|%u|%s|%llu|%u,%u,%u|%u,%u,%u|%s\n" : "%s|%d|%s|%llu|%u|%s|%llu|%u,%u,%u|%u,%u,%u|%s\n",
                           x.file, x.line, x.op, x.count, x.bits, x.type, x.hits, x.tid.x, x.tid.y, x.tid.z,
                           x.bid.x, x.bid.y, x.bid.z, x.kernel);
    emu::shift_sites().clear();
    emu::g_shift_lock.clear(std::memory_order_release);
    snprintf(buf, n, "%s", out.c_str());
    return out.size();
}

// A shift the builder did not rewrite (in a macro whose parameter is bare in an operand, or next to
// a `>` it could not tell from a template's) still has g++'s -fsanitize=shift-exponent check, which calls this
// handler: x86 would compute another value than the GPU, so the kernel stops at that line. (Defined
// here, not inline: the header is in exactly one translation unit per emulator build.)
namespace emu {
struct UbsanLoc { const char* file; unsigned line, column; };
struct UbsanType { unsigned short kind, info; char name[1]; };
struct UbsanShift { UbsanLoc loc; const UbsanType* lhs; const UbsanType* rhs; };
}  // namespace emu
extern "C" void __ubsan_handle_shift_out_of_bounds(void* data, void* lhs, void* rhs) {
    (void)lhs;
    const emu::UbsanShift* d = (const emu::UbsanShift*)data;
    unsigned bits = d->lhs->kind == 0 ? 1u << (d->lhs->info >> 1) : 0;
    bool rsigned = d->rhs->kind == 0 && (d->rhs->info & 1);
    unsigned rbits = d->rhs->kind == 0 ? 1u << (d->rhs->info >> 1) : 64;
    long long count = (long long)(uintptr_t)rhs;
    if (rsigned && rbits < 64) count = (long long)((unsigned long long)count << (64 - rbits)) >> (64 - rbits);
    std::string what = emu::format("shift by %lld at %s:%u: %s for a %u-bit %s, in code the emulator does not rewrite "
                                   "(a macro body with a bare parameter in an operand, or next to a `>` it took for a "
                                   "template's): x86 would take the count modulo %u where the GPU clamps it; put the "
                                   "macro's parameters in parentheses, or check the count",
                                   count, d->loc.file, d->loc.line,
                                   count < 0 ? "the count is negative" : "the count is not below the width",
                                   bits, d->lhs->name, bits);
    if (emu::g_sched && emu::g_sched->cur >= 0) emu::fail_here(what);
    fprintf(stderr, "unetcu emulator: %s\n", what.c_str());
    abort();
}
extern "C" void __ubsan_handle_shift_out_of_bounds_abort(void* data, void* lhs, void* rhs) {
    __ubsan_handle_shift_out_of_bounds(data, lhs, rhs);
}

// Sanitizer builds add -fsanitize=alignment: an access through a pointer not aligned for its type
// (a float4 at an address that is not a multiple of 16) faults on the GPU ("misaligned address"),
// while x86 just does it. This handler reports it at its line.
namespace emu {
struct UbsanMismatch { UbsanLoc loc; const UbsanType* type; unsigned char log_align, kind; };
}  // namespace emu
extern "C" void __ubsan_handle_type_mismatch_v1(void* data, void* ptr) {
    const emu::UbsanMismatch* d = (const emu::UbsanMismatch*)data;
    static const char* kinds[] = {"load of", "store to", "reference binding to", "member access within",
                                  "member call on", "constructor call on", "downcast of", "downcast of",
                                  "upcast of", "cast to virtual base of", "binding to", "dynamic operation on"};
    const char* kind = d->kind < sizeof kinds / sizeof *kinds ? kinds[d->kind] : "access to";
    unsigned long align = 1ul << d->log_align;
    std::string what = ptr ? emu::format("%s address %p at %s:%u is misaligned: type %s needs %lu-byte alignment "
                                         "(the GPU faults with \"misaligned address\")", kind, ptr, d->loc.file,
                                         d->loc.line, d->type->name, align)
                           : emu::format("%s a null pointer of type %s at %s:%u", kind, d->type->name, d->loc.file, d->loc.line);
    if (emu::g_sched && emu::g_sched->cur >= 0) emu::fail_here(what);
    fprintf(stderr, "unetcu emulator: %s\n", what.c_str());
    abort();
}
extern "C" void __ubsan_handle_type_mismatch_v1_abort(void* data, void* ptr) { __ubsan_handle_type_mismatch_v1(data, ptr); }

#if EMU_ASAN
// memcheck: when ASan stops the process, say which CUDA thread made the access, in
// compute-sanitizer's shape, before ASan's own report (which follows with the stack).
namespace emu {
inline void asan_death() {
    Sched* s = g_sched;
    void* addr = __asan_get_report_address();
    char name[256] = "";
    void* region = nullptr;
    size_t region_size = 0;
    const char* where = __asan_locate_address(addr, name, sizeof name, &region, &region_size);
    bool in_smem = s && s->smem && (char*)addr >= (char*)s->smem - 64 && (char*)addr < (char*)s->smem + s->smem_bytes + 64;
    std::string space = in_smem ? "__shared__ (dynamic)"
                      : strcmp(where, "heap") == 0 ? "__global__"
                      : strcmp(where, "global") == 0 ? std::string("__shared__ or __device__")  // ASan names the variable
                      : strcmp(where, "stack") == 0 ? "__local__" : where;
    std::string text = format("========= Invalid %s %s of size %zu bytes\n", space.c_str(),
                              __asan_get_report_access_type() ? "write" : "read", __asan_get_report_access_size());
    Dl_info info;
    void* pc = __asan_get_report_pc();
    if (dladdr(pc, &info) && info.dli_fname) {
        std::string cmd = format("addr2line -e '%s' -i 0x%lx 2>/dev/null", info.dli_fname,
                                 (unsigned long)((char*)pc - 1 - (char*)info.dli_fbase));  // as ASan symbolizes it
        if (FILE* p = popen(cmd.c_str(), "r")) {
            char line[1024];
            while (fgets(line, sizeof line, p))
                if (!strstr(line, "/emu/")) { line[strcspn(line, "\n")] = 0; text += format("=========     at %s\n", line); break; }
            pclose(p);
        }
    }
    if (s && s->cur >= 0)
        text += format("=========     by thread (%u,%u,%u) in block (%u,%u,%u) of kernel %s\n", threadIdx.x, threadIdx.y,
                       threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z, s->kernel);
    text += format("=========     Address %p (AddressSanitizer's report is above)\n", addr);
    fputs(text.c_str(), stderr);
    if (const char* log = getenv("UNETCU_SANITIZE_LOG"))
        if (FILE* f = fopen(log, "a")) { fputs(text.c_str(), f); fclose(f); }
}
}  // namespace emu
#endif

// ------------------------------------------------------------------------------------------------
// nvcuda::wmma. Each emulated thread holds the whole tile in logical row-major order (element <->
// position mapping is unspecified in CUDA, so code that uses only the API cannot tell), and the
// work is 32x redundant. Every *_sync call is a warp-wide rendezvous first, like on the GPU.
namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision { struct tf32 {}; }
enum layout_t { mem_row_major, mem_col_major };

// tf32: 10 explicit mantissa bits. __float_to_tf32 rounds to nearest (ties away, cvt.rna); an
// mma_sync input that was not converted is truncated by the tensor core (checked on an H100).
inline float __float_to_tf32(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7f800000u) == 0x7f800000u) return f;
    return __uint_as_float((u + 0x1000u) & 0xffffe000u);
}
inline float tf32_truncate(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7f800000u) == 0x7f800000u) return f;
    return __uint_as_float(u & 0xffffe000u);
}

template <typename T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };
template <typename Use, int M, int N, int K> struct tile;
template <int M, int N, int K> struct tile<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct tile<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct tile<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert((M == 16 && N == 16 && K == 8 && (std::is_same<T, precision::tf32>::value || std::is_same<T, float>::value))
                  || (K == 16 && ((M == 16 && N == 16) || (M == 32 && N == 8) || (M == 8 && N == 32))
                      && (std::is_same<T, __half>::value || std::is_same<T, float>::value)),
                  "the emulator supports wmma tf32 m16n16k8 and half m16n16k16 / m32n8k16 / m8n32k16");
    using element_type = typename storage<T>::type;
    static constexpr int rows = tile<Use, M, N, K>::rows, cols = tile<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols;
    element_type x[rows * cols];
};

inline void rendezvous(const void* p, unsigned ldm, size_t elem, const char* what, const char* file, int line) {
    if (((uintptr_t)p) % 32 != 0)
        emu::fail_here(emu::format("wmma::%s at %s:%d: pointer %p is not 32-byte aligned", what, file, line, p));
    if ((ldm * elem) % 16 != 0)
        emu::fail_here(emu::format("wmma::%s at %s:%d: ldm %u is not a multiple of 16 bytes", what, file, line, ldm));
    emu::warp_collective(emu::OP_WMMA, 0xffffffffu, 0, 0, 32, file, line);
}
#if EMU_SAN
#define EMU_WMMA_LANE_ACCESS ::emu::san::WarpShared emu_warp_shared_(::emu::sched()->cur & 31)
#else
#define EMU_WMMA_LANE_ACCESS ((void)0)
#endif

template <typename Use, int M, int N, int K, typename T, typename L, typename E>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& a, const E* p, unsigned ldm, EMU_SITE) {
    static_assert(!std::is_same<L, void>::value, "matrix_a/matrix_b fragments need a layout");
    rendezvous(p, ldm, sizeof(E), "load_matrix_sync", emu_file_, emu_line_);
    EMU_WMMA_LANE_ACCESS;
    constexpr bool row = std::is_same<L, row_major>::value;
    for (int r = 0; r < a.rows; ++r)
        for (int c = 0; c < a.cols; ++c)
            a.x[r * a.cols + c] = p[row ? (size_t)r * ldm + c : (size_t)c * ldm + r];
}
template <int M, int N, int K, typename T, typename E>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& a, const E* p, unsigned ldm, layout_t l, EMU_SITE) {
    rendezvous(p, ldm, sizeof(E), "load_matrix_sync", emu_file_, emu_line_);
    EMU_WMMA_LANE_ACCESS;
    for (int r = 0; r < M; ++r)
        for (int c = 0; c < N; ++c)
            a.x[r * N + c] = p[l == mem_row_major ? (size_t)r * ldm + c : (size_t)c * ldm + r];
}
template <int M, int N, int K, typename T, typename E>
inline void store_matrix_sync(E* p, const fragment<accumulator, M, N, K, T, void>& a, unsigned ldm, layout_t l, EMU_SITE) {
    rendezvous(p, ldm, sizeof(E), "store_matrix_sync", emu_file_, emu_line_);
    EMU_WMMA_LANE_ACCESS;
    for (int r = 0; r < M; ++r)
        for (int c = 0; c < N; ++c)
            p[l == mem_row_major ? (size_t)r * ldm + c : (size_t)c * ldm + r] = a.x[r * N + c];
}
#if EMU_SAN
#define EMU_FRAGMENT_ONLY __attribute__((no_sanitize_thread))  // touches fragments (registers) only
#else
#define EMU_FRAGMENT_ONLY
#endif
template <typename Use, int M, int N, int K, typename T, typename L, typename V>
EMU_FRAGMENT_ONLY inline void fill_fragment(fragment<Use, M, N, K, T, L>& a, const V& v) {
    for (int i = 0; i < a.num_elements; ++i) a.x[i] = v;
}
// d = a*b + c with fp32 accumulation; tf32 inputs truncated as the tensor core does.
template <int M, int N, int K, typename TA, typename LA, typename LB, typename TC>
EMU_FRAGMENT_ONLY inline void mma_sync(fragment<accumulator, M, N, K, TC, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TA, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c,
                     bool satf = false, EMU_SITE) {
    (void)satf;
    emu::warp_collective(emu::OP_WMMA, 0xffffffffu, 0, 0, 32, emu_file_, emu_line_);
    constexpr bool tf32 = std::is_same<TA, precision::tf32>::value;
    float acc[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float s = (float)c.x[i * N + j];
            for (int k = 0; k < K; ++k) {
                float x = (float)a.x[i * K + k], y = (float)b.x[k * N + j];
                if (tf32) { x = tf32_truncate(x); y = tf32_truncate(y); }
                s = fmaf(x, y, s);
            }
            acc[i * N + j] = s;
        }
    for (int i = 0; i < M * N; ++i) d.x[i] = acc[i];
}
}  // namespace wmma
}  // namespace nvcuda
