//! Activations that plans capture, written under a run as safetensors.
//!
//! For each capture step (by the name its plan gave it) a run gets
//! `activations/NAME.safetensors` holding, per site (`resid_post.12`, ...):
//! - `SITE.prompt_last` `[n, hidden]`: the activation at the prompt's last token;
//! - `SITE.answer_mean` `[n, hidden]`: the mean over the answer tokens that went
//!   through the model (every generated token but the last, which is never fed back);
//! - `SITE.answer_tokens` `[n]`: how many tokens that mean is over;
//!
//! and `sample_row` `[n]`, each row's index in `samples.parquet`. The metadata
//! entry `ids` lists the rows as `QUESTION_ID/PARAPHRASE/SAMPLE`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use emh_tables::SampleRow;
use safetensors::tensor::{Dtype, TensorView};

use crate::EvalError;

/// What one capture saw of one sequence at one site.
#[derive(Debug, Clone, Default)]
struct Entry {
    prompt_last: Vec<f32>,
    answer_sum: Vec<f32>,
    answer_tokens: u32,
}

/// Activations of a stream of batches, by (capture name, site) and job.
#[derive(Debug, Default)]
pub struct BatchCaptures {
    entries: BTreeMap<(String, String), BTreeMap<usize, Entry>>,
}

pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Writes named f32/i64 tensors and metadata as one safetensors file.
pub(crate) fn write_file(
    path: &Path,
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    metadata: HashMap<String, String>,
) -> Result<(), EvalError> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| EvalError::io(path, e))
        })
        .collect::<Result<_, _>>()?;
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| EvalError::io(path, e))?;
    crate::run::write_atomic(path, &bytes)
}

impl BatchCaptures {
    /// Records what a capture saw of `job` at `site`: the prompt's last token,
    /// or one more answer token.
    pub(crate) fn add(&mut self, name: &str, site: &str, job: usize, prompt: bool, x: &[f32]) {
        let e = self
            .entries
            .entry((name.to_string(), site.to_string()))
            .or_default()
            .entry(job)
            .or_default();
        if prompt {
            e.prompt_last = x.to_vec();
        } else if e.answer_sum.is_empty() {
            e.answer_sum = x.to_vec();
            e.answer_tokens = 1;
        } else {
            for (s, v) in e.answer_sum.iter_mut().zip(x) {
                *s += v;
            }
            e.answer_tokens += 1;
        }
    }

    /// Whether nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes out the entries of `jobs`, numbered from 0 in the result.
    pub(crate) fn take_jobs(&mut self, jobs: std::ops::Range<usize>) -> BatchCaptures {
        let mut out = BatchCaptures::default();
        for (key, entries) in &mut self.entries {
            let mut taken = BTreeMap::new();
            for job in jobs.clone() {
                if let Some(e) = entries.remove(&job) {
                    taken.insert(job - jobs.start, e);
                }
            }
            if !taken.is_empty() {
                out.entries.insert(key.clone(), taken);
            }
        }
        self.entries.retain(|_, e| !e.is_empty());
        out
    }

    /// Adds `other`'s entries with their jobs shifted by `offset`.
    pub(crate) fn extend(&mut self, other: BatchCaptures, offset: usize) {
        for (key, jobs) in other.entries {
            let mine = self.entries.entry(key).or_default();
            for (job, e) in jobs {
                mine.insert(job + offset, e);
            }
        }
    }

    /// Journals a batch's captures.
    pub(crate) fn write(&self, path: &Path) -> Result<(), EvalError> {
        let mut tensors = Vec::new();
        for ((name, site), jobs) in &self.entries {
            for (job, e) in jobs {
                let key = format!("{name}\t{site}\t{job}");
                for (part, v) in [("prompt", &e.prompt_last), ("answer", &e.answer_sum)] {
                    tensors.push((
                        format!("{key}\t{part}"),
                        Dtype::F32,
                        vec![v.len()],
                        f32_bytes(v),
                    ));
                }
                tensors.push((
                    format!("{key}\tcount"),
                    Dtype::F32,
                    vec![1],
                    f32_bytes(&[e.answer_tokens as f32]),
                ));
            }
        }
        write_file(path, tensors, HashMap::new())
    }

