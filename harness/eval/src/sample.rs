//! Sampling: the one loop that turns prompts into answers, for `emh generate`
//! and for runs. A batch may hold rows of several conditions over the same
//! weights, each row with its own condition's interventions, so a sweep of
//! many small conditions fills batches as one run would.

use std::collections::BTreeMap;

use emh_plugins::CaptureSet;
use emh_questions::Question;
use emh_runtime::{
    derive_seed, generate, shared_prompts, Event, FinishReason, GenOutput, GenRequest, HookSet,
    Phase, SamplingParams,
};
use emh_tables::SampleRow;
use emh_text::Message;
use tch::{Device, Kind};

use crate::activations::BatchCaptures;
use crate::load::{Loaded, Planned};
use crate::{EvalError, Manifest};

/// FNV-1a of a string, to mix a text key into a seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The seed rule, the same for `emh generate` and runs: sample `index` of
/// the prompt named `key` under base seed `seed` is sampled with
/// SplitMix64(seed + FNV-1a(key), 0, index). A run's key is
/// `QUESTION_ID/PARAPHRASE`; `emh generate`'s is the line's `id`, else its
/// line number from 0. The seed lands on every sample, and `emh generate
/// --sample-seed` takes it back as is, so any sample can be made again alone.
pub fn sample_seed(seed: u64, key: &str, index: u32) -> u64 {
    derive_seed(seed.wrapping_add(fnv1a(key)), 0, index as u64)
}

/// A run's prompt key for the seed rule.
pub fn question_key(question_id: &str, paraphrase: u32) -> String {
    format!("{question_id}/{paraphrase}")
}

/// One sequence to sample, under condition `cond` of the batch's conditions.
#[derive(Debug, Clone)]
pub struct Job {
    pub cond: usize,
    pub prompt: Vec<u32>,
    pub seed: u64,
}

/// What [`sample_jobs`] reports as it goes.
pub enum Sampled<'a> {
    /// A step chose this many new tokens.
    Step(usize),
    /// Job `job` finished; `captured` holds what its condition's plans
    /// captured of it (and of other jobs so far), to take out.
    Done {
        job: usize,
        output: &'a GenOutput,
        captured: &'a mut BatchCaptures,
    },
}

