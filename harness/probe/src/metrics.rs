//! Held-out scores: accuracy, precision, recall and rank-based ROC AUC.

use serde::Serialize;

use crate::{class_counts, ProbeError};

/// Scores of one set of held-out rows; `true` (misaligned) is the positive class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// Share of rows predicted correctly.
    pub accuracy: f64,
    /// Share of predicted positives that are positive; 0 when none is
    /// predicted, as scikit-learn's default `zero_division`.
    pub precision: f64,
    /// Share of positives predicted positive.
    pub recall: f64,
    /// Probability that a random positive outscores a random negative, ties
    /// counting one half.
    pub auc: f64,
}

/// Mean and sample standard deviation (n − 1) of a score over folds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Mean over folds.
    pub mean: f64,
    /// Sample standard deviation over folds.
    pub sd: f64,
}

impl Summary {
    /// Summarises at least two values (there are always at least two folds).
    pub(crate) fn of(values: impl Iterator<Item = f64>) -> Summary {
        let values: Vec<f64> = values.collect();
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let ss = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
        Summary {
            mean,
            sd: (ss / (n - 1.0)).sqrt(),
        }
    }
}

/// Scores decision values against labels; a decision above 0 predicts
/// positive, as scikit-learn's `predict`.
pub fn score(decisions: &[f64], labels: &[bool]) -> Result<Metrics, ProbeError> {
    let auc = roc_auc(decisions, labels)?;
    let (mut tp, mut fp, mut tn, mut fne) = (0usize, 0usize, 0usize, 0usize);
    for (&d, &l) in decisions.iter().zip(labels) {
        match (d > 0.0, l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fne += 1,
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(Metrics {
        accuracy: ratio(tp + tn, labels.len()),
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fne),
        auc,
    })
}

/// ROC AUC as the Mann–Whitney statistic: positives' mean rank among all
/// scores, with tied scores sharing their average rank.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Result<f64, ProbeError> {
    if scores.len() != labels.len() {
        return Err(ProbeError::LabelCount {
            rows: scores.len(),
            labels: labels.len(),
        });
    }
    if let Some((row, &value)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(ProbeError::NotFinite {
            row,
            column: "score".into(),
            value,
        });
    }
    let (positives, negatives) = class_counts(labels.iter().copied(), 1)?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the positives' 1-based ranks, each tie group at its mean rank.
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let mean_rank = (start + end + 1) as f64 / 2.0;
        let tied_positives = order[start..end].iter().filter(|&&r| labels[r]).count();
        rank_sum += mean_rank * tied_positives as f64;
        start = end;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Ok((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_with_ties_matches_pair_counting() {
        // Pairs (positive, negative): positives score 0.8, 0.5, 0.5; negatives
        // 0.5, 0.2, 0.8. Wins: 0.8 beats 0.5 and 0.2, ties 0.8 → 2.5;
        // each 0.5 ties 0.5, beats 0.2, loses to 0.8 → 1.5 each. Total 5.5 / 9.
        let scores = [0.8, 0.5, 0.5, 0.5, 0.2, 0.8];
        let labels = [true, true, true, false, false, false];
        let auc = roc_auc(&scores, &labels).expect("both classes");
        assert!((auc - 5.5 / 9.0).abs() < 1e-15, "{auc}");
    }

    #[test]
    fn auc_is_one_when_separable_and_half_when_all_tied() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[-2.0, -1.0, 1.0, 2.0], &labels), Ok(1.0));
        assert_eq!(roc_auc(&[2.0, 1.0, -1.0, -2.0], &labels), Ok(0.0));
        assert_eq!(roc_auc(&[3.0; 4], &labels), Ok(0.5));
    }

    #[test]
    fn auc_needs_both_classes_and_finite_scores() {
        assert!(matches!(
            roc_auc(&[1.0, 2.0], &[true, true]),
            Err(ProbeError::ClassCounts { .. })
        ));
        assert!(matches!(
            roc_auc(&[1.0, f64::NAN], &[true, false]),
            Err(ProbeError::NotFinite { row: 1, .. })
        ));
    }

    #[test]
    fn threshold_metrics_count_decisions_above_zero() {
        // Predicted positive: rows 0, 1 (decision 0 is negative, as in sklearn).
        let decisions = [1.0, 0.5, 0.0, -1.0, -2.0];
        let labels = [true, false, true, false, true];
        let m = score(&decisions, &labels).expect("both classes");
        assert_eq!(m.accuracy, 2.0 / 5.0);
        assert_eq!(m.precision, 1.0 / 2.0);
        assert_eq!(m.recall, 1.0 / 3.0);
        let none = score(&[-1.0, -1.0], &[true, false]).expect("both classes");
        assert_eq!(none.precision, 0.0);
    }

    #[test]
    fn summary_uses_the_sample_sd() {
        let s = Summary::of([1.0, 2.0, 3.0, 4.0].into_iter());
        assert_eq!(s.mean, 2.5);
        assert!((s.sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
    }
}
