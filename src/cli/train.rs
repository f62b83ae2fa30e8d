//! `memaware train`: phase 2 of the pipeline, one method on one data set (PAPER.md §2, §4, §5).
//!
//! Runs [`run_method_with`] and writes into `OUT/<method>-<data>-seed<seed>/`:
//! - `checkpoints.jsonl`: one JSON record per checkpoint (every `--checkpoint-freq` steps and
//!   at the last step), each flushed as it is made, so a run that stops early keeps every
//!   finished record;
//! - `summary.json`: the configuration (written first, with `"complete": false`, so an
//!   interrupted run still says what it was), then, at the end, the checkpoint selected under
//!   each applicable criterion (`va_wga`, `va_avg`, and `va_gi_wga` when `--xrm` gives
//!   inferred validation groups) with its validation and test metrics. The selected checkpoint
//!   is the last one that reaches the best value.
//!
//! It prints the checkpoint selected by `--select`: its step, average, worst-group and
//! worst-class accuracy on validation and test, and accuracy per group with counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::common::{self, RunArgs};
use crate::algo::model::{ModelSpec, OptimizerSpec};
use crate::algo::sweep::MethodKind;
use crate::algo::xrm::{XrmOutput, XRM_JSON_FILE, XRM_TENSORS_FILE};
use crate::algo::{run_method_with, Method, MethodOutcome, TrainConfig};
use crate::data::batch::Sampler;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::metrics::SplitMetrics;
use crate::eval::selection::{select_checkpoint_with, Checkpoint, Criterion, StepZero};
use crate::recipes::DEFAULTS_HELP;

const SUMMARY_FORMAT: &str = "memaware-train-v1";
/// File names inside a training run's folder.
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";

/// Arguments of `memaware train`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = DEFAULTS_HELP)]
pub struct Args {
    /// Training method: erm, group_dro (GroupDRO on the true training groups, step size
    /// --eta), jtt (Just Train Twice: ERM for --jtt-steps, then a fresh model with that model's
    /// training errors weighted --jtt-lambda), mat (memorization-aware training: logits +
    /// shift from XRM's held-out logits at temperature --tau; needs --xrm), rwg (every true
    /// training group weighs the same), subg (every true training group subsampled to the
    /// smallest one's size), xrm_group_dro (GroupDRO on XRM's inferred groups; needs --xrm),
    /// xrm_rwg and xrm_subg (rwg and subg on XRM's inferred training groups; need --xrm).
    /// Hyphens work too, and groupdro, xrm-groupdro.
    #[arg(long, value_name = "METHOD")]
    pub method: MethodKind,
    #[command(flatten)]
    pub run: RunArgs,
    /// Folder written by `memaware xrm` on the same --data and data seed (it holds
    /// xrm.safetensors and xrm.json). Required for mat and xrm_group_dro; with any other method
    /// it adds validation metrics over the inferred groups, which --select va_gi_wga needs.
    /// Required for mat, xrm_group_dro, xrm_rwg and xrm_subg.
    #[arg(long, value_name = "DIR")]
    pub xrm: Option<PathBuf>,
    /// MAT temperature: the held-out logits are divided by tau before the softmax
    #[arg(long, value_name = "TAU", default_value_t = 0.1, value_parser = common::parse_positive, allow_hyphen_values = true)]
    pub tau: f32,
    /// GroupDRO step size: q_g ← q_g·exp(eta·loss_g) per batch (group_dro, xrm_group_dro)
    #[arg(long, value_name = "ETA", default_value_t = 0.01, value_parser = common::parse_non_negative, allow_hyphen_values = true)]
    pub eta: f32,
    /// JTT: steps of the first (ERM) stage whose training errors get upweighted
    /// [default: round(0.2 × --steps), at least 1]
    #[arg(long, value_name = "N", value_parser = common::parse_count, allow_hyphen_values = true)]
    pub jtt_steps: Option<usize>,
    /// JTT: weight of the first stage's training errors in the second stage
    #[arg(long, value_name = "LAMBDA", default_value_t = 20.0, value_parser = common::parse_positive, allow_hyphen_values = true)]
    pub jtt_lambda: f32,
    /// Evaluate on validation and test every this many steps (and at the last step)
    /// [default: per data set]
    #[arg(long, value_name = "N", value_parser = common::parse_count, allow_hyphen_values = true)]
    pub checkpoint_freq: Option<usize>,
    /// Criterion that selects the checkpoint printed: va_wga (validation worst-group accuracy
    /// with group annotations), va_gi_wga (over XRM-inferred validation groups; needs --xrm),
    /// va_avg (validation average accuracy), va_wca (validation worst-class accuracy: no
    /// annotation, the official `--group_labels no`). summary.json records va_wga, va_avg,
    /// va_gi_wga when it applies, and this one.
    #[arg(long, value_name = "CRITERION", default_value = "va_wga",
          value_parser = clap::builder::PossibleValuesParser::new(["va_wga", "va_gi_wga", "va_avg", "va_wca"]))]
    pub select: String,
    /// How training batches are drawn: shuffle (every example once per epoch) or
    /// class_balanced (with replacement, every class equally likely: the official
    /// `balanced_batch`; not with rwg or xrm_rwg)
    #[arg(long, value_name = "SAMPLER", default_value = "shuffle")]
    pub sampler: Sampler,
    /// Also evaluate on the training set at each checkpoint (recorded as `tr`)
    #[arg(long)]
    pub eval_train: bool,
    /// Whether the step-0 checkpoint may be selected: `drop` (the official rule) or `keep`.
    #[arg(long, value_name = "RULE", default_value = "drop")]
    pub step_zero: StepZero,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            method: MethodKind::Erm,
            run: RunArgs::default(),
            xrm: None,
            tau: 0.1,
            eta: 0.01,
            jtt_steps: None,
            jtt_lambda: 20.0,
            checkpoint_freq: None,
            select: "va_wga".into(),
            sampler: Sampler::Shuffle,
            eval_train: false,
            step_zero: StepZero::Drop,
        }
    }
}

