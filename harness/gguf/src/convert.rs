//! GGUF → Hugging Face folder (`config.json`, safetensors, tokenizer files).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

use crate::reader::MetaValue;
use crate::tokenizer::{architecture, tokenizer_files};
use crate::{GgufError, GgufFile, TensorInfo};

/// Element type of the written safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputDtype {
    F32,
    BF16,
    F16,
}

impl OutputDtype {
    fn bytes(self) -> usize {
        match self {
            OutputDtype::F32 => 4,
            _ => 2,
        }
    }
    fn safetensors(self) -> Dtype {
        match self {
            OutputDtype::F32 => Dtype::F32,
            OutputDtype::BF16 => Dtype::BF16,
            OutputDtype::F16 => Dtype::F16,
        }
    }
    fn torch_name(self) -> &'static str {
        match self {
            OutputDtype::F32 => "float32",
            OutputDtype::BF16 => "bfloat16",
            OutputDtype::F16 => "float16",
        }
    }
}

/// How to convert.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub dtype: OutputDtype,
    /// Shards are closed once they exceed this many bytes.
    pub max_shard_bytes: usize,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            dtype: OutputDtype::F32,
            max_shard_bytes: 4 << 30,
        }
    }
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    pub architecture: String,
    pub tensors: usize,
    pub shards: usize,
    pub parameters: u64,
}

/// The Hugging Face names for the architectures this converter knows.
fn hf_architecture(arch: &str) -> Option<(&'static str, &'static str)> {
    match arch {
        "llama" => Some(("LlamaForCausalLM", "llama")),
        "qwen2" => Some(("Qwen2ForCausalLM", "qwen2")),
        _ => None,
    }
}

/// Maps a GGUF tensor name to its Hugging Face name.
fn hf_tensor_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

