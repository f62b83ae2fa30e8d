// Single-precision matrix products, row-major:
//     C = alpha * op(A) * op(B) + beta * C,   op(A): M x K, op(B): K x N, C: M x N
//     op(A)[i, k] = trans_a ? A[k * lda + i] : A[i * lda + k]
//     op(B)[k, j] = trans_b ? B[j * ldb + k] : B[k * ldb + j]
//     C[i, j] at C[i * ldc + j]
// Any M, N, K >= 0 (edges are guarded; K == 0 gives C = beta * C). beta == 0 means C is not
// read (it may hold NaN or garbage). Plain f32 FMAs, no TF32.
//
// Determinism: every output is accumulated as acc = fma(op(A)[i,k], op(B)[k,j], acc) for
// k = 0, 1, ..., K-1 in order, then c = alpha * acc (+ beta * C_old, one fma). So sgemm_f32
// and sgemm_64_f32 give identical bits, and so does any CPU loop doing the same FMA sequence.
// The thin kernels sum in a different (fixed) order: deterministic, equal to rounding.
//
// Which kernel:
//   N <= 16 and trans_a == 0             sgemm_thin_f32     (one warp per row of C)
//   N <= 16 and trans_a == 1             sgemm_thin_ta_f32  (32 rows of C per block), or for
//                                        a long K the split-K pair sgemm_thin_ta_partial_f32 +
//                                        sgemm_thin_finish_f32
//   otherwise, enough 128x128 tiles to fill the GPU (ceil(M/128)*ceil(N/128) >= #SMs)
//                                        sgemm_f32          (128x128 tiles, 8x8 per thread)
//   otherwise                            sgemm_64_f32       (64x64 tiles, 4x4 per thread)
#include "common.cuh"

// The shared-memory tiles hold op(A) transposed (As[k][i]) and op(B) as is (Bs[k][j]), so that
// a thread's 4 consecutive rows / columns are one 16-byte shared load. Rows are padded by 4
// floats: the transposing store of a k-contiguous global tile then hits 32 distinct banks,
// and the padded pitch keeps every row 16-byte aligned.
constexpr int BK = 8;
constexpr int PAD = 4;

// Loads the BK x TILE slice [k0, k0+BK) x [x0, x0+TILE) of an operand into registers, as a
// 256-thread cooperative load. K_CONTIGUOUS: element (x, k) at p[x * ld + k] (A untransposed,
// B transposed); else at p[k * ld + x]. The layout of the element index e -> (k, x) keeps the
// global reads coalesced along the contiguous dimension.
template <int TILE, bool K_CONTIGUOUS>
struct TileLoader {
    static constexpr int PER_THREAD = TILE * BK / 256;
    static __device__ __forceinline__ void load(const float* p, unsigned int ld, unsigned int extent,
                                                unsigned int K, unsigned int x0, unsigned int k0,
                                                float (&reg)[PER_THREAD]) {
#pragma unroll
        for (int q = 0; q < PER_THREAD; ++q) {
            const unsigned int e = threadIdx.x + 256u * q;
            const unsigned int kk = K_CONTIGUOUS ? e % BK : e / TILE;
            const unsigned int xx = K_CONTIGUOUS ? e / BK : e % TILE;
            const unsigned int x = x0 + xx, k = k0 + kk;
            reg[q] = 0.0f;
            if (x < extent && k < K)
                reg[q] = K_CONTIGUOUS ? p[(size_t)x * ld + k] : p[(size_t)k * ld + x];
        }
    }
    static __device__ __forceinline__ void store(float (*s)[TILE + PAD], const float (&reg)[PER_THREAD]) {
#pragma unroll
        for (int q = 0; q < PER_THREAD; ++q) {
            const unsigned int e = threadIdx.x + 256u * q;
            const unsigned int kk = K_CONTIGUOUS ? e % BK : e / TILE;
            const unsigned int xx = K_CONTIGUOUS ? e / BK : e % TILE;
            s[kk][xx] = reg[q];
        }
    }
};

