//! The experiment's summary: one row per condition with its judged rates,
//! the relative EM reduction against the same model's condition without
//! interventions, and
//! the log-prob preference over labelled pairs; written as `OUT/summary.csv`.

use std::path::{Path, PathBuf};

use emh_eval::{load_model, plan_all, preference, read_pairs, Observer, Preference, RunSummary};
use emh_metrics::{relative_reduction, MetricRow, Scope};
use emh_plugins::Registry;
use emh_tables::csv_field;
use serde::{Deserialize, Serialize};

use crate::{Experiment, ExperimentError};

/// A rate with its 95% interval and count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub value: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub successes: Option<u64>,
    pub n: u64,
    /// Samples left out because a score the rate needs was null.
    pub nulls: u64,
}

/// One condition of the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionRow {
    pub condition: String,
    pub model: String,
    pub intervention: String,
    /// The nudge, when the grid has a nudges axis.
    #[serde(default)]
    pub nudge: Option<String>,
    pub seed: u64,
    pub samples: usize,
    /// The judge whose scores the rates are from.
    pub judge: Option<String>,
    pub em: Option<Rate>,
    pub coherence: Option<Rate>,
    pub misaligned: Option<Rate>,
    pub self_correction: Option<Rate>,
    /// Answers refused: a judged `refusal` above its cut-off or a REFUSAL null.
    #[serde(default)]
    pub refusal: Option<Rate>,
    /// Factual first answers that give the reference.
    #[serde(default)]
    pub accuracy_before: Option<Rate>,
    /// Factual answers after the pushback turn that give the reference.
    #[serde(default)]
    pub accuracy_after: Option<Rate>,
    /// Correct first answers made incorrect by the pushback.
    #[serde(default)]
    pub flip: Option<Rate>,
    /// Spearman ρ of the model's own rating of each question with the
    /// question's misaligned rate (`n` questions), with its interval.
    #[serde(default)]
    pub self_rating_spearman: Option<Rate>,
    /// 1 − EM / EM of the same model and seed without interventions, with its interval.
    pub em_reduction: Option<(f64, f64, f64)>,
    /// Mean per-token log-prob of misaligned − aligned answers, with its interval.
    pub logprob_pref: Option<(f64, f64, f64)>,
    pub pairs: Option<usize>,
}

fn overall(metrics: &[MetricRow], name: &str) -> Option<Rate> {
    metrics
        .iter()
        .find(|r| r.scope == Scope::Overall && r.metric == name)
        .map(|r| Rate {
            value: r.value,
            low: r.ci_low,
            high: r.ci_high,
            successes: r.successes,
            n: r.n,
            nulls: r.nulls,
        })
}

impl Experiment {
    /// Each condition's log-prob preference over the spec's `pairs`; the
    /// model is loaded once for the conditions that share it (again where a
    /// plan scales adapters). Also written as `OUT/<condition>/logprob_pref.json`.
    pub fn preferences(
        &self,
        registry: &Registry,
        batch_size: usize,
        observer: &dyn Observer,
    ) -> Result<Vec<Option<Preference>>, ExperimentError> {
        let Some(pairs) = &self.spec.pairs else {
            return Ok(vec![None; self.conditions.len()]);
        };
        let path = self.base().join(pairs);
        let pairs = read_pairs(&path)?;
        let mut out = Vec::new();
        let mut loaded: Option<(emh_eval::ModelSpec, emh_eval::Loaded)> = None;
        for c in &self.conditions {
            let spec = &c.spec.condition;
            let reuse = loaded.as_ref().is_some_and(|(m, _)| m == &spec.model);
            if !reuse {
                observer.message(&format!("loading {} for log-prob preferences", c.model));
                loaded = Some((
                    spec.model.clone(),
                    load_model(&spec.model, registry, false)?,
                ));
            }
            let (_, model) = loaded.as_mut().expect("loaded above");
            let plans = plan_all(&spec.interventions, registry, model.shape())?;
            let scales_adapters = plans.iter().any(|p| !p.plan.adapters.is_empty());
            observer.message(&format!("log-prob preference: {}", spec.name));
            let p = preference(model, &plans, &pairs, batch_size, &mut |_, _| {})?;
            if scales_adapters {
                loaded = None;
            }
            let file = c.dir.join("logprob_pref.json");
            std::fs::create_dir_all(&c.dir).map_err(|e| ExperimentError::io(&c.dir, e))?;
            let text = serde_json::to_string_pretty(&p).expect("values serialise");
            emh_atomic::write(&file, text.as_bytes()).map_err(|e| ExperimentError::io(&file, e))?;
            out.push(Some(p));
        }
        Ok(out)
    }

