//! Experiments as data: a grid spec expands to named conditions, which run in
//! shared batches on one machine, or as shards of a job array (Slurm, or
//! Kubernetes Indexed Jobs) merged afterwards into the same tables.
//!
//! ```text
//! OUT/<condition>/          one run directory per condition (as `emh eval` writes)
//! OUT/experiment.json       the spec as run and the conditions it expanded to
//! OUT/shards/I-of-N/<condition>/   a shard's part of each run, until `emh merge`
//! OUT/work/                 journals of shared batches, so a killed run resumes
//! OUT/slurm/                the job-array and merge scripts, and their logs
//! ```

mod grid;
mod merge;
mod presets;
mod slurm;
mod summary;

pub use grid::{ExperimentSpec, InterventionEntry, ModelEntry, NudgeAxis, Planned};
pub use merge::merge;
pub use presets::{ablate_spec, steer_spec, AblatePreset, SteerPreset};
pub use slurm::{submit, write_scripts, SlurmOptions, SlurmScripts};
pub use summary::{by_checkpoint, read_summary, write_summary, CheckpointEval, ConditionRow, Rate};

use std::path::{Path, PathBuf};

use emh_eval::{Observer, Part, RunOptions, RunSummary};
use emh_plugins::Registry;

/// Errors of an experiment, naming the field, shard or file.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{field}: {reason}")]
    Spec { field: String, reason: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("slurm: {0}")]
    Slurm(String),
    #[error(transparent)]
    Eval(#[from] emh_eval::EvalError),
    #[error(transparent)]
    Table(#[from] emh_tables::TableError),
}

impl ExperimentError {
    pub(crate) fn io(path: &Path, reason: impl std::fmt::Display) -> Self {
        ExperimentError::Io {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// An experiment read from its file, with the folder its paths are relative to.
pub struct Experiment {
    pub spec: ExperimentSpec,
    pub file: PathBuf,
    pub conditions: Vec<Planned>,
}

impl Experiment {
    /// Reads and expands the spec at `file` (TOML, or JSON by extension).
    pub fn load(file: &Path, registry: &Registry) -> Result<Experiment, ExperimentError> {
        let spec: ExperimentSpec = emh_eval::read_spec(file)?;
        let base = file.parent().unwrap_or(Path::new(""));
        let conditions = spec.expand(base, registry)?;
        Ok(Experiment {
            spec,
            file: file.to_path_buf(),
            conditions,
        })
    }

    /// The experiment's output folder.
    pub fn out(&self) -> PathBuf {
        self.base().join(&self.spec.out)
    }

    /// Where shard `part` writes its runs.
    pub fn shard_dir(&self, part: Part) -> PathBuf {
        shard_dir(&self.out(), part)
    }

    /// Runs every condition (or, with `part`, that shard's share of each), in
    /// batches shared by conditions over the same weights.
    pub fn run(
        &self,
        registry: &Registry,
        part: Option<Part>,
        observer: &dyn Observer,
    ) -> Result<Vec<RunSummary>, ExperimentError> {
        let out = self.out();
        std::fs::create_dir_all(&out).map_err(|e| ExperimentError::io(&out, e))?;
        let record = serde_json::json!({
            "spec": self.spec,
            "conditions": self.conditions.iter().map(|c| &c.spec).collect::<Vec<_>>(),
        });
        write_json(&out.join("experiment.json"), &record)?;
        let root = match part {
            Some(p) => self.shard_dir(p),
            None => out.clone(),
        };
        let specs: Vec<_> = self
            .conditions
            .iter()
            .map(|c| {
                let name = c.dir.file_name().expect("conditions have names");
                (c.spec.clone(), root.join(name))
            })
            .collect();
        let options = RunOptions {
            part,
            work_dir: Some(root.join("work")),
        };
        Ok(emh_eval::run(&specs, registry, &options, observer)?)
    }
}

/// Where shard `part` of the experiment in `out` writes its runs.
pub fn shard_dir(out: &Path, part: Part) -> PathBuf {
    out.join("shards")
        .join(format!("{}-of-{}", part.index, part.count))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ExperimentError> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    emh_atomic::write(path, text.as_bytes()).map_err(|e| ExperimentError::io(path, e))
}
