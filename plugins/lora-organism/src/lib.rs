//! LoRA organisms: a base model with PEFT LoRA adapters over it, unmerged.
//! The runtime applies the adapters natively; this plugin names and checks them.

use std::path::Path;

use emh_plugin_api::abi_stable::std_types::RVec;
use emh_plugin_api::config;
use emh_plugin_api::{export_plugin, AdapterSpec, Organism, Plugin, PluginInfo, PluginKind};
use serde::Deserialize;

const NAME: &str = "lora-organism";

#[derive(Deserialize)]
#[serde(untagged)]
enum AdapterEntry {
    Path(String),
    Scaled { path: String, scale: f64 },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Base model; default: the first adapter's `base_model_name_or_path`.
    base: Option<String>,
    adapters: Vec<AdapterEntry>,
}

/// Checks a PEFT folder and returns its `base_model_name_or_path`, if any.
fn check_adapter(path: &str) -> Result<Option<String>, String> {
    let dir = Path::new(path);
    let cfg = dir.join("adapter_config.json");
    let text =
        std::fs::read_to_string(&cfg).map_err(|e| format!("{NAME}: {}: {e}", cfg.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{NAME}: {}: invalid JSON: {e}", cfg.display()))?;
    if v["peft_type"].as_str().is_some_and(|t| t != "LORA") {
        return Err(format!(
            "{NAME}: {}: peft_type {} is not LORA",
            cfg.display(),
            v["peft_type"]
        ));
    }
    let weights = dir.join("adapter_model.safetensors");
    if !weights.is_file() {
        return Err(format!("{NAME}: {} is missing", weights.display()));
    }
    Ok(v["base_model_name_or_path"].as_str().map(String::from))
}

fn organism(config: &str) -> Result<Organism, String> {
    let c: Config = config::parse(NAME, config)?;
    if c.adapters.is_empty() {
        return Err(format!("{NAME}: `adapters` is empty"));
    }
    let mut base = c.base;
    let mut adapters = Vec::new();
    for entry in c.adapters {
        let (path, scale) = match entry {
            AdapterEntry::Path(p) => (p, 1.0),
            AdapterEntry::Scaled { path, scale } => (path, scale),
        };
        let declared = check_adapter(&path)?;
        base = base.or(declared);
        adapters.push(AdapterSpec {
            path: path.into(),
            scale,
        });
    }
    Ok(Organism {
        base: base.unwrap_or_default().into(),
        adapters: RVec::from(adapters),
        notes: Default::default(),
    })
}

struct LoraOrganism;

impl Plugin for LoraOrganism {
    fn info() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Model,
            description: "a base model with PEFT LoRA adapters over it, unmerged".into(),
            config_schema: include_str!("schema.json").into(),
        }
    }

    fn validate(config: &str) -> Result<(), String> {
        organism(config).map(|_| ())
    }

    fn organism(config: &str) -> Result<Organism, String> {
        organism(config)
    }
}

export_plugin!(LoraOrganism);
