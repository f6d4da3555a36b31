//! Steering: x ← x + λ·v at chosen layers and tokens, v from a directions file
//! or inline. Sweep λ and layers by running it with several configs.

use emh_plugin_api::abi_stable::std_types::RVec;
use emh_plugin_api::config::{self, DirectionSource, Directions, Layers, Site, Span};
use emh_plugin_api::{export_plugin, ModelShape, Op, Plan, Plugin, PluginInfo, PluginKind};
use serde::Deserialize;

const NAME: &str = "steering";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// λ.
    scale: f64,
    vector: Option<Vec<f32>>,
    directions: Option<std::path::PathBuf>,
    tensor: Option<String>,
    #[serde(default)]
    layers: Layers,
    /// Use this layer's direction at every steered layer (default: each its own).
    source_layer: Option<u32>,
    #[serde(default)]
    site: Site,
    #[serde(default, rename = "where")]
    at: Span,
}

struct Steering;

impl Plugin for Steering {
    fn info() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Intervention,
            description: "add scale * direction to the residual stream at chosen layers and tokens"
                .into(),
            config_schema: include_str!("schema.json").into(),
        }
    }

    fn validate(config: &str) -> Result<(), String> {
        let c: Config = config::parse(NAME, config)?;
        DirectionSource::new(c.vector, c.directions, c.tensor).map(|_| ())
    }

    fn plan(config: &str, shape: ModelShape) -> Result<Plan, String> {
        let c: Config = config::parse(NAME, config)?;
        let dirs = Directions::load(
            &DirectionSource::new(c.vector, c.directions, c.tensor)?,
            shape,
        )?;
        config::check_layer(c.source_layer, shape)?;
        let steps = config::steps_per_layer(&c.layers, shape, c.site, &c.at, |layer| Op::Add {
            vector: RVec::from(dirs.layer(c.source_layer.unwrap_or(layer)).to_vec()),
            scale: c.scale,
        })?;
        Ok(Plan {
            steps,
            adapters: Default::default(),
            notes: serde_json::json!({"scale": c.scale}).to_string().into(),
        })
    }
}

export_plugin!(Steering);
