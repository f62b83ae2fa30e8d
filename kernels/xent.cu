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
// when it is the label: then the loss is +inf). A NaN in a row's t makes loss and dz NaN, and
// so does a row whose t is -inf everywhere (as on the CPU).
//
// Bad labels: y_i >= cols -> loss[i] = NaN, the dz row (if written) is NaN, and
// atomicMax(bad_label, i + 1) (bad_label may be nullptr). The flag ends as (largest bad row)
// + 1; the caller zeroes it before the launch and reads it afterwards.
//
// Aliasing: dz may equal z (the gradient overwrites the logits in place): every element is
// read before it is written, by the same thread. loss must not alias anything.
//
// Memory traffic with write_grad: the single-pass variants read z (and s) once, write dz once
// and touch y, w, loss once per row: (2 or 3) * rows * cols * 4 bytes + rows * 12, against 5-6
// passes for the unfused chain. Only the fallback xent_block_row_f32 reads each row twice.
//
// Which kernel runs which shape, and why: the selection table in src/backend/cuda/xent.rs (the
// one place it is written). All take the same arguments, listed at xent_small_c_f32; the
// vectorized ones also need cols % 4 == 0 and z, s, dz 16-byte aligned. Every variant except
// xent_block_row_f32 writes nothing for a cols (or, for the block kernels, a blockDim.x /
// dynamic shared memory size) outside the range stated above it, so dispatch on the host;
// xent_block_row_f32 is correct for any cols.
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
        float m = ma_neg_inf(), S = 0.0f, t_label = 0.0f;
        for (unsigned int j = threadIdx.x; j < cols; j += 256) {
            const float t = s ? z[off + j] + s[off + j] : z[off + j];
            if (j == label) t_label = t;
            ma_lse_push(m, S, t);
        }
        ma_block_lse<256>(m, S, scratch);
        const float wi = w ? w[r] : 1.0f;
        // The thread that read the label's column writes the loss: with dz = z, another
        // thread's pass 2 may already have overwritten z there.
        if (bad ? threadIdx.x == 0 : threadIdx.x == label % 256) loss[r] = xent_row_loss(wi, m, t_label, S, bad);
        if (bad && threadIdx.x == 0) worst = r + 1;
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

// ------------------------------------------------------------------------------------------
// Single-pass variants: each thread loads its part of the row once, as float4 chunks (4
// consecutive columns when vectorized), into registers (the block variants: half of its
// chunks, or three quarters for rows over 16384 columns, into shared memory), keeps
// exp(t - max) in place, and writes dz from there.
//
// Gradient: a = coef / S once per row (coef = grad_scale * w_i), then dz = e * a, and
// fmaf(e, a, -coef) in the label's column: the CPU backend's `e * (coef / S)`, then minus
// coef at the label (here fused into one rounding).

