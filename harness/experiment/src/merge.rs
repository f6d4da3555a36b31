//! `emh merge`: the shards of an experiment become the run directories,
//! tables (second answers and self-ratings included) and captured
//! activations that one machine would have written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use emh_eval::{Manifest, RunDir, RunSummary};
use emh_tables::{JudgmentRow, SampleRow};

use crate::ExperimentError;

/// The shard folders under `out/shards`, by part index, for one count.
fn shard_dirs(out: &Path) -> Result<(usize, BTreeMap<usize, PathBuf>), ExperimentError> {
    let root = out.join("shards");
    let entries = std::fs::read_dir(&root)
        .map_err(|e| ExperimentError::io(&root, format!("no shards to merge: {e}")))?;
    let mut counts = std::collections::BTreeSet::new();
    let mut dirs = BTreeMap::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((i, n)) = name.split_once("-of-") else {
            continue;
        };
        let (Ok(i), Ok(n)) = (i.parse::<usize>(), n.parse::<usize>()) else {
            continue;
        };
        counts.insert(n);
        dirs.insert(i, e.path());
    }
    let count = match counts.len() {
        1 => *counts.iter().next().expect("one count"),
        0 => {
            return Err(ExperimentError::io(
                &root,
                "no shard folders (I-of-N) in it",
            ))
        }
        _ => {
            return Err(ExperimentError::io(
                &root,
                format!("shards of different counts {counts:?}; remove the old ones"),
            ))
        }
    };
    if let Some(missing) = (0..count).find(|i| !dirs.contains_key(i)) {
        return Err(ExperimentError::io(
            &root,
            format!("shard {missing} of {count} is missing; run it (it resumes) before merging"),
        ));
    }
    Ok((count, dirs))
}

/// Merges the shards of the experiment in `out` into `out/<condition>/`:
/// samples in the order one run writes them, judgments likewise, metrics
/// recomputed, captured activations joined. Every shard must have finished
/// every condition.
pub fn merge(out: &Path) -> Result<Vec<RunSummary>, ExperimentError> {
    let (count, dirs) = shard_dirs(out)?;
    let first = &dirs[&0];
    let mut names: Vec<String> = std::fs::read_dir(first)
        .map_err(|e| ExperimentError::io(first, e))?
        .flatten()
        .filter(|e| e.path().join("manifest.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(ExperimentError::io(first, "holds no runs"));
    }
    let mut summaries = Vec::new();
    for name in names {
        let mut manifest: Option<Manifest> = None;
        let mut samples: Vec<SampleRow> = Vec::new();
        let mut judgments: Vec<JudgmentRow> = Vec::new();
        let mut second: Option<Vec<SampleRow>> = None;
        let mut second_judgments: Vec<JudgmentRow> = Vec::new();
        for (i, dir) in &dirs {
            let path = dir.join(&name);
            let run = RunDir::existing(&path)?;
            let m = run.manifest()?.expect("existing runs have a manifest");
            let rows = run.samples()?.ok_or_else(|| {
                ExperimentError::io(
                    &path,
                    format!(
                        "shard {i} of {count} has not finished sampling; run it again (it resumes)"
                    ),
                )
            })?;
            if let Some(first) = &manifest {
                let mut a = first.clone();
                let mut b = m.clone();
                a.part = None;
                b.part = None;
                if let Some(what) = a.differs_from(&b) {
                    return Err(ExperimentError::io(
                        &path,
                        format!("was made with other settings than shard 0 ({what})"),
                    ));
                }
                if a.judges
                    .iter()
                    .map(|j| &j.identity)
                    .ne(b.judges.iter().map(|j| &j.identity))
                {
                    return Err(ExperimentError::io(
                        &path,
                        "was judged by other judges than shard 0; judge every shard alike",
                    ));
                }
            } else {
                manifest = Some(m);
            }
            samples.extend(rows);
            judgments.extend(run.judgments()?);
            if let Some(rows) = run.pushback()? {
                second.get_or_insert_with(Vec::new).extend(rows);
            }
            second_judgments.extend(run.pushback_judgments()?);
        }
        let mut manifest = manifest.expect("at least one shard");
        manifest.part = None;
        let src = RunDir::existing(&dirs[&0].join(&name))?;
        let questions = src.questions()?;
        // The order of one run: questions as listed, then paraphrase, then sample.
        let order: BTreeMap<&str, usize> = questions
            .iter()
            .enumerate()
            .map(|(i, q)| (q.id.as_str(), i))
            .collect();
        let key = |q: &str, p: u32, s: u32| (order.get(q).copied().unwrap_or(usize::MAX), p, s);
        samples.sort_by_key(|r| key(&r.question_id, r.paraphrase_index, r.sample_index));
        // Judgments as one judge run writes them: by judge, metric, then sample.
        let judge_rank: BTreeMap<(String, String), (usize, usize)> = manifest
            .judges
            .iter()
            .enumerate()
            .flat_map(|(j, r)| {
                r.metrics
                    .iter()
                    .enumerate()
                    .map(move |(m, metric)| ((r.identity.id.clone(), metric.clone()), (j, m)))
            })
            .collect();
        judgments.sort_by_key(|r| {
            (
                judge_rank
                    .get(&(r.judge_id.clone(), r.metric.clone()))
                    .copied()
                    .unwrap_or((usize::MAX, usize::MAX)),
                key(&r.question_id, r.paraphrase_index, r.sample_index),
            )
        });
        let dest = out.join(&name);
        let run = RunDir::open(&dest)?;
        run.write_questions(&questions)?;
        run.write_samples(&samples)?;
        if !judgments.is_empty() {
            run.write_judgments(&judgments)?;
        }
        // Second answers and their judgments in the order of the first;
        // every shard rates every question the same, so shard 0's ratings stand.
        if let Some(mut second) = second {
            second.sort_by_key(|r| key(&r.question_id, r.paraphrase_index, r.sample_index));
            run.write_pushback(&second)?;
        }
        if !second_judgments.is_empty() {
            second_judgments
                .sort_by_key(|r| key(&r.question_id, r.paraphrase_index, r.sample_index));
            run.write_pushback_judgments(&second_judgments)?;
        }
        let ratings = src.self_ratings_path();
        if ratings.is_file() {
            let bytes = std::fs::read(&ratings).map_err(|e| ExperimentError::io(&ratings, e))?;
            let dest = run.self_ratings_path();
            emh_atomic::write(&dest, &bytes).map_err(|e| ExperimentError::io(&dest, e))?;
        }
        let parts: Vec<PathBuf> = dirs
            .values()
            .map(|d| d.join(&name).join("activations"))
            .collect();
        emh_eval::merge_activations(&parts, &run.activations_dir(), &samples)?;
        run.write_manifest(&manifest)?;
        let judge_id = manifest.judges.last().map(|j| j.identity.id.clone());
        let metrics = emh_eval::summarise(
            &run,
            &samples,
            &judgments,
            judge_id.as_deref(),
            &manifest.spec.thresholds,
        )?;
        summaries.push(RunSummary {
            name,
            dir: dest,
            samples: samples.len(),
            judge_id,
            metrics,
        });
    }
    Ok(summaries)
}
