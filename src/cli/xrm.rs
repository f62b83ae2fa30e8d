//! `memaware xrm` (alias `memaware heldout`): phase 1 of the pipeline (PAPER.md §3).
//!
//! With `--estimator xrm` (the default) it trains the XRM twins with [`run_xrm`]; with
//! `kfold:K` it cross-fits K fold models ([`run_kfold`]) with the same steps, batch, optimizer
//! and seed; with `external:PATH` it reads held-out logits from a file
//! ([`crate::algo::heldout`]). Each saves `xrm.safetensors` and `xrm.json` (the held-out
//! logits, the dynamic labels and the inferred group bits, [`XrmOutput::save`]) into
//! `OUT/xrm-<data>-seed<seed>/` (XRM), `OUT/kfold<K>-<data>-seed<seed>/` or
//! `OUT/external-<data>-<file label>/`, which `memaware train --xrm` reads. It prints the final
//! flip rate `mean_i 1[y_dyn,i ≠ y_i]` (K-fold and external: the held-out error rate), the
//! held-out accuracy per true training group, the counts of the inferred groups `(y, m)`, their
//! precision and recall against the true minority
//! ([`crate::algo::heldout::inference_quality`], also in `xrm.json`), and a warning when those
//! groups are degenerate (some class lacks a bit value on train or validation).

use std::path::PathBuf;

use super::common::{self, RunArgs};
use crate::algo::heldout::{inference_quality, output_from_file, read_heldout_file};
use crate::algo::kfold::{run_kfold, KfoldConfig};
use crate::algo::sweep::Estimator;
use crate::algo::xrm::{run_xrm, XrmConfig, XrmLoss, XrmOutput, XRM_JSON_FILE, XRM_TENSORS_FILE};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::recipes::DEFAULTS_HELP;

/// XRM's held-in loss on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossArg {
    /// Sum over the classes present in the batch of the mean CE over that class's rows
    /// (classes by dynamic label).
    ClassBalanced,
    /// Plain mean CE over the batch (the paper's Figure-1 script).
    Mean,
}

impl From<LossArg> for XrmLoss {
    fn from(l: LossArg) -> Self {
        match l {
            LossArg::ClassBalanced => XrmLoss::ClassBalanced,
            LossArg::Mean => XrmLoss::Mean,
        }
    }
}

/// Arguments of `memaware xrm`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = DEFAULTS_HELP)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,
    /// Held-in loss of the twins, on the dynamic labels [default: per data set]
    #[arg(long, value_enum)]
    pub loss: Option<LossArg>,
    /// Record the flip rate every this many steps (and at the last step)
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub log_every: usize,
    /// Phase-1 estimator: `xrm` (the twins), `kfold:K` (K fold models of --steps steps each,
    /// stratified by class) or `external:PATH` (held-out logits from a file, e.g. written by
    /// PyTorch: a .safetensors file with `tr.logits` [n_tr, K] and optionally `tr.ids`,
    /// `tr.m`, `tr.y`, `va.logits`, `va.ids`, `va.m`, `va.y`; a .npy file of `tr.logits`; or a
    /// folder of `<name>.npy` files. Rows match by example id when ids are given, else by
    /// row. Without `va.m` or `va.logits` every validation example gets bit 0)
    #[arg(long, value_name = "EST", default_value = "xrm")]
    pub estimator: Estimator,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            run: RunArgs::default(),
            loss: None,
            log_every: 10,
            estimator: Estimator::Xrm,
        }
    }
}

/// The folder `memaware xrm` writes for these arguments on `ds`:
/// `OUT/xrm-<data label>-seed<seed>`.
pub fn output_dir(run: &RunArgs, ds: &Dataset) -> PathBuf {
    run.out
        .join(format!("xrm-{}-seed{}", run.data_label(ds), run.seed))
}

/// The folder `memaware xrm --estimator EST` writes: [`output_dir`] for XRM,
/// `OUT/kfold<K>-<data label>-seed<seed>` for K-fold, `OUT/external-<data label>-<file
/// label>` for a held-out file ([`common::file_label`]).
pub fn output_dir_for(run: &RunArgs, ds: &Dataset, estimator: &Estimator) -> PathBuf {
    match estimator {
        Estimator::Xrm => output_dir(run, ds),
        Estimator::Kfold { folds } => run.out.join(format!(
            "kfold{folds}-{}-seed{}",
            run.data_label(ds),
            run.seed
        )),
        Estimator::External(path) => {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "heldout".into());
            let label = common::file_safe(&common::file_label(path, &stem));
            run.out
                .join(format!("external-{}-{label}", run.data_label(ds)))
        }
    }
}