__device__ __forceinline__ float4 ma_f4(float v) { return make_float4(v, v, v, v); }
__device__ __forceinline__ float4 ma_f4_add(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
__device__ __forceinline__ float ma_f4_get(const float4& v, unsigned int c) {
    return c == 0 ? v.x : (c == 1 ? v.y : (c == 2 ? v.z : v.w));
}
// exp(v - m) per component, and its sum added to S in component order.
__device__ __forceinline__ float4 xent_exp4(float4 v, float m, float& S) {
    v.x = expf(v.x - m);
    v.y = expf(v.y - m);
    v.z = expf(v.z - m);
    v.w = expf(v.w - m);
    S += v.x;
    S += v.y;
    S += v.z;
    S += v.w;
    return v;
}
// Gradient of a chunk of exp values e; `label_c` is the label's component in it (4: none).
__device__ __forceinline__ float4 xent_grad4(float4 e, float a, float coef, unsigned int label_c, bool bad) {
    if (bad) return ma_f4(ma_nan());
    float4 g;
    g.x = label_c == 0 ? fmaf(e.x, a, -coef) : e.x * a;
    g.y = label_c == 1 ? fmaf(e.y, a, -coef) : e.y * a;
    g.z = label_c == 2 ? fmaf(e.z, a, -coef) : e.z * a;
    g.w = label_c == 3 ? fmaf(e.w, a, -coef) : e.w * a;
    return g;
}

// Rows of cols = 4 * quads columns (cols % 4 == 0, rows 16-byte aligned) by groups of
// G = 2^LOG2G lanes, 32 / G rows per warp; lane q of a group holds the float4 chunks
// q, q + G, ..., q + (V-1) G of its row (coalesced: consecutive lanes, consecutive 16 bytes).
// Each trip of a warp takes R such row sets (R * 32 / G consecutive rows) and issues all their
// loads before any reduction.
// m: fmaxf over the lane's values, then a butterfly over the group; S: the lane's exp values
// summed in chunk and component order, then a butterfly.
template <int LOG2G, int V, int R>
__device__ __forceinline__ void xent_vec_rows(const float* z, const float* s, const unsigned int* y,
                                              const float* w, float* loss, float* dz, unsigned int rows,
                                              unsigned int cols, float grad_scale, unsigned int write_grad,
                                              unsigned int* bad_label) {
    constexpr int G = 1 << LOG2G;
    constexpr int RPW = 32 / G;
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int g = lane >> LOG2G, q = lane & (G - 1);
    const unsigned int warps_per_block = blockDim.x >> 5;
    const unsigned int warp = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const unsigned int nwarps = gridDim.x * warps_per_block;
    const unsigned int quads = cols >> 2;
    unsigned int worst = 0;  // largest bad row + 1 seen by this lane; one atomic at the end
    // base < rows is warp-uniform, so every lane reaches every shuffle.
    for (unsigned int base = warp * RPW * R; base < rows; base += nwarps * RPW * R) {
        float4 t[R][V];
        float m[R], t_label[R];
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const unsigned int r = base + i * RPW + g;
            const bool row_ok = r < rows;
            const size_t off = (size_t)r * cols;
            const unsigned int label = row_ok ? y[r] : 0u;
            m[i] = ma_neg_inf();
            t_label[i] = 0.0f;
#pragma unroll
            for (int e = 0; e < V; ++e) {
                const unsigned int k = q + G * e;
                t[i][e] = ma_f4(ma_neg_inf());
                if (row_ok && k < quads) {
                    t[i][e] = reinterpret_cast<const float4*>(z + off)[k];
                    if (s) t[i][e] = ma_f4_add(t[i][e], reinterpret_cast<const float4*>(s + off)[k]);
                }
                m[i] = fmaxf(m[i], fmaxf(fmaxf(t[i][e].x, t[i][e].y), fmaxf(t[i][e].z, t[i][e].w)));
                if (k == (label >> 2)) t_label[i] = ma_f4_get(t[i][e], label & 3u);
            }
        }
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const unsigned int r = base + i * RPW + g;
            const bool row_ok = r < rows;
            const size_t off = (size_t)r * cols;
            const unsigned int label = row_ok ? y[r] : 0u;
            const bool bad = label >= cols;
            const unsigned int label_q = label >> 2, label_c = label & 3u;
            const float mi = ma_group_fmax<G>(m[i]);
            float S = 0.0f;
#pragma unroll
            for (int e = 0; e < V; ++e) {
                if (row_ok && q + G * e < quads) {
                    t[i][e] = xent_exp4(t[i][e], mi, S);  // t now holds exp(t - m)
                } else {
                    t[i][e] = ma_f4(0.0f);
                }
            }
            S = ma_group_sum<G>(S);
            // Source lane relative to the group (width G): the lane holding chunk label_q.
            const float ty = __shfl_sync(MA_FULL_MASK, t_label[i], bad ? 0u : (label_q & (G - 1)), G);
            if (row_ok) {
                const float wi = w ? w[r] : 1.0f;
                if (q == 0) loss[r] = xent_row_loss(wi, mi, ty, S, bad);
                if (bad) worst = r + 1;
                if (write_grad) {
                    const float coef = grad_scale * wi;
                    const float a = coef / S;
#pragma unroll
                    for (int e = 0; e < V; ++e) {
                        const unsigned int k = q + G * e;
                        if (k < quads)
                            reinterpret_cast<float4*>(dz + off)[k] =
                                xent_grad4(t[i][e], a, coef, k == label_q ? label_c : 4u, bad);
                    }
                }
            }
        }
    }
    if (worst && bad_label) atomicMax(bad_label, worst);
}

// Row sets per warp trip of xent_group_vec_f32: one. (Two need about 45 registers: at the
// 40 or 48 that allow 6 or 5 blocks per SM they spill or barely add bytes in flight.)
#define XENT_GROUP_ROW_SETS 1

