//! How well two judges agree on the same samples.

use serde::{Deserialize, Serialize};

use crate::sample::{is_em, metric_names, ScoredSample, Thresholds};

/// Pearson correlation of paired values; `None` when the lengths differ,
/// there are fewer than 2 pairs, or either side has zero variance.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

/// Spearman rank correlation: Pearson on ranks, tied values sharing their
/// mean rank.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    pearson(&ranks(x), &ranks(y))
}

/// 1-based ranks of `values`, each run of ties given the mean of its ranks.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut out = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1..=end; their mean:
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            out[i] = rank;
        }
        start = end;
    }
    out
}

/// 2×2 table of two judges' EM classifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Both judges call it EM.
    pub both_em: u64,
    /// Only judge A calls it EM.
    pub only_a: u64,
    /// Only judge B calls it EM.
    pub only_b: u64,
    /// Neither judge calls it EM.
    pub neither: u64,
}

impl Confusion {
    /// Samples in the table.
    pub fn total(&self) -> u64 {
        self.both_em + self.only_a + self.only_b + self.neither
    }

    /// Share of samples the judges classify the same; `None` when empty.
    pub fn accuracy(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| (self.both_em + self.neither) as f64 / total as f64)
    }

    /// Cohen's κ: agreement beyond what the judges' EM rates give by chance;
    /// `None` when empty or when chance agreement is already 1.
    pub fn kappa(&self) -> Option<f64> {
        let observed = self.accuracy()?;
        let total = self.total() as f64;
        let a_em = (self.both_em + self.only_a) as f64 / total;
        let b_em = (self.both_em + self.only_b) as f64 / total;
        let expected = a_em * b_em + (1.0 - a_em) * (1.0 - b_em);
        (expected < 1.0).then(|| (observed - expected) / (1.0 - expected))
    }
}

/// Agreement of two judges on one metric, over samples both scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricAgreement {
    /// Metric name.
    pub metric: String,
    /// Samples where both judges gave a non-null score.
    pub n: u64,
    /// Pearson correlation of the two judges' scores.
    pub pearson: Option<f64>,
    /// Spearman correlation of the two judges' scores.
    pub spearman: Option<f64>,
    /// Mean of |A − B|; `None` when `n` is 0.
    pub mean_abs_diff: Option<f64>,
}

/// Agreement of two judges over the same samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Per metric, aligned and coherent first, then the rest alphabetically.
    pub per_metric: Vec<MetricAgreement>,
    /// EM classifications of A against B.
    pub em: Confusion,
    /// Samples both judges could classify as EM or not.
    pub em_n: u64,
}

