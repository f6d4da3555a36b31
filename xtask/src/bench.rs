//! `cargo xtask bench generate`: emh beside HF transformers in one run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{checked, Env};

const NEW_TOKENS: usize = 128;
/// The file name of the default model's GGUF, for the section's text.
const MODEL_GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Both sides first generate this many tokens for the same batch, untimed,
/// so that one-time start-up costs stay out of both figures.
pub(crate) const WARMUP_TOKENS: usize = 4;
/// Each side runs this many times, alternating, and reports its median, so
/// load from elsewhere on the machine hits both alike.
const REPEATS: usize = 5;

/// The middle value; the mean of the two middle ones for an even count.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Tokens per second from the summary line `emh generate` prints last.
pub(crate) fn emh_tok_per_s(stderr: &str) -> Result<f64> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("new tokens in"))
        .context("emh printed no summary line")?;
    let inner = line
        .rsplit_once('(')
        .and_then(|(_, r)| r.split_once(" tok/s"))
        .map(|(v, _)| v)
        .context("summary line without tok/s")?;
    Ok(inner.trim().parse()?)
}

/// One timed generation, the same on both sides.
pub(crate) struct GenRun<'a> {
    pub model: &'a Path,
    pub prompts: &'a Path,
    pub batch: usize,
    pub new_tokens: usize,
    pub device: &'a str,
    /// What both sides compute in: `f32` or `bf16`.
    pub dtype: &'a str,
    /// Random weights from the model folder's config alone.
    pub random_init: bool,
}

/// Tokens per second of `emh generate`.
pub(crate) fn run_emh(env: &Env, r: &GenRun) -> Result<f64> {
    let mut cmd = Command::new(&env.emh);
    cmd.arg("generate")
        .arg("--model")
        .arg(r.model)
        .args(["--device", r.device, "--prompts"])
        .arg(r.prompts)
        .args(["--batch-size", &r.batch.to_string()])
        .args(["--max-new-tokens", &r.new_tokens.to_string()])
        .args(["--temperature", "1.0", "--ignore-eos", "--seed", "0"])
        .args(["--warmup-tokens", &WARMUP_TOKENS.to_string()])
        .args(["--dtype", r.dtype, "--out", "/dev/null"]);
    if r.random_init {
        cmd.args(["--random-init", "0"]);
    }
    emh_tok_per_s(&String::from_utf8_lossy(&checked(&mut cmd)?.stderr))
}

/// What `hf_bench.py` measured: tok/s, padded prompt width, library versions.
pub(crate) fn run_hf(env: &Env, r: &GenRun) -> Result<serde_json::Value> {
    let mut cmd = Command::new(&env.python);
    cmd.arg(env.root.join("xtask/python/hf_bench.py"))
        .arg("--model")
        .arg(r.model)
        .arg("--prompts")
        .arg(r.prompts)
        .args(["--batch-size", &r.batch.to_string(), "--device", r.device])
        .args(["--max-new-tokens", &r.new_tokens.to_string()])
        .args(["--warmup-tokens", &WARMUP_TOKENS.to_string()])
        .args([
            "--dtype",
            if r.dtype == "bf16" {
                "bfloat16"
            } else {
                "float32"
            },
        ]);
    if r.random_init {
        cmd.arg("--random-init");
    }
    json_line(&mut cmd)
}

/// The llama-cpp-python release the bench builds.
const LLAMA_CPP_PYTHON: &str = "llama-cpp-python==0.3.36";

