//! Misalignment directions, from captured activations to files the
//! intervention plugins and llama.cpp read.
//!
//! - `acts`: capture files (`emh capture`; a run's `activations/` file when it
//!   captured `resid_post` at every layer) read per layer;
//! - `set`: a direction set, one vector per layer (`directions` `[num_layers, hidden]`);
//! - `mean_diff`: difference of means, balanced or not, with held-out separation;
//! - `cosine`: cosine maps between and within direction sets;
//! - `adapters`: rank-1 LoRA B vectors against the direction at their layer;
//! - `control_vector`: llama.cpp control-vector GGUF export and import.

mod acts;
mod adapters;
mod control_vector;
mod cosine;
mod mean_diff;
mod set;

pub use acts::{Acts, Span};
pub use adapters::{adapter_cosines, AdapterCosine};
pub use control_vector::{export_control_vector, import_control_vector};
pub use cosine::{between, within, write_csv, CosineRow};
pub use mean_diff::{auc, heldout, mean_diff, LayerAuc, MeanDiff, MeanDiffOptions};
pub use set::DirectionSet;

use std::path::{Path, PathBuf};

/// Errors naming the file, layer or tensor.
#[derive(Debug, thiserror::Error)]
pub enum DirectionError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Mismatch(String),
}

impl DirectionError {
    pub(crate) fn file(path: &Path, reason: impl std::fmt::Display) -> Self {
        DirectionError::File {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// Cosine similarity; 0 when either vector is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// Euclidean norm.
pub fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

/// f32 values of a safetensors tensor, whatever its float dtype.
pub(crate) fn tensor_f32(
    path: &Path,
    name: &str,
    t: &safetensors::tensor::TensorView<'_>,
) -> Result<Vec<f32>, DirectionError> {
    use safetensors::Dtype;
    let d = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(DirectionError::file(
                path,
                format!("tensor `{name}` is {other:?}, not a float tensor"),
            ))
        }
    })
}
