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
