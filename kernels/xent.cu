// Fused shifted softmax-cross-entropy, forward and backward in one pass.
//
// Inputs: logits z (rows x cols, row-major), optional shift s (same shape, nullptr = no shift,
// gets no gradient), labels y (rows, u32), optional per-row weights w (rows, nullptr = all 1),
// grad_scale (the upstream gradient of each row's loss, e.g. 1/N for the mean, 1/sum(w) for
// the weighted mean, 1 for the sum), write_grad (0: loss only; nonzero: also write dz).
//
// Per row i, all in f32, with t_ij = z_ij + s_ij (one rounding; t = z when s is absent):
//     m_i   = max_j t_ij
//     S_i   = sum_j exp(t_ij - m_i)             (lse_i = m_i + log S_i)
//     loss[i] = w_i * ((m_i - t_iy) + log(S_i))  = w_i * (lse_i - z_iy - s_iy)
//               -- NOT multiplied by grad_scale; reduce it with sum_f32 (scale = grad_scale)
//     dz[i,j] = (grad_scale * w_i) * (exp(t_ij - m_i) / S_i - [j == y_i])
// Writing m - t_y before adding log S keeps the loss exact to rounding for logits of +-1e4.
// A shift of -inf (log 0) is legal: that class gets probability 0 and gradient 0 (or -coef
// when it is the label: then the loss is +inf). A NaN in a row's t makes loss and dz NaN.
//
// Bad labels: y_i >= cols -> loss[i] = NaN, the dz row (if written) is NaN, and
// atomicMax(bad_label, i + 1) (bad_label may be nullptr). The flag ends as (largest bad row)
// + 1; the caller zeroes it before the launch and reads it afterwards.
//
// Aliasing: dz may equal z (the gradient overwrites the logits in place): every element is
// read before it is written, by the same thread. loss must not alias anything.
//
// Memory traffic with write_grad: reads z (and s) once, writes dz once and loss:
// (2 or 3) * rows * cols * 4 bytes + rows * 12, against 5-6 passes for the unfused chain.
//
// Which kernel (all take the same arguments, listed at xent_small_c_f32):
//   cols <= 32           xent_small_c_f32    (32 / next_pow2(cols) rows per warp)
//   32 < cols <= 1024    xent_warp_row_f32   (one warp per row, row in registers)
//   cols > 1024          xent_block_row_f32  (one 256-thread block per row)
// xent_small_c_f32 and xent_warp_row_f32 write nothing for a cols outside their range, so
// dispatch on the host; xent_block_row_f32 is correct for any cols (slow for small ones).
#include "common.cuh"

// Per-row constants and the loss write shared by the three variants.
__device__ __forceinline__ float xent_row_loss(float w, float m, float ty, float S, bool bad) {
    return bad ? ma_nan() : w * ((m - ty) + logf(S));
}
__device__ __forceinline__ float xent_grad(float coef, float e, float S, bool is_label, bool bad) {
    return bad ? ma_nan() : coef * (e / S - (is_label ? 1.0f : 0.0f));
}

// Rows of cols <= W = 2^LOG2W <= 32 columns: a group of W lanes per row, one column per lane,
// 32 / W rows per warp. (Batching 2 or 4 such row sets per loop trip, or multiplying by 1/S
// instead of dividing, measured no faster on an H200: the low register count, hence high
// occupancy, is what keeps the loads in flight.)
template <int LOG2W>
__device__ __forceinline__ void xent_small_rows(const float* z, const float* s, const unsigned int* y,
                                                const float* w, float* loss, float* dz, unsigned int rows,
                                                unsigned int cols, float grad_scale, unsigned int write_grad,
                                                unsigned int* bad_label) {
    constexpr int W = 1 << LOG2W;
    constexpr int RPW = 32 / W;
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int g = lane / W, j = lane % W;
    const unsigned int warps_per_block = blockDim.x >> 5;
    const unsigned int warp = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const unsigned int nwarps = gridDim.x * warps_per_block;
    unsigned int worst = 0;  // largest bad row + 1 seen by this thread; one atomic at the end
    // base < rows is warp-uniform, so every lane reaches every shuffle.
    for (unsigned int base = warp * RPW; base < rows; base += nwarps * RPW) {
        const unsigned int r = base + g;
        const bool row_ok = r < rows;
        const bool ok = row_ok && j < cols;
        const size_t idx = (size_t)r * cols + j;
        float t = ma_neg_inf();
        if (ok) t = s ? z[idx] + s[idx] : z[idx];
        const unsigned int label = row_ok ? y[r] : 0u;
        const bool bad = label >= cols;
        const float m = ma_group_fmax<W>(t);
        const float e = ok ? expf(t - m) : 0.0f;
        const float S = ma_group_sum<W>(e);
        // Source lane is relative to the group (width W): the lane holding column `label`.
        const float ty = __shfl_sync(MA_FULL_MASK, t, bad ? 0u : label, W);
        if (row_ok) {
            const float wi = w ? w[r] : 1.0f;
            if (j == 0) loss[r] = xent_row_loss(wi, m, ty, S, bad);
            if (bad) worst = r + 1;
            if (write_grad && j < cols) dz[idx] = xent_grad(grad_scale * wi, e, S, j == label, bad);
        }
    }
    if (worst && bad_label) atomicMax(bad_label, worst);
}

