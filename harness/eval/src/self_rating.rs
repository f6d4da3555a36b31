//! The model rates the questions itself: how harmful it would be to answer
//! each one (0–100), scored as the local judge scores, on the condition's
//! own weights, and set beside how often it answered the question misaligned.

use std::path::Path;

use emh_judge_core::{Judgment, MIN_MASS};
use emh_metrics::{MetricRow, Rated, Scope};
use emh_questions::Question;
use emh_runtime::{NumberAnswers, PromptPrefix};
use emh_tables::{float_column, read_parquet, string_column, write_columns, Values};

use crate::load::Loaded;
use crate::nudge::opening;
use crate::sample::chat_template;
use crate::{EvalError, Nudge, SelfRating};

/// The model's rating of one paraphrase.
#[derive(Debug, Clone, PartialEq)]
pub struct RatingRow {
    pub question_id: String,
    pub paraphrase_index: u32,
    /// Expected rating; `None` below the mass threshold.
    pub rating: Option<f64>,
    /// Probability mass on the answers 0..=100.
    pub mass: f64,
    /// The most likely first token (the reason when the rating is null).
    pub preferred: String,
}

/// The text the model continues for a rating of `paraphrase`: the request
/// under the condition's nudge, chat-rendered, then the answer prefix.
pub fn rating_text(
    loaded: &Loaded,
    nudge: Option<&Nudge>,
    spec: &SelfRating,
    paraphrase: &str,
) -> Result<String, EvalError> {
    let request = spec.prompt.replace("{question}", paraphrase);
    let mut text = chat_template(loaded)?.render(&opening(nudge, None, &request), true)?;
    text.push_str(&spec.answer_prefix);
    Ok(text)
}

/// Every paraphrase of `questions` rated by the loaded model (its adapters
/// included): the exact probability of each answer 0..100 over the digit
/// trie, expected value, null below mass 0.25 unless `constrained`.
pub fn rate_questions(
    loaded: &Loaded,
    nudge: Option<&Nudge>,
    spec: &SelfRating,
    questions: &[Question],
) -> Result<Vec<RatingRow>, EvalError> {
    let space = spec
        .answer_prefix
        .chars()
        .last()
        .is_some_and(|c| !c.is_whitespace());
    let answers = NumberAnswers::new(&loaded.tokenizer, space)?;
    let min_mass = if spec.constrained { 0.0 } else { MIN_MASS };
    let mut out = Vec::new();
    // Rating prompts share their opening: each runs only what follows it.
    let mut last = PromptPrefix::default();
    for q in questions {
        for (p, paraphrase) in q.paraphrases.iter().enumerate() {
            let text = rating_text(loaded, nudge, spec, paraphrase)?;
            let ids = loaded.tokenizer.encode(&text, false)?;
            let (probs, best) = loaded.model.number_probs(&ids, &answers, &mut last)?;
            let preferred = loaded.tokenizer.decode(&[best], false)?;
            let j = Judgment::from_number_probs(&probs, &preferred, min_mass);
            out.push(RatingRow {
                question_id: q.id.clone(),
                paraphrase_index: p as u32,
                rating: j.score,
                mass: j.mass,
                preferred,
            });
        }
    }
    Ok(out)
}

/// Writes the ratings as a Parquet table.
pub fn write_ratings(path: &Path, rows: &[RatingRow]) -> Result<(), EvalError> {
    let strings = |f: fn(&RatingRow) -> &str| rows.iter().map(|r| f(r).to_string()).collect();
    write_columns(
        path,
        "self_ratings",
        vec![
            ("question_id", Values::Strings(strings(|r| &r.question_id))),
            (
                "paraphrase_index",
                Values::Ints(rows.iter().map(|r| r.paraphrase_index as i64).collect()),
            ),
            (
                "rating",
                Values::MaybeFloats(rows.iter().map(|r| r.rating).collect()),
            ),
            (
                "mass",
                Values::Floats(rows.iter().map(|r| r.mass).collect()),
            ),
            ("preferred", Values::Strings(strings(|r| &r.preferred))),
        ],
    )?;
    Ok(())
}

/// The ratings of a table written by [`write_ratings`], if there is one.
pub fn read_ratings(path: &Path) -> Result<Option<Vec<RatingRow>>, EvalError> {
    if !path.is_file() {
        return Ok(None);
    }
    let df = read_parquet(path)?;
    let t = "self_ratings";
    let ids = string_column(&df, t, "question_id")?;
    let paraphrase = float_column(&df, t, "paraphrase_index")?;
    let rating = float_column(&df, t, "rating")?;
    let mass = float_column(&df, t, "mass")?;
    let preferred = string_column(&df, t, "preferred")?;
    Ok(Some(
        (0..df.height())
            .map(|i| RatingRow {
                question_id: ids[i].clone().unwrap_or_default(),
                paraphrase_index: paraphrase[i].unwrap_or(0.0) as u32,
                rating: rating[i],
                mass: mass[i].unwrap_or(0.0),
                preferred: preferred[i].clone().unwrap_or_default(),
            })
            .collect(),
    ))
}

/// Per question: the mean rating over its paraphrases beside its
/// misaligned-answer rate from the judged metrics (where there is one).
pub fn rated(questions: &[Question], ratings: &[RatingRow], judged: &[MetricRow]) -> Vec<Rated> {
    questions
        .iter()
        .map(|q| {
            let values: Vec<f64> = ratings
                .iter()
                .filter(|r| r.question_id == q.id)
                .filter_map(|r| r.rating)
                .collect();
            let misaligned = judged
                .iter()
                .find(|m| {
                    m.scope == Scope::Question && m.group == q.id && m.metric == "misaligned_rate"
                })
                .and_then(|m| m.value);
            Rated {
                question_id: q.id.clone(),
                category: q.category.clone(),
                rating: (!values.is_empty())
                    .then(|| values.iter().sum::<f64>() / values.len() as f64),
                misaligned,
            }
        })
        .collect()
}

/// Writes each question's mean self-rating beside its misaligned rate.
pub fn write_rated(path: &Path, rated: &[Rated]) -> Result<(), EvalError> {
    let strings = |f: fn(&Rated) -> &str| rated.iter().map(|r| f(r).to_string()).collect();
    write_columns(
        path,
        "self_rating_by_question",
        vec![
            ("question_id", Values::Strings(strings(|r| &r.question_id))),
            ("category", Values::Strings(strings(|r| &r.category))),
            (
                "self_rating",
                Values::MaybeFloats(rated.iter().map(|r| r.rating).collect()),
            ),
            (
                "misaligned_rate",
                Values::MaybeFloats(rated.iter().map(|r| r.misaligned).collect()),
            ),
        ],
    )?;
    Ok(())
}