// xent_group_vec_f32: same arguments as xent_small_c_f32; cols % 4 == 0, 4 <= cols <= 128,
//   z, s, dz 16-byte aligned. G = next_pow2(cols / 4) lanes per row, one float4 per lane,
//   32 / G rows per warp and trip.
//   Launch: blockDim.x = 256 (8 warps), gridDim.x = min(ceil(rows / (8 * (32 / G))), 65535)
//   (any grid is correct: rows are grid-strided). __launch_bounds__(256, 8): at most 32
//   registers, so a full SM (2048 threads) keeps 64 KiB of z and s loads in flight (the
//   scalar xent_small_c_f32 keeps 16 KiB).
extern "C" __global__ void __launch_bounds__(256, 8) xent_group_vec_f32(const float* z, const float* s, const unsigned int* y,
                                                                        const float* w, float* loss, float* dz,
                                                                        unsigned int rows, unsigned int cols,
                                                                        float grad_scale, unsigned int write_grad,
                                                                        unsigned int* bad_label) {
    if (cols == 0 || (cols & 3u) || cols > 128) return;
    const unsigned int quads = cols >> 2;
    const int log2g = quads <= 1 ? 0 : 32 - __clz(quads - 1);
    switch (log2g) {
        case 0: xent_vec_rows<0, 1, XENT_GROUP_ROW_SETS>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        case 1: xent_vec_rows<1, 1, XENT_GROUP_ROW_SETS>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        case 2: xent_vec_rows<2, 1, XENT_GROUP_ROW_SETS>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        case 3: xent_vec_rows<3, 1, XENT_GROUP_ROW_SETS>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        case 4: xent_vec_rows<4, 1, XENT_GROUP_ROW_SETS>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        case 5: xent_vec_rows<5, 1, XENT_GROUP_ROW_SETS>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label); break;
        default: break;
    }
}

// xent_warp_vec_f32: same arguments; cols % 4 == 0, 128 < cols <= 512, z, s, dz 16-byte
//   aligned. One warp per row, V = 2 (cols <= 256) or 4 float4 per lane.
//   Launch: blockDim.x = 256, gridDim.x = min(ceil(rows / 8), 65535). At most 64 registers.
extern "C" __global__ void __launch_bounds__(256, 4) xent_warp_vec_f32(const float* z, const float* s, const unsigned int* y,
                                                                       const float* w, float* loss, float* dz,
                                                                       unsigned int rows, unsigned int cols,
                                                                       float grad_scale, unsigned int write_grad,
                                                                       unsigned int* bad_label) {
    if ((cols & 3u) || cols <= 128 || cols > 512) return;
    if (cols <= 256) xent_vec_rows<5, 2, 1>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label);
    else xent_vec_rows<5, 4, 1>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label);
}

// xent_warp_vec8_f32: the same for 512 < cols <= 1024 (8 float4 per lane: 32 values in
//   registers; its own entry so that ptxas fits it in 64 registers without spilling).
extern "C" __global__ void __launch_bounds__(256, 4) xent_warp_vec8_f32(const float* z, const float* s, const unsigned int* y,
                                                                        const float* w, float* loss, float* dz,
                                                                        unsigned int rows, unsigned int cols,
                                                                        float grad_scale, unsigned int write_grad,
                                                                        unsigned int* bad_label) {
    if ((cols & 3u) || cols <= 512 || cols > 1024) return;
    xent_vec_rows<5, 8, 1>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label);
}

// One row per block of BLOCK threads. Chunk k (0 <= k < VR + VS) of thread tid holds the 4
// columns col(tid, k, c), c = 0..3: vectorized, 4 (tid + BLOCK k) + c (one float4); scalar,
// tid + BLOCK (4 k + c) (four coalesced loads). Columns past the row read as -inf.
template <int BLOCK, bool VEC>
__device__ __forceinline__ unsigned int xent_chunk_col(unsigned int tid, unsigned int k, unsigned int c) {
    return VEC ? 4u * (tid + BLOCK * k) + c : tid + BLOCK * (4u * k + c);
}

