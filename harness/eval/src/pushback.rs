//! Second turns: after the model's first answer to a question with
//! `pushback` turns, the scripted user turn follows and the model answers
//! again; and the grading of factual answers before and after it.

use std::collections::HashMap;
use std::path::Path;

use emh_metrics::{is_correct, Graded};
use emh_questions::Question;
use emh_tables::{write_columns, JudgmentRow, SampleRow, Values};
use emh_text::Message;

use crate::group::{interleave, GroupRun, SampleProgress};
use crate::load::Loaded;
use crate::nudge::opening;
use crate::sample::{
    chat_template, journaled, params_of, question_key, sample_jobs, sample_row, sample_seed, Job,
    Sampled,
};
use crate::EvalError;

/// One answer to follow with a pushback turn.
#[derive(Clone, Copy)]
struct Turn<'a> {
    run: usize,
    question: &'a Question,
    first: &'a SampleRow,
}

/// The scripted user turn that follows sample `sample_index`.
fn pushback_text(q: &Question, sample_index: u32) -> &str {
    &q.pushback[sample_index as usize % q.pushback.len()]
}

/// The seed rule for second turns: the first turn's key with `/pushback`.
pub fn pushback_seed(seed: u64, question_id: &str, paraphrase: u32, sample: u32) -> u64 {
    let key = format!("{}/pushback", question_key(question_id, paraphrase));
    sample_seed(seed, &key, sample)
}

/// The whole conversation of a second turn, up to the model's next answer.
pub fn pushback_messages(
    nudge: Option<&crate::Nudge>,
    q: &Question,
    first: &SampleRow,
) -> Vec<Message> {
    let mut m = opening(
        nudge,
        q.system.as_deref(),
        &q.paraphrases[first.paraphrase_index as usize],
    );
    m.push(Message::new("assistant", &first.answer));
    m.push(Message::new("user", pushback_text(q, first.sample_index)));
    m
}

/// Samples the second turn of every first answer (`first`, per run) whose
/// question has pushback turns, in shared batches journaled under
/// `journal`, and writes each run's `pushback` table. A run whose table is
/// written is left as it is; first answers are never made again.
pub(crate) fn pushback_group(
    journal: &Path,
    loaded: &Loaded,
    runs: &[GroupRun<'_, '_>],
    first: &[Vec<SampleRow>],
    mut on_progress: impl FnMut(SampleProgress),
) -> Result<(), EvalError> {
    let per_run: Vec<Vec<Turn<'_>>> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if r.run.pushback_path().is_file() {
                return Vec::new();
            }
            first[i]
                .iter()
                .filter_map(|row| {
                    let q = r.questions.iter().find(|q| q.id == row.question_id)?;
                    (!q.pushback.is_empty()).then_some(Turn {
                        run: i,
                        question: q,
                        first: row,
                    })
                })
                .collect()
        })
        .collect();
    let turns = interleave(&per_run);
    if turns.is_empty() {
        return Ok(());
    }
    let s = &runs[0].manifest.spec.condition.sampling;
    let params = params_of(s)?;
    let template = chat_template(loaded)?;
    std::fs::create_dir_all(journal).map_err(|e| EvalError::io(journal, e))?;
    let conds: Vec<&[crate::Planned<'_>]> = runs.iter().map(|r| r.plans).collect();
    let mut progress = SampleProgress {
        total: turns.len(),
        ..Default::default()
    };
    let mut rows = Vec::with_capacity(turns.len());
    for (index, batch) in turns.chunks(s.batch_size.max(1)).enumerate() {
        let journal_file = journal.join(format!("{index:06}.json"));
        let keys = batch.iter().map(|t| {
            (
                t.first.run_id.as_str(),
                t.first.question_id.as_str(),
                t.first.paraphrase_index,
                t.first.sample_index,
            )
        });
        if let Some(done) = journaled(&journal_file, keys)? {
            progress.done += done.len();
            progress.resumed += done.len();
            rows.extend(done);
            on_progress(progress);
            continue;
        }
        let mut jobs = Vec::with_capacity(batch.len());
        for t in batch {
            let spec = &runs[t.run].manifest.spec.condition;
            let messages = pushback_messages(spec.nudge.as_ref(), t.question, t.first);
            let rendered = template.render(&messages, true)?;
            jobs.push(Job {
                cond: t.run,
                prompt: loaded.tokenizer.encode(&rendered, false)?,
                seed: pushback_seed(
                    spec.sampling.seed,
                    &t.question.id,
                    t.first.paraphrase_index,
                    t.first.sample_index,
                ),
            });
        }
        let (outputs, _) = sample_jobs(loaded, &conds, &jobs, &params, s.batch_size, |e| {
            if let Sampled::Step(n) = e {
                progress.new_tokens += n;
                on_progress(progress);
            }
            Ok(())
        })?;
        let batch_rows: Vec<SampleRow> = batch
            .iter()
            .zip(jobs.iter().zip(outputs))
            .map(|(t, (job, output))| {
                let at = (t.first.paraphrase_index, t.first.sample_index);
                let prompt = pushback_text(t.question, t.first.sample_index).to_string();
                let system = t.first.system.clone();
                sample_row(
                    runs[t.run].manifest,
                    t.question,
                    at,
                    system,
                    prompt,
                    job,
                    output,
                )
            })
            .collect();
        crate::run::write_json(&journal_file, &batch_rows)?;
        progress.done += batch_rows.len();
        rows.extend(batch_rows);
        on_progress(progress);
    }
    let mut fresh: Vec<Vec<SampleRow>> = runs.iter().map(|_| Vec::new()).collect();
    for (row, t) in rows.into_iter().zip(&turns) {
        fresh[t.run].push(row);
    }
    for (i, r) in runs.iter().enumerate() {
        if !per_run[i].is_empty() {
            r.run.write_pushback(&fresh[i])?;
        }
    }
    Ok(())
}

