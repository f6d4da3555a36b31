//! The mean of a sample with its Student-t 95% interval.

/// The 97.5% quantiles of Student's t for 1 to 30 degrees of freedom.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// The 97.5% quantile of Student's t with `df` degrees of freedom: the table
/// up to 30, then the Cornish-Fisher expansion around the normal's (within
/// 0.01% there).
pub fn t975(df: u64) -> f64 {
    if (1..=30).contains(&df) {
        return T975[df as usize - 1];
    }
    let (z, df) = (crate::Z95, df as f64);
    let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
    z + (z3 + z) / (4.0 * df)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * df * df)
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * df.powi(3))
}

/// Mean and Student-t 95% interval of `x`; `None` for fewer than 2 values.
pub fn t_interval(x: &[f64]) -> Option<(f64, f64, f64)> {
    if x.len() < 2 {
        return None;
    }
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = t975(x.len() as u64 - 1) * (var / n).sqrt();
    Some((mean, mean - half, mean + half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_the_tables() {
        for (df, t) in [
            (1, 12.706),
            (3, 3.182),
            (31, 2.0395),
            (60, 2.0003),
            (100, 1.9840),
        ] {
            assert!((t975(df) - t).abs() < 1e-3, "df {df}: {} vs {t}", t975(df));
        }
    }

    #[test]
    fn the_interval_is_around_the_mean() {
        let (m, lo, hi) = t_interval(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m, 2.5);
        // sd 1.2910, se 0.6455, t(3) 3.182
        assert!((hi - m - 3.182 * 0.645_497).abs() < 1e-6 && (m - lo - (hi - m)).abs() < 1e-12);
        assert!(t_interval(&[1.0]).is_none());
    }
}
