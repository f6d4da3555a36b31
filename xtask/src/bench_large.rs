//! `cargo xtask bench generate-large`: a large model shape with random
//! weights on a GPU, emh beside HF transformers, and both against the
//! memory-bandwidth roofline.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bench::{
    json_line, machine, median, run_emh, run_hf, section_head, write_section, GenRun, WARMUP_TOKENS,
};
use crate::Env;

/// What one run measures and how.
struct Settings {
    config: PathBuf,
    device: String,
    batch: usize,
    new_tokens: usize,
    repeats: usize,
}

impl Settings {
    fn parse(root: &Path, args: &[&str]) -> Result<Self> {
        let mut s = Settings {
            config: root.join("data/configs/qwen2.5-14b-instruct"),
            device: "cuda".into(),
            batch: 50,
            new_tokens: 600,
            repeats: 2,
        };
        let mut it = args.iter();
        while let Some(&flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            match flag {
                "--config" => s.config = PathBuf::from(value),
                "--device" => s.device = value.to_string(),
                "--batch" => s.batch = value.parse()?,
                "--new-tokens" => s.new_tokens = value.parse()?,
                "--repeats" => s.repeats = value.parse()?,
                _ => bail!(
                    "usage: cargo xtask bench generate-large [--config DIR] [--device cuda] \
                     [--batch N] [--new-tokens N] [--repeats N]"
                ),
            }
        }
        Ok(s)
    }
}

/// Bytes one decoding step must move at the least, from a model's config.json.
struct Traffic {
    /// Every weight a step reads: all layers, the final norm and the head
    /// (the embedding contributes only its looked-up rows).
    weight_bytes: f64,
    /// Key and value bytes of one cached token across all layers.
    kv_bytes_per_token: f64,
    layers: u64,
    params: f64,
}

impl Traffic {
    fn from_config(path: &Path, dtype_bytes: f64) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let c: serde_json::Value = serde_json::from_str(&text)?;
        let get = |k: &str| {
            c[k].as_u64()
                .with_context(|| format!("{}: no `{k}`", path.display()))
        };
        let (h, i, layers) = (
            get("hidden_size")?,
            get("intermediate_size")?,
            get("num_hidden_layers")?,
        );
        let (nh, nkv, vocab) = (
            get("num_attention_heads")?,
            get("num_key_value_heads")?,
            get("vocab_size")?,
        );
        let hd = c["head_dim"].as_u64().unwrap_or(h / nh);
        let bias = if c["model_type"] == "qwen2" {
            (nh + 2 * nkv) * hd
        } else {
            0
        };
        let per_layer = h * (nh + 2 * nkv) * hd + bias + nh * hd * h + 3 * h * i + 2 * h;
        let head = vocab * h;
        let tied = c["tie_word_embeddings"].as_bool().unwrap_or(false);
        let read = layers * per_layer + h + head;
        let params = read + if tied { 0 } else { vocab * h };
        Ok(Traffic {
            weight_bytes: read as f64 * dtype_bytes,
            kv_bytes_per_token: (layers * 2 * nkv * hd) as f64 * dtype_bytes,
            layers,
            params: params as f64,
        })
    }

    /// Least bytes moved by a whole generation: one prefill and
    /// `new_tokens - 1` decoding steps (the last token needs no pass), each
    /// reading every weight and the cache filled so far.
    fn total_bytes(&self, batch: usize, prompt_width: usize, new_tokens: usize) -> f64 {
        let cached_tokens: usize = (1..new_tokens).map(|s| prompt_width + s).sum();
        self.weight_bytes * new_tokens as f64
            + self.kv_bytes_per_token * (batch * cached_tokens) as f64
    }
}

/// A model folder with the config alone plus the default model's tokenizer,
/// so both sides can build the random model and tokenize its prompts.
pub(crate) fn model_folder(env: &Env, config_dir: &Path) -> Result<PathBuf> {
    let name = config_dir
        .file_name()
        .context("the config folder has no name")?;
    let dir = env.root.join("target").join("bench").join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(config_dir.join("config.json"), dir.join("config.json"))
        .with_context(|| format!("copying {}/config.json", config_dir.display()))?;
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(env.model_dir.join(file), dir.join(file))
            .with_context(|| format!("copying {}/{file}", env.model_dir.display()))?;
    }
    Ok(dir)
}

