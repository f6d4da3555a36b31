//! `emh regress`: a regression gate for CI.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use emh_regress::{Policy, Side, Verdict};

use crate::eval::ThresholdArgs;

/// Arguments of `emh regress`.
#[derive(Args)]
pub struct RegressCmd {
    /// The baseline: a run directory or a judged CSV.
    pub baseline: PathBuf,
    /// The candidate: a run directory or a judged CSV.
    pub candidate: PathBuf,
    /// Policy file (TOML, `[[rule]]` tables: metric, scope = overall|question,
    /// change = increase|decrease, by_more_than, p_below, action = fail|warn)
    /// [default: fail if EM rises by more than 2 points overall with p < 0.05;
    /// warn on a question's EM rising so, and on coherence or self-correction
    /// dropping by more than 5 points].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The baseline's judge, when several scored it.
    #[arg(long)]
    pub judge_a: Option<String>,
    /// The candidate's judge, when several scored it.
    #[arg(long)]
    pub judge_b: Option<String>,
    /// Compare even when the question sets or judge prompts differ.
    #[arg(long)]
    pub allow_mismatch: bool,
    /// Also write the Markdown summary here (e.g. $GITHUB_STEP_SUMMARY).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Write JUnit XML here: one test case per rate, scope and question.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

fn gate(a: &RegressCmd) -> Result<Verdict> {
    let policy = match &a.policy {
        Some(p) => Policy::read(p)?,
        None => Policy::default(),
    };
    let thresholds = a.thresholds.thresholds()?;
    let base = Side::load(&a.baseline, a.judge_a.as_deref(), &thresholds)?;
    let cand = Side::load(&a.candidate, a.judge_b.as_deref(), &thresholds)?;
    let checks = emh_regress::compare(&base, &cand, &policy, a.allow_mismatch)?;
    let md = emh_regress::markdown(&base, &cand, &checks);
    print!("{md}");
    if let Some(path) = &a.markdown {
        emh_atomic::write(path, md.as_bytes())?;
    }
    if let Some(path) = &a.junit {
        emh_atomic::write(path, emh_regress::junit(&checks).as_bytes())?;
    }
    Ok(checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Pass))
}

/// `emh regress`: exits 0 on pass (warnings included), 1 on a regression,
/// 2 when the two cannot be compared.
pub fn regress(a: RegressCmd) -> Result<()> {
    match gate(&a) {
        Ok(Verdict::Fail) => std::process::exit(1),
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2)
        }
    }
}
