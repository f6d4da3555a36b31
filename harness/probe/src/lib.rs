//! L1-regularised logistic regression probes with cross-validation.
//!
//! Researchers record, per sample, one scalar per rank-1 LoRA adapter (its
//! A·x) and whether the answer was misaligned (`true`) or aligned (`false`),
//! and ask which adapters predict the label. A probe z-scores the features,
//! fits a logistic regression whose L1 penalty keeps only the adapters that
//! earn their place, and reports how well that generalises under stratified
//! k-fold cross-validation, plus the coefficients of a fit on all data.
//!
//! The fit minimises the same objective as scikit-learn's
//! `LogisticRegression(l1_ratio=1, C=C, class_weight="balanced", solver="saga")`
//! (see [`fit`]), so results can be checked against it.

mod folds;
mod metrics;
mod scale;
mod solver;
mod target;

pub use folds::stratified_folds;
pub use metrics::{roc_auc, score, Metrics, Summary};
pub use scale::Scaler;
pub use solver::{fit, Fit};
pub use target::Target;

use serde::{Deserialize, Serialize};

/// Why a table, an option or a fit was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    #[error("the table has no features")]
    NoFeatures,
    #[error("feature name {0:?} appears more than once")]
    DuplicateName(String),
    #[error("{rows} rows but {labels} labels")]
    LabelCount { rows: usize, labels: usize },
    #[error("row {row} has {width} values, expected {expected} (one per feature)")]
    RowWidth {
        row: usize,
        width: usize,
        expected: usize,
    },
    #[error("row {row}, {column}: {value} is not finite")]
    NotFinite {
        row: usize,
        column: String,
        value: f64,
    },
    #[error(
        "need at least {needed} rows of each class, have {positives} positive and {negatives} negative"
    )]
    ClassCounts {
        positives: usize,
        negatives: usize,
        needed: usize,
    },
    #[error("invalid probe options: {0}")]
    Options(String),
    #[error("fold assignment: {0}")]
    Folds(String),
    #[error(
        "the solver stopped after {iterations} iterations with KKT residual {residual:e} > tol {tol:e}; raise max_iter or tol"
    )]
    NotConverged {
        iterations: usize,
        residual: f64,
        tol: f64,
    },
    #[error("fold {fold}: {error}")]
    InFold { fold: usize, error: Box<ProbeError> },
}

/// Features (one column per adapter) and labels (`true` = misaligned), validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    names: Vec<String>,
    rows: Vec<Vec<f64>>,
    labels: Vec<bool>,
}

impl Table {
    /// Checks that names are unique, every row has one finite value per name,
    /// there is one label per row and both classes occur.
    pub fn new(
        names: Vec<String>,
        rows: Vec<Vec<f64>>,
        labels: Vec<bool>,
    ) -> Result<Table, ProbeError> {
        if names.is_empty() {
            return Err(ProbeError::NoFeatures);
        }
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(ProbeError::DuplicateName(name.clone()));
            }
        }
        if rows.len() != labels.len() {
            return Err(ProbeError::LabelCount {
                rows: rows.len(),
                labels: labels.len(),
            });
        }
        for (r, row) in rows.iter().enumerate() {
            if row.len() != names.len() {
                return Err(ProbeError::RowWidth {
                    row: r,
                    width: row.len(),
                    expected: names.len(),
                });
            }
            if let Some((c, &value)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(ProbeError::NotFinite {
                    row: r,
                    column: names[c].clone(),
                    value,
                });
            }
        }
        class_counts(labels.iter().copied(), 1)?;
        Ok(Table {
            names,
            rows,
            labels,
        })
    }

    /// Feature names, one per column.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Feature values, one row per sample.
    pub fn rows(&self) -> &[Vec<f64>] {
        &self.rows
    }

    /// Labels, one per row; `true` is the positive (misaligned) class.
    pub fn labels(&self) -> &[bool] {
        &self.labels
    }
}

/// Counts `(positives, negatives)`, refusing fewer than `needed` of either.
pub(crate) fn class_counts(
    labels: impl IntoIterator<Item = bool>,
    needed: usize,
) -> Result<(usize, usize), ProbeError> {
    let (positives, negatives) =
        labels
            .into_iter()
            .fold((0, 0), |(p, n), l| if l { (p + 1, n) } else { (p, n + 1) });
    if positives < needed || negatives < needed {
        return Err(ProbeError::ClassCounts {
            positives,
            negatives,
            needed,
        });
    }
    Ok((positives, negatives))
}

