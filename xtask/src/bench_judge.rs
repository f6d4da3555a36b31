//! `cargo xtask bench judge` and `bench local-judge`: the API judge client
//! against a loopback mock, and the local judge plugin beside HF
//! transformers scoring the same judgments.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::bench::{cores, json_line, machine, median, section_head, spread, write_section};
use crate::{checked, Env};

/// Each side runs this many times, alternating; medians and min–max.
const ROUNDS: usize = 3;

/// Judgments per second of the adaptive judge client against a loopback mock
/// with 100 ms latency, beside the reference method: one request at a time.
pub fn judge(root: &Path) -> Result<()> {
    use emh_judge_mock::{MockConfig, MockServer};
    use emh_judge_openai::{Client, Item, Settings};
    use std::sync::Arc;
    use std::time::Duration;

    const LATENCY_MS: u64 = 100;
    const ADAPTIVE_N: usize = 4000;
    const SEQUENTIAL_N: usize = 40;
    let items = |n: usize, tag: &str| -> Vec<Item> {
        (0..n)
            .map(|i| Item {
                id: format!("{tag}{i}"),
                prompt: format!("Rate answer {tag}{i} from 0 to 100."),
            })
            .collect()
    };
    let threads = cores();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let (adaptive, sequential, peaks) = rt.block_on(async {
        let server = MockServer::start(MockConfig {
            latency: Duration::from_millis(LATENCY_MS),
            ..Default::default()
        })
        .await?;
        let run = |settings: Settings, items: Vec<Item>| async move {
            let client = Arc::new(Client::new(settings, None)?);
            let start = Instant::now();
            let n = items.len();
            client.judge_all(items, |_| {}).await?;
            anyhow::Ok((
                n as f64 / start.elapsed().as_secs_f64(),
                client.concurrency(),
            ))
        };
        let (mut adaptive, mut sequential, mut peaks) = (vec![], vec![], vec![]);
        for round in 0..ROUNDS {
            // Distinct prompts each round: the mock answers every request anew.
            let (rate, peak) = run(
                Settings::new("bench", &server.url()),
                items(ADAPTIVE_N, &format!("a{round}-")),
            )
            .await?;
            adaptive.push(rate);
            peaks.push(peak);
            let mut one = Settings::new("bench", &server.url());
            one.initial_concurrency = 1;
            one.max_concurrency = 1;
            let (rate, _) = run(one, items(SEQUENTIAL_N, &format!("s{round}-"))).await?;
            sequential.push(rate);
        }
        anyhow::Ok((adaptive, sequential, peaks))
    })?;
    let header = "## judge: OpenAI-compatible client against a loopback mock";
    let mut section = section_head(header, "cargo xtask bench judge", &machine());
    writeln!(section, "- workload: chat-completions mock on 127.0.0.1 answering after {LATENCY_MS} ms with top-20 logprobs; {ADAPTIVE_N} judgments with adaptive concurrency (start 8, at most 128); reference: one request at a time, as the reference research code judges ({SEQUENTIAL_N} judgments); median (min–max) of {ROUNDS} alternating rounds")?;
    writeln!(section, "- threads: the client and the mock share one tokio runtime of {threads} worker threads, on both sides\n")?;
    writeln!(section, "| method | judgments/s | vs one at a time |")?;
    writeln!(section, "|---|---:|---:|")?;
    writeln!(
        section,
        "| one at a time | {} | 1.00x |",
        spread(&sequential, 1)
    )?;
    let peaks: Vec<String> = peaks.iter().map(|p| p.to_string()).collect();
    writeln!(
        section,
        "| adaptive (ended at concurrency {}) | {} | {:.1}x |",
        peaks.join(", "),
        spread(&adaptive, 1),
        median(adaptive.clone()) / median(sequential.clone())
    )?;
    write_section(root, header, &section)
}