    /// Reads a journaled batch back.
    pub(crate) fn read(path: &Path) -> Result<BatchCaptures, EvalError> {
        let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| EvalError::io(path, format!("not valid: {e}")))?;
        let mut out = BatchCaptures::default();
        for (key, view) in st.tensors() {
            let parts: Vec<&str> = key.split('\t').collect();
            let [name, site, job, part] = parts[..] else {
                return Err(EvalError::io(path, format!("unexpected tensor `{key}`")));
            };
            let job: usize = job
                .parse()
                .map_err(|_| EvalError::io(path, format!("unexpected tensor `{key}`")))?;
            let e = out
                .entries
                .entry((name.to_string(), site.to_string()))
                .or_default()
                .entry(job)
                .or_default();
            let v = from_bytes(view.data());
            match part {
                "prompt" => e.prompt_last = v,
                "answer" => e.answer_sum = v,
                _ => e.answer_tokens = v.first().copied().unwrap_or(0.0) as u32,
            }
        }
        Ok(out)
    }

    /// The activations of run `run`: `row_of` maps a job to its run and its
    /// row in that run's table, whose rows are `rows`.
    pub(crate) fn for_run(
        &self,
        run: usize,
        row_of: &BTreeMap<usize, (usize, usize)>,
        rows: &[SampleRow],
    ) -> Activations {
        let mut files: BTreeMap<String, BTreeMap<String, Vec<(usize, Entry)>>> = BTreeMap::new();
        for ((name, site), jobs) in &self.entries {
            for (job, e) in jobs {
                if let Some(&(r, row)) = row_of.get(job) {
                    if r == run {
                        files
                            .entry(name.clone())
                            .or_default()
                            .entry(site.clone())
                            .or_default()
                            .push((row, e.clone()));
                    }
                }
            }
        }
        Activations {
            files,
            ids: rows
                .iter()
                .map(|r| {
                    format!(
                        "{}/{}/{}",
                        r.question_id, r.paraphrase_index, r.sample_index
                    )
                })
                .collect(),
        }
    }
}

/// A run's captured activations, by capture name and site.
pub struct Activations {
    files: BTreeMap<String, BTreeMap<String, Vec<(usize, Entry)>>>,
    /// `QUESTION_ID/PARAPHRASE/SAMPLE` of every row of the samples table.
    ids: Vec<String>,
}

impl Activations {
    /// Writes `DIR/NAME.safetensors` for each capture; nothing when none.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
        let mut written = Vec::new();
        for (name, sites) in &self.files {
            std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
            let path = dir.join(format!("{name}.safetensors"));
            let mut tensors = Vec::new();
            let mut sample_rows: Option<Vec<usize>> = None;
            for (site, entries) in sites {
                let mut entries = entries.clone();
                entries.sort_by_key(|(row, _)| *row);
                let hidden = entries
                    .iter()
                    .map(|(_, e)| e.prompt_last.len().max(e.answer_sum.len()))
                    .max()
                    .unwrap_or(0);
                let (mut prompt, mut answer, mut counts) = (Vec::new(), Vec::new(), Vec::new());
                for (_, e) in &entries {
                    let mut p = e.prompt_last.clone();
                    p.resize(hidden, 0.0);
                    prompt.extend(p);
                    let n = e.answer_tokens.max(1) as f32;
                    let mut a: Vec<f32> = e.answer_sum.iter().map(|v| v / n).collect();
                    a.resize(hidden, 0.0);
                    answer.extend(a);
                    counts.push(e.answer_tokens as i64);
                }
                let n = entries.len();
                tensors.push((
                    format!("{site}.prompt_last"),
                    Dtype::F32,
                    vec![n, hidden],
                    f32_bytes(&prompt),
                ));
                tensors.push((
                    format!("{site}.answer_mean"),
                    Dtype::F32,
                    vec![n, hidden],
                    f32_bytes(&answer),
                ));
                tensors.push((
                    format!("{site}.answer_tokens"),
                    Dtype::I64,
                    vec![n],
                    counts.iter().flat_map(|c| c.to_le_bytes()).collect(),
                ));
                sample_rows.get_or_insert_with(|| entries.iter().map(|(r, _)| *r).collect());
            }
            let rows = sample_rows.unwrap_or_default();
            let ids: Vec<&str> = rows.iter().map(|&r| self.ids[r].as_str()).collect();
            tensors.push((
                "sample_row".into(),
                Dtype::I64,
                vec![rows.len()],
                rows.iter()
                    .flat_map(|&r| (r as i64).to_le_bytes())
                    .collect(),
            ));
            let metadata = HashMap::from([(
                "ids".to_string(),
                serde_json::to_string(&ids).expect("strings serialise"),
            )]);
            write_file(&path, tensors, metadata)?;
            written.push(path);
        }
        Ok(written)
    }
}

