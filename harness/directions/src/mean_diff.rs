//! Difference-of-means directions, and how well they separate held-out rows.

use std::collections::BTreeMap;

use emh_runtime::{derive_seed, normal_values};

use crate::{Acts, DirectionError, DirectionSet};

/// How to form the means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanDiffOptions {
    /// Subsample the larger side to the smaller's count, with this seed.
    pub balance: Option<u64>,
    /// The fraction of ids held out of the means, to measure separation on.
    pub holdout: f64,
    /// Seed of the held-out split (by question: both answers of a pair, and
    /// every sample of a run's question, fall together).
    pub split_seed: u64,
    /// Random directions per layer to compare the held-out separation with.
    pub random_controls: usize,
}

impl Default for MeanDiffOptions {
    fn default() -> Self {
        MeanDiffOptions {
            balance: None,
            holdout: 0.0,
            split_seed: 0,
            random_controls: 20,
        }
    }
}

/// A direction's separation of held-out rows at one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerAuc {
    pub layer: usize,
    /// ROC AUC of the projections: positive rows above negative ones.
    pub auc: f64,
    /// Mean and largest AUC of the random directions (each counted in its
    /// better orientation, max(AUC, 1 − AUC), so the control is not weakened
    /// by sign); NaN without random directions.
    pub random_mean: f64,
    pub random_max: f64,
}

/// What `mean_diff` made.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanDiff {
    pub set: DirectionSet,
    /// Rows of each side the means are over.
    pub used: (usize, usize),
    /// Rows of each side held out.
    pub held: (usize, usize),
    /// Separation of the held-out rows per layer (empty without a holdout).
    pub heldout: Vec<LayerAuc>,
}

/// Whether `id` falls in the held-out fraction under `seed`. Run captures
/// name rows `QUESTION/PARAPHRASE/SAMPLE`: the question decides, so no
/// question is on both sides of the split (a pair's id is its own question).
fn held_out(id: &str, fraction: f64, seed: u64) -> bool {
    let question = id.split('/').next().unwrap_or(id);
    let h = question
        .bytes()
        .fold(seed, |h, b| derive_seed(h, u64::from(b), 0));
    fraction > 0.0 && (h >> 11) as f64 / (1u64 << 53) as f64 <= fraction
}

/// Keeps `k` of `rows`, picked by the seed; order kept.
fn subsample(rows: &[usize], k: usize, seed: u64) -> Vec<usize> {
    let mut keyed: Vec<(u64, usize)> = rows
        .iter()
        .map(|&r| (derive_seed(seed, r as u64, 1), r))
        .collect();
    keyed.sort_unstable();
    let mut kept: Vec<usize> = keyed.into_iter().take(k).map(|(_, r)| r).collect();
    kept.sort_unstable();
    kept
}

