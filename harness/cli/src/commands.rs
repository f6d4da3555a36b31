//! The subcommands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use emh_eval::{
    load_model, plan_all, read_prompts, Draws, Loaded, ModelSpec, Planned, PromptLine,
    PromptRenderer, Seeds,
};
use emh_plugins::Registry;
use emh_runtime::{HookSet, SamplingParams};
use emh_text::{ChatTemplate, Tokenizer};
use serde_json::json;

use crate::plugins::PluginUseArgs;
use crate::progress::bar as progress;

/// Which model to load and where.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model folder, name under the data directory, or HF repo id in the hub
    /// cache [default: an --organism's base, else SmolLM2-135M-Instruct].
    #[arg(long, short)]
    model: Option<String>,
    /// cpu, cuda, cuda:N, or auto (CUDA when available).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Weight dtype: f32, bf16 or f16. Default: f32 on CPU, the config's dtype on CUDA.
    #[arg(long)]
    dtype: Option<String>,
    /// A PEFT LoRA adapter folder to apply, unmerged (repeatable: adapters add up).
    #[arg(long = "adapter", value_name = "DIR")]
    adapters: Vec<PathBuf>,
    /// Random weights from the model folder's config.json alone (for
    /// benchmarks of large shapes); SEED fixes them.
    #[arg(long, value_name = "SEED")]
    random_init: Option<u64>,
}

impl ModelArgs {
    /// The model spec these arguments give, with the organism of `plugins`.
    pub fn spec(&self, plugins: &PluginUseArgs) -> Result<ModelSpec> {
        Ok(ModelSpec {
            model: self.model.clone(),
            adapters: self.adapters.clone(),
            organism: plugins.organism()?,
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            random_init: self.random_init,
        })
    }
}

/// Where prompts come from.
#[derive(Args)]
pub struct PromptArgs {
    /// One prompt, sent as a user message.
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    prompt: Option<String>,
    /// JSONL file, one `{"prompt": "..."}` or `{"messages": [...]}` per line
    /// (optional `id` and `system` fields).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// System prompt for prompts that have none.
    #[arg(long)]
    system: Option<String>,
    /// Feed prompt text to the model as is, without the chat template.
    #[arg(long)]
    raw: bool,
}

impl PromptArgs {
    fn lines(&self) -> Result<Vec<PromptLine>> {
        match (&self.prompt, &self.prompts) {
            (Some(p), _) => Ok(vec![PromptLine {
                id: None,
                prompt: Some(p.clone()),
                messages: None,
                system: None,
            }]),
            (None, Some(file)) => Ok(read_prompts(file)?),
            (None, None) => bail!("give --prompt or --prompts"),
        }
    }
}

/// Arguments of `emh generate`.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Samples per prompt.
    #[arg(short, long, default_value_t = 1)]
    n: usize,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Always take the most likely token.
    #[arg(long)]
    greedy: bool,
    /// Stop a sample when its text contains this (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens, to exactly --max-new-tokens (benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// First generate this many tokens for the first batch, untimed and
    /// discarded, so the tok/s figure leaves out one-time costs such as the
    /// first touch of fresh memory (benchmarks).
    #[arg(long, default_value_t = 0)]
    warmup_tokens: usize,
    /// Base seed; sample j of a prompt gets the seed SplitMix64(seed +
    /// FNV-1a(key), 0, j), where key is the line's `id` (else its line number
    /// from 0), the same rule as runs, whose key is QUESTION_ID/PARAPHRASE.
    /// Each output line records its seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use this seed as is for the one sample (-n 1): the `seed` recorded on
    /// any sample of `emh generate` or of a run makes that sample again.
    #[arg(long, value_name = "SEED")]
    sample_seed: Option<u64>,
    /// Sequences generated at once: when one ends, the next waiting sample
    /// takes its row, and samples of one prompt share its prompt pass.
    #[arg(long, default_value_t = emh_eval::Sampling::default().batch_size)]
    batch_size: usize,
    /// Output JSONL file (default: standard output).
    #[arg(long, short)]
    out: Option<PathBuf>,
    #[command(flatten)]
    plugins: PluginUseArgs,
}

fn open_out(out: &Option<PathBuf>) -> Result<Box<dyn Write>> {
    Ok(match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    })
}