/// The judge metric that grades an answer against the question's
/// `answer` (its prompt may hold `{reference}`), 0–100.
pub const CORRECT: &str = "correct";

/// A sample's place: question, paraphrase, sample.
type Key = (String, u32, u32);

/// Judged `correct` scores of first and second answers; graded by them,
/// above `cut`, where there is one, else by reference match.
#[derive(Debug, Default)]
pub struct CorrectScores {
    pub first: HashMap<Key, f64>,
    pub second: HashMap<Key, f64>,
    pub cut: f64,
}

impl CorrectScores {
    /// The non-null `correct` scores of `judge_id` in each table.
    pub fn from_judgments(
        first: &[JudgmentRow],
        second: &[JudgmentRow],
        judge_id: &str,
        cut: f64,
    ) -> CorrectScores {
        let scores = |rows: &[JudgmentRow]| {
            rows.iter()
                .filter(|j| j.metric == CORRECT && j.judge_id == judge_id)
                .filter_map(|j| {
                    let key = (j.question_id.clone(), j.paraphrase_index, j.sample_index);
                    Some((key, j.score?))
                })
                .collect()
        };
        CorrectScores {
            first: scores(first),
            second: scores(second),
            cut,
        }
    }

    /// Whether any answer was graded by the judge.
    pub fn any(&self) -> bool {
        !self.first.is_empty() || !self.second.is_empty()
    }
}

