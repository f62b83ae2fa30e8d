//! Fused optimizer updates on the CPU, element by element in PyTorch's order of operations
//! (`torch.optim.SGD` and the single-tensor `torch.optim.Adam`/`AdamW` paths), so that
//! parity with PyTorch holds to the last few ulps.
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
                let d = if weight_decay != 0.0 { g + weight_decay * *p } else { g };
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
                let d = if weight_decay != 0.0 { g + weight_decay * *p } else { g };
                *p -= lr * d;
            }
        }
    }
}

pub(super) fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamStep) {
    let t = h.step.max(1) as i32;
    // Bias corrections in f64, as PyTorch computes them in Python floats.
    let bc1 = 1.0 - (h.beta1 as f64).powi(t);
    let bc2_sqrt = (1.0 - (h.beta2 as f64).powi(t)).sqrt();
    let step_size = (h.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2_sqrt as f32;
    let (b1, b2) = (h.beta1, h.beta2);
    let decay = 1.0 - h.lr * h.weight_decay;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = if h.decoupled {
            *p *= decay;
            g
        } else if h.weight_decay != 0.0 {
            g + h.weight_decay * *p
        } else {
            g
        };
        // lerp(m, g, 1 - b1) as PyTorch evaluates it for weights below 0.5.
        *m += (1.0 - b1) * (g - *m);
        *v = *v * b2 + (1.0 - b2) * g * g;
        let denom = v.sqrt() / bc2_sqrt + h.eps;
        // addcdiv: p + (-step_size · m) / denom
        *p += (-step_size * *m) / denom;
    }
}