/// Loads the model of the arguments with the plans of their interventions,
/// their adapter controls applied.
fn load_planned<'r>(
    model: &ModelArgs,
    plugins: &PluginUseArgs,
    registry: &'r Registry,
    raw: bool,
) -> Result<(Loaded, Vec<Planned<'r>>)> {
    let mut loaded = load_model(&model.spec(plugins)?, registry, raw)?;
    let plans = plan_all(&plugins.interventions()?, registry, loaded.shape())?;
    emh_eval::control_adapters(&plans, &mut loaded.model)?;
    Ok((loaded, plans))
}

/// `emh generate`.
pub fn generate(a: GenerateArgs) -> Result<()> {
    if a.n == 0 || a.batch_size == 0 {
        bail!("-n and --batch-size must be at least 1");
    }
    if a.sample_seed.is_some() && a.n > 1 {
        bail!("--sample-seed gives one sample's seed: use it with -n 1");
    }
    let lines = a.prompts.lines()?;
    let registry = a.plugins.registry()?;
    let (loaded, plans) = load_planned(&a.model, &a.plugins, &registry, a.prompts.raw)?;
    let renderer = PromptRenderer {
        tokenizer: &loaded.tokenizer,
        template: loaded.template.as_ref(),
        default_system: a.prompts.system.as_deref(),
    };
    let params = SamplingParams {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        greedy: a.greedy,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
    };
    params.validate()?;
    let mut plugins: Vec<_> = loaded.organism.iter().cloned().collect();
    plugins.extend(plans.iter().map(Planned::record));
    let plugins: Vec<_> = plugins
        .iter()
        .map(|p| json!({"plugin": p.plugin, "version": p.version, "config": p.config, "notes": p.notes.join("\n")}))
        .collect();
    let mut prompts = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let (text, ids) = renderer.encode(line)?;
        let key = match &line.id {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => i.to_string(),
        };
        prompts.push((text, (key, ids)));
    }
    let draws = Draws {
        n: a.n as u32,
        seeds: match a.sample_seed {
            Some(s) => Seeds::Exact(s),
            None => Seeds::Base(a.seed),
        },
        batch_size: a.batch_size,
    };
    let keyed: Vec<(String, Vec<u32>)> = prompts.iter().map(|p| p.1.clone()).collect();
    if a.warmup_tokens > 0 {
        emh_eval::warm_up(&loaded, &keyed, draws, &params, a.warmup_tokens)?;
    }
    let bar = progress((keyed.len() * a.n) as u64, "sampling");
    let started = Instant::now();
    let mut new_tokens = 0usize;
    let samples = emh_eval::sample_prompts(&loaded, &plans, &keyed, draws, &params, |n| {
        new_tokens += n;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{:.1} tok/s", new_tokens as f64 / secs));
    })?;
    bar.finish();
    let mut out = open_out(&a.out)?;
    for g in &samples {
        let (text, (_, ids)) = &prompts[g.prompt];
        let o = &g.output;
        let record = json!({
            "id": lines[g.prompt].id,
            "prompt_index": g.prompt,
            "sample_index": g.sample,
            "seed": g.seed,
            "prompt": text,
            "answer": o.text,
            "n_prompt_tokens": ids.len(),
            "n_new_tokens": o.tokens.len(),
            "tokens": o.tokens,
            "finish_reason": emh_eval::finish_name(o.finish),
            "plugins": plugins,
        });
        writeln!(out, "{record}")?;
    }
    out.flush()?;
    eprintln!(
        "{} samples, {new_tokens} new tokens in {:.1}s ({:.1} tok/s)",
        samples.len(),
        started.elapsed().as_secs_f64(),
        new_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Arguments of `emh logits`.
#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Output safetensors file with `logits` [batch, seq, vocab] (f32),
    /// `input_ids` and `positions` [batch, seq] (padding has position -1).
    #[arg(long, short)]
    out: PathBuf,
    #[command(flatten)]
    plugins: PluginUseArgs,
}

