//! `cargo xtask bench sweep`: a steering sweep of 8 conditions run as one
//! experiment in shared batches, beside the same 8 conditions run one at a
//! time (one `emh experiment` per condition), in one run of the bench.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Result;

use crate::bench::{machine, median, section_head, write_section};
use crate::{checked, Env};

const SCALES: [f64; 4] = [0.0, 2.0, 4.0, 8.0];
/// Samples per paraphrase: the issue's workload, and one where each
/// condition alone fills less than a batch.
const NS: [u32; 2] = [4, 1];
const NEW_TOKENS: usize = 32;
const BATCH: usize = 32;
const REPEATS: usize = 3;

/// A direction for the steering side: a fixed pattern with norm about 1.
pub(crate) fn direction(hidden: usize) -> String {
    let v: Vec<f64> = (0..hidden)
        .map(|i| if i % 3 == 0 { 0.07 } else { -0.03 } * ((i % 7) as f64 - 3.0) / 3.0)
        .collect();
    serde_json::to_string(&v).expect("numbers serialise")
}

/// An experiment file over the default model with the given intervention entries.
fn spec(dir: &Path, name: &str, env: &Env, n: u32, interventions: &str) -> Result<PathBuf> {
    let file = dir.join(format!("{name}.toml"));
    let questions = env.root.join("data/questions/general.yaml");
    std::fs::write(
        &file,
        format!(
            r#"out = "{name}"
questions = {{ file = "{q}" }}
[sampling]
n = {n}
max_new_tokens = {NEW_TOKENS}
batch_size = {BATCH}
[[models]]
name = "base"
model = "{m}"
device = "cpu"
{interventions}
"#,
            q = questions.display(),
            m = env.model_dir.display()
        ),
    )?;
    Ok(file)
}

/// The intervention entries: steering and its random control at one scale each.
fn entries(scales: &[f64], v: &str) -> String {
    let mut text = String::new();
    for s in scales {
        text.push_str(&format!(
            r#"[[interventions]]
name = "steer{s}"
plugins = [{{ plugin = "steering", config = {{ vector = {v}, layers = [12], scale = {s} }} }}]
[[interventions]]
name = "random{s}"
plugins = [{{ plugin = "random-control", config = {{ mode = "steering", vector = {v}, layers = [12], scale = {s}, seed = 1 }} }}]
"#
        ));
    }
    text
}

fn timed(env: &Env, file: &Path) -> Result<f64> {
    let start = Instant::now();
    checked(Command::new(&env.emh).arg("experiment").arg(file))?;
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds of the shared run and of the runs one per condition, at `n`.
fn round(env: &Env, dir: &Path, v: &str, n: u32) -> Result<(f64, f64)> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let all = spec(dir, "shared", env, n, &entries(&SCALES, v))?;
    let shared = timed(env, &all)?;
    let mut apart = 0.0;
    for s in SCALES {
        for (k, entry) in entries(&[s], v)
            .split("[[interventions]]")
            .skip(1)
            .enumerate()
        {
            let name = format!("apart-{s}-{k}");
            let one = spec(dir, &name, env, n, &format!("[[interventions]]{entry}"))?;
            apart += timed(env, &one)?;
        }
    }
    Ok((shared, apart))
}

/// Runs the sweep benchmark and rewrites its BENCHMARKS.md section.
pub fn sweep(env: &Env) -> Result<()> {
    let dir = env.root.join("target/bench/sweep");
    let v = direction(576);
    let mut rows = Vec::new();
    for n in NS {
        let (mut shared, mut apart) = (Vec::new(), Vec::new());
        for r in 1..=REPEATS {
            let (s, a) = round(env, &dir, &v, n)?;
            eprintln!(
                "bench: sweep n {n}, round {r}: shared {s:.1} s, one run per condition {a:.1} s"
            );
            shared.push(s);
            apart.push(a);
        }
        rows.push((n, shared, apart));
    }
    let header = "## sweep: 8 conditions in shared batches, SmolLM2-135M-Instruct, cpu, f32";
    let mut section = section_head(header, "cargo xtask bench sweep", &machine());
    writeln!(section, "- workload: steering at layer 12 with lambda in {SCALES:?}, each beside its random control of the same norm (random-control): 8 conditions x the 16 paraphrases of `data/questions/general.yaml` x n samples, {NEW_TOKENS} new tokens at most (EOS on), temperature 1, batch size {BATCH}, no judge; wall time of the whole command, model loading included; median of {REPEATS} alternating rounds")?;
    writeln!(section, "- shared: one `emh experiment` with all 8 conditions (one model load; batches mix conditions, each row with its own plan); reference: the same 8 conditions as 8 `emh experiment` runs of one condition each, as a script looping over conditions runs them. Both sides sample the same answers (same seeds); threads: emh's kernel pool on both cores, one process at a time\n")?;
    writeln!(section, "| n per paraphrase | samples per condition | one run per condition, s | shared batches, s | speed-up |")?;
    writeln!(section, "|---:|---:|---:|---:|---:|")?;
    for (n, shared, apart) in &rows {
        let (s, a) = (median(shared.clone()), median(apart.clone()));
        writeln!(
            section,
            "| {n} | {} | {a:.1} | {s:.1} | {:.2}x |",
            16 * n,
            a / s
        )?;
    }
    writeln!(
        section,
        "\nEach round, in order (shared / apart, seconds):\n"
    )?;
    for (n, shared, apart) in &rows {
        let rounds: Vec<String> = shared
            .iter()
            .zip(apart)
            .map(|(s, a)| format!("{s:.1} / {a:.1}"))
            .collect();
        writeln!(section, "- n {n}: {}", rounds.join(", "))?;
    }
    writeln!(section, "\nWhat sharing saves: seven of eight model loads (with their process starts and hashing) and, where a condition alone fills less than a batch, the batch occupancy: at n 1 each condition's 16 samples would run as one half-full batch, shared they run as full batches of 32. At n 4 each condition fills its own batches of 32, so only the loads (and less padding, since a shared batch holds one prompt under several conditions) are saved; on 2 cores a batch of 32 is compute-bound, so fuller batches gain less than they would on a GPU, where a decoding step costs about the same at 16 rows as at 32.")?;
    write_section(&env.root, header, &section)
}