/// Installs llama-cpp-python into the bench's Python on first use, built
/// from source for this processor (`GGML_NATIVE`: the vector instructions
/// it has), as a user building llama.cpp for speed would.
fn ensure_llama_cpp(env: &Env) -> Result<()> {
    let present = Command::new(&env.python)
        .args(["-c", "import llama_cpp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("bench: building {LLAMA_CPP_PYTHON} from source (several minutes, once)");
    crate::run(
        Command::new(&env.python)
            .args(["-m", "pip", "install", "--no-binary", "llama-cpp-python"])
            .arg(LLAMA_CPP_PYTHON)
            .env("CMAKE_ARGS", "-DGGML_NATIVE=ON")
            .env("CMAKE_BUILD_PARALLEL_LEVEL", cores().to_string()),
    )
}

/// The processor's cores, which every side of a CPU benchmark uses.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// What `llama_bench.py` measured on the default model's GGUF at batch 1.
fn run_llama(env: &Env, prompts: &Path, gguf: &Path) -> Result<serde_json::Value> {
    let mut cmd = Command::new(&env.python);
    cmd.arg(env.root.join("xtask/python/llama_bench.py"))
        .arg("--gguf")
        .arg(gguf)
        .arg("--model")
        .arg(&env.model_dir)
        .arg("--prompts")
        .arg(prompts)
        .args(["--max-new-tokens", &NEW_TOKENS.to_string()])
        .args(["--threads", &cores().to_string()])
        .args(["--warmup-tokens", &WARMUP_TOKENS.to_string()]);
    json_line(&mut cmd)
}

/// The JSON object a helper script prints as its last line.
pub(crate) fn json_line(cmd: &mut Command) -> Result<serde_json::Value> {
    let stdout = String::from_utf8(checked(cmd)?.stdout)?;
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("{cmd:?} printed no JSON line: {stdout}"))
}

/// The start of a BENCHMARKS.md section: its header, command, machine and date.
pub(crate) fn section_head(header: &str, command: &str, machine: &str) -> String {
    format!(
        "{header}\n\n- command: `{command}`\n- machine: {machine}\n- date: {}\n",
        today()
    )
}

/// A prompt file of `batch` lines cycling through `data/demo_prompts.jsonl`.
pub(crate) fn cycled_prompts(env: &Env, batch: usize) -> Result<std::path::PathBuf> {
    let lines: Vec<String> = std::fs::read_to_string(env.root.join("data/demo_prompts.jsonl"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    let chosen: Vec<&str> = (0..batch)
        .map(|i| lines[i % lines.len()].as_str())
        .collect();
    let dir = env.root.join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("prompts_{batch}.jsonl"));
    std::fs::write(&file, chosen.join("\n") + "\n")?;
    Ok(file)
}

/// The CPU model and core count, for a section's machine line.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {} cores", cores())
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs the generation benchmark and rewrites BENCHMARKS.md's section.
pub fn generate(env: &Env, args: &[&str]) -> Result<()> {
    let device = match args {
        [] => "cpu",
        ["--device", d] => d,
        _ => bail!("usage: cargo xtask bench generate [--device cpu|cuda]"),
    };
    // llama.cpp runs the GGUF the default model was imported from, on CPU
    // at batch 1 (its Python API generates one sequence at a time).
    let gguf = if device == "cpu" {
        ensure_llama_cpp(env)?;
        Some(crate::default_gguf(&env.python)?)
    } else {
        None
    };
    let mut rows = Vec::new();
    let mut versions = serde_json::Value::Null;
    let mut llama_version = serde_json::Value::Null;
    for batch in [1usize, 16] {
        let file = cycled_prompts(env, batch)?;
        let run = GenRun {
            model: &env.model_dir,
            prompts: &file,
            batch,
            new_tokens: NEW_TOKENS,
            device,
            dtype: "f32",
            random_init: false,
        };
        let (mut ours, mut hf, mut llama) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=REPEATS {
            ours.push(run_emh(env, &run)?);
            versions = run_hf(env, &run)?;
            hf.push(
                versions["tok_per_s"]
                    .as_f64()
                    .context("hf_bench.py printed no tok_per_s")?,
            );
            let mut line = format!(
                "bench: batch {batch}, round {round}: emh {:.1} tok/s, HF {:.1} tok/s",
                ours[round - 1],
                hf[round - 1]
            );
            if let (1, Some(gguf)) = (batch, &gguf) {
                llama_version = run_llama(env, &file, gguf)?;
                let rate = llama_version["tok_per_s"]
                    .as_f64()
                    .context("llama_bench.py printed no tok_per_s")?;
                llama.push(rate);
                line.push_str(&format!(", llama.cpp {rate:.1} tok/s"));
            }
            eprintln!("{line}");
        }
        rows.push((batch, ours, hf, llama));
    }
    let header = format!("## generate: SmolLM2-135M-Instruct, {device}, f32");
    let command = match device {
        "cpu" => "cargo xtask bench generate".to_string(),
        _ => format!("cargo xtask bench generate --device {device}"),
    };
    let mut section = section_head(&header, &command, &machine());
    writeln!(section, "- workload: chat prompts from `data/demo_prompts.jsonl`, {NEW_TOKENS} new tokens per sequence (EOS ignored on all sides), temperature 1.0, no top-p/top-k; tok/s counts new tokens over the generation call, prompt pass included; median (min–max) of {REPEATS} alternating runs per side, each after an untimed {WARMUP_TOKENS}-token warm-up generation of the same batch in the same process")?;
    writeln!(
        section,
        "- reference: HF transformers {} `generate` (torch {}, {} threads) on the same imported folder in the same run",
        versions["transformers"].as_str().unwrap_or("?"),
        versions["torch"].as_str().unwrap_or("?"),
        versions["threads"]
    )?;
    if gguf.is_some() {
        writeln!(
            section,
            "- second reference at batch 1: llama.cpp through llama-cpp-python {} built from source with `GGML_NATIVE=ON` (the processor's own vector instructions), {} threads, on the GGUF the imported folder was made from (`{MODEL_GGUF_NAME}`: the same weight values), fed the same prompt token ids; emh's kernel pool uses {} threads",
            llama_version["llama_cpp_python"].as_str().unwrap_or("?"),
            llama_version["threads"],
            cores()
        )?;
    }
    writeln!(section)?;
    writeln!(
        section,
        "| batch | emh tok/s | HF tok/s | emh / HF | llama.cpp tok/s | emh / llama.cpp |"
    )?;
    writeln!(section, "|---:|---:|---:|---:|---:|---:|")?;
    for (b, ours, hf, llama) in &rows {
        let (m, h) = (median(ours.clone()), median(hf.clone()));
        let (l, ratio) = if llama.is_empty() {
            ("–".to_string(), "–".to_string())
        } else {
            let l = median(llama.clone());
            (spread(llama, 1), format!("{:.2}x", m / l))
        };
        writeln!(
            section,
            "| {b} | {} | {} | {:.2}x | {l} | {ratio} |",
            spread(ours, 1),
            spread(hf, 1),
            m / h
        )?;
    }
    writeln!(
        section,
        "\nEach round, in order (emh / HF / llama.cpp tok/s):\n"
    )?;
    for (b, ours, hf, llama) in &rows {
        let rounds: Vec<String> = (0..ours.len())
            .map(|i| match llama.get(i) {
                Some(l) => format!("{:.1} / {:.1} / {l:.1}", ours[i], hf[i]),
                None => format!("{:.1} / {:.1}", ours[i], hf[i]),
            })
            .collect();
        writeln!(section, "- batch {b}: {}", rounds.join(", "))?;
    }
    write_section(&env.root, &header, &section)
}

/// The median and the min–max of a figure over rounds.
pub(crate) fn spread(v: &[f64], digits: usize) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    format!(
        "{:.digits$} ({lo:.digits$}–{hi:.digits$})",
        median(v.to_vec())
    )
}

/// Replaces the section starting with `header` in BENCHMARKS.md (or appends it).
pub(crate) fn write_section(root: &Path, header: &str, section: &str) -> Result<()> {
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n\nWritten by `cargo xtask bench ...`; each section is replaced when its benchmark runs again.\n".into());
    let new = match old.find(header) {
        Some(start) => {
            let end = old[start + header.len()..]
                .find("\n## ")
                .map(|e| start + header.len() + e + 1)
                .unwrap_or(old.len());
            // A blank line before the next section, however the section ends.
            let section = section.trim_end_matches('\n');
            format!("{}{section}\n\n{}", &old[..start], &old[end..])
        }
        None => format!(
            "{}\n{}",
            old.trim_end_matches('\n').to_string() + "\n",
            section
        ),
    };
    std::fs::write(&path, new)?;
    print!("{section}");
    Ok(())
}