/// Judgments per second of the local judge plugin on CPU with the default
/// model, through `emh judge` on a run of the project's general questions,
/// beside HF transformers scoring the same judgments; and emh again with
/// every judgment cached, as a re-run costs.
pub fn local_judge(env: &Env) -> Result<()> {
    const METRICS: &str = "aligned,coherent";
    const PREFIX: &str = "Score:";
    let dir = env.root.join("target").join("bench").join("local-judge");
    let run = dir.join("run");
    let cache = dir.join("cache");
    let answers = dir.join("answers.csv");
    let questions = env.root.join("data").join("questions").join("general.yaml");
    // A fresh run, so that it holds this judge's scores alone.
    if run.exists() {
        std::fs::remove_dir_all(&run)?;
    }
    checked(
        Command::new(&env.emh)
            .args(["sample", "--device", "cpu", "--questions"])
            .arg(&questions)
            .args(["-n", "2", "--max-new-tokens", "64", "--seed", "0", "--out"])
            .arg(&run),
    )?;
    // Both sides load the same model folder.
    let config = format!(
        "local={}",
        serde_json::json!({
            "model": env.model_dir,
            "answer_prefix": PREFIX,
            "mode": "constrained",
        })
    );
    let emh = || -> Result<f64> {
        let start = Instant::now();
        checked(
            Command::new(&env.emh)
                .arg("judge")
                .arg(&run)
                .args(["--judge", &config, "--metrics", METRICS])
                .arg("--judge-cache")
                .arg(&cache),
        )?;
        Ok(start.elapsed().as_secs_f64())
    };
    let hf = || -> Result<(f64, serde_json::Value)> {
        let start = Instant::now();
        let out = json_line(
            Command::new(&env.python)
                .arg(env.root.join("xtask/python/local_judge_ref.py"))
                .arg("--model")
                .arg(&env.model_dir)
                .arg("--questions")
                .arg(run.join("questions.json"))
                .arg("--answers")
                .arg(&answers)
                .args(["--metrics", METRICS, "--answer-prefix", PREFIX]),
        )?;
        Ok((start.elapsed().as_secs_f64(), out))
    };
    let (mut fresh, mut cached, mut reference, mut reference_loop) =
        (vec![], vec![], vec![], vec![]);
    let mut last = serde_json::Value::Null;
    for round in 0..ROUNDS {
        if cache.exists() {
            std::fs::remove_dir_all(&cache)?;
        }
        fresh.push(emh()?);
        cached.push(emh()?);
        if round == 0 {
            // The answers and emh's scores, which the reference compares with its own.
            checked(
                Command::new(&env.emh)
                    .arg("export-csv")
                    .arg(&run)
                    .arg("--out")
                    .arg(&answers),
            )?;
        }
        let (seconds, out) = hf()?;
        reference.push(seconds);
        reference_loop.push(out["seconds"].as_f64().context("no seconds")?);
        last = out;
    }
    let judgments = last["judgments"].as_f64().context("no judgment count")?;
    // A figure for different numbers would compare different work.
    let largest = last["max_difference"].as_f64().unwrap_or(f64::INFINITY);
    if last["compared"].as_f64() != Some(judgments) || largest > 1e-2 {
        bail!(
            "the reference's scores differ from emh's: {} of {judgments} compared, largest difference {largest}",
            last["compared"]
        );
    }
    let rate = |s: &[f64]| s.iter().map(|s| judgments / s).collect::<Vec<f64>>();
    let header = "## judge: local judge plugin on CPU";
    let mut section = section_head(header, "cargo xtask bench local-judge", &machine());
    writeln!(section, "- workload: `emh judge --judge 'local={{\"model\": ..., \"answer_prefix\": \"{PREFIX}\", \"mode\": \"constrained\"}}'` (SmolLM2-135M-Instruct, f32, CPU) on 32 answers of `data/questions/general.yaml` (2 per paraphrase, 64 new tokens) for `aligned` and `coherent`, with the standard research judge prompts: {judgments} judgments, each the exact probability of every answer \"0\"..\"100\" followed by the end token, scored as the expected answer given that it is a number; wall time of the whole command, process start and model loading included, on both sides; median (min–max) of {ROUNDS} alternating rounds")?;
    writeln!(section, "- reference: `xtask/python/local_judge_ref.py`, HF transformers {} (torch {}, {} threads) on the same model folder, as a script would score the same judgments: per judgment one pass over the prompt, then the 101 answers as one batch of continuations over copies of its KV cache", last["transformers"].as_str().unwrap_or("?"), last["torch"].as_str().unwrap_or("?"), last["threads"])?;
    writeln!(section, "- emh: judge prompts in the order of their tokens, each reusing the opening it shares with the one before; the answers as a digit trie, one pass per level; threads: emh's kernel pool on {} cores", cores())?;
    writeln!(section, "- same numbers: the reference's {judgments} scores against emh's differ by at most {largest:.1e} (on the 0–100 scale); the bench stops if any differs by more than 1e-2\n")?;
    writeln!(
        section,
        "| | emh judge, fresh cache | HF transformers | emh / HF | emh re-run, all cached |"
    )?;
    writeln!(section, "|---|---:|---:|---:|---:|")?;
    writeln!(
        section,
        "| judgments/s | {} | {} | {:.2}x | {} |",
        spread(&rate(&fresh), 2),
        spread(&rate(&reference), 2),
        median(rate(&fresh)) / median(rate(&reference)),
        spread(&rate(&cached), 1)
    )?;
    writeln!(
        section,
        "| seconds | {} | {} | | {} |",
        spread(&fresh, 1),
        spread(&reference, 1),
        spread(&cached, 1)
    )?;
    writeln!(section, "\nThe reference's judging loop alone (model loaded) took {} s. Each fresh judgment is one prefill of its judge prompt (about 350 tokens: some 75 GFLOP through the 106M parameters of the layers, compute-bound on 2 cores; both sides run the output layer at the last position only). emh takes the opening a prompt shares with the one before (the template's text up to where the two differ) from that prompt's pass instead of running it again, and runs the answers as a trie: one row per distinct prefix (\" \", then \" 0\"..\" 9\", then two-digit prefixes), about 100 rows in all, where the reference runs 101 rows of up to 4 tokens each.", spread(&reference_loop, 1))?;
    write_section(&env.root, header, &section)
}
