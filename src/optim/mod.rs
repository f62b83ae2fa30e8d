//! Optimizers with PyTorch's semantics, as fused in-place updates on each parameter's
//! buffer (one kernel per parameter per step; state buffers live on the parameter's
//! device and are allocated once).
//!
//! - [`Sgd`]: `d = g + wd·p`; with momentum `b = μ·b + (1-τ)·d` (`b = d` on the first
//!   step), `d = nesterov ? d + μ·b : b`; `p -= lr·d`.
//! - [`Adam`]: `g += wd·p` (L2 style; AdamW instead scales `p *= 1 - lr·wd`);
//!   `m = β1·m + (1-β1)·g`, `v = β2·v + (1-β2)·g²`;
//!   `p -= (lr / (1-β1^t)) · m / (√v / √(1-β2^t) + ε)` — ε outside the square root.
//!
//! A parameter without a gradient: [`Optimizer::step`] leaves it alone (PyTorch's `.grad` is
//! `None`); [`Optimizer::step_all`] steps it with a zero gradient, as PyTorch does for a
//! parameter that was in the forward pass but not in the loss (its `.grad` is zeros) — an XRM
//! twin with no row in the batch. Either way the update is the fused one above.

use crate::autograd::GradStore;
use crate::backend::{AdamStep, SgdStep, Storage};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Applies one update from a gradient store.
pub trait Optimizer {
    /// Updates every parameter that has a gradient in `grads` (others are left alone, as
    /// PyTorch skips parameters whose `.grad` is `None`).
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// Updates every parameter, with a zero gradient where `grads` has none: what PyTorch
    /// does for a parameter that took part in the forward pass but not in the loss (its
    /// `.grad` is a zero tensor, not `None`), e.g. an XRM twin with no held-in row in the
    /// batch. Weight decay, momentum and Adam's moments and step count still move.
    fn step_all(&mut self, grads: &GradStore) -> Result<()>;
    fn learning_rate(&self) -> f32;
    fn set_learning_rate(&mut self, lr: f32);
    /// Everything the next steps depend on besides the parameters and hyperparameters
    /// (momentum buffers, moments, step counts), copied to the host.
    fn state(&self) -> Result<OptimizerState>;
    /// Puts back a [`Optimizer::state`] of an optimizer of the same kind over parameters of
    /// the same sizes; nothing changes unless it fits.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()>;
}

/// An optimizer's state on the host: per parameter (in order), its buffers (none before
/// its first update) and its step count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptimizerState {
    /// `sgd` or `adam`.
    pub kind: String,
    /// Per parameter: SGD's momentum buffer, or Adam's `m` and `v`; empty when unset.
    pub buffers: Vec<Vec<Vec<f32>>>,
    /// Per parameter: Adam's step count (0 for SGD).
    pub steps: Vec<u32>,
}

fn check_state(
    state: &OptimizerState,
    kind: &str,
    params: &[Tensor],
    per_param: usize,
) -> Result<()> {
    let bad = |why: String| Err(Error::Data(format!("optimizer state: {why}")));
    if state.kind != kind {
        return bad(format!("a `{}` state for a `{kind}` optimizer", state.kind));
    }
    if state.buffers.len() != params.len() || state.steps.len() != params.len() {
        return bad(format!(
            "{} parameters recorded, {} to restore",
            state.buffers.len(),
            params.len()
        ));
    }
    for (i, (b, p)) in state.buffers.iter().zip(params).enumerate() {
        if !(b.is_empty() || b.len() == per_param) || b.iter().any(|v| v.len() != p.elem_count()) {
            return bad(format!("the buffers of parameter {i} do not fit its size"));
        }
    }
    Ok(())
}

fn host(s: &Storage) -> Result<Vec<f32>> {
    s.to_host()
}

fn check_hparam(name: &'static str, v: f32, ok: bool) -> Result<()> {
    if !v.is_finite() || !ok {
        return Err(Error::arg(name, format!("{v} is out of range")));
    }
    Ok(())
}

/// Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.
pub struct Sgd {
    params: Vec<Tensor>,
    buffers: Vec<Option<Storage>>,
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

impl Sgd {
    pub fn new(params: Vec<Tensor>, lr: f32) -> Result<Sgd> {
        Sgd::with_options(params, lr, 0.0, 0.0, 0.0, false)
    }

    pub fn with_options(
        params: Vec<Tensor>,
        lr: f32,
        momentum: f32,
        dampening: f32,
        weight_decay: f32,
        nesterov: bool,
    ) -> Result<Sgd> {
        check_hparam("lr", lr, lr >= 0.0)?;
        check_hparam("momentum", momentum, momentum >= 0.0)?;
        check_hparam("weight_decay", weight_decay, weight_decay >= 0.0)?;
        if nesterov && (momentum <= 0.0 || dampening != 0.0) {
            return Err(Error::arg(
                "nesterov",
                "needs momentum > 0 and zero dampening",
            ));
        }
        let buffers = params.iter().map(|_| None).collect();
        Ok(Sgd {
            params,
            buffers,
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
        })
    }
}

/// The gradient of `p` in `grads`; a zero one when there is none and `zero_filled`, else
/// `None` (the parameter is skipped).
fn gradient_of(grads: &GradStore, p: &Tensor, zero_filled: bool) -> Result<Option<Tensor>> {
    match grads.get(p) {
        Some(g) => Ok(Some(g.clone())),
        None if zero_filled => Tensor::zeros(p.shape().clone(), p.device()).map(Some),
        None => Ok(None),
    }
}

impl Sgd {
    fn update(&mut self, grads: &GradStore, zero_filled: bool) -> Result<()> {
        for (p, buf) in self.params.iter().zip(self.buffers.iter_mut()) {
            let Some(g) = gradient_of(grads, p, zero_filled)? else {
                continue;
            };
            let first_step = buf.is_none();
            if self.momentum != 0.0 && buf.is_none() {
                *buf = Some(p.device().zeros_storage(p.elem_count())?);
            }
            let h = SgdStep {
                lr: self.lr,
                momentum: self.momentum,
                dampening: self.dampening,
                weight_decay: self.weight_decay,
                nesterov: self.nesterov,
                first_step,
            };
            let g = g.storage();
            p.storage_mut().sgd_update(&g, buf.as_mut(), h)?;
        }
        Ok(())
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.update(grads, false)
    }

