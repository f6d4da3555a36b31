//! The run directory: manifest, question snapshot, tables and work files.
//!
//! ```text
//! RUN/manifest.json        what produced the tables (settings, hashes, seeds, tool)
//! RUN/questions.json       the questions as evaluated, judge prompts included
//! RUN/samples.parquet      written once every sample exists
//! RUN/judgments.parquet    every judge's scores
//! RUN/metrics.parquet      metrics of the last judge run
//! RUN/activations/*.safetensors  what the plans captured (see `activations`)
//! RUN/work/samples/N.json  finished generation batches, so a resumed run skips them
//! ```
//! Runs sampled together in shared batches journal to their experiment's
//! `work/` folder instead.
//! Every file is written to a temporary name and renamed into place, so a
//! killed run never leaves a half-written file behind under a real name.

use std::path::{Path, PathBuf};

use emh_questions::Question;
use emh_tables::{JudgmentRow, SampleRow};
use serde::{de::DeserializeOwned, Serialize};

use crate::{EvalError, Manifest};

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

/// Writes `bytes` to `path` whole or not at all.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    emh_atomic::write(path, bytes).map_err(|e| EvalError::io(path, e))
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, EvalError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EvalError::io(path, format!("not valid: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EvalError::io(path, e)),
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), EvalError> {
    let text = serde_json::to_string_pretty(value).expect("run files serialise");
    write_atomic(path, text.as_bytes())
}

impl RunDir {
    /// The run directory at `path`, created if needed.
    pub fn open(path: &Path) -> Result<RunDir, EvalError> {
        std::fs::create_dir_all(path).map_err(|e| EvalError::io(path, e))?;
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    /// A run directory that must already hold samples.
    pub fn existing(path: &Path) -> Result<RunDir, EvalError> {
        if !path.join("manifest.json").is_file() {
            return Err(EvalError::io(
                path,
                "not a run directory (no manifest.json); make one with `emh eval` or `emh sample`",
            ));
        }
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    /// `manifest.json`.
    pub fn manifest_path(&self) -> PathBuf {
        self.path.join("manifest.json")
    }
    /// `questions.json`: the questions as evaluated.
    pub fn questions_path(&self) -> PathBuf {
        self.path.join("questions.json")
    }
    /// `samples.parquet`.
    pub fn samples_path(&self) -> PathBuf {
        self.path.join("samples.parquet")
    }
    /// `judgments.parquet`.
    pub fn judgments_path(&self) -> PathBuf {
        self.path.join("judgments.parquet")
    }
    /// `metrics.parquet`.
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.parquet")
    }
    /// The journal of this run's generation batches when sampled alone.
    pub fn journal_dir(&self) -> PathBuf {
        self.path.join("work").join("samples")
    }
    /// Where captured activations go.
    pub fn activations_dir(&self) -> PathBuf {
        self.path.join("activations")
    }

    /// The manifest, if the run has one.
    pub fn manifest(&self) -> Result<Option<Manifest>, EvalError> {
        read_json(&self.manifest_path())
    }

    /// Writes the manifest, whole or not at all.
    pub fn write_manifest(&self, m: &Manifest) -> Result<(), EvalError> {
        write_json(&self.manifest_path(), m)
    }

    /// The questions this run evaluates.
    pub fn questions(&self) -> Result<Vec<Question>, EvalError> {
        read_json(&self.questions_path())?.ok_or_else(|| {
            EvalError::io(&self.questions_path(), "missing: the run has no questions")
        })
    }

    /// Writes the question snapshot.
    pub fn write_questions(&self, q: &[Question]) -> Result<(), EvalError> {
        write_json(&self.questions_path(), &q)
    }

    /// The samples table, if sampling has finished.
    pub fn samples(&self) -> Result<Option<Vec<SampleRow>>, EvalError> {
        let path = self.samples_path();
        if !path.is_file() {
            return Ok(None);
        }
        let df = emh_tables::read_parquet(&path)?;
        Ok(Some(emh_tables::samples_from_frame(&df)?))
    }

    /// The judgments table (empty before any judging).
    pub fn judgments(&self) -> Result<Vec<JudgmentRow>, EvalError> {
        let path = self.judgments_path();
        if !path.is_file() {
            return Ok(Vec::new());
        }
        let df = emh_tables::read_parquet(&path)?;
        Ok(emh_tables::judgments_from_frame(&df)?)
    }

    /// Writes the samples table.
    pub fn write_samples(&self, rows: &[SampleRow]) -> Result<(), EvalError> {
        let mut df = emh_tables::samples_frame(rows)?;
        Ok(emh_tables::write_parquet(&mut df, &self.samples_path())?)
    }

    /// Writes the judgments table.
    pub fn write_judgments(&self, rows: &[JudgmentRow]) -> Result<(), EvalError> {
        let mut df = emh_tables::judgments_frame(rows)?;
        Ok(emh_tables::write_parquet(&mut df, &self.judgments_path())?)
    }
}
