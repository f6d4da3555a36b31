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

/// The scores of the samples both sides have (matched by question,
/// paraphrase and sample index), side A's by `id_a`, side B's by `id_b`,
/// in A's order: what judge agreement compares.
pub fn paired_scores(
    (samples_a, judgments_a, id_a): (&[SampleRow], &[JudgmentRow], &str),
    (samples_b, judgments_b, id_b): (&[SampleRow], &[JudgmentRow], &str),
) -> (Vec<ScoredSample>, Vec<ScoredSample>) {
    let key = |s: &SampleRow| (s.question_id.clone(), s.paraphrase_index, s.sample_index);
    let in_b: BTreeMap<_, usize> = samples_b
        .iter()
        .enumerate()
        .map(|(i, s)| (key(s), i))
        .collect();
    let scored_a = scored_samples(samples_a, judgments_a, id_a);
    let scored_b = scored_samples(samples_b, judgments_b, id_b);
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    for (i, s) in samples_a.iter().enumerate() {
        if let Some(&j) = in_b.get(&key(s)) {
            pa.push(scored_a[i].clone());
            pb.push(scored_b[j].clone());
        }
    }
    (pa, pb)
}

/// Samples and judgments of a run directory, or of a judged CSV (its score
/// columns as judge `csv:<file stem>`), with the run's (or file's) name.
pub fn read_tables(
    input: &std::path::Path,
) -> Result<(String, Vec<SampleRow>, Vec<JudgmentRow>), EvalError> {
    if input.is_dir() {
        let run = crate::RunDir::existing(input)?;
        let samples = run
            .samples()?
            .ok_or_else(|| EvalError::io(input, "sampling has not finished"))?;
        let name = run
            .manifest()?
            .map(|m| m.spec.condition.name)
            .unwrap_or_default();
        return Ok((name, samples, run.judgments()?));
    }
    let name = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let csv = emh_tables::read_reference_csv(
        input,
        &name,
        &format!("csv:{name}"),
        emh_questions::category_of,
    )?;
    // The rates (EM above all) need both; without one they would be empty, not wrong-looking.
    if let Some(m) = ["aligned", "coherent"]
        .iter()
        .find(|m| !csv.metrics.iter().any(|c| c == *m))
    {
        return Err(EvalError::io(
            input,
            format!(
                "no `{m}` column: the EM rate needs `aligned` and `coherent` (metric columns here: {})",
                if csv.metrics.is_empty() { "none".to_string() } else { csv.metrics.join(", ") }
            ),
        ));
    }
    Ok((name, csv.samples, csv.judgments))
}