impl Args {
    /// The library's [`Method`] for these flags, checked before any work starts.
    pub fn method(&self, steps: usize) -> Result<Method> {
        let check_eta = || -> Result<()> {
            if self.eta.is_finite() && self.eta >= 0.0 {
                Ok(())
            } else {
                Err(Error::arg(
                    "eta",
                    format!("must be finite and >= 0, got {}", self.eta),
                ))
            }
        };
        if self.sampler != Sampler::Shuffle
            && matches!(self.method, MethodKind::Rwg | MethodKind::XrmRwg)
        {
            return Err(Error::arg(
                "sampler",
                format!(
                    "--method {} balances its groups itself; --sampler {} does not apply (the \
                     official loader ignores balanced_batch for RWG)",
                    self.method, self.sampler
                ),
            ));
        }
        let method = match self.method {
            MethodKind::Erm => Method::Erm,
            MethodKind::GroupDro => {
                check_eta()?;
                Method::GroupDro { eta: self.eta }
            }
            MethodKind::Jtt => {
                let first_stage_steps = self
                    .jtt_steps
                    .unwrap_or(((steps as f64 * 0.2).round() as usize).max(1));
                if first_stage_steps == 0 {
                    return Err(Error::arg("jtt_steps", "must be at least 1"));
                }
                if !(self.jtt_lambda.is_finite() && self.jtt_lambda > 0.0) {
                    return Err(Error::arg(
                        "jtt_lambda",
                        format!("must be positive and finite, got {}", self.jtt_lambda),
                    ));
                }
                Method::Jtt {
                    first_stage_steps,
                    lambda_up: self.jtt_lambda,
                }
            }
            MethodKind::Mat => {
                if !(self.tau.is_finite() && self.tau > 0.0) {
                    return Err(Error::arg(
                        "tau",
                        format!("must be positive and finite, got {}", self.tau),
                    ));
                }
                Method::Mat { tau: self.tau }
            }
            MethodKind::Rwg => Method::Rwg,
            MethodKind::Subg => Method::Subg,
            MethodKind::XrmGroupDro => {
                check_eta()?;
                Method::XrmGroupDro { eta: self.eta }
            }
            MethodKind::XrmRwg => Method::XrmRwg,
            MethodKind::XrmSubg => Method::XrmSubg,
        };
        Ok(method.with_sampler(self.sampler))
    }
}

