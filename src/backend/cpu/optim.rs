//! Fused optimizer updates on the CPU, element by element in PyTorch's order of operations
//! (`torch.optim.SGD` and the single-tensor `torch.optim.Adam`/`AdamW` paths), so that
//! parity with PyTorch holds to the last few ulps.
//!
//! PyTorch holds hyperparameters as Python floats (f64) and rounds each scalar to f32 only
//! where a kernel uses it: `1 - β1` and `1 - β2` are formed in f64 from the decimal β, and the
//! bias corrections and `lr / (1 - β1^t)` stay in f64. Our hyperparameters arrive as f32
//! (`0.999f32` is 0.99900001287…, so `1 - β2` in f32 is 1.3e-5 off PyTorch's), so Adam takes
//! each one as the shortest decimal that rounds to it — the number the user wrote — before
//! doing that f64 arithmetic. SGD uses every hyperparameter only as an f32 kernel scalar,
//! exactly as PyTorch does.
//!
//! Memory traffic per step: SGD reads p, g (and the momentum buffer) and writes p (and the
//! buffer); Adam reads p, g, m, v and writes p, m, v — one pass each.

use crate::backend::{AdamStep, SgdStep};

pub(super) fn sgd(p: &mut [f32], g: &[f32], buf: Option<&mut [f32]>, h: SgdStep) {
    let SgdStep {
        lr,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        first_step,
    } = h;
    match buf {
        Some(buf) if momentum != 0.0 => {
            for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
                let d = if weight_decay != 0.0 {
                    g + weight_decay * *p
                } else {
                    g
                };
                *b = if first_step {
                    d
                } else {
                    momentum * *b + (1.0 - dampening) * d
                };
                let step = if nesterov { d + momentum * *b } else { *b };
                *p -= lr * step;
            }
        }
        _ => {
            for (p, &g) in p.iter_mut().zip(g) {
                let d = if weight_decay != 0.0 {
                    g + weight_decay * *p
                } else {
                    g
                };
                *p -= lr * d;
            }
        }
    }
}

/// The shortest decimal that rounds to `x` (what a user wrote as `0.999`), as an f64.
fn as_written(x: f32) -> f64 {
    // f32's `Display` prints the shortest text that parses back to the same f32.
    x.to_string().parse().unwrap_or(x as f64)
}

pub(super) fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamStep) {
    let t = h.step.max(1) as f64;
    let (beta1, beta2, lr) = (as_written(h.beta1), as_written(h.beta2), as_written(h.lr));
    // Bias corrections in f64, as PyTorch computes them in Python floats (`beta ** step`,
    // `bias_correction2 ** 0.5`).
    let bc1 = 1.0 - beta1.powf(t);
    let bc2_sqrt = (1.0 - beta2.powf(t)).powf(0.5) as f32;
    let step_size = (lr / bc1) as f32;
    let one_minus_b1 = (1.0 - beta1) as f32;
    let one_minus_b2 = (1.0 - beta2) as f32;
    let b2 = h.beta2;
    let decay = (1.0 - lr * as_written(h.weight_decay)) as f32;
    let c = AdamConsts {
        step_size,
        bc2_sqrt,
        one_minus_b1,
        one_minus_b2,
        b2,
        decay,
        eps: h.eps,
        weight_decay: h.weight_decay,
        decoupled: h.decoupled,
    };
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2 support was detected at run time.
        return unsafe { adam_avx2(p, g, m, v, &c) };
    }
    adam_loop(p, g, m, v, &c)
}

struct AdamConsts {
    step_size: f32,
    bc2_sqrt: f32,
    one_minus_b1: f32,
    one_minus_b2: f32,
    b2: f32,
    decay: f32,
    eps: f32,
    weight_decay: f32,
    decoupled: bool,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adam_avx2(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &AdamConsts) {
    adam_loop(p, g, m, v, c)
}

/// The element loop; the same arithmetic with or without AVX2 (no fused multiply-adds).
#[inline(always)]
fn adam_loop(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &AdamConsts) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = if c.decoupled {
            *p *= c.decay;
            g
        } else if c.weight_decay != 0.0 {
            g + c.weight_decay * *p
        } else {
            g
        };
        // lerp(m, g, 1 - b1) as PyTorch evaluates it for weights below 0.5.
        *m += c.one_minus_b1 * (g - *m);
        *v = *v * c.b2 + c.one_minus_b2 * g * g;
        let denom = v.sqrt() / c.bc2_sqrt + c.eps;
        // addcdiv: p + (-step_size · m) / denom
        *p += (-c.step_size * *m) / denom;
    }
}
