//! RMSNorm of each row, as HF's llama and qwen2 compute it in f32.

use crate::pool::Pool;

/// `out[r] = w * (x[r] / sqrt(mean(x[r]²) + eps))` for each row `r` of
/// `w.len()` values; rows are split over `pool` when there are many.
pub fn rms_norm(pool: &Pool, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    assert!(h > 0 && x.len().is_multiple_of(h), "rows of {h}");
    assert_eq!(out.len(), x.len(), "out is shaped like x");
    // Below this many rows per thread, waking the pool costs more than it saves.
    const MIN_ROWS: usize = 64;
    let out_addr = out.as_mut_ptr() as usize;
    pool.split(x.len() / h, MIN_ROWS, &|rows| {
        // SAFETY: each thread writes only its own rows of `out`.
        let out = unsafe { crate::pool::rows_mut(out_addr, h, rows.clone()) };
        for (xr, or) in x[rows.start * h..rows.end * h]
            .chunks_exact(h)
            .zip(out.chunks_exact_mut(h))
        {
            crate::avx2::rms_row(xr, w, eps, or);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_match_the_formula() {
        let h = 40;
        let x: Vec<f32> = (0..h * 200)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let w: Vec<f32> = (0..h).map(|i| 0.5 + i as f32 / 40.0).collect();
        for threads in [1, 2] {
            let mut out = vec![0.0; x.len()];
            rms_norm(&Pool::new(threads), &x, &w, 1e-5, &mut out);
            for (xr, or) in x.chunks(h).zip(out.chunks(h)) {
                let ms = xr.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / h as f64;
                let r = 1.0 / (ms + 1e-5).sqrt();
                for ((v, g), wi) in xr.iter().zip(or).zip(&w) {
                    let want = (*wi as f64 * *v as f64 * r) as f32;
                    assert!(
                        (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{g} vs {want}"
                    );
                }
            }
        }
    }
}
