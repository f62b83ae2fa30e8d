//! Layers: [`Linear`] and [`Mlp`], their initializations, named parameters, and parameter
//! files in the safetensors format.
//!
//! A linear layer stores `W` as `out × in` (PyTorch's layout) and computes `x · Wᵀ + b`
//! with a product that reads `W` transposed in place, so the forward pass costs one read of
//! `x` and `W` and one write of the output.

mod io;

pub use io::{load_parameters, save_parameters};

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

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
    /// The layer itself when the module is a single [`Linear`], so that training can fuse it
    /// with the loss (`Tensor::linear_shifted_cross_entropy`).
    fn as_linear(&self) -> Option<&Linear> {
        None
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

    fn as_linear(&self) -> Option<&Linear> {
        Some(self)
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
