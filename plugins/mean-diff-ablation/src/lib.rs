//! Mean-diff ablation: x ← x − v̂v̂ᵀx at every chosen layer, either each
//! layer with its own direction (layer-wise) or one layer's direction
//! everywhere (single, e.g. layer 24's).

use emh_plugin_api::abi_stable::std_types::RVec;
use emh_plugin_api::config::{self, DirectionSource, Directions, Layers, Site, Span};
use emh_plugin_api::{export_plugin, ModelShape, Op, Plan, Plugin, PluginInfo, PluginKind};
use serde::Deserialize;

const NAME: &str = "mean-diff-ablation";

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Layerwise,
    Single,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    vector: Option<Vec<f32>>,
    directions: Option<std::path::PathBuf>,
    tensor: Option<String>,
    #[serde(default)]
    mode: Mode,
    /// The layer whose direction `single` mode applies everywhere.
    layer: Option<u32>,
    /// Layers to ablate at (default: all).
    #[serde(default)]
    layers: Layers,
    #[serde(default)]
    site: Site,
    #[serde(default, rename = "where")]
    at: Span,
}

impl Config {
    fn check(&self) -> Result<(), String> {
        match (self.mode, self.layer) {
            (Mode::Single, None) => {
                Err("mode `single` needs `layer`, the layer whose direction is used".into())
            }
            (Mode::Layerwise, Some(_)) => Err("`layer` only applies to mode `single`".into()),
            _ => Ok(()),
        }
    }
}

struct Ablation;

impl Plugin for Ablation {
    fn info() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Intervention,
            description: "project a direction out of the residual stream (layer-wise or one layer's vector everywhere)".into(),
            config_schema: include_str!("schema.json").into(),
        }
    }

    fn validate(config: &str) -> Result<(), String> {
        let c: Config = config::parse(NAME, config)?;
        c.check()?;
        DirectionSource::new(c.vector, c.directions, c.tensor).map(|_| ())
    }

    fn plan(config: &str, shape: ModelShape) -> Result<Plan, String> {
        let c: Config = config::parse(NAME, config)?;
        c.check()?;
        let dirs = Directions::load(
            &DirectionSource::new(c.vector, c.directions, c.tensor)?,
            shape,
        )?;
        config::check_layer(c.layer, shape)?;
        let steps =
            config::steps_per_layer(&c.layers, shape, c.site, &c.at, |layer| Op::ProjectOut {
                vector: RVec::from(dirs.layer(c.layer.unwrap_or(layer)).to_vec()),
            })?;
        let mode = if c.mode == Mode::Single {
            "single"
        } else {
            "layerwise"
        };
        Ok(Plan {
            steps,
            adapters: Default::default(),
            notes: serde_json::json!({"mode": mode, "layer": c.layer})
                .to_string()
                .into(),
        })
    }
}

export_plugin!(Ablation);