template <int BLOCK, bool VEC>
__device__ __forceinline__ float4 xent_load_chunk(const float* z, const float* s, size_t off, unsigned int cols,
                                                  unsigned int tid, unsigned int k) {
    float4 v = ma_f4(ma_neg_inf());
    if (VEC) {
        const unsigned int i = tid + BLOCK * k;
        if (i < (cols >> 2)) {
            v = reinterpret_cast<const float4*>(z + off)[i];
            if (s) v = ma_f4_add(v, reinterpret_cast<const float4*>(s + off)[i]);
        }
    } else {
        const unsigned int j = tid + BLOCK * 4u * k;
        if (j < cols) v.x = s ? z[off + j] + s[off + j] : z[off + j];
        if (j + BLOCK < cols) v.y = s ? z[off + j + BLOCK] + s[off + j + BLOCK] : z[off + j + BLOCK];
        if (j + 2 * BLOCK < cols) v.z = s ? z[off + j + 2 * BLOCK] + s[off + j + 2 * BLOCK] : z[off + j + 2 * BLOCK];
        if (j + 3 * BLOCK < cols) v.w = s ? z[off + j + 3 * BLOCK] + s[off + j + 3 * BLOCK] : z[off + j + 3 * BLOCK];
    }
    return v;
}

template <int BLOCK, bool VEC>
__device__ __forceinline__ void xent_store_chunk(float* dz, size_t off, unsigned int cols, unsigned int tid,
                                                 unsigned int k, float4 g) {
    if (VEC) {
        const unsigned int i = tid + BLOCK * k;
        if (i < (cols >> 2)) reinterpret_cast<float4*>(dz + off)[i] = g;
    } else {
        const unsigned int j = tid + BLOCK * 4u * k;
        if (j < cols) dz[off + j] = g.x;
        if (j + BLOCK < cols) dz[off + j + BLOCK] = g.y;
        if (j + 2 * BLOCK < cols) dz[off + j + 2 * BLOCK] = g.z;
        if (j + 3 * BLOCK < cols) dz[off + j + 3 * BLOCK] = g.w;
    }
}

__device__ __forceinline__ float ma_f4_max_nan(float4 v) {
    return ma_max_nan(ma_max_nan(v.x, v.y), ma_max_nan(v.z, v.w));
}

// Each thread first reduces its own values: mt = NaN-propagating max, e = exp(t - mt), St = sum
// of e (chunks 0, 1, ..., VR + VS - 1, each in component order). One block merge of the
// (mt, St) pairs (xent_block_lse) gives the row's (m, S) with S = sum_t St exp(mt - m);
// the gradient uses exp(t - m) = e * f, f = exp(mt - m). A thread whose values are all -inf
// has e = 0 and f = 0. So every warp computes its exps as soon as its own loads arrive, and the
// block meets at one barrier pair per row.
// Chunks 0..VR-1 live in registers, chunks VR..VR+VS-1 in `stash` (dynamic shared memory,
// VS * BLOCK float4: chunk VR + k of thread tid at stash[k * BLOCK + tid], touched only by that
// thread). Holding all chunks in registers would need 32 more registers while z and s are in
// flight than the 64 that two 512-thread blocks per SM allow (ptxas spills).
// ma_block_lse's merge tree (each warp's butterfly, then a butterfly over the warps' partials
// padded with (-inf, 0) to 32 lanes), but every warp runs the second level itself: no
// divergent shuffles, no broadcast, one barrier. `scratch` holds 2 x 64 floats used by
// alternate rows (`parity`), so a warp that runs ahead into the next row cannot overwrite
// partials another warp is still reading.
template <int BLOCK>
__device__ __forceinline__ void xent_block_lse(float& m, float& s, float* scratch, unsigned int parity) {
    constexpr int WARPS = BLOCK / MA_WARP;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* part = scratch + 64 * parity;
    ma_group_lse<MA_WARP>(m, s);
    if (lane == 0) {
        part[warp] = m;
        part[32 + warp] = s;
    }
    __syncthreads();
    m = lane < WARPS ? part[lane] : ma_neg_inf();
    s = lane < WARPS ? part[32 + lane] : 0.0f;
    ma_group_lse<MA_WARP>(m, s);
}

// The component (0..3) of chunk k of thread tid that holds column `label`, or 4 if none.
template <int BLOCK, bool VEC>
__device__ __forceinline__ unsigned int xent_label_c(unsigned int label, unsigned int tid, unsigned int k) {
    if (VEC) return (label >> 2) == tid + BLOCK * k ? (label & 3u) : 4u;
    const unsigned int d = label - tid;  // wraps for label < tid: then no match
    return (d % BLOCK == 0 && d / BLOCK - 4u * k < 4u) ? d / BLOCK - 4u * k : 4u;
}
// The thread holding column `label`.
template <int BLOCK, bool VEC>
__device__ __forceinline__ unsigned int xent_label_tid(unsigned int label) {
    return VEC ? (label >> 2) % BLOCK : label % BLOCK;
}

