//! The paper's methods (ERM, GroupDRO, JTT, MAT, RWG, SUBG, XRM + GroupDRO, and RWG and SUBG on
//! XRM's inferred groups): each builds its [`Objective`] (and, for SUBG, its training rows)
//! and runs the training loop. [`Method::Sampled`] trains any of them (but RWG) on batches
//! drawn by another [`Sampler`], e.g. class-balanced with replacement.

use serde::{Deserialize, Serialize};

use super::model::ModelSpec;
use super::objective::{jtt_weights, Objective};
use super::train::{predict, train_sampled, TrainConfig, TrainOutcome, TrainSetup};
use super::xrm::XrmOutput;
use crate::data::batch::{group_weights_balanced, subsample_groups, Sampler};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::selection::Checkpoint;
use crate::rng::Rng;

/// Sub-streams of `Rng::new(seed)` that a method draws from (the loop's own are 1 and 2).
const STREAM_SUBG: u64 = 3;
const STREAM_JTT_STAGE2: u64 = 4;

/// A method of the paper's Table 1 (PAPER.md §2, §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Mean cross-entropy.
    Erm,
    /// GroupDRO on the true training groups, step size `eta`.
    GroupDro { eta: f32 },
    /// JTT: ERM for `first_stage_steps`, then a fresh model with the first stage's training
    /// errors weighted `lambda_up`.
    Jtt {
        first_stage_steps: usize,
        lambda_up: f32,
    },
    /// MAT with held-out logits from XRM, temperature `tau`.
    Mat { tau: f32 },
    /// Group-balanced per-example weights on the true groups.
    Rwg,
    /// Training on a random subsample with every true group at the smallest group's size.
    Subg,
    /// GroupDRO on the XRM-inferred groups `g = 2y + m`.
    XrmGroupDro { eta: f32 },
    /// RWG on the XRM-inferred training groups `2y + m` instead of the true ones (the official
    /// `--group_labels <XRM output>` setting).
    XrmRwg,
    /// SUBG on the XRM-inferred training groups `2y + m` instead of the true ones.
    XrmSubg,
    /// `method` trained on batches drawn by `sampler` (made by [`Method::with_sampler`]; the
    /// default shuffled batches need no wrapper, so every other method trains as before).
    Sampled {
        sampler: Sampler,
        method: Box<Method>,
    },
}

impl Method {
    /// Short name used in files and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Erm => "erm",
            Method::GroupDro { .. } => "group_dro",
            Method::Jtt { .. } => "jtt",
            Method::Mat { .. } => "mat",
            Method::Rwg => "rwg",
            Method::Subg => "subg",
            Method::XrmGroupDro { .. } => "xrm_group_dro",
            Method::XrmRwg => "xrm_rwg",
            Method::XrmSubg => "xrm_subg",
            Method::Sampled { method, .. } => method.name(),
        }
    }

    /// Whether the method needs XRM's outputs (held-out logits or inferred groups).
    pub fn needs_xrm(&self) -> bool {
        match self {
            Method::Sampled { method, .. } => method.needs_xrm(),
            m => matches!(
                m,
                Method::Mat { .. } | Method::XrmGroupDro { .. } | Method::XrmRwg | Method::XrmSubg
            ),
        }
    }

    /// Whether the method reads the true training groups (the paper's "group labels in
    /// training" column).
    pub fn uses_training_groups(&self) -> bool {
        match self {
            Method::Sampled { method, .. } => method.uses_training_groups(),
            m => matches!(m, Method::GroupDro { .. } | Method::Rwg | Method::Subg),
        }
    }

    /// The method without its sampler, and the sampler ([`Sampler::Shuffle`] unless wrapped).
    pub fn parts(&self) -> (&Method, Sampler) {
        match self {
            Method::Sampled { sampler, method } => (method, *sampler),
            m => (m, Sampler::Shuffle),
        }
    }

    /// How the method's batches are drawn.
    pub fn sampler(&self) -> Sampler {
        self.parts().1
    }

    /// Whether the method balances groups itself by resampling in the official code (RWG:
    /// its `WeightedRandomSampler` over group weights takes the place of `balanced_batch`,
    /// `XRM/datasets.py:47-52`).
    fn balances_groups(&self) -> bool {
        matches!(self, Method::Rwg | Method::XrmRwg)
    }

    /// The method trained on batches drawn by `sampler`, with the official precedence: RWG
    /// (on true or inferred groups) keeps its own balancing and is returned unchanged, as the
    /// official loader ignores `balanced_batch` for RWG (`XRM/datasets.py:47-52`).
    /// [`Sampler::Shuffle`] gives the plain method back (no wrapper, the same bits and files as
    /// before samplers existed).
    pub fn with_sampler(self, sampler: Sampler) -> Method {
        let base = match self {
            Method::Sampled { method, .. } => *method,
            m => m,
        };
        if sampler == Sampler::Shuffle || base.balances_groups() {
            base
        } else {
            Method::Sampled {
                sampler,
                method: Box::new(base),
            }
        }
    }
}

