//! A checkpoint series: the EM rate at each checkpoint, each compared with
//! the first, the first that differs significantly, and a change-point.

use std::path::{Path, PathBuf};

use emh_charts::{Chart, Interval, Line, Lines, Stroke};
use emh_metrics::{two_proportion, Difference, Scope, Thresholds};

use crate::{RegressError, Side};

/// One checkpoint of the series.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub input: PathBuf,
    /// N of a `checkpoint-N` folder, else the position in the series.
    pub step: u64,
    pub successes: u64,
    pub n: u64,
    /// The EM rate and its Wilson 95% interval; `None` when nothing was scored.
    pub rate: Option<Interval>,
    /// This checkpoint against the first.
    pub vs_first: Option<Difference>,
}

/// Where the series splits best into two constant rates.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangePoint {
    /// Index of the first checkpoint after the change.
    pub index: usize,
    pub before: f64,
    pub after: f64,
    /// Log-likelihood ratio of two rates over one.
    pub llr: f64,
}

/// The series and what it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub points: Vec<Point>,
    /// Index of the first checkpoint whose EM differs from the first's at `alpha`.
    pub first_significant: Option<usize>,
    pub change_point: Option<ChangePoint>,
    pub alpha: f64,
}

/// The step of a checkpoint: N of a `checkpoint-N` folder (or `checkpoint-N.csv`).
fn step_of(path: &Path) -> Option<u64> {
    path.file_stem()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .parse()
        .ok()
}

/// Log-likelihood of `x` successes of `n` at the rate `x/n`.
fn loglik(x: u64, n: u64) -> f64 {
    let term = |k: u64| {
        if k == 0 {
            0.0
        } else {
            k as f64 * (k as f64 / n as f64).ln()
        }
    };
    term(x) + term(n - x)
}

/// The split of the counts into two segments with the largest likelihood
/// ratio over one segment; `None` with fewer than two checkpoints.
pub fn change_point(counts: &[(u64, u64)]) -> Option<ChangePoint> {
    let total = |c: &[(u64, u64)]| c.iter().fold((0, 0), |(x, n), &(a, b)| (x + a, n + b));
    let (x, n) = total(counts);
    if counts.len() < 2 || n == 0 {
        return None;
    }
    let one = loglik(x, n);
    (1..counts.len())
        .filter_map(|k| {
            let (a, b) = (total(&counts[..k]), total(&counts[k..]));
            (a.1 > 0 && b.1 > 0).then(|| ChangePoint {
                index: k,
                before: a.0 as f64 / a.1 as f64,
                after: b.0 as f64 / b.1 as f64,
                llr: loglik(a.0, a.1) + loglik(b.0, b.1) - one,
            })
        })
        .max_by(|a, b| a.llr.total_cmp(&b.llr))
}

/// Reads each checkpoint's run (or judged CSV) in order and compares each
/// with the first; runs on other questions or judge prompts are refused
/// unless `allow_mismatch`.
pub fn series(
    inputs: &[PathBuf],
    judge_id: Option<&str>,
    thresholds: &Thresholds,
    alpha: f64,
    allow_mismatch: bool,
) -> Result<Series, RegressError> {
    if inputs.len() < 2 {
        return Err(RegressError::Mismatch(
            "a series needs at least two checkpoints".into(),
        ));
    }
    let sides = inputs
        .iter()
        .map(|p| Side::load(p, judge_id, thresholds))
        .collect::<Result<Vec<_>, _>>()?;
    if !allow_mismatch {
        for s in &sides[1..] {
            crate::check_comparable(&sides[0], s)?;
        }
    }
    let counts: Vec<(u64, u64)> = sides
        .iter()
        .map(|s| {
            s.rows
                .iter()
                .find(|r| r.scope == Scope::Overall && r.metric == "em_rate")
                .map_or((0, 0), |r| (r.successes.unwrap_or(0), r.n))
        })
        .collect();
    let points: Vec<Point> = sides
        .iter()
        .zip(&counts)
        .enumerate()
        .map(|(i, (s, &(x, n)))| Point {
            input: s.input.clone(),
            step: step_of(&s.input).unwrap_or(i as u64),
            successes: x,
            n,
            rate: emh_metrics::wilson(x, n, emh_metrics::Z95).map(|(low, high)| Interval {
                value: x as f64 / n as f64,
                low,
                high,
            }),
            vs_first: two_proportion(counts[0].0, counts[0].1, x, n),
        })
        .collect();
    let first_significant = points
        .iter()
        .position(|p| p.vs_first.is_some_and(|d| d.p < alpha));
    Ok(Series {
        first_significant,
        change_point: change_point(&counts),
        points,
        alpha,
    })
}