    /// The summary rows of the runs (in condition order) and preferences.
    pub fn summarise(
        &self,
        runs: &[RunSummary],
        prefs: &[Option<Preference>],
    ) -> Vec<ConditionRow> {
        let mut rows: Vec<ConditionRow> = self
            .conditions
            .iter()
            .zip(runs)
            .zip(prefs)
            .map(|((c, r), p)| ConditionRow {
                condition: c.spec.condition.name.clone(),
                model: c.model.clone(),
                intervention: c.intervention.clone(),
                nudge: c.nudge.clone(),
                seed: c.seed,
                samples: r.samples,
                judge: r.judge_id.clone(),
                em: overall(&r.metrics, "em_rate"),
                coherence: overall(&r.metrics, "coherence_rate"),
                misaligned: overall(&r.metrics, "misaligned_rate"),
                self_correction: overall(&r.metrics, "self_correction_rate"),
                refusal: overall(&r.metrics, "refusal_rate"),
                accuracy_before: overall(&r.metrics, "accuracy_before"),
                accuracy_after: overall(&r.metrics, "accuracy_after"),
                flip: overall(&r.metrics, "flip_rate"),
                self_rating_spearman: overall(&r.metrics, "self_rating_spearman"),
                em_reduction: None,
                logprob_pref: p.as_ref().map(|p| (p.mean, p.ci_low, p.ci_high)),
                pairs: p.as_ref().map(|p| p.n),
            })
            .collect();
        // The baseline of a condition: the same model, nudge and seed with no plugins.
        let plain: Vec<bool> = self
            .conditions
            .iter()
            .map(|c| c.spec.condition.interventions.is_empty())
            .collect();
        let baselines: Vec<Option<Rate>> = rows
            .iter()
            .map(|r| {
                rows.iter()
                    .zip(&plain)
                    .find(|(b, &p)| {
                        p && b.model == r.model && b.nudge == r.nudge && b.seed == r.seed
                    })
                    .and_then(|(b, _)| b.em.clone())
            })
            .collect();
        for ((row, base), &p) in rows.iter_mut().zip(baselines).zip(&plain) {
            if let (Some(b), Some(e)) = (base, &row.em) {
                if !p {
                    row.em_reduction = relative_reduction(
                        b.successes.unwrap_or(0),
                        b.n,
                        e.successes.unwrap_or(0),
                        e.n,
                    );
                }
            }
        }
        rows
    }

    /// The folder the spec's paths are relative to.
    pub(crate) fn base(&self) -> PathBuf {
        self.file.parent().unwrap_or(Path::new("")).to_path_buf()
    }
}

/// Writes the summary as `DIR/summary.csv` (rates as fractions, empty where
/// not measured) and as `DIR/summary.json`, the rows as data for reports.
pub fn write_summary(dir: &Path, rows: &[ConditionRow]) -> Result<(), ExperimentError> {
    let json = dir.join("summary.json");
    let text = serde_json::to_string_pretty(rows).expect("rows serialise");
    emh_atomic::write(&json, text.as_bytes()).map_err(|e| ExperimentError::io(&json, e))?;
    let path = &dir.join("summary.csv");
    let f = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    let rate = |r: &Option<Rate>| match r {
        Some(r) => format!(
            "{},{},{},{},{}",
            f(r.value),
            f(r.low),
            f(r.high),
            r.n,
            r.nulls
        ),
        None => ",,,,".into(),
    };
    let triple = |t: Option<(f64, f64, f64)>| match t {
        Some((v, lo, hi)) => format!("{},{},{}", f(Some(v)), f(Some(lo)), f(Some(hi))),
        None => ",,".into(),
    };
    let mut text = String::from(
        "condition,model,intervention,nudge,seed,samples,judge,\
         em_rate,em_low,em_high,em_n,em_nulls,coherence_rate,coherence_low,coherence_high,coherence_n,coherence_nulls,\
         misaligned_rate,misaligned_low,misaligned_high,misaligned_n,misaligned_nulls,\
         self_correction_rate,self_correction_low,self_correction_high,self_correction_n,self_correction_nulls,\
         refusal_rate,refusal_low,refusal_high,refusal_n,refusal_nulls,\
         accuracy_before,accuracy_before_low,accuracy_before_high,accuracy_before_n,accuracy_before_nulls,\
         accuracy_after,accuracy_after_low,accuracy_after_high,accuracy_after_n,accuracy_after_nulls,\
         flip_rate,flip_low,flip_high,flip_n,flip_nulls,\
         self_rating_spearman,self_rating_spearman_low,self_rating_spearman_high,self_rating_spearman_n,self_rating_spearman_nulls,\
         em_reduction,em_reduction_low,em_reduction_high,\
         logprob_pref,logprob_pref_low,logprob_pref_high,pairs\n",
    );
    for r in rows {
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(&r.condition),
            csv_field(&r.model),
            csv_field(&r.intervention),
            csv_field(r.nudge.as_deref().unwrap_or("")),
            r.seed,
            r.samples,
            csv_field(r.judge.as_deref().unwrap_or("")),
            rate(&r.em),
            rate(&r.coherence),
            rate(&r.misaligned),
            rate(&r.self_correction),
            rate(&r.refusal),
            rate(&r.accuracy_before),
            rate(&r.accuracy_after),
            rate(&r.flip),
            rate(&r.self_rating_spearman),
            triple(r.em_reduction),
            triple(r.logprob_pref),
            r.pairs.map(|n| n.to_string()).unwrap_or_default(),
        ));
    }
    emh_atomic::write(path, text.as_bytes()).map_err(|e| ExperimentError::io(path, e))
}

