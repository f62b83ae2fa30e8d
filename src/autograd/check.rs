//! Finite-difference gradient checking.
//!
//! For `f: inputs → tensor`, the checker differentiates the scalar `L = Σ r ⊙ f(inputs)` with
//! a fixed random projection `r` (so every output element contributes with its own weight),
//! once by `backward` and once by central differences `(L(x + ε) - L(x - ε)) / 2ε` per input
//! element, with the forward pass in f32 and the difference taken in f64. It reports the
//! worst disagreement, scaled as `|analytic - numeric| / (atol + rtol · |numeric|)`, and the
//! op names that appeared in the graph, so a test can insist that every op was covered.

use super::{no_grad, op_names_in_graph};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Outcome of one gradient check.
#[derive(Debug, Clone)]
pub struct GradCheck {
    /// Largest `|analytic - numeric| / (atol + rtol·|numeric|)`; ≤ 1 passes.
    pub worst_ratio: f64,
    /// Where the worst disagreement was: (input, element, analytic, numeric).
    pub worst_at: (usize, usize, f64, f64),
    /// Op names present in the differentiated graph.
    pub ops: Vec<&'static str>,
}

impl GradCheck {
    pub fn passed(&self) -> bool {
        self.worst_ratio <= 1.0
    }
}

/// Checks the gradients of `f` at `inputs` (host tensors) by central differences.
pub fn check_gradients(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    eps: f32,
    atol: f64,
    rtol: f64,
) -> Result<GradCheck> {
    let vars: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.copy().map(|c| c.variable()))
        .collect::<Result<_>>()?;
    let out = f(&vars)?;
    let mut rng = Rng::new(0x6772_6164);
    let r = Tensor::from_vec(
        rng.uniform_vec(out.elem_count(), 0.5, 1.5),
        out.shape().clone(),
        out.device(),
    )?;
    let loss = out.mul(&r)?.sum_all()?;
    let ops = op_names_in_graph(&loss);
    let grads = loss.backward()?;
    let rv: Vec<f64> = r.to_vec()?.iter().map(|&x| x as f64).collect();
    let eval = |xs: &[Tensor]| -> Result<f64> {
        let y = no_grad(|| f(xs))?.to_vec()?;
        Ok(y.iter().zip(&rv).map(|(&a, &b)| a as f64 * b).sum())
    };
    let mut worst = GradCheck {
        worst_ratio: 0.0,
        worst_at: (0, 0, 0.0, 0.0),
        ops,
    };
    for (i, v) in vars.iter().enumerate() {
        let analytic = match grads.get(v) {
            Some(g) => g.to_vec()?,
            None => vec![0.0; v.elem_count()],
        };
        if analytic.len() != v.elem_count() {
            return Err(Error::Autograd(format!(
                "gradient of input {i} has {} elements, the input {}",
                analytic.len(),
                v.elem_count()
            )));
        }
        let base = v.to_vec()?;
        for e in 0..base.len() {
            let probe = |delta: f32| -> Result<f64> {
                let mut x = base.clone();
                x[e] += delta;
                let mut xs: Vec<Tensor> = vars.to_vec();
                xs[i] = Tensor::from_vec(x, v.shape().clone(), v.device())?;
                eval(&xs)
            };
            let numeric = (probe(eps)? - probe(-eps)?) / (2.0 * eps as f64);
            let a = analytic[e] as f64;
            let ratio = (a - numeric).abs() / (atol + rtol * numeric.abs());
            if ratio > worst.worst_ratio || ratio.is_nan() {
                worst.worst_ratio = if ratio.is_nan() { f64::INFINITY } else { ratio };
                worst.worst_at = (i, e, a, numeric);
            }
        }
    }
    Ok(worst)
}
