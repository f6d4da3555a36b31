//! Two rates compared: the difference, its 95% interval and a two-sided p-value.

use crate::{wilson, Z95};

/// Rate B − rate A with Newcombe's 95% interval (from the two Wilson
/// intervals, so it stays sensible at 0% and 100%, where Wald's collapses),
/// and the pooled two-proportion z-test's two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    pub diff: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub p: f64,
}

/// The standard normal CDF (erfc by the Numerical Recipes Chebyshev fit,
/// relative error below 1.2e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let erfc = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - erfc / 2.0
    } else {
        erfc / 2.0
    }
}

/// Compares `x_b` of `n_b` with `x_a` of `n_a`; `None` when either side has no samples.
pub fn two_proportion(x_a: u64, n_a: u64, x_b: u64, n_b: u64) -> Option<Difference> {
    if n_a == 0 || n_b == 0 {
        return None;
    }
    let (na, nb) = (n_a as f64, n_b as f64);
    let (pa, pb) = (x_a as f64 / na, x_b as f64 / nb);
    let diff = pb - pa;
    let (la, ua) = wilson(x_a, n_a, Z95)?;
    let (lb, ub) = wilson(x_b, n_b, Z95)?;
    let pooled = (x_a + x_b) as f64 / (na + nb);
    let se0 = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    let p = if se0 == 0.0 {
        1.0
    } else {
        2.0 * (1.0 - normal_cdf((diff / se0).abs()))
    };
    Some(Difference {
        diff,
        ci_low: diff - ((pb - lb).powi(2) + (ua - pa).powi(2)).sqrt(),
        ci_high: diff + ((ub - pb).powi(2) + (pa - la).powi(2)).sqrt(),
        p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_cdf_matches_its_table() {
        for (x, p) in [
            (0.0, 0.5),
            (1.0, 0.841_344_7),
            (1.959_964, 0.975),
            (-2.5, 0.006_209_7),
        ] {
            assert!((normal_cdf(x) - p).abs() < 1e-6, "{x}: {}", normal_cdf(x));
        }
    }

    #[test]
    fn ten_against_twenty_five_in_a_hundred() {
        // Pooled z-test: p = 35/200, z = 0.15 / sqrt(p(1-p)·2/100) = 2.7915, p = 0.005247.
        let d = two_proportion(10, 100, 25, 100).unwrap();
        assert!((d.diff - 0.15).abs() < 1e-12);
        assert!((d.p - 0.005_247).abs() < 1e-5, "{}", d.p);
        // Newcombe (1998), method 10, computed by hand from the Wilson bounds
        // 10/100: [0.0552, 0.1744], 25/100: [0.1755, 0.3430] → [0.0447, 0.2533].
        assert!(
            (d.ci_low - 0.0447).abs() < 1e-4 && (d.ci_high - 0.2533).abs() < 1e-4,
            "{d:?}"
        );
        // At 0 of 5 against 5 of 5 the interval is still an interval.
        let d = two_proportion(0, 5, 5, 5).unwrap();
        assert!(
            (d.ci_low - 0.3855).abs() < 1e-4 && d.ci_high == 1.0,
            "{d:?}"
        );
        assert_eq!(two_proportion(0, 10, 0, 10).unwrap().p, 1.0);
        assert!(two_proportion(0, 0, 1, 10).is_none());
    }
}
