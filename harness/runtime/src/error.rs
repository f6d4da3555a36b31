use std::path::PathBuf;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Weight {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{path}: unsupported model: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("invalid request: {0}")]
    Request(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Text(#[from] emh_text::TextError),
}
