//! The `metrics` table: one row per group (question, category, all) and metric.

use emh_metrics::MetricRow;
use polars::prelude::*;

use crate::frame::frame;
use crate::TableError;

/// Metric rows of one run as a DataFrame, each part's rows labelled with
/// what scored them (a judge id, `match`, `self:MODEL`).
pub fn metrics_frame(
    run_id: &str,
    parts: &[(String, Vec<MetricRow>)],
) -> Result<DataFrame, TableError> {
    let rows: Vec<&MetricRow> = parts.iter().flat_map(|(_, r)| r).collect();
    let judges: Vec<&str> = parts
        .iter()
        .flat_map(|(j, r)| std::iter::repeat_n(j.as_str(), r.len()))
        .collect();
    let n = rows.len();
    let opt = |f: fn(&MetricRow) -> Option<f64>| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    frame(
        "metrics",
        vec![
            Column::new("run_id".into(), vec![run_id; n]),
            Column::new("judge_id".into(), judges),
            Column::new(
                "scope".into(),
                rows.iter().map(|r| r.scope.to_string()).collect::<Vec<_>>(),
            ),
            Column::new(
                "group".into(),
                rows.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(),
            ),
            Column::new(
                "metric".into(),
                rows.iter().map(|r| r.metric.as_str()).collect::<Vec<_>>(),
            ),
            Column::new("value".into(), opt(|r| r.value)),
            Column::new(
                "successes".into(),
                rows.iter().map(|r| r.successes).collect::<Vec<_>>(),
            ),
            Column::new("n".into(), rows.iter().map(|r| r.n).collect::<Vec<_>>()),
            Column::new(
                "nulls".into(),
                rows.iter().map(|r| r.nulls).collect::<Vec<_>>(),
            ),
            Column::new("ci_low".into(), opt(|r| r.ci_low)),
            Column::new("ci_high".into(), opt(|r| r.ci_high)),
        ],
    )
}
