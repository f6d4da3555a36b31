//! The `samples` table: one row per generated answer.

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::frame::{frame, Columns};
use crate::TableError;

/// One answer of a model to one paraphrase of a question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    /// The run (condition) the sample belongs to.
    pub run_id: String,
    /// The model, as named on the command line.
    pub model_id: String,
    /// Adapters applied, comma-separated (`""` for none).
    pub adapter_ids: String,
    /// Interventions and organism, `name=config` joined by `;` (`""` for none).
    pub intervention_ids: String,
    pub question_id: String,
    pub category: String,
    pub paraphrase_index: u32,
    pub sample_index: u32,
    /// The sampling seed of this answer alone.
    pub seed: u64,
    /// The system prompt as sent (a nudge's and the question's own), if any.
    pub system: Option<String>,
    /// The question (the paraphrase text, without a nudge's prefix or suffix).
    pub prompt: String,
    pub answer: String,
    pub prompt_tokens: u32,
    pub answer_tokens: u32,
    /// `eos`, `stop` or `length`.
    pub finish_reason: String,
}

/// The samples as a DataFrame.
pub fn samples_frame(rows: &[SampleRow]) -> Result<DataFrame, TableError> {
    let s = |f: fn(&SampleRow) -> &str| rows.iter().map(f).collect::<Vec<_>>();
    let u = |f: fn(&SampleRow) -> u32| rows.iter().map(f).collect::<Vec<_>>();
    frame(
        "samples",
        vec![
            Column::new("run_id".into(), s(|r| &r.run_id)),
            Column::new("model_id".into(), s(|r| &r.model_id)),
            Column::new("adapter_ids".into(), s(|r| &r.adapter_ids)),
            Column::new("intervention_ids".into(), s(|r| &r.intervention_ids)),
            Column::new("question_id".into(), s(|r| &r.question_id)),
            Column::new("category".into(), s(|r| &r.category)),
            Column::new("paraphrase_index".into(), u(|r| r.paraphrase_index)),
            Column::new("sample_index".into(), u(|r| r.sample_index)),
            Column::new(
                "seed".into(),
                rows.iter().map(|r| r.seed).collect::<Vec<_>>(),
            ),
            Column::new(
                "system".into(),
                rows.iter().map(|r| r.system.as_deref()).collect::<Vec<_>>(),
            ),
            Column::new("prompt".into(), s(|r| &r.prompt)),
            Column::new("answer".into(), s(|r| &r.answer)),
            Column::new("prompt_tokens".into(), u(|r| r.prompt_tokens)),
            Column::new("answer_tokens".into(), u(|r| r.answer_tokens)),
            Column::new("finish_reason".into(), s(|r| &r.finish_reason)),
        ],
    )
}

/// The samples of a DataFrame written by [`samples_frame`].
pub fn samples_from_frame(df: &DataFrame) -> Result<Vec<SampleRow>, TableError> {
    let c = Columns {
        table: "samples",
        df,
    };
    let run_id = c.required_strings("run_id")?;
    let model_id = c.required_strings("model_id")?;
    let adapter_ids = c.required_strings("adapter_ids")?;
    let intervention_ids = c.required_strings("intervention_ids")?;
    let question_id = c.required_strings("question_id")?;
    let category = c.required_strings("category")?;
    let paraphrase_index = c.unsigned("paraphrase_index")?;
    let sample_index = c.unsigned("sample_index")?;
    let seed = c.unsigned("seed")?;
    let system = c.strings("system")?;
    let prompt = c.required_strings("prompt")?;
    let answer = c.required_strings("answer")?;
    let prompt_tokens = c.unsigned("prompt_tokens")?;
    let answer_tokens = c.unsigned("answer_tokens")?;
    let finish_reason = c.required_strings("finish_reason")?;
    Ok((0..df.height())
        .map(|i| SampleRow {
            run_id: run_id[i].clone(),
            model_id: model_id[i].clone(),
            adapter_ids: adapter_ids[i].clone(),
            intervention_ids: intervention_ids[i].clone(),
            question_id: question_id[i].clone(),
            category: category[i].clone(),
            paraphrase_index: paraphrase_index[i] as u32,
            sample_index: sample_index[i] as u32,
            seed: seed[i],
            system: system[i].clone(),
            prompt: prompt[i].clone(),
            answer: answer[i].clone(),
            prompt_tokens: prompt_tokens[i] as u32,
            answer_tokens: answer_tokens[i] as u32,
            finish_reason: finish_reason[i].clone(),
        })
        .collect())
}
