// XRM label-flip step: each example's dynamic label jumps to the held-out prediction with a
// probability that grows with the held-out confidence.
//
// xrm_flip_f32(const float* logits, const float* u, unsigned int* y_dyn, unsigned int rows,
//              unsigned int k)
//   For each row i (logits row-major rows x k, u[i] uniform in [0, 1) drawn by the host so CPU
//   and GPU flip identically):
//     yhat = argmax_j logits[i, j]     (ties -> lowest j; NaN counts as largest, first wins)
//     mx   = logits[i, yhat]
//     S    = sum_{j = 0..k-1} exp(logits[i, j] - mx)   (sequential in j, f32)
//     p    = 1 / S                                      (= max softmax probability)
//     q    = (p - 1/k) * (k / (k - 1))                  ([[p - [1/k]] * [k / (k-1)]], f32)
//     if u[i] < q: y_dyn[i] = yhat                      (else y_dyn[i] unchanged)
//   q is 0 at a uniform prediction and 1 at a one-hot one. k < 2 leaves y_dyn untouched. A NaN
//   row gives q = NaN and no flip.
//   One thread per row, scanning the row in order: the result depends only on the row, so it
//   matches a CPU loop doing the same steps (up to expf's last-bit differences, which can
//   change a flip only when u[i] lies within a few ulps of q).
//   Launch: 1-D, blockDim.x = 256, any gridDim.x (grid-stride), e.g. ceil(rows / 256).
#include "common.cuh"

extern "C" __global__ void xrm_flip_f32(const float* logits, const float* u, unsigned int* y_dyn,
                                        unsigned int rows, unsigned int k) {
    if (k < 2) return;
    const float inv_k = 1.0f / (float)k;
    const float stretch = (float)k / (float)(k - 1);
    MA_GRID_STRIDE(i, rows) {
        const float* row = logits + i * k;
        float mx = row[0];
        unsigned int yhat = 0;
        for (unsigned int j = 1; j < k; ++j) {
            const float v = row[j];
            if (ma_argmax_better(v, j, mx, yhat)) {
                mx = v;
                yhat = j;
            }
        }
        float S = 0.0f;
        for (unsigned int j = 0; j < k; ++j) S += expf(row[j] - mx);
        const float p = 1.0f / S;
        const float q = __fmul_rn(__fadd_rn(p, -inv_k), stretch);
        if (u[i] < q) y_dyn[i] = yhat;
    }
}

// xrm_flip_targets_f32(const float* logits, const double* u, unsigned int* target,
//                      unsigned int rows, unsigned int k)
//   The flip step exactly as the CPU path of src/algo/xrm.rs computes it, in f64 (so that the
//   same uniforms flip the same rows): for each row i (logits row-major rows x k, u[i] the
//   host's `uniform_f64` draw for that row, 8-byte aligned),
//     yhat  = first j with logits[i, j] > logits[i, best so far]   (ties -> lowest j; a NaN
//             never wins unless it is logits[i, 0], which then makes the row NaN)
//     total = sum_{j = 0..k-1} exp((double)logits[i, j] - (double)logits[i, yhat])  (in order)
//     p     = 1 / total
//     q     = ((p - 1/k) * k) / (k - 1)
//     target[i] = u[i] < q ? yhat : 0xffffffff                     (0xffffffff: no flip)
//   Every operation is one IEEE f64 operation (no contraction into FMA); exp is CUDA's
//   double exp (at most 1 ulp from the correctly rounded value, like glibc's), so a flip can
//   differ from the CPU's only if u[i] lies within a few f64 ulps of q. k < 2: no row flips.
//   The caller applies the targets to its dynamic labels (y_dyn[row_index[i]] = target[i]).
//   Launch: 1-D, blockDim.x = 256, any gridDim.x (grid-stride), e.g. min(ceil(rows / 256), 65535).
extern "C" __global__ void __launch_bounds__(256) xrm_flip_targets_f32(const float* logits, const double* u,
                                                                       unsigned int* target, unsigned int rows,
                                                                       unsigned int k) {
    const double kd = (double)k;
    const double inv_k = __ddiv_rn(1.0, kd);
    const double k_minus_1 = __dsub_rn(kd, 1.0);
    MA_GRID_STRIDE(i, rows) {
        unsigned int out = 0xffffffffu;
        if (k >= 2) {
            const float* row = logits + i * k;
            unsigned int best = 0;
            float best_v = row[0];
            for (unsigned int j = 1; j < k; ++j) {
                const float v = row[j];
                if (v > best_v) {
                    best_v = v;
                    best = j;
                }
            }
            const double mx = (double)best_v;
            double total = 0.0;
            for (unsigned int j = 0; j < k; ++j) total = __dadd_rn(total, exp(__dsub_rn((double)row[j], mx)));
            const double p = __ddiv_rn(1.0, total);
            const double q = __ddiv_rn(__dmul_rn(__dsub_rn(p, inv_k), kd), k_minus_1);
            if (u[i] < q) out = best;
        }
        target[i] = out;
    }
}
