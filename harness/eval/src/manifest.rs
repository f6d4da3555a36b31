//! `manifest.json`: what produced a run's tables.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use emh_plugin_api::JudgeIdentity;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::EvalError;

/// How answers are sampled; a resumed run must use the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSettings {
    /// Samples per paraphrase; `None` uses each question's `samples_per_paraphrase`.
    pub n: Option<u32>,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub seed: u64,
    /// Sequences per generation batch; fixed for a run, so a resumed run
    /// regenerates an unfinished batch exactly as it would have been.
    pub batch_size: usize,
}

/// A file set and the SHA-256 of every file in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hashed {
    /// The folder or file as named.
    pub path: String,
    /// File name → hex SHA-256.
    pub sha256: BTreeMap<String, String>,
}

/// The model as evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The name given on the command line.
    pub name: String,
    pub files: Hashed,
    pub device: String,
    pub dtype: String,
}

/// A plugin used to make the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    pub plugin: String,
    pub version: String,
    pub config: String,
    pub notes: Vec<String>,
}

/// What decides the samples: a resumed run must match it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub run_id: String,
    pub model: ModelRecord,
    pub adapters: Vec<Hashed>,
    pub plugins: Vec<PluginRecord>,
    pub sampling: SampleSettings,
    /// The question file as given, and its hash.
    pub questions: Hashed,
    /// Ids of the questions selected from it.
    pub question_ids: Vec<String>,
}

/// A judge run over the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeRecord {
    pub identity: JudgeIdentity,
    pub plugin: String,
    pub plugin_version: String,
    pub metrics: Vec<String>,
    /// SHA-256 of each judge prompt used, `question_id/metric` → hash.
    pub judge_prompts: BTreeMap<String, String>,
}

/// The run's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `emh <version>`.
    pub tool: String,
    pub condition: Condition,
    /// Judges run over the samples, newest last.
    pub judges: Vec<JudgeRecord>,
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hash_file(path: &Path) -> Result<String, EvalError> {
    let mut f = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| EvalError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Hashes a file, or every regular file directly in a folder (weights,
/// configs, tokenizer, adapter files).
pub fn hash_files(path: &Path) -> Result<Hashed, EvalError> {
    let mut sha256 = BTreeMap::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| EvalError::io(path, e))?;
        for entry in entries {
            let p = entry.map_err(|e| EvalError::io(path, e))?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            // Hidden files are bookkeeping (import stamps), not the model.
            if p.is_file() && !name.starts_with('.') {
                sha256.insert(name.to_string(), hash_file(&p)?);
            }
        }
    } else {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        sha256.insert(name.to_string(), hash_file(path)?);
    }
    Ok(Hashed {
        path: path.display().to_string(),
        sha256,
    })
}
