//! Adapter scalars: the rank-1 feature A·x (× scaling) of every adapted
//! projection at each answer token of a run's samples, run again through the
//! organism, with each answer's judge scores.

use std::collections::BTreeMap;
use std::path::Path;

use crate::capture::{Pair, Side};
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
    /// Where the scores come from (a judge, the pairs' labels), if anywhere.
    pub judge: Option<String>,
    /// Every metric some answer has a score for.
    pub metrics: Vec<String>,
    pub answers: Vec<AnswerScalars>,
    /// Answers left out for being empty.
    pub empty: usize,
}

/// Answers to read scalars over, with what is known of each.
#[derive(Debug, Clone)]
pub struct ScalarInputs {
    pub items: Vec<Forced>,
    pub question_ids: Vec<String>,
    pub categories: Vec<String>,
    /// Per item, a value per metric of `metrics` (`None`: no score).
    pub scores: Vec<Vec<Option<f64>>>,
    pub metrics: Vec<String>,
    /// Where the scores come from: a judge, or the pairs' labels.
    pub scored_by: Option<String>,
    /// Answers left out for being empty.
    pub empty: usize,
}

impl ScalarInputs {
    /// The non-empty answers of a run directory or judged CSV, with
    /// `judge_id`'s scores (or the only judge's; none if it is not judged).
    pub fn from_run(input: &Path, judge_id: Option<&str>) -> Result<Self, EvalError> {
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
        Ok(ScalarInputs {
            items: kept
                .iter()
                .map(|&i| Forced::from_sample(&samples[i]))
                .collect(),
            question_ids: kept
                .iter()
                .map(|&i| samples[i].question_id.clone())
                .collect(),
            categories: kept.iter().map(|&i| samples[i].category.clone()).collect(),
            scores: kept
                .iter()
                .map(|&i| {
                    metrics
                        .iter()
                        .map(|m| scored.as_ref().and_then(|sc| sc[i].value(m)))
                        .collect()
                })
                .collect(),
            metrics,
            scored_by: judge,
            empty: samples.len() - kept.len(),
        })
    }

    /// Both answers of every labelled pair (`ID/misaligned`, `ID/aligned`),
    /// labelled by a `misaligned` score of 1 or 0; the category is the pair's domain.
    pub fn from_pairs(pairs: &[Pair]) -> Self {
        let all: Vec<(&Pair, Side)> = pairs
            .iter()
            .flat_map(|p| [(p, Side::Misaligned), (p, Side::Aligned)])
            .collect();
        let label = |side: Side| match side {
            Side::Misaligned => "misaligned",
            Side::Aligned => "aligned",
        };
        ScalarInputs {
            items: all
                .iter()
                .map(|&(p, side)| Forced {
                    id: format!("{}/{}", p.id, label(side)),
                    ..p.forced(side)
                })
                .collect(),
            question_ids: all.iter().map(|(p, _)| p.id.clone()).collect(),
            categories: all
                .iter()
                .map(|(p, _)| p.domain.clone().unwrap_or_default())
                .collect(),
            scores: all
                .iter()
                .map(|&(_, side)| vec![Some(f64::from(u8::from(side == Side::Misaligned)))])
                .collect(),
            metrics: vec!["misaligned".into()],
            scored_by: Some("the pairs' labels".into()),
            empty: 0,
        }
    }
}

/// Runs every answer of `inputs` through `loaded` (a model with rank-1
/// adapters) and records each adapter's scalar per answer token.
pub fn adapter_scalars(
    loaded: &mut Loaded,
    inputs: ScalarInputs,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ScalarTable, EvalError> {
    let options = ForcedOptions {
        batch_size,
        activations: false,
        logprobs: false,
        scalars: true,
    };
    let outs = run_forced(loaded, &[], &inputs.items, options, progress)?;
    let features = scalar_names(&loaded.model);
    let mut answers = Vec::with_capacity(outs.len());
    for (k, out) in outs.into_iter().enumerate() {
        let tokens = out
            .answer_ids
            .iter()
            .map(|&t| loaded.tokenizer.decode(&[t], false))
            .collect::<Result<Vec<_>, _>>()?;
        answers.push(AnswerScalars {
            id: inputs.items[k].id.clone(),
            question_id: inputs.question_ids[k].clone(),
            category: inputs.categories[k].clone(),
            scores: inputs
                .metrics
                .iter()
                .cloned()
                .zip(inputs.scores[k].iter().copied())
                .collect(),
            tokens,
            values: out.scalars,
        });
    }
    Ok(ScalarTable {
        features,
        judge: inputs.scored_by,
        metrics: inputs.metrics,
        answers,
        empty: inputs.empty,
    })
}
