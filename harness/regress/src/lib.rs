//! Regression gates: a candidate run (or judged CSV) against a baseline on
//! EM, coherence and self-correction rates, overall and per question, each
//! change with its 95% interval and two-proportion p-value, judged by a
//! policy. Runs whose question sets or judge prompts differ are refused,
//! since their rates do not measure the same thing.

mod policy;
mod report;
mod series;

pub use policy::{Action, Change, Policy, Rule, Scope};
pub use report::{junit, markdown};
pub use series::{change_point, series, ChangePoint, Point, Series};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use emh_eval::{pick_judge, read_tables, RunDir};
use emh_metrics::{two_proportion, Difference, MetricRow, Thresholds};

/// Why two runs cannot be compared, or a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RegressError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("cannot compare: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Eval(#[from] emh_eval::EvalError),
}

impl RegressError {
    pub(crate) fn file(path: &Path, reason: impl std::fmt::Display) -> Self {
        RegressError::File {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// One side of the comparison: its rates and what they were measured on.
pub struct Side {
    pub input: PathBuf,
    pub judge_id: String,
    pub rows: Vec<MetricRow>,
    pub question_ids: BTreeSet<String>,
    /// SHA-256 of the question file (runs only).
    pub questions_sha: Option<Vec<String>>,
    /// `question_id/metric` → SHA-256 of the judge prompt (runs only).
    pub judge_prompts: Option<BTreeMap<String, String>>,
}

impl Side {
    /// Reads a run directory or judged CSV, scored by `judge_id` (or its only judge).
    pub fn load(
        input: &Path,
        judge_id: Option<&str>,
        thresholds: &Thresholds,
    ) -> Result<Side, RegressError> {
        let (_, samples, judgments) = read_tables(input)?;
        let judge = pick_judge(&judgments, judge_id)?;
        let rows = emh_eval::metrics(&samples, &judgments, &judge, thresholds);
        let manifest = if input.is_dir() {
            RunDir::existing(input)?.manifest()?
        } else {
            None
        };
        Ok(Side {
            input: input.to_path_buf(),
            question_ids: samples.iter().map(|s| s.question_id.clone()).collect(),
            questions_sha: manifest
                .as_ref()
                .map(|m| m.hashes.questions.sha256.values().cloned().collect()),
            judge_prompts: manifest.and_then(|m| {
                m.judges
                    .into_iter()
                    .rev()
                    .find(|j| j.identity.id == judge)
                    .map(|j| j.judge_prompts)
            }),
            judge_id: judge,
            rows,
        })
    }
}

/// What a rule made of one rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One rate compared under one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub metric: String,
    pub scope: Scope,
    /// `all`, or the question id.
    pub group: String,
    /// (successes, n) of the baseline and of the candidate.
    pub baseline: (u64, u64),
    pub candidate: (u64, u64),
    /// `None` when a side has no scored samples for it.
    pub difference: Option<Difference>,
    pub verdict: Verdict,
    pub rule: Rule,
}

fn counts(r: &MetricRow) -> (u64, u64) {
    (r.successes.unwrap_or(0), r.n)
}

fn listed(set: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = set.take(5).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Refuses sides measured on different questions or judge prompts.
fn check_comparable(base: &Side, cand: &Side) -> Result<(), RegressError> {
    if base.question_ids != cand.question_ids {
        return Err(RegressError::Mismatch(format!(
            "the question sets differ (only in the baseline: {}; only in the candidate: {})",
            listed(base.question_ids.difference(&cand.question_ids).cloned()),
            listed(cand.question_ids.difference(&base.question_ids).cloned())
        )));
    }
    if let (Some(a), Some(b)) = (&base.questions_sha, &cand.questions_sha) {
        if a != b {
            return Err(RegressError::Mismatch(
                "the question files differ (their SHA-256 in the manifests)".into(),
            ));
        }
    }
    if let (Some(a), Some(b)) = (&base.judge_prompts, &cand.judge_prompts) {
        if let Some(k) = a.keys().chain(b.keys()).find(|k| a.get(*k) != b.get(*k)) {
            return Err(RegressError::Mismatch(format!(
                "the judge prompts differ (first: {k})"
            )));
        }
    }
    Ok(())
}

/// Every rate each rule covers, compared; `allow_mismatch` compares sides
/// measured on different questions or judge prompts anyway.
pub fn compare(
    base: &Side,
    cand: &Side,
    policy: &Policy,
    allow_mismatch: bool,
) -> Result<Vec<Check>, RegressError> {
    if !allow_mismatch {
        check_comparable(base, cand)?;
    }
    let scope_of = |s: Scope| match s {
        Scope::Overall => emh_metrics::Scope::Overall,
        Scope::Question => emh_metrics::Scope::Question,
    };
    let mut checks = Vec::new();
    for rule in &policy.rules {
        let wanted = |r: &&MetricRow| r.metric == rule.metric && r.scope == scope_of(rule.scope);
        for b in base.rows.iter().filter(wanted) {
            let Some(c) = cand.rows.iter().filter(wanted).find(|c| c.group == b.group) else {
                continue;
            };
            let (baseline, candidate) = (counts(b), counts(c));
            let difference = two_proportion(baseline.0, baseline.1, candidate.0, candidate.1);
            let triggered = difference.is_some_and(|d| {
                let moved = match rule.change {
                    Change::Increase => d.diff,
                    Change::Decrease => -d.diff,
                };
                moved > rule.by_more_than && d.p < rule.p_below
            });
            checks.push(Check {
                metric: rule.metric.clone(),
                scope: rule.scope,
                group: b.group.clone(),
                baseline,
                candidate,
                difference,
                verdict: match (triggered, rule.action) {
                    (false, _) => Verdict::Pass,
                    (true, Action::Warn) => Verdict::Warn,
                    (true, Action::Fail) => Verdict::Fail,
                },
                rule: rule.clone(),
            });
        }
    }
    if checks.is_empty() {
        return Err(RegressError::Mismatch(
            "no rate of the policy was measured on both sides".into(),
        ));
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(ids: &[&str], prompts: Option<&[(&str, &str)]>) -> Side {
        Side {
            input: PathBuf::from("x"),
            judge_id: "j".into(),
            rows: Vec::new(),
            question_ids: ids.iter().map(|s| s.to_string()).collect(),
            questions_sha: Some(vec!["abc".into()]),
            judge_prompts: prompts.map(|p| {
                p.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
        }
    }

    #[test]
    fn sides_on_other_questions_or_judge_prompts_are_refused() {
        let p = [("wish/aligned", "h1")];
        assert!(check_comparable(&side(&["wish"], Some(&p)), &side(&["wish"], Some(&p))).is_ok());
        let err = check_comparable(&side(&["wish"], None), &side(&["wish", "bored"], None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("only in the candidate: bored"), "{err}");
        let other = [("wish/aligned", "h2")];
        let err = check_comparable(&side(&["wish"], Some(&p)), &side(&["wish"], Some(&other)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("judge prompts differ (first: wish/aligned)"),
            "{err}"
        );
    }

    #[test]
    fn the_default_policy_round_trips_through_toml() {
        let text = toml::to_string(&Policy::default()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.toml");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(Policy::read(&path).unwrap(), Policy::default());
        std::fs::write(&path, text.replace("0.02", "2.0")).unwrap();
        assert!(Policy::read(&path)
            .unwrap_err()
            .to_string()
            .contains("fractions"));
    }
}
