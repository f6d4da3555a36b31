//! The one entry point that runs evaluation specs: sample (runs over the same
//! weights share batches), judge, summarise, each run into its own directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use emh_judge_core::Cache;
use emh_metrics::{MetricRow, Thresholds};
use emh_plugin_api::JudgeUsage;
use emh_plugins::{Judge, JudgeProgress, Registry};
use emh_questions::{Question, QuestionSet};
use emh_tables::{JudgmentRow, SampleRow};

use crate::group::{sample_group, GroupRun, SampleProgress};
use crate::judge::{judge_rows, replace_judgments};
use crate::load::{control_adapters, load_model, plan_all, Loaded, Planned};
use crate::pushback::{pushback_group, CorrectScores, CORRECT};
use crate::self_rating::{rate_questions, write_ratings};
use crate::{EvalError, EvalSpec, HashMemo, Hashes, JudgeSpec, Manifest, Part, RunDir};

/// Told how runs go: progress bars and messages belong to the caller.
pub trait Observer {
    /// A line of news (what is loading, which judge is asked).
    fn message(&self, _text: &str) {}
    /// Sampling of a group of runs moved on.
    fn sampling(&self, _group: &str, _p: SampleProgress) {}
    /// Judging of run `run` moved on.
    fn judging(&self, _run: &str, _p: JudgeProgress) {}
    /// A stage (sampling a group, judging a run) ended.
    fn done(&self) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// What a run came to.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub name: String,
    pub dir: PathBuf,
    pub samples: usize,
    /// The judge whose scores `metrics` summarises.
    pub judge_id: Option<String>,
    pub metrics: Vec<MetricRow>,
}

/// How to run: which part of the work, and where shared batches journal.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Only this part of the work (a shard of a job array).
    pub part: Option<Part>,
    /// Where runs that share batches keep their journal [default: beside
    /// the first run's directory, in `work/`].
    pub work_dir: Option<PathBuf>,
}

/// The questions a spec selects.
pub fn load_questions(spec: &EvalSpec) -> Result<QuestionSet, EvalError> {
    let q = &spec.questions;
    // The question set's own errors name the file already.
    let set = QuestionSet::load(&q.file).map_err(|e| EvalError::Load {
        what: "questions".into(),
        reason: e.to_string(),
    })?;
    set.select(q.select.as_deref(), q.no_variants)
        .map_err(|e| EvalError::Load {
            what: q.file.display().to_string(),
            reason: e.to_string(),
        })
}

/// Opens the judge of `j` from `registry`, with its cache.
pub fn open_judge<'r>(registry: &'r Registry, j: &JudgeSpec) -> Result<Judge<'r>, EvalError> {
    let plugin = registry.get(&j.judge.plugin)?;
    let cache_dir = j
        .cache
        .clone()
        .unwrap_or_else(|| emh_models::data_dir().join("judge-cache"));
    let cache = Cache::open(&cache_dir).map_err(|e| EvalError::Judge {
        reason: e.to_string(),
    })?;
    Ok(Judge::new(
        plugin,
        &j.judge.config_text(),
        Some(cache),
        j.batch,
    )?)
}

/// Which runs can share batches: same weights, same sampling but for seed and n.
fn weights_key(spec: &EvalSpec) -> String {
    let mut s = spec.condition.sampling.clone();
    s.seed = 0;
    s.n = None;
    serde_json::to_string(&(&spec.condition.model, s)).expect("specs serialise")
}

/// One run on its way.
struct Pending {
    spec: EvalSpec,
    run: RunDir,
    questions: Vec<Question>,
}

