//! What to train and how: serializable descriptions of a classifier ([`ModelSpec`]) and of its
//! optimizer ([`OptimizerSpec`]), each with a `build` that makes the real thing.
//!
//! - `Linear { bias, init }`: `f(x) = x · Wᵀ (+ b)`, `W` of shape `K × d`; by default
//!   PyTorch's `nn.Linear` initialization `W, b ~ U(-1/√d, 1/√d)` (the Figure-1 model is
//!   `linear:nobias` with `d = 1800`, `K = 2`).
//! - `Mlp { hidden, activation, init }`: `d → hidden[0] → … → K` with biases, `activation`
//!   between layers, weights drawn per `init`: `pytorch` (`U(-1/√fan_in, 1/√fan_in)` for
//!   weights and biases) or `xavier` (`U(-√(6/(fan_in+fan_out)), +…)`, zero biases).
//!
//! - `linear:zeros` (also `linear:xavier`): one layer `d → K` with bias and the named
//!   initialization (`linear:pytorch` is `linear`). `linear:zeros` is the official Waterbirds
//!   head, whose weight and bias are multiplied by 0 after creation so that both XRM twins
//!   start identical. It is `Linear { bias: true, init }`; files leave `init` out when it is
//!   PyTorch's default, so `linear` and `linear:nobias` serialize as they always have. An
//!   `Mlp` without hidden layers (how earlier files spelled `linear:INIT`) still reads and
//!   builds as the same one layer.
//!
//! Each spec reads and prints as on the command line (`FromStr`/`Display`): `linear`,
//! `linear:nobias`, `linear:zeros`, `mlp:390,390:relu:xavier`; `sgd lr 0.01 momentum 0.9 weight
//! decay 0.0001`. Files spell activations and initializations by the same names.
//!
//! Optimizers follow PyTorch's semantics (see [`crate::optim`]): SGD with momentum and L2
//! weight decay; Adam with L2 weight decay; AdamW with decoupled weight decay.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::nn::{Activation, Init, Linear, Mlp, Module};
use crate::optim::{Adam, Optimizer, Sgd};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Help text for `--model`.
pub const MODEL_HELP: &str = "Classifier: `linear` (one layer d → K with bias, PyTorch's \
default init), `linear:nobias`, `linear:zeros` (with bias, weight and bias initialised to 0, \
as the official Waterbirds head; also `linear:xavier`), or `mlp:W1,W2,…[:relu|tanh|sigmoid|identity][:pytorch|xavier|zeros]` \
(hidden widths, then activation and init in any order; defaults relu, pytorch), e.g. \
`mlp:390,390:relu:xavier` [default: per data set, see --help]";

/// A classifier architecture; [`ModelSpec::build`] draws its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSpec {
    /// One linear layer `d → K`; `init` is PyTorch's default unless spelled `linear:INIT`
    /// (then with bias). Files omit `init` when it is the default.
    Linear {
        bias: bool,
        #[serde(
            default = "pytorch_default",
            skip_serializing_if = "is_pytorch_default",
            with = "by_name"
        )]
        init: Init,
    },
    /// A multilayer perceptron `d → hidden… → K` with biases.
    Mlp {
        /// Widths of the hidden layers. Empty only in earlier files (`linear:INIT` is now
        /// [`ModelSpec::Linear`]): then it is one linear layer with bias and the given `init`.
        hidden: Vec<usize>,
        #[serde(with = "by_name")]
        activation: Activation,
        #[serde(with = "by_name")]
        init: Init,
    },
}

fn pytorch_default() -> Init {
    Init::PyTorchDefault
}

fn is_pytorch_default(init: &Init) -> bool {
    *init == Init::PyTorchDefault
}

const ACTIVATIONS: [(Activation, &str); 4] = [
    (Activation::Relu, "relu"),
    (Activation::Tanh, "tanh"),
    (Activation::Sigmoid, "sigmoid"),
    (Activation::Identity, "identity"),
];
const INITS: [(Init, &str); 3] = [
    (Init::PyTorchDefault, "pytorch"),
    (Init::XavierUniform, "xavier"),
    (Init::Zeros, "zeros"),
];

