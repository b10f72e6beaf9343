// igemm.cuh - the implicit-GEMM core of the fast conv3x3 kernels (conv3x3.cu: forward variants 3-4,
// backward-data 2-3, backward-weight 3-4). kernels/README.md walks through it.
//
// A valid 3x3 convolution is a matrix product C (M x N) = A (M x R) @ B (R x N) whose operands are
// never built in memory: a "problem" struct says how to fetch A[m][r] and B[r][n] straight from the
// tensors (a gather) and what to do with C[m][n] (the epilogue: bias, ReLU, scatter to NCHW,
// atomics). Forward, for example: m = output pixel, n = output channel, r = (input channel, tap).
// The three problems are in conv3x3.cu; this file only knows matrices.
//
// Decomposition: a block of 256 threads computes a BM x BN tile of C (blockIdx.x over M, .y over N)
// over a slice of the reduction (blockIdx.z splits R, for products whose R is long and M x N
// short; each split stores its own partial tile, and the problem decides where it goes). The reduction advances BK at a time; each step's A (BK x BM) and B (BK x BN) are staged
// in shared memory k-major (As[k][m], Bs[k][n]) and every thread multiplies out of them:
//   - fp32 (igemm_fp32): a 16x16 grid of threads, each a TM x TN = BM/16 x BN/16 register tile of
//     C; per k it reads TM values of A and TN of B (as float4) for TM*TN FMAs.
//   - tf32 (igemm_tf32): 8 warps as 4 x 2, each a (BM/4) x (BN/2) tile of 16x16 wmma accumulators,
//     m16n16k8 tensor-core products with fp32 accumulation; A and B are rounded to tf32 (round to
//     nearest) once, when they are written to shared memory.
// Double buffering without cp.async (Stage::run, shared by both): the next step's global loads go
// to registers before this step's math and to the other shared buffer after it, so their latency
// hides behind the FMAs.
//
// Coalescing: an operand stored contiguously along m (or n) is loaded with consecutive threads on
// consecutive m; one contiguous along r (kContigK) with consecutive threads on consecutive r. Rows
// of As/Bs are padded by 4 floats: the r-major stores of 8 (or 16) k's then fall on distinct banks,
// float4 reads stay aligned, and wmma's ldm stays a multiple of 4 with 32-byte-aligned pointers.
//
// A problem P provides:
//   int M, N, R;
//   static constexpr bool kAContigK, kBContigK;   // operand contiguous along r in memory
//   static constexpr bool kColSums;               // also accumulate sum_r B[r][n] (bias gradient)
//   ARow a_row(int m); BCol b_col(int n);        // once per thread: what depends on m (or n) only
//   KPos k_pos(int r);                            // what depends on r only (pixel or tap decomposition)
//   float load_a(const ARow&, const KPos&); float load_b(const BCol&, const KPos&);
//   CRow c_row(int m); void store(const CRow&, int n, float v);
//   void col_sum(int n, float s);                  // when kColSums
//   static constexpr bool kBVec; bool b_vec(); float4 load_b4(const BCol&, int r);
//                                                 // optional 16-byte loads of B[r..r+3][n]
// load_a/load_b are only asked for m < M, n < N, r < R; rows and columns past the edge load as 0.
// With the r-contiguous mapping every load of a thread in one step has the same r (thread % BK),
// so k_pos, which may divide by runtime sizes, is computed once per step and shared by A and B.
#pragma once
#include "common.cuh"
#include <mma.h>

#define IGEMM_THREADS 256

// The staging of one operand: which (k, m) elements each thread loads, in registers between the
// global load and the shared-memory store. MN is BM (for A) or BN (for B).
template <int MN, int BK, bool kContigK>
struct Loads {
    static constexpr int COUNT = BK * MN / IGEMM_THREADS;  // elements per thread per step
    static_assert(BK * MN % IGEMM_THREADS == 0 && IGEMM_THREADS % MN == 0, "tile does not fit 256 threads");
    static_assert(IGEMM_THREADS % BK == 0, "the r-contiguous mapping keeps a thread on one k-row");
    // the element a thread loads in its s-th load: k-row and m-column within the tile
    __device__ static int kk(int s) {
        return kContigK ? threadIdx.x % BK : threadIdx.x / MN + s * (IGEMM_THREADS / MN);
    }
    __device__ static int mm(int s) {
        return kContigK ? (threadIdx.x + s * IGEMM_THREADS) / BK : threadIdx.x % MN;
    }
};