template <int BLOCK, int VR, int VS, bool VEC>
__device__ __forceinline__ void xent_block_rows(const float* z, const float* s, const unsigned int* y,
                                                const float* w, float* loss, float* dz, unsigned int rows,
                                                unsigned int cols, float grad_scale, unsigned int write_grad,
                                                unsigned int* bad_label, float* scratch, float4* stash) {
    const unsigned int tid = threadIdx.x;
    unsigned int worst = 0, parity = 0;
    for (unsigned int r = blockIdx.x; r < rows; r += gridDim.x, parity ^= 1u) {
        const size_t off = (size_t)r * cols;
        const unsigned int label = y[r];
        const bool bad = label >= cols;
        // Chunk k of this thread holds the label's column in component xent_label_c(...) < 4.
        float mt = ma_neg_inf(), t_label = 0.0f;
        // The shared-memory chunks first, while no register chunk is live: their loads, four
        // chunks at a time, have registers to spare.
#pragma unroll 4
        for (int k = 0; k < VS; ++k) {
            const float4 v = xent_load_chunk<BLOCK, VEC>(z, s, off, cols, tid, VR + k);
            stash[k * BLOCK + tid] = v;
            mt = ma_max_nan(mt, ma_f4_max_nan(v));
            const unsigned int c = xent_label_c<BLOCK, VEC>(label, tid, VR + k);
            if (c < 4) t_label = ma_f4_get(v, c);
        }
        float4 t[VR];
#pragma unroll
        for (int k = 0; k < VR; ++k) {
            t[k] = xent_load_chunk<BLOCK, VEC>(z, s, off, cols, tid, k);
            mt = ma_max_nan(mt, ma_f4_max_nan(t[k]));
            const unsigned int c = xent_label_c<BLOCK, VEC>(label, tid, k);
            if (c < 4) t_label = ma_f4_get(t[k], c);
        }
        // All -inf: exp(-inf - 0) = 0 instead of exp(-inf - -inf) = NaN.
        const float base = mt == ma_neg_inf() ? 0.0f : mt;
        float St = 0.0f;
#pragma unroll
        for (int k = 0; k < VR; ++k) t[k] = xent_exp4(t[k], base, St);
#pragma unroll 1
        for (int k = 0; k < VS; ++k) stash[k * BLOCK + tid] = xent_exp4(stash[k * BLOCK + tid], base, St);
        float m = mt, S = St;
        xent_block_lse<BLOCK>(m, S, scratch, parity);
        const float wi = w ? w[r] : 1.0f;
        if (bad ? tid == 0 : xent_label_tid<BLOCK, VEC>(label) == tid) loss[r] = xent_row_loss(wi, m, t_label, S, bad);
        if (bad) worst = r + 1;
        if (write_grad) {
            const float coef = grad_scale * wi;
            // An all -inf row has m = -inf and S = 0: f = 0, coef / S = inf, a = NaN, as on the CPU.
            const float f = mt == ma_neg_inf() ? 0.0f : expf(mt - m);
            const float a = f * (coef / S);
#pragma unroll
            for (int k = 0; k < VR; ++k)
                xent_store_chunk<BLOCK, VEC>(dz, off, cols, tid, k,
                                             xent_grad4(t[k], a, coef, xent_label_c<BLOCK, VEC>(label, tid, k), bad));
#pragma unroll 1
            for (int k = 0; k < VS; ++k)
                xent_store_chunk<BLOCK, VEC>(dz, off, cols, tid, VR + k,
                                             xent_grad4(stash[k * BLOCK + tid], a, coef,
                                                        xent_label_c<BLOCK, VEC>(label, tid, VR + k), bad));
        }
    }
    if (tid == 0 && worst && bad_label) atomicMax(bad_label, worst);
}

// Chunks per thread: 4 in registers, 4 in shared memory (32 values: cols <= 32 * BLOCK); at
// BLOCK = 512 also 4 + 12 (64 values: cols <= 32768).
#define XENT_BLOCK_VR 4
#define XENT_BLOCK_VS 4
#define XENT_BLOCK_VS_LONG 12

__device__ __forceinline__ unsigned int ma_dynamic_smem_bytes() {
    unsigned int n;
    asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(n));
    return n;
}

