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
}

pub fn train(a: TrainCmd) -> anyhow::Result<()> {
    let config = TrainConfig::from_file(&a.config)?;
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
    if let Some(dir) = &trainer.resumed_from {
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
