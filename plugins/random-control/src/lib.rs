//! Random-vector controls: the steering or ablation of a given direction,
//! done with a random direction of the same norm per layer, drawn from a
//! recorded seed (SplitMix64 + Box-Muller, so it is the same on every machine).

use emh_plugin_api::abi_stable::std_types::RVec;
use emh_plugin_api::config::{self, norm, DirectionSource, Directions, Layers, Site, Span};
use emh_plugin_api::{export_plugin, ModelShape, Op, Plan, Plugin, PluginInfo, PluginKind};
use serde::Deserialize;

const NAME: &str = "random-control";

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Ablation,
    Steering,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
    seed: u64,
    /// λ, for steering.
    scale: Option<f64>,
    vector: Option<Vec<f32>>,
    directions: Option<std::path::PathBuf>,
    tensor: Option<String>,
    /// Match the norm of this layer's direction at every layer (single-vector controls).
    source_layer: Option<u32>,
    #[serde(default)]
    layers: Layers,
    #[serde(default)]
    site: Site,
    #[serde(default, rename = "where")]
    at: Span,
}

impl Config {
    fn check(&self) -> Result<(), String> {
        match (self.mode, self.scale) {
            (Mode::Steering, None) => Err("mode `steering` needs `scale`".into()),
            (Mode::Ablation, Some(_)) => Err("`scale` only applies to mode `steering`".into()),
            _ => Ok(()),
        }
    }
}

/// SplitMix64: a tiny generator with a fixed, documented output stream.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// A random direction with the given norm, from the generator of `seed` and `layer`.
fn random_like(norm_wanted: f64, hidden: usize, seed: u64, layer: u32) -> Vec<f32> {
    let mut rng = SplitMix(seed ^ (layer as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let v: Vec<f64> = (0..hidden).map(|_| rng.normal()).collect();
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| (x / n * norm_wanted) as f32).collect()
}

struct RandomControl;

impl Plugin for RandomControl {
    fn info() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Intervention,
            description: "steer or ablate a random direction with the norm of a given one, from a recorded seed".into(),
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
        config::check_layer(c.source_layer, shape)?;
        let mut norms = Vec::new();
        let steps = config::steps_per_layer(&c.layers, shape, c.site, &c.at, |layer| {
            let source = c.source_layer.unwrap_or(layer);
            let n = norm(dirs.layer(source));
            norms.push(n);
            // A single-vector control uses one random vector everywhere, as its real counterpart does.
            let draw_layer = if c.source_layer.is_some() {
                source
            } else {
                layer
            };
            let vector = RVec::from(random_like(
                n,
                shape.hidden_size as usize,
                c.seed,
                draw_layer,
            ));
            match c.mode {
                Mode::Ablation => Op::ProjectOut { vector },
                Mode::Steering => Op::Add {
                    vector,
                    scale: c.scale.expect("checked"),
                },
            }
        })?;
        Ok(Plan {
            steps,
            adapters: Default::default(),
            notes:
                serde_json::json!({"seed": c.seed, "rng": "splitmix64+box-muller", "norms": norms})
                    .to_string()
                    .into(),
        })
    }
}

export_plugin!(RandomControl);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_vectors_keep_the_norm_and_depend_only_on_seed_and_layer() {
        let a = random_like(3.5, 64, 7, 2);
        assert!((norm(&a) - 3.5).abs() < 1e-5);
        assert_eq!(a, random_like(3.5, 64, 7, 2));
        assert_ne!(a, random_like(3.5, 64, 8, 2));
        assert_ne!(a, random_like(3.5, 64, 7, 3));
    }
}
