//! `emh experiment`: every model × intervention of a TOML file, each an
//! `emh eval` run in its own directory, then one summary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use serde::Deserialize;

use crate::eval;

/// Arguments of `emh experiment`.
#[derive(Args)]
pub struct ExperimentCmd {
    /// The experiment file (TOML); see `emh experiment --help`.
    pub file: PathBuf,
    /// Only print the runs it would make.
    #[arg(long)]
    pub dry_run: bool,
}

/// A model or organism to evaluate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    /// Names the run directory.
    name: String,
    model: Option<String>,
    #[serde(default)]
    adapters: Vec<String>,
    /// NAME=CONFIG of a model plugin.
    organism: Option<String>,
}

/// Interventions applied together.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InterventionEntry {
    name: String,
    /// NAME=CONFIG of intervention plugins, applied in order.
    #[serde(default)]
    plugins: Vec<String>,
}

/// The experiment file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Experiment {
    questions: PathBuf,
    out: PathBuf,
    select: Option<String>,
    #[serde(default)]
    no_variants: bool,
    n: Option<u32>,
    max_new_tokens: Option<usize>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    batch_size: Option<usize>,
    device: Option<String>,
    dtype: Option<String>,
    judge: Option<String>,
    metrics: Option<Vec<String>>,
    judge_cache: Option<PathBuf>,
    models: Vec<ModelEntry>,
    #[serde(default)]
    interventions: Vec<InterventionEntry>,
}

/// Paths in the file are relative to the file's folder.
fn relative(base: &Path, p: &Path) -> String {
    base.join(p).display().to_string()
}

/// The `emh eval` command line of one model × intervention.
fn eval_args(
    x: &Experiment,
    base: &Path,
    m: &ModelEntry,
    i: Option<&InterventionEntry>,
) -> (String, Vec<String>) {
    let name = match i {
        Some(i) => format!("{}__{}", m.name, i.name),
        None => m.name.clone(),
    };
    let mut a: Vec<String> = vec!["emh".into(), "eval".into()];
    let mut opt = |k: &str, v: String| {
        a.push(format!("--{k}"));
        a.push(v);
    };
    opt("questions", relative(base, &x.questions));
    opt("out", relative(base, &x.out.join(&name)));
    opt("run-id", name.clone());
    let settings = [
        ("select", x.select.clone()),
        ("n", x.n.map(|v| v.to_string())),
        ("max-new-tokens", x.max_new_tokens.map(|v| v.to_string())),
        ("temperature", x.temperature.map(|v| v.to_string())),
        ("top-p", x.top_p.map(|v| v.to_string())),
        ("seed", x.seed.map(|v| v.to_string())),
        ("batch-size", x.batch_size.map(|v| v.to_string())),
        ("device", x.device.clone()),
        ("dtype", x.dtype.clone()),
        ("judge", x.judge.clone()),
        ("metrics", x.metrics.as_ref().map(|v| v.join(","))),
        (
            "judge-cache",
            x.judge_cache.as_ref().map(|v| relative(base, v)),
        ),
    ];
    for (k, v) in settings {
        if let Some(v) = v {
            opt(k, v);
        }
    }
    if let Some(v) = &m.model {
        opt("model", v.clone());
    }
    for ad in &m.adapters {
        opt("adapter", relative(base, Path::new(ad)));
    }
    if let Some(v) = &m.organism {
        opt("organism", v.clone());
    }
    for p in i.map(|i| i.plugins.as_slice()).unwrap_or_default() {
        opt("intervention", p.clone());
    }
    if x.no_variants {
        a.push("--no-variants".into());
    }
    (name, a)
}

/// The `eval` subcommand alone, to parse generated command lines.
#[derive(Parser)]
#[command(name = "emh")]
struct EvalOnly {
    #[command(subcommand)]
    command: EvalSub,
}

#[derive(clap::Subcommand)]
enum EvalSub {
    Eval(eval::EvalCmd),
}

/// `emh experiment`.
pub fn run(a: ExperimentCmd) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let x: Experiment = toml::from_str(&text)
        .with_context(|| format!("{}: not a valid experiment", a.file.display()))?;
    if x.models.is_empty() {
        bail!("{}: no [[models]]", a.file.display());
    }
    let base = a.file.parent().unwrap_or(Path::new("."));
    let interventions: Vec<Option<&InterventionEntry>> = if x.interventions.is_empty() {
        vec![None]
    } else {
        x.interventions.iter().map(Some).collect()
    };
    let mut runs = Vec::new();
    for m in &x.models {
        for i in &interventions {
            runs.push(eval_args(&x, base, m, *i));
        }
    }
    for (name, args) in &runs {
        eprintln!("{name}: {}", args.join(" "));
    }
    if a.dry_run {
        return Ok(());
    }
    let mut summary = Vec::new();
    for (name, args) in &runs {
        eprintln!("\n== {name}");
        let EvalSub::Eval(cmd) = EvalOnly::try_parse_from(args)
            .with_context(|| format!("run `{name}`"))?
            .command;
        let rows = eval::run_eval(cmd).with_context(|| format!("run `{name}`"))?;
        summary.push((name.clone(), rows));
    }
    println!(
        "\n{:<36} {:<16} {:>8}  {:<17} {:>6}",
        "run", "metric", "value", "95% CI", "n"
    );
    for (name, rows) in &summary {
        for r in rows.iter().filter(|r| {
            r.scope == emh_metrics::Scope::Overall
                && ["em_rate", "coherence_rate", "misaligned_rate"].contains(&r.metric.as_str())
        }) {
            let pct = |v: Option<f64>| {
                v.map(|v| format!("{:.1}%", v * 100.0))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "{:<36} {:<16} {:>8}  {:<17} {:>6}",
                name,
                r.metric,
                pct(r.value),
                format!("[{}, {}]", pct(r.ci_low), pct(r.ci_high)),
                r.n
            );
        }
    }
    Ok(())
}