// Block tile BM x BN, 256 threads as 16 x 16, each owning TM x TN outputs made of 4 x 4
// quadrants spaced BM*4/TM rows and BN*4/TN columns apart (so a warp's shared reads are a
// broadcast for A and 64 consecutive floats for B). Shared memory is double-buffered and the
// next k-slice is prefetched into registers while the current one is multiplied: one barrier
// per k-slice.
template <int BM, int BN, int TM, int TN, bool TA, bool TB>
__device__ __forceinline__ void sgemm_tile(float (*As)[BK][BM + PAD], float (*Bs)[BK][BN + PAD],
                                           const float* A, const float* B, float* C, unsigned int M,
                                           unsigned int N, unsigned int K, unsigned int lda,
                                           unsigned int ldb, unsigned int ldc, float alpha, float beta) {
    static_assert((BM / TM) * (BN / TN) == 256, "256 threads");
    constexpr int QM = TM / 4, QN = TN / 4;
    constexpr int SM_ = BM * 4 / TM, SN_ = BN * 4 / TN;
    using LoadA = TileLoader<BM, !TA>;
    using LoadB = TileLoader<BN, TB>;
    const unsigned int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const unsigned int i0 = blockIdx.y * BM, j0 = blockIdx.x * BN;

    float acc[TM][TN];
#pragma unroll
    for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int b = 0; b < TN; ++b) acc[a][b] = 0.0f;

    float ra[LoadA::PER_THREAD], rb[LoadB::PER_THREAD];
    const unsigned int ntiles = (K + BK - 1) / BK;
    if (ntiles > 0) {
        LoadA::load(A, lda, M, K, i0, 0, ra);
        LoadB::load(B, ldb, N, K, j0, 0, rb);
        LoadA::store(As[0], ra);
        LoadB::store(Bs[0], rb);
    }
    __syncthreads();
    for (unsigned int kt = 0; kt < ntiles; ++kt) {
        const unsigned int cur = kt & 1;
        const bool more = kt + 1 < ntiles;
        if (more) {
            LoadA::load(A, lda, M, K, i0, (kt + 1) * BK, ra);
            LoadB::load(B, ldb, N, K, j0, (kt + 1) * BK, rb);
        }
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[TM], b[TN];
#pragma unroll
            for (int q = 0; q < QM; ++q) {
                const float4 v = *reinterpret_cast<const float4*>(&As[cur][kk][q * SM_ + ty * 4]);
                a[q * 4 + 0] = v.x; a[q * 4 + 1] = v.y; a[q * 4 + 2] = v.z; a[q * 4 + 3] = v.w;
            }
#pragma unroll
            for (int q = 0; q < QN; ++q) {
                const float4 v = *reinterpret_cast<const float4*>(&Bs[cur][kk][q * SN_ + tx * 4]);
                b[q * 4 + 0] = v.x; b[q * 4 + 1] = v.y; b[q * 4 + 2] = v.z; b[q * 4 + 3] = v.w;
            }
#pragma unroll
            for (int x = 0; x < TM; ++x)
#pragma unroll
                for (int y = 0; y < TN; ++y) acc[x][y] = fmaf(a[x], b[y], acc[x][y]);
        }
        if (more) {
            LoadA::store(As[cur ^ 1], ra);
            LoadB::store(Bs[cur ^ 1], rb);
        }
        __syncthreads();
    }

#pragma unroll
    for (int x = 0; x < TM; ++x) {
        const unsigned int i = i0 + (x / 4) * SM_ + ty * 4 + (x % 4);
        if (i >= M) continue;
#pragma unroll
        for (int y = 0; y < TN; ++y) {
            const unsigned int j = j0 + (y / 4) * SN_ + tx * 4 + (y % 4);
            if (j >= N) continue;
            float* c = C + (size_t)i * ldc + j;
            const float r = alpha * acc[x][y];
            *c = beta == 0.0f ? r : fmaf(beta, *c, r);
        }
    }
}

#define MA_SGEMM_ARGS                                                                               \
    const float *A, const float *B, float *C, unsigned int M, unsigned int N, unsigned int K,      \
        unsigned int lda, unsigned int ldb, unsigned int ldc, float alpha, float beta,              \
        unsigned int trans_a, unsigned int trans_b