/// The configuration part of `summary.json`.
#[derive(Serialize)]
struct RunRecord {
    method: MethodKind,
    method_spec: Method,
    data: String,
    data_name: String,
    data_seed: u64,
    n_train: usize,
    n_valid: usize,
    n_test: usize,
    features: usize,
    classes: usize,
    n_attr: usize,
    model: String,
    model_spec: ModelSpec,
    optimizer: OptimizerSpec,
    steps: usize,
    batch_size: usize,
    full_batch: bool,
    checkpoint_freq: usize,
    seed: u64,
    device: String,
    xrm: Option<PathBuf>,
    xrm_degenerate: Option<String>,
    eval_train: bool,
    select: Criterion,
}

/// The checkpoint one criterion selects.
#[derive(Serialize)]
struct Selected {
    value: f64,
    checkpoint_index: usize,
    checkpoint: Checkpoint,
}

fn is_drop(z: &StepZero) -> bool {
    *z == StepZero::Drop
}

/// `summary.json`.
#[derive(Serialize)]
struct Summary<'a> {
    format: &'static str,
    complete: bool,
    /// `running` (written first; still there after a kill: interrupted), `complete` or
    /// `failed`.
    status: &'static str,
    /// Why the run failed.
    error: Option<String>,
    config: &'a RunRecord,
    n_checkpoints: usize,
    final_train_loss: Option<f64>,
    steps_per_s: Option<f64>,
    /// Criterion name → selected checkpoint.
    selected: BTreeMap<&'static str, Selected>,
    /// The step-0 rule of `selected` (left out when it is the official `drop`).
    #[serde(skip_serializing_if = "is_drop")]
    step_zero: StepZero,
    /// JTT: how many training examples the first stage misclassified.
    jtt_error_count: Option<usize>,
    /// SUBG: how many training examples the subsample kept.
    subg_rows: Option<usize>,
    /// GroupDRO: the group weights after the last step.
    group_dro_q: Option<Vec<f64>>,
}

