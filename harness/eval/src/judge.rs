//! Judging: every sample on every metric, through a judge plugin and its cache.

use std::collections::BTreeMap;

use emh_judge_core::{fill_prompt, NullReason};
use emh_plugin_api::JudgeUsage;
use emh_plugins::{Judge, JudgeProgress};
use emh_questions::Question;
use emh_tables::{JudgmentRow, SampleRow};

use crate::manifest::sha256_hex;
use crate::{EvalError, JudgeRecord, RunDir};

/// The text of a null reason as the tables hold it.
fn reason_text(r: &NullReason) -> String {
    match r {
        NullReason::Refusal => "REFUSAL".into(),
        NullReason::Code => "CODE".into(),
        NullReason::Other(t) => t.clone(),
    }
}

/// The judge prompt for `metric` of each question that has one, or an
/// error naming the metric and the prompts there are when none has it.
/// Questions without it (a factual item among open questions) are not
/// judged on that metric.
fn prompts_for<'q>(
    questions: &'q [Question],
    metric: &str,
) -> Result<BTreeMap<&'q str, &'q str>, EvalError> {
    let prompts: BTreeMap<&str, &str> = questions
        .iter()
        .filter_map(|q| {
            q.judge_prompts
                .get(metric)
                .map(|p| (q.id.as_str(), p.as_str()))
        })
        .collect();
    if prompts.is_empty() {
        let known: std::collections::BTreeSet<&str> = questions
            .iter()
            .flat_map(|q| q.judge_prompts.keys().map(String::as_str))
            .collect();
        return Err(EvalError::Judge {
            reason: format!(
                "no judge prompt `{metric}` in any question (they have: {})",
                known.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    Ok(prompts)
}

/// Fails, naming the metric, when no question has a judge prompt for it:
/// checked before sampling, so a misspelt metric does not wait for
/// generation to finish.
pub fn check_judge_prompts(questions: &[Question], metrics: &[String]) -> Result<(), EvalError> {
    for metric in metrics {
        prompts_for(questions, metric)?;
    }
    Ok(())
}

/// Judges every sample on every metric and merges the judgments into the
/// run's table (replacing this judge's earlier scores on these metrics).
/// Judgments land in the judge's cache batch by batch, so an interrupted
/// run resumes without asking again; if any prompt fails after every retry,
/// nothing is written and the error says how many, and which first.
pub fn judge(
    run: &RunDir,
    samples: &[SampleRow],
    questions: &[Question],
    judge: &Judge<'_>,
    metrics: &[String],
    on_progress: impl FnMut(JudgeProgress),
) -> Result<(Vec<JudgmentRow>, JudgeUsage, JudgeRecord), EvalError> {
    let (new_rows, usage, record) = judge_rows(samples, questions, judge, metrics, on_progress)?;
    let rows = replace_judgments(run.judgments()?, new_rows, &record.identity.id, metrics);
    run.write_judgments(&rows)?;
    Ok((rows, usage, record))
}

/// `old` judgments without judge `judge_id`'s on `metrics`, then `new`:
/// judging again replaces a judge's scores rather than adding to them.
pub(crate) fn replace_judgments(
    old: Vec<JudgmentRow>,
    new: Vec<JudgmentRow>,
    judge_id: &str,
    metrics: &[String],
) -> Vec<JudgmentRow> {
    let mut rows: Vec<JudgmentRow> = old
        .into_iter()
        .filter(|r| !(r.judge_id == judge_id && metrics.contains(&r.metric)))
        .collect();
    rows.extend(new);
    rows
}

/// Judges every sample on every metric its question has a prompt for
/// (`{reference}` in a prompt is the question's `answer`), writing nothing.
pub(crate) fn judge_rows(
    samples: &[SampleRow],
    questions: &[Question],
    judge: &Judge<'_>,
    metrics: &[String],
    on_progress: impl FnMut(JudgeProgress),
) -> Result<(Vec<JudgmentRow>, JudgeUsage, JudgeRecord), EvalError> {
    let mut filled = Vec::with_capacity(samples.len() * metrics.len());
    let mut keys = Vec::with_capacity(filled.capacity());
    let mut hashes = BTreeMap::new();
    for metric in metrics {
        let prompts = prompts_for(questions, metric)?;
        for (id, p) in &prompts {
            hashes.insert(format!("{id}/{metric}"), sha256_hex(p.as_bytes()));
        }
        for s in samples {
            if !questions.iter().any(|q| q.id == s.question_id) {
                return Err(EvalError::Judge {
                    reason: format!(
                        "sample of question `{}` has no such question in the run's questions.json",
                        s.question_id
                    ),
                });
            }
            let Some(template) = prompts.get(s.question_id.as_str()) else {
                continue;
            };
            let reference = questions
                .iter()
                .find(|q| q.id == s.question_id)
                .and_then(|q| q.answer.as_deref());
            let template = match reference {
                Some(r) => template.replace("{reference}", r),
                None => template.to_string(),
            };
            filled.push(fill_prompt(&template, &s.prompt, &s.answer));
            keys.push((s, metric));
        }
    }
    let (judged, usage) = judge.judge_all(&filled, on_progress)?;
    let failures: Vec<String> = judged
        .iter()
        .zip(&keys)
        .filter_map(|(j, (s, metric))| {
            j.judgment.as_ref().err().map(|e| {
                format!(
                    "{}/{}/{} on {metric}: {e}",
                    s.question_id, s.paraphrase_index, s.sample_index
                )
            })
        })
        .collect();
    if let Some(first) = failures.first() {
        return Err(EvalError::Judge {
            reason: format!(
                "{} of {} judgments failed (first: {first}); the others are cached, so running the same command again asks only for these",
                failures.len(),
                judged.len()
            ),
        });
    }
    let judge_id = &judge.identity.id;
    let new_rows: Vec<JudgmentRow> = judged
        .into_iter()
        .zip(keys)
        .map(|(j, (s, metric))| {
            let j = j.judgment.expect("failures returned above");
            JudgmentRow {
                run_id: s.run_id.clone(),
                question_id: s.question_id.clone(),
                paraphrase_index: s.paraphrase_index,
                sample_index: s.sample_index,
                judge_id: judge_id.clone(),
                metric: metric.clone(),
                score: j.score,
                mass: j.mass,
                null_reason: j.null_reason.as_ref().map(reason_text),
                top_tokens: serde_json::to_string(&j.top).expect("tokens serialise"),
            }
        })
        .collect();
    let record = JudgeRecord {
        identity: judge.identity.clone(),
        plugin: judge.plugin.name.clone(),
        plugin_version: judge.plugin.version.clone(),
        metrics: metrics.to_vec(),
        judge_prompts: hashes,
    };
    Ok((new_rows, usage, record))
}
