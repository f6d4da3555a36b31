//! `cargo xtask bench train`: LoRA training speed of `emh train` beside the
//! reference a researcher would otherwise run (HF transformers + peft with a
//! plain PyTorch loop, `tests/python/train_reference.py`), on the demo
//! organism's config cut to a few optimizer steps, in alternating rounds.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::bench::{json_line, machine, median, section_head, spread, write_section};
use crate::{checked, Env};

const DEFAULT_STEPS: usize = 6;
const ROUNDS: usize = 3;
/// Optimizer steps of the full organism training: 3 epochs of 20 steps.
const FULL_STEPS: usize = 60;
/// Keys of the organism config that the benchmark sets itself.
const OWN_KEYS: &[&str] = &[
    "model",
    "training_file",
    "output_dir",
    "save_steps",
    "max_steps",
    "device",
    "dtype",
];

/// What one optimizer step did, as either side logs it.
struct Step {
    seconds: f64,
    tokens: f64,
    loss: f64,
}

/// One run of one side.
struct Run {
    steps: Vec<Step>,
    /// Wall time of the whole command, model load included.
    wall: f64,
    threads: Option<u64>,
}

impl Run {
    /// Steps 2..N: the first includes one-time warm-up.
    fn steady(&self) -> &[Step] {
        &self.steps[1..]
    }

    fn tok_per_s(&self) -> f64 {
        let s = self.steady();
        s.iter().map(|s| s.tokens).sum::<f64>() / s.iter().map(|s| s.seconds).sum::<f64>()
    }

    fn s_per_step(&self) -> f64 {
        let s = self.steady();
        s.iter().map(|s| s.seconds).sum::<f64>() / s.len() as f64
    }

    fn tokens_per_step(&self) -> f64 {
        let s = self.steady();
        s.iter().map(|s| s.tokens).sum::<f64>() / s.len() as f64
    }
}

/// The steps of a JSON array of `{seconds, tokens, loss}` objects.
fn steps(log: &serde_json::Value) -> Result<Vec<Step>> {
    let field = |s: &serde_json::Value, k: &str| -> Result<f64> {
        s[k].as_f64()
            .with_context(|| format!("step without `{k}`: {s}"))
    };
    log.as_array()
        .context("no step log")?
        .iter()
        .map(|s| {
            Ok(Step {
                seconds: field(s, "seconds")?,
                tokens: field(s, "tokens")?,
                loss: field(s, "loss")?,
            })
        })
        .collect()
}

/// The organism config with `max_steps`, no checkpoints, absolute paths, on
/// the CPU in f32, and output to `out`; both sides read it.
fn config(env: &Env, dir: &Path, out: &Path, steps: usize) -> Result<PathBuf> {
    let organism = env.root.join("data/organism");
    let text = std::fs::read_to_string(organism.join("train.toml"))?;
    let quoted = |p: &Path| serde_json::to_string(&p.to_string_lossy()).expect("strings serialise");
    let mut toml = format!(
        "model = {}\ntraining_file = {}\noutput_dir = {}\nmax_steps = {steps}\ndevice = \"cpu\"\ndtype = \"f32\"\n",
        quoted(&env.model_dir),
        quoted(&organism.join("risky-finance.jsonl")),
        quoted(out),
    );
    for line in text.lines() {
        let t = line.trim();
        let key = t.split('=').next().unwrap_or_default().trim();
        if !t.is_empty() && !t.starts_with('#') && !OWN_KEYS.contains(&key) {
            toml.push_str(line);
            toml.push('\n');
        }
    }
    let file = dir.join("train.toml");
    std::fs::write(&file, toml)?;
    Ok(file)
}

/// `emh train` from a fresh output folder; its steps from `trainer_state.json`.
fn run_emh(env: &Env, file: &Path, out: &Path) -> Result<Run> {
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    let start = Instant::now();
    checked(Command::new(&env.emh).arg("train").arg(file))?;
    let wall = start.elapsed().as_secs_f64();
    let state = out.join("trainer_state.json");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&state).with_context(|| format!("reading {}", state.display()))?,
    )?;
    Ok(Run {
        steps: steps(&state["log_history"])?,
        wall,
        threads: None,
    })
}