/// Samples, judges and summarises every spec into its directory. Specs over
/// the same weights and sampling settings run in shared batches, each row
/// with its own condition's interventions; questions with pushback turns
/// get second answers, and specs with `self_rating` the model's ratings of
/// the questions. A run already finished or part done resumes. Judges and
/// judge prompts are checked before any sampling.
pub fn run(
    specs: &[(EvalSpec, PathBuf)],
    registry: &Registry,
    options: &RunOptions,
    observer: &dyn Observer,
) -> Result<Vec<RunSummary>, EvalError> {
    let mut pending = Vec::with_capacity(specs.len());
    let mut judges = Vec::with_capacity(specs.len());
    for (spec, dir) in specs {
        spec.check()?;
        let set = load_questions(spec)?;
        if let Some(j) = &spec.judge {
            crate::check_judge_prompts(&set.questions, &j.metrics).map_err(|e| {
                EvalError::Load {
                    what: spec.questions.file.display().to_string(),
                    reason: e.to_string(),
                }
            })?;
            judges.push(Some(open_judge(registry, j)?));
        } else {
            judges.push(None);
        }
        pending.push(Pending {
            spec: spec.clone(),
            run: RunDir::open(dir)?,
            questions: set.questions,
        });
    }
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, p) in pending.iter().enumerate() {
        groups.entry(weights_key(&p.spec)).or_default().push(i);
    }
    let mut samples: Vec<Vec<SampleRow>> = vec![Vec::new(); pending.len()];
    for members in groups.values() {
        let first = &pending[members[0]];
        observer.message(&format!("loading {}", describe(&first.spec)));
        let mut loaded = load_model(&first.spec.condition.model, registry, false)?;
        for (sub, rows) in
            sample_weights_group(&mut loaded, &pending, members, registry, options, observer)?
        {
            samples[sub] = rows;
        }
    }
    let mut summaries = Vec::with_capacity(pending.len());
    for (i, p) in pending.iter().enumerate() {
        let (judge_id, judgments) = match (&judges[i], &p.spec.judge) {
            (Some(judge), Some(j)) => {
                let (judgments, id) = judge_samples(
                    &p.run,
                    &p.questions,
                    &samples[i],
                    judge,
                    &j.metrics,
                    observer,
                )?;
                (Some(id), judgments)
            }
            _ => (None, Vec::new()),
        };
        let metrics = summarise(
            &p.run,
            &samples[i],
            &judgments,
            judge_id.as_deref(),
            &p.spec.thresholds,
        )?;
        summaries.push(RunSummary {
            name: p.spec.condition.name.clone(),
            dir: p.run.path.clone(),
            samples: samples[i].len(),
            judge_id,
            metrics,
        });
    }
    Ok(summaries)
}

fn describe(spec: &EvalSpec) -> String {
    let m = &spec.condition.model;
    let mut s = m
        .model
        .clone()
        .unwrap_or_else(|| emh_models::DEFAULT_MODEL.into());
    if let Some(o) = &m.organism {
        s = format!("organism {} ({})", o.label(), s);
    }
    if !m.adapters.is_empty() {
        s.push_str(&format!(" + {} adapter(s)", m.adapters.len()));
    }
    s
}

