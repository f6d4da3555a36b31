//! The L1-penalised logistic regression fit, by FISTA.

use serde::Serialize;

use crate::{class_counts, ProbeError, ProbeOptions, Scaler, Table};

/// A fitted probe: its standardisation, coefficients and how the solver ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fit {
    /// Statistics of the rows the probe was fitted on.
    pub scaler: Scaler,
    /// One coefficient per feature, on the z-scored scale; exactly 0 for a
    /// feature the L1 penalty dropped.
    pub coef: Vec<f64>,
    /// Intercept (not penalised).
    pub intercept: f64,
    /// FISTA iterations taken.
    pub iterations: usize,
    /// Largest violation of the optimality conditions at the solution, in
    /// units of the L1 weight: |∂b| for the intercept, |g_j + sign(w_j)| for
    /// a kept feature, max(|g_j| − 1, 0) for a dropped one, where g is the
    /// gradient of the weighted loss term.
    pub kkt_residual: f64,
}

impl Fit {
    /// Decision value `intercept + coef · z` of a raw row, `z` its z-scores;
    /// above 0 predicts the positive class.
    pub fn decision(&self, row: &[f64]) -> f64 {
        self.scaler
            .transform(row)
            .iter()
            .zip(&self.coef)
            .fold(self.intercept, |acc, (z, w)| acc + z * w)
    }
}

/// Fits the probe on all rows of `table`.
///
/// Features are z-scored, then the coefficients `w` and intercept `b`
/// minimise
///
/// ```text
/// ||w||_1 + C · Σ_i s_i · log(1 + exp(−y_i (b + w·z_i))),   y_i ∈ {−1, +1}
/// ```
///
/// with balanced class weights `s_i = n / (2 · n_class(i))`. This is
/// exactly what scikit-learn 1.9 minimises for
/// `LogisticRegression(l1_ratio=1, C=C, class_weight="balanced",
/// solver="saga")`: SAGA minimises `(1/n) Σ s_i ℓ_i + (1/(C n)) ||w||_1`
/// (`beta = 1/C` scaled by `1/n_samples` in `sag_solver`), the same problem
/// multiplied by `C n`. scikit-learn 1.8 deprecated `penalty="l1"` in favour
/// of `l1_ratio=1` but left the scaling of `C` (a multiplier on the summed,
/// not averaged, loss) as it was. `liblinear` would also penalise the
/// intercept, so it is not the reference.
pub fn fit(table: &Table, opts: &ProbeOptions) -> Result<Fit, ProbeError> {
    let rows: Vec<usize> = (0..table.rows().len()).collect();
    fit_rows(table, &rows, opts)
}

/// Fits on `rows` of `table`, standardised with their statistics only.
pub(crate) fn fit_rows(
    table: &Table,
    rows: &[usize],
    opts: &ProbeOptions,
) -> Result<Fit, ProbeError> {
    opts.validate()?;
    let (positives, negatives) = class_counts(rows.iter().map(|&r| table.labels()[r]), 1)?;
    let scaler = Scaler::fit(table, rows);
    let n = rows.len() as f64;
    let class_weight = |label: bool| {
        let members = if label { positives } else { negatives };
        n / (2.0 * members as f64)
    };
    let problem = Problem {
        d: table.names().len(),
        x: rows
            .iter()
            .flat_map(|&r| scaler.transform(&table.rows()[r]))
            .collect(),
        target: rows
            .iter()
            .map(|&r| f64::from(u8::from(table.labels()[r])))
            .collect(),
        weight: rows
            .iter()
            .map(|&r| opts.c * class_weight(table.labels()[r]))
            .collect(),
    };
    let solution = problem.solve(opts)?;
    Ok(Fit {
        scaler,
        coef: solution.w,
        intercept: solution.b,
        iterations: solution.iterations,
        kkt_residual: solution.residual,
    })
}

/// The smooth part `f(w, b) = Σ_i weight_i · ℓ(target_i, b + x_i·w)` on
/// z-scored rows, with `weight` already holding `C · s_i`.
struct Problem {
    d: usize,
    /// Row-major z-scored features, `n × d`.
    x: Vec<f64>,
    /// 1 for positive, 0 for negative.
    target: Vec<f64>,
    weight: Vec<f64>,
}

