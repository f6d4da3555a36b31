//! What a report is made of: run directories, judged CSVs, experiment
//! directories (a `summary.json` and a run per condition) and direction files.

use std::path::{Path, PathBuf};

use emh_directions::DirectionSet;
use emh_experiment::ConditionRow;
use emh_metrics::{MetricRow, ScoredSample, Thresholds};
use emh_tables::SampleRow;

use crate::ReportError;

/// One judged run: its answers and scores, rates and manifest.
pub struct Run {
    /// The name it goes by in the report: the condition, or the file's name.
    pub label: String,
    pub path: PathBuf,
    /// The judge whose scores are shown; `None` when the run is not judged.
    pub judge_id: Option<String>,
    /// Every answer with its scores, in sample order.
    pub samples: Vec<(SampleRow, ScoredSample)>,
    pub metrics: Vec<MetricRow>,
    /// The judge's mean probability on numbers over its judgments: how much
    /// of its answer the scores stand on (a judged CSV records none).
    pub mass: Option<f64>,
    /// The run's manifest as JSON; `None` for a judged CSV.
    pub manifest: Option<serde_json::Value>,
}

/// An experiment: its summary rows and the run of each condition.
pub struct Experiment {
    pub label: String,
    pub rows: Vec<ConditionRow>,
    pub runs: Vec<Run>,
}

/// A direction file and its name.
pub struct Directions {
    pub label: String,
    pub path: PathBuf,
    pub set: DirectionSet,
}

/// An adapter probe's result (`emh lora probe --json`).
pub struct Probe {
    pub label: String,
    /// Feature (adapter) names, in the order of `coef`.
    pub names: Vec<String>,
    /// Coefficients of the fit on all rows, on z-scored features.
    pub coef: Vec<f64>,
    /// Cross-validated ROC AUC and accuracy: (mean, sd) over folds.
    pub auc: (f64, f64),
    pub accuracy: (f64, f64),
    pub folds: usize,
}

/// A B trajectory over training checkpoints (`emh checkpoints --out`).
pub struct Trajectory {
    pub label: String,
    /// One row per checkpoint and adapter.
    pub step: Vec<f64>,
    pub adapter: Vec<String>,
    pub b_norm: Vec<f64>,
    pub cos_to_previous: Vec<Option<f64>>,
}

/// Everything given to one report.
#[derive(Default)]
pub struct Inputs {
    pub runs: Vec<Run>,
    pub experiments: Vec<Experiment>,
    pub directions: Vec<Directions>,
    pub probes: Vec<Probe>,
    pub trajectories: Vec<Trajectory>,
}

impl Inputs {
    /// Every run: those given alone, then each experiment's conditions.
    pub fn all_runs(&self) -> impl Iterator<Item = &Run> {
        self.runs
            .iter()
            .chain(self.experiments.iter().flat_map(|e| &e.runs))
    }
}

