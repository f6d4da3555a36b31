//! A direction set: one vector per layer, as the intervention plugins read it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::{norm, tensor_f32, DirectionError};

/// One direction per layer (a zero row where a layer has none), with notes.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionSet {
    /// `[num_layers][hidden]`.
    pub directions: Vec<Vec<f32>>,
    /// Written into the file's metadata (how it was made).
    pub metadata: BTreeMap<String, String>,
}

impl DirectionSet {
    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.directions.len()
    }

    /// The width of each direction.
    pub fn hidden(&self) -> usize {
        self.directions.first().map_or(0, Vec::len)
    }

    /// Reads tensor `directions` `[num_layers, hidden]` (f32, bf16 or f16) and the metadata.
    pub fn read(path: &Path) -> Result<DirectionSet, DirectionError> {
        let bytes = std::fs::read(path).map_err(|e| DirectionError::file(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| DirectionError::file(path, format!("not a safetensors file: {e}")))?;
        let t = st.tensor("directions").map_err(|_| {
            DirectionError::file(path, "no tensor `directions` ([num_layers, hidden])")
        })?;
        if t.shape().len() != 2 || t.shape()[0] == 0 || t.shape()[1] == 0 {
            return Err(DirectionError::file(
                path,
                format!(
                    "tensor `directions` has shape {:?}, not [num_layers, hidden]",
                    t.shape()
                ),
            ));
        }
        let hidden = t.shape()[1];
        let values = tensor_f32(path, "directions", &t)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(DirectionError::file(
                path,
                format!(
                    "the direction of layer {} holds NaN or infinite values",
                    i / hidden
                ),
            ));
        }
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| DirectionError::file(path, e))?;
        Ok(DirectionSet {
            directions: values.chunks(hidden).map(<[f32]>::to_vec).collect(),
            metadata: meta
                .metadata()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })
    }

    /// Writes `directions` `[num_layers, hidden]` and `norms` `[num_layers]` (f32) atomically.
    pub fn write(&self, path: &Path) -> Result<(), DirectionError> {
        let flat: Vec<u8> = self
            .directions
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let norms: Vec<u8> = self
            .directions
            .iter()
            .flat_map(|d| (norm(d) as f32).to_le_bytes())
            .collect();
        let bad = |e: safetensors::SafeTensorError| DirectionError::file(path, e);
        let views = vec![
            (
                "directions".to_string(),
                TensorView::new(Dtype::F32, vec![self.layers(), self.hidden()], &flat)
                    .map_err(bad)?,
            ),
            (
                "norms".to_string(),
                TensorView::new(Dtype::F32, vec![self.layers()], &norms).map_err(bad)?,
            ),
        ];
        let metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        let bytes = safetensors::serialize(views, Some(metadata)).map_err(bad)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| DirectionError::file(parent, e))?;
        }
        emh_atomic::write(path, &bytes).map_err(|e| DirectionError::file(path, e))
    }
}
