//! Rank-1 organisms: each adapter's B vector against the direction at its layer.
//!
//! A rank-1 LoRA on a module that writes to the residual stream (`o_proj`,
//! `down_proj`) adds `B (A x)` to it: a fixed vector B scaled per token. Its
//! cosine with the misalignment direction at that layer says how much of the
//! adapter's effect lies along the direction.

use std::path::Path;

use crate::{cosine, tensor_f32, DirectionError, DirectionSet};

/// One rank-1 B vector's cosine with the direction at its layer.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterCosine {
    /// The tensor's name in the adapter file.
    pub tensor: String,
    pub layer: usize,
    pub module: String,
    pub cosine: f64,
}

/// The layer number in a PEFT tensor name (`...layers.12.mlp.down_proj.lora_B.weight`).
fn layer_of(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

/// Cosines of every rank-1 `lora_B` of width `hidden` in the adapter folder
/// `dir` with the direction at its layer.
pub fn adapter_cosines(
    dir: &Path,
    set: &DirectionSet,
) -> Result<Vec<AdapterCosine>, DirectionError> {
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| DirectionError::file(&path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| DirectionError::file(&path, format!("not a safetensors file: {e}")))?;
    let mut out = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in names {
        if !name.contains("lora_B") {
            continue;
        }
        let t = st
            .tensor(&name)
            .map_err(|e| DirectionError::file(&path, e))?;
        // PEFT stores B as [out_features, r].
        if t.shape().len() != 2 || t.shape()[1] != 1 || t.shape()[0] != set.hidden() {
            continue;
        }
        let Some(layer) = layer_of(&name) else {
            continue;
        };
        if layer >= set.layers() {
            return Err(DirectionError::Mismatch(format!(
                "{}: tensor `{name}` is at layer {layer}, the directions have {} layers",
                path.display(),
                set.layers()
            )));
        }
        let b = tensor_f32(&path, &name, &t)?;
        let module = name
            .split(".lora_B")
            .next()
            .and_then(|s| s.rsplit('.').next())
            .unwrap_or("")
            .to_string();
        out.push(AdapterCosine {
            cosine: cosine(&b, &set.directions[layer]),
            tensor: name,
            layer,
            module,
        });
    }
    if out.is_empty() {
        return Err(DirectionError::file(
            &path,
            format!(
                "no rank-1 lora_B of width {} (a module writing to the residual stream)",
                set.hidden()
            ),
        ));
    }
    out.sort_by_key(|c| c.layer);
    Ok(out)
}
