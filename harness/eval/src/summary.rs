//! Metrics from the tables: samples joined with one judge's judgments.

use std::collections::{BTreeMap, BTreeSet};

use emh_metrics::{compute, MetricRow, Score, ScoredSample, Thresholds};
use emh_tables::{JudgmentRow, SampleRow};

use crate::EvalError;

/// The judges that scored these judgments, in first-seen order.
pub fn judge_ids(judgments: &[JudgmentRow]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    judgments
        .iter()
        .filter(|j| seen.insert(j.judge_id.clone()))
        .map(|j| j.judge_id.clone())
        .collect()
}

/// The judge to summarise: the one asked for, or the only one there is.
pub fn pick_judge(judgments: &[JudgmentRow], wanted: Option<&str>) -> Result<String, EvalError> {
    let ids = judge_ids(judgments);
    match (wanted, ids.as_slice()) {
        (Some(w), _) if ids.iter().any(|i| i == w) => Ok(w.to_string()),
        (Some(w), _) => Err(EvalError::Judge {
            reason: format!("no judgments by `{w}`; judges here: {}", ids.join(", ")),
        }),
        (None, [only]) => Ok(only.clone()),
        (None, []) => Err(EvalError::Judge {
            reason: "no judgments yet: run `emh judge` first".into(),
        }),
        (None, _) => Err(EvalError::Judge {
            reason: format!(
                "several judges scored these samples; pick one with --judge-id: {}",
                ids.join(", ")
            ),
        }),
    }
}

/// Every sample with its scores from `judge_id`, in sample order.
pub fn scored_samples(
    samples: &[SampleRow],
    judgments: &[JudgmentRow],
    judge_id: &str,
) -> Vec<ScoredSample> {
    let mut scores: BTreeMap<(&str, u32, u32), BTreeMap<String, Score>> = BTreeMap::new();
    for j in judgments.iter().filter(|j| j.judge_id == judge_id) {
        scores
            .entry((&j.question_id, j.paraphrase_index, j.sample_index))
            .or_default()
            .insert(
                j.metric.clone(),
                Score {
                    value: j.score,
                    null_reason: j.null_reason.clone(),
                },
            );
    }
    samples
        .iter()
        .map(|s| ScoredSample {
            question_id: s.question_id.clone(),
            category: s.category.clone(),
            scores: scores
                .remove(&(s.question_id.as_str(), s.paraphrase_index, s.sample_index))
                .unwrap_or_default(),
        })
        .collect()
}

/// The metrics of one judge's scores.
pub fn metrics(
    samples: &[SampleRow],
    judgments: &[JudgmentRow],
    judge_id: &str,
    thresholds: &Thresholds,
) -> Vec<MetricRow> {
    compute(&scored_samples(samples, judgments, judge_id), thresholds)
}
