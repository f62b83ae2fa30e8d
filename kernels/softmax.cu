// Row softmax and log-softmax of a row-major (rows x cols) f32 matrix:
//     m_r = max_j x[r, j],  s_r = sum_j exp(x[r, j] - m_r)
//     softmax:      y[r, j] = exp(x[r, j] - m_r) / s_r
//     log_softmax:  y[r, j] = (x[r, j] - m_r) - log(s_r)
// A NaN anywhere in a row makes the whole output row NaN; a row of all -inf gives NaN (0/0),
// as in PyTorch. y may alias x (in place): each element is read before it is written.
// Memory traffic: small_c and warp_row kernels read x once and write y once (8 bytes per
// element); block_row kernels read x twice (the second pass mostly hits L2).
//
// Which kernel: cols <= 32 -> *_small_c_f32; 32 < cols <= 1024 -> *_warp_row_f32; otherwise
// *_block_row_f32 (correct for any cols, but slow for small ones).
#include "common.cuh"

// Small rows, cols <= W = 2^LOG2W <= 32: a group of W lanes per row, one column per lane,
// 32 / W rows per warp (PyTorch's "persistent softmax" layout), and SOFTMAX_BATCH such row sets
// per loop trip, all loaded before the first shuffle so that each warp has several independent
// rows in flight.
constexpr int SOFTMAX_BATCH = 4;

template <int LOG2W, bool LOG>
__device__ __forceinline__ void softmax_small_rows(const float* x, float* y, unsigned int rows,
                                                   unsigned int cols) {
    constexpr int W = 1 << LOG2W;
    constexpr int RPW = 32 / W;
    constexpr int B = SOFTMAX_BATCH;
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int g = lane / W, j = lane % W;
    const unsigned int warps_per_block = blockDim.x >> 5;
    const unsigned int warp = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const unsigned int nwarps = gridDim.x * warps_per_block;
    // The loop bound is warp-uniform so every lane reaches the shuffles.
    for (unsigned int base = warp * (RPW * B); base < rows; base += nwarps * (RPW * B)) {
        float v[B];
#pragma unroll
        for (int b = 0; b < B; ++b) {
            const unsigned int r = base + b * RPW + g;
            v[b] = (r < rows && j < cols) ? x[(size_t)r * cols + j] : ma_neg_inf();
        }
#pragma unroll
        for (int b = 0; b < B; ++b) {
            const unsigned int r = base + b * RPW + g;
            const bool ok = r < rows && j < cols;
            const float m = ma_group_fmax<W>(v[b]);
            const float e = ok ? expf(v[b] - m) : 0.0f;
            const float s = ma_group_sum<W>(e);
            if (ok) y[(size_t)r * cols + j] = LOG ? (v[b] - m) - logf(s) : e / s;
        }
    }
}

template <bool LOG>
__device__ __forceinline__ void softmax_small_dispatch(const float* x, float* y, unsigned int rows,
                                                       unsigned int cols) {
    const int log2w = cols <= 1 ? 0 : 32 - __clz(cols - 1);
    switch (log2w) {
        case 0: softmax_small_rows<0, LOG>(x, y, rows, cols); break;
        case 1: softmax_small_rows<1, LOG>(x, y, rows, cols); break;
        case 2: softmax_small_rows<2, LOG>(x, y, rows, cols); break;
        case 3: softmax_small_rows<3, LOG>(x, y, rows, cols); break;
        case 4: softmax_small_rows<4, LOG>(x, y, rows, cols); break;
        case 5: softmax_small_rows<5, LOG>(x, y, rows, cols); break;
        default: break;  // cols > 32: the caller must use another kernel
    }
}

