//! Z-scoring, as scikit-learn's `StandardScaler`.

use serde::Serialize;

use crate::Table;

/// Per-feature mean and scale learnt from training rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scaler {
    /// Mean of each feature over the training rows.
    pub mean: Vec<f64>,
    /// Population standard deviation (ddof 0) of each feature over the
    /// training rows, or 1 for a constant feature.
    pub scale: Vec<f64>,
}

impl Scaler {
    /// Learns the statistics from `rows` of `table` only, so held-out rows
    /// never leak into their own standardisation. `rows` is never empty here.
    pub(crate) fn fit(table: &Table, rows: &[usize]) -> Scaler {
        let n = rows.len() as f64;
        let d = table.names().len();
        let column = |j: usize| rows.iter().map(move |&r| table.rows()[r][j]);
        let mut mean = Vec::with_capacity(d);
        let mut scale = Vec::with_capacity(d);
        for j in 0..d {
            let m = column(j).sum::<f64>() / n;
            // Two passes with the rounding correction scikit-learn applies
            // (Chan, Golub & LeVeque), so the variances agree to the last bits.
            let (sum_sq, sum) = column(j).fold((0.0, 0.0), |(sq, s), x| {
                (sq + (x - m) * (x - m), s + (x - m))
            });
            let var = (sum_sq - sum * sum / n) / n;
            // scikit-learn's test for a feature indistinguishable from a
            // constant: its variance is within the algorithm's error bound.
            // Such a feature is scaled by 1 instead of by (near) zero.
            let eps = f64::EPSILON;
            let constant = var <= n * eps * var + (n * m * eps).powi(2);
            mean.push(m);
            scale.push(if constant { 1.0 } else { var.sqrt() });
        }
        Scaler { mean, scale }
    }

    /// Z-scores a raw row.
    pub fn transform(&self, row: &[f64]) -> Vec<f64> {
        row.iter()
            .zip(self.mean.iter().zip(&self.scale))
            .map(|(x, (m, s))| (x - m) / s)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_only_the_given_rows_and_ddof_zero() {
        let table = Table::new(
            vec!["a".into(), "flat".into()],
            vec![
                vec![1.0, 5.0],
                vec![3.0, 5.0],
                vec![1000.0, 7.0],
                vec![2.0, 5.0],
            ],
            vec![true, false, true, false],
        )
        .expect("valid table");
        let s = Scaler::fit(&table, &[0, 1, 3]);
        assert_eq!(s.mean, vec![2.0, 5.0]);
        assert!((s.scale[0] - (2.0f64 / 3.0).sqrt()).abs() < 1e-15);
        // Constant over the training rows, though not over the table.
        assert_eq!(s.scale[1], 1.0);
        assert_eq!(s.transform(&[1000.0, 7.0])[1], 2.0);
    }
}
