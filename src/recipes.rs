//! Each data set's recipes, in one place: the model each family of data sets trains
//! ([`Family::model`]), what `train` and `xrm` use when flags leave it open ([`defaults`]), and
//! the sweep of Table 1 and `memaware sweep` ([`preset_sweep`]). The memorization-score
//! experiments ([`crate::repro::memscore::MemscoreExperiment`]) train the same models.

use serde::{Deserialize, Serialize};

use crate::algo::model::{ModelSpec, OptimizerKind, OptimizerSpec};
use crate::algo::sweep::{Parallelism, SweepConfig, XrmPlan};
use crate::algo::xrm::XrmLoss;
use crate::backend::Device;
use crate::data::Dataset;
use crate::eval::selection::HparamSpace;
use crate::nn::{Activation, Init};

/// The kinds of data set a recipe is chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Figure 1's synthetic data (`interpretable`).
    Interpretable,
    /// ColorMNIST (the bundled sample or MNIST IDX files).
    ColorMnist,
    /// Frozen features: `waterbirds-like` and feature files.
    Features,
}

impl Family {
    /// The family of `ds`, by its name.
    pub fn of(ds: &Dataset) -> Family {
        match ds.name.as_str() {
            "interpretable" => Family::Interpretable,
            "colormnist" => Family::ColorMnist,
            _ => Family::Features,
        }
    }

    /// The classifier: Figure 1's linear model without bias (`linear:nobias`), the IRM/XRM
    /// ColorMNIST MLP 392 → 390 → 390 → 2 with ReLU and Xavier-uniform weights
    /// (`mlp:390,390:relu:xavier`), a linear head with bias on features (`linear`).
    pub fn model(self) -> ModelSpec {
        match self {
            Family::Interpretable => ModelSpec::linear_no_bias(),
            Family::ColorMnist => ModelSpec::Mlp {
                hidden: vec![390, 390],
                activation: Activation::Relu,
                init: Init::XavierUniform,
            },
            Family::Features => ModelSpec::linear(true),
        }
    }
}

/// What `train` and `xrm` use when flags leave it open (documented in [`DEFAULTS_HELP`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Defaults {
    pub model: ModelSpec,
    pub optimizer: OptimizerKind,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub steps: usize,
    /// `None`: full batch.
    pub batch_size: Option<usize>,
    /// XRM's held-in loss.
    pub xrm_loss: XrmLoss,
    pub checkpoint_freq: usize,
}

