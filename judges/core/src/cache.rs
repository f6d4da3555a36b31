//! A content-addressed cache of judgments on disk.
//!
//! The key hashes everything that decides a judgment (judge model, endpoint,
//! the full prompt, request parameters), so re-running a judge on the same
//! answers costs nothing and an interrupted run resumes where it stopped.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Judgment;

/// Errors reading or writing the cache, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("judgment cache {path}: {reason}")]
pub struct CacheError {
    pub path: PathBuf,
    pub reason: String,
}

/// The hash that names one judgment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of a request; `params` holds every request parameter that
    /// changes the answer (temperature, top_logprobs, seed, ...).
    pub fn new(
        judge_model: &str,
        endpoint: &str,
        prompt: &str,
        params: &serde_json::Value,
    ) -> Self {
        // serde_json maps are sorted, so equal parameters serialise equally.
        let canonical = serde_json::json!([judge_model, endpoint, prompt, params]).to_string();
        let digest = Sha256::digest(canonical.as_bytes());
        CacheKey(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A folder of cached judgments, one JSON file per key.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Opens (creating) a cache folder.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        std::fs::create_dir_all(dir).map_err(|e| CacheError {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(&key.0[..2]).join(format!("{}.json", key.0))
    }

    /// The cached judgment for `key`, if there is one.
    pub fn get(&self, key: &CacheKey) -> Result<Option<Judgment>, CacheError> {
        let path = self.path(key);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CacheError {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CacheError {
                path,
                reason: format!("not a judgment: {e}"),
            })
    }

    /// Stores a judgment; the file appears whole or not at all.
    pub fn put(&self, key: &CacheKey, judgment: &Judgment) -> Result<(), CacheError> {
        let path = self.path(key);
        let err = |reason: String| CacheError {
            path: path.clone(),
            reason,
        };
        let parent = path.parent().expect("cache files live in a shard folder");
        std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        let text = serde_json::to_string(judgment).expect("judgments serialise");
        emh_atomic::write(&path, text.as_bytes()).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{aggregate, TopToken};

    fn judgment(n: &str) -> Judgment {
        aggregate(vec![TopToken {
            token: n.into(),
            logprob: 0.0,
        }])
    }

    #[test]
    fn keys_change_with_every_input_and_not_with_param_order() {
        let p1 = serde_json::json!({"temperature": 0, "top_logprobs": 20});
        let p2: serde_json::Value =
            serde_json::from_str(r#"{"top_logprobs": 20, "temperature": 0}"#).unwrap();
        let k = CacheKey::new("gpt-4o", "https://api", "prompt", &p1);
        assert_eq!(k, CacheKey::new("gpt-4o", "https://api", "prompt", &p2));
        assert_ne!(
            k,
            CacheKey::new("gpt-4o-mini", "https://api", "prompt", &p1)
        );
        assert_ne!(
            k,
            CacheKey::new("gpt-4o", "http://localhost", "prompt", &p1)
        );
        assert_ne!(k, CacheKey::new("gpt-4o", "https://api", "prompt ", &p1));
        assert_ne!(
            k,
            CacheKey::new("gpt-4o", "https://api", "prompt", &serde_json::json!({}))
        );
        assert_eq!(k.as_str().len(), 64);
    }

    #[test]
    fn put_then_get_and_misses_are_none() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let k = CacheKey::new("m", "e", "p", &serde_json::json!({}));
        assert_eq!(cache.get(&k).unwrap(), None);
        cache.put(&k, &judgment("42")).unwrap();
        assert_eq!(cache.get(&k).unwrap(), Some(judgment("42")));
        let reopened = Cache::open(tmp.path()).unwrap();
        assert_eq!(reopened.get(&k).unwrap().unwrap().score, Some(42.0));
    }

    #[test]
    fn scores_come_back_from_the_cache_to_the_last_bit() {
        // A resumed run reads cached judgments beside fresh ones: the two
        // must be the same numbers, not one ulp apart.
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        for (i, v) in [93.99999999999999, 37.00000000000001, 0.1 + 0.2, 1e-300]
            .into_iter()
            .enumerate()
        {
            let k = CacheKey::new("m", "e", &format!("p{i}"), &serde_json::json!({}));
            let mut j = judgment("42");
            j.score = Some(v);
            cache.put(&k, &j).unwrap();
            let back = cache.get(&k).unwrap().unwrap().score.unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v}");
        }
    }

    #[test]
    fn a_damaged_entry_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let k = CacheKey::new("m", "e", "p", &serde_json::json!({}));
        cache.put(&k, &judgment("1")).unwrap();
        let path = cache.path(&k);
        std::fs::write(&path, "{\"score\": ").unwrap();
        let err = cache.get(&k).unwrap_err().to_string();
        assert!(err.contains(path.to_str().unwrap()), "{err}");
    }
}