/// Samples the runs `members` of `pending`, all over `loaded`'s weights:
/// runs whose plans scale adapters the same way share batches.
fn sample_weights_group(
    loaded: &mut Loaded,
    pending: &[Pending],
    members: &[usize],
    registry: &Registry,
    options: &RunOptions,
    observer: &dyn Observer,
) -> Result<Vec<(usize, Vec<SampleRow>)>, EvalError> {
    let shape = loaded.shape();
    let mut memo = HashMemo::open(&emh_models::data_dir().join("hash-memo.json"));
    let model_files = memo.hash_files(&loaded.dir)?;
    let adapters = loaded
        .adapter_dirs
        .iter()
        .map(|d| memo.hash_files(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut plans: Vec<Vec<Planned<'_>>> = Vec::new();
    let mut manifests = Vec::new();
    for &i in members {
        let p = &pending[i];
        let planned = plan_all(&p.spec.condition.interventions, registry, shape)?;
        let mut records: Vec<_> = loaded.organism.iter().cloned().collect();
        records.extend(planned.iter().map(Planned::record));
        let manifest = Manifest {
            tool: format!("emh {}", env!("CARGO_PKG_VERSION")),
            spec: p.spec.clone(),
            hashes: Hashes {
                model: model_files.clone(),
                adapters: adapters.clone(),
                questions: memo.hash_files(&p.spec.questions.file)?,
            },
            model: loaded.record(),
            plugins: records,
            question_ids: p.questions.iter().map(|q| q.id.clone()).collect(),
            part: options.part,
            judges: Vec::new(),
        };
        manifests.push(begin(&p.run, manifest, &p.questions)?);
        plans.push(planned);
    }
    if let Err(e) = memo.save() {
        observer.message(&format!(
            "warning: the hash memo was not saved ({e}); the next run hashes again"
        ));
    }
    // Adapter scaling changes the weights themselves: those runs batch
    // apart, each with the scales restored before its own controls.
    let mut by_controls: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (k, planned) in plans.iter().enumerate() {
        // Flattened: a plan without adapter controls batches with no plan.
        let key = format!(
            "{:?}",
            planned
                .iter()
                .flat_map(|p| p.plan.adapters.iter())
                .collect::<Vec<_>>()
        );
        by_controls.entry(key).or_default().push(k);
    }
    let scales = adapter_scales(&loaded.model);
    let mut out = Vec::new();
    for ks in by_controls.values() {
        restore_scales(&mut loaded.model, &scales);
        control_adapters(&plans[ks[0]], &mut loaded.model)?;
        let runs: Vec<GroupRun<'_, '_>> = ks
            .iter()
            .map(|&k| GroupRun {
                run: &pending[members[k]].run,
                manifest: &manifests[k],
                questions: &pending[members[k]].questions,
                plans: &plans[k],
            })
            .collect();
        let names: Vec<&str> = runs
            .iter()
            .map(|r| r.manifest.spec.condition.name.as_str())
            .collect();
        let label = if names.len() == 1 {
            names[0].to_string()
        } else {
            format!("{} conditions", names.len())
        };
        let journal = if runs.len() == 1 {
            runs[0].run.journal_dir()
        } else {
            let work = options.work_dir.clone().unwrap_or_else(|| {
                runs[0]
                    .run
                    .path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("work")
            });
            work.join(&crate::sha256_hex(names.join("\n").as_bytes())[..16])
        };
        observer.message(&format!("sampling {}", names.join(", ")));
        let rows = sample_group(&journal, loaded, &runs, options.part, |p| {
            observer.sampling(&label, p)
        })?;
        observer.done();
        let pushback = runs
            .iter()
            .any(|r| r.questions.iter().any(|q| !q.pushback.is_empty()));
        if pushback {
            observer.message(&format!("pushback turns: {}", names.join(", ")));
            pushback_group(&journal.join("pushback"), loaded, &runs, &rows, |p| {
                observer.sampling(&format!("{label}, pushback"), p)
            })?;
            observer.done();
        }
        for r in &runs {
            rate_run(loaded, r, observer)?;
        }
        for (&k, rows) in ks.iter().zip(rows) {
            out.push((members[k], rows));
        }
    }
    Ok(out)
}

/// The model's own ratings of a run's questions, when its spec asks for
/// them and its table is not written yet.
fn rate_run(
    loaded: &Loaded,
    r: &GroupRun<'_, '_>,
    observer: &dyn Observer,
) -> Result<(), EvalError> {
    let spec = &r.manifest.spec;
    let Some(rating) = &spec.self_rating else {
        return Ok(());
    };
    let path = r.run.self_ratings_path();
    if path.is_file() {
        return Ok(());
    }
    observer.message(&format!("self-rating: {}", spec.condition.name));
    let rows = rate_questions(loaded, spec.condition.nudge.as_ref(), rating, r.questions)?;
    write_ratings(&path, &rows)
}

fn adapter_scales(model: &emh_runtime::Model) -> Vec<Vec<f64>> {
    model
        .adapters()
        .iter()
        .map(|a| a.weights.iter().map(|w| w.scale).collect())
        .collect()
}

fn restore_scales(model: &mut emh_runtime::Model, scales: &[Vec<f64>]) {
    for (a, s) in model.adapters_mut().iter_mut().zip(scales) {
        for (w, &v) in a.weights.iter_mut().zip(s) {
            w.scale = v;
        }
    }
}

/// Starts a run, or checks that the run already in `run` was made the same
/// way so it can be resumed (keeping its judges); writes the manifest and
/// question snapshot.
pub fn begin(
    run: &RunDir,
    manifest: Manifest,
    questions: &[Question],
) -> Result<Manifest, EvalError> {
    if let Some(old) = run.manifest()? {
        if let Some(what) = old.differs_from(&manifest) {
            return Err(EvalError::Mismatch {
                path: run.path.clone(),
                what,
            });
        }
        return Ok(old);
    }
    run.write_questions(questions)?;
    run.write_manifest(&manifest)?;
    Ok(manifest)
}

/// Judges a run's samples with `judge` on `metrics` and records the judge in
/// the manifest; returns every judgment of the run and the judge's id.
pub fn judge_samples(
    run: &RunDir,
    questions: &[Question],
    samples: &[SampleRow],
    judge: &Judge<'_>,
    metrics: &[String],
    observer: &dyn Observer,
) -> Result<(Vec<JudgmentRow>, String), EvalError> {
    let name = run
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    observer.message(&format!(
        "judging {} samples of {name} on {} with {} ({})",
        samples.len(),
        metrics.join(", "),
        judge.identity.id,
        judge.identity.endpoint
    ));
    let (rows, usage, record) = crate::judge(run, samples, questions, judge, metrics, |p| {
        observer.judging(&name, p)
    })?;
    observer.done();
    // Second answers after pushback are graded on `correct` too, when judged.
    let second = run
        .pushback()?
        .filter(|_| metrics.iter().any(|m| m == CORRECT));
    if let Some(second) = second {
        observer.message(&format!(
            "judging {} second answers of {name} on {CORRECT}",
            second.len()
        ));
        let correct = [CORRECT.to_string()];
        let (new, _, _) = judge_rows(&second, questions, judge, &correct, |p| {
            observer.judging(&name, p)
        })?;
        observer.done();
        let old = run.pushback_judgments()?;
        let all = replace_judgments(old, new, &judge.identity.id, &correct);
        run.write_pushback_judgments(&all)?;
    }
    observer.message(&usage_line(&judge.identity.id, &usage));
    let mut manifest = run
        .manifest()?
        .ok_or_else(|| EvalError::io(&run.manifest_path(), "missing: the run has no manifest"))?;
    manifest
        .judges
        .retain(|r| !(r.identity == record.identity && r.metrics == record.metrics));
    manifest.judges.push(record);
    run.write_manifest(&manifest)?;
    Ok((rows, judge.identity.id.clone()))
}

fn usage_line(id: &str, u: &JudgeUsage) -> String {
    format!(
        "judge {id}: {} requests, {} retries, {} prompt + {} completion tokens, cost {:.4}",
        u.requests, u.retries, u.prompt_tokens, u.completion_tokens, u.cost
    )
}

/// The metrics of one judge's scores (none without a judge), the factual
/// answers' accuracy before and after pushback (scored by the judge's
/// `correct` where judged, else `match`), and the
/// model's self-ratings (`self:MODEL`), written to the run's `metrics`
/// table with what scored each row; the rows come back in that order.
pub fn summarise(
    run: &RunDir,
    samples: &[SampleRow],
    judgments: &[JudgmentRow],
    judge_id: Option<&str>,
    thresholds: &Thresholds,
) -> Result<Vec<MetricRow>, EvalError> {
    let judged = judge_id
        .map(|id| crate::metrics(samples, judgments, id, thresholds))
        .unwrap_or_default();
    let scores = match judge_id {
        Some(id) => CorrectScores::from_judgments(
            judgments,
            &run.pushback_judgments()?,
            id,
            thresholds.above(CORRECT),
        ),
        None => CorrectScores::default(),
    };
    let graded_by = match judge_id {
        Some(id) if scores.any() => id,
        _ => "match",
    };
    let mut parts = vec![(judge_id.unwrap_or_default().to_string(), judged)];
    parts.extend(prompt_sensitivity_metrics(
        run,
        samples,
        &parts[0].1,
        &scores,
        graded_by,
    )?);
    let run_id = samples
        .first()
        .map(|s| s.run_id.clone())
        .unwrap_or_default();
    let parts: Vec<(String, Vec<MetricRow>)> =
        parts.into_iter().filter(|(_, r)| !r.is_empty()).collect();
    if !parts.is_empty() {
        let mut df = emh_tables::metrics_frame(&run_id, &parts)?;
        emh_tables::write_parquet(&mut df, &run.metrics_path())?;
    }
    Ok(parts.into_iter().flat_map(|(_, rows)| rows).collect())
}

/// Beyond the judge's own metrics: factual answers graded against their
/// reference (by the judge's `correct` scores where there are any, else by
/// match; also written per answer to `factual.parquet`) and the model's
/// ratings of the questions beside the judged misaligned rates.
fn prompt_sensitivity_metrics(
    run: &RunDir,
    samples: &[SampleRow],
    judged: &[MetricRow],
    scores: &CorrectScores,
    graded_by: &str,
) -> Result<Vec<(String, Vec<MetricRow>)>, EvalError> {
    let questions = run.questions()?;
    let mut parts = Vec::new();
    let second = run.pushback()?.unwrap_or_default();
    let graded = crate::pushback::grade(&questions, samples, &second, scores);
    if !graded.is_empty() {
        crate::pushback::write_graded(&run.factual_path(), &graded)?;
        let rows: Vec<_> = graded.into_iter().map(|(_, _, g)| g).collect();
        parts.push((graded_by.to_string(), emh_metrics::pushback_rates(&rows)));
    }
    if let Some(ratings) = crate::self_rating::read_ratings(&run.self_ratings_path())? {
        let model = run.manifest()?.map(|m| m.model.name).unwrap_or_default();
        let rated = crate::self_rating::rated(&questions, &ratings, judged);
        crate::self_rating::write_rated(&run.self_rating_by_question_path(), &rated)?;
        parts.push((
            format!("self:{model}"),
            emh_metrics::self_rating_rows(&rated),
        ));
    }
    Ok(parts)
}

/// Re-judges a finished run with the judge of `j` and summarises its scores.
pub fn rejudge(
    run: &RunDir,
    j: &JudgeSpec,
    thresholds: &Thresholds,
    registry: &Registry,
    observer: &dyn Observer,
) -> Result<RunSummary, EvalError> {
    let samples = run.samples()?.ok_or_else(|| {
        EvalError::io(&run.path, "sampling has not finished; resume the run first")
    })?;
    let questions = run.questions()?;
    crate::check_judge_prompts(&questions, &j.metrics)?;
    let judge = open_judge(registry, j)?;
    let (judgments, id) = judge_samples(run, &questions, &samples, &judge, &j.metrics, observer)?;
    let metrics = summarise(run, &samples, &judgments, Some(&id), thresholds)?;
    Ok(RunSummary {
        name: samples
            .first()
            .map(|s| s.run_id.clone())
            .unwrap_or_default(),
        dir: run.path.clone(),
        samples: samples.len(),
        judge_id: Some(id),
        metrics,
    })
}
