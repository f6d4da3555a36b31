//! Rebuilds `tokenizer.json` and `tokenizer_config.json` from GGUF metadata.

use serde_json::{json, Map, Value};

use crate::reader::MetaValue;
use crate::{GgufError, GgufFile};

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer files of a Hugging Face folder, as JSON values.
pub struct TokenizerFiles {
    pub tokenizer: Value,
    pub tokenizer_config: Value,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    pub pad_token_id: Option<u64>,
}

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, GgufError> {
    g.require(key)?
        .as_array()
        .ok_or_else(|| g.meta_err(key, "not an array"))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| g.meta_err(key, "not an array of strings"))
        })
        .collect()
}

fn byte_level(add_prefix_space: bool, use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer that the original model used, from `tokenizer.ggml.pre`.
fn pre_tokenizer(g: &GgufFile, pre: &str) -> Result<Value, GgufError> {
    Ok(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(false, true),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(false, true),
        ]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            split(QWEN2_PATTERN),
            byte_level(false, false),
        ]}),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            split(LLAMA3_PATTERN),
            byte_level(false, false),
        ]}),
        other => {
            return Err(GgufError::Unsupported {
                path: g.path().to_path_buf(),
                reason: format!(
                    "pre-tokenizer `{other}` (known: default, gpt2, smollm, qwen2, llama-bpe)"
                ),
            })
        }
    })
}

/// Builds the tokenizer files for a byte-level BPE (`gpt2` model) vocabulary.
pub fn tokenizer_files(g: &GgufFile) -> Result<TokenizerFiles, GgufError> {
    let model = g
        .require("tokenizer.ggml.model")?
        .as_str()
        .ok_or_else(|| g.meta_err("tokenizer.ggml.model", "not a string"))?;
    if model != "gpt2" {
        return Err(GgufError::Unsupported {
            path: g.path().to_path_buf(),
            reason: format!(
                "tokenizer model `{model}` (only byte-level BPE, `gpt2`, is supported)"
            ),
        });
    }
    let tokens = string_array(g, "tokenizer.ggml.tokens")?;
    let merges = string_array(g, "tokenizer.ggml.merges")?;
    let types: Vec<u64> = match g
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
    {
        Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(g.meta_err(
            "tokenizer.ggml.token_type",
            format!("{} types for {} tokens", types.len(), tokens.len()),
        ));
    }
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");

    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        vocab.insert(tok.to_string(), json!(id));
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": ty == TOKEN_TYPE_USER_DEFINED,
                "special": ty == TOKEN_TYPE_CONTROL,
            }));
        }
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(g, pre)?,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });

    let id = |key: &str| g.get(key).and_then(MetaValue::as_u64);
    let token_str = |id: Option<u64>| -> Value {
        id.and_then(|i| tokens.get(i as usize))
            .map(|s| json!(s))
            .unwrap_or(Value::Null)
    };
    let bos = id("tokenizer.ggml.bos_token_id");
    let eos = id("tokenizer.ggml.eos_token_id");
    let pad = id("tokenizer.ggml.padding_token_id");
    let unk = id("tokenizer.ggml.unknown_token_id");
    let mut config = json!({
        "add_bos_token": g.get("tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool).unwrap_or(false),
        "add_prefix_space": false,
        "bos_token": token_str(bos),
        "eos_token": token_str(eos),
        "pad_token": token_str(pad),
        "unk_token": token_str(unk),
        "clean_up_tokenization_spaces": false,
        "model_max_length": g
            .get(&format!("{}.context_length", architecture(g)?))
            .and_then(MetaValue::as_u64)
            .unwrap_or(8192),
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(t) = g.get("tokenizer.chat_template").and_then(MetaValue::as_str) {
        config["chat_template"] = json!(t);
    }
    Ok(TokenizerFiles {
        tokenizer,
        tokenizer_config: config,
        bos_token_id: bos,
        eos_token_id: eos,
        pad_token_id: pad,
    })
}

/// The `general.architecture` of the file.
pub fn architecture(g: &GgufFile) -> Result<&str, GgufError> {
    g.require("general.architecture")?
        .as_str()
        .ok_or_else(|| g.meta_err("general.architecture", "not a string"))
}
