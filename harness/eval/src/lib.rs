//! Evaluation runs: ask a model the questions of a question set many times,
//! judge every answer, and summarise, with every stage resumable and every
//! table traceable through the run's manifest. Conditions and evaluation
//! specs are values (`spec`); `run` is the one entry point that runs them,
//! and `sample` the one sampling loop, shared with `emh generate`.

mod activations;
mod capture;
mod forced;
mod group;
mod import;
mod judge;
mod load;
mod logprob;
mod manifest;
mod nudge;
mod part;
mod pipeline;
mod prompts;
mod pushback;
mod run;
mod sample;
mod scalars;
mod select;
mod self_rating;
mod spec;
mod summary;

pub use activations::{merge_activations, Activations, BatchCaptures};
pub use capture::{read_pairs, select_answers, write_capture, Pair, Side};
pub use forced::{
    encode_forced, run_forced, scalar_names, Encoded, Forced, ForcedOptions, ForcedOut,
};
pub use group::{sample_group, GroupRun, SampleProgress};
pub use import::import_csv;
pub use judge::{check_judge_prompts, judge};
pub use load::{control_adapters, load_model, plan_all, Loaded, Planned};
pub use logprob::{preference, PairLogprob, Preference};
pub use manifest::{
    sha256_hex, HashMemo, Hashed, Hashes, JudgeRecord, Manifest, ModelRecord, PluginRecord,
};
pub use nudge::{opening, pick_nudges, read_nudges, Nudge};
pub use part::{assign, Part};
pub use pipeline::{
    begin, judge_samples, load_questions, open_judge, rejudge, run, summarise, Observer, Quiet,
    RunOptions, RunSummary,
};
pub use prompts::{read_prompts, PromptLine, PromptRenderer};
pub use pushback::{grade, pushback_messages, pushback_seed, CorrectScores, CORRECT};
pub use run::RunDir;
pub use sample::{
    finish_name, question_key, sample_jobs, sample_prompts, sample_seed, warm_up, Draws, Generated,
    Job, Sampled, Seeds,
};
pub use scalars::{adapter_scalars, AnswerScalars, ScalarInputs, ScalarTable};
pub use select::{SelectError, Selection};
pub use self_rating::{rate_questions, rated, rating_text, read_ratings, RatingRow};
pub use spec::{
    read_spec, spec_text, Condition, EvalSpec, JudgeSpec, ModelSpec, PluginUse, QuestionSpec,
    Sampling, SelfRating,
};
pub use summary::{judge_ids, metrics, paired_scores, pick_judge, read_tables, scored_samples};

use std::path::{Path, PathBuf};

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
    #[error("{field}: {reason}")]
    Spec { field: String, reason: String },
    #[error("loading {what}: {reason}")]
    Load { what: String, reason: String },
    #[error("{path}: this run was made with other settings ({what}); resume it with the same command, or pick another --out")]
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
