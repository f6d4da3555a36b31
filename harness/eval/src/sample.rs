//! Sampling: every paraphrase of every question, n times, in fixed batches
//! journaled to the run directory as they finish.

use emh_questions::Question;
use emh_runtime::{
    derive_seed, generate, FinishReason, GenRequest, HookSet, Model, SamplingParams,
};
use emh_tables::SampleRow;
use emh_text::{ChatTemplate, Message, Tokenizer};

use crate::{Condition, EvalError, RunDir};

/// The model side of sampling: a loaded model with its hooks.
pub struct Sampler<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a Tokenizer,
    pub template: &'a ChatTemplate,
    pub hooks: &'a mut HookSet,
    /// Recorded in every row: adapters, comma-separated.
    pub adapter_ids: String,
    /// Recorded in every row: plugins as `name=config`, `;`-separated.
    pub intervention_ids: String,
}

/// How far sampling has come.
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleProgress {
    pub done: usize,
    pub total: usize,
    /// Samples read back from the journal of an earlier, interrupted run.
    pub resumed: usize,
    /// New tokens generated so far in this process.
    pub new_tokens: usize,
}

/// One answer to produce.
struct Item<'q> {
    question: &'q Question,
    paraphrase_index: u32,
    sample_index: u32,
}

/// FNV-1a of a string, to mix a question id into a seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The seed of one answer: SplitMix64 over (run seed, question id,
/// paraphrase, sample), so it does not depend on which other questions
/// were selected or how they were batched.
pub fn sample_seed(seed: u64, question_id: &str, paraphrase: u32, sample: u32) -> u64 {
    derive_seed(
        seed.wrapping_add(fnv1a(question_id)),
        paraphrase as u64,
        sample as u64,
    )
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos => "eos",
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Samples every question of the condition, skipping batches an earlier
/// run finished, and writes the `samples` table when all are done.
pub fn sample(
    run: &RunDir,
    condition: &Condition,
    questions: &[Question],
    sampler: &mut Sampler<'_>,
    mut on_progress: impl FnMut(SampleProgress),
) -> Result<Vec<SampleRow>, EvalError> {
    if let Some(rows) = run.samples()? {
        return Ok(rows);
    }
    let s = &condition.sampling;
    let mut items = Vec::new();
    for q in questions {
        let n = s.n.or(q.samples_per_paraphrase).unwrap_or(1);
        for p in 0..q.paraphrases.len() as u32 {
            for i in 0..n {
                items.push(Item {
                    question: q,
                    paraphrase_index: p,
                    sample_index: i,
                });
            }
        }
    }
    let params = SamplingParams {
        max_new_tokens: s.max_new_tokens,
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        greedy: false,
        stop: Vec::new(),
        ignore_eos: false,
    };
    params.validate()?;
    let mut progress = SampleProgress {
        total: items.len(),
        ..Default::default()
    };
    let mut rows = Vec::with_capacity(items.len());
    for (index, batch) in items.chunks(s.batch_size.max(1)).enumerate() {
        if let Some(done) = run.read_batch(index)? {
            let matches = done.len() == batch.len()
                && done.iter().zip(batch).all(|(r, it)| {
                    r.question_id == it.question.id
                        && r.paraphrase_index == it.paraphrase_index
                        && r.sample_index == it.sample_index
                });
            if !matches {
                return Err(EvalError::io(
                    &run.batch_path(index),
                    "holds other samples than this run would make; was the run started with other settings?",
                ));
            }
            progress.done += done.len();
            progress.resumed += done.len();
            rows.extend(done);
            on_progress(progress);
            continue;
        }
        let mut prompts = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        for it in batch {
            let q = it.question;
            let text = &q.paraphrases[it.paraphrase_index as usize];
            let mut messages = Vec::new();
            if let Some(sys) = &q.system {
                messages.push(Message::new("system", sys));
            }
            messages.push(Message::new("user", text));
            let rendered = sampler.template.render(&messages, true)?;
            // The rendered template holds its special tokens as text already.
            let ids = sampler.tokenizer.encode(&rendered, false)?;
            requests.push(GenRequest {
                prompt: ids,
                seed: sample_seed(s.seed, &q.id, it.paraphrase_index, it.sample_index),
            });
            prompts.push(text);
        }
        let outputs = generate(
            sampler.model,
            sampler.tokenizer,
            &requests,
            &params,
            sampler.hooks,
            |n| {
                progress.new_tokens += n;
                on_progress(progress);
            },
        )?;
        let done: Vec<SampleRow> = batch
            .iter()
            .zip(requests.iter().zip(outputs))
            .zip(prompts)
            .map(|((it, (req, out)), prompt)| SampleRow {
                run_id: condition.run_id.clone(),
                model_id: condition.model.name.clone(),
                adapter_ids: sampler.adapter_ids.clone(),
                intervention_ids: sampler.intervention_ids.clone(),
                question_id: it.question.id.clone(),
                category: it.question.category.clone(),
                paraphrase_index: it.paraphrase_index,
                sample_index: it.sample_index,
                seed: req.seed,
                system: it.question.system.clone(),
                prompt: prompt.clone(),
                answer: out.text,
                prompt_tokens: req.prompt.len() as u32,
                answer_tokens: out.tokens.len() as u32,
                finish_reason: finish_name(out.finish).into(),
            })
            .collect();
        run.write_batch(index, &done)?;
        progress.done += done.len();
        rows.extend(done);
        on_progress(progress);
    }
    run.write_samples(&rows)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_depend_on_every_part_of_the_sample() {
        let s = sample_seed(0, "q", 0, 0);
        assert_ne!(s, sample_seed(1, "q", 0, 0));
        assert_ne!(s, sample_seed(0, "r", 0, 0));
        assert_ne!(s, sample_seed(0, "q", 1, 0));
        assert_ne!(s, sample_seed(0, "q", 0, 1));
        assert_eq!(s, sample_seed(0, "q", 0, 0));
    }
}