/// Regularisation, cross-validation and solver settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeOptions {
    /// Inverse regularisation strength, as scikit-learn's `C`: the loss is
    /// multiplied by it, the L1 norm is not.
    pub c: f64,
    /// Number of stratified folds.
    pub folds: usize,
    /// Seed of the shuffle that assigns rows to folds.
    pub seed: u64,
    /// Most FISTA iterations per fit before giving up.
    pub max_iter: usize,
    /// Largest accepted KKT residual (see [`Fit::kkt_residual`]).
    pub tol: f64,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            c: 1.0,
            folds: 5,
            seed: 0,
            max_iter: 100_000,
            tol: 1e-8,
        }
    }
}

impl ProbeOptions {
    /// Refuses settings the solver or the folds cannot work with.
    pub fn validate(&self) -> Result<(), ProbeError> {
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(ProbeError::Options(format!(
                "c must be positive and finite, got {}",
                self.c
            )));
        }
        if self.folds < 2 {
            return Err(ProbeError::Options(format!(
                "folds must be at least 2, got {}",
                self.folds
            )));
        }
        if self.max_iter == 0 {
            return Err(ProbeError::Options("max_iter must be at least 1".into()));
        }
        if !(self.tol.is_finite() && self.tol > 0.0) {
            return Err(ProbeError::Options(format!(
                "tol must be positive and finite, got {}",
                self.tol
            )));
        }
        Ok(())
    }
}

/// One held-out fold: its size, its scores and the fit on the other folds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FoldResult {
    /// Rows held out.
    pub test_rows: usize,
    /// Scores of the held-out rows under `fit`.
    pub metrics: Metrics,
    /// Fit on the other folds, standardised with their statistics only.
    pub fit: Fit,
}

/// Cross-validated scores and the coefficients of a fit on all rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossValidation {
    /// Feature names, in the order of every `coef`.
    pub names: Vec<String>,
    /// Fold of each table row, so the split can be reproduced elsewhere.
    pub folds: Vec<usize>,
    /// Results per fold, fold 0 first.
    pub per_fold: Vec<FoldResult>,
    /// Held-out accuracy over folds.
    pub accuracy: Summary,
    /// Held-out precision over folds.
    pub precision: Summary,
    /// Held-out recall over folds.
    pub recall: Summary,
    /// Held-out ROC AUC over folds.
    pub auc: Summary,
    /// Fit on all rows: which adapters the probe keeps, on the z-scored scale.
    pub full: Fit,
}

/// Cross-validates with `opts.folds` stratified folds shuffled by `opts.seed`.
pub fn cross_validate(table: &Table, opts: &ProbeOptions) -> Result<CrossValidation, ProbeError> {
    opts.validate()?;
    let folds = stratified_folds(table.labels(), opts.folds, opts.seed)?;
    cross_validate_with_folds(table, &folds, opts)
}

/// Cross-validates with a given fold per row (`0..k`); `opts.folds` and
/// `opts.seed` are not used, since the assignment is already made.
pub fn cross_validate_with_folds(
    table: &Table,
    folds: &[usize],
    opts: &ProbeOptions,
) -> Result<CrossValidation, ProbeError> {
    opts.validate()?;
    let k = folds::check(table.labels(), folds)?;
    let per_fold = (0..k)
        .map(|f| {
            let (test, train): (Vec<usize>, Vec<usize>) =
                (0..folds.len()).partition(|&r| folds[r] == f);
            let in_fold = |error| ProbeError::InFold {
                fold: f,
                error: Box::new(error),
            };
            let fit = solver::fit_rows(table, &train, opts).map_err(in_fold)?;
            let decisions: Vec<f64> = test.iter().map(|&r| fit.decision(&table.rows[r])).collect();
            let labels: Vec<bool> = test.iter().map(|&r| table.labels[r]).collect();
            let metrics = score(&decisions, &labels).map_err(in_fold)?;
            Ok(FoldResult {
                test_rows: test.len(),
                metrics,
                fit,
            })
        })
        .collect::<Result<Vec<_>, ProbeError>>()?;
    let summary = |get: fn(&Metrics) -> f64| Summary::of(per_fold.iter().map(|f| get(&f.metrics)));
    Ok(CrossValidation {
        names: table.names.clone(),
        folds: folds.to_vec(),
        accuracy: summary(|m| m.accuracy),
        precision: summary(|m| m.precision),
        recall: summary(|m| m.recall),
        auc: summary(|m| m.auc),
        full: fit(table, opts)?,
        per_fold,
    })
}

#[cfg(test)]
pub(crate) mod testdata {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Deterministic standard normals (Box–Muller), for synthetic tables.
    pub struct Normal(ChaCha8Rng);

    impl Normal {
        pub fn new(seed: u64) -> Self {
            Normal(ChaCha8Rng::seed_from_u64(seed))
        }

        pub fn sample(&mut self) -> f64 {
            let u: f64 = 1.0 - self.0.random::<f64>();
            let v: f64 = self.0.random();
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }

        /// A logistic variate, so `signal + logistic() > 0` is a logistic model.
        pub fn logistic(&mut self) -> f64 {
            let u: f64 = self.0.random_range(1e-12..1.0 - 1e-12);
            (u / (1.0 - u)).ln()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testdata::Normal;

    fn names(d: usize) -> Vec<String> {
        (0..d).map(|j| format!("a{j}")).collect()
    }

    #[test]
    fn table_errors_name_the_row_and_column() {
        let t = Table::new(names(2), vec![vec![0.0, 1.0], vec![2.0]], vec![true, false]);
        assert_eq!(
            t,
            Err(ProbeError::RowWidth {
                row: 1,
                width: 1,
                expected: 2
            })
        );
        let t = Table::new(
            names(2),
            vec![vec![0.0, 1.0], vec![2.0, f64::NAN]],
            vec![true, false],
        );
        assert!(
            matches!(t, Err(ProbeError::NotFinite { row: 1, ref column, .. }) if column == "a1")
        );
        let t = Table::new(names(1), vec![vec![0.0], vec![1.0]], vec![true, true]);
        assert!(matches!(
            t,
            Err(ProbeError::ClassCounts {
                positives: 2,
                negatives: 0,
                ..
            })
        ));
        let t = Table::new(vec!["x".into(), "x".into()], vec![], vec![]);
        assert_eq!(t, Err(ProbeError::DuplicateName("x".into())));
        let t = Table::new(names(1), vec![vec![0.0]], vec![]);
        assert_eq!(t, Err(ProbeError::LabelCount { rows: 1, labels: 0 }));
    }

    #[test]
    fn options_are_checked() {
        assert!(ProbeOptions::default().validate().is_ok());
        for bad in [
            ProbeOptions {
                c: 0.0,
                ..Default::default()
            },
            ProbeOptions {
                c: f64::INFINITY,
                ..Default::default()
            },
            ProbeOptions {
                folds: 1,
                ..Default::default()
            },
            ProbeOptions {
                tol: 0.0,
                ..Default::default()
            },
        ] {
            assert!(matches!(bad.validate(), Err(ProbeError::Options(_))));
        }
    }

    #[test]
    fn separable_one_feature_scores_perfectly() {
        let rows: Vec<Vec<f64>> = (0..20).map(|i| vec![f64::from(i)]).collect();
        let labels: Vec<bool> = (0..20).map(|i| i >= 10).collect();
        let table = Table::new(names(1), rows, labels).expect("valid table");
        let cv = cross_validate(&table, &ProbeOptions::default()).expect("fits");
        assert_eq!(cv.auc.mean, 1.0);
        assert_eq!(cv.auc.sd, 0.0);
        assert!(cv.full.coef[0] > 0.0);
    }

    #[test]
    fn each_fold_is_standardised_on_its_training_rows_only() {
        let mut normal = Normal::new(3);
        let rows: Vec<Vec<f64>> = (0..40)
            .map(|_| vec![normal.sample() * 3.0 + 10.0, normal.sample()])
            .collect();
        let labels: Vec<bool> = rows.iter().map(|r| r[1] > 0.0).collect();
        let table = Table::new(names(2), rows.clone(), labels).expect("valid table");
        let cv = cross_validate(
            &table,
            &ProbeOptions {
                folds: 4,
                ..Default::default()
            },
        )
        .expect("fits");
        for (f, fold) in cv.per_fold.iter().enumerate() {
            let train: Vec<&Vec<f64>> = rows
                .iter()
                .zip(&cv.folds)
                .filter(|(_, &g)| g != f)
                .map(|(r, _)| r)
                .collect();
            let n = train.len() as f64;
            for j in 0..2 {
                let mean = train.iter().map(|r| r[j]).sum::<f64>() / n;
                let sd = (train.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / n).sqrt();
                assert!((fold.fit.scaler.mean[j] - mean).abs() < 1e-12, "fold {f}");
                assert!((fold.fit.scaler.scale[j] - sd).abs() < 1e-12, "fold {f}");
            }
            // The held-out rows would shift the statistics, so they must differ
            // from the full-data ones.
            assert_ne!(fold.fit.scaler, cv.full.scaler);
        }
    }

    #[test]
    fn given_folds_must_cover_both_classes() {
        let rows: Vec<Vec<f64>> = (0..8).map(|i| vec![f64::from(i)]).collect();
        let labels: Vec<bool> = (0..8).map(|i| i >= 4).collect();
        let table = Table::new(names(1), rows, labels).expect("valid table");
        let folds = [0, 0, 0, 0, 1, 1, 1, 1];
        let err = cross_validate_with_folds(&table, &folds, &ProbeOptions::default());
        assert!(matches!(err, Err(ProbeError::Folds(_))));
    }
}
