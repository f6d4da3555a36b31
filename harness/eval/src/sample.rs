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

use crate::activations::{Activations, BatchCaptures};
use crate::load::{Loaded, Planned};
use crate::nudge::opening;
use crate::{EvalError, Manifest, Part, RunDir};

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

/// A run sampled with others over the same weights.
pub struct GroupRun<'a, 'r> {
    pub run: &'a RunDir,
    pub manifest: &'a Manifest,
    pub questions: &'a [Question],
    pub plans: &'a [Planned<'r>],
}

/// One answer to produce.
#[derive(Clone, Copy)]
struct Item<'q> {
    run: usize,
    question: &'q Question,
    paraphrase_index: u32,
    sample_index: u32,
}

/// The answers each run asks for, in the order its table lists them.
fn items_of<'q>(run: usize, questions: &'q [Question], n: Option<u32>) -> Vec<Item<'q>> {
    let mut items = Vec::new();
    for q in questions {
        let n = n.or(q.samples_per_paraphrase).unwrap_or(1);
        for p in 0..q.paraphrases.len() as u32 {
            for i in 0..n {
                items.push(Item {
                    run,
                    question: q,
                    paraphrase_index: p,
                    sample_index: i,
                });
            }
        }
    }
    items
}

/// Expected tokens of a unit of work: prompt (about 4 characters a token)
/// and the longest answer, for each sample.
fn cost(items: &[Item<'_>], max_new_tokens: usize) -> u64 {
    items
        .iter()
        .map(|it| {
            let text = &it.question.paraphrases[it.paraphrase_index as usize];
            (text.len() / 4 + max_new_tokens) as u64
        })
        .sum()
}

/// The items of `part`: units are (run, question, paraphrase), spread over
/// the parts by expected tokens.
fn items_of_part<'q>(
    per_run: Vec<Vec<Item<'q>>>,
    part: Part,
    max_new_tokens: usize,
) -> Vec<Vec<Item<'q>>> {
    let mut units: Vec<(usize, Vec<Item<'q>>)> = Vec::new();
    for items in &per_run {
        for it in items {
            match units.last_mut() {
                Some((_, u))
                    if u[0].run == it.run
                        && u[0].question.id == it.question.id
                        && u[0].paraphrase_index == it.paraphrase_index =>
                {
                    u.push(*it)
                }
                _ => units.push((units.len(), vec![*it])),
            }
        }
    }
    let costs: Vec<u64> = units.iter().map(|(_, u)| cost(u, max_new_tokens)).collect();
    let owner = crate::part::assign(&costs, part.count);
    let mut out: Vec<Vec<Item<'q>>> = per_run.iter().map(|_| Vec::new()).collect();
    for (i, u) in units {
        if owner[i] == part.index {
            out[u[0].run].extend(u);
        }
    }
    out
}

/// Interleaves the runs' items (item k of every run, then k + 1), so a batch
/// holds the same prompts under several conditions and pads little.
pub(crate) fn interleave<T: Copy>(per_run: &[Vec<T>]) -> Vec<T> {
    let longest = per_run.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|k| {
            per_run
                .iter()
                .filter_map(move |items| items.get(k).copied())
        })
        .collect()
}

