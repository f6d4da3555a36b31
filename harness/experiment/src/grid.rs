//! The experiment spec: a grid of models × interventions × swept plugin
//! parameters × nudges × seeds, expanded to named conditions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use emh_eval::{
    pick_nudges, Condition, EvalSpec, JudgeSpec, ModelSpec, Nudge, PluginUse, QuestionSpec,
    Sampling, SelfRating,
};
use emh_metrics::Thresholds;
use emh_plugins::Registry;
use serde::{Deserialize, Serialize};

use crate::ExperimentError;

/// A model or organism of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Names the model in condition names.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organism: Option<PluginUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// A training folder: each subfolder holding an adapter
    /// (`adapter_config.json`) is one more model, `NAME@SUBFOLDER`, in the
    /// order of the number in its name (`checkpoint-100` before `checkpoint-1000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<PathBuf>,
}

/// Interventions applied together, and parameters swept over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterventionEntry {
    /// Names the intervention in condition names.
    pub name: String,
    /// Plugins applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginUse>,
    /// Config key → values: one condition per value (several keys cross).
    /// Each key is set in every plugin of the entry whose config schema has it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sweep: BTreeMap<String, Vec<serde_json::Value>>,
}

/// The nudges axis: nudges of a file, each crossed with every other axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NudgeAxis {
    /// A nudges file (TOML `[[nudge]]` tables), relative to the spec file.
    pub file: PathBuf,
    /// The nudges to use, in this order [default: all, in file order].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

/// An experiment: what every condition shares, and the axes of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Folder of the runs, one per condition (relative to the spec file).
    pub out: PathBuf,
    pub questions: QuestionSpec,
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeSpec>,
    #[serde(default)]
    pub thresholds: Thresholds,
    /// Base seeds: the grid is run once per seed [default: sampling.seed alone].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<u64>>,
    pub models: Vec<ModelEntry>,
    /// [default: one entry, `none`, with no plugins]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interventions: Vec<InterventionEntry>,
    /// Labelled answer pairs (JSONL, relative to the spec file): each
    /// condition's log-prob preference for the misaligned answers goes into
    /// the summary beside the judged rates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<PathBuf>,
    /// Nudges to cross with models and interventions (`__NUDGE` in names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nudges: Option<NudgeAxis>,
    /// Have each condition's model rate every question itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_rating: Option<SelfRating>,
}

