//! Sampling a group of runs over one loaded model: their answers interleaved
//! in shared batches, journaled batch by batch so an interrupted group
//! resumes, and each run's `samples` table written at the end.

use std::collections::BTreeMap;

use emh_questions::Question;
use emh_runtime::GenOutput;
use emh_tables::SampleRow;

use crate::activations::{Activations, BatchCaptures};
use crate::load::{Loaded, Planned};
use crate::nudge::opening;
use crate::sample::{
    chat_template, journaled, params_of, question_key, sample_jobs, sample_row, sample_seed,
    system_of, Job, Sampled,
};
use crate::{EvalError, Manifest, Part, RunDir};

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
