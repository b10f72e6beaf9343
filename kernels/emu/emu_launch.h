// emu_launch.h - the launch side of the emulator, included at the end of the generated unit.
//
// launch() has cuLaunchKernel's shape: grid, block, dynamic shared bytes and `void** args`, where
// args[i] points at the value of parameter i. A variadic template unpacks them into the kernel's
// typed parameters; signature() spells those types so the Python side can reject a wrong dtype or
// a Python float before anything runs. Blocks are spread over OpenMP threads when built with it;
// each OS thread has its own scheduler and fiber pool, and runs one block at a time.
#pragma once

namespace emu {

template <typename T> struct code { static constexpr const char* s = "?"; };
#define EMU_CODE(T, S) template <> struct code<T> { static constexpr const char* s = S; };
EMU_CODE(float, "f32") EMU_CODE(double, "f64") EMU_CODE(__half, "f16") EMU_CODE(bool, "b8")
EMU_CODE(char, "i8") EMU_CODE(signed char, "i8") EMU_CODE(unsigned char, "u8")
EMU_CODE(short, "i16") EMU_CODE(unsigned short, "u16") EMU_CODE(int, "i32") EMU_CODE(unsigned int, "u32")
EMU_CODE(long, "i64") EMU_CODE(unsigned long, "u64") EMU_CODE(long long, "i64") EMU_CODE(unsigned long long, "u64")
EMU_CODE(void, "void")
#undef EMU_CODE

// The name of a type as the compiler spells it, for refusals ("const uint4*", "Foo").
template <typename T> std::string type_name() {
    std::string f = __PRETTY_FUNCTION__;  // "... type_name() [with T = const uint4*; ...]"
    size_t a = f.find("T = ") + 4, b = f.find_first_of(";]", a);
    return f.substr(a, b - a);
}
// One parameter's code for the Python side: "f32" for a float, "*f32" for float*, "*cf32" for
// const float*, "*cu32x4a16" for const uint4* (element type, lanes, alignment: the array holds
// the elements and must be as aligned as the GPU's vector load needs). A type the emulator cannot
// pass is "?" followed by its name.
template <typename T> std::string elem_code() {
    using U = typename std::remove_cv<T>::type;
    if constexpr (vec_info<U>::lanes > 0)
        return std::string(vec_info<U>::base) + "x" + std::to_string(vec_info<U>::lanes) + "a" + std::to_string(alignof(U));
    else
        return code<U>::s;
}
template <typename T> std::string type_code() {
    std::string c;
    if constexpr (std::is_pointer<T>::value) {
        using P = typename std::remove_pointer<T>::type;
        c = std::string("*") + (std::is_const<P>::value ? "c" : "") + elem_code<P>();
    } else {  // CuPy passes NumPy scalars only; a vector or struct by value has no NumPy scalar
        c = vec_info<typename std::remove_cv<T>::type>::lanes > 0 ? std::string("?") : elem_code<T>();
    }
    if (c.find('?') != std::string::npos) return "?" + type_name<T>();
    return c;
}
// A global variable for get_global: "<element code>|<extents>", e.g. "f32|17" or "u32x4a16|2,8".
template <typename T> std::string global_info() {
    using E = typename std::remove_cv<typename std::remove_all_extents<T>::type>::type;
    std::string s = elem_code<E>() + "|";
    if constexpr (std::rank<T>::value >= 1) s += std::to_string(std::extent<T, 0>::value);
    if constexpr (std::rank<T>::value >= 2) s += "," + std::to_string(std::extent<T, 1>::value);
    if constexpr (std::rank<T>::value >= 3) s += "," + std::to_string(std::extent<T, 2>::value);
    if constexpr (std::rank<T>::value >= 4) s += "," + std::to_string(std::extent<T, 3>::value);
    return s;
}
template <typename... A> std::string signature(void (*)(A...)) {
    std::string s;
    ((s += (s.empty() ? "" : ";"), s += type_code<A>()), ...);  // ';': type names may hold commas
    return s;
}

template <typename... A, size_t... I>
void invoke_impl(void* fn, void** args, std::index_sequence<I...>) {
    reinterpret_cast<void (*)(A...)>(fn)(*static_cast<typename std::remove_cv<A>::type*>(args[I])...);
}
template <typename... A> void invoke(void* fn, void** args) {
    invoke_impl<A...>(fn, args, std::index_sequence_for<A...>{});
}

inline Sched* this_thread_sched() {
    if (!g_sched) g_sched = new Sched();  // lives as long as its OS thread; pools are reused
    return g_sched;
}

template <typename... A>
int launch(const char* name, void (*kernel)(A...), const unsigned* grid, const unsigned* block,
           size_t smem_bytes, void** args, int order, unsigned long long seed, int nthreads,
           char* err, size_t errlen) {
#if EMU_ASAN
    __asan_set_death_callback(&asan_death);  // this build's, so that it reads this build's scheduler
#endif
    const long long nblocks = (long long)grid[0] * grid[1] * grid[2];
    const int nthr = (int)(block[0] * block[1] * block[2]);
    std::atomic<bool> failed{false};
    std::string first_error;
#if !defined(_OPENMP)
    (void)nthreads;
#endif
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1 && nblocks > 1)
    for (long long b = 0; b < nblocks; ++b) {
        if (failed.load(std::memory_order_relaxed)) continue;
        Sched* s = this_thread_sched();
        gridDim = dim3(grid[0], grid[1], grid[2]);
        blockDim = dim3(block[0], block[1], block[2]);
        blockIdx = uint3{(unsigned)(b % grid[0]), (unsigned)((b / grid[0]) % grid[1]), (unsigned)(b / ((long long)grid[0] * grid[1]))};
#if EMU_SAN == 3
        if (!san::prof::sampled(blockIdx)) continue;  // profile: a block outside the sample
#endif
        if (s->smem_bytes != smem_bytes || (smem_bytes && !s->smem)) {
            free(s->smem);
            s->smem = nullptr;
            // exactly smem_bytes, so that AddressSanitizer sees an overrun of the dynamic buffer
            if (smem_bytes && posix_memalign((void**)&s->smem, 128, smem_bytes) != 0) abort();
            s->smem_bytes = smem_bytes;
        }
        ensure_stacks(s, nthr);
        if ((int)s->fibers.size() < nthr) s->fibers.resize(nthr);
        s->nthreads = nthr;
        s->kernel = name;
        s->invoke = &invoke<A...>;
        s->fn = reinterpret_cast<void*>(kernel);
        s->args = args;
        s->order = order;
        s->rng = (seed ^ (0x9E3779B97F4A7C15ull * (unsigned long long)(b + 1))) | 1ull;
        s->failed = false;
        s->error.clear();
        run_block(s);
        if (s->failed) {
#pragma omp critical(emu_error)
            if (!failed.load()) { first_error = s->error; failed.store(true); }
        }
    }
    if (failed.load()) {
        snprintf(err, errlen, "%s", first_error.c_str());
        return 1;
    }
    return 0;
}

}  // namespace emu

extern "C" __attribute__((visibility("default"))) int emu_abi_version() { return 1; }