/// Undoes llama.cpp's row permutation of attn_q / attn_k for rotary interleaving.
///
/// Within each head, GGUF row `2*i + j` holds the original row `j*half + i`.
fn unpermute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + 2 * i + j;
                let dst = h * head_dim + j * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn encode(values: &[f32], dtype: OutputDtype) -> Vec<u8> {
    match dtype {
        OutputDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        OutputDtype::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        OutputDtype::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

#[derive(Default)]
struct Shard {
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
    bytes: usize,
}

fn write_shard(shard: &Shard, dtype: OutputDtype, path: &Path) -> Result<(), GgufError> {
    let err = |reason: String| GgufError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let views = shard
        .tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(dtype.safetensors(), shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| err(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = Some([("format".to_string(), "pt".to_string())].into());
    emh_atomic::replace(
        path,
        |tmp| safetensors::serialize_to_file(views, meta, tmp).map_err(|e| err(e.to_string())),
        |_, e| err(e.to_string()),
    )
}

fn write_json(path: &Path, value: &Value) -> Result<(), GgufError> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    fs::write(path, text + "\n").map_err(|e| GgufError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Builds `config.json` from the architecture's metadata keys.
fn model_config(
    g: &GgufFile,
    arch: &str,
    dtype: OutputDtype,
    tied: bool,
    vocab_size: usize,
) -> Result<Value, GgufError> {
    let (class, model_type) = hf_architecture(arch).ok_or_else(|| GgufError::Unsupported {
        path: g.path().to_path_buf(),
        reason: format!("architecture `{arch}` (known: llama, qwen2)"),
    })?;
    let key = |k: &str| format!("{arch}.{k}");
    let heads = g.require_u64(&key("attention.head_count"))?;
    let hidden = g.require_u64(&key("embedding_length"))?;
    let mut cfg = json!({
        "architectures": [class],
        "model_type": model_type,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": g.require_u64(&key("feed_forward_length"))?,
        "num_hidden_layers": g.require_u64(&key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": g.get(&key("attention.head_count_kv")).and_then(MetaValue::as_u64).unwrap_or(heads),
        "rms_norm_eps": g.get(&key("attention.layer_norm_rms_epsilon")).and_then(MetaValue::as_f64).unwrap_or(1e-5) as f32,
        "rope_theta": g.get(&key("rope.freq_base")).and_then(MetaValue::as_f64).unwrap_or(10000.0) as f32,
        "max_position_embeddings": g.get(&key("context_length")).and_then(MetaValue::as_u64).unwrap_or(8192),
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype.torch_name(),
        "rope_scaling": null,
    });
    if let Some(rot) = g
        .get(&key("rope.dimension_count"))
        .and_then(MetaValue::as_u64)
    {
        if rot != hidden / heads {
            cfg["head_dim"] = json!(rot);
        }
    }
    if arch == "llama" {
        cfg["attention_bias"] = json!(false);
        cfg["mlp_bias"] = json!(false);
    }
    Ok(cfg)
}

/// Converts a GGUF model to a Hugging Face folder at `out`.
pub fn convert_to_hf(
    gguf: &Path,
    out: &Path,
    opts: &ConvertOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<ConvertSummary, GgufError> {
    let g = GgufFile::open(gguf)?;
    let arch = architecture(&g)?.to_string();
    let tok = tokenizer_files(&g)?;
    let vocab_size = g
        .tensor("token_embd.weight")
        .map(|t| t.shape()[0])
        .ok_or_else(|| GgufError::Tensor {
            path: gguf.to_path_buf(),
            tensor: "token_embd.weight".into(),
            reason: "missing".into(),
        })?;
    let tied = g.tensor("output.weight").is_none();
    let config = model_config(&g, &arch, opts.dtype, tied, vocab_size)?;
    let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;

    fs::create_dir_all(out).map_err(|e| GgufError::Write {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;

    let wanted: Vec<(&TensorInfo, String)> = g
        .tensors
        .iter()
        .filter_map(|t| hf_tensor_name(&t.name).map(|n| (t, n)))
        .collect();
    // Shards are written as soon as they are full, so only the shard being
    // filled is held in memory; the names per shard build the index.
    let mut cur = Shard::default();
    let mut shard_names: Vec<Vec<String>> = vec![Vec::new()];
    let mut parameters = 0u64;
    let total_bytes: usize = wanted
        .iter()
        .map(|(t, _)| t.numel() as usize * opts.dtype.bytes())
        .sum();
    let sharded = total_bytes > opts.max_shard_bytes;
    let n_shards_est = total_bytes.div_ceil(opts.max_shard_bytes).max(1);
    let shard_path = |i: usize, n: usize| -> PathBuf {
        if sharded {
            out.join(format!("model-{:05}-of-{n:05}.safetensors", i + 1))
        } else {
            out.join("model.safetensors")
        }
    };
    let mut written = 0;
    for (done, (t, hf_name)) in wanted.iter().enumerate() {
        let mut values = g.tensor_f32(t)?;
        let shape = t.shape();
        if arch == "llama" && shape.len() == 2 {
            if t.name.ends_with("attn_q.weight") {
                values = unpermute_rows(&values, shape[0], shape[1], heads);
            } else if t.name.ends_with("attn_k.weight") {
                values = unpermute_rows(&values, shape[0], shape[1], kv_heads);
            }
        }
        parameters += values.len() as u64;
        let data = encode(&values, opts.dtype);
        if sharded && cur.bytes > 0 && cur.bytes + data.len() > opts.max_shard_bytes {
            write_shard(&cur, opts.dtype, &shard_path(written, n_shards_est))?;
            written += 1;
            cur = Shard::default();
            shard_names.push(Vec::new());
        }
        cur.bytes += data.len();
        cur.tensors.push((hf_name.clone(), shape, data));
        shard_names
            .last_mut()
            .expect("one list per shard")
            .push(hf_name.clone());
        progress(done + 1, wanted.len());
    }
    write_shard(&cur, opts.dtype, &shard_path(written, n_shards_est))?;
    let n_shards = written + 1;
    if sharded {
        if n_shards != n_shards_est {
            // The estimate fixed the file names; make them agree with the real count.
            for i in 0..n_shards {
                let from = shard_path(i, n_shards_est);
                let to = out.join(format!("model-{:05}-of-{n_shards:05}.safetensors", i + 1));
                fs::rename(&from, &to).map_err(|e| GgufError::Write {
                    path: to.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        let mut weight_map = BTreeMap::new();
        for (i, names) in shard_names.iter().enumerate() {
            for n in names {
                weight_map.insert(
                    n.clone(),
                    format!("model-{:05}-of-{n_shards:05}.safetensors", i + 1),
                );
            }
        }
        write_json(
            &out.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}),
        )?;
    }

    let mut config = config;
    let gen = json!({
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    });
    config["bos_token_id"] = json!(tok.bos_token_id);
    config["eos_token_id"] = json!(tok.eos_token_id);
    write_json(&out.join("config.json"), &config)?;
    write_json(&out.join("generation_config.json"), &gen)?;
    write_json(&out.join("tokenizer.json"), &tok.tokenizer)?;
    write_json(&out.join("tokenizer_config.json"), &tok.tokenizer_config)?;
    Ok(ConvertSummary {
        architecture: arch,
        tensors: wanted.len(),
        shards: n_shards,
        parameters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // One head of dim 4, one column: original rows [0,1,2,3] are stored
        // interleaved as [0,2,1,3].
        let stored = [0.0, 2.0, 1.0, 3.0];
        assert_eq!(unpermute_rows(&stored, 4, 1, 1), vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn tensor_names_map_to_hf() {
        assert_eq!(
            hf_tensor_name("blk.3.attn_q.bias").as_deref(),
            Some("model.layers.3.self_attn.q_proj.bias")
        );
        assert_eq!(
            hf_tensor_name("output.weight").as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
    }
}
