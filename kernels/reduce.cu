// Sum and max over one axis of a contiguous f32 tensor viewed as (outer, len, inner):
//     out[o, k] = reduce_{l < len} x[(o * len + l) * inner + k]     -> out has outer*inner values
// and argmax over the rows of a matrix.
//
// Determinism: no atomics. Each output is combined in an order fixed by the launch shape (the
// per-thread strided partials, then an xor-butterfly / shared-memory tree), so with the launch
// configuration documented per kernel the result is bitwise reproducible run to run and across
// GPUs. The order differs from a sequential CPU sum, so CPU/GPU agree to rounding only.
//
// Conventions: sum of an empty axis (len == 0) is 0, max of an empty axis is -inf. max
// propagates NaN (as PyTorch's amax does).
//
// Which kernel:
//   inner == 1, len <= ~2048   *_axis_warp_f32   (one warp per output, coalesced along len)
//   inner == 1, len larger     *_axis_block_f32  (one 256-thread block per output)
//   inner > 1                  *_axis_cols_f32   (32 outputs per block, coalesced over inner;
//                                                 gridDim.z splits a long len in two stages)
//   (*_axis_block_f32 is correct for any inner: with small inner and very long len, e.g.
//    summing an (N, 2) gradient over N, it gives more parallelism than *_axis_cols_f32.)
#include "common.cuh"

struct SumOp {
    static __device__ __forceinline__ float identity() { return 0.0f; }
    static __device__ __forceinline__ float apply(float a, float b) { return a + b; }
    template <int W>
    static __device__ __forceinline__ float group(float v) { return ma_group_sum<W>(v); }
};
struct MaxOp {
    static __device__ __forceinline__ float identity() { return ma_neg_inf(); }
    static __device__ __forceinline__ float apply(float a, float b) { return ma_max_nan(a, b); }
    template <int W>
    static __device__ __forceinline__ float group(float v) { return ma_group_max_nan<W>(v); }
};

// One warp per row (inner == 1): lane l accumulates x[row, l], x[row, l + 32], ... in order,
// then a 5-step butterfly. Rows are distributed grid-stride over all warps of the grid.
template <class Op>
__device__ __forceinline__ void axis_warp(const float* x, float* out, unsigned int rows,
                                          unsigned int len) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int warps_per_block = blockDim.x >> 5;
    const unsigned int warp = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const unsigned int nwarps = gridDim.x * warps_per_block;
    for (unsigned int r = warp; r < rows; r += nwarps) {
        const float* row = x + (size_t)r * len;
        float acc = Op::identity();
        for (unsigned int j = lane; j < len; j += 32) acc = Op::apply(acc, row[j]);
        acc = Op::template group<32>(acc);
        if (lane == 0) out[r] = acc;
    }
}

// One block of exactly 256 threads per output (o, k): thread t accumulates
// l = t, t + 256, ... in order, then the block tree. Outputs grid-stride over blocks.
template <class Op>
__device__ __forceinline__ void axis_block(const float* x, float* out, unsigned int outer,
                                           unsigned int len, unsigned int inner) {
    __shared__ float scratch[32];
    const size_t n_out = (size_t)outer * inner;
    for (size_t q = blockIdx.x; q < n_out; q += gridDim.x) {
        const size_t o = q / inner, k = q % inner;
        const float* base = x + o * len * inner + k;
        float acc = Op::identity();
        for (unsigned int l = threadIdx.x; l < len; l += 256) acc = Op::apply(acc, base[(size_t)l * inner]);
        // Block tree: warp butterflies, then warp 0 combines the 8 warp results.
        acc = Op::template group<32>(acc);
        if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = acc;
        __syncthreads();
        if (threadIdx.x < 32) {
            float t = threadIdx.x < 8 ? scratch[threadIdx.x] : Op::identity();
            t = Op::template group<8>(t);
            if (threadIdx.x == 0) out[q] = t;
        }
        __syncthreads();
    }
}

// Block (32, 8): threadIdx.x picks one of 32 consecutive k (coalesced loads), threadIdx.y one
// of 8 interleaved slices of len (l = y, y + 8, ...); the 8 partials are combined by a fixed
// 3-level shared-memory tree. blockIdx.x tiles inner, blockIdx.y grid-strides over outer, and
// blockIdx.z picks a contiguous chunk of len (chunk = ceil(len / gridDim.z)) whose result goes
// to its own slab out[z][o][k]: with gridDim.z = Z > 1 this is the first of two stages.
template <class Op>
__device__ __forceinline__ void axis_cols(const float* x, float* out, unsigned int outer,
                                          unsigned int len, unsigned int inner) {
    __shared__ float part[8][33];
    const unsigned int tx = threadIdx.x, ty = threadIdx.y;
    const unsigned int k = blockIdx.x * 32 + tx;
    const unsigned int chunk = (len + gridDim.z - 1) / gridDim.z;
    const unsigned int l_begin = (unsigned int)min((size_t)len, (size_t)blockIdx.z * chunk);
    const unsigned int l_end = (len - l_begin < chunk) ? len : l_begin + chunk;
    float* slab = out + (size_t)blockIdx.z * outer * inner;
    for (unsigned int o = blockIdx.y; o < outer; o += gridDim.y) {
        float acc = Op::identity();
        if (k < inner) {
            const float* base = x + (size_t)o * len * inner + k;
            for (unsigned int l = l_begin + ty; l < l_end; l += 8) acc = Op::apply(acc, base[(size_t)l * inner]);
        }
        part[ty][tx] = acc;
        __syncthreads();
        if (ty < 4) part[ty][tx] = Op::apply(part[ty][tx], part[ty + 4][tx]);
        __syncthreads();
        if (ty < 2) part[ty][tx] = Op::apply(part[ty][tx], part[ty + 2][tx]);
        __syncthreads();
        if (ty == 0 && k < inner) slab[(size_t)o * inner + k] = Op::apply(part[0][tx], part[1][tx]);
        __syncthreads();
    }
}

