//! A minimal intervention: multiply the residual stream by `factor` at some
//! layers. Copy this crate to start your own.

use emh_plugin_api::config::{self, Layers, Site, Span};
use emh_plugin_api::{export_plugin, ModelShape, Op, Plan, Plugin, PluginInfo, PluginKind};
use serde::Deserialize;

const NAME: &str = "template-scale";

/// The config users pass as JSON: `--intervention 'template-scale={"factor": 0.5}'`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    factor: f64,
    #[serde(default)]
    layers: Layers,
    #[serde(default)]
    site: Site,
    #[serde(default, rename = "where")]
    at: Span,
}

struct TemplateScale;

impl Plugin for TemplateScale {
    fn info() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Intervention,
            description: "multiply the residual stream by a factor at chosen layers".into(),
            config_schema: r#"{"type": "object", "required": ["factor"], "properties": {"factor": {"type": "number"}, "layers": {}, "site": {}, "where": {}}}"#.into(),
        }
    }

    fn validate(config: &str) -> Result<(), String> {
        let c: Config = config::parse(NAME, config)?;
        if !c.factor.is_finite() {
            return Err(format!("{NAME}: factor must be finite"));
        }
        Ok(())
    }

    fn plan(config: &str, shape: ModelShape) -> Result<Plan, String> {
        let c: Config = config::parse(NAME, config)?;
        let steps = config::steps_per_layer(&c.layers, shape, c.site, &c.at, |_| Op::Scale {
            factor: c.factor,
        })?;
        Ok(Plan {
            steps,
            adapters: Default::default(),
            notes: Default::default(),
        })
    }
}

export_plugin!(TemplateScale);