/// What [`run_method`] leaves: the training run and what the method decided on the way.
pub struct MethodOutcome {
    pub method: Method,
    /// The (final-stage) training run.
    pub outcome: TrainOutcome,
    /// JTT: the training rows the first-stage model misclassified (sorted).
    pub jtt_error_set: Option<Vec<usize>>,
    /// JTT and RWG (on true or inferred groups): the per-example weights of the training loss.
    pub row_weights: Option<Vec<f32>>,
    /// SUBG (on true or inferred groups): the training rows kept (sorted).
    pub subg_rows: Option<Vec<usize>>,
}

impl std::fmt::Debug for MethodOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodOutcome")
            .field("method", &self.method)
            .field("outcome", &self.outcome)
            .field("jtt_error_set", &self.jtt_error_set.as_ref().map(Vec::len))
            .field("subg_rows", &self.subg_rows.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// Runs `method` on `ds`; see [`run_method_with`].
pub fn run_method(
    ds: &Dataset,
    method: &Method,
    model_spec: &ModelSpec,
    cfg: &TrainConfig,
    xrm: Option<&XrmOutput>,
) -> Result<MethodOutcome> {
    run_method_with(ds, method, model_spec, cfg, xrm, &mut |_| Ok(()))
}

/// Builds `method`'s objective and runs [`train`](super::train::train), calling `on_checkpoint` for each checkpoint.
///
/// - ERM: `Objective::Mean`.
/// - GroupDRO: `Objective::GroupDro` on the true groups `n_attr · y + a`.
/// - JTT: stage 1 is exactly ERM with `steps = first_stage_steps` and the same seed (no
///   checkpoints); its misclassified training rows `E` get weight `lambda_up` (see
///   [`jtt_weights`]) in stage 2, a fresh model (initialized from a seed derived from
///   `cfg.seed`) trained for `cfg.steps` with `Objective::Weighted`.
/// - MAT: `Objective::Shifted` with [`super::mat::mat_shift_tensor`]`(xrm, tau)`.
/// - RWG: `Objective::Weighted` with `w_i = n / (G n_{g_i})` ([`group_weights_balanced`]), so
///   that the expected batch loss is the unweighted mean over present groups of each group's
///   mean loss. Weights, not a weighted sampler: every example is seen once per epoch.
/// - SUBG: `Objective::Mean` on [`subsample_groups`] of the true groups (seeded from
///   `cfg.seed`).
/// - XRM + GroupDRO: `Objective::GroupDro` on the inferred groups `2y + m` (`2K` groups).
/// - XRM + RWG, XRM + SUBG: RWG and SUBG with the inferred training groups `2y + m` (`2K`
///   groups) in place of the true ones, as the official code runs them when its group labels
///   are XRM's output (`XRM/datasets.py:143-145`, `221-222`: the inferred `m` replaces `a` on
///   training and validation).
/// - [`Method::Sampled`]: the wrapped method, every training loop of it (JTT's two stages)
///   drawing its batches with the sampler ([`train_sampled`]). Wrapping RWG, or a wrapper, is
///   an error.
///
/// When `xrm` is given (whatever the method), checkpoints also carry validation metrics over
/// the inferred groups (`va_gi`). MAT and the XRM-group methods without `xrm` are an error, as
/// is an `xrm` computed on another data set (sizes or labels differ).
pub fn run_method_with(
    ds: &Dataset,
    method: &Method,
    model_spec: &ModelSpec,
    cfg: &TrainConfig,
    xrm: Option<&XrmOutput>,
    on_checkpoint: &mut dyn FnMut(&Checkpoint) -> Result<()>,
) -> Result<MethodOutcome> {
    ds.validate()?;
    if method.needs_xrm() && xrm.is_none() {
        return Err(Error::arg(
            "xrm",
            format!(
                "{} needs XRM's outputs (held-out logits and inferred groups); run XRM first",
                method.name()
            ),
        ));
    }
    if let Some(x) = xrm {
        x.check_matches(ds)?;
    }
    let (base, sampler) = method.parts();
    if matches!(base, Method::Sampled { .. }) {
        return Err(Error::arg(
            "sampler",
            format!("{} has two samplers; give it one", base.name()),
        ));
    }
    if sampler != Sampler::Shuffle && base.balances_groups() {
        return Err(Error::arg(
            "sampler",
            format!(
                "{} cannot train on {sampler} batches: RWG balances its groups itself (the \
                 official loader ignores balanced_batch for RWG)",
                base.name()
            ),
        ));
    }
    let va_inferred_groups = xrm.map(|x| x.inferred_groups_va(ds));
    let mut jtt_error_set = None;
    let mut row_weights = None;
    let mut subg_rows = None;
    let mut run_cfg = cfg.clone();
    let (objective, rows) = match base {
        Method::Erm => (Objective::Mean, None),
        Method::GroupDro { eta } => (
            Objective::GroupDro {
                groups: ds.train.groups(ds.n_attr),
                n_groups: ds.n_groups(),
                eta: *eta,
            },
            None,
        ),
        Method::Jtt {
            first_stage_steps,
            lambda_up,
        } => {
            if *first_stage_steps == 0 {
                return Err(Error::arg("first_stage_steps", "must be at least 1"));
            }
            // Validate before spending the first stage.
            jtt_weights(0, &[], *lambda_up)?;
            let stage1_cfg = TrainConfig {
                steps: *first_stage_steps,
                eval_train: false,
                eval_valid: true,
                checkpoints_path: None,
                state_dir: None,
                ..cfg.clone()
            };
            let stage1_setup = TrainSetup {
                evaluate: false,
                ..TrainSetup::new(Objective::Mean)
            };
            let stage1 = train_sampled(
                ds,
                model_spec,
                &stage1_cfg,
                &stage1_setup,
                sampler,
                &mut |_| Ok(()),
            )?;
            let pred = predict(stage1.model.as_ref(), &ds.train, &cfg.device)?;
            let errors: Vec<usize> = (0..ds.train.n)
                .filter(|&i| pred[i] != ds.train.y[i])
                .collect();
            let w = jtt_weights(ds.train.n, &errors, *lambda_up)?;
            jtt_error_set = Some(errors);
            row_weights = Some(w.clone());
            run_cfg.seed = Rng::new(cfg.seed).fork(STREAM_JTT_STAGE2).next_u64();
            (Objective::Weighted(w), None)
        }
        Method::Mat { tau } => {
            let xrm = xrm.expect("checked above: MAT has XRM outputs");
            let shift = super::mat::mat_shift_tensor(xrm, ds, *tau, &cfg.device)?;
            (Objective::Shifted(shift), None)
        }
        Method::Rwg => {
            let w = group_weights_balanced(&ds.train.groups(ds.n_attr), ds.n_groups())?;
            row_weights = Some(w.clone());
            (Objective::Weighted(w), None)
        }
        Method::Subg => {
            let mut rng = Rng::new(cfg.seed).fork(STREAM_SUBG);
            let rows = subsample_groups(&ds.train.groups(ds.n_attr), ds.n_groups(), &mut rng);
            subg_rows = Some(rows.clone());
            (Objective::Mean, Some(rows))
        }
        Method::XrmGroupDro { eta } => {
            let xrm = xrm.expect("checked above: XRM + GroupDRO has XRM outputs");
            (
                Objective::GroupDro {
                    groups: xrm.inferred_groups_tr(ds),
                    n_groups: 2 * ds.classes,
                    eta: *eta,
                },
                None,
            )
        }
        Method::XrmRwg => {
            let xrm = xrm.expect("checked above: XRM + RWG has XRM outputs");
            let w = group_weights_balanced(&xrm.inferred_groups_tr(ds), 2 * ds.classes)?;
            row_weights = Some(w.clone());
            (Objective::Weighted(w), None)
        }
        Method::XrmSubg => {
            let xrm = xrm.expect("checked above: XRM + SUBG has XRM outputs");
            let mut rng = Rng::new(cfg.seed).fork(STREAM_SUBG);
            let rows = subsample_groups(&xrm.inferred_groups_tr(ds), 2 * ds.classes, &mut rng);
            subg_rows = Some(rows.clone());
            (Objective::Mean, Some(rows))
        }
        Method::Sampled { .. } => unreachable!("a sampler around a sampler was refused above"),
    };
    let setup = TrainSetup {
        objective,
        rows,
        va_inferred_groups,
        evaluate: true,
    };
    let outcome = train_sampled(ds, model_spec, &run_cfg, &setup, sampler, on_checkpoint)?;
    Ok(MethodOutcome {
        method: method.clone(),
        outcome,
        jtt_error_set,
        row_weights,
        subg_rows,
    })
}