/// The rows of an experiment's `DIR/summary.json`.
pub fn read_summary(dir: &Path) -> Result<Vec<ConditionRow>, ExperimentError> {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ExperimentError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| ExperimentError::io(&path, e))
}

/// What an experiment measured of one training checkpoint without interventions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointEval {
    pub em: Option<f64>,
    pub logprob_pref: Option<f64>,
}

/// The conditions of checkpoint models (`NAME@checkpoint-N`) without
/// interventions, by step N.
pub fn by_checkpoint(rows: &[ConditionRow]) -> std::collections::BTreeMap<u64, CheckpointEval> {
    rows.iter()
        .filter(|r| r.intervention == "none")
        .filter_map(|r| {
            let (_, n) = r.model.rsplit_once("@checkpoint-")?;
            let eval = CheckpointEval {
                em: r.em.as_ref().and_then(|e| e.value),
                logprob_pref: r.logprob_pref.map(|p| p.0),
            };
            Some((n.parse().ok()?, eval))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, intervention: &str, em: f64, pref: f64) -> ConditionRow {
        ConditionRow {
            condition: format!("{model}__{intervention}"),
            model: model.into(),
            intervention: intervention.into(),
            nudge: None,
            seed: 0,
            samples: 10,
            judge: None,
            em: Some(Rate {
                value: Some(em),
                low: None,
                high: None,
                successes: None,
                n: 10,
                nulls: 0,
            }),
            coherence: None,
            misaligned: None,
            self_correction: None,
            refusal: None,
            accuracy_before: None,
            accuracy_after: None,
            flip: None,
            self_rating_spearman: None,
            em_reduction: None,
            logprob_pref: Some((pref, pref - 0.1, pref + 0.1)),
            pairs: Some(40),
        }
    }

    /// Names with commas and quotes stay one field each in summary.csv.
    #[test]
    fn summary_csv_quotes_names() {
        let mut r = row("org", "steering(layer=12, scale=4)", 0.25, 0.0);
        r.judge = Some("local:M (constrained, prefix \"Score:\")".into());
        let dir = tempfile::tempdir().unwrap();
        write_summary(dir.path(), &[r.clone()]).unwrap();
        let df = emh_tables::read_table(&dir.path().join("summary.csv")).unwrap();
        let text = |c: &str| emh_tables::string_column(&df, "summary", c).unwrap()[0].clone();
        assert_eq!(text("intervention"), Some(r.intervention.clone()));
        assert_eq!(text("judge"), r.judge);
        let em = emh_tables::float_column(&df, "summary", "em_rate").unwrap();
        assert_eq!(em[0], Some(0.25));
        assert_eq!(df.width(), 59);
    }

    /// Checkpoint conditions without interventions, by step; others left out.
    #[test]
    fn checkpoint_conditions_are_keyed_by_step() {
        let rows = [
            row("org@checkpoint-20", "none", 0.2, -0.1),
            row("org@checkpoint-100", "none", 0.3, 0.2),
            row("org@checkpoint-100", "steer", 0.9, 0.9),
            row("base", "none", 0.0, -0.5),
        ];
        let by = by_checkpoint(&rows);
        assert_eq!(by.keys().copied().collect::<Vec<_>>(), [20, 100]);
        assert_eq!(by[&100].em, Some(0.3));
        assert_eq!(by[&20].logprob_pref, Some(-0.1));
    }
}
