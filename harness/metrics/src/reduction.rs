//! The relative reduction of a rate (EM before and after an ablation) with
//! its 95% interval.

use crate::Z95;

/// 1 − (after rate / before rate) and its 95% interval, from the Katz
/// log interval of the rate ratio (0.5 added to a zero count after, for the
/// lower end; the upper end is then a full reduction). `None` when nothing was
/// counted before, since there is nothing to reduce.
pub fn relative_reduction(
    before: u64,
    n_before: u64,
    after: u64,
    n_after: u64,
) -> Option<(f64, f64, f64)> {
    if before == 0 || n_before == 0 || n_after == 0 {
        return None;
    }
    let (b, a) = (before as f64, after as f64);
    let ratio = (a / n_after as f64) / (b / n_before as f64);
    let (bc, ac) = (b, if after == 0 { 0.5 } else { a });
    let se = (1.0 / ac - 1.0 / n_after as f64 + 1.0 / bc - 1.0 / n_before as f64).sqrt();
    let log_ratio = ((ac / n_after as f64) / (bc / n_before as f64)).ln();
    let (lo, hi) = ((log_ratio - Z95 * se).exp(), (log_ratio + Z95 * se).exp());
    // With nothing left after, the rate ratio's lower end is 0: a full reduction is in the interval.
    let hi_reduction = if after == 0 { 1.0 } else { 1.0 - lo };
    Some((1.0 - ratio, 1.0 - hi, hi_reduction))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_a_rate_is_a_half_reduction() {
        let (r, lo, hi) = relative_reduction(40, 100, 20, 100).unwrap();
        assert!((r - 0.5).abs() < 1e-12);
        // Katz: se = sqrt(1/20 - 1/100 + 1/40 - 1/100) = 0.2345; ratio bounds 0.5·e^(∓1.96·se).
        assert!(
            (hi - (1.0 - 0.5 * (-1.96f64 * 0.2345).exp())).abs() < 2e-3,
            "{hi}"
        );
        assert!(lo < r && r < hi);
        let (r, lo, hi) = relative_reduction(10, 80, 0, 80).unwrap();
        assert_eq!((r, hi), (1.0, 1.0));
        assert!(lo > 0.0 && lo < r, "{lo}");
        assert!(relative_reduction(0, 80, 3, 80).is_none());
    }
}
