//! llama.cpp control vectors: a direction set as the GGUF file
//! `llama-cli --control-vector` reads, and back.
//!
//! The file: `general.architecture = "controlvector"`,
//! `controlvector.model_hint` (the model's architecture, e.g. `llama`),
//! `controlvector.layer_count`, and f32 tensors `direction.N` of width hidden.
//!
//! Layer convention, as llama.cpp's loader and graph have it: `direction.N`
//! is added to the output of block N (0-based), which is emh's
//! `resid_post.N` and the `directions` row N. llama.cpp refuses
//! `direction.0` (layer 0's output is never steered there), so row 0 is not
//! exported, and on import a file's missing layers (always 0) are zero rows.
//! repeng writes the same convention (`direction.{layer}` for the output of
//! `model.layers[layer]`).

use std::collections::BTreeMap;
use std::path::Path;

use emh_gguf::{write_gguf, GgufFile, WriteValue};

use crate::{DirectionError, DirectionSet};

/// Writes layers 1.. of `set` as a control-vector GGUF, each row times `scale`.
pub fn export_control_vector(
    set: &DirectionSet,
    model_hint: &str,
    scale: f32,
    path: &Path,
) -> Result<(), DirectionError> {
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = set
        .directions
        .iter()
        .enumerate()
        .skip(1)
        .map(|(l, d)| {
            (
                format!("direction.{l}"),
                vec![d.len()],
                d.iter().map(|v| v * scale).collect(),
            )
        })
        .collect();
    let metadata = [
        (
            "general.architecture".to_string(),
            WriteValue::Str("controlvector".into()),
        ),
        (
            "controlvector.model_hint".to_string(),
            WriteValue::Str(model_hint.into()),
        ),
        (
            "controlvector.layer_count".to_string(),
            WriteValue::U32(tensors.len() as u32),
        ),
    ];
    write_gguf(path, &metadata, &tensors).map_err(|e| DirectionError::file(path, e))
}

/// Reads a control-vector GGUF (llama.cpp's, repeng's or emh's) as a
/// direction set of `num_layers` rows.
pub fn import_control_vector(
    path: &Path,
    num_layers: usize,
) -> Result<DirectionSet, DirectionError> {
    if num_layers < 2 {
        return Err(DirectionError::Mismatch(format!(
            "a model of {num_layers} layer(s) has no layer a control vector steers (1 and up)"
        )));
    }
    let f = GgufFile::open(path).map_err(|e| DirectionError::file(path, e))?;
    if let Some(arch) = f.get("general.architecture").and_then(|v| v.as_str()) {
        if arch != "controlvector" {
            return Err(DirectionError::file(
                path,
                format!("general.architecture is `{arch}`, not `controlvector`"),
            ));
        }
    }
    let mut rows: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
    for t in &f.tensors {
        let Some(layer) = t.name.strip_prefix("direction.") else {
            continue;
        };
        let layer: usize = layer.parse().map_err(|_| {
            DirectionError::file(path, format!("tensor `{}`: no layer number", t.name))
        })?;
        if layer == 0 || layer >= num_layers {
            return Err(DirectionError::file(
                path,
                format!(
                    "tensor `{}`: layer {layer} is outside 1..{} (llama.cpp numbers block outputs from 1 here)",
                    t.name,
                    num_layers - 1
                ),
            ));
        }
        if t.dims.len() != 1 {
            return Err(DirectionError::file(
                path,
                format!("tensor `{}` is not a vector: {:?}", t.name, t.shape()),
            ));
        }
        rows.insert(
            layer,
            f.tensor_f32(t).map_err(|e| DirectionError::file(path, e))?,
        );
    }
    let hidden = rows.values().next().map(Vec::len).ok_or_else(|| {
        DirectionError::file(path, "no `direction.N` tensors: not a control vector")
    })?;
    if let Some((l, _)) = rows.iter().find(|(_, r)| r.len() != hidden) {
        return Err(DirectionError::file(
            path,
            format!("direction.{l} has another width than the others ({hidden})"),
        ));
    }
    let hint = f
        .get("controlvector.model_hint")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    Ok(DirectionSet {
        directions: (0..num_layers)
            .map(|l| rows.get(&l).cloned().unwrap_or_else(|| vec![0.0; hidden]))
            .collect(),
        metadata: BTreeMap::from([
            ("method".to_string(), "control-vector".to_string()),
            ("source".to_string(), path.display().to_string()),
            ("model_hint".to_string(), hint),
        ]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_then_import_gives_the_same_vectors() {
        let tmp = tempfile::tempdir().unwrap();
        let set = DirectionSet {
            directions: (0..4)
                .map(|l| (0..6).map(|i| (l * 10 + i) as f32 * 0.25).collect())
                .collect(),
            metadata: Default::default(),
        };
        let path = tmp.path().join("cv.gguf");
        export_control_vector(&set, "llama", 1.0, &path).unwrap();
        let back = import_control_vector(&path, 4).unwrap();
        assert_eq!(
            back.directions[0],
            vec![0.0; 6],
            "layer 0 is not a llama.cpp layer"
        );
        assert_eq!(back.directions[1..], set.directions[1..]);
        assert_eq!(back.metadata["model_hint"], "llama");
        assert!(
            import_control_vector(&path, 3).is_err(),
            "direction.3 needs 4 layers"
        );
    }
}