/// Runs `memaware train`.
pub fn run(args: &Args) -> Result<()> {
    let select: Criterion = args.select.parse()?;
    if args.method.needs_xrm() && args.xrm.is_none() {
        return Err(Error::arg(
            "xrm",
            format!(
                "--method {} needs XRM's outputs: pass --xrm DIR, the folder `memaware xrm` \
                 wrote for the same --data (run `memaware xrm` first)",
                args.method.name()
            ),
        ));
    }
    if select == Criterion::VaGiWga && args.xrm.is_none() {
        return Err(Error::arg(
            "select",
            "va_gi_wga selects over XRM-inferred validation groups: pass --xrm DIR",
        ));
    }
    let ds = args.run.load_data()?;
    let r = args.run.resolve(&ds)?;
    let method = args.method(r.steps)?;
    let checkpoint_freq = args.checkpoint_freq.unwrap_or(r.defaults.checkpoint_freq);
    if checkpoint_freq == 0 {
        return Err(Error::arg("checkpoint_freq", "must be at least 1"));
    }
    let xrm_dir = args
        .xrm
        .as_ref()
        .map(|dir| locate_xrm_dir(dir, &args.run, &ds))
        .transpose()?;
    let xrm = xrm_dir
        .as_ref()
        .map(|dir| XrmOutput::load(dir, &ds))
        .transpose()?;
    if let Some(why) = xrm.as_ref().and_then(|x| x.degenerate.as_ref()) {
        eprintln!(
            "warning: the XRM output's inferred groups are degenerate ({why}); va_gi_wga and \
             xrm_group_dro rely on them"
        );
    }

    let label = format!(
        "{}-{}-seed{}",
        args.method.name(),
        args.run.data_label(&ds),
        args.run.seed
    );
    if Path::new(&args.run.data).exists() {
        println!(
            "run folder label `{}`: the file's stem and a digest of its full path, so that files \
             with the same name never share a folder",
            args.run.data_label(&ds)
        );
    }
    // A folder this run creates and that holds nothing when the run fails is removed again.
    let existed = args.run.out.join(&label).exists();
    let dir = common::run_dir(&args.run.out, &label)?;
    let checkpoints_path = dir.join(CHECKPOINTS_FILE);
    let summary_path = dir.join(SUMMARY_FILE);
    let record = RunRecord {
        method: args.method,
        method_spec: method.clone(),
        data: args.run.data.clone(),
        data_name: ds.name.clone(),
        data_seed: args.run.data_seed(),
        n_train: ds.train.n,
        n_valid: ds.valid.n,
        n_test: ds.test.n,
        features: ds.d(),
        classes: ds.classes,
        n_attr: ds.n_attr,
        model: r.model.to_string(),
        model_spec: r.model.clone(),
        optimizer: r.optimizer.clone(),
        steps: r.steps,
        batch_size: r.batch_size,
        full_batch: r.batch_size >= ds.train.n && args.sampler == Sampler::Shuffle,
        checkpoint_freq,
        seed: args.run.seed,
        device: args.run.device.clone(),
        xrm: xrm_dir.clone(),
        xrm_degenerate: xrm.as_ref().and_then(|x| x.degenerate.clone()),
        eval_train: args.eval_train,
        select,
    };
    crate::io::write_json(
        &summary_path,
        &Summary {
            format: SUMMARY_FORMAT,
            complete: false,
            status: "running",
            error: None,
            config: &record,
            n_checkpoints: 0,
            final_train_loss: None,
            steps_per_s: None,
            selected: BTreeMap::new(),
            step_zero: args.step_zero,
            jtt_error_count: None,
            subg_rows: None,
            group_dro_q: None,
        },
    )?;
    println!(
        "{} on {} ({} train / {} validation / {} test), seed {}: model {}, {}, {} steps, \
         batch {}{}{}, checkpoint every {}",
        args.method.name(),
        ds.name,
        ds.train.n,
        ds.valid.n,
        ds.test.n,
        args.run.seed,
        record.model,
        r.optimizer,
        r.steps,
        r.batch_size,
        if record.full_batch { " (full)" } else { "" },
        match args.sampler {
            Sampler::Shuffle => String::new(),
            s => format!(" ({s}, with replacement)"),
        },
        checkpoint_freq
    );

    let cfg = TrainConfig {
        steps: r.steps,
        batch_size: r.batch_size,
        optimizer: r.optimizer.clone(),
        checkpoint_freq,
        seed: args.run.seed,
        device: r.device.clone(),
        eval_train: args.eval_train,
        // The command selects checkpoints on validation.
        eval_valid: true,
        checkpoints_path: Some(checkpoints_path.clone()),
        // Rerunning the same command continues a killed run from its last checkpoint.
        state_dir: Some(dir.clone()),
    };
    let bar = common::progress_bar(r.steps as u64, args.method.name());
    let result = run_method_with(&ds, &method, &r.model, &cfg, xrm.as_ref(), &mut |cp| {
        bar.set_position(cp.step as u64 + 1);
        Ok(())
    });
    bar.finish_and_clear();
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            let n_checkpoints = crate::io::read_jsonl_lenient::<Checkpoint>(&checkpoints_path)
                .map_or(0, |(cps, _)| cps.len());
            if !existed && n_checkpoints == 0 {
                // Nothing to keep: no folder is left that could pass for a run.
                if std::fs::remove_dir_all(&dir).is_ok() {
                    eprintln!(
                        "the run failed before its first checkpoint; removed {}",
                        dir.display()
                    );
                    return Err(e);
                }
            }
            crate::io::write_json(
                &summary_path,
                &Summary {
                    format: SUMMARY_FORMAT,
                    complete: false,
                    status: "failed",
                    error: Some(e.to_string()),
                    config: &record,
                    n_checkpoints,
                    final_train_loss: None,
                    steps_per_s: None,
                    selected: BTreeMap::new(),
                    step_zero: args.step_zero,
                    jtt_error_count: None,
                    subg_rows: None,
                    group_dro_q: None,
                },
            )?;
            return Err(e);
        }
    };

    let summary = summarize(&record, &outcome, xrm.is_some(), args.step_zero, select)?;
    crate::io::write_json(&summary_path, &summary)?;
    print_report(&ds, &summary, select, &outcome);
    println!(
        "wrote {} ({} checkpoints) and {}",
        checkpoints_path.display(),
        summary.n_checkpoints,
        summary_path.display()
    );
    Ok(())
}

