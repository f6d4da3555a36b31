//! `config.json` of `llama` and `qwen2` model folders.

use std::path::Path;

use serde::Deserialize;

use crate::RuntimeError;

/// RoPE frequency scaling (`rope_scaling` in `config.json`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    vocab_size: usize,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    max_position_embeddings: Option<usize>,
}

/// The architecture hyper-parameters the runtime needs.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (always for qwen2).
    pub qkv_bias: bool,
    /// The dtype the weights were saved in, as torch names it.
    pub torch_dtype: Option<String>,
    /// The longest sequence (prompt and new tokens) the model was made for.
    pub max_position_embeddings: Option<usize>,
}

fn unsupported(path: &Path, reason: String) -> RuntimeError {
    RuntimeError::Unsupported {
        path: path.to_path_buf(),
        reason,
    }
}

fn rope_scaling(path: &Path, v: &serde_json::Value) -> Result<Option<RopeScaling>, RuntimeError> {
    if v.is_null() {
        return Ok(None);
    }
    let ty = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64, RuntimeError> {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| unsupported(path, format!("rope_scaling `{ty}` lacks `{k}`")))
    };
    Ok(match ty {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => {
            return Err(unsupported(
                path,
                format!("rope_scaling type `{other}` (supported: default, linear, llama3)"),
            ))
        }
    })
}

impl ModelConfig {
    /// Reads and validates `config.json` in a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self, RuntimeError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| RuntimeError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|e| RuntimeError::File {
            path: path.clone(),
            reason: format!("invalid config: {e}"),
        })?;
        let model_type = raw
            .model_type
            .clone()
            .or_else(|| {
                raw.architectures
                    .as_ref()
                    .and_then(|a| a.first())
                    .map(|a| a.trim_end_matches("ForCausalLM").to_lowercase())
            })
            .unwrap_or_default();
        if model_type != "llama" && model_type != "qwen2" {
            return Err(unsupported(
                &path,
                format!("architecture `{model_type}` (supported: llama, qwen2)"),
            ));
        }
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(unsupported(
                    &path,
                    format!("hidden_act `{act}` (only silu)"),
                ));
            }
        }
        if raw.mlp_bias == Some(true) {
            return Err(unsupported(&path, "mlp_bias = true".into()));
        }
        if raw.num_attention_heads == 0
            || !raw.hidden_size.is_multiple_of(raw.num_attention_heads) && raw.head_dim.is_none()
        {
            return Err(unsupported(
                &path,
                "hidden_size is not a multiple of num_attention_heads".into(),
            ));
        }
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if num_kv_heads == 0 || !raw.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(unsupported(
                &path,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {num_kv_heads}",
                    raw.num_attention_heads
                ),
            ));
        }
        // Newer configs nest theta and scaling under `rope_parameters`.
        let params = raw
            .rope_parameters
            .clone()
            .unwrap_or(serde_json::Value::Null);
        let rope_theta = raw
            .rope_theta
            .or_else(|| params.get("rope_theta").and_then(|v| v.as_f64()))
            .unwrap_or(10000.0);
        let scaling = match &raw.rope_scaling {
            Some(v) if !v.is_null() => rope_scaling(&path, v)?,
            _ => rope_scaling(&path, &params)?,
        };
        Ok(ModelConfig {
            qkv_bias: model_type == "qwen2" || raw.attention_bias == Some(true),
            model_type,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling: scaling,
            vocab_size: raw.vocab_size,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            torch_dtype: raw.torch_dtype.or(raw.dtype),
            max_position_embeddings: raw.max_position_embeddings,
        })
    }

    /// Refuses a sequence of `tokens` longer than the model's context.
    pub fn check_length(
        &self,
        tokens: usize,
        what: impl FnOnce() -> String,
    ) -> Result<(), RuntimeError> {
        match self.max_position_embeddings {
            Some(max) if tokens > max => Err(RuntimeError::Request(format!(
                "{} comes to {tokens} tokens, beyond the model's context of {max} (max_position_embeddings)",
                what()
            ))),
            _ => Ok(()),
        }
    }

    /// Applies `rope_scaling` to the unscaled RoPE inverse frequencies.
    pub fn scale_inv_freq(&self, base: Vec<f32>) -> Vec<f32> {
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => {
                base.iter().map(|&f| (f as f64 / factor) as f32).collect()
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            }) => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let f = f as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                        } else {
                            scaled as f32
                        }
                    })
                    .collect()
            }
        }
    }
}