struct Solution {
    w: Vec<f64>,
    b: f64,
    iterations: usize,
    residual: f64,
}

impl Problem {
    fn rows(&self) -> impl Iterator<Item = &[f64]> {
        self.x.chunks_exact(self.d)
    }

    /// Linear predictors `b + x_i·w`.
    fn margins(&self, w: &[f64], b: f64, out: &mut [f64]) {
        for (o, row) in out.iter_mut().zip(self.rows()) {
            *o = row.iter().zip(w).fold(b, |acc, (x, w)| acc + x * w);
        }
    }

    /// Gradient of `f` into `g` (coefficients), returning the intercept's.
    fn gradient(&self, margins: &[f64], g: &mut [f64]) -> f64 {
        g.fill(0.0);
        let mut g_b = 0.0;
        for ((row, &z), (&t, &s)) in self
            .rows()
            .zip(margins)
            .zip(self.target.iter().zip(&self.weight))
        {
            let r = s * (sigmoid(z) - t);
            g_b += r;
            for (gj, x) in g.iter_mut().zip(row) {
                *gj += r * x;
            }
        }
        g_b
    }

    /// `f(new) − f(old) − ∇f(old)·(new − old)`, per sample from the margins.
    ///
    /// Differencing two objective values loses everything to rounding once
    /// steps are tiny, and backtracking would then reject good steps forever;
    /// the per-sample form keeps its relative accuracy. The label term of the
    /// loss is linear in the margin, so only the softplus part contributes.
    fn bregman(&self, old: &[f64], new: &[f64]) -> f64 {
        old.iter()
            .zip(new)
            .zip(&self.weight)
            .map(|((&z, &z_new), &s)| {
                let delta = z_new - z;
                let p = sigmoid(z);
                // softplus(z + δ) − softplus(z) = log1p(σ(z)·expm1(δ)), exact
                // for small δ; for large δ that form loses the 1 in 1 + e^z
                // when σ(z) rounds to 1, so difference directly there.
                let rise = if delta.abs() < 1.0 {
                    (p * delta.exp_m1()).ln_1p()
                } else {
                    softplus(z_new) - softplus(z)
                };
                s * (rise - p * delta)
            })
            .sum()
    }