// softmax_small_c_f32 / log_softmax_small_c_f32(const float* x, float* y, unsigned int rows,
//                                               unsigned int cols)
//   1 <= cols <= 32 (larger cols: nothing is written). Launch: blockDim.x = 256 (8 warps),
//   gridDim.x = min(ceil(rows / rows_per_block), 65535) with rows_per_block =
//   8 * 4 * (32 / next_pow2(cols)) (any grid is correct: rows are grid-strided).
extern "C" __global__ void __launch_bounds__(256) softmax_small_c_f32(const float* x, float* y, unsigned int rows,
                                                                      unsigned int cols) {
    softmax_small_dispatch<false>(x, y, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) log_softmax_small_c_f32(const float* x, float* y, unsigned int rows,
                                                                          unsigned int cols) {
    softmax_small_dispatch<true>(x, y, rows, cols);
}

// One warp per row of 32 < cols <= 32 * E: lane l holds columns l, l + 32, ... (coalesced).
template <int E, bool LOG>
__device__ __forceinline__ void softmax_warp_rows(const float* x, float* y, unsigned int rows,
                                                  unsigned int cols) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int warps_per_block = blockDim.x >> 5;
    const unsigned int warp = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const unsigned int nwarps = gridDim.x * warps_per_block;
    for (unsigned int r = warp; r < rows; r += nwarps) {
        const size_t off = (size_t)r * cols;
        float v[E];
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const unsigned int j = lane + 32u * e;
            v[e] = j < cols ? x[off + j] : ma_neg_inf();
        }
        float m = v[0];
#pragma unroll
        for (int e = 1; e < E; ++e) m = fmaxf(m, v[e]);
        m = ma_group_fmax<32>(m);
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const unsigned int j = lane + 32u * e;
            const float ex = j < cols ? expf(v[e] - m) : 0.0f;
            if (!LOG) v[e] = ex;
            s += ex;
        }
        s = ma_group_sum<32>(s);
        const float log_s = LOG ? logf(s) : 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const unsigned int j = lane + 32u * e;
            if (j < cols) y[off + j] = LOG ? (v[e] - m) - log_s : v[e] / s;
        }
    }
}

template <bool LOG>
__device__ __forceinline__ void softmax_warp_dispatch(const float* x, float* y, unsigned int rows,
                                                      unsigned int cols) {
    if (cols <= 32) return;  // the caller must use the small-c kernel
    if (cols <= 64) softmax_warp_rows<2, LOG>(x, y, rows, cols);
    else if (cols <= 128) softmax_warp_rows<4, LOG>(x, y, rows, cols);
    else if (cols <= 256) softmax_warp_rows<8, LOG>(x, y, rows, cols);
    else if (cols <= 512) softmax_warp_rows<16, LOG>(x, y, rows, cols);
    else if (cols <= 1024) softmax_warp_rows<32, LOG>(x, y, rows, cols);
}

// softmax_warp_row_f32 / log_softmax_warp_row_f32(const float* x, float* y, unsigned int rows,
//                                                 unsigned int cols)
//   32 < cols <= 1024 (other cols: nothing is written). One warp per row. Launch:
//   blockDim.x = 256 (8 warps), gridDim.x = min(ceil(rows / 8), 65535).
extern "C" __global__ void __launch_bounds__(256) softmax_warp_row_f32(const float* x, float* y, unsigned int rows,
                                                                       unsigned int cols) {
    softmax_warp_dispatch<false>(x, y, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) log_softmax_warp_row_f32(const float* x, float* y,
                                                                           unsigned int rows, unsigned int cols) {
    softmax_warp_dispatch<true>(x, y, rows, cols);
}

// One 256-thread block per row: each thread folds its strided columns into an online
// (max, sum) pair, the block merges the pairs by a fixed tree, then a second pass writes y.
template <bool LOG>
__device__ __forceinline__ void softmax_block_rows(const float* x, float* y, unsigned int rows,
                                                   unsigned int cols) {
    __shared__ float scratch[64];
    for (unsigned int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + (size_t)r * cols;
        float m = ma_neg_inf(), s = 0.0f;
        for (unsigned int j = threadIdx.x; j < cols; j += 256) ma_lse_push(m, s, xr[j]);
        ma_block_lse<256>(m, s, scratch);
        float* yr = y + (size_t)r * cols;
        if (LOG) {
            const float log_s = logf(s);
            for (unsigned int j = threadIdx.x; j < cols; j += 256) yr[j] = (xr[j] - m) - log_s;
        } else {
            for (unsigned int j = threadIdx.x; j < cols; j += 256) yr[j] = expf(xr[j] - m) / s;
        }
    }
}

// softmax_block_row_f32 / log_softmax_block_row_f32(const float* x, float* y,
//                                                   unsigned int rows, unsigned int cols)
//   Any cols. Launch: blockDim.x = 256 exactly, gridDim.x = min(rows, 65535).
extern "C" __global__ void __launch_bounds__(256) softmax_block_row_f32(const float* x, float* y, unsigned int rows,
                                                                    unsigned int cols) {
    softmax_block_rows<false>(x, y, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) log_softmax_block_row_f32(const float* x, float* y, unsigned int rows,
                                                                        unsigned int cols) {
    softmax_block_rows<true>(x, y, rows, cols);
}