// xent_small_c_f32(const float* z, const float* s, const unsigned int* y, const float* w,
//                  float* loss, float* dz, unsigned int rows, unsigned int cols,
//                  float grad_scale, unsigned int write_grad, unsigned int* bad_label)
//   1 <= cols <= 32. s, w, bad_label may be nullptr; dz may be nullptr when write_grad == 0.
//   Launch: blockDim.x = 256 (8 warps), gridDim.x = min(ceil(rows / rows_per_block), 65535)
//   with rows_per_block = 8 * (32 / next_pow2(cols)) (any grid is correct: rows are
//   grid-strided).
extern "C" __global__ void __launch_bounds__(256) xent_small_c_f32(const float* z, const float* s, const unsigned int* y,
                                                                   const float* w, float* loss, float* dz,
                                                                   unsigned int rows, unsigned int cols,
                                                                   float grad_scale, unsigned int write_grad,
                                                                   unsigned int* bad_label) {
    const int log2w = cols <= 1 ? 0 : 32 - __clz(cols - 1);
    switch (log2w) {
        case 0: xent_small_rows<0>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        case 1: xent_small_rows<1>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        case 2: xent_small_rows<2>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        case 3: xent_small_rows<3>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        case 4: xent_small_rows<4>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        case 5: xent_small_rows<5>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        default: break;
    }
}

// One warp per row of cols <= 32 * E columns; lane l holds columns l, l + 32, ... (coalesced).
template <int E>
__device__ __forceinline__ void xent_warp_rows(const float* z, const float* s, const unsigned int* y,
                                               const float* w, float* loss, float* dz, unsigned int rows,
                                               unsigned int cols, float grad_scale, unsigned int write_grad,
                                               unsigned int* bad_label) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int warps_per_block = blockDim.x >> 5;
    const unsigned int warp = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const unsigned int nwarps = gridDim.x * warps_per_block;
    // Largest bad row + 1 seen by this warp; one atomic after the loop.
    unsigned int worst = 0;
    for (unsigned int r = warp; r < rows; r += nwarps) {
        const size_t off = (size_t)r * cols;
        const unsigned int label = y[r];
        const bool bad = label >= cols;
        float t[E];
        float m = ma_neg_inf();
        float t_label = 0.0f;  // this lane's copy of t[label], if it holds that column
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const unsigned int j = lane + 32u * e;
            t[e] = ma_neg_inf();
            if (j < cols) t[e] = s ? z[off + j] + s[off + j] : z[off + j];
            m = fmaxf(m, t[e]);
            if (j == label) t_label = t[e];
        }
        m = ma_group_fmax<32>(m);
        float S = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const unsigned int j = lane + 32u * e;
            t[e] = j < cols ? expf(t[e] - m) : 0.0f;  // t now holds exp(t - m)
            S += t[e];
        }
        S = ma_group_sum<32>(S);
        const float ty = __shfl_sync(MA_FULL_MASK, t_label, bad ? 0u : (label & 31u));
        const float wi = w ? w[r] : 1.0f;
        if (lane == 0) loss[r] = xent_row_loss(wi, m, ty, S, bad);
        if (bad) worst = r + 1;
        if (write_grad) {
            const float coef = grad_scale * wi;
#pragma unroll
            for (int e = 0; e < E; ++e) {
                const unsigned int j = lane + 32u * e;
                if (j < cols) dz[off + j] = xent_grad(coef, t[e], S, j == label, bad);
            }
        }
    }
    if (lane == 0 && worst && bad_label) atomicMax(bad_label, worst);
}

