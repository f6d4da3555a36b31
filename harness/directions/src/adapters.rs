//! Rank-1 organisms: each adapter's B vector against the direction at its layer.
//!
//! A rank-1 LoRA on a module that writes to the residual stream (`o_proj`,
//! `down_proj`) adds `B (A x)` to it: a fixed vector B scaled per token. Its
//! cosine with the misalignment direction at that layer says how much of the
//! adapter's effect lies along the direction. Its sign is B's alone: A and B
//! negated together make the same adapter, so compare magnitudes across
//! adapters, and signs only across checkpoints of one training run.

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

/// Cosines of every rank-1 `lora_B` of `o_proj` or `down_proj` in the
/// adapter folder `dir` with the direction at its layer.
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
        // PEFT stores B as [out_features, r]; only these modules write to the
        // residual stream (q_proj's B is often as wide, but does not).
        let writes = name.contains(".o_proj.") || name.contains(".down_proj.");
        if !writes || t.shape().len() != 2 || t.shape()[1] != 1 || t.shape()[0] != set.hidden() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    #[test]
    fn each_rank1_b_vector_meets_the_direction_at_its_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let set = DirectionSet {
            directions: vec![
                vec![1.0, 0.0, 0.0],
                vec![0.0, 1.0, 0.0],
                vec![0.0, 0.0, 1.0],
            ],
            metadata: Default::default(),
        };
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (down, o, a, wide) = (
            bytes(&[0.0, 2.0, 0.0]),
            bytes(&[1.0, 1.0, 0.0]),
            bytes(&[5.0, 5.0, 5.0, 5.0]),
            bytes(&[1.0; 6]),
        );
        let p = "base_model.model.model.layers";
        let tensors = [
            (
                format!("{p}.1.mlp.down_proj.lora_B.weight"),
                vec![3, 1],
                &down,
            ),
            (
                format!("{p}.2.self_attn.o_proj.lora_B.weight"),
                vec![3, 1],
                &o,
            ),
            (
                format!("{p}.2.self_attn.o_proj.lora_A.weight"),
                vec![1, 4],
                &a,
            ),
            // Rank 2: not a single vector; q_proj: not written to the residual stream.
            (
                format!("{p}.1.self_attn.q_proj.lora_B.weight"),
                vec![3, 1],
                &down,
            ),
            (
                format!("{p}.0.mlp.down_proj.lora_B.weight"),
                vec![3, 2],
                &wide,
            ),
        ];
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        std::fs::write(
            tmp.path().join("adapter_model.safetensors"),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        let c = adapter_cosines(tmp.path(), &set).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].layer, c[0].module.as_str(), c[0].cosine),
            (1, "down_proj", 1.0)
        );
        assert_eq!((c[1].layer, c[1].module.as_str()), (2, "o_proj"));
        assert!(
            c[1].cosine.abs() < 1e-12,
            "B along x and y, the direction along z"
        );
    }
}
