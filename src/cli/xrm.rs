//! `memaware xrm`: phase 1 of the pipeline (PAPER.md §3).
//!
//! Trains the XRM twins with [`run_xrm`] and saves the held-out logits, the dynamic labels
//! and the inferred group bits with [`XrmOutput::save`] into
//! `OUT/xrm-<data>-seed<seed>/` (`xrm.safetensors` + `xrm.json`), which `memaware train
//! --xrm` reads. It prints the final flip rate `mean_i 1[y_dyn,i ≠ y_i]`, the held-out accuracy
//! per true training group, the counts of the inferred groups `(y, m)` with
//! `m = 1[A mispredicts y] ∨ 1[B mispredicts y]`, and a warning when those groups are
//! degenerate (some class lacks a bit value on train or validation).

use std::path::PathBuf;

use super::common::{self, RunArgs};
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
}

impl Default for Args {
    fn default() -> Self {
        Args {
            run: RunArgs::default(),
            loss: None,
            log_every: 10,
        }
    }
}

/// The folder `memaware xrm` writes for these arguments on `ds`:
/// `OUT/xrm-<data label>-seed<seed>`.
pub fn output_dir(run: &RunArgs, ds: &Dataset) -> PathBuf {
    run.out
        .join(format!("xrm-{}-seed{}", run.data_label(ds), run.seed))
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
    let dir = output_dir(&args.run, &ds);
    println!(
        "XRM on {} ({} train / {} validation / {} test, d = {}, K = {}), seed {}",
        ds.name,
        ds.train.n,
        ds.valid.n,
        ds.test.n,
        ds.d(),
        ds.classes,
        args.run.seed
    );
    println!(
        "  model {}, {}, {} steps, batch {}{}, loss {}",
        r.model,
        r.optimizer,
        r.steps,
        r.batch_size,
        if r.batch_size >= ds.train.n {
            " (full)"
        } else {
            ""
        },
        match loss {
            XrmLoss::ClassBalanced => "class-balanced",
            XrmLoss::Mean => "mean",
        }
    );
    let spinner = common::spinner(&format!("XRM, {} steps", r.steps));
    let result = run_xrm(&ds, &r.model, &cfg);
    spinner.finish_and_clear();
    let out = result?;
    out.save(&dir, &ds)?;
    print_report(&out, &ds);
    println!(
        "saved {} and {} in {}",
        XRM_TENSORS_FILE,
        XRM_JSON_FILE,
        dir.display()
    );
    Ok(())
}

/// Prints the flip rate, held-out accuracy per true group, inferred-group counts and the
/// degeneracy verdict.
fn print_report(out: &XrmOutput, ds: &Dataset) {
    println!(
        "flip rate: {:.4} final ({:.1} steps/s)",
        out.final_flip_rate, out.steps_per_s
    );
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
    println!("inferred groups (y, m), m = 1 when either twin mispredicts y:");
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
    if let Some(why) = &out.degenerate {
        eprintln!(
            "warning: the inferred groups are degenerate: {why}; selection by va_gi_wga and \
             XRM + GroupDRO on these groups will be unreliable"
        );
    }
}
