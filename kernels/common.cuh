// Helpers shared by every kernel file; scripts/gen-ptx.py hands this header to NVRTC, so
// the `#include "common.cuh"` needs no include path. NVRTC has no <cmath> and no INFINITY /
// NAN macros: special values are spelled as bit patterns.
//
// Determinism: every reduction here combines values in an order fixed by the lane index and
// the launch shape alone (xor butterflies, no atomics), so a kernel that uses them gives the
// same bits on every run with the same launch configuration.
#pragma once

#define MA_FULL_MASK 0xffffffffu
#define MA_WARP 32

__device__ __forceinline__ float ma_pos_inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float ma_neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float ma_nan() { return __int_as_float(0x7fffffff); }
__device__ __forceinline__ bool ma_is_nan(float x) { return x != x; }

// max that propagates NaN (PyTorch's `max`/`maximum`): fmaxf would drop it.
__device__ __forceinline__ float ma_max_nan(float a, float b) {
    return (a > b || ma_is_nan(a)) ? a : b;
}
__device__ __forceinline__ float ma_min_nan(float a, float b) {
    return (a < b || ma_is_nan(a)) ? a : b;
}

// Butterfly reductions over groups of WIDTH lanes (WIDTH a power of two <= 32). Every lane of
// the group ends with the same value, combined in the same order on every lane.
template <int WIDTH>
__device__ __forceinline__ float ma_group_sum(float v) {
#pragma unroll
    for (int off = WIDTH / 2; off > 0; off >>= 1) v += __shfl_xor_sync(MA_FULL_MASK, v, off, WIDTH);
    return v;
}

// NaN-ignoring max (fmaxf): used where a NaN must reach the result through a later sum instead.
template <int WIDTH>
__device__ __forceinline__ float ma_group_fmax(float v) {
#pragma unroll
    for (int off = WIDTH / 2; off > 0; off >>= 1)
        v = fmaxf(v, __shfl_xor_sync(MA_FULL_MASK, v, off, WIDTH));
    return v;
}

template <int WIDTH>
__device__ __forceinline__ float ma_group_max_nan(float v) {
#pragma unroll
    for (int off = WIDTH / 2; off > 0; off >>= 1)
        v = ma_max_nan(v, __shfl_xor_sync(MA_FULL_MASK, v, off, WIDTH));
    return v;
}

// Argmax order: NaN counts as the largest value (as in PyTorch's argmax); ties go to the
// lower index. A total order on (value, index), so the winner does not depend on the order of
// comparisons.
__device__ __forceinline__ bool ma_argmax_better(float v, unsigned int i, float bv, unsigned int bi) {
    if (ma_is_nan(bv)) return ma_is_nan(v) && i < bi;
    if (ma_is_nan(v)) return true;
    return v > bv || (v == bv && i < bi);
}

template <int WIDTH>
__device__ __forceinline__ void ma_group_argmax(float& v, unsigned int& i) {
#pragma unroll
    for (int off = WIDTH / 2; off > 0; off >>= 1) {
        float ov = __shfl_xor_sync(MA_FULL_MASK, v, off, WIDTH);
        unsigned int oi = __shfl_xor_sync(MA_FULL_MASK, i, off, WIDTH);
        if (ma_argmax_better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

// Online log-sum-exp state (running max m, sum of exp(x - m)). Adding -inf is skipped
// explicitly: exp(-inf - (-inf)) would be NaN although the term is exactly zero (a shift of
// log 0 = -inf is legal input). A NaN input still reaches `s`.
__device__ __forceinline__ void ma_lse_push(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.0f;
        m = x;
    } else if (x != ma_neg_inf()) {
        s += expf(x - m);
    }
}

__device__ __forceinline__ void ma_lse_merge(float& m, float& s, float om, float os) {
    float nm = fmaxf(m, om);
    float a = (m == ma_neg_inf()) ? 0.0f : s * expf(m - nm);
    float b = (om == ma_neg_inf()) ? 0.0f : os * expf(om - nm);
    // If either partial sum is NaN, fmaxf picked the other max; the NaN still flows via a + b.
    m = nm;
    s = a + b;
}

template <int WIDTH>
__device__ __forceinline__ void ma_group_lse(float& m, float& s) {
#pragma unroll
    for (int off = WIDTH / 2; off > 0; off >>= 1) {
        float om = __shfl_xor_sync(MA_FULL_MASK, m, off, WIDTH);
        float os = __shfl_xor_sync(MA_FULL_MASK, s, off, WIDTH);
        ma_lse_merge(m, s, om, os);
    }
}

// Block-wide helpers for blocks of BLOCK threads (a multiple of 32, at most 1024). `scratch`
// is shared memory of at least 32 floats; the functions end with a barrier so that scratch may
// be reused and every thread gets the result.
template <int BLOCK>
__device__ __forceinline__ float ma_block_sum(float v, float* scratch) {
    constexpr int WARPS = BLOCK / MA_WARP;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = ma_group_sum<MA_WARP>(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = 0.0f;
    if (warp == 0) {
        float t = lane < WARPS ? scratch[lane] : 0.0f;
        t = ma_group_sum<MA_WARP>(t);
        if (lane == 0) scratch[0] = t;
    }
    __syncthreads();
    r = scratch[0];
    __syncthreads();
    return r;
}

template <int BLOCK>
__device__ __forceinline__ float ma_block_max_nan(float v, float* scratch) {
    constexpr int WARPS = BLOCK / MA_WARP;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = ma_group_max_nan<MA_WARP>(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < WARPS ? scratch[lane] : ma_neg_inf();
        t = ma_group_max_nan<MA_WARP>(t);
        if (lane == 0) scratch[0] = t;
    }
    __syncthreads();
    float r = scratch[0];
    __syncthreads();
    return r;
}

// `scratch` needs 64 floats here.
template <int BLOCK>
__device__ __forceinline__ void ma_block_lse(float& m, float& s, float* scratch) {
    constexpr int WARPS = BLOCK / MA_WARP;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    ma_group_lse<MA_WARP>(m, s);
    if (lane == 0) {
        scratch[warp] = m;
        scratch[32 + warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        float tm = lane < WARPS ? scratch[lane] : ma_neg_inf();
        float ts = lane < WARPS ? scratch[32 + lane] : 0.0f;
        ma_group_lse<MA_WARP>(tm, ts);
        if (lane == 0) {
            scratch[0] = tm;
            scratch[32] = ts;
        }
    }
    __syncthreads();
    m = scratch[0];
    s = scratch[32];
    __syncthreads();
}

// Grid-stride loop over [0, n) with 64-bit indices.
#define MA_GRID_STRIDE(i, n)                                                             \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n);        \
         i += (size_t)blockDim.x * gridDim.x)
