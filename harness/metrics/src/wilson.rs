//! Wilson score interval for a binomial proportion.

/// The two-sided 95% normal quantile.
pub const Z95: f64 = 1.959963984540054;

/// Wilson score interval `(low, high)` for `successes` out of `n` at normal
/// quantile `z`; `None` when `n` is 0 or `successes > n`.
///
/// Wilson rather than the normal approximation because EM rates are often
/// near 0, where the normal interval collapses to a point or goes negative.
pub fn wilson(successes: u64, n: u64, z: f64) -> Option<(f64, f64)> {
    if n == 0 || successes > n {
        return None;
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // At p = 0 or 1 the bound is exact in theory but may round just outside [0, 1].
    Some(((center - half).max(0.0), (center + half).min(1.0)))
}

#[cfg(test)]
mod tests {
    use super::{wilson, Z95};

    fn close(got: (f64, f64), want: (f64, f64)) {
        assert!(
            (got.0 - want.0).abs() < 1e-4 && (got.1 - want.1).abs() < 1e-4,
            "got {got:?}, want {want:?}"
        );
    }

    #[test]
    fn known_values() {
        close(wilson(0, 10, Z95).unwrap(), (0.0, 0.2775));
        close(wilson(5, 10, Z95).unwrap(), (0.2366, 0.7634));
        close(wilson(10, 10, Z95).unwrap(), (0.7225, 1.0));
        close(wilson(1, 100, Z95).unwrap(), (0.0018, 0.0545));
    }

    #[test]
    fn bounds_stay_in_unit_interval() {
        let (low, high) = wilson(0, 3, Z95).unwrap();
        assert_eq!(low, 0.0);
        assert!(high <= 1.0);
        let (low, high) = wilson(3, 3, Z95).unwrap();
        assert!(low >= 0.0);
        assert_eq!(high, 1.0);
    }

    #[test]
    fn empty_or_impossible_is_none() {
        assert_eq!(wilson(0, 0, Z95), None);
        assert_eq!(wilson(4, 3, Z95), None);
    }
}