/// Samples `jobs`, at most `slots` rows at a time, a finished row taken by
/// the next job: each job's rows run its condition's plans, and the
/// activations those plans capture are gathered per job. Returns the
/// outputs in job order and the captures not taken out on the way.
pub fn sample_jobs(
    loaded: &Loaded,
    conds: &[&[Planned<'_>]],
    jobs: &[Job],
    params: &SamplingParams,
    slots: usize,
    mut on_event: impl FnMut(Sampled<'_>) -> Result<(), EvalError>,
) -> Result<(Vec<GenOutput>, BatchCaptures), EvalError> {
    let shape = loaded.shape();
    let mut hooks = HookSet::new();
    let mut captures: Vec<CaptureSet> = Vec::new();
    for (c, plans) in conds.iter().enumerate() {
        let rows: Vec<usize> = (0..jobs.len()).filter(|&j| jobs[j].cond == c).collect();
        if rows.is_empty() {
            continue;
        }
        // Jobs of one condition only need no row selection.
        let only = (rows.len() < jobs.len()).then_some(rows.as_slice());
        for p in plans.iter() {
            captures.push(p.hook(shape, &mut hooks, only)?);
        }
    }
    let requests: Vec<GenRequest> = jobs
        .iter()
        .map(|j| GenRequest {
            prompt: j.prompt.clone(),
            seed: j.seed,
        })
        .collect();
    // A prompt pass shared by several jobs is captured once, for the first.
    let mut sharing: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (job, first) in shared_prompts(&requests, &hooks).into_iter().enumerate() {
        sharing.entry(first).or_default().push(job);
    }
    let mut captured = BatchCaptures::default();
    let outputs = generate(
        &loaded.model,
        &loaded.tokenizer,
        &requests,
        params,
        &mut hooks,
        slots,
        |event| match event {
            Event::Step(n) => {
                gather(&captures, &sharing, &mut captured)?;
                on_event(Sampled::Step(n))
            }
            Event::Done(job, output) => on_event(Sampled::Done {
                job,
                output,
                captured: &mut captured,
            }),
        },
    )?;
    Ok((outputs, captured))
}

/// Moves what `captures` recorded into `out`, per job: the last prompt
/// token of each prompt pass (for every job sharing it) and each answer token.
fn gather(
    captures: &[CaptureSet],
    sharing: &BTreeMap<usize, Vec<usize>>,
    out: &mut BatchCaptures,
) -> Result<(), EvalError> {
    for set in captures {
        for (name, capture) in &set.0 {
            for call in capture.take() {
                let x = call.x.to_device(Device::Cpu).to_kind(Kind::Float);
                for (i, &job) in call.rows.iter().enumerate() {
                    let (token, jobs) = match call.phase {
                        // Left padding puts every prompt's last token in the last column.
                        Phase::Prefill => (x.get(i as i64).get(-1), &sharing[&job]),
                        Phase::Decode { .. } => (x.get(i as i64).get(0), &vec![job]),
                    };
                    let values = Vec::<f32>::try_from(&token.contiguous())
                        .map_err(emh_runtime::RuntimeError::from)?;
                    for &j in jobs {
                        out.add(
                            name,
                            &call.site.to_string(),
                            j,
                            call.phase == Phase::Prefill,
                            &values,
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// The sampling parameters of a condition's settings, checked.
pub(crate) fn params_of(s: &crate::Sampling) -> Result<SamplingParams, EvalError> {
    let params = SamplingParams {
        max_new_tokens: s.max_new_tokens,
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        ..Default::default()
    };
    params.validate()?;
    Ok(params)
}

/// The loaded model's chat template, which question sets need.
pub(crate) fn chat_template(loaded: &Loaded) -> Result<&emh_text::ChatTemplate, EvalError> {
    loaded.template.as_ref().ok_or_else(|| EvalError::Load {
        what: loaded.name.clone(),
        reason: "question sets need a chat model (no chat template found)".into(),
    })
}

/// The rows of a journaled batch, if it was done; an error when they are
/// not the samples (`(run, question, paraphrase, sample)`) this batch makes.
pub(crate) fn journaled<'k>(
    file: &std::path::Path,
    keys: impl ExactSizeIterator<Item = (&'k str, &'k str, u32, u32)>,
) -> Result<Option<Vec<SampleRow>>, EvalError> {
    let Some(done) = crate::run::read_json::<Vec<SampleRow>>(file)? else {
        return Ok(None);
    };
    let matches = done.len() == keys.len()
        && done.iter().zip(keys).all(|(r, (run, q, p, s))| {
            r.run_id == run && r.question_id == q && r.paraphrase_index == p && r.sample_index == s
        });
    if !matches {
        return Err(EvalError::io(
            file,
            "holds other samples than this run would make; was it started with other settings?",
        ));
    }
    Ok(Some(done))
}

/// The row of `job`'s output: sample `at` = (paraphrase, sample) of
/// question `q` under the run of manifest `m`, asked `prompt` under `system`.
pub(crate) fn sample_row(
    m: &Manifest,
    q: &Question,
    at: (u32, u32),
    system: Option<String>,
    prompt: String,
    job: &Job,
    out: GenOutput,
) -> SampleRow {
    SampleRow {
        run_id: m.spec.condition.name.clone(),
        model_id: m.model.name.clone(),
        adapter_ids: m
            .hashes
            .adapters
            .iter()
            .map(|a| a.path.clone())
            .collect::<Vec<_>>()
            .join(","),
        intervention_ids: m
            .spec
            .condition
            .interventions
            .iter()
            .map(|u| u.label())
            .collect::<Vec<_>>()
            .join(";"),
        question_id: q.id.clone(),
        category: q.category.clone(),
        paraphrase_index: at.0,
        sample_index: at.1,
        seed: job.seed,
        system,
        prompt,
        answer: out.text,
        prompt_tokens: job.prompt.len() as u32,
        answer_tokens: out.tokens.len() as u32,
        finish_reason: finish_name(out.finish).into(),
    }
}

/// The system prompt of a conversation, if it opens with one.
pub(crate) fn system_of(messages: &[Message]) -> Option<String> {
    messages
        .first()
        .filter(|m| m.role == "system")
        .map(|m| m.content.clone())
}

/// How `sample_prompts` seeds its samples.
#[derive(Debug, Clone, Copy)]
pub enum Seeds {
    /// The seed rule over this base seed.
    Base(u64),
    /// This seed as is, for a single sample (`--sample-seed`).
    Exact(u64),
}

/// How many answers [`sample_prompts`] draws per prompt, with which seeds,
/// in batches of how many sequences.
#[derive(Debug, Clone, Copy)]
pub struct Draws {
    pub n: u32,
    pub seeds: Seeds,
    pub batch_size: usize,
}

/// One sample of [`sample_prompts`].
pub struct Generated {
    /// Index of its prompt.
    pub prompt: usize,
    pub sample: u32,
    pub seed: u64,
    pub output: GenOutput,
}

/// The jobs of `n` samples of each prompt, longest prompts first: similar
/// lengths together waste less compute on padding.
fn prompt_jobs(prompts: &[(String, Vec<u32>)], draws: Draws) -> Vec<(usize, u32, Job)> {
    let mut jobs = Vec::new();
    for (i, (key, ids)) in prompts.iter().enumerate() {
        for j in 0..draws.n {
            let seed = match draws.seeds {
                Seeds::Base(base) => sample_seed(base, key, j),
                Seeds::Exact(s) => s,
            };
            let job = Job {
                cond: 0,
                prompt: ids.clone(),
                seed,
            };
            jobs.push((i, j, job));
        }
    }
    jobs.sort_by_key(|(_, _, job)| std::cmp::Reverse(job.prompt.len()));
    jobs
}

/// Runs the first batch [`sample_prompts`] would run for `tokens` tokens,
/// without hooks, and drops it: one-time costs (first touch of fresh
/// memory) stay out of a timed run that follows (benchmarks).
pub fn warm_up(
    loaded: &Loaded,
    prompts: &[(String, Vec<u32>)],
    draws: Draws,
    params: &SamplingParams,
    tokens: usize,
) -> Result<(), EvalError> {
    let first: Vec<Job> = prompt_jobs(prompts, draws)
        .into_iter()
        .take(draws.batch_size.max(1))
        .map(|j| j.2)
        .collect();
    let warmup = SamplingParams {
        max_new_tokens: tokens,
        ..params.clone()
    };
    sample_jobs(
        loaded,
        &[&[]],
        &first,
        &warmup,
        draws.batch_size,
        |_| Ok(()),
    )?;
    Ok(())
}

/// Samples `n` answers to each prompt (`(seed key, token ids)`), `batch_size`
/// rows at a time, every row under `plans`; results in prompt, then sample order.
pub fn sample_prompts(
    loaded: &Loaded,
    plans: &[Planned<'_>],
    prompts: &[(String, Vec<u32>)],
    draws: Draws,
    params: &SamplingParams,
    mut on_step: impl FnMut(usize),
) -> Result<Vec<Generated>, EvalError> {
    let jobs = prompt_jobs(prompts, draws);
    let batch: Vec<Job> = jobs.iter().map(|j| j.2.clone()).collect();
    let (outputs, _) = sample_jobs(loaded, &[plans], &batch, params, draws.batch_size, |e| {
        if let Sampled::Step(n) = e {
            on_step(n);
        }
        Ok(())
    })?;
    let mut out: Vec<Generated> = jobs
        .iter()
        .zip(outputs)
        .map(|((i, j, job), output)| Generated {
            prompt: *i,
            sample: *j,
            seed: job.seed,
            output,
        })
        .collect();
    out.sort_by_key(|g| (g.prompt, g.sample));
    Ok(out)
}

/// The text a finish reason has in the tables.
pub fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos => "eos",
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_depend_on_every_part_of_the_sample() {
        let s = sample_seed(0, "q/0", 0);
        assert_ne!(s, sample_seed(1, "q/0", 0));
        assert_ne!(s, sample_seed(0, "r/0", 0));
        assert_ne!(s, sample_seed(0, "q/1", 0));
        assert_ne!(s, sample_seed(0, "q/0", 1));
        assert_eq!(s, sample_seed(0, "q/0", 0));
    }
}
