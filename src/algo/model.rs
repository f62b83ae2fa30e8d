//! What to train and how: serializable descriptions of a classifier ([`ModelSpec`]) and of its
//! optimizer ([`OptimizerSpec`]), each with a `build` that makes the real thing.
//!
//! - `Linear { bias }`: `f(x) = x · Wᵀ (+ b)`, `W` of shape `K × d`, PyTorch's `nn.Linear`
//!   default initialization `W, b ~ U(-1/√d, 1/√d)` (the Figure-1 model is
//!   `Linear { bias: false }` with `d = 1800`, `K = 2`).
//! - `Mlp { hidden, activation, init }`: `d → hidden[0] → … → K` with biases, `activation`
//!   (`relu` or `tanh`) between layers, weights drawn per `init`: `pytorch`
//!   (`U(-1/√fan_in, 1/√fan_in)` for weights and biases) or `xavier`
//!   (`U(-√(6/(fan_in+fan_out)), +…)`, zero biases).
//!
//! Optimizers follow PyTorch's semantics (see [`crate::optim`]): SGD with momentum and L2
//! weight decay; Adam with L2 weight decay; AdamW with decoupled weight decay.

use serde::{Deserialize, Serialize};

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::nn::{Activation, Init, Linear, Mlp, Module};
use crate::optim::{Adam, Optimizer, Sgd};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// A classifier architecture; [`ModelSpec::build`] draws its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSpec {
    /// One linear layer `d → K`, PyTorch default initialization.
    Linear { bias: bool },
    /// A multilayer perceptron `d → hidden… → K` with biases.
    Mlp {
        /// Widths of the hidden layers (may be empty: then it is a linear layer with bias).
        hidden: Vec<usize>,
        /// `relu` or `tanh`.
        activation: String,
        /// `pytorch` or `xavier`.
        init: String,
    },
}

impl ModelSpec {
    /// The Figure-1 model: linear, no bias.
    pub fn linear_no_bias() -> Self {
        ModelSpec::Linear { bias: false }
    }

    /// A model `d_in → classes` with parameters drawn from `rng` (layer by layer, weight then
    /// bias) as variables on `device`.
    ///
    /// Errors: `d_in` or `classes` zero, a hidden width of zero, an unknown activation or
    /// initialization name.
    pub fn build(
        &self,
        d_in: usize,
        classes: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Box<dyn Module>> {
        if d_in == 0 || classes == 0 {
            return Err(Error::arg(
                "model",
                format!("cannot build a {d_in} → {classes} classifier"),
            ));
        }
        match self {
            ModelSpec::Linear { bias } => Ok(Box::new(Linear::new(
                d_in,
                classes,
                *bias,
                Init::PyTorchDefault,
                rng,
                device,
            )?)),
            ModelSpec::Mlp {
                hidden,
                activation,
                init,
            } => {
                if let Some(p) = hidden.iter().position(|&w| w == 0) {
                    return Err(Error::arg(
                        "hidden",
                        format!("hidden layer {p} has width 0"),
                    ));
                }
                let activation = match activation.as_str() {
                    "relu" => Activation::Relu,
                    "tanh" => Activation::Tanh,
                    other => {
                        return Err(Error::arg(
                            "activation",
                            format!("unknown activation `{other}`; expected relu or tanh"),
                        ))
                    }
                };
                let init = match init.as_str() {
                    "pytorch" => Init::PyTorchDefault,
                    "xavier" => Init::XavierUniform,
                    other => {
                        return Err(Error::arg(
                            "init",
                            format!("unknown initialization `{other}`; expected pytorch or xavier"),
                        ))
                    }
                };
                let mut widths = Vec::with_capacity(hidden.len() + 2);
                widths.push(d_in);
                widths.extend_from_slice(hidden);
                widths.push(classes);
                Ok(Box::new(Mlp::new(
                    &widths, activation, true, init, rng, device,
                )?))
            }
        }
    }
}

/// An optimizer and its hyperparameters; [`OptimizerSpec::build`] makes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerSpec {
    /// SGD with momentum (no dampening, no Nesterov) and L2 weight decay.
    Sgd {
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    },
    /// Adam, β = (0.9, 0.999), ε = 1e-8, L2 weight decay.
    Adam { lr: f32, weight_decay: f32 },
    /// AdamW, β = (0.9, 0.999), ε = 1e-8, decoupled weight decay.
    AdamW { lr: f32, weight_decay: f32 },
}