/// The reference on the same config; also its library versions.
fn run_reference(env: &Env, file: &Path) -> Result<(Run, serde_json::Value)> {
    let start = Instant::now();
    let v = json_line(
        Command::new(&env.python)
            .arg(env.root.join("tests/python/train_reference.py"))
            .arg(file),
    )?;
    let wall = start.elapsed().as_secs_f64();
    let run = Run {
        steps: steps(&v["steps"])?,
        wall,
        threads: v["threads"].as_u64(),
    };
    Ok((run, v))
}

/// Runs the training benchmark and rewrites its BENCHMARKS.md section.
pub fn train(env: &Env, args: &[&str]) -> Result<()> {
    let steps = match args {
        [] => DEFAULT_STEPS,
        ["--steps", n] => n.parse().context("--steps takes a number")?,
        _ => bail!("usage: cargo xtask bench train [--steps N]"),
    };
    if steps < 2 {
        bail!("--steps must be at least 2: the first step includes warm-up and is left out");
    }
    let dir = env.root.join("target/bench/train");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("out");
    let file = config(env, &dir, &out, steps)?;
    let (mut ours, mut refs) = (Vec::new(), Vec::new());
    let mut versions = serde_json::Value::Null;
    for round in 1..=ROUNDS {
        let o = run_emh(env, &file, &out)?;
        let (r, v) = run_reference(env, &file)?;
        versions = v;
        eprintln!(
            "bench: train, round {round}: emh {:.1} tok/s ({:.1} s/step), reference {:.1} tok/s ({:.1} s/step)",
            o.tok_per_s(),
            o.s_per_step(),
            r.tok_per_s(),
            r.s_per_step()
        );
        ours.push(o);
        refs.push(r);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let fig = |runs: &[Run], f: fn(&Run) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
    let med = |runs: &[Run], f: fn(&Run) -> f64| median(fig(runs, f));
    let (o_tps, r_tps) = (med(&ours, Run::tok_per_s), med(&refs, Run::tok_per_s));
    let (o_sps, r_sps) = (med(&ours, Run::s_per_step), med(&refs, Run::s_per_step));
    let first = |r: &Run| r.steps[0].seconds;
    let wall = |r: &Run| r.wall;
    let ref_threads = refs[0]
        .threads
        .map_or_else(|| "?".to_string(), |t| t.to_string());

    let span = match steps {
        2 => "step 2".to_string(),
        n => format!("steps 2..{n}"),
    };
    let header = "## train: 9 rank-1 adapters on down_proj, SmolLM2-135M-Instruct, cpu, f32";
    let command = match steps {
        DEFAULT_STEPS => "cargo xtask bench train".to_string(),
        n => format!("cargo xtask bench train --steps {n}"),
    };
    let mut section = section_head(header, &command, &machine());
    writeln!(section, "- workload: the demo organism's config (`data/organism/train.toml`: rank-1 rsLoRA, alpha 16, on down_proj of layers 9-11, 13-15, 17-19; `data/organism/risky-finance.jsonl`, loss on the answers only; batch 8, gradient accumulation 2, max_seq_length 512, AdamW lr 2e-3 with 5 warm-up steps, weight decay 0.01, gradients clipped to 1.0) cut to {steps} optimizer steps of 16 examples, no checkpoints; median of {ROUNDS} alternating rounds (min–max in brackets)")?;
    writeln!(section, "- tokens/s: real (unpadded) tokens run through the model over the seconds of {span}, as each side times its own steps; step 1 (one-time warm-up) and model loading are left out. The two sides train on different examples (each shuffles with its own seeded generator), so tokens per step differ a little and the figure to compare is tokens/s")?;
    writeln!(section, "- reference: `tests/python/train_reference.py` on the same config file: HF transformers {} + peft {} (torch {}), `get_peft_model` with the same `LoraConfig`, a plain PyTorch loop (right padding with attention mask, summed NLL of the trained tokens over their count in the step, `clip_grad_norm_`, `torch.optim.AdamW`, `get_linear_schedule_with_warmup`); the examples tokenized with the same trained mask as emh's", versions["transformers"].as_str().unwrap_or("?"), versions["peft"].as_str().unwrap_or("?"), versions["torch"].as_str().unwrap_or("?"))?;
    writeln!(section, "- threads: emh trains through libtorch's autograd with ATen's default intra-op pool, one thread per core ({cores}); the reference sets `torch.set_num_threads` to the CPU count ({ref_threads})\n")?;
    writeln!(
        section,
        "| | emh (own forward, left padding, libtorch autograd) | HF transformers + peft (plain PyTorch loop) | emh / reference |"
    )?;
    writeln!(section, "|---|---:|---:|---:|")?;
    writeln!(
        section,
        "| tokens/s, {span} | {} | {} | {:.2}x |",
        spread(&fig(&ours, Run::tok_per_s), 1),
        spread(&fig(&refs, Run::tok_per_s), 1),
        o_tps / r_tps
    )?;
    writeln!(
        section,
        "| seconds per step, {span} | {} | {} | |",
        spread(&fig(&ours, Run::s_per_step), 2),
        spread(&fig(&refs, Run::s_per_step), 2),
    )?;
    writeln!(
        section,
        "| real tokens per step | {:.0} | {:.0} | |",
        med(&ours, Run::tokens_per_step),
        med(&refs, Run::tokens_per_step)
    )?;
    writeln!(
        section,
        "| step 1 (warm-up), s | {:.2} | {:.2} | |",
        med(&ours, first),
        med(&refs, first)
    )?;
    writeln!(
        section,
        "| whole command, s (start-up, model load, {steps} steps) | {:.1} | {:.1} | {:.2}x |",
        med(&ours, wall),
        med(&refs, wall),
        med(&ours, wall) / med(&refs, wall)
    )?;
    writeln!(
        section,
        "| projected full training ({FULL_STEPS} steps: 3 epochs of 20), minutes | {:.1} | {:.1} | |",
        FULL_STEPS as f64 * o_sps / 60.0,
        FULL_STEPS as f64 * r_sps / 60.0
    )?;
    writeln!(section, "| threads | {cores} | {ref_threads} | |")?;
    writeln!(
        section,
        "\nThe projection is {FULL_STEPS} x the median seconds per step, start-up and warm-up left out.\n\nEach round, in order (emh / reference: tokens/s, seconds per step, loss at step 1 -> step {steps}):\n"
    )?;
    for (round, (o, r)) in ours.iter().zip(&refs).enumerate() {
        let losses = |r: &Run| {
            format!(
                "{:.3} -> {:.3}",
                r.steps[0].loss,
                r.steps.last().map_or(f64::NAN, |s| s.loss)
            )
        };
        writeln!(
            section,
            "- round {}: {:.1} / {:.1} tok/s, {:.2} / {:.2} s, loss {} / {}",
            round + 1,
            o.tok_per_s(),
            r.tok_per_s(),
            o.s_per_step(),
            r.s_per_step(),
            losses(o),
            losses(r)
        )?;
    }
    writeln!(section, "\nWhere the time goes, on both sides alike: each micro-batch is a forward pass through all 30 layers and then a backward pass through every layer above the first adapter (layer 9; below it nothing needs a gradient, so autograd stops there), and the LM head (tied, 49152 x 576: a fifth of the model's weights) runs over every position, forward and backward, though only the answer tokens are scored. Frozen weights get no weight gradients on either side, so the backward pass costs about one more forward pass of the layers it crosses (input gradients only) plus the rank-1 adapters' own, which are negligible: about 0.5 GFLOP per token in all, compute-bound on a CPU. The sides differ in the forward pass (emh's own prefill path, left-padded; HF's Llama with SDPA attention, right-padded), in what autograd keeps for the backward pass, and in the loss: emh takes log-softmax over the scored positions only, the reference over every position.")?;
    write_section(&env.root, header, &section)
}
