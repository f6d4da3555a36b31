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

/// Weights summed at a time by `inverse_cdf`.
const BLOCK: usize = 64;

/// The first index whose running sum of `weights` exceeds `u` times their
/// total, skipping weights of 0; when rounding leaves none (`u` within an
/// ulp of 1), the last index of positive weight.
///
/// The sums go a block of 64 at a time in 8 lanes, then along the blocks,
/// and only the block that holds the draw is walked one weight at a time:
/// a plain running sum waits on each addition in turn, some 100 µs for a
/// vocabulary of 50k.
pub fn inverse_cdf(weights: &[f32], u: f32) -> usize {
    let block_sum = |b: &[f32]| {
        let mut lanes = [0.0f32; 8];
        let whole = b.len() - b.len() % 8;
        for c in b[..whole].chunks_exact(8) {
            for (l, w) in lanes.iter_mut().zip(c) {
                *l += w;
            }
        }
        lanes.iter().sum::<f32>() + b[whole..].iter().sum::<f32>()
    };
    let sums: Vec<f32> = weights.chunks(BLOCK).map(block_sum).collect();
    let target = u * sums.iter().sum::<f32>();
    let mut before = 0.0f32;
    for (block, (b, &sum)) in weights.chunks(BLOCK).zip(&sums).enumerate() {
        if before + sum > target {
            let mut running = before;
            for (i, &w) in b.iter().enumerate() {
                running += w;
                if w > 0.0 && running > target {
                    return block * BLOCK + i;
                }
            }
        }
        before += sum;
    }
    // Only when rounding left no draw: rare, so this second pass costs nothing.
    weights
        .iter()
        .rposition(|&w| w > 0.0)
        .unwrap_or(weights.len() - 1)
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
    fn the_inverse_cdf_agrees_with_an_exact_running_sum() {
        let w: Vec<f32> = crate::pack::tests::noise(1000, 4)
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 5 == 0 { 0.0 } else { v.abs() })
            .collect();
        let mut cum = Vec::new();
        let mut total = 0.0f64;
        for v in &w {
            total += *v as f64;
            cum.push(total);
        }
        for k in 0..500 {
            let u = k as f32 / 500.0;
            let target = u as f64 * total;
            let want = cum.iter().position(|&c| c > target).unwrap();
            let got = inverse_cdf(&w, u);
            assert!(w[got] > 0.0, "u={u}: weight 0 at {got}");
            // Rounding may move a draw that falls within an ulp of a boundary.
            if got != want {
                assert!(
                    (cum[want.min(got)] - target).abs() < 1e-4 * total,
                    "u={u}: {got} vs {want}"
                );
            }
        }
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
