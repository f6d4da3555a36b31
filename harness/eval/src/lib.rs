//! Evaluation runs: ask a model the questions of a question set many times,
//! judge every answer, and summarise, with every stage resumable and every
//! table traceable through the run's manifest.

mod judge;
mod manifest;
mod run;
mod sample;
mod summary;

pub use judge::{check_judge_prompts, judge};
pub use manifest::{
    sha256_hex, Condition, HashMemo, Hashed, JudgeRecord, Manifest, ModelRecord, PluginRecord,
    SampleSettings,
};
pub use run::RunDir;
pub use sample::{sample, sample_seed, SampleProgress, Sampler};
pub use summary::{judge_ids, metrics, pick_judge, scored_samples};

use std::path::{Path, PathBuf};

use emh_questions::Question;

/// Errors of an evaluation run, naming the file or stage.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error(transparent)]
    Table(#[from] emh_tables::TableError),
    #[error(transparent)]
    Runtime(#[from] emh_runtime::RuntimeError),
    #[error(transparent)]
    Text(#[from] emh_text::TextError),
    #[error(transparent)]
    Plugin(#[from] emh_plugins::PluginError),
    #[error("judging: {reason}")]
    Judge { reason: String },
    #[error("{path}: this run was made with other settings ({what} differs); resume it with the same command, or pick another --out")]
    Mismatch { path: PathBuf, what: String },
}

impl EvalError {
    pub(crate) fn io(path: &Path, reason: impl std::fmt::Display) -> Self {
        EvalError::Io {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// Starts a run, or checks that the run already in `run` has the same
/// condition so it can be resumed; writes the manifest and question snapshot.
pub fn begin(
    run: &RunDir,
    condition: Condition,
    questions: &[Question],
) -> Result<Manifest, EvalError> {
    if let Some(old) = run.manifest()? {
        let c = &old.condition;
        // Files are compared by content: the same model under another path is the same model.
        let hashes = |h: &[Hashed]| h.iter().map(|f| f.sha256.clone()).collect::<Vec<_>>();
        let model = |m: &ModelRecord| {
            (
                m.name.clone(),
                m.device.clone(),
                m.dtype.clone(),
                m.files.sha256.clone(),
            )
        };
        let differs = [
            ("run id", c.run_id != condition.run_id),
            ("model", model(&c.model) != model(&condition.model)),
            (
                "adapters",
                hashes(&c.adapters) != hashes(&condition.adapters),
            ),
            ("plugins", c.plugins != condition.plugins),
            ("sampling settings", c.sampling != condition.sampling),
            (
                "question file",
                c.questions.sha256 != condition.questions.sha256,
            ),
            (
                "question selection",
                c.question_ids != condition.question_ids,
            ),
        ];
        if let Some((what, _)) = differs.iter().find(|(_, d)| *d) {
            return Err(EvalError::Mismatch {
                path: run.path.clone(),
                what: what.to_string(),
            });
        }
        return Ok(old);
    }
    let manifest = Manifest {
        tool: format!("emh {}", env!("CARGO_PKG_VERSION")),
        condition,
        judges: Vec::new(),
    };
    run.write_questions(questions)?;
    run.write_manifest(&manifest)?;
    Ok(manifest)
}