/// The value named `name` in `table`, or an error listing the names.
fn by_table<T: Copy>(table: &[(T, &str)], what: &'static str, name: &str) -> Result<T> {
    table
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(v, _)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(_, n)| *n).collect();
            Error::arg(
                what,
                format!("unknown {what} `{name}`; expected {}", names.join(", ")),
            )
        })
}

fn name_in<T: PartialEq>(table: &[(T, &'static str)], v: &T) -> &'static str {
    table.iter().find(|(t, _)| t == v).map_or("?", |(_, n)| n)
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(name_in(&ACTIVATIONS, self))
    }
}

impl FromStr for Activation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        by_table(&ACTIVATIONS, "activation", s)
    }
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(name_in(&INITS, self))
    }
}

impl FromStr for Init {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        by_table(&INITS, "init", s)
    }
}

/// Serde through `Display`/`FromStr`, so files spell a value as the command line does.
mod by_name {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl ModelSpec {
    /// The Figure-1 model: linear, no bias.
    pub fn linear_no_bias() -> Self {
        ModelSpec::linear(false)
    }

    /// One linear layer, PyTorch's default initialization (`linear`, `linear:nobias`).
    pub fn linear(bias: bool) -> Self {
        ModelSpec::Linear {
            bias,
            init: Init::PyTorchDefault,
        }
    }

    /// One linear layer with bias and initialization `init` (`linear:INIT`); `zeros` is the
    /// official zero-initialised Waterbirds head.
    pub fn linear_with_init(init: Init) -> Self {
        ModelSpec::Linear { bias: true, init }
    }

    /// A model `d_in → classes` with parameters drawn from `rng` (layer by layer, weight then
    /// bias) as variables on `device`.
    ///
    /// Errors: `d_in` or `classes` zero, a hidden width of zero.
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
            ModelSpec::Linear { bias, init } => Ok(Box::new(Linear::new(
                d_in, classes, *bias, *init, rng, device,
            )?)),
            ModelSpec::Mlp { hidden, init, .. } if hidden.is_empty() => Ok(Box::new(Linear::new(
                d_in, classes, true, *init, rng, device,
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
                let mut widths = Vec::with_capacity(hidden.len() + 2);
                widths.push(d_in);
                widths.extend_from_slice(hidden);
                widths.push(classes);
                Ok(Box::new(Mlp::new(
                    &widths,
                    *activation,
                    true,
                    *init,
                    rng,
                    device,
                )?))
            }
        }
    }
}

impl fmt::Display for ModelSpec {
    /// The `--model` spelling: `spec.to_string().parse() == Ok(spec)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Linear {
                bias,
                init: Init::PyTorchDefault,
            } => f.write_str(if *bias { "linear" } else { "linear:nobias" }),
            ModelSpec::Linear { bias: true, init } => write!(f, "linear:{init}"),
            ModelSpec::Linear { bias: false, init } => write!(f, "linear:nobias:{init}"),
            // A layer-less MLP from an earlier file: its activation plays no part.
            ModelSpec::Mlp { hidden, init, .. } if hidden.is_empty() => write!(f, "linear:{init}"),
            ModelSpec::Mlp {
                hidden,
                activation,
                init,
            } => {
                let widths: Vec<String> = hidden.iter().map(usize::to_string).collect();
                write!(f, "mlp:{}:{activation}:{init}", widths.join(","))
            }
        }
    }
}

impl FromStr for ModelSpec {
    type Err = Error;