/// ROC AUC: the chance a positive score is above a negative one (ties half).
pub fn auc(pos: &[f64], neg: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = pos
        .iter()
        .map(|&s| (s, true))
        .chain(neg.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann-Whitney U from average ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let j = (i..all.len())
            .find(|&j| all[j].0 != all[i].0)
            .unwrap_or(all.len());
        let avg = (i + j + 1) as f64 / 2.0;
        rank_sum += avg * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (p, n) = (pos.len() as f64, neg.len() as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
}

fn project(acts: &Acts, l: usize, rows: &[usize], d: &[f32]) -> Vec<f64> {
    rows.iter()
        .map(|&i| {
            acts.row(l, i)
                .iter()
                .zip(d)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum()
        })
        .collect()
}

/// Per layer, the AUC of `set`'s direction on the given rows, beside
/// `controls` random directions drawn from `seed`.
pub fn heldout(
    set: &DirectionSet,
    pos: &Acts,
    pos_rows: &[usize],
    neg: &Acts,
    neg_rows: &[usize],
    controls: usize,
    seed: u64,
) -> Vec<LayerAuc> {
    (0..set.layers().min(pos.layers.len()))
        .map(|l| {
            let dir = &set.directions[l];
            let a = auc(
                &project(pos, l, pos_rows, dir),
                &project(neg, l, neg_rows, dir),
            );
            let randoms: Vec<f64> = (0..controls)
                .map(|k| {
                    let r =
                        normal_values(seed, &format!("random-direction.{l}.{k}"), dir.len(), 1.0);
                    let a = auc(
                        &project(pos, l, pos_rows, &r),
                        &project(neg, l, neg_rows, &r),
                    );
                    a.max(1.0 - a)
                })
                .collect();
            LayerAuc {
                layer: l,
                auc: a,
                random_mean: randoms.iter().sum::<f64>() / randoms.len() as f64,
                random_max: randoms.iter().copied().fold(f64::NAN, f64::max),
            }
        })
        .collect()
}

/// Per layer, mean(positive) − mean(negative).
pub fn mean_diff(
    pos: &Acts,
    neg: &Acts,
    options: MeanDiffOptions,
) -> Result<MeanDiff, DirectionError> {
    if pos.layers.len() != neg.layers.len() || pos.hidden != neg.hidden {
        return Err(DirectionError::Mismatch(format!(
            "the positive capture has {} layers of width {}, the negative {} of width {}",
            pos.layers.len(),
            pos.hidden,
            neg.layers.len(),
            neg.hidden
        )));
    }
    let id = |a: &Acts, i: usize| a.ids.get(i).cloned().unwrap_or_else(|| i.to_string());
    let split = |a: &Acts| -> (Vec<usize>, Vec<usize>) {
        (0..a.len()).partition(|&i| !held_out(&id(a, i), options.holdout, options.split_seed))
    };
    let (mut p_rows, p_held) = split(pos);
    let (mut n_rows, n_held) = split(neg);
    if p_rows.is_empty() || n_rows.is_empty() {
        return Err(DirectionError::Mismatch(format!(
            "after holding out {:.0}%, {} positive and {} negative rows are left: both need some",
            options.holdout * 100.0,
            p_rows.len(),
            n_rows.len()
        )));
    }
    if let Some(seed) = options.balance {
        let k = p_rows.len().min(n_rows.len());
        p_rows = subsample(&p_rows, k, seed);
        n_rows = subsample(&n_rows, k, seed.wrapping_add(1));
    }
    let directions: Vec<Vec<f32>> = (0..pos.layers.len())
        .map(|l| {
            pos.mean(l, &p_rows)
                .iter()
                .zip(neg.mean(l, &n_rows))
                .map(|(a, b)| (a - b) as f32)
                .collect()
        })
        .collect();
    let mut metadata = BTreeMap::from([
        ("method".to_string(), "mean-diff".to_string()),
        ("site".to_string(), "resid_post".to_string()),
        ("positive_rows".to_string(), p_rows.len().to_string()),
        ("negative_rows".to_string(), n_rows.len().to_string()),
        ("holdout".to_string(), options.holdout.to_string()),
        ("split_seed".to_string(), options.split_seed.to_string()),
    ]);
    if let Some(seed) = options.balance {
        metadata.insert("balance_seed".into(), seed.to_string());
    }
    let set = DirectionSet {
        directions,
        metadata,
    };
    let heldout = if p_held.is_empty() || n_held.is_empty() {
        Vec::new()
    } else {
        heldout(
            &set,
            pos,
            &p_held,
            neg,
            &n_held,
            options.random_controls,
            options.split_seed,
        )
    };
    Ok(MeanDiff {
        used: (p_rows.len(), n_rows.len()),
        held: (p_held.len(), n_held.len()),
        set,
        heldout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acts(ids: &[&str], rows: &[[f32; 2]]) -> Acts {
        Acts {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            hidden: 2,
            layers: vec![rows.iter().flatten().copied().collect()],
        }
    }

    #[test]
    fn auc_counts_pairs_and_ties() {
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auc(&[1.0], &[1.0]), 0.5);
        assert_eq!(auc(&[2.0, 0.0], &[1.0, 1.0]), 0.5);
    }

    #[test]
    fn the_direction_is_the_difference_of_means() {
        let pos = acts(&["a", "b"], &[[3.0, 1.0], [5.0, 1.0]]);
        let neg = acts(&["a", "b", "c"], &[[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]);
        let d = mean_diff(&pos, &neg, MeanDiffOptions::default()).unwrap();
        assert_eq!(d.set.directions, vec![vec![3.0, 0.0]]);
        assert_eq!(d.used, (2, 3));
        // Balanced: two of the three negatives, picked by the seed.
        let b = mean_diff(
            &pos,
            &neg,
            MeanDiffOptions {
                balance: Some(7),
                ..MeanDiffOptions::default()
            },
        )
        .unwrap();
        assert_eq!(b.used, (2, 2));
        assert_eq!(
            b,
            mean_diff(
                &pos,
                &neg,
                MeanDiffOptions {
                    balance: Some(7),
                    ..MeanDiffOptions::default()
                }
            )
            .unwrap()
        );
    }

    #[test]
    fn a_holdout_keeps_pairs_together_and_measures_separation() {
        let ids: Vec<String> = (0..40).map(|i| format!("q{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let pos: Vec<[f32; 2]> = (0..40).map(|i| [1.0 + (i % 3) as f32, i as f32]).collect();
        let neg: Vec<[f32; 2]> = (0..40).map(|i| [-1.0 - (i % 3) as f32, i as f32]).collect();
        let options = MeanDiffOptions {
            holdout: 0.3,
            split_seed: 1,
            ..MeanDiffOptions::default()
        };
        let d = mean_diff(&acts(&ids, &pos), &acts(&ids, &neg), options).unwrap();
        assert_eq!(
            d.held.0, d.held.1,
            "both sides of a pair are held out together"
        );
        assert!(d.held.0 > 3 && d.held.0 < 25, "{:?}", d.held);
        assert_eq!(d.heldout.len(), 1);
        assert_eq!(d.heldout[0].auc, 1.0);
        assert!(d.heldout[0].random_mean < 1.0);
    }
}
