//! `manifest.json`: what produced a run's tables.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use emh_plugin_api::JudgeIdentity;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{EvalError, EvalSpec, Part};

/// A file set and the SHA-256 of every file in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hashed {
    /// The folder or file as named.
    pub path: String,
    /// File name → hex SHA-256.
    pub sha256: BTreeMap<String, String>,
}

/// Content hashes of everything a run's samples depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hashes {
    pub model: Hashed,
    /// Every adapter loaded: the organism's, then the spec's.
    pub adapters: Vec<Hashed>,
    pub questions: Hashed,
}

/// The model as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The model's name (the spec's, an organism's base, or the default).
    pub name: String,
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

/// The run's manifest: its spec, the hashes of what the spec names, and
/// what the plugins and judges did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `emh <version>`.
    pub tool: String,
    pub spec: EvalSpec,
    pub hashes: Hashes,
    pub model: ModelRecord,
    /// The organism's plugin and the interventions, with their notes (seeds, norms).
    pub plugins: Vec<PluginRecord>,
    /// Ids of the questions selected from the question file.
    pub question_ids: Vec<String>,
    /// The part of the work this directory holds, when it is a shard's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
    /// Judges run over the samples, newest last.
    pub judges: Vec<JudgeRecord>,
}

impl Manifest {
    /// What of the manifest decides the samples, so a resumed run must match
    /// it; `None` when it does, else what differs. Files are compared by
    /// content: the same model under another path is the same model.
    pub fn differs_from(&self, other: &Manifest) -> Option<String> {
        let shas = |h: &Hashed| h.sha256.clone();
        let (a, b) = (&self.spec.condition, &other.spec.condition);
        if a.sampling != b.sampling {
            // Name the setting, with the run's value and the new one.
            let (old, new) = (
                serde_json::to_value(&a.sampling).expect("settings serialise"),
                serde_json::to_value(&b.sampling).expect("settings serialise"),
            );
            let key = old
                .as_object()
                .and_then(|o| o.iter().find(|(k, v)| new.get(k.as_str()) != Some(*v)))
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| "n".into());
            let shown =
                |v: &serde_json::Value| v.get(&key).map_or("unset".into(), |x| x.to_string());
            return Some(format!(
                "sampling setting `{key}`: {} in the run, {} now",
                shown(&old),
                shown(&new)
            ));
        }
        [
            ("condition name", a.name != b.name),
            (
                "model",
                self.model != other.model || shas(&self.hashes.model) != shas(&other.hashes.model),
            ),
            (
                "adapters",
                self.hashes.adapters.iter().map(shas).collect::<Vec<_>>()
                    != other.hashes.adapters.iter().map(shas).collect::<Vec<_>>(),
            ),
            (
                "interventions",
                a.interventions != b.interventions || self.plugins != other.plugins,
            ),
            (
                "question file",
                shas(&self.hashes.questions) != shas(&other.hashes.questions),
            ),
            (
                "question selection",
                self.question_ids != other.question_ids,
            ),
            ("shard", self.part != other.part),
        ]
        .into_iter()
        .find(|(_, d)| *d)
        .map(|(what, _)| format!("{what} differs"))
    }
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

/// What identifies a file's content without reading it: size and modification time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    modified_ns: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(Stamp {
        size: meta.len(),
        modified_ns: modified.as_nanos() as u64,
    })
}

/// SHA-256s remembered by path, size and modification time, so the weights
/// of a model are read once rather than at every run (a 14B model is 30 GB).
pub struct HashMemo {
    path: PathBuf,
    entries: BTreeMap<String, (Stamp, String)>,
}

impl HashMemo {
    /// The memo stored at `path`; a missing or unreadable memo starts empty.
    pub fn open(path: &Path) -> HashMemo {
        let entries = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        HashMemo {
            path: path.to_path_buf(),
            entries,
        }
    }

    fn hash_file(&mut self, path: &Path) -> Result<String, EvalError> {
        let key = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        let now = stamp(path);
        if let (Some(now), Some((then, hash))) = (&now, self.entries.get(&key)) {
            if now == then {
                return Ok(hash.clone());
            }
        }
        let hash = hash_file(path)?;
        if let Some(now) = now {
            self.entries.insert(key, (now, hash.clone()));
        }
        Ok(hash)
    }

    /// Hashes a file, or every regular file directly in a folder (weights,
    /// configs, tokenizer, adapter files).
    pub fn hash_files(&mut self, path: &Path) -> Result<Hashed, EvalError> {
        let mut sha256 = BTreeMap::new();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| EvalError::io(path, e))?;
            for entry in entries {
                let p = entry.map_err(|e| EvalError::io(path, e))?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                // Hidden files are bookkeeping (import stamps), not the model.
                if p.is_file() && !name.starts_with('.') {
                    sha256.insert(name.to_string(), self.hash_file(&p)?);
                }
            }
        } else {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            sha256.insert(name.to_string(), self.hash_file(path)?);
        }
        Ok(Hashed {
            path: path.display().to_string(),
            sha256,
        })
    }

    /// Stores the memo (whole or not at all); a memo that cannot be written
    /// only costs a re-hash next time, so the error is returned for a warning.
    pub fn save(&self) -> Result<(), EvalError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
        }
        let text = serde_json::to_string(&self.entries).expect("the memo serialises");
        crate::run::write_atomic(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_rehashes_only_changed_files() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("w.bin");
        std::fs::write(&file, b"weights").unwrap();
        let memo_path = tmp.path().join("memo.json");
        let mut memo = HashMemo::open(&memo_path);
        let first = memo.hash_files(&file).unwrap();
        assert_eq!(first.sha256["w.bin"], sha256_hex(b"weights"));
        memo.save().unwrap();
        let mut memo = HashMemo::open(&memo_path);
        assert_eq!(memo.hash_files(&file).unwrap(), first);
        // Same size, new content and modification time: hashed again.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&file, b"WEIGHTS").unwrap();
        assert_eq!(
            memo.hash_files(&file).unwrap().sha256["w.bin"],
            sha256_hex(b"WEIGHTS")
        );
    }
}