fn name_of(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Reads every input, telling kinds apart by what they hold.
pub fn read(paths: &[PathBuf], thresholds: &Thresholds) -> Result<Inputs, ReportError> {
    let mut inputs = Inputs::default();
    for path in paths {
        if path.is_dir() && path.join("summary.json").is_file() {
            inputs.experiments.push(experiment(path, thresholds)?);
        } else if path.is_dir() || path.extension().is_some_and(|e| e == "csv") {
            inputs.runs.push(run(path, None, thresholds)?);
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            let set = DirectionSet::read(path).map_err(|e| ReportError::input(path, e))?;
            inputs.directions.push(Directions {
                label: name_of(path),
                path: path.clone(),
                set,
            });
        } else if path.extension().is_some_and(|e| e == "json") {
            inputs.probes.push(probe(path)?);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            inputs.trajectories.push(trajectory(path)?);
        } else {
            return Err(ReportError::input(
                path,
                "not a run directory, experiment directory (with summary.json), judged CSV, \
                 direction file (.safetensors), probe result (.json of `emh lora probe`) or \
                 checkpoint table (.parquet of `emh checkpoints`)",
            ));
        }
    }
    Ok(inputs)
}

/// A run directory or judged CSV; `label` names it, else its condition or file name.
fn run(path: &Path, label: Option<&str>, thresholds: &Thresholds) -> Result<Run, ReportError> {
    let fail = |e: emh_eval::EvalError| ReportError::input(path, e);
    let (name, samples, judgments) = emh_eval::read_tables(path).map_err(fail)?;
    let ids = emh_eval::judge_ids(&judgments);
    // The newest judge's scores: a re-judged run shows its latest judgment.
    let manifest = if path.is_dir() {
        emh_eval::RunDir::existing(path)
            .and_then(|r| r.manifest())
            .map_err(fail)?
    } else {
        None
    };
    let judge_id = manifest
        .as_ref()
        .and_then(|m| m.judges.last().map(|j| j.identity.id.clone()))
        .filter(|id| ids.contains(id))
        .or_else(|| ids.last().cloned());
    let scored = match &judge_id {
        Some(j) => emh_eval::scored_samples(&samples, &judgments, j),
        None => samples
            .iter()
            .map(|s| ScoredSample {
                question_id: s.question_id.clone(),
                category: s.category.clone(),
                scores: Default::default(),
            })
            .collect(),
    };
    let metrics = match &judge_id {
        Some(j) => emh_eval::metrics(&samples, &judgments, j, thresholds),
        None => Vec::new(),
    };
    let masses: Vec<f64> = judgments
        .iter()
        .filter(|j| Some(&j.judge_id) == judge_id.as_ref() && j.mass.is_finite())
        .map(|j| j.mass)
        .collect();
    let mass = (path.is_dir() && !masses.is_empty())
        .then(|| masses.iter().sum::<f64>() / masses.len() as f64);
    let label = label
        .map(str::to_string)
        .or_else(|| (!name.is_empty()).then_some(name))
        .unwrap_or_else(|| name_of(path));
    Ok(Run {
        label,
        path: path.to_path_buf(),
        judge_id,
        samples: samples.into_iter().zip(scored).collect(),
        metrics,
        mass,
        manifest: manifest.map(|m| serde_json::to_value(m).expect("manifests serialise")),
    })
}

fn experiment(path: &Path, thresholds: &Thresholds) -> Result<Experiment, ReportError> {
    let rows = emh_experiment::read_summary(path).map_err(|e| ReportError::input(path, e))?;
    let runs = rows
        .iter()
        .map(|r| run(&path.join(&r.condition), Some(&r.condition), thresholds))
        .collect::<Result<_, _>>()?;
    Ok(Experiment {
        label: name_of(path),
        rows,
        runs,
    })
}

/// A probe result written by `emh lora probe --json`.
fn probe(path: &Path) -> Result<Probe, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::input(path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ReportError::input(path, e))?;
    let bad = || {
        ReportError::input(
            path,
            "not the JSON of `emh lora probe --json` (names, full.coef, auc)",
        )
    };
    let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(String::from))
            .collect()
    };
    let floats = |v: &serde_json::Value| -> Option<Vec<f64>> {
        v.as_array()?
            .iter()
            .map(serde_json::Value::as_f64)
            .collect()
    };
    let summary =
        |k: &str| -> Option<(f64, f64)> { Some((v[k]["mean"].as_f64()?, v[k]["sd"].as_f64()?)) };
    let names = strings(&v["names"]).ok_or_else(bad)?;
    let coef = floats(&v["full"]["coef"]).ok_or_else(bad)?;
    if names.len() != coef.len() {
        return Err(bad());
    }
    Ok(Probe {
        label: name_of(path),
        names,
        coef,
        auc: summary("auc").ok_or_else(bad)?,
        accuracy: summary("accuracy").ok_or_else(bad)?,
        folds: v["per_fold"].as_array().map_or(0, Vec::len),
    })
}

/// A checkpoint table written by `emh checkpoints --out`.
fn trajectory(path: &Path) -> Result<Trajectory, ReportError> {
    let fail = |e: emh_tables::TableError| ReportError::input(path, e);
    let df = emh_tables::read_table(path).map_err(fail)?;
    let table = "checkpoints";
    let floats = |name: &str| emh_tables::float_column(&df, table, name).map_err(fail);
    let required = |name: &str| -> Result<Vec<f64>, ReportError> {
        floats(name)?
            .into_iter()
            .map(|v| v.ok_or_else(|| ReportError::input(path, format!("a null in `{name}`"))))
            .collect()
    };
    Ok(Trajectory {
        label: name_of(path),
        step: required("step")?,
        adapter: emh_tables::string_column(&df, table, "adapter")
            .map_err(fail)?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect(),
        b_norm: required("b_norm")?,
        cos_to_previous: floats("cos_to_previous")?,
    })
}
