// Fused optimizer updates over flat f32 parameter buffers, PyTorch semantics.
//
// Float order: every elementwise step below is one IEEE f32 operation, written with the
// __fadd_rn / __fmul_rn / __fdiv_rn / __fsqrt_rn intrinsics, which the compiler never fuses
// into FMAs. A CPU implementation doing the same operations in the same order in f32 (Rust
// does not contract a*b+c) gets the same bits. The per-step scalars of Adam are computed once
// per thread in f64, as PyTorch computes them on the host in Python floats.
//
// Launch (both kernels): 1-D, blockDim.x = 256, any gridDim.x (grid-stride), e.g.
// min(ceil(n / 256), 65535). Memory traffic per element: SGD 16 bytes (no momentum 12),
// Adam 28 bytes.
#include "common.cuh"

// sgd_step_f32(float* param, const float* grad, float* momentum_buf, size_t n, float lr,
//              float momentum, float dampening, float weight_decay, unsigned int nesterov,
//              unsigned int first_step)
//   Per element (torch.optim.SGD, maximize=False):
//     d = g                                   ; g = grad[i], p = param[i]
//     if weight_decay != 0:  d = d + weight_decay * p          [fl(d + fl(wd * p))]
//     if momentum != 0:
//         buf = first_step ? d                                  (buffer created from d)
//                          : momentum * buf + (1 - dampening) * d
//                            [fl(fl(momentum * buf) + fl(fl(1 - dampening) * d))]
//         d = nesterov ? d + momentum * buf  [fl(d + fl(momentum * buf))]  : buf
//     p = p - lr * d                                            [fl(p - fl(lr * d))]
//   momentum_buf may be nullptr when momentum == 0 (it is then neither read nor written).
//   first_step != 0 on the first step after the buffer was created (PyTorch's buffer-is-None
//   case), where the old buffer content is ignored.
extern "C" __global__ void sgd_step_f32(float* param, const float* grad, float* momentum_buf, size_t n,
                                        float lr, float momentum, float dampening, float weight_decay,
                                        unsigned int nesterov, unsigned int first_step) {
    const float one_minus_damp = __fadd_rn(1.0f, -dampening);
    MA_GRID_STRIDE(i, n) {
        const float p = param[i];
        float d = grad[i];
        if (weight_decay != 0.0f) d = __fadd_rn(d, __fmul_rn(weight_decay, p));
        if (momentum != 0.0f) {
            float buf;
            if (first_step) {
                buf = d;
            } else {
                buf = __fadd_rn(__fmul_rn(momentum, momentum_buf[i]), __fmul_rn(one_minus_damp, d));
            }
            momentum_buf[i] = buf;
            d = nesterov ? __fadd_rn(d, __fmul_rn(momentum, buf)) : buf;
        }
        param[i] = __fadd_rn(p, -__fmul_rn(lr, d));
    }
}

// adam_step_f32(float* param, const float* grad, float* m, float* v, size_t n, float lr,
//               float beta1, float beta2, float eps, float weight_decay, unsigned int step,
//               unsigned int decoupled)
//   step >= 1 is the step count AFTER incrementing (1 on the first update); decoupled = 0 is
//   torch.optim.Adam, 1 is torch.optim.AdamW (amsgrad=False, maximize=False). m, v start at 0.
//   Scalars, in f64 from the f32 arguments, then rounded to f32:
//     bc1 = 1 - beta1^step ; bc2 = 1 - beta2^step                (f64, pow)
//     step_size = f32(lr / bc1) ; bc2_sqrt = f32(sqrt(bc2))
//     decay = f32(1 - lr * weight_decay)                         (AdamW only)
//     c1 = fl(1 - beta1) ; c2 = fl(1 - beta2)                    (f32)
//   Per element, each [ ] one f32 rounding:
//     Adam:  if weight_decay != 0:  g = [g + [weight_decay * p]]
//     AdamW: if weight_decay != 0:  p = [p * decay]
//     m = [[beta1 * m] + [c1 * g]]
//     v = [[beta2 * v] + [[c2 * g] * g]]
//     denom = [[sqrt(v) / bc2_sqrt] + eps]      (sqrt correctly rounded)
//     p = [p - [step_size * [m / denom]]]
//   (PyTorch writes m as lerp(m, g, 1 - beta1); the formula here is the textbook one, equal up
//   to rounding.)
extern "C" __global__ void adam_step_f32(float* param, const float* grad, float* m, float* v, size_t n,
                                         float lr, float beta1, float beta2, float eps, float weight_decay,
                                         unsigned int step, unsigned int decoupled) {
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    const float step_size = (float)((double)lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float decay = (float)(1.0 - (double)lr * (double)weight_decay);
    const float c1 = __fadd_rn(1.0f, -beta1);
    const float c2 = __fadd_rn(1.0f, -beta2);
    const bool wd = weight_decay != 0.0f;
    MA_GRID_STRIDE(i, n) {
        float p = param[i];
        float g = grad[i];
        if (wd) {
            if (decoupled) p = __fmul_rn(p, decay);
            else g = __fadd_rn(g, __fmul_rn(weight_decay, p));
        }
        const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(c1, g));
        const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(c2, g), g));
        m[i] = mi;
        v[i] = vi;
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        param[i] = __fadd_rn(p, -__fmul_rn(step_size, __fdiv_rn(mi, denom)));
    }
}