    /// Parses a `--model` value (see [`MODEL_HELP`]).
    ///
    /// Errors (`InvalidArgument` named `model`): an unknown model kind, an `mlp` without hidden
    /// widths, a width that is not a positive integer, an unknown or repeated option.
    fn from_str(spec: &str) -> Result<Self> {
        let bad = |detail: String| Error::arg("model", format!("`{spec}`: {detail}"));
        let mut parts = spec.trim().split(':');
        match parts.next().unwrap_or_default() {
            "linear" => {
                let (mut bias, mut init) = (None, None);
                for option in parts {
                    let previous = match option {
                        "bias" => bias.replace(true).map(|_| "bias".to_string()),
                        "nobias" => bias.replace(false).map(|_| "nobias".to_string()),
                        other => match other.parse::<Init>() {
                            Ok(i) => init.replace(i).map(|p| p.to_string()),
                            Err(_) => {
                                return Err(bad(format!(
                                    "unknown linear option `{other}`; expected `bias`, `nobias` \
                                     or an initialization ({})",
                                    INITS.map(|(_, n)| n).join(", ")
                                )))
                            }
                        },
                    };
                    if let Some(previous) = previous {
                        return Err(bad(format!("`{option}` conflicts with `{previous}`")));
                    }
                }
                match (bias.unwrap_or(true), init) {
                    (bias, None | Some(Init::PyTorchDefault)) => Ok(ModelSpec::linear(bias)),
                    (true, Some(init)) => Ok(ModelSpec::linear_with_init(init)),
                    (false, Some(init)) => Err(bad(format!(
                        "`linear:nobias` takes PyTorch's default initialization only; \
                         `linear:{init}` has a bias"
                    ))),
                }
            }
            "mlp" => {
                let widths = parts
                    .next()
                    .filter(|w| !w.trim().is_empty())
                    .ok_or_else(|| {
                        bad("an MLP needs its hidden widths, e.g. `mlp:390,390`".into())
                    })?;
                let hidden = widths
                    .split(',')
                    .map(|w| match w.trim().parse::<usize>() {
                        Ok(v) if v > 0 => Ok(v),
                        _ => Err(bad(format!("hidden width `{w}` is not a positive integer"))),
                    })
                    .collect::<Result<Vec<usize>>>()?;
                let (mut activation, mut init) = (None, None);
                for option in parts {
                    let previous = if let Ok(a) = option.parse::<Activation>() {
                        activation.replace(a).map(|p| p.to_string())
                    } else if let Ok(i) = option.parse::<Init>() {
                        init.replace(i).map(|p| p.to_string())
                    } else {
                        return Err(bad(format!(
                            "unknown MLP option `{option}`; expected an activation ({}) or an \
                             initialization ({})",
                            ACTIVATIONS.map(|(_, n)| n).join(", "),
                            INITS.map(|(_, n)| n).join(", ")
                        )));
                    };
                    if let Some(previous) = previous {
                        return Err(bad(format!("`{option}` conflicts with `{previous}`")));
                    }
                }
                Ok(ModelSpec::Mlp {
                    hidden,
                    activation: activation.unwrap_or(Activation::Relu),
                    init: init.unwrap_or(Init::PyTorchDefault),
                })
            }
            other => Err(bad(format!(
                "unknown model `{other}`; expected linear, linear:nobias or mlp:WIDTHS"
            ))),
        }
    }
}

/// The optimizer families (`--optimizer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum and L2 weight decay.
    Sgd,
    /// Adam, β = (0.9, 0.999), ε = 1e-8, L2 weight decay.
    Adam,
    /// AdamW, β = (0.9, 0.999), ε = 1e-8, decoupled weight decay.
    Adamw,
}

const OPTIMIZERS: [(OptimizerKind, &str); 3] = [
    (OptimizerKind::Sgd, "sgd"),
    (OptimizerKind::Adam, "adam"),
    (OptimizerKind::Adamw, "adamw"),
];