// Which part of the reduction this block owns: [*r0, *r1), whole steps of BK, split over gridDim.z.
template <int BK>
__device__ __forceinline__ void igemm_split(int R, int* r0, int* r1) {
    int chunk = CEIL_DIV(CEIL_DIV(R, (int)gridDim.z), BK) * BK;
    *r0 = blockIdx.z * chunk;
    *r1 = min(R, *r0 + chunk);
}

// Global -> registers -> shared memory for both operands of one step. TF32: round when storing.
//
// B has a second, vectorised mapping for problems that offer load_b4 (P::kBVec) when the sizes
// allow it (p.b_vec(): B's columns contiguous along r in groups of 4, 16-byte aligned): each
// thread loads float4s of 4 consecutive r of one column, (BK/4) lanes per column, so a step's B
// is BK*BN/4 16-byte loads instead of BK*BN 4-byte ones. Its registers share breg.
template <class P, int BM, int BN, int BK, bool TF32>
struct Stage {
    using LA = Loads<BM, BK, P::kAContigK>;
    using LB = Loads<BN, BK, P::kBContigK>;
    static constexpr int BV = BK / 4;                                    // float4s per column and step
    static constexpr int B4_SLOTS = BV * BN;
    static constexpr int B4_COUNT = P::kBVec ? CEIL_DIV(B4_SLOTS, IGEMM_THREADS) : 0;
    static constexpr int BREG = LB::COUNT > 4 * B4_COUNT ? LB::COUNT : 4 * B4_COUNT;
    static constexpr int BSUM = LB::COUNT > B4_COUNT ? LB::COUNT : B4_COUNT;
    typename P::ARow arow[LA::COUNT];
    typename P::BCol bcol[LB::COUNT > B4_COUNT ? LB::COUNT : B4_COUNT];
    bool aok[LA::COUNT], bok[BSUM];
    bool vec;
    float areg[LA::COUNT], breg[BREG], bsum[BSUM];

    // the vector mapping: slot e = thread + s*256 holds r = 4*(e % BV) .. +3 of column e / BV
    __device__ static int e4(int s) { return threadIdx.x + s * IGEMM_THREADS; }
    __device__ static int kk4(int s) { return 4 * (e4(s) % BV); }
    __device__ static int nn4(int s) { return e4(s) / BV; }