// The shared tiles are declared in the kernel, not in the templates: static __shared__ arrays
// in each of the four instantiations would be four separate allocations.
template <int BM, int BN, int TM, int TN>
__device__ __forceinline__ void sgemm_dispatch(MA_SGEMM_ARGS) {
    __shared__ __align__(16) float As[2][BK][BM + PAD];
    __shared__ __align__(16) float Bs[2][BK][BN + PAD];
    if (trans_a) {
        if (trans_b) sgemm_tile<BM, BN, TM, TN, true, true>(As, Bs, A, B, C, M, N, K, lda, ldb, ldc, alpha, beta);
        else sgemm_tile<BM, BN, TM, TN, true, false>(As, Bs, A, B, C, M, N, K, lda, ldb, ldc, alpha, beta);
    } else {
        if (trans_b) sgemm_tile<BM, BN, TM, TN, false, true>(As, Bs, A, B, C, M, N, K, lda, ldb, ldc, alpha, beta);
        else sgemm_tile<BM, BN, TM, TN, false, false>(As, Bs, A, B, C, M, N, K, lda, ldb, ldc, alpha, beta);
    }
}

// sgemm_f32(const float* A, const float* B, float* C, unsigned int M, unsigned int N,
//           unsigned int K, unsigned int lda, unsigned int ldb, unsigned int ldc, float alpha,
//           float beta, unsigned int trans_a, unsigned int trans_b)
//   128 x 128 tile per block. Launch: blockDim.x = 256 (1-D), gridDim = (ceil(N / 128),
//   ceil(M / 128), 1) -- so M <= 65535 * 128. Static shared memory 16.5 KiB.
extern "C" __global__ void __launch_bounds__(256, 2) sgemm_f32(MA_SGEMM_ARGS) {
    sgemm_dispatch<128, 128, 8, 8>(A, B, C, M, N, K, lda, ldb, ldc, alpha, beta, trans_a, trans_b);
}

// sgemm_64_f32: same arguments; 64 x 64 tile per block, for products too small to give every
// SM a 128 x 128 tile. Launch: blockDim.x = 256, gridDim = (ceil(N / 64), ceil(M / 64), 1).
extern "C" __global__ void __launch_bounds__(256) sgemm_64_f32(MA_SGEMM_ARGS) {
    sgemm_dispatch<64, 64, 4, 4>(A, B, C, M, N, K, lda, ldb, ldc, alpha, beta, trans_a, trans_b);
}

constexpr int THIN_MAX_N = 16;

// Stores alpha * acc (+ beta * C) for the output column owned by lane `col` (< N).
__device__ __forceinline__ void thin_store(float* c, float acc, float alpha, float beta) {
    const float r = alpha * acc;
    *c = beta == 0.0f ? r : fmaf(beta, *c, r);
}

// sgemm_thin_f32(const float* A, const float* B, float* C, unsigned int M, unsigned int N,
//                unsigned int K, unsigned int lda, unsigned int ldb, unsigned int ldc,
//                float alpha, float beta, unsigned int trans_b)
//   op(A) = A (not transposed), N <= 16 (larger N: nothing is written). One warp per row i of
//   C: lane l accumulates k = l, l + 32, ... (coalesced reads of A's row; op(B) is small and
//   stays in cache), then a 5-step xor butterfly per column; lane j writes C[i, j].
//   Launch: blockDim.x = 256 (8 rows per block), gridDim.x = min(ceil(M / 8), 65535).
extern "C" __global__ void __launch_bounds__(256) sgemm_thin_f32(const float* A, const float* B, float* C,
                                                                 unsigned int M, unsigned int N, unsigned int K,
                                                                 unsigned int lda, unsigned int ldb, unsigned int ldc,
                                                                 float alpha, float beta, unsigned int trans_b) {
    if (N > THIN_MAX_N) return;
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int warps_per_block = blockDim.x >> 5;
    const unsigned int warp = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const unsigned int nwarps = gridDim.x * warps_per_block;
    for (unsigned int i = warp; i < M; i += nwarps) {
        const float* a_row = A + (size_t)i * lda;
        float acc[THIN_MAX_N];
#pragma unroll
        for (int j = 0; j < THIN_MAX_N; ++j) acc[j] = 0.0f;
#pragma unroll 4
        for (unsigned int k = lane; k < K; k += 32) {
            const float a = a_row[k];
#pragma unroll
            for (int j = 0; j < THIN_MAX_N; ++j) {
                if (j < (int)N) {
                    const float b = trans_b ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                    acc[j] = fmaf(a, b, acc[j]);
                }
            }
        }
        float mine = 0.0f;
#pragma unroll
        for (int j = 0; j < THIN_MAX_N; ++j) {
            if (j < (int)N) {
                const float v = ma_group_sum<32>(acc[j]);
                if ((int)lane == j) mine = v;
            }
        }
        if (lane < N) thin_store(C + (size_t)i * ldc + lane, mine, alpha, beta);
    }
}