impl OptimizerKind {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        name_in(&OPTIMIZERS, &self)
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        by_table(&OPTIMIZERS, "optimizer", s)
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
    /// The optimizer `kind` with these settings.
    ///
    /// Errors (`InvalidArgument`): a learning rate that is not positive and finite, a momentum
    /// outside `[0, 1)`, a negative or non-finite weight decay, a non-zero momentum for Adam or
    /// AdamW (their β are fixed).
    pub fn new(kind: OptimizerKind, lr: f32, momentum: f32, weight_decay: f32) -> Result<Self> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::arg(
                "lr",
                format!("must be positive and finite, got {lr}"),
            ));
        }
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::arg(
                "momentum",
                format!("must be in [0, 1), got {momentum}"),
            ));
        }
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return Err(Error::arg(
                "weight_decay",
                format!("must be finite and >= 0, got {weight_decay}"),
            ));
        }
        if kind != OptimizerKind::Sgd && momentum != 0.0 {
            return Err(Error::arg(
                "momentum",
                format!(
                    "{kind} has no momentum setting (β = (0.9, 0.999)); momentum {momentum} \
                     applies to sgd only"
                ),
            ));
        }
        Ok(match kind {
            OptimizerKind::Sgd => OptimizerSpec::Sgd {
                lr,
                momentum,
                weight_decay,
            },
            OptimizerKind::Adam => OptimizerSpec::Adam { lr, weight_decay },
            OptimizerKind::Adamw => OptimizerSpec::AdamW { lr, weight_decay },
        })
    }

    /// The optimizer family.
    pub fn kind(&self) -> OptimizerKind {
        match self {
            OptimizerSpec::Sgd { .. } => OptimizerKind::Sgd,
            OptimizerSpec::Adam { .. } => OptimizerKind::Adam,
            OptimizerSpec::AdamW { .. } => OptimizerKind::Adamw,
        }
    }

    /// The same family and momentum with another learning rate and weight decay (unchecked,
    /// as [`OptimizerSpec::build`] checks them).
    pub fn with_lr_and_decay(&self, lr: f32, weight_decay: f32) -> Self {
        match *self {
            OptimizerSpec::Sgd { momentum, .. } => OptimizerSpec::Sgd {
                lr,
                momentum,
                weight_decay,
            },
            OptimizerSpec::Adam { .. } => OptimizerSpec::Adam { lr, weight_decay },
            OptimizerSpec::AdamW { .. } => OptimizerSpec::AdamW { lr, weight_decay },
        }
    }

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

impl fmt::Display for OptimizerSpec {
    /// `sgd lr 0.01 momentum 0.9 weight decay 0.0001`, `adam lr 0.001 weight decay 0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} lr {}", self.kind(), self.lr())?;
        if let OptimizerSpec::Sgd { momentum, .. } = self {
            write!(f, " momentum {momentum}")?;
        }
        write!(f, " weight decay {}", self.weight_decay())
    }
}

impl FromStr for OptimizerSpec {
    type Err = Error;