/// Agreement between judge A's scores `a` and judge B's scores `b`, where
/// `a[i]` and `b[i]` are the same sample (extra samples on either side are
/// ignored). Each metric uses the samples where both scores are non-null;
/// the EM table uses those where both judges' `is_em` is known.
pub fn agreement(a: &[ScoredSample], b: &[ScoredSample], t: &Thresholds) -> Agreement {
    let per_metric = metric_names(a.iter().chain(b))
        .into_iter()
        .map(|metric| {
            let (x, y): (Vec<f64>, Vec<f64>) = a
                .iter()
                .zip(b)
                .filter_map(|(sa, sb)| Some((sa.value(&metric)?, sb.value(&metric)?)))
                .unzip();
            let n = x.len();
            let abs_diff: f64 = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).sum();
            MetricAgreement {
                n: n as u64,
                pearson: pearson(&x, &y),
                spearman: spearman(&x, &y),
                mean_abs_diff: (n > 0).then(|| abs_diff / n as f64),
                metric,
            }
        })
        .collect();

    let mut em = Confusion::default();
    for (sa, sb) in a.iter().zip(b) {
        match (is_em(sa, t), is_em(sb, t)) {
            (Some(true), Some(true)) => em.both_em += 1,
            (Some(true), Some(false)) => em.only_a += 1,
            (Some(false), Some(true)) => em.only_b += 1,
            (Some(false), Some(false)) => em.neither += 1,
            _ => {}
        }
    }
    Agreement {
        per_metric,
        em_n: em.total(),
        em,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::tests::{sample, with_null};

    fn close(got: Option<f64>, want: f64) {
        let got = got.expect("a value");
        assert!((got - want).abs() < 1e-9, "got {got}, want {want}");
    }

    #[test]
    fn pearson_by_hand() {
        // mean x 2, mean y 3; Σdxdy = 4, Σdx² = 2, Σdy² = 8 → 4/√16 = 1.
        close(pearson(&[1.0, 2.0, 3.0], &[1.0, 3.0, 5.0]), 1.0);
        close(pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        // mean x 2.5, mean y 2.5; dx = (-1.5,-0.5,0.5,1.5), dy = (-0.5,-1.5,1.5,0.5):
        // Σdxdy = 0.75+0.75+0.75+0.75 = 3, Σdx² = Σdy² = 5 → 0.6.
        close(pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 1.0, 4.0, 3.0]), 0.6);
    }

    #[test]
    fn pearson_degenerate_is_none() {
        assert_eq!(pearson(&[1.0], &[2.0]), None);
        assert_eq!(pearson(&[1.0, 1.0], &[2.0, 3.0]), None);
        assert_eq!(pearson(&[1.0, 2.0], &[2.0, 3.0, 4.0]), None);
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 30.0]), [1.5, 3.0, 1.5, 4.0]);
        assert_eq!(ranks(&[5.0, 5.0, 5.0]), [2.0, 2.0, 2.0]);
    }

    #[test]
    fn spearman_by_hand() {
        // Monotone but not linear: ranks agree exactly, values do not.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [1.0, 4.0, 9.0, 16.0, 100.0];
        close(spearman(&x, &y), 1.0);
        assert!(pearson(&x, &y).unwrap() < 0.99);
        // Ties: x ranks (1, 2.5, 2.5, 4), y ranks (1, 2, 3, 4).
        // dx = (-1.5, 0, 0, 1.5), dy = (-1.5, -0.5, 0.5, 1.5):
        // Σdxdy = 4.5, Σdx² = 4.5, Σdy² = 5 → 4.5/√22.5 = √0.9.
        close(
            spearman(&[1.0, 2.0, 2.0, 3.0], &[10.0, 20.0, 30.0, 40.0]),
            0.9f64.sqrt(),
        );
    }

    #[test]
    fn kappa_textbook() {
        let c = Confusion {
            both_em: 20,
            only_a: 5,
            only_b: 10,
            neither: 15,
        };
        assert_eq!(c.total(), 50);
        close(c.accuracy(), 0.7);
        close(c.kappa(), 0.4);
    }

    #[test]
    fn kappa_degenerate_is_none() {
        assert_eq!(Confusion::default().kappa(), None);
        assert_eq!(Confusion::default().accuracy(), None);
        let all_agree_never_em = Confusion {
            neither: 7,
            ..Confusion::default()
        };
        assert_eq!(all_agree_never_em.kappa(), None);
        close(all_agree_never_em.accuracy(), 1.0);
    }

    #[test]
    fn agreement_pairs_only_non_null() {
        let s = |a: f64, c: f64| sample("q", "c", &[("aligned", a), ("coherent", c)]);
        let judge_a = vec![
            s(10.0, 80.0),
            s(20.0, 90.0),
            s(90.0, 90.0),
            with_null(s(0.0, 70.0), "aligned", "REFUSAL"),
            s(50.0, 60.0),
        ];
        let judge_b = vec![
            s(20.0, 70.0),
            s(60.0, 80.0),
            s(80.0, 95.0),
            s(30.0, 70.0),
            with_null(s(0.0, 40.0), "aligned", "CODE"),
        ];
        let r = agreement(&judge_a, &judge_b, &Thresholds::default());

        let aligned = &r.per_metric[0];
        assert_eq!((aligned.metric.as_str(), aligned.n), ("aligned", 3));
        // Pairs (10, 20), (20, 60), (90, 80).
        close(aligned.mean_abs_diff, (10.0 + 40.0 + 10.0) / 3.0);
        close(
            aligned.pearson,
            pearson(&[10.0, 20.0, 90.0], &[20.0, 60.0, 80.0]).unwrap(),
        );
        close(aligned.spearman, 1.0);

        let coherent = &r.per_metric[1];
        assert_eq!((coherent.metric.as_str(), coherent.n), ("coherent", 5));
        close(
            coherent.mean_abs_diff,
            (10.0 + 10.0 + 5.0 + 0.0 + 20.0) / 5.0,
        );
        assert_eq!(r.per_metric.len(), 2);

        // Samples 4 and 5 have a null aligned on one side.
        assert_eq!(
            r.em,
            Confusion {
                both_em: 1,
                only_a: 1,
                only_b: 0,
                neither: 1
            }
        );
        assert_eq!(r.em_n, 3);
    }

    #[test]
    fn metric_only_one_judge_scored_has_no_pairs() {
        let a = [sample("q", "c", &[("medical", 40.0)])];
        let b = [sample("q", "c", &[("aligned", 40.0)])];
        let r = agreement(&a, &b, &Thresholds::default());
        let names: Vec<_> = r
            .per_metric
            .iter()
            .map(|m| (m.metric.as_str(), m.n))
            .collect();
        assert_eq!(names, [("aligned", 0), ("medical", 0)]);
        assert_eq!(r.per_metric[0].mean_abs_diff, None);
        assert_eq!(r.em_n, 0);
    }
}
