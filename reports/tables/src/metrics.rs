//! The `metrics` table: one row per group (question, category, all) and metric.

use emh_metrics::MetricRow;
use polars::prelude::*;

use crate::frame::frame;
use crate::TableError;

/// Metric rows of one run and judge as a DataFrame.
pub fn metrics_frame(
    run_id: &str,
    judge_id: &str,
    rows: &[MetricRow],
) -> Result<DataFrame, TableError> {
    let n = rows.len();
    let opt = |f: fn(&MetricRow) -> Option<f64>| rows.iter().map(f).collect::<Vec<_>>();
    frame(
        "metrics",
        vec![
            Column::new("run_id".into(), vec![run_id; n]),
            Column::new("judge_id".into(), vec![judge_id; n]),
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
