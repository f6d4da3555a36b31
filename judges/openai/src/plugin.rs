//! The `openai` judge plugin: this crate's client behind the plugin interface.
//!
//! One client per config lives for the whole process, so adaptive
//! concurrency learned in one batch carries over to the next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use emh_judge_core::TopToken;
use emh_plugin_api::{
    config, export_plugin, JudgeBatch, JudgeIdentity, JudgeOutput, JudgeUsage, Plugin, PluginInfo,
    PluginKind, TokenLogprob,
};
use serde::Deserialize;

use crate::{params, Api, Client, Item, Prices, Settings, Usage};

const NAME: &str = "openai";
const OPENAI_URL: &str = "https://api.openai.com/v1";

/// The plugin's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_model")]
    model: String,
    #[serde(default = "default_url")]
    base_url: String,
    /// `openai` (also any compatible server) or `azure`.
    #[serde(default = "default_api")]
    api: String,
    deployment: Option<String>,
    api_version: Option<String>,
    /// Environment variable with the key; `""` for servers that need none.
    api_key_env: Option<String>,
    timeout_s: Option<f64>,
    max_tries: Option<u32>,
    initial_concurrency: Option<usize>,
    max_concurrency: Option<usize>,
    /// Prices per million tokens: `[input, output]`.
    prices: Option<[f64; 2]>,
    /// Judge every prompt of a run in one Batch API job (half price, hours of latency).
    #[serde(default)]
    batch_api: bool,
    /// Seconds between polls of a batch job.
    poll_s: Option<f64>,
    /// Where pending batch jobs are remembered, so a killed run picks its job up again.
    state_dir: Option<std::path::PathBuf>,
}

fn default_model() -> String {
    "gpt-4o-2024-08-06".into()
}
fn default_url() -> String {
    OPENAI_URL.into()
}
fn default_api() -> String {
    "openai".into()
}

impl Config {
    fn settings(&self) -> Result<Settings, String> {
        let mut s = Settings::new(&self.model, &self.base_url);
        s.api = match self.api.as_str() {
            "openai" => Api::OpenAi,
            "azure" => Api::Azure {
                deployment: self
                    .deployment
                    .clone()
                    .ok_or("an azure judge needs `deployment`")?,
                api_version: self
                    .api_version
                    .clone()
                    .ok_or("an azure judge needs `api_version`")?,
            },
            other => return Err(format!("unknown api `{other}`: use openai or azure")),
        };
        // The official endpoints need a key; a local server usually does not.
        s.api_key_env = match (&self.api_key_env, &s.api) {
            (Some(v), _) if v.is_empty() => None,
            (Some(v), _) => Some(v.clone()),
            (None, Api::Azure { .. }) => Some("AZURE_OPENAI_API_KEY".into()),
            (None, Api::OpenAi) if s.base_url == OPENAI_URL => Some("OPENAI_API_KEY".into()),
            (None, Api::OpenAi) => None,
        };
        if let Some(t) = self.timeout_s {
            if t.is_nan() || t <= 0.0 {
                return Err(format!("timeout_s must be positive, not {t}"));
            }
            s.timeout = Duration::from_secs_f64(t);
        }
        s.max_tries = self.max_tries.unwrap_or(s.max_tries);
        s.initial_concurrency = self.initial_concurrency.unwrap_or(s.initial_concurrency);
        s.max_concurrency = self.max_concurrency.unwrap_or(s.max_concurrency);
        if s.max_tries == 0
            || s.initial_concurrency == 0
            || s.max_concurrency < s.initial_concurrency
        {
            return Err(
                "max_tries and initial_concurrency must be at least 1, and max_concurrency at least initial_concurrency"
                    .into(),
            );
        }
        s.prices = self.prices.map(|[i, o]| Prices {
            input_per_million: i,
            output_per_million: o,
        });
        Ok(s)
    }
}

fn parse(config: &str) -> Result<Config, String> {
    config::parse(
        NAME,
        if config.trim().is_empty() {
            "{}"
        } else {
            config
        },
    )
}

/// The process's clients and the runtime they run on.
fn client(config: &str) -> Result<(Arc<Client>, &'static tokio::runtime::Runtime), String> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    static CLIENTS: OnceLock<Mutex<HashMap<String, Arc<Client>>>> = OnceLock::new();
    let runtime = match RUNTIME.get() {
        Some(r) => r,
        None => {
            let r = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the judge's runtime: {e}"))?;
            RUNTIME.get_or_init(|| r)
        }
    };
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| "the judge's client table is poisoned")?;
    if let Some(c) = clients.get(config) {
        return Ok((Arc::clone(c), runtime));
    }
    let settings = parse(config)?.settings()?;
    // reqwest builds its connection pool inside the runtime.
    let c = Arc::new(
        runtime
            .block_on(async { Client::new(settings, None) })
            .map_err(|e| e.to_string())?,
    );
    clients.insert(config.to_string(), Arc::clone(&c));
    Ok((c, runtime))
}

