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
const N: u32 = 4;
const NEW_TOKENS: usize = 32;
const BATCH: usize = 32;
const REPEATS: usize = 3;

/// A direction for the steering side: a fixed pattern with norm about 1.
fn direction(hidden: usize) -> String {
    let v: Vec<f64> = (0..hidden)
        .map(|i| if i % 3 == 0 { 0.07 } else { -0.03 } * ((i % 7) as f64 - 3.0) / 3.0)
        .collect();
    serde_json::to_string(&v).expect("numbers serialise")
}

/// An experiment file over the default model with the given intervention entries.
fn spec(dir: &Path, name: &str, env: &Env, interventions: &str) -> Result<PathBuf> {
    let file = dir.join(format!("{name}.toml"));
    let questions = env.root.join("data/questions/general.yaml");
    std::fs::write(
        &file,
        format!(
            r#"out = "{name}"
questions = {{ file = "{q}" }}
[sampling]
n = {N}
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

/// Runs the sweep benchmark and rewrites its BENCHMARKS.md section.
pub fn sweep(env: &Env) -> Result<()> {
    let dir = env.root.join("target/bench/sweep");
    let v = direction(576);
    let (mut shared, mut apart) = (Vec::new(), Vec::new());
    for round in 1..=REPEATS {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let all = spec(&dir, "shared", env, &entries(&SCALES, &v))?;
        shared.push(timed(env, &all)?);
        let mut total = 0.0;
        for s in SCALES {
            for (k, entry) in entries(&[s], &v)
                .split("[[interventions]]")
                .skip(1)
                .enumerate()
            {
                let one = spec(
                    &dir,
                    &format!("apart-{s}-{k}"),
                    env,
                    &format!("[[interventions]]{entry}"),
                )?;
                total += timed(env, &one)?;
            }
        }
        apart.push(total);
        eprintln!(
            "bench: sweep round {round}: shared {:.1} s, one run per condition {total:.1} s",
            shared[round - 1]
        );
    }
    let (s, a) = (median(shared.clone()), median(apart.clone()));
    let header = "## sweep: 8 conditions in shared batches, SmolLM2-135M-Instruct, cpu, f32";
    let mut section = section_head(header, "cargo xtask bench sweep", &machine());
    writeln!(section, "- workload: steering at layer 12 with lambda in {SCALES:?}, each beside its random control of the same norm (random-control): 8 conditions x the 16 paraphrases of `data/questions/general.yaml` x n {N}, {NEW_TOKENS} new tokens at most (EOS on), temperature 1, batch size {BATCH}, no judge; wall time of the whole command, model loading included; median of {REPEATS} alternating rounds")?;
    writeln!(section, "- shared: one `emh experiment` with all 8 conditions (one model load, batches mix conditions, each row with its own plan); reference: the same 8 conditions as 8 `emh experiment` runs of one condition each, as a script looping over conditions would run them. Both sides sample the same answers (same seeds).\n")?;
    writeln!(section, "| method | seconds | speed-up |")?;
    writeln!(section, "|---|---:|---:|")?;
    writeln!(section, "| one run per condition | {a:.1} | 1.00x |")?;
    writeln!(section, "| shared batches | {s:.1} | {:.2}x |", a / s)?;
    let rounds: Vec<String> = shared
        .iter()
        .zip(&apart)
        .map(|(s, a)| format!("{s:.1} / {a:.1}"))
        .collect();
    writeln!(
        section,
        "\nEach round, in order (shared / apart, seconds): {}",
        rounds.join(", ")
    )?;
    write_section(&env.root, header, &section)
}