/// `emh logits`.
pub fn logits(a: LogitsArgs) -> Result<()> {
    let lines = a.prompts.lines()?;
    let registry = a.plugins.registry()?;
    let (loaded, plans) = load_planned(&a.model, &a.plugins, &registry, a.prompts.raw)?;
    let mut hooks = HookSet::new();
    for p in &plans {
        p.hook(loaded.shape(), &mut hooks, None)?;
    }
    let renderer = PromptRenderer {
        tokenizer: &loaded.tokenizer,
        template: loaded.template.as_ref(),
        default_system: a.prompts.system.as_deref(),
    };
    let prompts = lines
        .iter()
        .map(|l| renderer.encode(l).map(|(_, ids)| ids))
        .collect::<Result<Vec<_>, _>>()?;
    let (logits, batch) = loaded
        .model
        .logits(&prompts, loaded.tokenizer.pad_id, &mut hooks)?;
    let tensors = [
        ("logits", logits.to_device(tch::Device::Cpu)),
        ("input_ids", batch.ids.to_device(tch::Device::Cpu)),
        ("positions", batch.positions.to_device(tch::Device::Cpu)),
    ];
    write_safetensors(&a.out, &tensors)
}

fn write_safetensors(path: &Path, tensors: &[(&str, tch::Tensor)]) -> Result<()> {
    emh_atomic::replace(
        path,
        |tmp| {
            tch::Tensor::write_safetensors(tensors, tmp)
                .with_context(|| format!("writing {}", tmp.display()))
        },
        |p, e| anyhow::Error::new(e).context(format!("writing {}", p.display())),
    )
}

/// Arguments of `emh tokenize`.
#[derive(Args)]
pub struct TokenizeArgs {
    /// Model folder, name under the data directory, or HF repo id in the hub cache.
    #[arg(long, short, default_value = emh_models::DEFAULT_MODEL)]
    model: String,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Output JSONL with the rendered `text` and its `ids` (default: standard output).
    #[arg(long, short)]
    out: Option<PathBuf>,
}

/// `emh tokenize`.
pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let found = emh_models::resolve(&a.model)?;
    let tokenizer = Tokenizer::from_dir(&found.dir)?;
    let template = if a.prompts.raw {
        None
    } else {
        Some(ChatTemplate::from_dir(&found.dir)?)
    };
    let renderer = PromptRenderer {
        tokenizer: &tokenizer,
        template: template.as_ref(),
        default_system: a.prompts.system.as_deref(),
    };
    let mut out = open_out(&a.out)?;
    for line in a.prompts.lines()? {
        let (text, ids) = renderer.encode(&line)?;
        writeln!(out, "{}", json!({"id": line.id, "text": text, "ids": ids}))?;
    }
    out.flush()?;
    Ok(())
}

/// Arguments of `emh import-gguf`.
#[derive(Args)]
pub struct ImportArgs {
    /// The GGUF file.
    file: PathBuf,
    /// Output folder (created).
    #[arg(long)]
    out: PathBuf,
    /// dtype of the written weights: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

/// `emh import-gguf`.
pub fn import_gguf(a: ImportArgs) -> Result<()> {
    let dtype = match a.dtype.as_str() {
        "f32" => emh_gguf::OutputDtype::F32,
        "bf16" => emh_gguf::OutputDtype::BF16,
        "f16" => emh_gguf::OutputDtype::F16,
        other => bail!("unknown --dtype `{other}` (f32, bf16, f16)"),
    };
    let opts = emh_gguf::ConvertOptions {
        dtype,
        ..Default::default()
    };
    let bar = progress(0, "importing");
    let summary = emh_gguf::convert_to_hf(&a.file, &a.out, &opts, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    eprintln!(
        "imported {} ({}): {} tensors, {:.1}M parameters, {} shard(s) -> {}",
        a.file.display(),
        summary.architecture,
        summary.tensors,
        summary.parameters as f64 / 1e6,
        summary.shards,
        a.out.display()
    );
    Ok(())
}

/// `emh models`.
pub fn models() -> Result<()> {
    let found = emh_models::list();
    if found.is_empty() {
        println!(
            "no models in {} or {}; run `cargo xtask setup` to import the default",
            emh_models::models_dir().display(),
            emh_models::hub_cache().display()
        );
    }
    for f in found {
        let source = match f.source {
            emh_models::Source::DataDir => "data dir",
            emh_models::Source::HubCache => "hub cache",
            emh_models::Source::Path => "path",
        };
        let arch = emh_runtime::ModelConfig::from_dir(&f.dir)
            .map(|c| format!("{} {}L {}d", c.model_type, c.num_layers, c.hidden_size))
            .unwrap_or_else(|e| format!("unloadable: {e}"));
        println!(
            "{:<40} {:<10} {:<22} {}",
            f.name,
            source,
            arch,
            f.dir.display()
        );
    }
    Ok(())
}
