//! Layers: [`Linear`] and [`Mlp`], their initializations, named parameters, and parameter
//! files in the safetensors format.
//!
//! A linear layer stores `W` as `out × in` (PyTorch's layout) and computes `x · Wᵀ + b`
//! with a product that reads `W` transposed in place, so the forward pass costs one read of
//! `x` and `W` and one write of the output.

mod io;

pub use io::{load_parameters, save_parameters};

use crate::autograd::no_grad;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::ops::Reduction;
use crate::rng::Rng;
use crate::tensor::{Indices, Tensor};

/// How a layer's weights (and biases) are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// PyTorch's `nn.Linear` default: weight and bias `U(-1/√fan_in, 1/√fan_in)`
    /// (`kaiming_uniform_(a=√5)` reduces to this bound).
    PyTorchDefault,
    /// Weight `U(-√(6/(fan_in + fan_out)), +…)`, bias zero.
    XavierUniform,
    /// Weight and bias zero.
    Zeros,
}

/// Something with parameters that maps a batch of inputs to outputs.
pub trait Module: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Parameters with stable names (`layers.0.weight`, ...), in a fixed order.
    fn named_parameters(&self) -> Vec<(String, Tensor)>;
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }
    /// The training loss `reduce_i w_i · CE(f(x_i) + s_i, y_i)` (see
    /// [`Tensor::shifted_cross_entropy`]) and the logits `f(x)`, detached. A linear layer
    /// fuses itself with the loss ([`Tensor::linear_shifted_cross_entropy`]).
    fn loss_and_logits(
        &self,
        x: &Tensor,
        labels: &Indices,
        shift: Option<&Tensor>,
        weights: Option<&Tensor>,
        reduction: Reduction,
    ) -> Result<(Tensor, Tensor)> {
        let z = self.forward(x)?;
        let loss = z.shifted_cross_entropy(labels, shift, weights, reduction)?;
        Ok((loss, z.detach()))
    }

    /// [`loss_and_logits`](Module::loss_and_logits) with the weights summing the loss, and
    /// `other(x)` (no gradient) beside it: XRM's held-in loss of one twin and the other
    /// twin's held-out logits on the same rows. Two linear layers take both from one pass
    /// over `x`.
    fn loss_beside(
        &self,
        other: &dyn Module,
        x: &Tensor,
        labels: &Indices,
        weights: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let other_logits = no_grad(|| other.forward(x))?;
        let z = self.forward(x)?;
        let loss = z.shifted_cross_entropy(labels, None, Some(weights), Reduction::Sum)?;
        Ok((loss, other_logits))
    }

    /// The layer itself when the module is one [`Linear`] (for [`Module::loss_beside`]).
    fn as_linear(&self) -> Option<&Linear> {
        None
    }

    /// Whether [`Module::forward`] gives each row the bits it gets in a pass over any other
    /// set of rows on `device`, so a caller may evaluate rows in whatever blocks it likes.
    /// The default promises nothing.
    fn rows_independent(&self, _device: &Device) -> bool {
        false
    }

    /// The parameters copied to the host, for a later evaluation batched with other
    /// snapshots of the same model ([`LinearSnapshot::predict_all`]); `None` for models that
    /// are evaluated as they are.
    fn snapshot(&self) -> Result<Option<LinearSnapshot>> {
        Ok(None)
    }
}

/// A linear model's parameters at one moment, on the host.
#[derive(Clone, Debug)]
pub struct LinearSnapshot {
    /// `K × d`, row-major.
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub classes: usize,
}

impl LinearSnapshot {
    /// `argmax (x · W_sᵀ + b_s)` for every row of `x` and every snapshot `s`, with the bits
    /// of evaluating each snapshot alone ([`Tensor::linear_predictions`]).
    pub fn predict_all(x: &Tensor, snapshots: &[&LinearSnapshot]) -> Result<Vec<Vec<u32>>> {
        let Some(first) = snapshots.first() else {
            return Ok(Vec::new());
        };
        let maps: Vec<(&[f32], Option<&[f32]>)> = snapshots
            .iter()
            .map(|s| (&s.weight[..], s.bias.as_deref()))
            .collect();
        x.linear_predictions(&maps, first.classes)
    }
}