    /// FISTA (Beck & Teboulle) on `f + ||w||_1` with backtracking on the step
    /// and O'Donoghue & Candès' gradient restart, which makes it converge
    /// linearly on this locally strongly convex problem. Deterministic: no
    /// sampling, fixed summation order.
    fn solve(&self, opts: &ProbeOptions) -> Result<Solution, ProbeError> {
        let (n, d) = (self.target.len(), self.d);
        // The loss has curvature at most 1/4 in the margin, so 1/4 of the
        // trace of Σ s_i x̃_i x̃_iᵀ (x̃ with the intercept's 1) bounds the
        // Lipschitz constant of ∇f. Backtracking starts from the trace's share
        // per dimension, a lower bound of the largest eigenvalue.
        let lipschitz_max = 0.25
            * self
                .rows()
                .zip(&self.weight)
                .map(|(row, s)| s * (1.0 + row.iter().map(|x| x * x).sum::<f64>()))
                .sum::<f64>();
        let mut lipschitz = lipschitz_max / (d + 1) as f64;

        let (mut w, mut b) = (vec![0.0; d], 0.0);
        let (mut y_w, mut y_b) = (w.clone(), b);
        let mut momentum: f64 = 1.0;
        let mut w_new = vec![0.0; d];
        let mut g = vec![0.0; d];
        let (mut z_y, mut z_new) = (vec![0.0; n], vec![0.0; n]);
        let mut residual = f64::INFINITY;

        for iteration in 1..=opts.max_iter {
            self.margins(&y_w, y_b, &mut z_y);
            let g_b = self.gradient(&z_y, &mut g);
            let (b_new, dist2) = loop {
                let step = 1.0 / lipschitz;
                for ((wn, &yw), &gj) in w_new.iter_mut().zip(&y_w).zip(&g) {
                    *wn = soft_threshold(yw - step * gj, step);
                }
                let b_new = y_b - step * g_b;
                self.margins(&w_new, b_new, &mut z_new);
                let dist2 = (b_new - y_b).powi(2)
                    + w_new
                        .iter()
                        .zip(&y_w)
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f64>();
                // At the proven bound the sufficient-decrease test holds
                // mathematically; accepting there guards against rounding.
                if lipschitz >= lipschitz_max
                    || self.bregman(&z_y, &z_new) <= 0.5 * lipschitz * dist2
                {
                    break (b_new, dist2);
                }
                lipschitz = (2.0 * lipschitz).min(lipschitz_max);
            };

            // The step's subgradient at x⁺ is ∇f(x⁺) − ∇f(y) + L(y − x⁺), so
            // 2L‖y − x⁺‖ bounds the KKT residual while L is a valid constant;
            // it is only a cue, and the residual itself decides.
            if 2.0 * lipschitz * dist2.sqrt() <= opts.tol {
                let mut g_new = vec![0.0; d];
                let g_b_new = self.gradient(&z_new, &mut g_new);
                residual = kkt_residual(&w_new, &g_new, g_b_new);
                if residual <= opts.tol {
                    return Ok(Solution {
                        w: w_new,
                        b: b_new,
                        iterations: iteration,
                        residual,
                    });
                }
            }

            // Restart the momentum when it points against the step just taken.
            let uphill = (y_b - b_new) * (b_new - b)
                + y_w
                    .iter()
                    .zip(&w_new)
                    .zip(&w)
                    .map(|((y, xn), x)| (y - xn) * (xn - x))
                    .sum::<f64>();
            if uphill > 0.0 {
                momentum = 1.0;
                y_w.copy_from_slice(&w_new);
                y_b = b_new;
            } else {
                let next = (1.0 + (1.0 + 4.0 * momentum * momentum).sqrt()) / 2.0;
                let beta = (momentum - 1.0) / next;
                momentum = next;
                for ((y, &xn), &x) in y_w.iter_mut().zip(&w_new).zip(&w) {
                    *y = xn + beta * (xn - x);
                }
                y_b = b_new + beta * (b_new - b);
            }
            w.copy_from_slice(&w_new);
            b = b_new;
        }
        Err(ProbeError::NotConverged {
            iterations: opts.max_iter,
            residual,
            tol: opts.tol,
        })
    }
}

/// The optimality conditions of `f + ||w||_1`, worst violation: the
/// intercept's gradient must vanish, a kept coefficient's gradient must equal
/// `−sign(w_j)`, a dropped one's must lie in [−1, 1].
fn kkt_residual(w: &[f64], g: &[f64], g_b: f64) -> f64 {
    w.iter().zip(g).fold(g_b.abs(), |worst, (&wj, &gj)| {
        let violation = if wj == 0.0 {
            (gj.abs() - 1.0).max(0.0)
        } else {
            (gj + wj.signum()).abs()
        };
        worst.max(violation)
    })
}

