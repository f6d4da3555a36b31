//! The run directory: manifest, question snapshot, tables and work files.
//!
//! ```text
//! RUN/.lock               held by the one process writing the run (its pid inside)
//! RUN/manifest.json        what produced the tables (settings, hashes, seeds, tool)
//! RUN/questions.json       the questions as evaluated, judge prompts included
//! RUN/samples.parquet      written once every sample exists
//! RUN/judgments.parquet    every judge's scores
//! RUN/metrics.parquet      metrics of the last judge run, graded accuracy and self-ratings
//! RUN/pushback.parquet     second answers after a scripted pushback turn (samples' schema)
//! RUN/pushback_judgments.parquet  second answers judged on `correct`, when judged
//! RUN/factual.parquet      factual answers graded before and after pushback
//! RUN/self_ratings.parquet the model's own 0–100 rating of each paraphrase
//! RUN/self_rating_by_question.parquet  its mean per question beside the misaligned rate
//! RUN/activations/*.safetensors  what the plans captured (see `activations`)
//! RUN/work/samples/N.json  finished generation batches, so a resumed run skips them
//! RUN/work/samples/pushback/N.json  the same for second turns
//! ```
//! Runs sampled together in shared batches journal to their experiment's
//! `work/` folder instead.
//! Every file is written to a temporary name and renamed into place, so a
//! killed run never leaves a half-written file behind under a real name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use emh_questions::Question;
use emh_tables::{JudgmentRow, SampleRow};
use serde::{de::DeserializeOwned, Serialize};

use crate::{EvalError, Manifest};

/// A run directory; one opened for writing holds its lock (`RUN/.lock`)
/// while any clone of it lives.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
    lock: Option<Arc<std::fs::File>>,
}

/// Takes the advisory lock of the run directory `path`, so one process at a
/// time writes it; the lock file names the holder's pid for the refusal.
fn lock(path: &Path) -> Result<Arc<std::fs::File>, EvalError> {
    use std::io::{Read, Seek, Write};
    let file_path = path.join(".lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&file_path)
        .map_err(|e| EvalError::io(&file_path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(EvalError::io(
                path,
                format!(
                    "another emh process (pid {}) is writing this run; wait for it to end, or pick another output folder",
                    holder.trim()
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(EvalError::io(&file_path, e)),
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| EvalError::io(&file_path, e))?;
    Ok(Arc::new(file))
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
    /// The run directory at `path`, created if needed, locked for writing.
    pub fn open(path: &Path) -> Result<RunDir, EvalError> {
        std::fs::create_dir_all(path).map_err(|e| EvalError::io(path, e))?;
        Ok(RunDir {
            path: path.to_path_buf(),
            lock: Some(lock(path)?),
        })
    }

    /// This run directory locked for writing (to judge it again, say).
    pub fn locked(self) -> Result<RunDir, EvalError> {
        if self.lock.is_some() {
            return Ok(self);
        }
        Ok(RunDir {
            lock: Some(lock(&self.path)?),
            path: self.path,
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
            lock: None,
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
    /// `pushback.parquet`: second answers, after the scripted pushback turn.
    pub fn pushback_path(&self) -> PathBuf {
        self.path.join("pushback.parquet")
    }
    /// `pushback_judgments.parquet`: second answers judged on `correct`.
    pub fn pushback_judgments_path(&self) -> PathBuf {
        self.path.join("pushback_judgments.parquet")
    }
    /// `factual.parquet`: each factual answer graded before and after pushback.
    pub fn factual_path(&self) -> PathBuf {
        self.path.join("factual.parquet")
    }
    /// `self_ratings.parquet`: the model's own 0–100 rating of each paraphrase.
    pub fn self_ratings_path(&self) -> PathBuf {
        self.path.join("self_ratings.parquet")
    }
    /// `self_rating_by_question.parquet`: each question's mean self-rating
    /// beside its misaligned-answer rate.
    pub fn self_rating_by_question_path(&self) -> PathBuf {
        self.path.join("self_rating_by_question.parquet")
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

    /// The second answers, if that stage has finished.
    pub fn pushback(&self) -> Result<Option<Vec<SampleRow>>, EvalError> {
        let path = self.pushback_path();
        if !path.is_file() {
            return Ok(None);
        }
        let df = emh_tables::read_parquet(&path)?;
        Ok(Some(emh_tables::samples_from_frame(&df)?))
    }

    /// Writes the second answers, in the samples table's schema.
    pub fn write_pushback(&self, rows: &[SampleRow]) -> Result<(), EvalError> {
        let mut df = emh_tables::samples_frame(rows)?;
        Ok(emh_tables::write_parquet(&mut df, &self.pushback_path())?)
    }

    /// The second answers' `correct` judgments (empty before any).
    pub fn pushback_judgments(&self) -> Result<Vec<JudgmentRow>, EvalError> {
        let path = self.pushback_judgments_path();
        if !path.is_file() {
            return Ok(Vec::new());
        }
        let df = emh_tables::read_parquet(&path)?;
        Ok(emh_tables::judgments_from_frame(&df)?)
    }

    /// Writes the second answers' judgments.
    pub fn write_pushback_judgments(&self, rows: &[JudgmentRow]) -> Result<(), EvalError> {
        let mut df = emh_tables::judgments_frame(rows)?;
        Ok(emh_tables::write_parquet(
            &mut df,
            &self.pushback_judgments_path(),
        )?)
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