    fn step_all(&mut self, grads: &GradStore) -> Result<()> {
        self.update(grads, true)
    }

    fn learning_rate(&self) -> f32 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f32) {
        self.lr = lr;
    }

    fn state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            kind: "sgd".into(),
            buffers: self
                .buffers
                .iter()
                .map(|b| {
                    b.as_ref()
                        .map(host)
                        .transpose()
                        .map(|b| b.into_iter().collect())
                })
                .collect::<Result<_>>()?,
            steps: vec![0; self.params.len()],
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        check_state(state, "sgd", &self.params, 1)?;
        let buffers = state
            .buffers
            .iter()
            .zip(&self.params)
            .map(|(b, p)| {
                b.first()
                    .map(|v| p.device().storage_from_vec(v.clone()))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        self.buffers = buffers;
        Ok(())
    }
}

/// Adam (L2 weight decay) or AdamW (decoupled weight decay).
pub struct Adam {
    params: Vec<Tensor>,
    moments: Vec<Option<(Storage, Storage)>>,
    steps: Vec<u32>,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decoupled: bool,
}

impl Adam {
    /// Adam with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8) and L2 weight decay.
    pub fn new(params: Vec<Tensor>, lr: f32, weight_decay: f32) -> Result<Adam> {
        Adam::with_options(params, lr, (0.9, 0.999), 1e-8, weight_decay, false)
    }

    /// AdamW with PyTorch's defaults.
    pub fn adamw(params: Vec<Tensor>, lr: f32, weight_decay: f32) -> Result<Adam> {
        Adam::with_options(params, lr, (0.9, 0.999), 1e-8, weight_decay, true)
    }

    pub fn with_options(
        params: Vec<Tensor>,
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
        decoupled: bool,
    ) -> Result<Adam> {
        check_hparam("lr", lr, lr >= 0.0)?;
        check_hparam("beta1", betas.0, (0.0..1.0).contains(&betas.0))?;
        check_hparam("beta2", betas.1, (0.0..1.0).contains(&betas.1))?;
        check_hparam("eps", eps, eps >= 0.0)?;
        check_hparam("weight_decay", weight_decay, weight_decay >= 0.0)?;
        let n = params.len();
        Ok(Adam {
            params,
            moments: (0..n).map(|_| None).collect(),
            steps: vec![0; n],
            lr,
            beta1: betas.0,
            beta2: betas.1,
            eps,
            weight_decay,
            decoupled,
        })
    }
}

impl Adam {
    fn update(&mut self, grads: &GradStore, zero_filled: bool) -> Result<()> {
        for ((p, moments), step) in self
            .params
            .iter()
            .zip(self.moments.iter_mut())
            .zip(self.steps.iter_mut())
        {
            let Some(g) = gradient_of(grads, p, zero_filled)? else {
                continue;
            };
            if moments.is_none() {
                let dev = p.device();
                *moments = Some((
                    dev.zeros_storage(p.elem_count())?,
                    dev.zeros_storage(p.elem_count())?,
                ));
            }
            let (m, v) = moments.as_mut().expect("moments were just initialised");
            *step += 1;
            let h = AdamStep {
                lr: self.lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
                decoupled: self.decoupled,
                step: *step,
            };
            let g = g.storage();
            p.storage_mut().adam_update(&g, m, v, h)?;
        }
        Ok(())
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.update(grads, false)
    }

    fn step_all(&mut self, grads: &GradStore) -> Result<()> {
        self.update(grads, true)
    }

    fn learning_rate(&self) -> f32 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f32) {
        self.lr = lr;
    }

    fn state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            kind: "adam".into(),
            buffers: self
                .moments
                .iter()
                .map(|m| match m {
                    Some((m, v)) => Ok(vec![host(m)?, host(v)?]),
                    None => Ok(Vec::new()),
                })
                .collect::<Result<_>>()?,
            steps: self.steps.clone(),
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        check_state(state, "adam", &self.params, 2)?;
        let moments = state
            .buffers
            .iter()
            .zip(&self.params)
            .map(|(b, p)| match b.as_slice() {
                [m, v] => {
                    let dev = p.device();
                    Ok(Some((
                        dev.storage_from_vec(m.clone())?,
                        dev.storage_from_vec(v.clone())?,
                    )))
                }
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        self.moments = moments;
        self.steps = state.steps.clone();
        Ok(())
    }
}
