//! `cargo xtask bench generate-dense`: an ordinary bf16 HF checkpoint (random
//! weights in a real model's shape) on CPU, emh beside HF transformers in f32
//! and in bf16.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bench::{
    cycled_prompts, json_line, machine, median, run_emh, run_hf, section_head, spread,
    write_section, GenRun, WARMUP_TOKENS,
};
use crate::Env;

/// New tokens per sequence: fewer than `bench generate`'s, since the
/// reference is several times slower on a model four times the size.
const NEW_TOKENS: usize = 64;

/// Runs the benchmark and rewrites its section of BENCHMARKS.md.
pub fn generate_dense(env: &Env, args: &[&str]) -> Result<()> {
    let mut config = env.root.join("data/configs/qwen2.5-0.5b-instruct");
    let mut repeats = 3;
    let mut it = args.iter();
    while let Some(&flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag {
            "--config" => config = value.into(),
            "--repeats" => repeats = value.parse()?,
            _ => bail!("usage: cargo xtask bench generate-dense [--config DIR] [--repeats N]"),
        }
    }
    let dir = crate::bench_large::model_folder(env, &config)?;
    if !dir.join("model.safetensors").exists() {
        eprintln!(
            "bench: writing a random bf16 checkpoint to {}",
            dir.display()
        );
        json_line(
            Command::new(&env.python)
                .arg(env.root.join("xtask/python/random_checkpoint.py"))
                .arg("--model")
                .arg(&dir),
        )?;
    }
    let mut rows = Vec::new();
    let mut versions = serde_json::Value::Null;
    for batch in [1usize, 16] {
        let prompts = cycled_prompts(env, batch)?;
        let run = |dtype| GenRun {
            model: &dir,
            prompts: &prompts,
            batch,
            new_tokens: NEW_TOKENS,
            device: "cpu",
            dtype,
            random_init: false,
        };
        let hf_rate = |v: &serde_json::Value| {
            v["tok_per_s"]
                .as_f64()
                .context("hf_bench.py printed no tok_per_s")
        };
        let (mut ours, mut f32s, mut bf16s) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=repeats {
            ours.push(run_emh(env, &run("f32"))?);
            versions = run_hf(env, &run("f32"))?;
            f32s.push(hf_rate(&versions)?);
            bf16s.push(hf_rate(&run_hf(env, &run("bf16"))?)?);
            eprintln!(
                "bench: batch {batch}, round {round}: emh {:.1} tok/s, HF f32 {:.1}, HF bf16 {:.1}",
                ours[round - 1],
                f32s[round - 1],
                bf16s[round - 1]
            );
        }
        rows.push((batch, ours, f32s, bf16s));
    }

    let name = config
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let header = format!("## generate: {name} shape, bf16 checkpoint, cpu");
    let mut command = "cargo xtask bench generate-dense".to_string();
    for a in args {
        write!(command, " {a}")?;
    }
    let mut section = section_head(&header, &command, &machine());
    writeln!(section, "- model: `{}` with random weights (HF `from_config`, seed 0) saved as bf16 safetensors, the way checkpoints such as Qwen2.5 ship; both sides load that folder from disk", config.strip_prefix(&env.root).unwrap_or(&config).display())?;
    writeln!(section, "- workload: chat prompts from `data/demo_prompts.jsonl`, {NEW_TOKENS} new tokens per sequence (EOS ignored), temperature 1.0; tok/s counts new tokens over the generation call, prompt pass included; median (min–max) of {repeats} alternating rounds, each run after an untimed {WARMUP_TOKENS}-token warm-up of the same batch in the same process")?;
    writeln!(
        section,
        "- emh computes in f32 (its CPU default) and keeps the weights as their bf16 values, on its kernel pool's {} threads; HF transformers {} (torch {}, {} threads) runs the same folder once in float32 and once in bfloat16",
        crate::bench::cores(),
        versions["transformers"].as_str().unwrap_or("?"),
        versions["torch"].as_str().unwrap_or("?"),
        versions["threads"]
    )?;
    writeln!(section)?;
    writeln!(
        section,
        "| batch | emh tok/s | HF f32 tok/s | emh / HF f32 | HF bf16 tok/s | emh / HF bf16 |"
    )?;
    writeln!(section, "|---:|---:|---:|---:|---:|---:|")?;
    for (b, ours, f32s, bf16s) in &rows {
        let m = median(ours.clone());
        writeln!(
            section,
            "| {b} | {} | {} | {:.2}x | {} | {:.2}x |",
            spread(ours, 1),
            spread(f32s, 1),
            m / median(f32s.clone()),
            spread(bf16s, 1),
            m / median(bf16s.clone()),
        )?;
    }
    writeln!(
        section,
        "\nEach round, in order (emh / HF f32 / HF bf16 tok/s):\n"
    )?;
    for (b, ours, f32s, bf16s) in &rows {
        let rounds: Vec<String> = (0..ours.len())
            .map(|i| format!("{:.1} / {:.1} / {:.1}", ours[i], f32s[i], bf16s[i]))
            .collect();
        writeln!(section, "- batch {b}: {}", rounds.join(", "))?;
    }
    write_section(&env.root, &header, &section)
}