    __device__ void init(const P& p, int m0, int n0) {
        #pragma unroll
        for (int s = 0; s < LA::COUNT; ++s) {
            int m = m0 + LA::mm(s);
            aok[s] = m < p.M;
            arow[s] = p.a_row(aok[s] ? m : p.M - 1);
        }
        vec = P::kBVec && p.b_vec();  // uniform across the block
        #pragma unroll
        for (int s = 0; s < BSUM; ++s) {
            int n = n0 + (vec ? nn4(s) : LB::mm(s));
            bok[s] = n < p.N && (vec ? s < B4_COUNT && e4(s) < B4_SLOTS : s < LB::COUNT);
            bcol[s] = p.b_col(n < p.N ? n : p.N - 1);
            bsum[s] = 0.0f;
        }
    }
    __device__ void fetch(const P& p, int r0, int r1) {
        #pragma unroll
        for (int s = 0; s < LA::COUNT; ++s) {
            int r = r0 + LA::kk(s);
            areg[s] = (aok[s] && r < r1) ? p.load_a(arow[s], p.k_pos(r)) : 0.0f;
        }
        if (vec) {
            #pragma unroll
            for (int s = 0; s < B4_COUNT; ++s) {
                int r = r0 + kk4(s);
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (bok[s] && r + 3 < r1) {
                    v = p.load_b4(bcol[s], r);
                } else if (bok[s]) {  // the last, partial group of the reduction
                    v.x = r < r1 ? p.load_b(bcol[s], p.k_pos(r)) : 0.0f;
                    v.y = r + 1 < r1 ? p.load_b(bcol[s], p.k_pos(r + 1)) : 0.0f;
                    v.z = r + 2 < r1 ? p.load_b(bcol[s], p.k_pos(r + 2)) : 0.0f;
                }
                breg[4 * s] = v.x; breg[4 * s + 1] = v.y; breg[4 * s + 2] = v.z; breg[4 * s + 3] = v.w;
                if (P::kColSums) bsum[s] += (v.x + v.y) + (v.z + v.w);
            }
            return;
        }
        #pragma unroll
        for (int s = 0; s < LB::COUNT; ++s) {
            int r = r0 + LB::kk(s);
            breg[s] = (bok[s] && r < r1) ? p.load_b(bcol[s], p.k_pos(r)) : 0.0f;
            if (P::kColSums) bsum[s] += breg[s];
        }
    }
    __device__ static float cvt(float v) { return TF32 ? nvcuda::wmma::__float_to_tf32(v) : v; }
    __device__ void stash(float (*As)[BM + 4], float (*Bs)[BN + 4]) {
        #pragma unroll
        for (int s = 0; s < LA::COUNT; ++s) As[LA::kk(s)][LA::mm(s)] = cvt(areg[s]);
        if (vec) {
            #pragma unroll
            for (int s = 0; s < B4_COUNT; ++s)
                if (e4(s) < B4_SLOTS) {
                    #pragma unroll
                    for (int q = 0; q < 4; ++q) Bs[kk4(s) + q][nn4(s)] = cvt(breg[4 * s + q]);
                }
            return;
        }
        #pragma unroll
        for (int s = 0; s < LB::COUNT; ++s) Bs[LB::kk(s)][LB::mm(s)] = cvt(breg[s]);
    }
    // The double-buffered reduction over [r0, r1): step(buf) multiplies out of As[buf] and Bs[buf]
    // while the next step's global loads are in flight in registers; they go to the other buffer
    // after it. One barrier per step: a buffer is rewritten only after the barrier that ends the
    // step that read it.
    template <class Step>
    __device__ void run(const P& p, int r0, int r1, float (*As)[BK][BM + 4], float (*Bs)[BK][BN + 4], Step step) {
        fetch(p, r0, r1);
        stash(As[0], Bs[0]);
        __syncthreads();
        int buf = 0;
        for (int r = r0; r < r1; r += BK, buf ^= 1) {
            bool more = r + BK < r1;
            if (more) fetch(p, r + BK, r1);
            step(buf);
            if (more) stash(As[buf ^ 1], Bs[buf ^ 1]);
            __syncthreads();
        }
    }
    // Column sums of B (the bias gradient): the threads sharing a column are consecutive lanes (BK
    // of them, or BK/4 with float4s), so a shuffle reduction leaves one atomic per column and block.
    __device__ void finish_col_sums(const P& p, int n0) {
        static_assert(!P::kColSums || (P::kBContigK && BK <= 32), "column sums need the r-contiguous B mapping");
        if (!P::kColSums || blockIdx.x != 0) return;  // one block row owns the bias (uniform per block)
        const int lanes = vec ? BV : BK, count = vec ? B4_COUNT : LB::COUNT;
        #pragma unroll
        for (int s = 0; s < BSUM; ++s) {
            if (s >= count) break;  // uniform
            float v = bsum[s];
            for (int off = lanes / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            bool first = vec ? kk4(s) == 0 : LB::kk(s) == 0;
            if (first && bok[s]) p.col_sum(n0 + (vec ? nn4(s) : LB::mm(s)), v);
        }
    }
};

// ---- fp32: register-tiled SIMT ------------------------------------------------------------------
template <class P, int BM, int BN>
__device__ __forceinline__ void igemm_fp32(const P& p) {
    constexpr int BK = 8, TM = BM / 16, TN = BN / 16;
    __shared__ __align__(16) float As[2][BK][BM + 4];
    __shared__ __align__(16) float Bs[2][BK][BN + 4];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    int r0, r1;
    igemm_split<BK>(p.R, &r0, &r1);  // an empty split (r0 >= r1) still stores its zeros
    Stage<P, BM, BN, BK, false> st;
    st.init(p, m0, n0);
    float acc[TM][TN];
    #pragma unroll
    for (int i = 0; i < TM; ++i)
        #pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    st.run(p, r0, r1, As, Bs, [&](int buf) {
        #pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            // thread (tx, ty) owns rows m = tx + 16 i (so a warp's stores of C are 16 consecutive m)
            // and columns n = ty * TN + j (read as float4)
            float a[TM], b[TN];
            #pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = As[buf][kk][tx + 16 * i];
            #pragma unroll
            for (int j = 0; j < TN; j += 4) {
                float4 v = *reinterpret_cast<const float4*>(&Bs[buf][kk][ty * TN + j]);
                b[j] = v.x; b[j + 1] = v.y; b[j + 2] = v.z; b[j + 3] = v.w;
            }
            #pragma unroll
            for (int i = 0; i < TM; ++i)
                #pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
        }
    });
    st.finish_col_sums(p, n0);
    #pragma unroll
    for (int i = 0; i < TM; ++i) {
        int m = m0 + tx + 16 * i;
        if (m >= p.M) continue;
        typename P::CRow row = p.c_row(m);
        #pragma unroll
        for (int j = 0; j < TN; ++j) {
            int n = n0 + ty * TN + j;
            if (n < p.N) p.store(row, n, acc[i][j]);
        }
    }
}

