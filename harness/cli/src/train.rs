//! `emh train`: LoRA adapters trained on chat JSONL from a TOML config.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use emh_tables::{write_columns, Values};
use emh_train::{StepLog, TrainConfig, Trainer};

#[derive(Args)]
pub struct TrainCmd {
    /// The training config (TOML); paths in it are relative to it.
    config: PathBuf,
    /// Write checkpoints and the adapter here instead of the config's output_dir.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

pub fn train(a: TrainCmd) -> anyhow::Result<()> {
    let mut config = TrainConfig::from_file(&a.config)?;
    if let Some(dir) = a.output_dir {
        config.output_dir = dir;
    }
    let out = config.output_dir.clone();
    let mut trainer = Trainer::new(config)?;
    let examples = trainer.examples();
    let trained: usize = examples.iter().map(|e| e.trained_tokens()).sum();
    eprintln!(
        "{} examples, {} tokens, {trained} of them trained{}",
        examples.len(),
        examples.iter().map(|e| e.ids.len()).sum::<usize>(),
        if trainer.dropped > 0 {
            format!(
                "; {} left out (no answer token within max_seq_length)",
                trainer.dropped
            )
        } else {
            String::new()
        }
    );
    if trainer.done_steps() == trainer.total_steps() {
        eprintln!(
            "{} is already trained ({} steps): nothing to do",
            out.display(),
            trainer.total_steps()
        );
    } else if let Some(dir) = &trainer.resumed_from {
        eprintln!(
            "resuming from {} (step {} of {})",
            dir.display(),
            trainer.done_steps(),
            trainer.total_steps()
        );
    }
    let bar = crate::progress::bar(trainer.total_steps() as u64, "training");
    bar.set_position(trainer.done_steps() as u64);
    trainer.run(|log: &StepLog| {
        bar.set_position(log.step as u64);
        bar.set_message(format!(
            "loss {:.4}, lr {:.2e}, {:.0} tok/s",
            log.loss,
            log.learning_rate,
            log.tokens as f64 / log.seconds.max(1e-9)
        ));
    })?;
    bar.finish();
    let log = trainer.log_history();
    let path = out.join("loss.parquet");
    write_columns(
        &path,
        "loss",
        vec![
            (
                "step",
                Values::Ints(log.iter().map(|l| l.step as i64).collect()),
            ),
            (
                "epoch",
                Values::Floats(log.iter().map(|l| l.epoch).collect()),
            ),
            ("loss", Values::Floats(log.iter().map(|l| l.loss).collect())),
            (
                "learning_rate",
                Values::Floats(log.iter().map(|l| l.learning_rate).collect()),
            ),
            (
                "grad_norm",
                Values::Floats(log.iter().map(|l| l.grad_norm).collect()),
            ),
            (
                "trained_tokens",
                Values::Ints(log.iter().map(|l| l.trained_tokens as i64).collect()),
            ),
            (
                "tokens",
                Values::Ints(log.iter().map(|l| l.tokens as i64).collect()),
            ),
            (
                "seconds",
                Values::Floats(log.iter().map(|l| l.seconds).collect()),
            ),
        ],
    )
    .with_context(|| format!("writing {}", path.display()))?;
    let (first, last) = (log.first(), log.last());
    if let (Some(f), Some(l)) = (first, last) {
        println!(
            "trained {} steps: loss {:.4} -> {:.4} (mean over trained tokens)",
            l.step, f.loss, l.loss
        );
    }
    println!("adapter: {}", out.display());
    println!("loss log: {}", path.display());
    Ok(())
}

#[derive(Args)]
pub struct CheckpointsCmd {
    /// A training output folder holding checkpoint-N/ adapters.
    dir: PathBuf,
    /// An experiment over the checkpoints (a model entry with `checkpoints`):
    /// adds its EM rate and log-prob preference per step, from the
    /// conditions without interventions.
    #[arg(long)]
    experiment: Option<PathBuf>,
    /// Writes the table (one row per checkpoint and adapter) as Parquet.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

pub fn checkpoints(a: CheckpointsCmd) -> anyhow::Result<()> {
    let t = emh_train::trajectory(&a.dir)?;
    let evals = match &a.experiment {
        Some(dir) => {
            let by_step = emh_experiment::by_checkpoint(&emh_experiment::read_summary(dir)?);
            if by_step.is_empty() {
                anyhow::bail!(
                    "{}: no condition of a checkpoint (MODEL@checkpoint-N) without interventions",
                    dir.display()
                );
            }
            Some(by_step)
        }
        None => None,
    };
    let fmt = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3}"));
    println!(
        "{} checkpoints of {}; final B from {}",
        t.checkpoints.len(),
        a.dir.display(),
        t.final_adapter.display()
    );
    print!("| step | adapter | ‖B‖ | cos(B, final B) | cos(B, previous B) |");
    if evals.is_some() {
        print!(" EM | log-prob pref |");
    }
    println!();
    println!(
        "|---|---|---|---|---|{}",
        if evals.is_some() { "---|---|" } else { "" }
    );
    let eval_at = |step: u64| {
        evals
            .as_ref()
            .and_then(|e| e.get(&step))
            .map_or((None, None), |e| (e.em, e.logprob_pref))
    };
    for p in &t.points {
        print!(
            "| {} | {} | {:.4} | {:.3} | {} |",
            p.step,
            p.adapter,
            p.b_norm,
            p.cos_to_final,
            fmt(p.cos_to_previous)
        );
        if evals.is_some() {
            let (em, pref) = eval_at(p.step);
            print!(" {} | {} |", fmt(em), fmt(pref));
        }
        println!();
    }
    println!();
    println!("Rotation peaks (lowest cosine between consecutive checkpoints):");
    for (adapter, (step, cos)) in t.rotation_peaks() {
        println!("  {adapter}: step {step} (cos {cos:.3})");
    }
    if let Some(path) = &a.out {
        let p = &t.points;
        let mut cols = vec![
            (
                "step",
                Values::Ints(p.iter().map(|p| p.step as i64).collect()),
            ),
            (
                "adapter",
                Values::Strings(p.iter().map(|p| p.adapter.clone()).collect()),
            ),
            (
                "b_norm",
                Values::Floats(p.iter().map(|p| p.b_norm).collect()),
            ),
            (
                "cos_to_final",
                Values::Floats(p.iter().map(|p| p.cos_to_final).collect()),
            ),
            (
                "cos_to_previous",
                Values::MaybeFloats(p.iter().map(|p| p.cos_to_previous).collect()),
            ),
        ];
        if evals.is_some() {
            let at: Vec<(Option<f64>, Option<f64>)> = p.iter().map(|p| eval_at(p.step)).collect();
            cols.push(("em", Values::MaybeFloats(at.iter().map(|e| e.0).collect())));
            cols.push((
                "logprob_pref",
                Values::MaybeFloats(at.iter().map(|e| e.1).collect()),
            ));
        }
        write_columns(path, "checkpoints", cols)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("table: {}", path.display());
    }
    Ok(())
}
