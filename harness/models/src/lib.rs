//! Finds model folders: explicit paths, the harness data directory, and the
//! Hugging Face hub cache.

use std::path::{Path, PathBuf};

/// The model the harness ships with, imported by `cargo xtask setup`.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct";

/// A model name that could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("model `{name}` not found; looked in: {}", looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
pub struct NotFound {
    pub name: String,
    pub looked: Vec<PathBuf>,
}

/// Where a model folder was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path,
    DataDir,
    HubCache,
}

/// A model folder that can be loaded.
#[derive(Debug, Clone)]
pub struct Found {
    pub name: String,
    pub dir: PathBuf,
    pub source: Source,
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> PathBuf {
    env_dir("HOME").unwrap_or_else(|| PathBuf::from("."))
}

/// The harness data directory: `$EMH_HOME`, else `$XDG_CACHE_HOME/em-harness`,
/// else `~/.cache/em-harness`.
pub fn data_dir() -> PathBuf {
    env_dir("EMH_HOME").unwrap_or_else(|| {
        env_dir("XDG_CACHE_HOME")
            .unwrap_or_else(|| home().join(".cache"))
            .join("em-harness")
    })
}

/// Folder of imported models inside the data directory.
pub fn models_dir() -> PathBuf {
    data_dir().join("models")
}

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, `$HF_HOME/hub`, or `~/.cache/huggingface/hub`.
pub fn hub_cache() -> PathBuf {
    env_dir("HF_HUB_CACHE")
        .or_else(|| env_dir("HF_HOME").map(|h| h.join("hub")))
        .unwrap_or_else(|| {
            env_dir("XDG_CACHE_HOME")
                .unwrap_or_else(|| home().join(".cache"))
                .join("huggingface")
                .join("hub")
        })
}

fn is_model_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file()
}

/// The snapshot of a hub-cache repo folder that `refs/main` names, else the
/// newest snapshot.
fn hub_snapshot(repo: &Path) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let dir = snapshots.join(rev.trim());
        if is_model_dir(&dir) {
            return Some(dir);
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| is_model_dir(&e.path()))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// Resolves a model name or path to a model folder.
pub fn resolve(name: &str) -> Result<Found, NotFound> {
    let found = |dir: PathBuf, source| Found {
        name: name.to_string(),
        dir,
        source,
    };
    let as_path = PathBuf::from(name);
    if is_model_dir(&as_path) {
        return Ok(found(as_path, Source::Path));
    }
    let local = models_dir().join(name);
    if is_model_dir(&local) {
        return Ok(found(local, Source::DataDir));
    }
    let repo = hub_cache().join(format!("models--{}", name.replace('/', "--")));
    if let Some(dir) = hub_snapshot(&repo) {
        return Ok(found(dir, Source::HubCache));
    }
    Err(NotFound {
        name: name.to_string(),
        looked: vec![as_path, local, repo],
    })
}

/// Every model folder in the data directory and the hub cache.
pub fn list() -> Vec<Found> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(models_dir()) {
        for e in entries.flatten() {
            if is_model_dir(&e.path()) {
                out.push(Found {
                    name: e.file_name().to_string_lossy().into_owned(),
                    dir: e.path(),
                    source: Source::DataDir,
                });
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(hub_cache()) {
        for e in entries.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            let Some(repo) = fname.strip_prefix("models--") else {
                continue;
            };
            if let Some(dir) = hub_snapshot(&e.path()) {
                out.push(Found {
                    name: repo.replacen("--", "/", 1),
                    dir,
                    source: Source::HubCache,
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_snapshot_follows_refs_main() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--m");
        for rev in ["aaa", "bbb"] {
            let d = repo.join("snapshots").join(rev);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("config.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "aaa\n").unwrap();
        assert_eq!(hub_snapshot(&repo), Some(repo.join("snapshots/aaa")));
    }

    #[test]
    fn explicit_path_wins_and_missing_names_say_where_we_looked() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
        let f = resolve(tmp.path().to_str().unwrap()).unwrap();
        assert_eq!(f.source, Source::Path);
        let err = resolve("no-such/model-xyz").unwrap_err();
        assert_eq!(err.looked.len(), 3);
        assert!(err.to_string().contains("models--no-such--model-xyz"));
    }
}
