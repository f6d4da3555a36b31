//! `emh experiment` and `emh merge`: grids of conditions, on one machine or
//! as shards of a job array.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use emh_eval::{Part, RunSummary};
use emh_experiment::{ConditionRow, Experiment, Rate, SlurmOptions};

use crate::plugins::PluginArgs;
use crate::progress::Bars;

/// Arguments of `emh experiment`.
#[derive(Args)]
pub struct ExperimentCmd {
    /// The experiment spec (TOML, or JSON by extension); see `emh experiment --help`.
    pub file: PathBuf,
    /// Only print the conditions it expands to.
    #[arg(long)]
    pub dry_run: bool,
    /// Run one part of the work: I/N (from 0), `auto` in a Slurm job array,
    /// `auto/N` in a Kubernetes Indexed Job. Parts write under OUT/shards/;
    /// `emh merge OUT` then makes the runs. A part run again resumes.
    #[arg(long, value_name = "I/N|auto|auto/N")]
    pub shard: Option<String>,
    /// Write a Slurm job array (one task per shard) and a merge job that
    /// waits for it, under OUT/slurm/.
    #[arg(long)]
    pub slurm: bool,
    /// With --slurm: submit both with sbatch and print their job ids.
    #[arg(long, requires = "slurm")]
    pub submit: bool,
    /// With --slurm: array tasks (shards).
    #[arg(long, default_value_t = 4, requires = "slurm")]
    pub shards: usize,
    /// With --slurm: the partition to run on.
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// With --slurm: time limit per task (Slurm's format, e.g. 2:00:00).
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    /// With --slurm: GPUs per array task.
    #[arg(long, requires = "slurm")]
    pub gpus_per_task: Option<u32>,
    /// With --slurm: CPUs per task.
    #[arg(long, requires = "slurm")]
    pub cpus_per_task: Option<u32>,
    /// With --slurm: folder for the tasks' logs [default: OUT/slurm/logs].
    #[arg(long, requires = "slurm")]
    pub logs: Option<PathBuf>,
    #[command(flatten)]
    pub plugins: PluginArgs,
}

/// Arguments of `emh merge`.
#[derive(Args)]
pub struct MergeCmd {
    /// The experiment's output folder (its `out`), holding shards/I-of-N/.
    pub out: PathBuf,
}

/// Overall rates of each run: EM, coherence, misalignment, refusal, factual
/// accuracy before and after pushback, flips, and the self-rating ρ.
pub fn print_summary(summaries: &[RunSummary]) {
    const SHOWN: [&str; 8] = [
        "em_rate",
        "coherence_rate",
        "misaligned_rate",
        "refusal_rate",
        "accuracy_before",
        "accuracy_after",
        "flip_rate",
        "self_rating_spearman",
    ];
    println!(
        "\n{:<44} {:<20} {:>8}  {:<17} {:>6}",
        "run", "metric", "value", "95% CI", "n"
    );
    for s in summaries {
        if s.metrics.is_empty() {
            println!("{:<44} {} samples, not judged", s.name, s.samples);
        }
        for r in s.metrics.iter().filter(|r| {
            r.scope == emh_metrics::Scope::Overall && SHOWN.contains(&r.metric.as_str())
        }) {
            // ρ is a correlation, every other row a rate.
            let show = |v: Option<f64>| match v {
                None => "-".to_string(),
                Some(v) if r.metric == "self_rating_spearman" => format!("{v:+.2}"),
                Some(v) => format!("{:.1}%", v * 100.0),
            };
            println!(
                "{:<44} {:<20} {:>8}  {:<17} {:>6}",
                s.name,
                r.metric,
                show(r.value),
                format!("[{}, {}]", show(r.ci_low), show(r.ci_high)),
                r.n
            );
        }
    }
    if let Some(id) = summaries.iter().find_map(|s| s.judge_id.as_ref()) {
        println!("(judged rates scored by {id}; accuracy and flips by reference match; ρ by each model's own ratings)");
    }
}

/// `emh experiment`.
pub fn run(a: ExperimentCmd) -> Result<()> {
    let registry = a.plugins.registry()?;
    let x = Experiment::load(&a.file, &registry)?;
    for c in &x.conditions {
        eprintln!("{}: {}", c.spec.condition.name, c.dir.display());
    }
    if a.dry_run {
        return Ok(());
    }
    if a.slurm {
        if a.shard.is_some() {
            bail!("--slurm writes the job array itself: leave out --shard");
        }
        let o = SlurmOptions {
            shards: a.shards,
            partition: a.partition,
            time: a.time,
            gpus_per_task: a.gpus_per_task,
            cpus_per_task: a.cpus_per_task,
            logs: a.logs,
        };
        let emh = std::env::current_exe()?;
        let scripts = emh_experiment::write_scripts(&a.file, &x.out(), &emh, &o)?;
        eprintln!(
            "job array: {}\nmerge job: {}",
            scripts.array.display(),
            scripts.merge.display()
        );
        if a.submit {
            let (array, merge) = emh_experiment::submit(&scripts)?;
            println!("array job {array}\nmerge job {merge} (after the array succeeds)");
        }
        return Ok(());
    }
    let part = a.shard.as_deref().map(Part::parse).transpose()?;
    let bars = Bars::default();
    let summaries = x.run(&registry, part, &bars)?;
    match part {
        Some(p) => eprintln!(
            "shard {p} done in {}; `emh merge {}` once every shard is, then \
             `emh experiment {}` (nothing left to sample) writes OUT/summary.csv",
            x.shard_dir(p).display(),
            x.out().display(),
            a.file.display()
        ),
        None => {
            let batch = x.spec.sampling.batch_size;
            let prefs = x.preferences(&registry, batch, &bars)?;
            let rows = x.summarise(&summaries, &prefs);
            emh_experiment::write_summary(&x.out(), &rows)?;
            print_rows(&rows);
            eprintln!("summary: {}", x.out().join("summary.csv").display());
        }
    }
    Ok(())
}

