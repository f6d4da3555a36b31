//! Adapter scaling: multiply the output of chosen LoRA adapters of an
//! organism, by adapter name and layer (for example the "medical" adapters up
//! and the "general" ones down); a factor of 0 switches them off.

use emh_plugin_api::abi_stable::std_types::RVec;
use emh_plugin_api::config;
use emh_plugin_api::{
    export_plugin, AdapterControl, ModelShape, Plan, Plugin, PluginInfo, PluginKind,
};
use serde::Deserialize;

const NAME: &str = "adapter-scaling";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// Adapter (folder) name; every adapter when absent.
    adapter: Option<String>,
    /// Adapted layers; all of the adapter's when absent.
    layers: Option<Vec<u32>>,
    factor: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rules: Vec<Rule>,
}

fn parse(config: &str) -> Result<Config, String> {
    let c: Config = config::parse(NAME, config)?;
    if c.rules.is_empty() {
        return Err(format!("{NAME}: `rules` is empty"));
    }
    if let Some(r) = c.rules.iter().find(|r| !r.factor.is_finite()) {
        return Err(format!("{NAME}: factor {} is not finite", r.factor));
    }
    Ok(c)
}

struct AdapterScaling;

impl Plugin for AdapterScaling {
    fn info() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Intervention,
            description:
                "multiply chosen LoRA adapters of an organism by a factor, per adapter and layer"
                    .into(),
            config_schema: include_str!("schema.json").into(),
        }
    }

    fn validate(config: &str) -> Result<(), String> {
        parse(config).map(|_| ())
    }

    fn plan(config: &str, shape: ModelShape) -> Result<Plan, String> {
        let c = parse(config)?;
        let mut adapters = Vec::new();
        for r in c.rules {
            let layers = r.layers.unwrap_or_default();
            if let Some(l) = layers.iter().find(|&&l| l >= shape.num_layers) {
                return Err(format!(
                    "{NAME}: layer {l} does not exist (the model has {})",
                    shape.num_layers
                ));
            }
            adapters.push(AdapterControl {
                adapter: r.adapter.unwrap_or_default().into(),
                layers: RVec::from(layers),
                factor: r.factor,
            });
        }
        Ok(Plan {
            steps: RVec::new(),
            adapters: adapters.into(),
            notes: Default::default(),
        })
    }
}

export_plugin!(AdapterScaling);