/// The proximal map of `t·|w|`; returns +0.0 (never −0.0) for dropped values.
fn soft_threshold(v: f64, t: f64) -> f64 {
    if v > t {
        v - t
    } else if v < -t {
        v + t
    } else {
        0.0
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::Normal;

    /// A table where only feature 0 carries signal; the others are noise,
    /// one of them correlated with feature 0 and all on odd scales.
    fn one_signal(n: usize, seed: u64) -> Table {
        let mut rng = Normal::new(seed);
        let mut rows = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let x0 = rng.sample();
            let row = vec![
                5.0 + 2.0 * x0,
                rng.sample() * 0.1 - 3.0,
                rng.sample() * 10.0,
                0.6 * x0 + 0.8 * rng.sample(),
            ];
            labels.push(2.0 * x0 - 0.5 + rng.logistic() > 0.0);
            rows.push(row);
        }
        let names = (0..4).map(|j| format!("a{j}")).collect();
        Table::new(names, rows, labels).expect("valid table")
    }

    /// The gradient of the weighted loss, computed here from scratch (not
    /// with `Problem`), so the KKT check is independent of the solver.
    fn loss_gradient(table: &Table, fit: &Fit, c: f64) -> (Vec<f64>, f64) {
        let n = table.labels().len() as f64;
        let positives = table.labels().iter().filter(|&&l| l).count() as f64;
        let mut g = vec![0.0; table.names().len()];
        let mut g_b = 0.0;
        for (row, &label) in table.rows().iter().zip(table.labels()) {
            let z = fit.scaler.transform(row);
            let members = if label { positives } else { n - positives };
            let s = n / (2.0 * members);
            let p = 1.0 / (1.0 + (-fit.decision(row)).exp());
            let r = c * s * (p - if label { 1.0 } else { 0.0 });
            g_b += r;
            for (gj, zj) in g.iter_mut().zip(&z) {
                *gj += r * zj;
            }
        }
        (g, g_b)
    }

    #[test]
    fn only_the_signal_feature_is_kept() {
        let table = one_signal(400, 11);
        let opts = ProbeOptions {
            c: 0.02,
            ..Default::default()
        };
        let fit = fit(&table, &opts).expect("converges");
        assert!(fit.coef[0] > 0.5, "{:?}", fit.coef);
        assert_eq!(&fit.coef[1..], &[0.0, 0.0, 0.0], "{:?}", fit.coef);
    }

    #[test]
    fn the_solution_satisfies_the_kkt_conditions() {
        let table = one_signal(300, 5);
        for c in [0.005, 0.05, 1.0, 50.0] {
            let opts = ProbeOptions {
                c,
                ..Default::default()
            };
            let fit = fit(&table, &opts).expect("converges");
            assert!(fit.kkt_residual <= opts.tol);
            let (g, g_b) = loss_gradient(&table, &fit, c);
            assert!(g_b.abs() < 1e-7, "C={c}: intercept gradient {g_b}");
            for (j, (&w, &gj)) in fit.coef.iter().zip(&g).enumerate() {
                if w == 0.0 {
                    assert!(gj.abs() <= 1.0 + 1e-7, "C={c}: feature {j}: |{gj}| > 1");
                } else {
                    assert!(
                        (gj + w.signum()).abs() < 1e-7,
                        "C={c}: feature {j}: w={w}, gradient {gj}"
                    );
                }
            }
        }
    }

    #[test]
    fn strong_penalty_keeps_nothing() {
        let table = one_signal(100, 2);
        let opts = ProbeOptions {
            c: 1e-4,
            ..Default::default()
        };
        let fit = fit(&table, &opts).expect("converges");
        assert!(fit.coef.iter().all(|&w| w == 0.0));
        // With balanced weights the intercept-only optimum is even odds.
        assert!(fit.intercept.abs() < 1e-9, "{}", fit.intercept);
    }

    #[test]
    fn too_few_iterations_is_an_error() {
        let table = one_signal(100, 2);
        let opts = ProbeOptions {
            max_iter: 2,
            ..Default::default()
        };
        assert!(matches!(
            fit(&table, &opts),
            Err(ProbeError::NotConverged { iterations: 2, .. })
        ));
    }

    #[test]
    fn bregman_matches_the_objective_difference_for_large_steps() {
        let problem = Problem {
            d: 1,
            x: vec![1.0, -2.0, 0.5],
            target: vec![1.0, 0.0, 1.0],
            weight: vec![1.0, 2.0, 0.5],
        };
        let f = |w: f64, b: f64| -> f64 {
            problem
                .rows()
                .zip(problem.target.iter().zip(&problem.weight))
                .map(|(x, (&t, &s))| {
                    let z = b + x[0] * w;
                    s * (softplus(z) - t * z)
                })
                .sum()
        };
        let (mut z0, mut z1, mut g) = (vec![0.0; 3], vec![0.0; 3], vec![0.0; 1]);
        for (w0, b0, w1, b1) in [(0.3, -0.2, 2.5, 1.0), (40.0, 1.0, -3.0, 0.0)] {
            problem.margins(&[w0], b0, &mut z0);
            problem.margins(&[w1], b1, &mut z1);
            let g_b = problem.gradient(&z0, &mut g);
            let expected = f(w1, b1) - f(w0, b0) - g[0] * (w1 - w0) - g_b * (b1 - b0);
            let got = problem.bregman(&z0, &z1);
            assert!(
                (got - expected).abs() < 1e-9 * expected.abs().max(1.0),
                "{got} vs {expected}"
            );
        }
    }
}
