//! Checkpoints: `checkpoint-N/` is a PEFT adapter folder that also holds the
//! f32 parameters with AdamW's moments (`optimizer.safetensors`) and the
//! run's state (`trainer_state.json`), written whole or not at all.

use std::path::{Path, PathBuf};

use emh_runtime::Adapter;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::{Param, StepLog, TrainConfig, TrainError};

const STATE: &str = "trainer_state.json";
const OPTIMIZER: &str = "optimizer.safetensors";

/// Where a run stands: written beside every checkpoint and the final adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: usize,
    pub total_steps: usize,
    pub config: TrainConfig,
    /// Of the tokenized examples and their masks.
    pub data_fingerprint: String,
    pub log_history: Vec<StepLog>,
}

fn err(path: &Path, reason: impl ToString) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl TrainerState {
    /// Reads `dir/trainer_state.json`.
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(STATE);
        let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e))?;
        serde_json::from_str(&text).map_err(|e| err(&path, e))
    }

    /// Refuses to resume a run made with other settings or data than `now`.
    pub(crate) fn check_matches(&self, now: &TrainerState, dir: &Path) -> Result<(), TrainError> {
        let (was, is) = (
            serde_json::to_value(&self.config).expect("configs serialize"),
            serde_json::to_value(&now.config).expect("configs serialize"),
        );
        let differ: Vec<String> = is
            .as_object()
            .expect("a config is an object")
            .iter()
            // Where the files are may change (a moved folder); the data
            // itself is checked by its fingerprint below.
            .filter(|(k, _)| !matches!(k.as_str(), "output_dir" | "training_file"))
            .filter(|(k, v)| was.get(k.as_str()) != Some(*v))
            .map(|(k, v)| format!("{k} (was {}, now {v})", was[k.as_str()]))
            .collect();
        if !differ.is_empty() {
            return Err(err(
                dir,
                format!(
                    "was trained with other settings: {}; use another output_dir",
                    differ.join(", ")
                ),
            ));
        }
        if self.data_fingerprint != now.data_fingerprint {
            return Err(err(
                dir,
                "was trained on other data (the training file or tokenizer changed); use another output_dir",
            ));
        }
        Ok(())
    }
}

/// The `checkpoint-N` folder in `out` with the largest complete N.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>, TrainError> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(None);
    };
    let mut best: Option<(usize, PathBuf)> = None;
    for e in entries {
        let path = e.map_err(|e| err(out, e))?.path();
        let step = path.file_name().and_then(|n| {
            n.to_str()?
                .strip_prefix("checkpoint-")?
                .parse::<usize>()
                .ok()
        });
        if let Some(step) = step.filter(|_| path.join(STATE).is_file()) {
            if best.as_ref().is_none_or(|(b, _)| step > *b) {
                best = Some((step, path));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

fn names(p: &Param) -> String {
    format!("layers.{}.{}", p.layer, p.module.name())
}

/// Writes `dir` whole: the PEFT adapter, parameters with moments, and state.
pub(crate) fn save(
    dir: &Path,
    adapter: &Adapter,
    params: &[Param],
    state: &TrainerState,
) -> Result<(), TrainError> {
    emh_atomic::replace(
        dir,
        |tmp| {
            adapter.save(tmp)?;
            let mut tensors: Vec<(String, Tensor)> = Vec::new();
            for p in params {
                let n = names(p);
                for (which, t, m) in [("a", &p.a, &p.moments[0]), ("b", &p.b, &p.moments[1])] {
                    for (part, v) in [
                        ("param", t.detach()),
                        ("exp_avg", m.exp_avg.shallow_clone()),
                        ("exp_avg_sq", m.exp_avg_sq.shallow_clone()),
                    ] {
                        tensors.push((format!("{n}.{which}.{part}"), v.to_device(Device::Cpu)));
                    }
                }
            }
            let named: Vec<(&str, &Tensor)> =
                tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let path = tmp.join(OPTIMIZER);
            Tensor::write_safetensors(&named, &path).map_err(|e| err(&path, e))?;
            write_state(tmp, state)
        },
        err,
    )
}

fn write_state(dir: &Path, state: &TrainerState) -> Result<(), TrainError> {
    let path = dir.join(STATE);
    let text = serde_json::to_string_pretty(state).expect("states serialize");
    emh_atomic::write(&path, text.as_bytes()).map_err(|e| err(&path, e))
}

/// The final adapter in `out` itself, its state written last.
pub(crate) fn save_final(
    out: &Path,
    adapter: &Adapter,
    state: &TrainerState,
) -> Result<(), TrainError> {
    adapter.save(out)?;
    write_state(out, state)
}

/// Sets `params` (and their moments) from checkpoint `dir`; returns its state.
pub(crate) fn load(dir: &Path, params: &mut [Param]) -> Result<TrainerState, TrainError> {
    let path = dir.join(OPTIMIZER);
    let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&path)
        .map_err(|e| err(&path, e))?
        .into_iter()
        .collect();
    for p in params.iter_mut() {
        let n = names(p);
        let device = p.a.device();
        let get = |key: String| -> Result<Tensor, TrainError> {
            tensors
                .get(&key)
                .map(|t| t.to_device(device))
                .ok_or_else(|| err(&path, format!("has no tensor `{key}`")))
        };
        for (which, i) in [("a", 0), ("b", 1)] {
            let value = get(format!("{n}.{which}.param"))?;
            let target = if i == 0 { &mut p.a } else { &mut p.b };
            if value.size() != target.size() {
                return Err(err(
                    &path,
                    format!(
                        "`{n}.{which}` is {:?}, expected {:?}",
                        value.size(),
                        target.size()
                    ),
                ));
            }
            tch::no_grad(|| target.copy_(&value));
            p.moments[i].exp_avg = get(format!("{n}.{which}.exp_avg"))?;
            p.moments[i].exp_avg_sq = get(format!("{n}.{which}.exp_avg_sq"))?;
        }
    }
    TrainerState::read(dir)
}

/// Sets `params` from the final adapter in `out` (moments are not kept
/// there: a finished run takes no more steps); returns its state.
pub(crate) fn load_final(
    out: &Path,
    params: &mut [Param],
    c: &emh_runtime::ModelConfig,
) -> Result<TrainerState, TrainError> {
    let adapter = Adapter::load(out, c, Device::Cpu, tch::Kind::Float)?;
    for p in params.iter_mut() {
        let name = names(p);
        let w = adapter
            .weights
            .iter()
            .find(|w| w.layer == p.layer && w.module == p.module)
            .ok_or_else(|| err(out, format!("has no {name}")))?;
        for (target, value) in [(&mut p.a, &w.a), (&mut p.b, &w.b)] {
            if value.size() != target.size() {
                return Err(err(out, format!("{name} has another shape")));
            }
            let value = value.to_device(target.device());
            tch::no_grad(|| target.copy_(&value));
        }
    }
    TrainerState::read(out)
}