/// Runs `memaware xrm`.
pub fn run(args: &Args) -> Result<()> {
    let ds = args.run.load_data()?;
    let r = args.run.resolve(&ds)?;
    let loss: XrmLoss = args.loss.map_or(r.defaults.xrm_loss, XrmLoss::from);
    if args.log_every == 0 {
        return Err(Error::arg("log_every", "must be at least 1"));
    }
    let cfg = XrmConfig {
        steps: r.steps,
        batch_size: r.batch_size,
        optimizer: r.optimizer.clone(),
        loss,
        seed: args.run.seed,
        device: r.device.clone(),
        log_every: args.log_every,
    };
    let dir = output_dir_for(&args.run, &ds, &args.estimator);
    let what = match &args.estimator {
        Estimator::Xrm => "XRM".to_string(),
        Estimator::Kfold { folds } => format!("{folds}-fold cross-fitting"),
        Estimator::External(path) => format!("held-out file {}", path.display()),
    };
    println!(
        "{what} on {} ({} train / {} validation / {} test, d = {}, K = {}), seed {}",
        ds.name,
        ds.train.n,
        ds.valid.n,
        ds.test.n,
        ds.d(),
        ds.classes,
        args.run.seed
    );
    let out = match &args.estimator {
        Estimator::External(path) => {
            let file = read_heldout_file(path, &ds)?;
            let by = |id: bool| if id { "example id" } else { "row" };
            println!(
                "  training rows matched by {}; validation groups from {}",
                by(file.tr_by_id),
                match (&file.va_m, &file.va_logits) {
                    (Some(_), _) => format!("va.m (matched by {})", by(file.va_by_id)),
                    (None, Some(_)) => format!(
                        "the held-out errors of va.logits (matched by {})",
                        by(file.va_by_id)
                    ),
                    (None, None) => "nowhere: no va.m or va.logits (all bits 0)".into(),
                }
            );
            output_from_file(&file, &ds, &r.model)
        }
        estimator => {
            println!(
                "  model {}, {}, {} steps{}, batch {}{}{}",
                r.model,
                r.optimizer,
                r.steps,
                match estimator {
                    Estimator::Kfold { .. } => " per fold model",
                    _ => "",
                },
                r.batch_size,
                if r.batch_size >= ds.train.n {
                    " (full)"
                } else {
                    ""
                },
                match (estimator, loss) {
                    (Estimator::Kfold { .. }, _) => ", loss mean",
                    (_, XrmLoss::ClassBalanced) => ", loss class-balanced",
                    (_, XrmLoss::Mean) => ", loss mean",
                }
            );
            let spinner = common::spinner(&format!("{what}, {} steps", r.steps));
            let result = match estimator {
                Estimator::Kfold { folds } => run_kfold(
                    &ds,
                    &r.model,
                    &KfoldConfig {
                        folds: *folds,
                        steps: cfg.steps,
                        batch_size: cfg.batch_size,
                        optimizer: cfg.optimizer.clone(),
                        seed: cfg.seed,
                        device: cfg.device.clone(),
                    },
                ),
                _ => run_xrm(&ds, &r.model, &cfg),
            };
            spinner.finish_and_clear();
            result?
        }
    };
    out.save(&dir, &ds)?;
    print_report(&out, &ds, &args.estimator);
    println!(
        "saved {} and {} in {}",
        XRM_TENSORS_FILE,
        XRM_JSON_FILE,
        dir.display()
    );
    Ok(())
}

/// Prints the flip rate, held-out accuracy per true group, inferred-group counts, their
/// precision and recall, and the degeneracy verdict.
fn print_report(out: &XrmOutput, ds: &Dataset, estimator: &Estimator) {
    match estimator {
        Estimator::Xrm => println!(
            "flip rate: {:.4} final ({:.1} steps/s)",
            out.final_flip_rate, out.steps_per_s
        ),
        _ => println!("held-out error rate: {:.4}", out.final_flip_rate),
    }
    let counts = Split::counts(&ds.train.groups(ds.n_attr), ds.n_groups());
    println!("held-out accuracy per true training group (g = n_attr·y + a):");
    println!(
        "  {:>5} {:>3} {:>3} {:>7} {:>8}",
        "group", "y", "a", "n", "accuracy"
    );
    for (g, acc) in out.heldout_acc_by_group.iter().enumerate() {
        if counts[g] == 0 {
            continue;
        }
        println!(
            "  {:>5} {:>3} {:>3} {:>7} {:>8}",
            g,
            g / ds.n_attr,
            g % ds.n_attr,
            counts[g],
            common::fmt_acc(*acc)
        );
    }
    let k2 = 2 * ds.classes;
    let inferred_tr = Split::counts(&out.inferred_groups_tr(ds), k2);
    let inferred_va = Split::counts(&out.inferred_groups_va(ds), k2);
    println!(
        "inferred groups (y, m), m = 1 when {}:",
        match estimator {
            Estimator::Xrm => "either twin mispredicts y",
            Estimator::Kfold { .. } => "the example's held-out fold model mispredicts y",
            Estimator::External(_) => "the file's m says so, else when its logits mispredict y",
        }
    );
    println!(
        "  {:>3} {:>3} {:>7} {:>10}",
        "y", "m", "train", "validation"
    );
    for g in 0..k2 {
        println!(
            "  {:>3} {:>3} {:>7} {:>10}",
            g / 2,
            g % 2,
            inferred_tr[g],
            inferred_va[g]
        );
    }
    if let Some(q) = inference_quality(out, ds) {
        for line in q.lines() {
            println!("{line}");
        }
    }
    if let Some(why) = &out.degenerate {
        eprintln!(
            "warning: the inferred groups are degenerate: {why}; selection by va_gi_wga and \
             XRM + GroupDRO on these groups will be unreliable"
        );
    }
}