/// The XRM output folder `--xrm DIR` names: `DIR` itself, or, when `DIR` is the `--out`
/// folder of `memaware xrm` (no `xrm.json` in it, but one in the subfolder `memaware xrm` names
/// for this data set and seed), that subfolder.
fn locate_xrm_dir(dir: &Path, run: &RunArgs, ds: &Dataset) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(Error::arg(
            "xrm",
            format!(
                "`{}` is not a folder; pass the folder `memaware xrm` printed (it holds {} and {})",
                dir.display(),
                XRM_TENSORS_FILE,
                XRM_JSON_FILE
            ),
        ));
    }
    if !dir.join(XRM_JSON_FILE).exists() {
        let inner = super::xrm::output_dir(
            &RunArgs {
                out: dir.to_path_buf(),
                ..run.clone()
            },
            ds,
        );
        if inner.join(XRM_JSON_FILE).is_file() {
            println!("using XRM output {}", inner.display());
            return Ok(inner);
        }
    }
    Ok(dir.to_path_buf())
}

fn summarize<'a>(
    record: &'a RunRecord,
    outcome: &MethodOutcome,
    has_inferred_groups: bool,
    step_zero: StepZero,
    select: Criterion,
) -> Result<Summary<'a>> {
    let cps = &outcome.outcome.checkpoints;
    let mut selected = BTreeMap::new();
    for criterion in Criterion::ALL {
        if criterion == Criterion::VaGiWga && !has_inferred_groups {
            continue;
        }
        // The worst-class criterion is recorded when it selects (summary.json keeps its
        // keys otherwise).
        if criterion == Criterion::VaWca && select != Criterion::VaWca {
            continue;
        }
        let (index, value) = select_checkpoint_with(cps, criterion, step_zero)?;
        selected.insert(
            criterion.name(),
            Selected {
                value,
                checkpoint_index: index,
                checkpoint: cps[index].clone(),
            },
        );
    }
    let final_loss = outcome.outcome.final_train_loss;
    Ok(Summary {
        format: SUMMARY_FORMAT,
        complete: true,
        status: "complete",
        error: None,
        config: record,
        n_checkpoints: cps.len(),
        final_train_loss: final_loss.is_finite().then_some(final_loss),
        steps_per_s: Some(outcome.outcome.steps_per_s),
        selected,
        step_zero,
        jtt_error_count: outcome.jtt_error_set.as_ref().map(Vec::len),
        subg_rows: outcome.subg_rows.as_ref().map(Vec::len),
        group_dro_q: outcome.outcome.group_dro_q.clone(),
    })
}

fn print_report(ds: &Dataset, summary: &Summary, select: Criterion, outcome: &MethodOutcome) {
    println!(
        "{:.1} steps/s, final training loss {}",
        outcome.outcome.steps_per_s,
        summary
            .final_train_loss
            .map_or_else(|| "-".to_string(), |l| format!("{l:.4}"))
    );
    for (name, s) in &summary.selected {
        println!(
            "  {name:<9} selects step {:>6} ({name} = {:.4})",
            s.checkpoint.step, s.value
        );
    }
    let Some(chosen) = summary.selected.get(select.name()) else {
        return;
    };
    let cp = &chosen.checkpoint;
    println!("selected by {select}: step {}", cp.step);
    println!(
        "  {:<10} {:>8} {:>11} {:>11}",
        "split", "avg acc", "worst-group", "worst-class"
    );
    let row = |name: &str, m: &SplitMetrics| {
        println!(
            "  {:<10} {:>8.3} {:>11.3} {:>11.3}",
            name, m.avg_acc, m.worst_group_acc, m.worst_class_acc
        );
    };
    let Some(va) = cp.va.as_ref() else {
        return;
    };
    row("validation", va);
    row("test", &cp.te);
    if let Some(gi) = &cp.va_gi {
        row("va (y,m)", gi);
    }
    println!(
        "  {:>5} {:>3} {:>3}  {:>16}  {:>16}",
        "group", "y", "a", "validation (n)", "test (n)"
    );
    for g in 0..ds.n_groups() {
        let (nv, nt) = (va.group_count[g], cp.te.group_count[g]);
        if nv == 0 && nt == 0 {
            continue;
        }
        println!(
            "  {:>5} {:>3} {:>3}  {:>7} ({:>6})  {:>7} ({:>6})",
            g,
            g / ds.n_attr,
            g % ds.n_attr,
            common::fmt_acc(va.group_acc[g]),
            nv,
            common::fmt_acc(cp.te.group_acc[g]),
            nt
        );
    }
}