fn spent(after: Usage, before: Usage) -> JudgeUsage {
    JudgeUsage {
        requests: after.requests - before.requests,
        retries: after.retries - before.retries,
        prompt_tokens: after.prompt_tokens - before.prompt_tokens,
        completion_tokens: after.completion_tokens - before.completion_tokens,
        cost: after.cost - before.cost,
    }
}

/// The plugin output for a judgment's top tokens.
fn top_output(top: Vec<TopToken>) -> JudgeOutput {
    JudgeOutput::Top {
        top: top
            .into_iter()
            .map(|t| TokenLogprob {
                token: t.token,
                logprob: t.logprob,
            })
            .collect(),
    }
}

struct OpenAiJudge;

impl Plugin for OpenAiJudge {
    fn info() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Judge,
            description: "Logprob judge on OpenAI, Azure OpenAI or any OpenAI-compatible server (vLLM, Ollama, llama.cpp)".into(),
            config_schema: serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "model": {"type": "string", "default": "gpt-4o-2024-08-06"},
                    "base_url": {"type": "string", "default": OPENAI_URL},
                    "api": {"enum": ["openai", "azure"], "default": "openai"},
                    "deployment": {"type": "string", "description": "azure deployment"},
                    "api_version": {"type": "string", "description": "azure api-version"},
                    "api_key_env": {"type": "string", "description": "variable holding the key; \"\" for none; default OPENAI_API_KEY on api.openai.com, AZURE_OPENAI_API_KEY on azure"},
                    "timeout_s": {"type": "number", "default": 60},
                    "max_tries": {"type": "integer", "default": 8},
                    "initial_concurrency": {"type": "integer", "default": 8},
                    "max_concurrency": {"type": "integer", "default": 128},
                    "prices": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2, "description": "[input, output] per million tokens"},
                    "batch_api": {"type": "boolean", "default": false, "description": "every prompt in one Batch API job: half price, hours of latency"},
                    "poll_s": {"type": "number", "default": 30, "description": "seconds between batch polls"},
                    "state_dir": {"type": "string", "description": "where pending batch jobs are remembered (default: judge-batches in the data directory)"}
                }
            })
            .to_string()
            .into(),
        }
    }

    fn validate(config: &str) -> Result<(), String> {
        let c = parse(config)?;
        if c.batch_api && c.api != "openai" {
            return Err("batch_api needs the OpenAI API".into());
        }
        if let Some(p) = c.poll_s {
            if p.is_nan() || p <= 0.0 {
                return Err(format!("poll_s must be positive, not {p}"));
            }
        }
        c.settings().map(|_| ())
    }

    fn judge_identity(config: &str) -> Result<JudgeIdentity, String> {
        let cfg = parse(config)?;
        let (c, _) = client(config)?;
        Ok(JudgeIdentity {
            id: cfg.model,
            model: c.settings.model.clone(),
            endpoint: c.url(),
            params: params(),
            one_call: cfg.batch_api,
        })
    }

    fn judge(config: &str, prompts: &[String]) -> Result<JudgeBatch, String> {
        let (c, runtime) = client(config)?;
        let cfg = parse(config)?;
        let before = c.usage();
        let outputs: Vec<JudgeOutput> = if cfg.batch_api {
            let state_dir = cfg
                .state_dir
                .clone()
                .unwrap_or_else(|| emh_models::data_dir().join("judge-batches"));
            let poll = Duration::from_secs_f64(cfg.poll_s.unwrap_or(30.0));
            let answers = runtime
                .block_on(c.judge_batch(prompts, &state_dir, poll, |status| {
                    eprintln!("openai batch job: {status}");
                }))
                .map_err(|e| e.to_string())?;
            answers
                .into_iter()
                .map(|a| match a {
                    Ok(top) => top_output(top),
                    Err(error) => JudgeOutput::Failed { error },
                })
                .collect()
        } else {
            let items = prompts
                .iter()
                .enumerate()
                .map(|(i, p)| Item {
                    id: format!("batch item {i}"),
                    prompt: p.clone(),
                })
                .collect();
            runtime
                .block_on(c.judge_each(items, |_| {}))
                .into_iter()
                .map(|r| match r {
                    Ok(j) => top_output(j.top),
                    Err(e) => JudgeOutput::Failed {
                        error: e.to_string(),
                    },
                })
                .collect()
        };
        Ok(JudgeBatch {
            outputs,
            usage: spent(c.usage(), before),
        })
    }
}

export_plugin!(OpenAiJudge);