    /// Parses the [`Display`](fmt::Display) form: the family, then `lr X` and optionally
    /// `momentum X` and `weight decay X` (zero when left out), checked as
    /// [`OptimizerSpec::new`] does.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |detail: String| Error::arg("optimizer", format!("`{s}`: {detail}"));
        let mut words = s.split_whitespace();
        let kind: OptimizerKind = words.next().unwrap_or_default().parse()?;
        let (mut lr, mut momentum, mut weight_decay) = (None, 0.0, 0.0);
        while let Some(mut key) = words.next() {
            if key == "weight" && words.next() == Some("decay") {
                key = "weight decay";
            }
            let value: f32 = words
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(format!("`{key}` needs a number")))?;
            match key {
                "lr" => lr = Some(value),
                "momentum" => momentum = value,
                "weight decay" => weight_decay = value,
                other => {
                    return Err(bad(format!(
                        "unknown setting `{other}`; expected lr, momentum or weight decay"
                    )))
                }
            }
        }
        let lr = lr.ok_or_else(|| bad("no learning rate (`lr X`)".into()))?;
        OptimizerSpec::new(kind, lr, momentum, weight_decay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_uses_the_pytorch_bound_and_mlp_has_the_right_widths() {
        let dev = Device::Cpu;
        let m = ModelSpec::linear(true)
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
            activation: Activation::Tanh,
            init: Init::XavierUniform,
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
        assert!(matches!(
            "gelu".parse::<Activation>(),
            Err(Error::InvalidArgument {
                name: "activation",
                ..
            })
        ));
        assert!(matches!(
            "he".parse::<Init>(),
            Err(Error::InvalidArgument { name: "init", .. })
        ));
        let json = r#"{"mlp":{"hidden":[4],"activation":"gelu","init":"pytorch"}}"#;
        assert!(serde_json::from_str::<ModelSpec>(json).is_err());
        assert!(ModelSpec::linear_no_bias()
            .build(0, 2, &mut Rng::new(0), &dev)
            .is_err());
        assert!(OptimizerSpec::plain_sgd(-1.0).build(vec![]).is_err());
    }

    #[test]
    fn model_specs_parse_and_print_back() {
        assert_eq!(
            "linear".parse::<ModelSpec>().unwrap(),
            ModelSpec::linear(true)
        );
        assert_eq!(
            "linear:nobias".parse::<ModelSpec>().unwrap(),
            ModelSpec::linear_no_bias()
        );
        let mlp: ModelSpec = "mlp:390,390:xavier".parse().unwrap();
        assert_eq!(
            mlp,
            ModelSpec::Mlp {
                hidden: vec![390, 390],
                activation: Activation::Relu,
                init: Init::XavierUniform,
            }
        );
        assert_eq!(mlp.to_string(), "mlp:390,390:relu:xavier");
        for m in [ModelSpec::linear(true), ModelSpec::linear_no_bias(), mlp] {
            assert_eq!(m.to_string().parse::<ModelSpec>().unwrap(), m);
        }
        for bad in [
            "",
            "conv",
            "mlp",
            "mlp:",
            "mlp:0",
            "mlp:3,x",
            "mlp:4:gelu",
            "mlp:4:relu:tanh",
            "linear:maybe",
            "linear:bias:x",
        ] {
            assert!(
                matches!(
                    bad.parse::<ModelSpec>(),
                    Err(Error::InvalidArgument { name: "model", .. })
                ),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn zero_initialised_linear_heads_parse_build_and_keep_the_old_spellings() {
        let zeros: ModelSpec = "linear:zeros".parse().unwrap();
        assert_eq!(zeros, ModelSpec::linear_with_init(Init::Zeros));
        assert_eq!(zeros.to_string(), "linear:zeros");
        assert_eq!("linear:bias:zeros".parse::<ModelSpec>().unwrap(), zeros);
        assert_eq!("linear:zeros:bias".parse::<ModelSpec>().unwrap(), zeros);
        let xavier: ModelSpec = "linear:xavier".parse().unwrap();
        assert_eq!(xavier, ModelSpec::linear_with_init(Init::XavierUniform));
        assert_eq!(xavier.to_string(), "linear:xavier");
        for m in [zeros.clone(), xavier.clone()] {
            assert_eq!(m.to_string().parse::<ModelSpec>().unwrap(), m);
        }
        // PyTorch's default is the existing spec, spelled and serialized as before.
        for (text, spec) in [
            ("linear:pytorch", ModelSpec::linear(true)),
            ("linear:bias:pytorch", ModelSpec::linear(true)),
            ("linear:nobias:pytorch", ModelSpec::linear_no_bias()),
        ] {
            assert_eq!(text.parse::<ModelSpec>().unwrap(), spec, "{text}");
        }
        assert_eq!(
            serde_json::to_string(&ModelSpec::linear(true)).unwrap(),
            r#"{"linear":{"bias":true}}"#
        );
        assert_eq!(
            serde_json::to_string(&ModelSpec::linear_no_bias()).unwrap(),
            r#"{"linear":{"bias":false}}"#
        );
        let json = serde_json::to_string(&zeros).unwrap();
        assert_eq!(json, r#"{"linear":{"bias":true,"init":"zeros"}}"#);
        assert_eq!(serde_json::from_str::<ModelSpec>(&json).unwrap(), zeros);
        assert_eq!(
            serde_json::to_string(&xavier).unwrap(),
            r#"{"linear":{"bias":true,"init":"xavier"}}"#
        );
        assert_eq!(
            serde_json::from_str::<ModelSpec>(r#"{"linear":{"bias":true,"init":"pytorch"}}"#)
                .unwrap(),
            ModelSpec::linear(true)
        );
        // An earlier file's layer-less MLP reads, prints and builds as the same head.
        let old: ModelSpec =
            serde_json::from_str(r#"{"mlp":{"hidden":[],"activation":"relu","init":"zeros"}}"#)
                .unwrap();
        assert_eq!(old.to_string(), "linear:zeros");
        assert_eq!(old.to_string().parse::<ModelSpec>().unwrap(), zeros);
        let built = old.build(6, 3, &mut Rng::new(0), &Device::Cpu).unwrap();
        assert!(built.as_linear().is_some());
        for bad in [
            "linear:nobias:zeros",
            "linear:zeros:xavier",
            "linear:bias:nobias",
            "linear:zeros:zeros",
            "linear:relu",
        ] {
            assert!(
                matches!(
                    bad.parse::<ModelSpec>(),
                    Err(Error::InvalidArgument { name: "model", .. })
                ),
                "{bad:?} should be rejected"
            );
        }

        // One linear layer (fused paths), weight and bias all zero, as the official head.
        let dev = Device::Cpu;
        let model = zeros.build(6, 3, &mut Rng::new(0), &dev).unwrap();
        assert!(model.as_linear().is_some());
        let params = model.named_parameters();
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["weight", "bias"]);
        assert_eq!(params[0].1.dims(), &[3, 6]);
        assert_eq!(params[1].1.dims(), &[3]);
        for (_, p) in &params {
            assert!(p.to_vec().unwrap().iter().all(|&v| v == 0.0));
        }
        // Two twins built from different generators start identical.
        let twin = zeros.build(6, 3, &mut Rng::new(1), &dev).unwrap();
        for ((_, a), (_, b)) in params.iter().zip(twin.named_parameters()) {
            assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap());
        }
        // `linear:xavier` draws the weight and zeroes the bias.
        let xav = ModelSpec::linear_with_init(Init::XavierUniform)
            .build(6, 3, &mut Rng::new(0), &dev)
            .unwrap();
        let xp = xav.named_parameters();
        assert!(xp[0].1.to_vec().unwrap().iter().any(|&v| v != 0.0));
        assert!(xp[1].1.to_vec().unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn optimizer_specs_are_checked_and_print_back() {
        let sgd = OptimizerSpec::new(OptimizerKind::Sgd, 0.1, 0.9, 1e-4).unwrap();
        assert_eq!(
            sgd,
            OptimizerSpec::Sgd {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 1e-4
            }
        );
        assert_eq!(
            sgd.to_string(),
            "sgd lr 0.1 momentum 0.9 weight decay 0.0001"
        );
        let adamw = OptimizerSpec::new(OptimizerKind::Adamw, 1e-3, 0.0, 0.0).unwrap();
        assert_eq!(
            adamw,
            OptimizerSpec::AdamW {
                lr: 1e-3,
                weight_decay: 0.0
            }
        );
        for o in [sgd, adamw, OptimizerSpec::plain_sgd(3e-2)] {
            assert_eq!(o.to_string().parse::<OptimizerSpec>().unwrap(), o);
        }
        assert_eq!(
            "adam lr 0.001".parse::<OptimizerSpec>().unwrap(),
            OptimizerSpec::Adam {
                lr: 1e-3,
                weight_decay: 0.0
            }
        );
        assert!(OptimizerSpec::new(OptimizerKind::Adam, 1e-3, 0.9, 0.0).is_err());
        assert!(OptimizerSpec::new(OptimizerKind::Sgd, 0.0, 0.0, 0.0).is_err());
        assert!(OptimizerSpec::new(OptimizerKind::Sgd, 0.1, 1.0, 0.0).is_err());
        assert!(OptimizerSpec::new(OptimizerKind::Sgd, 0.1, 0.0, f32::NAN).is_err());
        for bad in ["", "rmsprop lr 1", "sgd", "sgd lr", "sgd lr 1 beta 2"] {
            assert!(bad.parse::<OptimizerSpec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn specs_round_trip_through_json() {
        let m = ModelSpec::Mlp {
            hidden: vec![16],
            activation: Activation::Relu,
            init: Init::PyTorchDefault,
        };
        let o = OptimizerSpec::AdamW {
            lr: 1e-3,
            weight_decay: 1e-4,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"mlp":{"hidden":[16],"activation":"relu","init":"pytorch"}}"#
        );
        let back: ModelSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let back: OptimizerSpec =
            serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(back, o);
    }
}
