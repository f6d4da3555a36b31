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
    #[arg(required_unless_present = "series")]
    pub baseline: Option<PathBuf>,
    /// The candidate: a run directory or a judged CSV.
    #[arg(required_unless_present = "series")]
    pub candidate: Option<PathBuf>,
    /// A checkpoint series instead (runs in training order, e.g.
    /// runs/checkpoint-*): EM at each, the first checkpoint whose EM differs
    /// significantly from the first's, a change-point, and with --plot the
    /// trajectory. Exits 1 when a checkpoint differs.
    #[arg(long, num_args = 2.., conflicts_with_all = ["baseline", "candidate", "policy"])]
    pub series: Vec<PathBuf>,
    /// Significance level of the series' comparisons with the first checkpoint.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Folder for the series' trajectory plot (em_trajectory.png and .svg).
    #[arg(long, requires = "series")]
    pub plot: Option<PathBuf>,
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

/// A checkpoint series: fails when any checkpoint differs from the first.
fn series(a: &RegressCmd) -> Result<Verdict> {
    let thresholds = a.thresholds.thresholds()?;
    let s = emh_regress::series(
        &a.series,
        a.judge_a.as_deref(),
        &thresholds,
        a.alpha,
        a.allow_mismatch,
    )?;
    let md = s.markdown();
    print!("{md}");
    if let Some(path) = &a.markdown {
        emh_atomic::write(path, md.as_bytes())?;
    }
    if let Some(dir) = &a.plot {
        std::fs::create_dir_all(dir)?;
        let fig = emh_charts::save(&s.chart(), dir, "em_trajectory")?;
        eprintln!(
            "trajectory: {} and {}",
            fig.png.display(),
            fig.svg.display()
        );
    }
    Ok(match s.first_significant {
        Some(_) => Verdict::Fail,
        None => Verdict::Pass,
    })
}

fn gate(a: &RegressCmd) -> Result<Verdict> {
    if !a.series.is_empty() {
        return series(a);
    }
    let (Some(baseline), Some(candidate)) = (&a.baseline, &a.candidate) else {
        anyhow::bail!("give a baseline and a candidate, or --series");
    };
    let policy = match &a.policy {
        Some(p) => Policy::read(p)?,
        None => Policy::default(),
    };
    let thresholds = a.thresholds.thresholds()?;
    let base = Side::load(baseline, a.judge_a.as_deref(), &thresholds)?;
    let cand = Side::load(candidate, a.judge_b.as_deref(), &thresholds)?;
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
