//! Capture files read per layer.

use std::path::Path;

use crate::{tensor_f32, DirectionError};

/// Which mean of a capture file to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// `resid_post.L.answer_mean`: the answer's content tokens.
    Answer,
    /// `resid_post.L.prompt_mean`: the prompt's tokens.
    Prompt,
}

impl Span {
    fn suffix(self) -> &'static str {
        match self {
            Span::Answer => "answer_mean",
            Span::Prompt => "prompt_mean",
        }
    }
}

/// Activations of `n` rows at every layer: `layers[l]` is `[n, hidden]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Acts {
    pub ids: Vec<String>,
    pub hidden: usize,
    pub layers: Vec<Vec<f32>>,
}

impl Acts {
    /// Reads `resid_post.L.<span>` for L = 0, 1, ... of a capture file.
    pub fn read(path: &Path, span: Span) -> Result<Acts, DirectionError> {
        let bytes = std::fs::read(path).map_err(|e| DirectionError::file(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| DirectionError::file(path, format!("not a safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| DirectionError::file(path, e))?;
        let ids: Vec<String> = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("ids"))
            .map(|s| serde_json::from_str(s))
            .transpose()
            .map_err(|e| DirectionError::file(path, format!("metadata `ids`: {e}")))?
            .unwrap_or_default();
        let mut layers = Vec::new();
        let mut shape: Option<Vec<usize>> = None;
        loop {
            let name = format!("resid_post.{}.{}", layers.len(), span.suffix());
            let Ok(t) = st.tensor(&name) else { break };
            if t.shape().len() != 2 || shape.as_ref().is_some_and(|s| s != t.shape()) {
                return Err(DirectionError::file(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, not [n, hidden] like layer 0",
                        t.shape()
                    ),
                ));
            }
            shape = Some(t.shape().to_vec());
            let values = tensor_f32(path, &name, &t)?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(DirectionError::file(
                    path,
                    format!("tensor `{name}` holds NaN or infinite values"),
                ));
            }
            layers.push(values);
        }
        let Some(shape) = shape else {
            return Err(DirectionError::file(
                path,
                format!(
                    "no `resid_post.0.{}` tensor: not a capture of every layer's residual stream (`emh capture` writes one)",
                    span.suffix()
                ),
            ));
        };
        if !ids.is_empty() && ids.len() != shape[0] {
            return Err(DirectionError::file(
                path,
                format!("{} ids for {} rows", ids.len(), shape[0]),
            ));
        }
        Ok(Acts {
            ids,
            hidden: shape[1],
            layers,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |l| l.len() / self.hidden.max(1))
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` at layer `l`.
    pub fn row(&self, l: usize, i: usize) -> &[f32] {
        &self.layers[l][i * self.hidden..(i + 1) * self.hidden]
    }

    /// The mean of `rows` at layer `l`.
    pub fn mean(&self, l: usize, rows: &[usize]) -> Vec<f64> {
        let mut sum = vec![0.0f64; self.hidden];
        for &i in rows {
            for (s, v) in sum.iter_mut().zip(self.row(l, i)) {
                *s += f64::from(*v);
            }
        }
        sum.iter().map(|s| s / rows.len() as f64).collect()
    }
}