/// Help text listing each data set's defaults.
pub const DEFAULTS_HELP: &str = "\
Defaults per data set (each flag given overrides its part):
  interpretable     linear:nobias, full batch, sgd lr 1e-2 (3e-2 when sigma_eps = 0), no momentum
                    or weight decay, 1000 steps, XRM loss `mean`, checkpoint every 10 steps
                    (the paper's Figure-1 script)
  colormnist        mlp:390,390:relu:xavier, full batch, adam lr 1e-3, no weight decay, 501
                    steps, XRM loss `class-balanced`, checkpoint every 25 steps (the IRM/XRM MLP)
  waterbirds-like,  linear (with bias) on frozen features, batch 128, sgd lr 1e-3 momentum 0.9,
  feature files     weight decay 1e-4, 1001 steps, XRM loss `class-balanced`, checkpoint every
                    50 steps (the paper's Waterbirds protocol, Table 1)
Switching --optimizer away from the data set's default resets --lr to 1e-3 (adam, adamw) or
1e-2 (sgd) and --momentum to 0 unless they are given.";

/// The default recipe for `ds` (see [`DEFAULTS_HELP`]).
pub fn defaults(ds: &Dataset) -> Defaults {
    let model = Family::of(ds).model();
    match Family::of(ds) {
        Family::Interpretable => {
            // sigma_eps = 0 leaves every noise coordinate (columns 2..d) at zero; the paper
            // trains that case with lr 3e-2.
            let d = ds.d();
            let noiseless = d > 2
                && ds
                    .train
                    .x
                    .chunks_exact(d)
                    .all(|row| row[2..].iter().all(|&v| v == 0.0));
            Defaults {
                model,
                optimizer: OptimizerKind::Sgd,
                lr: if noiseless { 3e-2 } else { 1e-2 },
                momentum: 0.0,
                weight_decay: 0.0,
                steps: 1000,
                batch_size: None,
                xrm_loss: XrmLoss::Mean,
                checkpoint_freq: 10,
            }
        }
        Family::ColorMnist => Defaults {
            model,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.0,
            weight_decay: 0.0,
            steps: 501,
            batch_size: None,
            xrm_loss: XrmLoss::ClassBalanced,
            checkpoint_freq: 25,
        },
        Family::Features => Defaults {
            model,
            optimizer: OptimizerKind::Sgd,
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 1e-4,
            steps: 1001,
            batch_size: Some(128),
            xrm_loss: XrmLoss::ClassBalanced,
            checkpoint_freq: 50,
        },
    }
}

/// Sizes of a table run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    pub steps: usize,
    pub draws: usize,
    pub seeds: usize,
}

impl Sizes {
    /// The full table: 1001 steps, 10 draws, 5 seeds.
    pub const FULL: Sizes = Sizes {
        steps: 1001,
        draws: 10,
        seeds: 5,
    };
    /// The smoke test: 201 steps, 2 draws, 2 seeds.
    pub const QUICK: Sizes = Sizes {
        steps: 201,
        draws: 2,
        seeds: 2,
    };
}

/// The sweep of a data set of `family` with `sizes`, training seeds `seed, seed + 1, …` and
/// draws seeded by `seed` (Table 1's protocol, see [`crate::repro::table1`]): ColorMNIST gets
/// the MLP with Adam and batches `int(2^U(3,6))`; every other data set, `interpretable`
/// included, a linear head with bias and SGD with momentum 0.9 over the paper's ranges.
pub fn preset_sweep(family: Family, sizes: Sizes, seed: u64) -> SweepConfig {
    let paper = HparamSpace::paper();
    let (model, optimizer, space) = match family {
        Family::ColorMnist => (
            family.model(),
            OptimizerSpec::Adam {
                lr: 0.0,
                weight_decay: 0.0,
            },
            HparamSpace {
                batch_log2: (3.0, 6.0),
                ..paper
            },
        ),
        Family::Interpretable | Family::Features => (
            Family::Features.model(),
            OptimizerSpec::Sgd {
                lr: 0.0,
                momentum: 0.9,
                weight_decay: 0.0,
            },
            paper,
        ),
    };
    SweepConfig {
        model,
        optimizer,
        space,
        steps: sizes.steps,
        checkpoint_freq: 50,
        draws: sizes.draws,
        seeds: (0..sizes.seeds as u64).map(|i| seed + i).collect(),
        hparam_seed: seed,
        xrm: XrmPlan {
            draws: sizes.draws,
            steps: sizes.steps,
            loss: XrmLoss::ClassBalanced,
            estimator: Default::default(),
            outputs: Default::default(),
        },
        parallelism: Parallelism::default(),
        step_zero: Default::default(),
        sampler: Default::default(),
        device: Device::Cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_names_each_family_model() {
        for f in [Family::Interpretable, Family::ColorMnist] {
            let model = f.model().to_string();
            assert!(DEFAULTS_HELP.contains(&model), "{model}");
        }
    }

    #[test]
    fn presets_use_the_documented_recipes() {
        let c = preset_sweep(Family::ColorMnist, Sizes::FULL, 3);
        assert_eq!(c.seeds, vec![3, 4, 5, 6, 7]);
        assert_eq!(c.space.batch_log2, (3.0, 6.0));
        assert_eq!(c.model, Family::ColorMnist.model());
        assert!(matches!(c.optimizer, OptimizerSpec::Adam { .. }));
        let w = preset_sweep(Family::Features, Sizes::QUICK, 0);
        assert_eq!(w.space, HparamSpace::paper());
        assert!(matches!(
            w.optimizer,
            OptimizerSpec::Sgd { momentum, .. } if momentum == 0.9
        ));
        assert_eq!(
            preset_sweep(Family::Interpretable, Sizes::QUICK, 0).model,
            ModelSpec::linear(true)
        );
    }
}
