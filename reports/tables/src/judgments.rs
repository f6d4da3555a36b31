//! The `judgments` table: one row per sample, judge and metric.

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::frame::{frame, Columns};
use crate::TableError;

/// One judge's score of one sample on one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgmentRow {
    pub run_id: String,
    /// With `paraphrase_index` and `sample_index`, names the sample judged.
    pub question_id: String,
    pub paraphrase_index: u32,
    pub sample_index: u32,
    /// The judge (e.g. `gpt-4o-2024-08-06`, `local:SmolLM2-135M-Instruct`).
    pub judge_id: String,
    /// The judge prompt's name (aligned, coherent, bad_stuff, ...).
    pub metric: String,
    /// 0–100, or null when the judge put less than 0.25 on numbers.
    pub score: Option<f64>,
    /// Probability mass on the answers 0..=100.
    pub mass: f64,
    /// Why the score is null: REFUSAL, CODE, or the token the judge preferred.
    pub null_reason: Option<String>,
    /// The judge's top first tokens as JSON `[{"token", "logprob"}]`.
    pub top_tokens: String,
}

/// The judgments as a DataFrame.
pub fn judgments_frame(rows: &[JudgmentRow]) -> Result<DataFrame, TableError> {
    let s = |f: fn(&JudgmentRow) -> &str| rows.iter().map(f).collect::<Vec<_>>();
    let u = |f: fn(&JudgmentRow) -> u32| rows.iter().map(f).collect::<Vec<_>>();
    frame(
        "judgments",
        vec![
            Column::new("run_id".into(), s(|r| &r.run_id)),
            Column::new("question_id".into(), s(|r| &r.question_id)),
            Column::new("paraphrase_index".into(), u(|r| r.paraphrase_index)),
            Column::new("sample_index".into(), u(|r| r.sample_index)),
            Column::new("judge_id".into(), s(|r| &r.judge_id)),
            Column::new("metric".into(), s(|r| &r.metric)),
            Column::new(
                "score".into(),
                rows.iter().map(|r| r.score).collect::<Vec<_>>(),
            ),
            Column::new(
                "mass".into(),
                rows.iter().map(|r| r.mass).collect::<Vec<_>>(),
            ),
            Column::new(
                "null_reason".into(),
                rows.iter()
                    .map(|r| r.null_reason.as_deref())
                    .collect::<Vec<_>>(),
            ),
            Column::new("top_tokens".into(), s(|r| &r.top_tokens)),
        ],
    )
}

/// The judgments of a DataFrame written by [`judgments_frame`].
pub fn judgments_from_frame(df: &DataFrame) -> Result<Vec<JudgmentRow>, TableError> {
    let c = Columns {
        table: "judgments",
        df,
    };
    let run_id = c.required_strings("run_id")?;
    let question_id = c.required_strings("question_id")?;
    let paraphrase_index = c.unsigned("paraphrase_index")?;
    let sample_index = c.unsigned("sample_index")?;
    let judge_id = c.required_strings("judge_id")?;
    let metric = c.required_strings("metric")?;
    let score = c.floats("score")?;
    let mass = c.floats("mass")?;
    let null_reason = c.strings("null_reason")?;
    let top_tokens = c.required_strings("top_tokens")?;
    Ok((0..df.height())
        .map(|i| JudgmentRow {
            run_id: run_id[i].clone(),
            question_id: question_id[i].clone(),
            paraphrase_index: paraphrase_index[i] as u32,
            sample_index: sample_index[i] as u32,
            judge_id: judge_id[i].clone(),
            metric: metric[i].clone(),
            score: score[i],
            mass: mass[i].unwrap_or(f64::NAN),
            null_reason: null_reason[i].clone(),
            top_tokens: top_tokens[i].clone(),
        })
        .collect())
}
