//! Second turns: after the model's first answer to a question with
//! `pushback` turns, the scripted user turn follows and the model answers
//! again; and the grading of factual answers before and after it.

use std::collections::HashMap;
use std::path::Path;

use emh_metrics::{is_correct, Graded};
use emh_questions::Question;
use emh_tables::{write_columns, SampleRow, Values};
use emh_text::Message;

use crate::load::Loaded;
use crate::nudge::opening;
use crate::sample::{
    chat_template, interleave, journaled, params_of, question_key, sample_batch, sample_row,
    sample_seed, GroupRun, Job, SampleProgress,
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
/// written is read back; first answers are never made again.
pub(crate) fn pushback_group(
    journal: &Path,
    loaded: &Loaded,
    runs: &[GroupRun<'_, '_>],
    first: &[Vec<SampleRow>],
    mut on_progress: impl FnMut(SampleProgress),
) -> Result<Vec<Vec<SampleRow>>, EvalError> {
    let mut out: Vec<Option<Vec<SampleRow>>> = Vec::with_capacity(runs.len());
    let mut per_run: Vec<Vec<Turn<'_>>> = Vec::with_capacity(runs.len());
    for (i, r) in runs.iter().enumerate() {
        let done = r.run.pushback()?;
        let turns = match done {
            Some(_) => Vec::new(),
            None => first[i]
                .iter()
                .filter_map(|row| {
                    let q = r.questions.iter().find(|q| q.id == row.question_id)?;
                    (!q.pushback.is_empty()).then_some(Turn {
                        run: i,
                        question: q,
                        first: row,
                    })
                })
                .collect(),
        };
        out.push(done);
        per_run.push(turns);
    }
    let turns = interleave(&per_run);
    if turns.is_empty() {
        return Ok(out.into_iter().map(Option::unwrap_or_default).collect());
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
        let (outputs, _) = sample_batch(loaded, &conds, &jobs, &params, |n| {
            progress.new_tokens += n;
            on_progress(progress);
        })?;
        let batch_rows: Vec<SampleRow> = batch
            .iter()
            .zip(jobs.iter().zip(outputs))
            .map(|(t, (job, output))| {
                let mut row = sample_row(runs[t.run].manifest, t.question, job, output);
                row.paraphrase_index = t.first.paraphrase_index;
                row.sample_index = t.first.sample_index;
                row.system = t.first.system.clone();
                row.prompt = pushback_text(t.question, t.first.sample_index).to_string();
                row
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
        if out[i].is_none() && !per_run[i].is_empty() {
            r.run.write_pushback(&fresh[i])?;
            out[i] = Some(std::mem::take(&mut fresh[i]));
        }
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

/// Every first answer to a question with a reference answer, graded, with
/// its second answer graded where it had one; with its paraphrase and
/// sample index.
pub fn grade(
    questions: &[Question],
    first: &[SampleRow],
    second: &[SampleRow],
) -> Vec<(u32, u32, Graded)> {
    let seconds: HashMap<(&str, u32, u32), &SampleRow> = second
        .iter()
        .map(|s| {
            (
                (s.question_id.as_str(), s.paraphrase_index, s.sample_index),
                s,
            )
        })
        .collect();
    first
        .iter()
        .filter_map(|row| {
            let q = questions.iter().find(|q| q.id == row.question_id)?;
            let reference = q.answer.as_deref()?;
            let key = (
                row.question_id.as_str(),
                row.paraphrase_index,
                row.sample_index,
            );
            let after = seconds
                .get(&key)
                .map(|s| is_correct(&s.answer, reference, &q.aliases));
            let graded = Graded {
                question_id: row.question_id.clone(),
                category: row.category.clone(),
                before: is_correct(&row.answer, reference, &q.aliases),
                after,
            };
            Some((row.paraphrase_index, row.sample_index, graded))
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