/// Runs the benchmark and rewrites its section of BENCHMARKS.md.
pub fn generate_large(env: &Env, args: &[&str]) -> Result<()> {
    let s = Settings::parse(&env.root, args)?;
    let dir = model_folder(env, &s.config)?;
    let prompts = crate::bench::cycled_prompts(env, s.batch)?;
    let info = json_line(
        Command::new(&env.python)
            .arg(env.root.join("xtask/python/device_info.py"))
            .arg(&s.device),
    )?;
    let gpu = info["name"].as_str().unwrap_or("unknown GPU").to_string();
    let copy_bw = info["copy_gb_per_s"]
        .as_f64()
        .context("device_info.py gave no bandwidth")?
        * 1e9;
    eprintln!(
        "bench: {gpu}, device-to-device copy {:.0} GB/s",
        copy_bw / 1e9
    );

    let (mut ours, mut hf, mut hf_info) = (Vec::new(), Vec::new(), serde_json::Value::Null);
    let run = GenRun {
        model: &dir,
        prompts: &prompts,
        batch: s.batch,
        new_tokens: s.new_tokens,
        device: &s.device,
        dtype: "bf16",
        random_init: true,
    };
    for round in 1..=s.repeats {
        ours.push(run_emh(env, &run)?);
        hf_info = run_hf(env, &run)?;
        hf.push(
            hf_info["tok_per_s"]
                .as_f64()
                .context("hf_bench.py gave no tok_per_s")?,
        );
        eprintln!(
            "bench: round {round}: emh {:.0} tok/s, HF {:.0} tok/s",
            ours[round - 1],
            hf[round - 1]
        );
    }
    let (ours, hf) = (median(ours), median(hf));
    let width = hf_info["prompt_width"]
        .as_u64()
        .context("hf_bench.py gave no prompt_width")? as usize;
    let traffic = Traffic::from_config(&dir.join("config.json"), 2.0)?;
    let tokens = (s.batch * s.new_tokens) as f64;
    let roofline_s = traffic.total_bytes(s.batch, width, s.new_tokens) / copy_bw;
    let roofline_tok_s = tokens / roofline_s;
    let fraction = |tok_s: f64| tok_s / roofline_tok_s;

    let name = s
        .config
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let header = format!(
        "## generate: {name} shape, random weights, {}, bf16",
        s.device
    );
    let mut command = "cargo xtask bench generate-large".to_string();
    for a in args {
        write!(command, " {a}")?;
    }
    let gpu_machine = format!(
        "{gpu} ({:.0} GiB), host {}",
        info["memory_gib"].as_f64().unwrap_or(0.0),
        machine()
    );
    let mut section = section_head(&header, &command, &gpu_machine);
    writeln!(
        section,
        "- model: `{}` ({:.2}B parameters, {} layers), weights drawn at random from the config alone on both sides (`emh generate --random-init`, HF `from_config`)",
        s.config.strip_prefix(&env.root).unwrap_or(&s.config).display(),
        traffic.params / 1e9,
        traffic.layers
    )?;
    writeln!(
        section,
        "- workload: batch {} of chat prompts from `data/demo_prompts.jsonl` (padded width {width} tokens), {} new tokens each (EOS ignored), temperature 1.0; tok/s counts new tokens over the generation call, prefill included; {}",
        s.batch,
        s.new_tokens,
        if s.repeats == 1 {
            "one run per side".to_string()
        } else {
            format!("median of {} alternating runs per side", s.repeats)
        }
    )?;
    writeln!(
        section,
        "- reference: HF transformers {} `generate` (torch {}, default attention); each side first runs an untimed {WARMUP_TOKENS}-token generation of the same batch in the same process",
        hf_info["transformers"].as_str().unwrap_or("?"),
        hf_info["torch"].as_str().unwrap_or("?")
    )?;
    writeln!(
        section,
        "- roofline: the bytes a generation must move at the least (every weight once per forward pass, {:.1} GB, plus the KV cache read so far at each step) over the device-to-device copy bandwidth measured in the same run ({:.0} GB/s, read + write): {roofline_s:.2} s, {roofline_tok_s:.0} tok/s\n",
        traffic.weight_bytes / 1e9,
        copy_bw / 1e9
    )?;
    writeln!(section, "| side | tok/s | seconds | of roofline | vs HF |")?;
    writeln!(section, "|---|---:|---:|---:|---:|")?;
    for (side, tok_s) in [("emh", ours), ("HF transformers", hf)] {
        writeln!(
            section,
            "| {side} | {tok_s:.0} | {:.2} | {:.0}% | {:.2}x |",
            tokens / tok_s,
            100.0 * fraction(tok_s),
            tok_s / hf
        )?;
    }
    write_section(&env.root, &header, &section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen2_5_14b_traffic_counts_its_known_parameters() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let t = Traffic::from_config(
            &root.join("data/configs/qwen2.5-14b-instruct/config.json"),
            2.0,
        )
        .unwrap();
        // Qwen2.5-14B-Instruct has 14.77B parameters.
        assert!((t.params / 1e9 - 14.77).abs() < 0.01, "{}", t.params);
        // 48 layers x (8 kv heads x 128) x 2 (k and v) x 2 bytes.
        assert_eq!(t.kv_bytes_per_token, 48.0 * 1024.0 * 2.0 * 2.0);
        let one_step = t.total_bytes(1, 10, 2) - t.total_bytes(1, 10, 1);
        assert_eq!(one_step, t.weight_bytes + 11.0 * t.kv_bytes_per_token);
    }
}