/// One expanded condition: its eval spec, run directory and grid axes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    pub spec: EvalSpec,
    pub dir: PathBuf,
    /// The model's name (`NAME` or `NAME@CHECKPOINT`).
    pub model: String,
    /// The intervention entry's name.
    pub intervention: String,
    /// The nudge's name, when the grid has a nudges axis.
    pub nudge: Option<String>,
    pub seed: u64,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ExperimentError {
    ExperimentError::Spec {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A value as it reads in a condition name: `8`, `0.5`, `3-6`, `name`.
fn short(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(short).collect::<Vec<_>>().join("-"),
        other => other.to_string(),
    }
}

/// Keeps names usable as folder names everywhere.
fn clean(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=-@+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The property names a plugin's JSON schema lists.
fn schema_keys(schema: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(schema)
        .ok()
        .and_then(|s| {
            s.get("properties")
                .and_then(|p| p.as_object())
                .map(|o| o.keys().cloned().collect())
        })
        .unwrap_or_default()
}

/// `base.join(p)` for a relative path.
fn under(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The number in a checkpoint folder's name, for ordering.
fn step_of(name: &str) -> u64 {
    let digits: String = name
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().unwrap_or(u64::MAX)
}

/// The models of one entry: itself, or one per checkpoint folder.
fn models_of(e: &ModelEntry, base: &Path) -> Result<Vec<(String, ModelSpec)>, ExperimentError> {
    let model = e.model.as_ref().map(|m| {
        // A model given by a path relative to the spec file; names stay names.
        let p = base.join(m);
        if !Path::new(m).is_absolute() && p.exists() {
            p.display().to_string()
        } else {
            m.clone()
        }
    });
    let spec = ModelSpec {
        model,
        adapters: e.adapters.iter().map(|a| under(base, a)).collect(),
        organism: e.organism.clone(),
        device: e.device.clone().unwrap_or_else(|| "auto".into()),
        dtype: e.dtype.clone(),
        random_init: None,
    };
    let Some(folder) = &e.checkpoints else {
        return Ok(vec![(e.name.clone(), spec)]);
    };
    let folder = under(base, folder);
    let entries = std::fs::read_dir(&folder).map_err(|err| {
        bad(
            format!("models.{}.checkpoints", e.name),
            format!("{}: {err}", folder.display()),
        )
    })?;
    let mut found: Vec<(u64, String, PathBuf)> = entries
        .flatten()
        .map(|d| d.path())
        .filter(|p| p.join("adapter_config.json").is_file())
        .map(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (step_of(&n), n, p)
        })
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(bad(
            format!("models.{}.checkpoints", e.name),
            format!("{}: no adapter folders in it", folder.display()),
        ));
    }
    Ok(found
        .into_iter()
        .map(|(_, n, p)| {
            let mut s = spec.clone();
            s.adapters.push(p);
            (format!("{}@{n}", e.name), s)
        })
        .collect())
}

/// The interventions of one entry: one per point of its sweep.
fn interventions_of(
    e: &InterventionEntry,
    registry: &Registry,
) -> Result<Vec<(String, Vec<PluginUse>)>, ExperimentError> {
    let mut points: Vec<(String, Vec<PluginUse>)> = vec![(e.name.clone(), e.plugins.clone())];
    for (key, values) in &e.sweep {
        let field = format!("interventions.{}.sweep.{key}", e.name);
        if values.is_empty() {
            return Err(bad(field, "no values: the grid would be empty"));
        }
        let mut takers = Vec::new();
        for (i, u) in e.plugins.iter().enumerate() {
            let plugin = registry
                .get(&u.plugin)
                .map_err(|err| bad(&field, err.to_string()))?;
            if schema_keys(&plugin.config_schema).contains(key) {
                takers.push(i);
            }
        }
        if takers.is_empty() {
            let known: Vec<String> = e
                .plugins
                .iter()
                .map(|u| {
                    let keys = registry
                        .get(&u.plugin)
                        .map(|p| schema_keys(&p.config_schema).join(", "))
                        .unwrap_or_default();
                    format!("{}: {keys}", u.plugin)
                })
                .collect();
            return Err(bad(
                field,
                format!(
                    "no plugin of this entry has a config field `{key}` ({})",
                    if known.is_empty() {
                        "it has no plugins".to_string()
                    } else {
                        known.join("; ")
                    }
                ),
            ));
        }
        let takers = &takers;
        points = points
            .into_iter()
            .flat_map(|(name, plugins)| {
                values.iter().map(move |v| {
                    let mut plugins = plugins.clone();
                    for &i in takers {
                        if let Some(o) = plugins[i].config.as_object_mut() {
                            o.insert(key.clone(), v.clone());
                        }
                    }
                    (format!("{name}__{key}={}", short(v)), plugins)
                })
            })
            .collect();
    }
    Ok(points)
}

impl ExperimentSpec {
    /// Expands the grid into named conditions, paths made relative to
    /// `base` (the spec file's folder), checking every axis first: sweeps over
    /// config fields the plugin does not have, empty axes and unknown
    /// plugins are refused before any work, naming the field.
    pub fn expand(
        &self,
        base: &Path,
        registry: &Registry,
    ) -> Result<Vec<Planned>, ExperimentError> {
        if self.models.is_empty() {
            return Err(bad("models", "no models: the grid would be empty"));
        }
        let seeds = match &self.seeds {
            Some(s) if s.is_empty() => return Err(bad("seeds", "empty: the grid would be empty")),
            Some(s) => s.clone(),
            None => vec![self.sampling.seed],
        };
        let mut models = Vec::new();
        for e in &self.models {
            models.extend(models_of(e, base)?);
        }
        let entries = if self.interventions.is_empty() {
            vec![InterventionEntry {
                name: "none".into(),
                plugins: Vec::new(),
                sweep: BTreeMap::new(),
            }]
        } else {
            self.interventions.clone()
        };
        let mut interventions = Vec::new();
        for e in &entries {
            for u in &e.plugins {
                registry
                    .get(&u.plugin)
                    .map_err(|err| bad(format!("interventions.{}", e.name), err.to_string()))?;
            }
            for (point, plugins) in interventions_of(e, registry)? {
                interventions.push((e.name.clone(), point, plugins));
            }
        }
        let out = under(base, &self.out);
        let questions = QuestionSpec {
            file: under(base, &self.questions.file),
            ..self.questions.clone()
        };
        let judge = self.judge.clone().map(|mut j| {
            j.cache = j.cache.map(|c| under(base, &c));
            j
        });
        let nudges: Vec<Option<Nudge>> = match &self.nudges {
            None => vec![None],
            Some(axis) => {
                let picked = pick_nudges(&under(base, &axis.file), axis.names.as_deref())
                    .map_err(|e| bad("nudges", e.to_string()))?;
                if picked.is_empty() {
                    return Err(bad("nudges", "no nudges: the grid would be empty"));
                }
                picked.into_iter().map(Some).collect()
            }
        };
        let mut planned = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (model_name, model) in &models {
            for (entry, int_name, plugins) in &interventions {
                for nudge in &nudges {
                    for &seed in &seeds {
                        let mut name = format!("{model_name}__{int_name}");
                        if let Some(n) = nudge {
                            name.push_str(&format!("__{}", n.name));
                        }
                        if self.seeds.is_some() {
                            name.push_str(&format!("__seed={seed}"));
                        }
                        let name = clean(&name);
                        if !names.insert(name.clone()) {
                            return Err(bad(
                            "models/interventions",
                            format!("two conditions are both named `{name}`; give entries distinct names"),
                        ));
                        }
                        let spec = EvalSpec {
                            condition: Condition {
                                name: name.clone(),
                                model: model.clone(),
                                interventions: plugins.clone(),
                                nudge: nudge.clone(),
                                sampling: Sampling {
                                    seed,
                                    ..self.sampling.clone()
                                },
                            },
                            questions: questions.clone(),
                            judge: judge.clone(),
                            thresholds: self.thresholds.clone(),
                            self_rating: self.self_rating.clone(),
                        };
                        spec.check()?;
                        planned.push(Planned {
                            dir: out.join(&name),
                            spec,
                            model: model_name.clone(),
                            intervention: entry.clone(),
                            nudge: nudge.as_ref().map(|n| n.name.clone()),
                            seed,
                        });
                    }
                }
            }
        }
        Ok(planned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_the_axes_they_come_from() {
        assert_eq!(short(&serde_json::json!([3, 6])), "3-6");
        assert_eq!(short(&serde_json::json!(0.5)), "0.5");
        assert_eq!(clean("m/x__steer__scale=4"), "m_x__steer__scale=4");
        assert_eq!(step_of("checkpoint-120"), 120);
    }

    #[test]
    fn the_shipped_sensitivity_grid_crosses_nudges_with_models() {
        let file = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/configs/sensitivity.toml"
        ));
        let spec: ExperimentSpec = toml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let planned = spec
            .expand(file.parent().unwrap(), &Registry::default())
            .unwrap();
        let names: Vec<&str> = planned
            .iter()
            .map(|p| p.spec.condition.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "base__none__none",
                "base__none__evil",
                "base__none__hhh",
                "base__none__placebo",
                "organism__none__none",
                "organism__none__evil",
                "organism__none__hhh",
                "organism__none__placebo"
            ]
        );
        let evil = &planned[1];
        assert_eq!(evil.nudge.as_deref(), Some("evil"));
        assert!(evil.spec.condition.nudge.as_ref().unwrap().system.is_some());
        assert!(planned.iter().all(|p| p.spec.self_rating.is_some()));
        assert!(planned[0].spec.questions.file.is_file());

        let mut bad = spec.clone();
        bad.nudges.as_mut().unwrap().names = Some(vec!["nice".into()]);
        let err = bad
            .expand(file.parent().unwrap(), &Registry::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nudges") && err.contains("`nice`"), "{err}");
    }

    #[test]
    fn unknown_fields_and_empty_grids_are_refused() {
        let text = r#"
            out = "runs"
            questions = { file = "q.yaml" }
            modles = []
        "#;
        let err = toml::from_str::<ExperimentSpec>(text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("modles"), "{err}");
        let spec: ExperimentSpec = toml::from_str(
            r#"
            out = "runs"
            questions = { file = "q.yaml" }
            models = []
        "#,
        )
        .unwrap();
        let err = spec
            .expand(Path::new("."), &Registry::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("models"), "{err}");
    }
}
