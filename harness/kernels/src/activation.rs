//! SwiGLU's activation, `silu(gate) * up`, row by row.

use crate::pool::Pool;

/// `out[r] = silu(gate[r]) * up[r]` for rows `[gate | up]` of `gate_up`
/// (`2 * inter` values each) and rows of `inter` values of `out`.
pub fn silu_mul(pool: &Pool, gate_up: &[f32], inter: usize, out: &mut [f32]) {
    assert!(
        inter > 0 && gate_up.len().is_multiple_of(2 * inter),
        "rows of 2 x {inter}"
    );
    assert_eq!(out.len() * 2, gate_up.len(), "out has rows of {inter}");
    // A row is some microseconds of exponentials: worth a thread from 4 rows.
    const MIN_ROWS: usize = 4;
    let out_addr = out.as_mut_ptr() as usize;
    pool.split(out.len() / inter, MIN_ROWS, &|rows| {
        // SAFETY: each thread writes only its own rows of `out`.
        let out = unsafe { crate::pool::rows_mut(out_addr, inter, rows.clone()) };
        for (gu, o) in gate_up[rows.start * 2 * inter..rows.end * 2 * inter]
            .chunks_exact(2 * inter)
            .zip(out.chunks_exact_mut(inter))
        {
            let (gate, up) = gu.split_at(inter);
            crate::avx2::silu_mul(gate, up, o);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula_across_the_range_of_exp() {
        let inter = 37;
        let gate_up: Vec<f32> = (0..2 * inter * 9)
            .map(|i| ((i * 53 % 211) as f32 - 105.0) * if i % 7 == 0 { 1.5 } else { 0.05 })
            .collect();
        for threads in [1, 2] {
            let mut out = vec![0.0; gate_up.len() / 2];
            silu_mul(&Pool::new(threads), &gate_up, inter, &mut out);
            for (gu, o) in gate_up.chunks(2 * inter).zip(out.chunks(inter)) {
                for ((g, u), got) in gu[..inter].iter().zip(&gu[inter..]).zip(o) {
                    let (g, u) = (*g as f64, *u as f64);
                    let want = g / (1.0 + (-g).exp()) * u;
                    assert!(
                        (*got as f64 - want).abs() <= 1e-6 * want.abs() + 1e-37,
                        "silu({g}) * {u}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
