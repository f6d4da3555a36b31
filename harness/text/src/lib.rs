//! Text side of a model folder: its tokenizer and its chat template.

mod chat;
mod tokenizer;

pub use chat::{ChatTemplate, Message};
pub use tokenizer::Tokenizer;

use std::path::PathBuf;

/// Errors reading or using a model folder's text files.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("chat template of {path}: {reason}")]
    Template { path: PathBuf, reason: String },
}

/// Reads and parses a JSON file, naming it in the error.
pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value, TextError> {
    let text = std::fs::read_to_string(path).map_err(|e| TextError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| TextError::File {
        path: path.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// A special token entry of `tokenizer_config.json`: a string or `{"content": ...}`.
pub(crate) fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}
