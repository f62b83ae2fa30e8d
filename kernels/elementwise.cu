// Elementwise maps over f32 buffers.
//
// Launch (every kernel here): 1-D, blockDim.x = 256, any gridDim.x >= 1; the kernels loop
// grid-stride, so gridDim.x = min(ceil(n / 256), 65535) (or SMs * 8) is enough. No shared
// memory. Memory traffic: unary 8 bytes per element, binary 12, where_cond 16.
//
// Aliasing: out may equal an input (in-place update); inputs are read before the output of the
// same element is written, and no element is touched by two threads.
#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// Unary maps: y[i] = f(x[i]) for i < n.
// Signature of each: (const float* x, float* y, size_t n)
// ---------------------------------------------------------------------------------------------
#define MA_UNARY(name, expr)                                                    \
    extern "C" __global__ void name(const float* x, float* y, size_t n) {      \
        MA_GRID_STRIDE(i, n) {                                                  \
            const float v = x[i];                                               \
            y[i] = (expr);                                                      \
        }                                                                       \
    }

__device__ __forceinline__ float ma_sigmoid(float v) {
    // Two branches so that neither exp can overflow: 1/(1+e^-v) for v >= 0, e^v/(1+e^v) below.
    if (v >= 0.0f) return 1.0f / (1.0f + expf(-v));
    const float e = expf(v);
    return e / (1.0f + e);
}

MA_UNARY(neg_f32, -v)
MA_UNARY(exp_f32, expf(v))
MA_UNARY(log_f32, logf(v))
MA_UNARY(tanh_f32, tanhf(v))
// `v < 0 ? 0 : v` lets NaN through, as PyTorch's relu does (fmaxf would turn it into 0).
MA_UNARY(relu_f32, v < 0.0f ? 0.0f : v)
MA_UNARY(sigmoid_f32, ma_sigmoid(v))
MA_UNARY(sqrt_f32, sqrtf(v))
MA_UNARY(abs_f32, fabsf(v))
MA_UNARY(recip_f32, 1.0f / v)
MA_UNARY(square_f32, v * v)
// Derivative of relu: 1 where v > 0, else 0 (NaN -> 0).
MA_UNARY(step_f32, v > 0.0f ? 1.0f : 0.0f)

// y[i] = fmaf(a, x[i], b): a*x + b with one rounding.
extern "C" __global__ void affine_f32(const float* x, float* y, size_t n, float a, float b) {
    MA_GRID_STRIDE(i, n) { y[i] = fmaf(a, x[i], b); }
}

// y[i] = powf(x[i], p) (CUDA powf: C99 special cases, e.g. powf(-8, 1/3) = NaN, powf(0, -1) = inf).
extern "C" __global__ void powf_f32(const float* x, float* y, size_t n, float p) {
    MA_GRID_STRIDE(i, n) { y[i] = powf(x[i], p); }
}

// y[i] = value.
extern "C" __global__ void fill_f32(float* y, size_t n, float value) {
    MA_GRID_STRIDE(i, n) { y[i] = value; }
}

// ---------------------------------------------------------------------------------------------
// Binary maps. Ops: add a+b, sub a-b, mul a*b, div a/b (IEEE), maximum / minimum (NaN in either
// operand gives NaN; on a tie the rhs is returned, which only matters for +0 vs -0),
// eq (a == b ? 1 : 0), ge (a >= b ? 1 : 0). No contraction: each op is one IEEE operation.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float ma_op_add(float a, float b) { return a + b; }
__device__ __forceinline__ float ma_op_sub(float a, float b) { return a - b; }
__device__ __forceinline__ float ma_op_mul(float a, float b) { return a * b; }
__device__ __forceinline__ float ma_op_div(float a, float b) { return a / b; }
__device__ __forceinline__ float ma_op_maximum(float a, float b) {
    return (ma_is_nan(a) || a > b) ? a : b;  // b NaN: a > b is false, so b (NaN) wins
}
__device__ __forceinline__ float ma_op_minimum(float a, float b) {
    return (ma_is_nan(a) || a < b) ? a : b;
}
__device__ __forceinline__ float ma_op_eq(float a, float b) { return a == b ? 1.0f : 0.0f; }
__device__ __forceinline__ float ma_op_ge(float a, float b) { return a >= b ? 1.0f : 0.0f; }

// Same shape: out[i] = op(a[i], b[i]), i < n.
// Signature: (const float* a, const float* b, float* out, size_t n)
#define MA_BINARY_SAME(op)                                                                   \
    extern "C" __global__ void op##_f32(const float* a, const float* b, float* out, size_t n) { \
        MA_GRID_STRIDE(i, n) { out[i] = ma_op_##op(a[i], b[i]); }                            \
    }

// General broadcast, output rank <= 4 (pad the shape on the left with 1s). The output is
// contiguous with dims (d0, d1, d2, d3) and n = d0*d1*d2*d3 < 2^32 elements; the operand
// element for output coordinate (c0, c1, c2, c3) is
//     a[c0*as0 + c1*as1 + c2*as2 + c3*as3]   (likewise b with bs*)
// where a broadcast dimension has stride 0. Strides are in elements; a view's start offset is
// applied by the caller to the pointer.
// Signature: (const float* a, const float* b, float* out, unsigned int n,
//             unsigned int d1, unsigned int d2, unsigned int d3,
//             unsigned int as0, unsigned int as1, unsigned int as2, unsigned int as3,
//             unsigned int bs0, unsigned int bs1, unsigned int bs2, unsigned int bs3)
// (d0 is implied by n; out-of-place only: out must not alias a or b unless shapes are equal.)
#define MA_BINARY_BCAST(op)                                                                   \
    extern "C" __global__ void op##_bcast_f32(                                                \
        const float* a, const float* b, float* out, unsigned int n, unsigned int d1,          \
        unsigned int d2, unsigned int d3, unsigned int as0, unsigned int as1,                 \
        unsigned int as2, unsigned int as3, unsigned int bs0, unsigned int bs1,               \
        unsigned int bs2, unsigned int bs3) {                                                 \
        for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n;                   \
             i += blockDim.x * gridDim.x) {                                                   \
            unsigned int r = i;                                                               \
            const unsigned int c3 = r % d3;                                                   \
            r /= d3;                                                                          \
            const unsigned int c2 = r % d2;                                                   \
            r /= d2;                                                                          \
            const unsigned int c1 = r % d1;                                                   \
            const unsigned int c0 = r / d1;                                                   \
            const size_t ia = (size_t)c0 * as0 + (size_t)c1 * as1 + (size_t)c2 * as2 +        \
                              (size_t)c3 * as3;                                               \
            const size_t ib = (size_t)c0 * bs0 + (size_t)c1 * bs1 + (size_t)c2 * bs2 +        \
                              (size_t)c3 * bs3;                                               \
            out[i] = ma_op_##op(a[ia], b[ib]);                                                \
        }                                                                                     \
    }

#define MA_BINARY(op) MA_BINARY_SAME(op) MA_BINARY_BCAST(op)

MA_BINARY(add)
MA_BINARY(sub)
MA_BINARY(mul)
MA_BINARY(div)
MA_BINARY(maximum)
MA_BINARY(minimum)
MA_BINARY(eq)
MA_BINARY(ge)

// out[i] = mask[i] != 0 ? a[i] : b[i] (same shape; a NaN mask counts as nonzero).
extern "C" __global__ void where_cond_f32(const float* mask, const float* a, const float* b,
                                          float* out, size_t n) {
    MA_GRID_STRIDE(i, n) { out[i] = mask[i] != 0.0f ? a[i] : b[i]; }
}