// ---- tf32: tensor cores through wmma -------------------------------------------------------------
template <class P, int BM, int BN>
__device__ __forceinline__ void igemm_tf32(const P& p) {
    using namespace nvcuda;
    constexpr int BK = 16, WM = BM / 4, WN = BN / 2, FM = WM / 16, FN = WN / 16;
    __shared__ __align__(32) float As[2][BK][BM + 4];
    __shared__ __align__(32) float Bs[2][BK][BN + 4];
    __shared__ __align__(32) float Cw[IGEMM_THREADS / 32][16 * 16];  // per-warp epilogue staging
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = (warp % 4) * WM, wn = (warp / 4) * WN;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    int r0, r1;
    igemm_split<BK>(p.R, &r0, &r1);
    Stage<P, BM, BN, BK, true> st;
    st.init(p, m0, n0);
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[FM][FN];
    #pragma unroll
    for (int i = 0; i < FM; ++i)
        #pragma unroll
        for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    st.run(p, r0, r1, As, Bs, [&](int buf) {
        #pragma unroll
        for (int kk = 0; kk < BK; kk += 8) {
            // As[k][m] is A column-major (ldm BM + 4); Bs[k][n] is B row-major (ldm BN + 4)
            wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> a[FM];
            wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b[FN];
            #pragma unroll
            for (int i = 0; i < FM; ++i) wmma::load_matrix_sync(a[i], &As[buf][kk][wm + 16 * i], BM + 4);
            #pragma unroll
            for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(b[j], &Bs[buf][kk][wn + 16 * j], BN + 4);
            #pragma unroll
            for (int i = 0; i < FM; ++i)
                #pragma unroll
                for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
    });
    st.finish_col_sums(p, n0);
    // Epilogue: each 16x16 accumulator goes through the warp's staging tile (column-major, so
    // lanes 0-15 and 16-31 then store 16 consecutive m of one column each).
    #pragma unroll
    for (int i = 0; i < FM; ++i)
        #pragma unroll
        for (int j = 0; j < FN; ++j) {
            wmma::store_matrix_sync(Cw[warp], acc[i][j], 16, wmma::mem_col_major);
            __syncwarp();
            for (int e = lane; e < 256; e += 32) {
                int m = m0 + wm + 16 * i + e % 16, n = n0 + wn + 16 * j + e / 16;
                if (m < p.M && n < p.N) p.store(p.c_row(m), n, Cw[warp][e]);
            }
            __syncwarp();  // the next store_matrix_sync overwrites Cw[warp]
        }
}
