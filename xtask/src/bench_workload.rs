//! `cargo xtask bench eval-workload`: the sampling of an evaluation as users
//! run it (many samples of each question, EOS on, a steering condition
//! beside a plain one) in `emh experiment`, beside the reference method (HF
//! `generate` with a forward hook, one question's samples per call) in the
//! same run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::bench::{json_line, machine, median, section_head, spread, write_section};
use crate::bench_sweep::direction;
use crate::{checked, Env};

/// Samples of each paraphrase: the question file has two paraphrases per
/// question, so each question gets 16 samples per condition.
const N: u32 = 8;
const NEW_TOKENS: usize = 256;
/// Rows decoding at once on emh's side.
const BATCH: usize = 32;
const LAYER: usize = 12;
const SCALE: f64 = 4.0;
/// Rounds by default; `--repeats N` sets them.
const REPEATS: usize = 3;
const QUESTIONS: &str = "data/questions/general.yaml";

/// The experiment file: the default model, no intervention and steering.
fn spec(env: &Env, dir: &Path, v: &str) -> Result<std::path::PathBuf> {
    let file = dir.join("workload.toml");
    std::fs::write(
        &file,
        format!(
            r#"out = "runs"
questions = {{ file = "{q}" }}
[sampling]
n = {N}
max_new_tokens = {NEW_TOKENS}
batch_size = {BATCH}
temperature = 1.0
[[models]]
name = "base"
model = "{m}"
device = "cpu"
[[interventions]]
name = "none"
plugins = []
[[interventions]]
name = "steer"
plugins = [{{ plugin = "steering", config = {{ vector = {v}, layers = [{LAYER}], scale = {SCALE} }} }}]
"#,
            q = env.root.join(QUESTIONS).display(),
            m = env.model_dir.display()
        ),
    )?;
    Ok(file)
}

/// (new tokens, seconds) of `emh experiment`'s sampling, from the summary
/// line it prints when a group's sampling is done.
fn run_emh(env: &Env, dir: &Path, file: &Path) -> Result<(f64, f64)> {
    let runs = dir.join("runs");
    if runs.exists() {
        std::fs::remove_dir_all(&runs)?;
    }
    let out = checked(Command::new(&env.emh).arg("experiment").arg(file))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("new tokens in"))
        .context("emh experiment printed no sampling summary")?;
    let number_before = |marker: &str| -> Result<f64> {
        let head = &line[..line.find(marker).context("summary format")?];
        let word = head.split_whitespace().last().context("summary format")?;
        Ok(word.trim_start_matches('(').trim_end_matches('s').parse()?)
    };
    let tokens = number_before(" new tokens")?;
    let secs = number_before(" (")?;
    Ok((tokens, secs))
}

/// What the reference script measured.
fn run_reference(env: &Env, v: &str) -> Result<serde_json::Value> {
    let mut cmd = Command::new(&env.python);
    cmd.arg(env.root.join("xtask/python/eval_workload_ref.py"))
        .arg("--model")
        .arg(&env.model_dir)
        .arg("--questions")
        .arg(env.root.join(QUESTIONS))
        .args(["--n", &N.to_string()])
        .args(["--max-new-tokens", &NEW_TOKENS.to_string()])
        .args(["--layer", &LAYER.to_string(), "--scale", &SCALE.to_string()])
        .args(["--vector", v]);
    json_line(&mut cmd)
}

/// Runs the workload benchmark and rewrites its BENCHMARKS.md section.
pub fn eval_workload(env: &Env, args: &[&str]) -> Result<()> {
    let repeats = match args {
        [] => REPEATS,
        ["--repeats", n] => n.parse().context("--repeats takes a number")?,
        _ => anyhow::bail!("usage: cargo xtask bench eval-workload [--repeats N]"),
    };
    let dir = env.root.join("target/bench/eval-workload");
    std::fs::create_dir_all(&dir)?;
    let v = direction(576);
    let file = spec(env, &dir, &v)?;
    let mut ours: Vec<(f64, f64)> = Vec::new();
    let mut theirs: Vec<(f64, f64)> = Vec::new();
    let mut versions = serde_json::Value::Null;
    for round in 1..=repeats {
        ours.push(run_emh(env, &dir, &file)?);
        versions = run_reference(env, &v)?;
        let get = |k: &str| versions[k].as_f64().context("reference printed no {k}");
        theirs.push((get("tokens")?, get("seconds")?));
        let (o, t) = (ours[round - 1], theirs[round - 1]);
        eprintln!(
            "bench: eval-workload round {round}: emh {:.1} tok/s ({:.0} s), reference {:.1} tok/s ({:.0} s)",
            o.0 / o.1,
            o.1,
            t.0 / t.1,
            t.1
        );
    }
    let rate = |v: &[(f64, f64)]| v.iter().map(|(t, s)| t / s).collect::<Vec<_>>();
    let secs = |v: &[(f64, f64)]| v.iter().map(|(_, s)| *s).collect::<Vec<_>>();
    let tokens = |v: &[(f64, f64)]| v.iter().map(|(t, _)| *t).collect::<Vec<_>>();
    let header = "## eval-workload: sampling an evaluation, SmolLM2-135M-Instruct, cpu, f32";
    let mut section = section_head(header, "cargo xtask bench eval-workload", &machine());
    writeln!(section, "- workload: the 8 questions of `{QUESTIONS}` (2 paraphrases each) x {N} samples per paraphrase = 16 samples per question, under 2 conditions (no intervention; steering at layer {LAYER}, resid_post, all tokens, scale {SCALE}, a fixed vector of norm about 1): 256 answers, EOS on, at most {NEW_TOKENS} new tokens, temperature 1, no top-p/top-k; tok/s counts new tokens (each answer's end token included) over the seconds of sampling, model loading left out; median (min–max) of {repeats} alternating rounds")?;
    writeln!(section, "- emh: `emh experiment` on the file the bench writes (`target/bench/eval-workload/workload.toml`): both conditions share batches of {BATCH} rows, a finished row taken by the next waiting sample, samples of one prompt sharing its prompt pass; seconds and tokens from its sampling summary line; threads: emh's kernel pool on both cores")?;
    writeln!(
        section,
        "- reference: `xtask/python/eval_workload_ref.py`, HF transformers {} `generate` (torch {}, {} threads) with a forward hook on the layer's output for the steered condition, one call per question and condition (its 16 samples as one left-padded batch, run until the longest ends), after an untimed 4-token warm-up; the two sides draw different samples (different random generators), so their token counts differ a little and tok/s is the figure to compare\n",
        versions["transformers"].as_str().unwrap_or("?"),
        versions["torch"].as_str().unwrap_or("?"),
        versions["threads"]
    )?;
    writeln!(section, "| | emh experiment (continuous batching, shared prompt passes) | HF generate + hook, a question per call | emh / reference |")?;
    writeln!(section, "|---|---:|---:|---:|")?;
    let (r_ours, r_theirs) = (median(rate(&ours)), median(rate(&theirs)));
    writeln!(
        section,
        "| tok/s | {} | {} | {:.2}x |",
        spread(&rate(&ours), 1),
        spread(&rate(&theirs), 1),
        r_ours / r_theirs
    )?;
    writeln!(
        section,
        "| seconds | {} | {} | |",
        spread(&secs(&ours), 1),
        spread(&secs(&theirs), 1)
    )?;
    writeln!(
        section,
        "| new tokens | {} | {} | |",
        spread(&tokens(&ours), 0),
        spread(&tokens(&theirs), 0)
    )?;
    write_section(&env.root, header, &section)
}
