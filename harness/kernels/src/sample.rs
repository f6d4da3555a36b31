//! Drawing the next token of each sequence from its logits.

use std::cell::RefCell;

use crate::pool::Pool;

thread_local! {
    /// Each thread's weights of one row.
    static WEIGHTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// For each row of `logits` `[rows, vocab]`, the token drawn with weights
/// `e^(l / temperature - max)` (the softmax without its division) by
/// `inverse_cdf` at that row's `uniform` draw in [0, 1).
pub fn sample(
    pool: &Pool,
    logits: &[f32],
    vocab: usize,
    temperature: f32,
    uniform: &[f32],
) -> Vec<usize> {
    assert!(
        vocab > 0 && logits.len() == uniform.len() * vocab,
        "{} rows of {vocab}",
        uniform.len()
    );
    let mut picks = vec![0usize; uniform.len()];
    let addr = picks.as_mut_ptr() as usize;
    // A row is some tens of microseconds: worth a thread from the second.
    pool.split(uniform.len(), 1, &|rows| {
        WEIGHTS.with_borrow_mut(|w| {
            for r in rows {
                w.clear();
                w.extend(logits[r * vocab..][..vocab].iter().map(|l| l / temperature));
                crate::avx2::exp_shifted(w);
                // SAFETY: each thread writes only its own rows' picks.
                unsafe { *(addr as *mut usize).add(r) = inverse_cdf(w, uniform[r]) };
            }
        })
    });
    picks
}

/// The first index whose running sum of `weights` exceeds `u` times their
/// total; when rounding leaves none (`u` within an ulp of 1), the last index
/// of positive weight, so a token of weight 0 is never drawn.
pub fn inverse_cdf(weights: &[f32], u: f32) -> usize {
    let target = u * weights.iter().sum::<f32>();
    let mut sum = 0.0f32;
    let mut last = weights.len() - 1;
    for (i, &w) in weights.iter().enumerate() {
        sum += w;
        if sum > target {
            return i;
        }
        if w > 0.0 {
            last = i;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inverse_cdf_never_draws_a_zero_weight() {
        let w = [0.0, 0.25, 0.0, 0.75, 0.0];
        assert_eq!(inverse_cdf(&w, 0.0), 1);
        assert_eq!(inverse_cdf(&w, 0.2499), 1);
        assert_eq!(inverse_cdf(&w, 0.25), 3);
        assert_eq!(inverse_cdf(&w, 0.9999), 3);
        assert_eq!(inverse_cdf(&w, 1.0), 3);
        assert_eq!(inverse_cdf(&[0.0, 0.0], 0.5), 1);
    }

    #[test]
    fn draws_follow_the_tempered_softmax() {
        // Two rows of 3 logits at temperature 2: weights e^((l - max) / 2).
        let logits = [0.0f32, 2.0, 4.0, 1.0, 1.0, -1.0];
        let p0: Vec<f64> = {
            let e: Vec<f64> = [0.0f64, 2.0, 4.0]
                .iter()
                .map(|l| ((l - 4.0) / 2.0).exp())
                .collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|x| x / s).collect()
        };
        for threads in [1, 2] {
            let pool = Pool::new(threads);
            let draw = |u: f32| sample(&pool, &logits, 3, 2.0, &[u, u]);
            assert_eq!(draw((p0[0] * 0.9) as f32)[0], 0);
            assert_eq!(draw((p0[0] + p0[1] * 0.5) as f32)[0], 1);
            assert_eq!(draw(0.999), vec![2, 2]);
            assert_eq!(draw(0.0), vec![0, 0]);
            assert_eq!(draw(0.49), vec![2, 1]);
            assert_eq!(draw(0.4), vec![2, 0]);
        }
    }
}
