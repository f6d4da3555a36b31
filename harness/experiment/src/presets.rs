//! Presets: the steering and ablation experiments of a direction, each
//! beside its same-norm random control and a `none` baseline, as
//! experiment specs (written out, so they can be edited and run again with
//! `emh experiment`).
//!
//! - steer: λ × layer, `steering` and `random-control` (mode steering) per setting;
//! - ablate: layer-wise (each layer its own direction) and single-vector (one
//!   layer's direction at every layer) `mean-diff-ablation`, each beside
//!   `random-control` (mode ablation) with the same norms. A direction from
//!   another organism makes it a transfer experiment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use emh_eval::{EvalSpec, PluginUse};
use serde_json::json;

use crate::{ExperimentError, ExperimentSpec, InterventionEntry, ModelEntry};

/// What a steering sweep varies.
#[derive(Debug, Clone, PartialEq)]
pub struct SteerPreset {
    pub directions: PathBuf,
    pub layers: Vec<u32>,
    pub scales: Vec<f64>,
    /// Seed of the random control vectors.
    pub control_seed: u64,
    pub pairs: Option<PathBuf>,
}

/// What an ablation experiment ablates.
#[derive(Debug, Clone, PartialEq)]
pub struct AblatePreset {
    pub directions: PathBuf,
    /// Layers whose direction is also ablated alone, at every layer.
    pub single_layers: Vec<u32>,
    pub control_seed: u64,
    pub pairs: Option<PathBuf>,
}

/// A whole λ as an integer, so condition names read `scale=4`, not `scale=4.0`.
fn number(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

fn absolute(p: &Path) -> Result<PathBuf, ExperimentError> {
    std::path::absolute(p).map_err(|e| ExperimentError::io(p, e))
}

fn entry(
    name: &str,
    plugins: Vec<PluginUse>,
    sweep: BTreeMap<String, Vec<serde_json::Value>>,
) -> InterventionEntry {
    InterventionEntry {
        name: name.into(),
        plugins,
        sweep,
    }
}

fn plugin(name: &str, config: serde_json::Value) -> PluginUse {
    PluginUse {
        plugin: name.into(),
        config,
    }
}

/// The experiment every preset shares: the base's model, questions,
/// sampling, judge and thresholds, paths made absolute, and a `none` baseline.
fn shared(
    base: &EvalSpec,
    pairs: Option<&Path>,
    directions: &Path,
) -> Result<(ExperimentSpec, String), ExperimentError> {
    let c = &base.condition;
    if !c.interventions.is_empty() {
        return Err(ExperimentError::Spec {
            field: "interventions".into(),
            reason: "steer and ablate make their own interventions; for more, write an experiment spec (`emh experiment`)".into(),
        });
    }
    if !directions.is_file() {
        return Err(ExperimentError::io(directions, "no such directions file"));
    }
    // A model given as a path is made absolute; a name stays a name.
    let model_path = c
        .model
        .model
        .as_ref()
        .map(|m| match Path::new(m).exists() {
            true => absolute(Path::new(m)).map(|p| p.display().to_string()),
            false => Ok(m.clone()),
        })
        .transpose()?;
    let model = ModelEntry {
        name: "model".into(),
        model: model_path,
        adapters: c
            .model
            .adapters
            .iter()
            .map(|a| absolute(a))
            .collect::<Result<_, _>>()?,
        organism: c.model.organism.clone(),
        device: Some(c.model.device.clone()),
        dtype: c.model.dtype.clone(),
        checkpoints: None,
    };
    let mut questions = base.questions.clone();
    questions.file = absolute(&questions.file)?;
    let judge = base.judge.clone().map(|mut j| {
        j.cache = j.cache.map(|p| std::path::absolute(&p).unwrap_or(p));
        j
    });
    let spec = ExperimentSpec {
        out: PathBuf::from("."),
        questions,
        sampling: c.sampling.clone(),
        judge,
        thresholds: base.thresholds.clone(),
        seeds: None,
        models: vec![model],
        interventions: vec![entry("none", Vec::new(), BTreeMap::new())],
        pairs: pairs.map(absolute).transpose()?,
        nudges: None,
        self_rating: base.self_rating.clone(),
    };
    Ok((spec, absolute(directions)?.display().to_string()))
}

/// The steering experiment of `p` over `base`'s condition and questions.
pub fn steer_spec(base: &EvalSpec, p: &SteerPreset) -> Result<ExperimentSpec, ExperimentError> {
    if p.layers.is_empty() || p.scales.is_empty() {
        return Err(ExperimentError::Spec {
            field: "layers/scales".into(),
            reason: "give at least one layer and one scale".into(),
        });
    }
    let (mut spec, dirs) = shared(base, p.pairs.as_deref(), &p.directions)?;
    let sweep = BTreeMap::from([
        (
            "layers".to_string(),
            p.layers.iter().map(|l| json!([l])).collect(),
        ),
        (
            "scale".to_string(),
            p.scales.iter().map(|&s| number(s)).collect(),
        ),
    ]);
    spec.interventions.push(entry(
        "steer",
        vec![plugin(
            "steering",
            json!({"directions": dirs, "scale": 0.0}),
        )],
        sweep.clone(),
    ));
    spec.interventions.push(entry(
        "random",
        vec![plugin(
            "random-control",
            json!({"mode": "steering", "directions": dirs, "seed": p.control_seed, "scale": 0.0}),
        )],
        sweep,
    ));
    Ok(spec)
}

/// The ablation experiment of `p` over `base`'s condition and questions.
pub fn ablate_spec(base: &EvalSpec, p: &AblatePreset) -> Result<ExperimentSpec, ExperimentError> {
    let (mut spec, dirs) = shared(base, p.pairs.as_deref(), &p.directions)?;
    spec.interventions.push(entry(
        "ablate",
        vec![plugin(
            "mean-diff-ablation",
            json!({"directions": dirs, "mode": "layerwise"}),
        )],
        BTreeMap::new(),
    ));
    spec.interventions.push(entry(
        "random",
        vec![plugin(
            "random-control",
            json!({"mode": "ablation", "directions": dirs, "seed": p.control_seed}),
        )],
        BTreeMap::new(),
    ));
    if !p.single_layers.is_empty() {
        let layers: Vec<serde_json::Value> = p.single_layers.iter().map(|l| json!(l)).collect();
        spec.interventions.push(entry(
            "ablate-single",
            vec![plugin(
                "mean-diff-ablation",
                json!({"directions": dirs, "mode": "single", "layer": p.single_layers[0]}),
            )],
            BTreeMap::from([("layer".to_string(), layers.clone())]),
        ));
        spec.interventions.push(entry(
            "random-single",
            vec![plugin(
                "random-control",
                json!({"mode": "ablation", "directions": dirs, "seed": p.control_seed, "source_layer": p.single_layers[0]}),
            )],
            BTreeMap::from([("source_layer".to_string(), layers)]),
        ));
    }
    Ok(spec)
}
