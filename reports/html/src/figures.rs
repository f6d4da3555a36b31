//! Which figures the inputs make, as chart data.

use std::collections::BTreeMap;

use emh_charts::{
    BarSeries, Bars, Chart, Heatmap, Interval, Line, Lines, PointSeries, Region, Scatter, Stroke,
};
use emh_experiment::{ConditionRow, Rate};
use emh_metrics::{MetricRow, Scope, Thresholds};

use crate::inputs::{Experiment, Inputs, Run};

/// One figure: its file stem, chart and what it shows, in words.
pub struct Planned {
    pub stem: String,
    pub chart: Chart,
    pub caption: String,
}

/// A file stem from a label: letters, digits, `-` and `_` only.
fn stem(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn interval(r: &MetricRow) -> Option<Interval> {
    Some(Interval {
        value: r.value?,
        low: r.ci_low?,
        high: r.ci_high?,
    })
}

fn rate(r: &Option<Rate>) -> Option<Interval> {
    let r = r.as_ref()?;
    Some(Interval {
        value: r.value?,
        low: r.low?,
        high: r.high?,
    })
}

fn triple(t: Option<(f64, f64, f64)>) -> Option<Interval> {
    t.map(|(value, low, high)| Interval { value, low, high })
}

/// Every figure the inputs make, in the page's order.
pub fn plan(inputs: &Inputs, t: &Thresholds) -> Vec<Planned> {
    let mut out = Vec::new();
    let judged: Vec<&Run> = inputs
        .runs
        .iter()
        .filter(|r| r.judge_id.is_some())
        .collect();
    if !judged.is_empty() {
        out.push(em_by_question(&judged));
        out.push(scatter("runs", &judged, t));
    }
    for e in &inputs.experiments {
        out.extend(experiment(e, t));
    }
    out.extend(directions(inputs));
    out.extend(inputs.probes.iter().map(probe));
    out.extend(inputs.trajectories.iter().flat_map(trajectory));
    out
}

fn exact(v: f64) -> Interval {
    Interval {
        value: v,
        low: v,
        high: v,
    }
}

fn probe(p: &crate::inputs::Probe) -> Planned {
    Planned {
        stem: format!("probe_{}", stem(&p.label)),
        chart: Chart::Bars(Bars {
            title: format!("{}: L1 probe coefficient per adapter", p.label),
            y_label: "coefficient (z-scored)".into(),
            categories: p.names.clone(),
            series: vec![BarSeries {
                name: "coefficient".into(),
                values: p.coef.iter().map(|&c| Some(exact(c))).collect(),
            }],
        }),
        caption: format!(
            "Coefficients of an L1-regularised logistic regression on each adapter's mean scalar A·x (z-scored), fit on all rows; 0 means the penalty dropped the adapter. Cross-validated ROC AUC {:.3} ± {:.3}, accuracy {:.3} ± {:.3} over {} folds.",
            p.auc.0, p.auc.1, p.accuracy.0, p.accuracy.1, p.folds
        ),
    }
}

fn trajectory(t: &crate::inputs::Trajectory) -> Vec<Planned> {
    let mut adapters: Vec<&str> = Vec::new();
    for a in &t.adapter {
        if !adapters.contains(&a.as_str()) {
            adapters.push(a);
        }
    }
    let lines = |value: &dyn Fn(usize) -> Option<f64>| -> Vec<Line> {
        adapters
            .iter()
            .map(|&a| Line {
                name: a.to_string(),
                stroke: Stroke::Solid,
                points: (0..t.step.len())
                    .filter(|&i| t.adapter[i] == a)
                    .filter_map(|i| Some((t.step[i], exact(value(i)?))))
                    .collect(),
            })
            .collect()
    };
    vec![
        Planned {
            stem: format!("{}_rotation", stem(&t.label)),
            chart: Chart::Lines(Lines {
                title: format!("{}: rotation of B between checkpoints", t.label),
                x_label: "training step".into(),
                y_label: "cos(B, previous B)".into(),
                lines: lines(&|i| t.cos_to_previous[i]),
                levels: Vec::new(),
            }),
            caption: "Cosine of each adapter's B with the previous checkpoint's, per training step: a dip is B turning, the phase transition of rank-1 organisms.".into(),
        },
        Planned {
            stem: format!("{}_b_norm", stem(&t.label)),
            chart: Chart::Lines(Lines {
                title: format!("{}: norm of B over training", t.label),
                x_label: "training step".into(),
                y_label: "‖B‖".into(),
                lines: lines(&|i| Some(t.b_norm[i])),
                levels: Vec::new(),
            }),
            caption: "The norm of each adapter's B vector at each checkpoint.".into(),
        },
    ]
}

fn em_by_question(runs: &[&Run]) -> Planned {
    let mut questions: Vec<String> = Vec::new();
    for r in runs {
        for m in r.metrics.iter().filter(|m| m.scope == Scope::Question) {
            if !questions.contains(&m.group) {
                questions.push(m.group.clone());
            }
        }
    }
    let series = runs
        .iter()
        .map(|r| {
            let find = |scope: Scope, group: &str| {
                r.metrics
                    .iter()
                    .find(|m| m.scope == scope && m.group == group && m.metric == "em_rate")
                    .and_then(interval)
            };
            let mut values: Vec<Option<Interval>> =
                questions.iter().map(|q| find(Scope::Question, q)).collect();
            values.push(find(Scope::Overall, "all"));
            BarSeries {
                name: r.label.clone(),
                values,
            }
        })
        .collect();
    let mut categories = questions;
    categories.push("all".into());
    Planned {
        stem: "em_by_question".into(),
        chart: Chart::Bars(Bars {
            title: "EM rate per question".into(),
            y_label: "EM rate".into(),
            categories,
            series,
        }),
        caption: "Share of answers that are misaligned and coherent, per question and over all questions, with Wilson 95% intervals; one bar per run.".into(),
    }
}

fn scatter(name: &str, runs: &[&Run], t: &Thresholds) -> Planned {
    let series = runs
        .iter()
        .map(|r| PointSeries {
            name: r.label.clone(),
            points: r
                .samples
                .iter()
                .filter_map(|(_, s)| Some((s.value("aligned")?, s.value("coherent")?)))
                .collect(),
        })
        .collect();
    Planned {
        stem: format!("scatter_{}", stem(name)),
        chart: Chart::Scatter(Scatter {
            title: "Aligned vs coherent, one point per answer".into(),
            x_label: "aligned (0-100)".into(),
            y_label: "coherent (0-100)".into(),
            x_range: (0.0, 100.0),
            y_range: (0.0, 100.0),
            series,
            region: Some(Region {
                label: format!(
                    "EM: aligned < {}, coherent > {}",
                    t.aligned_below, t.coherent_above
                ),
                x: (0.0, t.aligned_below),
                y: (t.coherent_above, 100.0),
            }),
        }),
        caption: "Each judged answer by its aligned and coherent scores; answers in the shaded quadrant count as emergently misaligned. Answers with a null score are left out.".into(),
    }
}

/// The axes a condition's name carries: `KEY=VALUE` parts after the model and intervention.
fn axes(condition: &str) -> BTreeMap<String, String> {
    condition
        .split("__")
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn experiment(e: &Experiment, t: &Thresholds) -> Vec<Planned> {
    let mut out = Vec::new();
    let names: Vec<String> = e.rows.iter().map(|r| r.condition.clone()).collect();
    let by_condition = |title: &str, y: &str, pick: &dyn Fn(&ConditionRow) -> Option<Interval>| {
        Chart::Bars(Bars {
            title: format!("{}: {title}", e.label),
            y_label: y.into(),
            categories: names.clone(),
            series: vec![BarSeries {
                name: y.into(),
                values: e.rows.iter().map(pick).collect(),
            }],
        })
    };
    if e.rows.iter().any(|r| r.em.is_some()) {
        out.push(Planned {
            stem: format!("{}_em", stem(&e.label)),
            chart: by_condition("EM rate per condition", "EM rate", &|r| rate(&r.em)),
            caption: "EM rate of each condition with its Wilson 95% interval: the condition without interventions, each intervention and its same-norm random control.".into(),
        });
    }
    if e.rows.iter().any(|r| r.logprob_pref.is_some()) {
        out.push(Planned {
            stem: format!("{}_logprob", stem(&e.label)),
            chart: by_condition(
                "log-prob preference for misaligned answers",
                "log-prob preference (nats/token)",
                &|r| triple(r.logprob_pref),
            ),
            caption: "Judge-free effect measure: mean per-token log-probability of the misaligned answer minus the aligned one over labelled pairs, with Student-t 95% intervals. Above zero the condition prefers misaligned answers.".into(),
        });
    }
    if e.rows.iter().any(|r| r.nudge.is_some()) {
        out.extend(sensitivity(e, &names));
    }
    if e.rows
        .iter()
        .any(|r| axes(&r.condition).contains_key("scale"))
    {
        out.extend(sweep(e));
    }
    let judged: Vec<&Run> = e.runs.iter().filter(|r| r.judge_id.is_some()).collect();
    if !judged.is_empty() && judged.len() <= 12 {
        out.push(scatter(&e.label, &judged, t));
    }
    out
}

/// Reads one measure of a condition.
type Pick = fn(&ConditionRow) -> Option<Interval>;

/// A grid with nudges: the rates that move with the prompt, side by side
/// per condition, and the self-rating correlation.
fn sensitivity(e: &Experiment, names: &[String]) -> Vec<Planned> {
    let measures: [(&str, Pick); 5] = [
        ("EM", |r| rate(&r.em)),
        ("refusal", |r| rate(&r.refusal)),
        ("accuracy before pushback", |r| rate(&r.accuracy_before)),
        ("accuracy after pushback", |r| rate(&r.accuracy_after)),
        ("flip (correct → incorrect)", |r| rate(&r.flip)),
    ];
    let series: Vec<BarSeries> = measures
        .iter()
        .filter(|(_, pick)| e.rows.iter().any(|r| pick(r).is_some()))
        .map(|(name, pick)| BarSeries {
            name: name.to_string(),
            values: e.rows.iter().map(pick).collect(),
        })
        .collect();
    let mut out = Vec::new();
    if !series.is_empty() {
        out.push(Planned {
            stem: format!("{}_nudges", stem(&e.label)),
            chart: Chart::Bars(Bars {
                title: format!("{}: rates per condition and nudge", e.label),
                y_label: "rate".into(),
                categories: names.to_vec(),
                series,
            }),
            caption: "Per condition (MODEL__INTERVENTION__NUDGE): EM rate and refusal rate (judged), factual accuracy before and after the scripted pushback and the flip rate (reference match), each with its Wilson 95% interval.".into(),
        });
    }
    if e.rows.iter().any(|r| r.self_rating_spearman.is_some()) {
        let n = e
            .rows
            .iter()
            .filter_map(|r| r.self_rating_spearman.as_ref().map(|s| s.n))
            .max()
            .unwrap_or(0);
        out.push(Planned {
            stem: format!("{}_self_rating", stem(&e.label)),
            chart: Chart::Bars(Bars {
                title: format!("{}: self-rating vs misaligned rate", e.label),
                y_label: "Spearman ρ".into(),
                categories: names.to_vec(),
                series: vec![BarSeries {
                    name: "ρ".into(),
                    // ρ without an interval (n ≤ 3) is still drawn, as a bar alone.
                    values: e
                        .rows
                        .iter()
                        .map(|r| {
                            let rho = r.self_rating_spearman.as_ref()?;
                            rate(&r.self_rating_spearman).or(rho.value.map(exact))
                        })
                        .collect(),
                }],
            }),
            caption: format!("Spearman ρ, across questions (up to {n}), between the model's own 0–100 rating of how harmful each question is and its misaligned-answer rate on it, with a Fisher-z 95% interval (none with 3 questions or fewer); above zero, the questions it rates as harmful are those it answers misaligned."),
        });
    }
    out
}

/// EM, coherence and preference against λ: one line per intervention and
/// other axes (the layer), controls dashed, the plain condition as a level.
fn sweep(e: &Experiment) -> Vec<Planned> {
    let metrics: [(&str, &str, Pick); 3] = [
        ("em", "EM rate", |r| rate(&r.em)),
        ("coherence", "coherence rate", |r| rate(&r.coherence)),
        ("logprob", "log-prob preference (nats/token)", |r| {
            triple(r.logprob_pref)
        }),
    ];
    let mut out = Vec::new();
    for (key, label, pick) in metrics {
        let mut lines: BTreeMap<String, Line> = BTreeMap::new();
        let mut levels = Vec::new();
        for r in &e.rows {
            let mut ax = axes(&r.condition);
            let Some(v) = pick(r) else { continue };
            let Some(scale) = ax.remove("scale") else {
                if ax.is_empty() {
                    levels.push((format!("{} (no intervention)", r.model), v.value));
                }
                continue;
            };
            let Ok(x) = scale.parse::<f64>() else {
                continue;
            };
            let rest: Vec<String> = ax.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let name = format!("{} {}", r.intervention, rest.join(" "));
            let control = r.intervention.contains("random");
            lines
                .entry(name.clone())
                .or_insert_with(|| Line {
                    name: name.trim().to_string(),
                    stroke: if control {
                        Stroke::Dashed
                    } else {
                        Stroke::Solid
                    },
                    points: Vec::new(),
                })
                .points
                .push((x, v));
        }
        if lines.is_empty() {
            continue;
        }
        let mut lines: Vec<Line> = lines.into_values().collect();
        for l in &mut lines {
            l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        out.push(Planned {
            stem: format!("{}_sweep_{key}", stem(&e.label)),
            chart: Chart::Lines(Lines {
                title: format!("{}: {label} vs λ", e.label),
                x_label: "λ (steering scale)".into(),
                y_label: label.into(),
                lines,
                levels,
            }),
            caption: format!("{label} against the steering scale λ, per layer: the direction (solid) beside a random vector of the same norm (dashed), with 95% intervals; the grey line is the condition without interventions."),
        });
    }
    out
}

fn directions(inputs: &Inputs) -> Vec<Planned> {
    let mut out = Vec::new();
    let finite = |c: f64| c.is_finite().then_some(c);
    for d in &inputs.directions {
        let n = d.set.layers();
        let mut cells = vec![vec![None; n]; n];
        for c in emh_directions::within(&d.set) {
            cells[c.layer_a][c.layer_b] = finite(c.cosine);
        }
        out.push(Planned {
            stem: format!("cosine_{}", stem(&d.label)),
            chart: Chart::Heatmap(Heatmap {
                title: format!("{}: cosine between layers' directions", d.label),
                x_label: "layer".into(),
                y_label: "layer".into(),
                cells,
                range: (-1.0, 1.0),
            }),
            caption: "Cosine similarity of the direction at every pair of layers (grey: a layer without a direction).".into(),
        });
    }
    if let [first, rest @ ..] = inputs.directions.as_slice() {
        let lines: Vec<Line> = rest
            .iter()
            .filter_map(|d| {
                emh_directions::between(&first.set, &d.set)
                    .ok()
                    .map(|rows| (d, rows))
            })
            .map(|(d, rows)| Line {
                name: format!("{} vs {}", first.label, d.label),
                stroke: Stroke::Solid,
                points: rows
                    .iter()
                    .filter_map(|c| {
                        let v = finite(c.cosine)?;
                        Some((
                            c.layer_a as f64,
                            Interval {
                                value: v,
                                low: v,
                                high: v,
                            },
                        ))
                    })
                    .collect(),
            })
            .collect();
        if !lines.is_empty() {
            out.push(Planned {
                stem: "cosine_between".into(),
                chart: Chart::Lines(Lines {
                    title: "Cosine between direction sets, layer by layer".into(),
                    x_label: "layer".into(),
                    y_label: "cosine".into(),
                    lines,
                    levels: Vec::new(),
                }),
                caption: "Cosine of the first direction file's direction with each other file's, at the same layer.".into(),
            });
        }
    }
    out
}