impl OptimizerSpec {
    /// Plain SGD: no momentum, no weight decay (the Figure-1 optimizer).
    pub fn plain_sgd(lr: f32) -> Self {
        OptimizerSpec::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match *self {
            OptimizerSpec::Sgd { lr, .. }
            | OptimizerSpec::Adam { lr, .. }
            | OptimizerSpec::AdamW { lr, .. } => lr,
        }
    }

    /// The weight decay (L2 or decoupled); zero means a parameter whose gradient is always
    /// zero keeps its initial value.
    pub fn weight_decay(&self) -> f32 {
        match *self {
            OptimizerSpec::Sgd { weight_decay, .. }
            | OptimizerSpec::Adam { weight_decay, .. }
            | OptimizerSpec::AdamW { weight_decay, .. } => weight_decay,
        }
    }

    /// The optimizer over `params`. Errors on a negative or non-finite hyperparameter.
    pub fn build(&self, params: Vec<Tensor>) -> Result<Box<dyn Optimizer>> {
        Ok(match *self {
            OptimizerSpec::Sgd {
                lr,
                momentum,
                weight_decay,
            } => Box::new(Sgd::with_options(
                params,
                lr,
                momentum,
                0.0,
                weight_decay,
                false,
            )?),
            OptimizerSpec::Adam { lr, weight_decay } => {
                Box::new(Adam::new(params, lr, weight_decay)?)
            }
            OptimizerSpec::AdamW { lr, weight_decay } => {
                Box::new(Adam::adamw(params, lr, weight_decay)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_uses_the_pytorch_bound_and_mlp_has_the_right_widths() {
        let dev = Device::Cpu;
        let m = ModelSpec::Linear { bias: true }
            .build(100, 3, &mut Rng::new(0), &dev)
            .unwrap();
        let params = m.named_parameters();
        assert_eq!(params[0].1.dims(), &[3, 100]);
        assert_eq!(params[1].1.dims(), &[3]);
        let bound = 1.0 / 10.0;
        for (_, p) in &params {
            assert!(p.to_vec().unwrap().iter().all(|v| v.abs() <= bound));
        }
        let mlp = ModelSpec::Mlp {
            hidden: vec![8, 5],
            activation: "tanh".into(),
            init: "xavier".into(),
        }
        .build(4, 2, &mut Rng::new(0), &dev)
        .unwrap();
        let dims: Vec<Vec<usize>> = mlp
            .named_parameters()
            .iter()
            .map(|(_, t)| t.dims().to_vec())
            .collect();
        assert_eq!(
            dims,
            vec![
                vec![8, 4],
                vec![8],
                vec![5, 8],
                vec![5],
                vec![2, 5],
                vec![2]
            ]
        );
    }

    #[test]
    fn bad_specs_are_named_errors() {
        let dev = Device::Cpu;
        let bad_act = ModelSpec::Mlp {
            hidden: vec![4],
            activation: "gelu".into(),
            init: "pytorch".into(),
        };
        assert!(matches!(
            bad_act.build(3, 2, &mut Rng::new(0), &dev),
            Err(Error::InvalidArgument {
                name: "activation",
                ..
            })
        ));
        let bad_init = ModelSpec::Mlp {
            hidden: vec![4],
            activation: "relu".into(),
            init: "he".into(),
        };
        assert!(matches!(
            bad_init.build(3, 2, &mut Rng::new(0), &dev),
            Err(Error::InvalidArgument { name: "init", .. })
        ));
        assert!(ModelSpec::linear_no_bias()
            .build(0, 2, &mut Rng::new(0), &dev)
            .is_err());
        assert!(OptimizerSpec::plain_sgd(-1.0).build(vec![]).is_err());
    }

    #[test]
    fn specs_round_trip_through_json() {
        let m = ModelSpec::Mlp {
            hidden: vec![16],
            activation: "relu".into(),
            init: "pytorch".into(),
        };
        let o = OptimizerSpec::AdamW {
            lr: 1e-3,
            weight_decay: 1e-4,
        };
        let back: ModelSpec = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        let back: OptimizerSpec =
            serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(back, o);
    }
}
