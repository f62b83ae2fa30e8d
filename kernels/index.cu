// Gathers, scatters and copies of f32 rows and columns (row-major matrices, u32 indices).
//
// Bad indices: kernels that take indices also take the number of valid rows/columns and an
// optional `unsigned int* bad` flag (nullptr to skip). An index out of range is never
// dereferenced: the affected output gets NaN (gathers) or nothing (scatters), and
// atomicMax(bad, position + 1) records the LAST offending position (+1, so 0 means "all good").
// The caller zeroes the flag before the launch and reads it after.
//
// Launch for the flat kernels (index_select_rows, index_add_rows, gather_cols, scatter_cols,
// copy2d): 1-D, blockDim.x = 256, any gridDim.x (grid-stride), e.g. min(ceil(total/256), 65535).
#include "common.cuh"

// index_select_rows_f32(const float* src, const unsigned int* idx, float* out,
//                       unsigned int n_idx, unsigned int cols, unsigned int src_rows,
//                       unsigned int* bad)
//   out[r, c] = src[idx[r], c] for r < n_idx, c < cols (src is src_rows x cols).
//   idx[r] >= src_rows: out row r = NaN, atomicMax(bad, r + 1).
extern "C" __global__ void index_select_rows_f32(const float* src, const unsigned int* idx, float* out,
                                                 unsigned int n_idx, unsigned int cols,
                                                 unsigned int src_rows, unsigned int* bad) {
    const size_t total = (size_t)n_idx * cols;
    MA_GRID_STRIDE(i, total) {
        const size_t r = i / cols, c = i % cols;
        const unsigned int s = idx[r];
        if (s < src_rows) {
            out[i] = src[(size_t)s * cols + c];
        } else {
            out[i] = ma_nan();
            if (c == 0 && bad) atomicMax(bad, (unsigned int)r + 1);
        }
    }
}

// index_add_rows_f32(const float* grad_out, const unsigned int* idx, float* dst,
//                    unsigned int n_idx, unsigned int cols, unsigned int dst_rows,
//                    unsigned int* bad)
//   dst[idx[r], c] += grad_out[r, c] (the backward of index_select_rows), with atomicAdd.
//   Deterministic when idx has no repeated entry (each dst element then receives at most one
//   add); with repeats the order of the float adds, hence the rounding, may vary run to run.
//   idx[r] >= dst_rows: row skipped, atomicMax(bad, r + 1).
extern "C" __global__ void index_add_rows_f32(const float* grad_out, const unsigned int* idx, float* dst,
                                              unsigned int n_idx, unsigned int cols,
                                              unsigned int dst_rows, unsigned int* bad) {
    const size_t total = (size_t)n_idx * cols;
    MA_GRID_STRIDE(i, total) {
        const size_t r = i / cols, c = i % cols;
        const unsigned int d = idx[r];
        if (d < dst_rows) {
            atomicAdd(dst + (size_t)d * cols + c, grad_out[i]);
        } else if (c == 0 && bad) {
            atomicMax(bad, (unsigned int)r + 1);
        }
    }
}

// gather_cols_f32(const float* x, const unsigned int* labels, float* out, unsigned int rows,
//                 unsigned int cols, unsigned int* bad)
//   out[i] = x[i * cols + labels[i]]; labels[i] >= cols: out[i] = NaN, atomicMax(bad, i + 1).
extern "C" __global__ void gather_cols_f32(const float* x, const unsigned int* labels, float* out,
                                           unsigned int rows, unsigned int cols, unsigned int* bad) {
    MA_GRID_STRIDE(i, rows) {
        const unsigned int l = labels[i];
        if (l < cols) {
            out[i] = x[i * cols + l];
        } else {
            out[i] = ma_nan();
            if (bad) atomicMax(bad, (unsigned int)i + 1);
        }
    }
}

// scatter_cols_f32(const float* g, const unsigned int* labels, float* out, unsigned int rows,
//                  unsigned int cols, unsigned int* bad)
//   out[i, j] = (j == labels[i]) ? g[i] : 0 for every i < rows, j < cols (the whole output is
//   written, no zero fill needed). labels[i] >= cols: row i all zero, atomicMax(bad, i + 1).
extern "C" __global__ void scatter_cols_f32(const float* g, const unsigned int* labels, float* out,
                                            unsigned int rows, unsigned int cols, unsigned int* bad) {
    const size_t total = (size_t)rows * cols;
    MA_GRID_STRIDE(i, total) {
        const size_t r = i / cols, c = i % cols;
        const unsigned int l = labels[r];
        out[i] = (c == l) ? g[r] : 0.0f;
        if (c == 0 && l >= cols && bad) atomicMax(bad, (unsigned int)r + 1);
    }
}

// copy2d_f32(const float* src, float* dst, unsigned int rows, unsigned int cols,
//            unsigned int src_stride, unsigned int dst_stride, size_t src_off, size_t dst_off)
//   dst[dst_off + r * dst_stride + c] = src[src_off + r * src_stride + c], r < rows, c < cols.
//   narrow along dim 1 = copy with src_off = start column; concat along dim 1 = one copy per
//   part with dst_off = its first column. Strides and offsets in elements. src and dst must
//   not overlap.
extern "C" __global__ void copy2d_f32(const float* src, float* dst, unsigned int rows, unsigned int cols,
                                      unsigned int src_stride, unsigned int dst_stride, size_t src_off,
                                      size_t dst_off) {
    const size_t total = (size_t)rows * cols;
    MA_GRID_STRIDE(i, total) {
        const size_t r = i / cols, c = i % cols;
        dst[dst_off + r * dst_stride + c] = src[src_off + r * src_stride + c];
    }
}

// transpose2d_f32(const float* src, float* dst, unsigned int rows, unsigned int cols)
//   dst[c * rows + r] = src[r * cols + c] (src rows x cols -> dst cols x rows).
//   32x32 tiles through shared memory padded to 33 columns, so both the column read and the
//   row write hit 32 distinct banks; global loads and stores are coalesced.
//   Launch: blockDim = (32, 8, 1) exactly; gridDim = (min(ceil(cols/32), 65535),
//   min(ceil(rows/32), 65535), 1); tiles beyond the grid are covered grid-stride.
extern "C" __global__ void __launch_bounds__(256) transpose2d_f32(const float* src, float* dst,
                                                                  unsigned int rows, unsigned int cols) {
    __shared__ float tile[32][33];
    const unsigned int tx = threadIdx.x, ty = threadIdx.y;
    for (unsigned int by = blockIdx.y * 32; by < rows; by += gridDim.y * 32) {
        for (unsigned int bx = blockIdx.x * 32; bx < cols; bx += gridDim.x * 32) {
            // Load src tile rows by..by+31, cols bx..bx+31 (row-contiguous: coalesced).
#pragma unroll
            for (unsigned int k = 0; k < 32; k += 8) {
                const unsigned int r = by + ty + k, c = bx + tx;
                if (r < rows && c < cols) tile[ty + k][tx] = src[(size_t)r * cols + c];
            }
            __syncthreads();
            // Write dst rows bx..bx+31 (src columns), cols by..by+31 (src rows).
#pragma unroll
            for (unsigned int k = 0; k < 32; k += 8) {
                const unsigned int c = bx + ty + k, r = by + tx;
                if (r < rows && c < cols) dst[(size_t)c * rows + r] = tile[tx][ty + k];
            }
            __syncthreads();
        }
    }
}
