//! The `tokenizer.json` of a model folder, with the ids generation needs.

use std::path::Path;

use crate::{read_json, token_text, TextError};

/// A loaded tokenizer and its special-token ids.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids that end a generated sequence.
    pub eos_ids: Vec<u32>,
    /// Id used for left padding.
    pub pad_id: u32,
}

impl Tokenizer {
    /// Loads `tokenizer.json` (required) plus `tokenizer_config.json` and
    /// `generation_config.json` (optional) from a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self, TextError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(TextError::File {
                path,
                reason: "missing: the model folder has no tokenizer".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| TextError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let id_of = |text: Option<String>| text.and_then(|t| inner.token_to_id(&t));
        let config = dir.join("tokenizer_config.json");
        let config = if config.is_file() {
            read_json(&config)?
        } else {
            serde_json::Value::Null
        };
        let mut eos_ids: Vec<u32> = id_of(token_text(&config["eos_token"]))
            .into_iter()
            .collect();
        let gen = dir.join("generation_config.json");
        if gen.is_file() {
            match &read_json(&gen)?["eos_token_id"] {
                serde_json::Value::Number(n) => eos_ids.extend(n.as_u64().map(|v| v as u32)),
                serde_json::Value::Array(a) => {
                    eos_ids.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32))
                }
                _ => {}
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let pad_id = id_of(token_text(&config["pad_token"]))
            .or(eos_ids.first().copied())
            .unwrap_or(0);
        Ok(Tokenizer {
            inner,
            eos_ids,
            pad_id,
        })
    }

    /// Token ids of `text`; special-token strings in it become their ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TextError> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TextError::Tokenize(e.to_string()))
    }

    /// Text of `ids`, special tokens left out when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TextError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TextError::Tokenize(e.to_string()))
    }
}