impl Series {
    /// The trajectory: EM rate against training step.
    pub fn chart(&self) -> Chart {
        Chart::Lines(Lines {
            title: "EM rate across checkpoints".into(),
            x_label: "training step".into(),
            y_label: "EM rate".into(),
            lines: vec![Line {
                name: "EM rate (Wilson 95%)".into(),
                stroke: Stroke::Solid,
                points: self
                    .points
                    .iter()
                    .filter_map(|p| Some((p.step as f64, p.rate?)))
                    .collect(),
            }],
            levels: Vec::new(),
        })
    }

    /// The series as Markdown: a table and the two findings.
    pub fn markdown(&self) -> String {
        let pct = |v: f64| format!("{:.1}%", v * 100.0);
        let mut s = String::from(
            "## EM across checkpoints\n\n| step | checkpoint | EM | 95% interval | vs first | p |\n|---:|---|---:|---|---:|---:|\n",
        );
        for p in &self.points {
            let (rate, ci) = match &p.rate {
                Some(r) => (
                    format!("{} ({}/{})", pct(r.value), p.successes, p.n),
                    format!("[{}, {}]", pct(r.low), pct(r.high)),
                ),
                None => ("–".into(), "–".into()),
            };
            let (diff, pv) = match &p.vs_first {
                Some(d) => (format!("{:+.1} pts", d.diff * 100.0), format!("{:.3}", d.p)),
                None => ("–".into(), "–".into()),
            };
            s.push_str(&format!(
                "| {} | {} | {rate} | {ci} | {diff} | {pv} |\n",
                p.step,
                p.input.display()
            ));
        }
        s.push('\n');
        match self.first_significant {
            Some(i) => s.push_str(&format!(
                "First checkpoint whose EM differs from the first's (p < {}): step {} ({}).\n",
                self.alpha,
                self.points[i].step,
                self.points[i].input.display()
            )),
            None => s.push_str(&format!(
                "No checkpoint's EM differs from the first's at p < {}.\n",
                self.alpha
            )),
        }
        if let Some(c) = &self.change_point {
            s.push_str(&format!(
                "Change-point (the split into two constant rates with the largest likelihood ratio): \
                 from step {}, EM {} before and {} after (log-likelihood ratio {:.2}).\n",
                self.points[c.index].step,
                pct(c.before),
                pct(c.after),
                c.llr
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_change_point_is_where_the_rate_jumps() {
        let counts = [(1, 50), (2, 50), (1, 50), (12, 50), (14, 50)];
        let c = change_point(&counts).unwrap();
        assert_eq!(c.index, 3);
        assert!((c.before - 4.0 / 150.0).abs() < 1e-12);
        assert!((c.after - 26.0 / 100.0).abs() < 1e-12);
        // By hand: ll(4,150) + ll(26,100) - ll(30,250).
        let ll = |x: f64, n: f64| x * (x / n).ln() + (n - x) * ((n - x) / n).ln();
        let expected = ll(4.0, 150.0) + ll(26.0, 100.0) - ll(30.0, 250.0);
        assert!((c.llr - expected).abs() < 1e-9);
        assert!(change_point(&[(1, 10)]).is_none());
    }

    #[test]
    fn steps_come_from_checkpoint_folders() {
        assert_eq!(step_of(Path::new("out/checkpoint-40")), Some(40));
        assert_eq!(step_of(Path::new("judged/checkpoint-7.csv")), Some(7));
        assert_eq!(step_of(Path::new("out/final")), None);
    }
}