/// Every first answer to a question with a reference answer, graded, with
/// its second answer graded where it had one; with its paraphrase and
/// sample index. A judged `correct` score decides where there is one.
pub fn grade(
    questions: &[Question],
    first: &[SampleRow],
    second: &[SampleRow],
    judged: &CorrectScores,
) -> Vec<(u32, u32, Graded)> {
    let key = |s: &SampleRow| (s.question_id.clone(), s.paraphrase_index, s.sample_index);
    let seconds: HashMap<Key, &SampleRow> = second.iter().map(|s| (key(s), s)).collect();
    first
        .iter()
        .filter_map(|row| {
            let q = questions.iter().find(|q| q.id == row.question_id)?;
            let reference = q.answer.as_deref()?;
            let graded = |s: &SampleRow, scores: &HashMap<Key, f64>| match scores.get(&key(s)) {
                Some(&score) => score > judged.cut,
                None => is_correct(&s.answer, reference, &q.aliases),
            };
            let after = seconds.get(&key(row)).map(|s| graded(s, &judged.second));
            let g = Graded {
                question_id: row.question_id.clone(),
                category: row.category.clone(),
                before: graded(row, &judged.first),
                after,
            };
            Some((row.paraphrase_index, row.sample_index, g))
        })
        .collect()
}

/// Writes graded answers as a table: 1/0 for correct/incorrect, null
/// `correct_after` and `flipped` where there was no second turn.
pub fn write_graded(path: &Path, graded: &[(u32, u32, Graded)]) -> Result<(), EvalError> {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    write_columns(
        path,
        "factual",
        vec![
            (
                "question_id",
                Values::Strings(graded.iter().map(|g| g.2.question_id.clone()).collect()),
            ),
            (
                "paraphrase_index",
                Values::Ints(graded.iter().map(|g| g.0 as i64).collect()),
            ),
            (
                "sample_index",
                Values::Ints(graded.iter().map(|g| g.1 as i64).collect()),
            ),
            (
                "correct_before",
                Values::Floats(graded.iter().map(|g| flag(g.2.before)).collect()),
            ),
            (
                "correct_after",
                Values::MaybeFloats(graded.iter().map(|g| g.2.after.map(flag)).collect()),
            ),
            (
                "flipped",
                Values::MaybeFloats(
                    graded
                        .iter()
                        .map(|g| g.2.after.map(|a| flag(g.2.before && !a)))
                        .collect(),
                ),
            ),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sample: u32, answer: &str) -> SampleRow {
        SampleRow {
            run_id: "r".into(),
            model_id: "m".into(),
            adapter_ids: String::new(),
            intervention_ids: String::new(),
            question_id: "capital".into(),
            category: "factual".into(),
            paraphrase_index: 0,
            sample_index: sample,
            seed: 0,
            system: None,
            prompt: "What is the capital of France?".into(),
            answer: answer.into(),
            prompt_tokens: 1,
            answer_tokens: 1,
            finish_reason: "eos".into(),
        }
    }

    #[test]
    fn answers_are_graded_by_match_unless_the_judge_scored_them() {
        let q = emh_questions::QuestionSet::parse(
            "- id: capital
  type: factual
  paraphrases: [x]
  answer: Paris
  pushback: [Sure?]
",
            "inline.yaml",
        )
        .unwrap()
        .questions;
        let first = [row(0, "Paris."), row(1, "It is Paris"), row(2, "Lyon")];
        let second = [row(0, "Sorry, it is Lyon."), row(1, "Yes, Paris.")];
        let by_match = grade(&q, &first, &second, &CorrectScores::default());
        let flags: Vec<(bool, Option<bool>)> =
            by_match.iter().map(|g| (g.2.before, g.2.after)).collect();
        assert_eq!(
            flags,
            [(true, Some(false)), (true, Some(true)), (false, None)]
        );
        // The judge's `correct` score decides where it has one: sample 1's
        // second answer scored 20 (below the cut of 50), sample 2's first 80.
        let scores = CorrectScores {
            first: [(("capital".to_string(), 0, 2), 80.0)].into(),
            second: [(("capital".to_string(), 0, 1), 20.0)].into(),
            cut: 50.0,
        };
        let judged = grade(&q, &first, &second, &scores);
        let flags: Vec<(bool, Option<bool>)> =
            judged.iter().map(|g| (g.2.before, g.2.after)).collect();
        assert_eq!(
            flags,
            [(true, Some(false)), (true, Some(false)), (true, None)]
        );
    }
}
