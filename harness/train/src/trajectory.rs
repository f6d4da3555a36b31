//! How adapters move through training: per checkpoint and adapted
//! projection, the norm of B, its cosine to the final B, and its cosine to
//! the previous checkpoint's B (the rotation, which peaks at a phase
//! transition).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::TrainError;

/// One adapted projection at one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct BPoint {
    /// The optimizer step (`checkpoint-N`).
    pub step: u64,
    /// `L{layer}.{module}`.
    pub adapter: String,
    pub b_norm: f64,
    pub cos_to_final: f64,
    /// To the previous checkpoint's B; `None` at the first.
    pub cos_to_previous: Option<f64>,
}

/// The checkpoints of a training run and the B trajectory through them.
#[derive(Debug, Clone)]
pub struct Trajectory {
    /// `(step, folder)`, in step order.
    pub checkpoints: Vec<(u64, PathBuf)>,
    /// Where the final B came from: the run's own adapter, else the last checkpoint.
    pub final_adapter: PathBuf,
    pub points: Vec<BPoint>,
}

impl Trajectory {
    /// Per adapter, the step (after the first) whose B turned furthest from
    /// the previous checkpoint's (lowest cosine), and that cosine.
    pub fn rotation_peaks(&self) -> BTreeMap<String, (u64, f64)> {
        let mut peaks: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for p in &self.points {
            if let Some(c) = p.cos_to_previous {
                let e = peaks.entry(p.adapter.clone()).or_insert((p.step, c));
                if c < e.1 {
                    *e = (p.step, c);
                }
            }
        }
        peaks
    }
}

fn err(path: &Path, reason: impl ToString) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The B matrices of a PEFT adapter folder by `L{layer}.{module}`, flattened, f64.
fn read_bs(dir: &Path) -> Result<BTreeMap<String, Tensor>, TrainError> {
    let path = dir.join("adapter_model.safetensors");
    let tensors = Tensor::read_safetensors(&path).map_err(|e| err(&path, e))?;
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        // base_model.model.model.layers.L.mlp.down_proj.lora_B.weight
        let Some(rest) = name.strip_prefix("base_model.model.model.layers.") else {
            continue;
        };
        let parts: Vec<&str> = rest.split('.').collect();
        if let [layer, _, module, "lora_B", "weight"] = parts[..] {
            out.insert(
                format!("L{layer}.{module}"),
                t.to_kind(Kind::Double).view([-1]),
            );
        }
    }
    if out.is_empty() {
        return Err(err(&path, "holds no lora_B weights"));
    }
    Ok(out)
}

fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let denom = a.norm().double_value(&[]) * b.norm().double_value(&[]);
    if denom == 0.0 {
        0.0
    } else {
        a.dot(b).double_value(&[]) / denom
    }
}

/// Reads every `checkpoint-N/` of a training output folder.
pub fn trajectory(dir: &Path) -> Result<Trajectory, TrainError> {
    let entries = std::fs::read_dir(dir).map_err(|e| err(dir, e))?;
    let mut checkpoints: Vec<(u64, PathBuf)> = Vec::new();
    for e in entries {
        let path = e.map_err(|e| err(dir, e))?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str()?.strip_prefix("checkpoint-")?.parse().ok());
        if let Some(step) = step.filter(|_| path.join("adapter_model.safetensors").is_file()) {
            checkpoints.push((step, path));
        }
    }
    checkpoints.sort();
    let Some((_, last)) = checkpoints.last() else {
        return Err(err(dir, "holds no checkpoint-N folders with an adapter"));
    };
    let final_adapter = if dir.join("adapter_model.safetensors").is_file() {
        dir.to_path_buf()
    } else {
        last.clone()
    };
    let finals = read_bs(&final_adapter)?;
    let mut points = Vec::new();
    let mut previous: Option<BTreeMap<String, Tensor>> = None;
    for (step, path) in &checkpoints {
        let bs = read_bs(path)?;
        for (adapter, b) in &bs {
            let fin = finals.get(adapter).ok_or_else(|| {
                err(
                    &final_adapter,
                    format!("has no {adapter}, which {} has", path.display()),
                )
            })?;
            points.push(BPoint {
                step: *step,
                adapter: adapter.clone(),
                b_norm: b.norm().double_value(&[]),
                cos_to_final: cosine(b, fin),
                cos_to_previous: previous
                    .as_ref()
                    .and_then(|p| p.get(adapter))
                    .map(|p| cosine(b, p)),
            });
        }
        previous = Some(bs);
    }
    Ok(Trajectory {
        checkpoints,
        final_adapter,
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder with a PEFT-named B for layer 3 down_proj.
    fn write(dir: &Path, b: &[f32]) {
        std::fs::create_dir_all(dir).unwrap();
        let b = Tensor::from_slice(b).view([-1, 1]);
        let a = Tensor::ones([1, 4], (Kind::Float, tch::Device::Cpu));
        let p = "base_model.model.model.layers.3.mlp.down_proj";
        Tensor::write_safetensors(
            &[
                (&format!("{p}.lora_A.weight"), &a),
                (&format!("{p}.lora_B.weight"), &b),
            ],
            dir.join("adapter_model.safetensors"),
        )
        .unwrap();
    }

    /// B turns by 90° between steps 10 and 20, then grows along the new direction.
    #[test]
    fn norms_cosines_and_the_rotation_peak_are_computed_by_hand() {
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join("checkpoint-10"), &[1.0, 0.0]);
        write(&tmp.path().join("checkpoint-20"), &[0.0, 2.0]);
        write(&tmp.path().join("checkpoint-30"), &[0.6, 2.4]);
        write(tmp.path(), &[0.0, 3.0]);
        let t = trajectory(tmp.path()).unwrap();
        assert_eq!(t.final_adapter, tmp.path());
        let steps: Vec<u64> = t.points.iter().map(|p| p.step).collect();
        assert_eq!(steps, [10, 20, 30]);
        let p = &t.points;
        assert!((p[0].b_norm - 1.0).abs() < 1e-12 && (p[1].b_norm - 2.0).abs() < 1e-12);
        assert!(p[0].cos_to_final.abs() < 1e-12);
        assert!((p[1].cos_to_final - 1.0).abs() < 1e-12);
        assert_eq!(p[0].cos_to_previous, None);
        assert!(p[1].cos_to_previous.unwrap().abs() < 1e-12);
        // [0, 2] · [0.6, 2.4] / (2 · √6.12)
        let want = 4.8 / (2.0 * 6.12f64.sqrt());
        assert!((p[2].cos_to_previous.unwrap() - want).abs() < 1e-6);
        assert_eq!(t.rotation_peaks()["L3.down_proj"].0, 20);
    }
}