// Block (32, 8) computing, for the 32 rows i0..i0+31 of C and all N <= 16 columns, the sums
// over k in [k_begin, k_end) of op(A)[i, k] * op(B)[k, j] with op(A) = A^T (A stored K x M):
// threadIdx.x picks a row i (coalesced reads of A's row k), threadIdx.y one of 8 interleaved
// k-slices (k = k_begin + y, + 8, ...); the 8 partials are then combined by a fixed
// shared-memory tree. Returns with part[0][j][tx] + part[1][j][tx] the sum for (i0 + tx, j);
// the caller reads it and ends with a barrier before part is reused.
__device__ __forceinline__ void thin_ta_block(const float* A, const float* B, unsigned int M, unsigned int N,
                                              unsigned int lda, unsigned int ldb, unsigned int trans_b,
                                              unsigned int i0, unsigned int k_begin, unsigned int k_end,
                                              float (*part)[THIN_MAX_N][33]) {
    const unsigned int tx = threadIdx.x, ty = threadIdx.y;
    const unsigned int i = i0 + tx;
    float acc[THIN_MAX_N];
#pragma unroll
    for (int j = 0; j < THIN_MAX_N; ++j) acc[j] = 0.0f;
    if (i < M) {
#pragma unroll 2
        for (unsigned int k = k_begin + ty; k < k_end; k += 8) {
            const float a = A[(size_t)k * lda + i];
#pragma unroll
            for (int j = 0; j < THIN_MAX_N; ++j) {
                if (j < (int)N) {
                    const float b = trans_b ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                    acc[j] = fmaf(a, b, acc[j]);
                }
            }
        }
    }
#pragma unroll
    for (int j = 0; j < THIN_MAX_N; ++j) part[ty][j][tx] = acc[j];
    __syncthreads();
    // Fixed tree over the 8 slices: (0+4, 1+5, 2+6, 3+7), then (0+2, 1+3), then 0+1 by the caller.
    for (unsigned int q = ty; q < 4u * THIN_MAX_N; q += 8) {
        const unsigned int sl = q / THIN_MAX_N, j = q % THIN_MAX_N;
        part[sl][j][tx] += part[sl + 4][j][tx];
    }
    __syncthreads();
    for (unsigned int q = ty; q < 2u * THIN_MAX_N; q += 8) {
        const unsigned int sl = q / THIN_MAX_N, j = q % THIN_MAX_N;
        part[sl][j][tx] += part[sl + 2][j][tx];
    }
    __syncthreads();
}