/// `y = x · Wᵀ + b`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A layer `in_dim → out_dim`, weights drawn from `rng` (weight first, row-major, then
    /// bias), as variables on `device`.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        init: Init,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Linear> {
        if in_dim == 0 || out_dim == 0 {
            return Err(Error::arg(
                "dims",
                format!("linear layer {in_dim} → {out_dim}"),
            ));
        }
        let (w_bound, b_bound) = match init {
            Init::PyTorchDefault => {
                let b = 1.0 / (in_dim as f32).sqrt();
                (b, b)
            }
            Init::XavierUniform => ((6.0 / (in_dim + out_dim) as f32).sqrt(), 0.0),
            Init::Zeros => (0.0, 0.0),
        };
        let draw = |rng: &mut Rng, n: usize, bound: f32| -> Vec<f32> {
            if bound == 0.0 {
                vec![0.0; n]
            } else {
                rng.uniform_vec(n, -bound, bound)
            }
        };
        let weight = Tensor::from_vec(
            draw(rng, out_dim * in_dim, w_bound),
            (out_dim, in_dim),
            device,
        )?
        .variable();
        let bias = if bias {
            Some(Tensor::from_vec(draw(rng, out_dim, b_bound), out_dim, device)?.variable())
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul_t(&self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn loss_and_logits(
        &self,
        x: &Tensor,
        labels: &Indices,
        shift: Option<&Tensor>,
        weights: Option<&Tensor>,
        reduction: Reduction,
    ) -> Result<(Tensor, Tensor)> {
        x.linear_shifted_cross_entropy(
            &self.weight,
            self.bias.as_ref(),
            labels,
            shift,
            weights,
            reduction,
        )
    }

    fn loss_beside(
        &self,
        other: &dyn Module,
        x: &Tensor,
        labels: &Indices,
        weights: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let Some(other) = other.as_linear() else {
            let other_logits = no_grad(|| other.forward(x))?;
            let (loss, _) = self.loss_and_logits(x, labels, None, Some(weights), Reduction::Sum)?;
            return Ok((loss, other_logits));
        };
        let (loss, _, other_logits) = x.linear_shifted_cross_entropy_beside(
            &self.weight,
            self.bias.as_ref(),
            labels,
            None,
            Some(weights),
            Reduction::Sum,
            &other.weight,
            other.bias.as_ref(),
        )?;
        Ok((loss, other_logits))
    }

    fn as_linear(&self) -> Option<&Linear> {
        Some(self)
    }

    /// Within the backend's row-independence promise
    /// ([`Device::row_independent_columns`]); the bias is added elementwise.
    fn rows_independent(&self, device: &Device) -> bool {
        self.out_dim() <= device.row_independent_columns(self.in_dim())
    }

    fn snapshot(&self) -> Result<Option<LinearSnapshot>> {
        Ok(Some(LinearSnapshot {
            weight: self.weight.to_vec()?,
            bias: self.bias.as_ref().map(Tensor::to_vec).transpose()?,
            classes: self.out_dim(),
        }))
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut p = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            p.push(("bias".to_string(), b.clone()));
        }
        p
    }
}

/// Hidden-layer nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    Identity,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Identity => Ok(x.clone()),
        }
    }
}

/// A multilayer perceptron: linear layers of the given widths with `activation` between
/// them (not after the last).
#[derive(Clone, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub activation: Activation,
}

impl Mlp {
    /// `widths = [in, hidden..., out]`; layers built in order from `rng`.
    pub fn new(
        widths: &[usize],
        activation: Activation,
        bias: bool,
        init: Init,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Mlp> {
        if widths.len() < 2 {
            return Err(Error::arg(
                "widths",
                "an MLP needs at least input and output widths",
            ));
        }
        let layers = widths
            .windows(2)
            .map(|w| Linear::new(w[0], w[1], bias, init, rng, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Mlp { layers, activation })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = self.activation.apply(&h)?;
            }
        }
        Ok(h)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                l.named_parameters()
                    .into_iter()
                    .map(move |(n, t)| (format!("layers.{i}.{n}"), t))
            })
            .collect()
    }
}
