//! Adapter scalars: the rank-1 feature A·x (× scaling) of every adapted
//! projection at each answer token of a run's samples, run again through the
//! organism, with each answer's judge scores.

use std::collections::BTreeMap;
use std::path::Path;

use crate::forced::{run_forced, scalar_names, Forced, ForcedOptions};
use crate::load::Loaded;
use crate::summary::{pick_judge, read_tables, scored_samples};
use crate::EvalError;

/// One answer's scalars.
#[derive(Debug, Clone)]
pub struct AnswerScalars {
    /// `QUESTION/PARAPHRASE/SAMPLE`.
    pub id: String,
    pub question_id: String,
    pub category: String,
    /// The judge's scores by metric; `None` where it gave none.
    pub scores: BTreeMap<String, Option<f64>>,
    /// The answer's tokens, each decoded on its own.
    pub tokens: Vec<String>,
    /// Per feature (in [`ScalarTable::features`] order), a value per token.
    pub values: Vec<Vec<f32>>,
}

impl AnswerScalars {
    /// Per feature, the mean over the answer's tokens.
    pub fn means(&self) -> Vec<f64> {
        self.values
            .iter()
            .map(|v| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64)
            .collect()
    }
}

/// The scalars of a run's answers under one organism.
#[derive(Debug, Clone)]
pub struct ScalarTable {
    /// `L{layer}.{module}` per adapted projection.
    pub features: Vec<String>,
    /// The judge whose scores are joined, if the run was judged.
    pub judge: Option<String>,
    /// Every metric some answer has a score for.
    pub metrics: Vec<String>,
    pub answers: Vec<AnswerScalars>,
    /// Answers left out for being empty.
    pub empty: usize,
}

/// Runs every non-empty answer of `input` (a run directory or judged CSV)
/// through `loaded` (a model with rank-1 adapters) and records each
/// adapter's scalar per answer token, with `judge_id`'s scores (or the only judge's).
pub fn adapter_scalars(
    loaded: &mut Loaded,
    input: &Path,
    judge_id: Option<&str>,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ScalarTable, EvalError> {
    let (_, samples, judgments) = read_tables(input)?;
    let judge = if judgments.is_empty() {
        None
    } else {
        Some(pick_judge(&judgments, judge_id)?)
    };
    let scored = judge
        .as_deref()
        .map(|j| scored_samples(&samples, &judgments, j));
    let mut metrics: Vec<String> = judgments
        .iter()
        .filter(|j| Some(&j.judge_id) == judge.as_ref())
        .map(|j| j.metric.clone())
        .collect();
    metrics.sort();
    metrics.dedup();
    let kept: Vec<usize> = (0..samples.len())
        .filter(|&i| !samples[i].answer.trim().is_empty())
        .collect();
    let items: Vec<Forced> = kept
        .iter()
        .map(|&i| {
            let s = &samples[i];
            Forced {
                id: format!(
                    "{}/{}/{}",
                    s.question_id, s.paraphrase_index, s.sample_index
                ),
                system: s.system.clone(),
                prompt: s.prompt.clone(),
                answer: s.answer.clone(),
            }
        })
        .collect();
    let options = ForcedOptions {
        batch_size,
        activations: false,
        logprobs: false,
        scalars: true,
    };
    let outs = run_forced(loaded, &[], &items, options, progress)?;
    let features = scalar_names(&loaded.model);
    let mut answers = Vec::with_capacity(items.len());
    for ((&i, item), out) in kept.iter().zip(&items).zip(outs) {
        let s = &samples[i];
        let scores = metrics
            .iter()
            .map(|m| (m.clone(), scored.as_ref().and_then(|sc| sc[i].value(m))))
            .collect();
        let tokens = out
            .answer_ids
            .iter()
            .map(|&t| loaded.tokenizer.decode(&[t], false))
            .collect::<Result<Vec<_>, _>>()?;
        answers.push(AnswerScalars {
            id: item.id.clone(),
            question_id: s.question_id.clone(),
            category: s.category.clone(),
            scores,
            tokens,
            values: out.scalars,
        });
    }
    Ok(ScalarTable {
        features,
        judge,
        metrics,
        answers,
        empty: samples.len() - kept.len(),
    })
}