template <int BLOCK, int VS, bool VEC>
__device__ __forceinline__ void xent_block_launch(const float* z, const float* s, const unsigned int* y,
                                                  const float* w, float* loss, float* dz, unsigned int rows,
                                                  unsigned int cols, float grad_scale, unsigned int write_grad,
                                                  unsigned int* bad_label, float* scratch, float4* stash) {
    // Too small a stash: write nothing (the host sizes it; see the launch contract).
    if (ma_dynamic_smem_bytes() < (unsigned int)(BLOCK * VS * sizeof(float4))) return;
    xent_block_rows<BLOCK, XENT_BLOCK_VR, VS, VEC>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad,
                                                   bad_label, scratch, stash);
}

// blockDim.x picks the instantiation (BLOCK threads hold up to 32 * BLOCK columns, or 32768
// at BLOCK = 512 with the long stash).
template <bool VEC>
__device__ __forceinline__ void xent_block_dispatch(const float* z, const float* s, const unsigned int* y,
                                                    const float* w, float* loss, float* dz, unsigned int rows,
                                                    unsigned int cols, float grad_scale, unsigned int write_grad,
                                                    unsigned int* bad_label) {
    __shared__ float scratch[128];
    extern __shared__ float4 xent_stash[];
    constexpr unsigned int PER_THREAD = 4 * (XENT_BLOCK_VR + XENT_BLOCK_VS);
    constexpr unsigned int PER_THREAD_LONG = 4 * (XENT_BLOCK_VR + XENT_BLOCK_VS_LONG);
    switch (blockDim.x) {
        case 64:
            if (cols <= 64 * PER_THREAD)
                xent_block_launch<64, XENT_BLOCK_VS, VEC>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad,
                                                          bad_label, scratch, xent_stash);
            break;
        case 128:
            if (cols <= 128 * PER_THREAD)
                xent_block_launch<128, XENT_BLOCK_VS, VEC>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad,
                                                           bad_label, scratch, xent_stash);
            break;
        case 256:
            if (cols <= 256 * PER_THREAD)
                xent_block_launch<256, XENT_BLOCK_VS, VEC>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad,
                                                           bad_label, scratch, xent_stash);
            break;
        case 512:
            if (cols <= 512 * PER_THREAD)
                xent_block_launch<512, XENT_BLOCK_VS, VEC>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad,
                                                           bad_label, scratch, xent_stash);
            else if (cols <= 512 * PER_THREAD_LONG)
                xent_block_launch<512, XENT_BLOCK_VS_LONG, VEC>(z, s, y, w, loss, dz, rows, cols, grad_scale,
                                                                write_grad, bad_label, scratch, xent_stash);
            break;
        default: break;
    }
}

// xent_block_vec_f32: same arguments; cols % 4 == 0 (else nothing), z, s, dz 16-byte aligned,
//   cols <= 32768. One block per row, grid-strided.
//   Launch: blockDim.x exactly BLOCK = clamp(next_pow2(ceil(cols / 32)), 64, 512),
//   gridDim.x = min(rows, 65535), dynamic shared memory BLOCK * 64 bytes when cols <= 32 * BLOCK,
//   else (BLOCK = 512, 16384 < cols <= 32768) 98304 bytes, which needs the function attribute
//   CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES >= 98304. With a blockDim.x, cols or
//   dynamic shared memory size outside this contract it writes nothing.
//   __launch_bounds__(512, 2): at most 64 registers, so two 512-thread blocks share an SM (on
//   an H100/H200 even with the 96 KiB stash) and one row's loads overlap the other's arithmetic.
extern "C" __global__ void __launch_bounds__(512, 2) xent_block_vec_f32(const float* z, const float* s, const unsigned int* y,
                                                                        const float* w, float* loss, float* dz,
                                                                        unsigned int rows, unsigned int cols,
                                                                        float grad_scale, unsigned int write_grad,
                                                                        unsigned int* bad_label) {
    if (cols & 3u) return;
    xent_block_dispatch<true>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label);
}

// xent_block_scalar_f32: the same launch contract for any cols <= 32768 and any alignment
// (scalar loads and stores: chunk k of thread tid holds columns tid + BLOCK (4k + c)).
extern "C" __global__ void __launch_bounds__(512, 2) xent_block_scalar_f32(const float* z, const float* s, const unsigned int* y,
                                                                           const float* w, float* loss, float* dz,
                                                                           unsigned int rows, unsigned int cols,
                                                                           float grad_scale, unsigned int write_grad,
                                                                           unsigned int* bad_label) {
    xent_block_dispatch<false>(z, s, y, w, loss, dz, rows, cols, grad_scale, write_grad, bad_label);
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
