//! `emh capture`: the residual stream over the exact answer spans of chosen
//! answers (judged samples of a run or CSV, or one side of labelled pairs),
//! run again through a condition, written as a capture file.
//!
//! The file has the layout of a run's `activations/NAME.safetensors` (a run's
//! own file has `prompt_last` instead of `prompt_mean`, and its `answer_mean`
//! is over the generated tokens that went through the model): for every layer L,
//! - `resid_post.L.answer_mean` `[n, hidden]`: mean over the answer's content tokens;
//! - `resid_post.L.prompt_mean` `[n, hidden]`: mean over the prompt's tokens
//!   (chat template and assistant header included);
//! - `resid_post.L.answer_tokens` `[n]` (i64): how many tokens the answer mean is over;
//!
//! and metadata: `ids` (JSON list), `model`, `adapters`, `interventions`,
//! `source`, `selection`, `count`, `span`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::Dtype;
use serde::Deserialize;

use crate::activations::{f32_bytes, write_file};
use crate::forced::{Forced, ForcedOut};
use crate::select::Selection;
use crate::summary::{pick_judge, read_tables, scored_samples};
use crate::EvalError;

/// A labelled pair: an aligned and a misaligned answer to one question.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Pair {
    pub id: String,
    #[serde(default)]
    pub domain: Option<String>,
    pub question: String,
    #[serde(default)]
    pub system: Option<String>,
    pub aligned: String,
    pub misaligned: String,
}

/// Which answer of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Aligned,
    Misaligned,
}

impl Pair {
    /// The pair's question with one of its answers.
    pub fn forced(&self, side: Side) -> Forced {
        Forced {
            id: self.id.clone(),
            system: self.system.clone(),
            prompt: self.question.clone(),
            answer: match side {
                Side::Aligned => self.aligned.clone(),
                Side::Misaligned => self.misaligned.clone(),
            },
        }
    }
}

/// Reads a JSONL file of pairs (`id`, `question`, `aligned`, `misaligned`,
/// optional `system` and `domain`); errors name the line.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let mut pairs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let pair: Pair = serde_json::from_str(line)
            .map_err(|e| EvalError::io(path, format!("line {}: {e}", i + 1)))?;
        if !seen.insert(pair.id.clone()) {
            return Err(EvalError::io(
                path,
                format!("line {}: id `{}` appears twice", i + 1, pair.id),
            ));
        }
        pairs.push(pair);
    }
    if pairs.is_empty() {
        return Err(EvalError::io(path, "no pairs in the file"));
    }
    Ok(pairs)
}

/// The answers of a run directory or judged CSV that `selection` picks
/// (every answer without one), scored by `judge_id` (or the only judge),
/// and how many picked answers were left out for being empty.
pub fn select_answers(
    input: &Path,
    selection: Option<&Selection>,
    judge_id: Option<&str>,
) -> Result<(Vec<Forced>, usize), EvalError> {
    let (_, samples, judgments) = read_tables(input)?;
    let scored = match selection {
        Some(sel) => {
            let judge = pick_judge(&judgments, judge_id)?;
            let known: std::collections::BTreeSet<&str> = judgments
                .iter()
                .filter(|j| j.judge_id == judge)
                .map(|j| j.metric.as_str())
                .collect();
            if let Some(m) = sel.metrics().iter().find(|m| !known.contains(m.as_str())) {
                return Err(EvalError::Spec {
                    field: "--select".into(),
                    reason: format!(
                        "no metric `{m}` in the judgments of {judge}; there are: {}",
                        known.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            Some(scored_samples(&samples, &judgments, &judge))
        }
        None => None,
    };
    let picked: Vec<&emh_tables::SampleRow> = samples
        .iter()
        .enumerate()
        .filter(|(i, _)| match (selection, &scored) {
            (Some(sel), Some(scored)) => sel.matches(&scored[*i]),
            _ => true,
        })
        .map(|(_, s)| s)
        .collect();
    let empty = picked.iter().filter(|s| s.answer.trim().is_empty()).count();
    let items = picked
        .into_iter()
        .filter(|s| !s.answer.trim().is_empty())
        .map(Forced::from_sample)
        .collect();
    Ok((items, empty))
}

/// Writes what a forced pass with activations measured as a capture file;
/// `metadata` adds to the ids and span written here.
pub fn write_capture(
    path: &Path,
    items: &[Forced],
    outs: &[ForcedOut],
    mut metadata: HashMap<String, String>,
) -> Result<(), EvalError> {
    let layers = outs.first().map_or(0, |o| o.answer_mean.len());
    if layers == 0 {
        return Err(EvalError::io(path, "nothing was captured"));
    }
    let n = outs.len();
    let hidden = outs[0].answer_mean[0].len();
    let counts: Vec<u8> = outs
        .iter()
        .flat_map(|o| (o.answer_tokens as i64).to_le_bytes())
        .collect();
    let mut tensors = Vec::new();
    for l in 0..layers {
        for (part, pick) in [
            (
                "answer_mean",
                (|o: &ForcedOut, l: usize| &o.answer_mean[l]) as fn(&ForcedOut, usize) -> &Vec<f32>,
            ),
            ("prompt_mean", |o: &ForcedOut, l: usize| &o.prompt_mean[l]),
        ] {
            let values: Vec<f32> = outs
                .iter()
                .flat_map(|o| pick(o, l).iter().copied())
                .collect();
            tensors.push((
                format!("resid_post.{l}.{part}"),
                Dtype::F32,
                vec![n, hidden],
                f32_bytes(&values),
            ));
        }
        tensors.push((
            format!("resid_post.{l}.answer_tokens"),
            Dtype::I64,
            vec![n],
            counts.clone(),
        ));
    }
    let ids: Vec<&str> = items.iter().map(|f| f.id.as_str()).collect();
    metadata.insert(
        "ids".into(),
        serde_json::to_string(&ids).expect("strings serialise"),
    );
    metadata.insert("count".into(), n.to_string());
    metadata.insert(
        "span".into(),
        "answer_mean: the answer's content tokens (not the assistant header, not end-of-turn tokens); prompt_mean: every prompt token".into(),
    );
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| EvalError::io(parent, e))?;
    }
    write_file(path, tensors, metadata)
}