// xent_warp_row_f32: same arguments as xent_small_c_f32; 32 < cols <= 1024.
//   Launch: blockDim.x = 256 (8 warps = 8 rows at a time), gridDim.x = min(ceil(rows / 8), 65535).
// __launch_bounds__(256, 4) caps it at 64 registers: 1.6x faster on an H200 than the 118
// registers ptxas picks unconstrained for sm_90 (more rows in flight per SM), and no spills.
extern "C" __global__ void __launch_bounds__(256, 4) xent_warp_row_f32(const float* z, const float* s, const unsigned int* y,
                                                                       const float* w, float* loss, float* dz,
                                                                       unsigned int rows, unsigned int cols,
                                                                       float grad_scale, unsigned int write_grad,
                                                                       unsigned int* bad_label) {
    if (cols <= 32) return;  // the caller must use xent_small_c_f32
    if (cols <= 64) xent_warp_rows<2>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label);
    else if (cols <= 128) xent_warp_rows<4>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label);
    else if (cols <= 256) xent_warp_rows<8>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label);
    else if (cols <= 512) xent_warp_rows<16>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label);
    else if (cols <= 1024) xent_warp_rows<32>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label);
}

// xent_block_row_f32: same arguments as xent_small_c_f32; any cols >= 1 (meant for
//   cols > 1024). One block per row: pass 1 folds t into per-thread online (max, sum) pairs
//   merged by a fixed tree; pass 2 re-reads z and s (mostly from L2) and writes dz. (Keeping t
//   in shared memory instead measured 3x slower at cols = 32768 on an H200: 128 KiB of shared
//   memory per block leaves one block per SM.)
//   Launch: blockDim.x = 256 exactly, gridDim.x = min(rows, 65535).
extern "C" __global__ void __launch_bounds__(256) xent_block_row_f32(const float* z, const float* s, const unsigned int* y,
                                                                     const float* w, float* loss, float* dz,
                                                                     unsigned int rows, unsigned int cols,
                                                                     float grad_scale, unsigned int write_grad,
                                                                     unsigned int* bad_label) {
    __shared__ float scratch[64];
    unsigned int worst = 0;
    for (unsigned int r = blockIdx.x; r < rows; r += gridDim.x) {
        const size_t off = (size_t)r * cols;
        const unsigned int label = y[r];
        const bool bad = label >= cols;
        float m = ma_neg_inf(), S = 0.0f;
        for (unsigned int j = threadIdx.x; j < cols; j += 256) ma_lse_push(m, S, s ? z[off + j] + s[off + j] : z[off + j]);
        ma_block_lse<256>(m, S, scratch);
        const float wi = w ? w[r] : 1.0f;
        if (threadIdx.x == 0) {
            const float ty = bad ? 0.0f : (s ? z[off + label] + s[off + label] : z[off + label]);
            loss[r] = xent_row_loss(wi, m, ty, S, bad);
            if (bad) worst = r + 1;
        }
        if (write_grad) {
            const float coef = grad_scale * wi;
            // Each thread revisits its own columns, read before written (dz may alias z).
            for (unsigned int j = threadIdx.x; j < cols; j += 256) {
                const float t = s ? z[off + j] + s[off + j] : z[off + j];
                dz[off + j] = xent_grad(coef, expf(t - m), S, j == label, bad);
            }
        }
    }
    if (threadIdx.x == 0 && worst && bad_label) atomicMax(bad_label, worst);
}

// sum_f32(const float* x, unsigned int n, float* out, float scale)
//   out[0] = scale * sum_{i < n} x[i], by one block: thread t adds x[t], x[t + 1024], ... in
//   order, then a fixed tree. Launch: gridDim.x = 1, blockDim.x = 1024 exactly.
//   For large n use two stages: sum_partials_f32 with a FIXED grid of G blocks (use G = 512
//   on every GPU, so results match across devices), then sum_f32(partials, G, out, scale).
//   E.g. the mean loss: sum_f32(loss, rows, out, grad_scale).
extern "C" __global__ void __launch_bounds__(1024) sum_f32(const float* x, unsigned int n, float* out, float scale) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (unsigned int i = threadIdx.x; i < n; i += 1024) acc += x[i];
    acc = ma_block_sum<1024>(acc, scratch);
    if (threadIdx.x == 0) out[0] = scale * acc;
}

// sum_partials_f32(const float* x, size_t n, float* partials)
//   partials[b] = sum of x[i] for i = b*256 + t + k*gridDim.x*256 (t < 256, k >= 0): thread t of
//   block b adds its elements in order, then the block tree. Launch: blockDim.x = 256 exactly,
//   gridDim.x = G (fixed, see sum_f32); partials has G floats.
extern "C" __global__ void __launch_bounds__(256) sum_partials_f32(const float* x, size_t n, float* partials) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    MA_GRID_STRIDE(i, n) { acc += x[i]; }
    acc = ma_block_sum<256>(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}