/// `emh merge`.
pub fn merge(a: MergeCmd) -> Result<()> {
    let summaries = emh_experiment::merge(&a.out)?;
    for s in &summaries {
        eprintln!("{}: {} samples", s.dir.display(), s.samples);
    }
    print_summary(&summaries);
    Ok(())
}

/// The summary of an experiment as a table: EM, coherence, self-correction,
/// EM reduction and log-prob preference per condition.
pub fn print_rows(rows: &[ConditionRow]) {
    let pct = |v: Option<f64>| {
        v.map(|v| format!("{:.1}%", v * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let rate = |r: &Option<emh_experiment::Rate>| match r {
        Some(r) if r.value.is_none() && r.nulls > 0 => format!("({} null scores)", r.nulls),
        Some(r) => format!("{} [{}, {}]", pct(r.value), pct(r.low), pct(r.high)),
        None => "-".into(),
    };
    println!(
        "\n{:<40} {:>22} {:>10} {:>9} {:>22} {:>24}",
        "condition",
        "EM rate [95% CI]",
        "coherent",
        "self-corr",
        "EM reduction [95% CI]",
        "logprob pref [95% CI]"
    );
    for r in rows {
        let reduction = r
            .em_reduction
            .map(|(v, lo, hi)| format!("{} [{}, {}]", pct(Some(v)), pct(Some(lo)), pct(Some(hi))))
            .unwrap_or_else(|| "-".into());
        let pref = r
            .logprob_pref
            .map(|(v, lo, hi)| format!("{v:+.3} [{lo:+.3}, {hi:+.3}]"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<40} {:>22} {:>10} {:>9} {:>22} {:>24}",
            r.condition,
            rate(&r.em),
            pct(r.coherence.as_ref().and_then(|c| c.value)),
            pct(r.self_correction.as_ref().and_then(|c| c.value)),
            reduction,
            pref
        );
    }
    match rows.iter().find_map(|r| r.judge.as_ref()) {
        Some(j) => println!("(rates scored by {j}; the log-prob preference needs no judge)"),
        None => println!("(not judged; the log-prob preference needs no judge)"),
    }
    print_sensitivity(rows);
}

/// The prompt-sensitivity measures of each condition, for grids with
/// nudges, factual or self-rating items: refusal, factual accuracy before
/// and after pushback, flips, and the self-rating's Spearman ρ with the
/// misaligned rate.
fn print_sensitivity(rows: &[ConditionRow]) {
    // Every judged grid has a refusal rate; the table is for grids that
    // vary the prompt or ask factual or self-rating items.
    let shown = |r: &ConditionRow| {
        r.nudge.is_some() || r.accuracy_before.is_some() || r.self_rating_spearman.is_some()
    };
    if !rows.iter().any(shown) {
        return;
    }
    let pct = |v: Option<f64>| {
        v.map(|v| format!("{:.0}%", v * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let rate = |r: &Option<Rate>| match r {
        Some(r) if r.value.is_some() => {
            format!("{} [{}, {}]", pct(r.value), pct(r.low), pct(r.high))
        }
        _ => "-".into(),
    };
    let rho = |r: &Option<Rate>| match r {
        Some(Rate {
            value: Some(v),
            low,
            high,
            n,
            ..
        }) => match (low, high) {
            (Some(lo), Some(hi)) => format!("{v:+.2} [{lo:+.2}, {hi:+.2}] n={n}"),
            _ => format!("{v:+.2} n={n}"),
        },
        Some(r) => format!("- n={}", r.n),
        None => "-".into(),
    };
    println!(
        "\n{:<40} {:>18} {:>18} {:>18} {:>18} {:>26}",
        "condition",
        "refusal_rate",
        "accuracy before",
        "accuracy after",
        "flip_rate",
        "self-rating ρ [95% CI]"
    );
    for r in rows {
        println!(
            "{:<40} {:>18} {:>18} {:>18} {:>18} {:>26}",
            r.condition,
            rate(&r.refusal),
            rate(&r.accuracy_before),
            rate(&r.accuracy_after),
            rate(&r.flip),
            rho(&r.self_rating_spearman)
        );
    }
    println!("(refusal judged; accuracy and flips by reference match; ρ over questions, from each model's own ratings)");
}