/// One capture file read whole: tensors by name (dtype, shape, bytes) and ids.
type FileTensors = (BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>, Vec<String>);

fn read_file(path: &Path) -> Result<FileTensors, EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| EvalError::io(path, format!("not valid: {e}")))?;
    let ids: Vec<String> = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("ids"))
        .and_then(|t| serde_json::from_str(t).ok())
        .ok_or_else(|| EvalError::io(path, "no `ids` metadata"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| EvalError::io(path, format!("not valid: {e}")))?;
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    Ok((tensors, ids))
}

/// Joins the capture files of shard runs into `dest`, rows in the order of
/// the merged `samples` table, `sample_row` pointing into it.
pub fn merge_activations(
    parts: &[PathBuf],
    dest: &Path,
    samples: &[SampleRow],
) -> Result<(), EvalError> {
    let index: BTreeMap<String, usize> = samples
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let id = format!(
                "{}/{}/{}",
                r.question_id, r.paraphrase_index, r.sample_index
            );
            (id, i)
        })
        .collect();
    let mut names = std::collections::BTreeSet::new();
    for part in parts {
        for e in std::fs::read_dir(part).into_iter().flatten().flatten() {
            names.insert(e.file_name());
        }
    }
    for name in names {
        // Rows of every shard with their merged index, then sorted by it.
        let mut rows: Vec<(usize, BTreeMap<String, Vec<u8>>)> = Vec::new();
        let mut layout: BTreeMap<String, (Dtype, Vec<usize>)> = BTreeMap::new();
        for part in parts {
            let path = part.join(&name);
            if !path.is_file() {
                continue;
            }
            let (tensors, ids) = read_file(&path)?;
            for (k, id) in ids.iter().enumerate() {
                let at = *index.get(id).ok_or_else(|| {
                    EvalError::io(&path, format!("row {id} is not in the merged samples"))
                })?;
                let mut row = BTreeMap::new();
                for (t, (dtype, shape, bytes)) in &tensors {
                    let width = bytes.len() / shape[0].max(1);
                    row.insert(t.clone(), bytes[k * width..(k + 1) * width].to_vec());
                    layout.insert(t.clone(), (*dtype, shape[1..].to_vec()));
                }
                rows.push((at, row));
            }
        }
        rows.sort_by_key(|(at, _)| *at);
        let mut tensors = Vec::new();
        for (t, (dtype, inner)) in &layout {
            let bytes: Vec<u8> = if t == "sample_row" {
                rows.iter()
                    .flat_map(|(at, _)| (*at as i64).to_le_bytes())
                    .collect()
            } else {
                rows.iter().flat_map(|(_, r)| r[t].clone()).collect()
            };
            let mut shape = vec![rows.len()];
            shape.extend(inner);
            tensors.push((t.clone(), *dtype, shape, bytes));
        }
        let ids: Vec<String> = rows
            .iter()
            .map(|(at, _)| {
                let r = &samples[*at];
                format!(
                    "{}/{}/{}",
                    r.question_id, r.paraphrase_index, r.sample_index
                )
            })
            .collect();
        std::fs::create_dir_all(dest).map_err(|e| EvalError::io(dest, e))?;
        let metadata = HashMap::from([(
            "ids".to_string(),
            serde_json::to_string(&ids).expect("strings serialise"),
        )]);
        write_file(&dest.join(&name), tensors, metadata)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journaled_batch_reads_back_and_means_are_over_answer_tokens() {
        let mut b = BatchCaptures::default();
        b.add("acts", "resid_post.1", 0, true, &[1.0, 2.0]);
        b.add("acts", "resid_post.1", 0, false, &[2.0, 4.0]);
        b.add("acts", "resid_post.1", 0, false, &[4.0, 8.0]);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("b.safetensors");
        b.write(&path).unwrap();
        let back = BatchCaptures::read(&path).unwrap();
        let e = &back.entries[&("acts".to_string(), "resid_post.1".to_string())][&0];
        assert_eq!(e.prompt_last, vec![1.0, 2.0]);
        assert_eq!(e.answer_sum, vec![6.0, 12.0]);
        assert_eq!(e.answer_tokens, 2);
    }
}
