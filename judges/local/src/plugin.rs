//! The `local` judge plugin: a [`LocalJudge`] on a model the harness loads.
//!
//! Each config's judge model is loaded once and kept for the process, so
//! batches after the first cost only their forward passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use emh_plugin_api::{
    config, export_plugin, JudgeBatch, JudgeIdentity, JudgeOutput, JudgeUsage, Plugin, PluginInfo,
    PluginKind,
};
use emh_runtime::{parse_device, parse_dtype, Model};
use emh_text::{ChatTemplate, Tokenizer};
use serde::Deserialize;

use crate::{JudgeFormat, LocalJudge};

const NAME: &str = "local";

/// The plugin's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// A model folder, or a name under the data directory or in the HF hub cache.
    #[serde(default = "default_model")]
    model: String,
    #[serde(default = "default_device")]
    device: String,
    #[serde(default = "default_dtype")]
    dtype: String,
    /// Text the assistant turn starts with, before the number.
    #[serde(default)]
    answer_prefix: String,
    /// `reference` (null below mass 0.25) or `constrained` (conditional on a number).
    #[serde(default)]
    mode: Mode,
}

/// How the numbers are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Reference,
    Constrained,
}

impl Config {
    fn format(&self) -> JudgeFormat {
        JudgeFormat {
            answer_prefix: self.answer_prefix.clone(),
            constrained: self.mode == Mode::Constrained,
        }
    }
}

fn default_model() -> String {
    emh_models::DEFAULT_MODEL.into()
}
fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "f32".into()
}

fn parse(config: &str) -> Result<Config, String> {
    let c: Config = config::parse(
        NAME,
        if config.trim().is_empty() {
            "{}"
        } else {
            config
        },
    )?;
    parse_device(&c.device).map_err(|e| e.to_string())?;
    parse_dtype(&c.dtype).map_err(|e| e.to_string())?;
    Ok(c)
}

/// The process's judges, one per config.
fn judge_for(config: &str) -> Result<Arc<Mutex<LocalJudge>>, String> {
    static JUDGES: OnceLock<Mutex<HashMap<String, Arc<Mutex<LocalJudge>>>>> = OnceLock::new();
    let mut judges = JUDGES
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| "the judge table is poisoned")?;
    if let Some(j) = judges.get(config) {
        return Ok(Arc::clone(j));
    }
    let c = parse(config)?;
    let dir = emh_models::resolve(&c.model)
        .map_err(|e| e.to_string())?
        .dir;
    let device = parse_device(&c.device).map_err(|e| e.to_string())?;
    if device.is_cuda() {
        emh_runtime::init_cuda();
    }
    let kind = parse_dtype(&c.dtype).map_err(|e| e.to_string())?;
    let model = Model::load(&dir, device, kind).map_err(|e| e.to_string())?;
    let tokenizer = Tokenizer::from_dir(&dir).map_err(|e| e.to_string())?;
    let template = ChatTemplate::from_dir(&dir).map_err(|e| e.to_string())?;
    let judge = Arc::new(Mutex::new(
        LocalJudge::new(model, tokenizer, template, c.format()).map_err(|e| e.to_string())?,
    ));
    judges.insert(config.to_string(), Arc::clone(&judge));
    Ok(judge)
}

struct LocalJudgePlugin;

impl Plugin for LocalJudgePlugin {
    fn info() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Judge,
            description: "In-process judge on a local chat model: the exact probability of every answer 0..100".into(),
            config_schema: serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "model": {"type": "string", "default": emh_models::DEFAULT_MODEL, "description": "model folder or name"},
                    "device": {"type": "string", "default": "cpu", "description": "cpu, cuda, cuda:N or auto"},
                    "dtype": {"enum": ["f32", "bf16", "f16"], "default": "f32"},
                    "answer_prefix": {"type": "string", "default": "", "description": "text the assistant turn starts with, e.g. \"Score:\""},
                    "mode": {"enum": ["reference", "constrained"], "default": "reference", "description": "reference: null below mass 0.25 on numbers; constrained: the expected answer given that it is a number"}
                }
            })
            .to_string()
            .into(),
        }
    }

    fn validate(config: &str) -> Result<(), String> {
        parse(config).map(|_| ())
    }

    fn judge_identity(config: &str) -> Result<JudgeIdentity, String> {
        let c = parse(config)?;
        let dir = emh_models::resolve(&c.model)
            .map_err(|e| e.to_string())?
            .dir;
        // Another format is another judge: its judgments must not mix with these.
        let mut format = Vec::new();
        if c.mode == Mode::Constrained {
            format.push("constrained".to_string());
        }
        if !c.answer_prefix.is_empty() {
            format.push(format!("prefix {:?}", c.answer_prefix));
        }
        let id = match format.is_empty() {
            true => format!("local:{}", c.model),
            false => format!("local:{} ({})", c.model, format.join(", ")),
        };
        Ok(JudgeIdentity {
            id,
            model: c.model,
            endpoint: format!("local:{}", dir.display()),
            // Device and precision move the probabilities a little.
            params: serde_json::json!({
                "device": c.device,
                "dtype": c.dtype,
                "answers": "0..=100 exact",
                "answer_prefix": c.answer_prefix,
                "mode": if c.mode == Mode::Constrained { "constrained" } else { "reference" },
            }),
            one_call: false,
        })
    }

    fn judge(config: &str, prompts: &[String]) -> Result<JudgeBatch, String> {
        let judge = judge_for(config)?;
        let mut judge = judge.lock().map_err(|_| "the judge is poisoned")?;
        let outputs = judge
            .number_probs_many(prompts)
            .into_iter()
            .map(|r| match r {
                Ok((probs, preferred)) => JudgeOutput::Numbers {
                    probs,
                    preferred,
                    min_mass: Some(judge.format().min_mass()),
                },
                Err(e) => JudgeOutput::Failed {
                    error: e.to_string(),
                },
            })
            .collect();
        Ok(JudgeBatch {
            outputs,
            usage: JudgeUsage {
                requests: prompts.len() as u64,
                ..Default::default()
            },
        })
    }
}

export_plugin!(LocalJudgePlugin);