// sum_axis_warp_f32 / max_axis_warp_f32(const float* x, float* out, unsigned int rows,
//                                       unsigned int len)
//   inner == 1: out[r] = reduce_j x[r * len + j]. Launch: blockDim.x = 256 (8 warps; any
//   multiple of 32 gives the same bits), gridDim.x = min(ceil(rows / 8), 65535).
extern "C" __global__ void sum_axis_warp_f32(const float* x, float* out, unsigned int rows, unsigned int len) {
    axis_warp<SumOp>(x, out, rows, len);
}
extern "C" __global__ void max_axis_warp_f32(const float* x, float* out, unsigned int rows, unsigned int len) {
    axis_warp<MaxOp>(x, out, rows, len);
}

// sum_axis_block_f32 / max_axis_block_f32(const float* x, float* out, unsigned int outer,
//                                         unsigned int len, unsigned int inner)
//   Launch: blockDim.x = 256 exactly (the tree assumes it), gridDim.x = min(outer*inner, 65535).
extern "C" __global__ void __launch_bounds__(256) sum_axis_block_f32(const float* x, float* out, unsigned int outer,
                                                                     unsigned int len, unsigned int inner) {
    axis_block<SumOp>(x, out, outer, len, inner);
}
extern "C" __global__ void __launch_bounds__(256) max_axis_block_f32(const float* x, float* out, unsigned int outer,
                                                                     unsigned int len, unsigned int inner) {
    axis_block<MaxOp>(x, out, outer, len, inner);
}

// sum_axis_cols_f32 / max_axis_cols_f32(const float* x, float* out, unsigned int outer,
//                                       unsigned int len, unsigned int inner)
//   Launch: blockDim = (32, 8, 1) exactly, gridDim = (ceil(inner / 32), min(outer, 65535), Z).
//   Z = 1: out is (outer, inner), done. Z > 1 (long len, few outputs, e.g. a bias gradient):
//   out must hold Z * outer * inner partials (slab z = chunk z of len); reduce them with a
//   second launch over the view (outer' = 1, len' = Z, inner' = outer * inner), Z' = 1.
//   Choose Z from the shape alone (e.g. Z = clamp(len / 1024, 1, 256)), never from the device,
//   so that the bits do not depend on the GPU.
extern "C" __global__ void __launch_bounds__(256) sum_axis_cols_f32(const float* x, float* out, unsigned int outer,
                                                                    unsigned int len, unsigned int inner) {
    axis_cols<SumOp>(x, out, outer, len, inner);
}
extern "C" __global__ void __launch_bounds__(256) max_axis_cols_f32(const float* x, float* out, unsigned int outer,
                                                                    unsigned int len, unsigned int inner) {
    axis_cols<MaxOp>(x, out, outer, len, inner);
}

// argmax_rows_f32(const float* x, unsigned int rows, unsigned int cols, unsigned int* out)
//   out[r] = argmax_j x[r * cols + j]; ties -> lowest j; NaN counts as the largest value (the
//   first NaN wins). cols == 0 writes 0xffffffff. One warp per row.
//   Launch: blockDim.x = 256, gridDim.x = min(ceil(rows / 8), 65535).
extern "C" __global__ void argmax_rows_f32(const float* x, unsigned int rows, unsigned int cols,
                                           unsigned int* out) {
    const unsigned int lane = threadIdx.x & 31;
    const unsigned int warps_per_block = blockDim.x >> 5;
    const unsigned int warp = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const unsigned int nwarps = gridDim.x * warps_per_block;
    for (unsigned int r = warp; r < rows; r += nwarps) {
        const float* row = x + (size_t)r * cols;
        float best = ma_neg_inf();
        unsigned int bi = 0xffffffffu;
        for (unsigned int j = lane; j < cols; j += 32) {
            const float v = row[j];
            if (ma_argmax_better(v, j, best, bi)) {
                best = v;
                bi = j;
            }
        }
        ma_group_argmax<32>(best, bi);
        if (lane == 0) out[r] = bi;
    }
}