// sgemm_thin_ta_f32: same arguments as sgemm_thin_f32, for op(A) = A^T (A stored K x M), N <= 16.
//   One block per 32 rows of C over the whole K. Good when M / 32 blocks fill the GPU or K is
//   short; for a long K (e.g. the weight gradient X^T * dY over many examples) use the split
//   pair below. Launch: blockDim = (32, 8, 1) exactly, gridDim = (min(ceil(M / 32), 65535), 1, 1).
extern "C" __global__ void __launch_bounds__(256) sgemm_thin_ta_f32(const float* A, const float* B, float* C,
                                                                    unsigned int M, unsigned int N, unsigned int K,
                                                                    unsigned int lda, unsigned int ldb, unsigned int ldc,
                                                                    float alpha, float beta, unsigned int trans_b) {
    if (N > THIN_MAX_N) return;
    __shared__ float part[8][THIN_MAX_N][33];
    const unsigned int tx = threadIdx.x, ty = threadIdx.y;
    for (unsigned int i0 = blockIdx.x * 32; i0 < M; i0 += gridDim.x * 32) {
        thin_ta_block(A, B, M, N, lda, ldb, trans_b, i0, 0, K, part);
        const unsigned int i = i0 + tx;
        for (unsigned int j = ty; j < N; j += 8)
            if (i < M) thin_store(C + (size_t)i * ldc + j, part[0][j][tx] + part[1][j][tx], alpha, beta);
        __syncthreads();
    }
}

// sgemm_thin_ta_partial_f32(const float* A, const float* B, float* work, unsigned int M,
//                           unsigned int N, unsigned int K, unsigned int lda, unsigned int ldb,
//                           unsigned int trans_b)
//   Split-K stage 1 of C = alpha * A^T op(B) + beta * C (A stored K x M, N <= 16): block
//   (x, z) sums k in chunk z (chunk = ceil(K / gridDim.y), gridDim.y = Z) for rows
//   32x..32x+31 and writes work[(z * M + i) * N + j] (work holds Z * M * N floats).
//   Launch: blockDim = (32, 8, 1), gridDim = (min(ceil(M / 32), 65535), Z, 1). Choose Z from
//   the shape alone (e.g. Z = clamp(K / 1024, 1, 128)) so the bits do not depend on the GPU.
// (No __launch_bounds__: with it ptxas 12.4 for sm_90 capped this kernel at 40 registers and
// spilled; check-ptx.sh fails if a spill comes back.)
extern "C" __global__ void sgemm_thin_ta_partial_f32(const float* A, const float* B, float* work,
                                                                            unsigned int M, unsigned int N,
                                                                            unsigned int K, unsigned int lda,
                                                                            unsigned int ldb, unsigned int trans_b) {
    if (N > THIN_MAX_N) return;
    __shared__ float part[8][THIN_MAX_N][33];
    const unsigned int tx = threadIdx.x, ty = threadIdx.y;
    const unsigned int chunk = (K + gridDim.y - 1) / gridDim.y;
    const unsigned int k_begin = (unsigned int)min((size_t)K, (size_t)blockIdx.y * chunk);
    const unsigned int k_end = (K - k_begin < chunk) ? K : k_begin + chunk;
    float* slab = work + (size_t)blockIdx.y * M * N;
    for (unsigned int i0 = blockIdx.x * 32; i0 < M; i0 += gridDim.x * 32) {
        thin_ta_block(A, B, M, N, lda, ldb, trans_b, i0, k_begin, k_end, part);
        const unsigned int i = i0 + tx;
        for (unsigned int j = ty; j < N; j += 8)
            if (i < M) slab[(size_t)i * N + j] = part[0][j][tx] + part[1][j][tx];
        __syncthreads();
    }
}

// sgemm_thin_finish_f32(const float* work, float* C, unsigned int M, unsigned int N,
//                       unsigned int Z, unsigned int ldc, float alpha, float beta)
//   Split-K stage 2: C[i, j] = alpha * (sum_{z = 0..Z-1} work[(z * M + i) * N + j], in order
//   of z) (+ beta * C[i, j], one fma; beta == 0: C not read). Launch: 1-D, blockDim.x = 256,
//   any gridDim.x (grid-stride over M * N), e.g. ceil(M * N / 256).
extern "C" __global__ void sgemm_thin_finish_f32(const float* work, float* C, unsigned int M, unsigned int N,
                                                 unsigned int Z, unsigned int ldc, float alpha, float beta) {
    const size_t mn = (size_t)M * N;
    MA_GRID_STRIDE(q, mn) {
        float acc = 0.0f;
        for (unsigned int z = 0; z < Z; ++z) acc += work[z * mn + q];
        thin_store(C + (q / N) * ldc + q % N, acc, alpha, beta);
    }
}
