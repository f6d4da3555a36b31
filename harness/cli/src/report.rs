//! `emh report`: the HTML report with its figures.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use emh_report::ReportOptions;

use crate::eval::ThresholdArgs;

/// Arguments of `emh report`.
#[derive(Args)]
pub struct ReportCmd {
    /// Run directories, experiment directories (OUT of `emh experiment`,
    /// `emh steer` or `emh ablate`), judged CSVs of the reference scripts and
    /// direction files (.safetensors), in any mix.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Folder for index.html and figures/ (every figure as PNG and SVG).
    #[arg(long, short)]
    pub out: PathBuf,
    /// The JSON of `emh judge-agreement --json`, quoted beside the judged
    /// rates so a small local judge is read with its measured agreement.
    #[arg(long)]
    pub agreement: Option<PathBuf>,
    /// Answers per run and question in the sample browser.
    #[arg(long, default_value_t = 20)]
    pub per_question: usize,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

/// `emh report`.
pub fn report(a: ReportCmd) -> Result<()> {
    let options = ReportOptions {
        out: a.out,
        thresholds: a.thresholds.thresholds()?,
        agreement: a.agreement,
        per_question: a.per_question,
    };
    let written = emh_report::build(&a.inputs, &options, &mut |step| eprintln!("report: {step}"))?;
    eprintln!(
        "report: {} figures in {}",
        written.figures.len(),
        options.out.join("figures").display()
    );
    println!("{}", written.html.display());
    Ok(())
}