/// Samples every run of a group over one loaded model in shared batches,
/// journaling each batch under `journal` so an interrupted group resumes, and
/// writes each run's `samples` table (and captured activations) when done.
/// With `part`, only that part's share of the work is done.
pub fn sample_group(
    journal: &std::path::Path,
    loaded: &Loaded,
    runs: &[GroupRun<'_, '_>],
    part: Option<Part>,
    mut on_progress: impl FnMut(SampleProgress),
) -> Result<Vec<Vec<SampleRow>>, EvalError> {
    let Some(first) = runs.first() else {
        return Ok(Vec::new());
    };
    let s = &first.manifest.spec.condition.sampling;
    let params = params_of(s)?;
    let template = chat_template(loaded)?;
    let mut finished: Vec<Option<Vec<SampleRow>>> = Vec::with_capacity(runs.len());
    for r in runs {
        finished.push(r.run.samples()?);
    }
    let mut per_run: Vec<Vec<Item<'_>>> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| items_of(i, r.questions, r.manifest.spec.condition.sampling.n))
        .collect();
    if finished.iter().all(Option::is_some) {
        return Ok(finished.into_iter().flatten().collect());
    }
    if let Some(part) = part {
        per_run = items_of_part(per_run, part, s.max_new_tokens);
    }
    // Runs already written (a group killed while writing its tables) keep
    // their items, so the journal's batches still match; only their tables
    // are left as they are.
    let items = interleave(&per_run);
    std::fs::create_dir_all(journal).map_err(|e| EvalError::io(journal, e))?;
    let mut progress = SampleProgress {
        total: items.len(),
        ..Default::default()
    };
    let conds: Vec<&[Planned<'_>]> = runs.iter().map(|r| r.plans).collect();
    // Batches of `batch_size` items are the journal's units; the ones not
    // journaled yet are sampled in one stream, each journaled once all its
    // items are done.
    let units: Vec<&[Item<'_>]> = items.chunks(s.batch_size.max(1)).collect();
    let file_of = |u: usize, ext: &str| journal.join(format!("{u:06}.{ext}"));
    let mut done: Vec<Option<(Vec<SampleRow>, BatchCaptures)>> = Vec::with_capacity(units.len());
    for (u, batch) in units.iter().enumerate() {
        let keys = batch.iter().map(|it| {
            (
                runs[it.run].manifest.spec.condition.name.as_str(),
                it.question.id.as_str(),
                it.paraphrase_index,
                it.sample_index,
            )
        });
        let rows = journaled(&file_of(u, "json"), keys)?;
        let caps = match (&rows, file_of(u, "safetensors")) {
            (Some(_), f) if f.is_file() => BatchCaptures::read(&f)?,
            _ => BatchCaptures::default(),
        };
        if let Some(rows) = &rows {
            progress.done += rows.len();
            progress.resumed += rows.len();
        }
        done.push(rows.map(|r| (r, caps)));
    }
    on_progress(progress);
    // The jobs of the units left: (unit, its first job) and every job's system prompt.
    let mut jobs = Vec::new();
    let mut systems = Vec::new();
    let mut unit_of_job = Vec::new();
    let mut starts = BTreeMap::new();
    for (u, batch) in units.iter().enumerate() {
        if done[u].is_some() {
            continue;
        }
        starts.insert(u, jobs.len());
        for it in batch.iter() {
            let q = it.question;
            let text = &q.paraphrases[it.paraphrase_index as usize];
            let nudge = runs[it.run].manifest.spec.condition.nudge.as_ref();
            let messages = opening(nudge, q.system.as_deref(), text);
            systems.push(system_of(&messages));
            let rendered = template.render(&messages, true)?;
            // The rendered template holds its special tokens as text already.
            let prompt = loaded.tokenizer.encode(&rendered, false)?;
            let seed = runs[it.run].manifest.spec.condition.sampling.seed;
            jobs.push(Job {
                cond: it.run,
                prompt,
                seed: sample_seed(
                    seed,
                    &question_key(&q.id, it.paraphrase_index),
                    it.sample_index,
                ),
            });
            unit_of_job.push(u);
        }
    }
    let mut outputs: Vec<Option<GenOutput>> = vec![None; jobs.len()];
    let mut left: BTreeMap<usize, usize> = starts.keys().map(|&u| (u, units[u].len())).collect();
    sample_jobs(loaded, &conds, &jobs, &params, s.batch_size, |event| {
        let (job, output, captured) = match event {
            Sampled::Step(n) => {
                progress.new_tokens += n;
                on_progress(progress);
                return Ok(());
            }
            Sampled::Done {
                job,
                output,
                captured,
            } => (job, output, captured),
        };
        outputs[job] = Some(output.clone());
        let u = unit_of_job[job];
        let count = left.get_mut(&u).expect("a unit per job");
        *count -= 1;
        if *count > 0 {
            return Ok(());
        }
        let start = starts[&u];
        let batch_rows: Vec<SampleRow> = units[u]
            .iter()
            .enumerate()
            .map(|(k, it)| {
                let j = start + k;
                let q = it.question;
                let prompt = q.paraphrases[it.paraphrase_index as usize].clone();
                let at = (it.paraphrase_index, it.sample_index);
                let out = outputs[j].take().expect("every job of the unit is done");
                let system = systems[j].clone();
                sample_row(runs[it.run].manifest, q, at, system, prompt, &jobs[j], out)
            })
            .collect();
        let caps = captured.take_jobs(start..start + units[u].len());
        // Captures first: the journal file marks the batch as done.
        if !caps.is_empty() {
            caps.write(&file_of(u, "safetensors"))?;
        }
        crate::run::write_json(&file_of(u, "json"), &batch_rows)?;
        progress.done += batch_rows.len();
        on_progress(progress);
        done[u] = Some((batch_rows, caps));
        Ok(())
    })?;
    let mut rows: Vec<SampleRow> = Vec::with_capacity(items.len());
    let mut captured = BatchCaptures::default();
    let mut row_of = BTreeMap::new();
    for unit in done {
        let (unit_rows, caps) = unit.expect("every unit is sampled");
        captured.extend(caps, rows.len());
        rows.extend(unit_rows);
    }
    // Split the shared rows back into runs, each in its table's order.
    let mut out: Vec<Vec<SampleRow>> = runs.iter().map(|_| Vec::new()).collect();
    for (k, (row, it)) in rows.into_iter().zip(&items).enumerate() {
        row_of.insert(k, (it.run, out[it.run].len()));
        out[it.run].push(row);
    }
    for (i, r) in runs.iter().enumerate() {
        if let Some(done) = finished[i].take() {
            out[i] = done;
            continue;
        }
        r.run.write_samples(&out[i])?;
        let acts: Activations = captured.for_run(i, &row_of, &out[i]);
        acts.write(&r.run.activations_dir())?;
    }
    Ok(out)
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
