//! Parity with scikit-learn: the same synthetic adapter table and folds are
//! fitted here and by tests/python/sklearn_probe.py, and coefficients and
//! held-out scores must agree.
//!
//! Needs a Python with numpy, pandas and scikit-learn: `$EMH_PYTHON`, or
//! `python3`.

use std::fmt::Write as _;
use std::process::Command;

use emh_probe::{cross_validate, ProbeOptions, Table};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/python/sklearn_probe.py"
);

/// Coefficients (z-scored scale) and intercepts may differ by this much:
/// both solvers stop on tight criteria, so what is left is solver tolerance.
const COEF_TOL: f64 = 1e-6;
/// AUCs may differ by this much (summation order only).
const AUC_TOL: f64 = 1e-6;

/// 300 samples of 9 adapter activations: adapters 1, 4 and 7 carry signal
/// with different signs, the others are noise; a shared factor correlates
/// adapters 0–5, and every column has its own offset and scale.
fn adapters() -> Table {
    let mut rng = ChaCha8Rng::seed_from_u64(20260515);
    let signal = [0.0, 1.2, 0.0, 0.0, -0.9, 0.0, 0.0, 0.6, 0.0];
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..300 {
        let shared = normal(&mut rng);
        let latent: Vec<f64> = (0..9)
            .map(|j| normal(&mut rng) + if j < 6 { 0.7 * shared } else { 0.0 })
            .collect();
        let logit = -0.6 + latent.iter().zip(&signal).map(|(x, s)| x * s).sum::<f64>();
        // Logistic noise on the logit makes the labels a logistic model.
        let u: f64 = rng.random_range(1e-12..1.0 - 1e-12);
        labels.push(logit + (u / (1.0 - u)).ln() > 0.0);
        rows.push(
            latent
                .iter()
                .enumerate()
                .map(|(j, x)| (j as f64 - 4.0) * 0.3 + x * (0.05 + 0.4 * j as f64))
                .collect(),
        );
    }
    let names = (0..9).map(|j| format!("adapter_{j}")).collect();
    Table::new(names, rows, labels).expect("a valid table")
}

/// A standard normal by Box–Muller.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn number(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

fn numbers(v: &Value, key: &str) -> Vec<f64> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array in {v}"))
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

#[test]
fn coefficients_and_fold_scores_match_sklearn() {
    let table = adapters();
    let opts = ProbeOptions {
        c: 0.05,
        ..Default::default()
    };
    let cv = cross_validate(&table, &opts).expect("cross-validation runs");

    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("adapters.csv");
    let mut text = format!("{},label,fold\n", table.names().join(","));
    for ((row, &label), fold) in table.rows().iter().zip(table.labels()).zip(&cv.folds) {
        for x in row {
            // `{}` prints the shortest string that parses back to the same f64.
            write!(text, "{x},").expect("write to string");
        }
        writeln!(text, "{},{fold}", u8::from(label)).expect("write to string");
    }
    std::fs::write(&csv, text).expect("write the CSV");

    let python = std::env::var_os("EMH_PYTHON").unwrap_or_else(|| "python3".into());
    let out = Command::new(&python)
        .arg(SCRIPT)
        .arg(&csv)
        .args(["--c", &opts.c.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot start {python:?}: {e}"));
    assert!(
        out.status.success(),
        "{SCRIPT} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");

    let mut compared = 0usize;
    let mut worst_coef = 0.0f64;
    let mut worst_auc = 0.0f64;
    let mut compare_fit = |what: &str, ours: &[f64], intercept: f64, theirs: &Value| {
        let coef = numbers(theirs, "coef");
        assert_eq!(coef.len(), ours.len(), "{what}: coefficient count");
        for (j, (a, b)) in ours.iter().zip(&coef).enumerate() {
            assert!(
                (a - b).abs() <= COEF_TOL,
                "{what}: coefficient {j}: ours {a}, sklearn {b}"
            );
            worst_coef = worst_coef.max((a - b).abs());
        }
        let b = number(theirs, "intercept");
        assert!(
            (intercept - b).abs() <= COEF_TOL,
            "{what}: intercept: ours {intercept}, sklearn {b}"
        );
        worst_coef = worst_coef.max((intercept - b).abs());
        coef.len() + 1
    };

    compared += compare_fit("all rows", &cv.full.coef, cv.full.intercept, &reference);
    let folds = reference["folds"].as_array().expect("folds");
    assert_eq!(folds.len(), cv.per_fold.len(), "fold count");
    for (f, (ours, theirs)) in cv.per_fold.iter().zip(folds).enumerate() {
        let what = format!("fold {f}");
        compared += compare_fit(&what, &ours.fit.coef, ours.fit.intercept, theirs);
        let auc = number(theirs, "auc");
        assert!(
            (ours.metrics.auc - auc).abs() <= AUC_TOL,
            "{what}: AUC ours {}, sklearn {auc}",
            ours.metrics.auc
        );
        worst_auc = worst_auc.max((ours.metrics.auc - auc).abs());
        assert_eq!(ours.metrics.accuracy, number(theirs, "accuracy"), "{what}");
        assert_eq!(
            ours.metrics.precision,
            number(theirs, "precision"),
            "{what}"
        );
        assert_eq!(ours.metrics.recall, number(theirs, "recall"), "{what}");
        compared += 4;
    }

    // The L1 penalty must have dropped a noise adapter on both sides, or the
    // comparison never exercised the sparsity.
    let theirs = numbers(&reference, "coef");
    let zero_on_both = cv
        .full
        .coef
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| **a == 0.0 && **b == 0.0)
        .count();
    assert!(zero_on_both > 0, "no coefficient is zero on both sides");
    for j in [1, 4, 7] {
        assert!(
            cv.full.coef[j] != 0.0,
            "informative adapter {j} was dropped"
        );
    }
    // Ten fitted values (nine coefficients and the intercept) per fit, four
    // scores per fold: nothing was skipped.
    let k = cv.per_fold.len();
    assert!(k > 0);
    assert_eq!(compared, 10 * (k + 1) + 4 * k);
    eprintln!(
        "sklearn {}: compared {compared} values; {zero_on_both} coefficients zero on both sides; \
         max |Δcoef| {worst_coef:e}, max |ΔAUC| {worst_auc:e}; \
         FISTA iterations on all rows {}, sklearn SAGA epochs {}",
        reference["sklearn"], cv.full.iterations, reference["n_iter"]
    );
}
