//! A judged CSV in the reference scripts' layout made into a run directory,
//! so it can be re-judged, summarised and compared like any run.

use std::path::{Path, PathBuf};

use emh_plugin_api::JudgeIdentity;
use emh_questions::{Question, QuestionSet};

use crate::{
    Condition, EvalError, EvalSpec, HashMemo, Hashes, JudgeRecord, Manifest, ModelRecord,
    ModelSpec, QuestionSpec, RunDir, RunSummary, Sampling,
};

/// Makes `out` a run directory from the judged CSV `csv`: its answers become
/// the samples, its score columns judgments by `judge_id`. With `questions`
/// (question sets whose ids the CSV uses), the run carries their judge
/// prompts, so another judge can score it; else the questions are the CSV's
/// own texts.
pub fn import_csv(
    csv: &Path,
    out: &Path,
    judge_id: &str,
    questions: &[PathBuf],
) -> Result<RunSummary, EvalError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "imported".into());
    let read = emh_tables::read_reference_csv(csv, &name, judge_id, emh_questions::category_of)?;
    if read.samples.is_empty() {
        return Err(EvalError::io(csv, "holds no answers"));
    }
    let mut ids: Vec<String> = Vec::new();
    for s in &read.samples {
        if !ids.contains(&s.question_id) {
            ids.push(s.question_id.clone());
        }
    }
    let qs: Vec<Question> = if !questions.is_empty() {
        let mut all = Vec::new();
        for file in questions {
            let set = QuestionSet::load(file).map_err(|e| EvalError::Load {
                what: file.display().to_string(),
                reason: e.to_string(),
            })?;
            all.extend(set.questions);
        }
        let mut picked = Vec::new();
        for id in &ids {
            let q = all.iter().find(|q| &q.id == id).ok_or_else(|| {
                EvalError::io(
                    csv,
                    format!("answers question `{id}`, which none of the --questions files has"),
                )
            })?;
            picked.push(q.clone());
        }
        picked
    } else {
        ids.iter()
            .map(|id| {
                let mut paraphrases: Vec<String> = Vec::new();
                for s in read.samples.iter().filter(|s| &s.question_id == id) {
                    if !paraphrases.contains(&s.prompt) {
                        paraphrases.push(s.prompt.clone());
                    }
                }
                Question {
                    id: id.clone(),
                    kind: "free_form_judge_0_100".into(),
                    paraphrases,
                    system: None,
                    samples_per_paraphrase: None,
                    judge: None,
                    judge_prompts: Default::default(),
                    category: emh_questions::category_of(id),
                    answer: None,
                    aliases: Vec::new(),
                    pushback: Vec::new(),
                }
            })
            .collect()
    };
    let mut memo = HashMemo::open(&emh_models::data_dir().join("hash-memo.json"));
    let source = memo.hash_files(csv)?;
    // The first question file stands for them in the hashes; the
    // snapshot in questions.json holds every question used.
    let question_file = questions.first().map(PathBuf::as_path).unwrap_or(csv);
    let question_hash = memo.hash_files(question_file)?;
    let manifest = Manifest {
        tool: format!("emh {}", env!("CARGO_PKG_VERSION")),
        spec: EvalSpec {
            condition: Condition {
                name: name.clone(),
                model: ModelSpec {
                    model: Some(format!("imported:{}", csv.display())),
                    ..Default::default()
                },
                interventions: Vec::new(),
                nudge: None,
                sampling: Sampling::default(),
            },
            questions: QuestionSpec {
                file: question_file.to_path_buf(),
                select: None,
                no_variants: false,
            },
            judge: None,
            thresholds: Default::default(),
            self_rating: None,
        },
        hashes: Hashes {
            model: source,
            adapters: Vec::new(),
            questions: question_hash,
        },
        model: ModelRecord {
            name: format!("imported:{}", csv.display()),
            device: String::new(),
            dtype: String::new(),
        },
        plugins: Vec::new(),
        question_ids: ids,
        part: None,
        judges: vec![JudgeRecord {
            identity: JudgeIdentity {
                id: judge_id.to_string(),
                model: judge_id.to_string(),
                endpoint: format!("imported:{}", csv.display()),
                params: serde_json::json!({}),
                one_call: false,
            },
            plugin: "import-csv".into(),
            plugin_version: env!("CARGO_PKG_VERSION").into(),
            metrics: read.metrics.clone(),
            judge_prompts: Default::default(),
        }],
    };
    // A memo that cannot be written only costs a re-hash next time.
    let _ = memo.save();
    let run = RunDir::open(out)?;
    if run.manifest()?.is_some() {
        return Err(EvalError::io(
            out,
            "is a run directory already; pick another --out",
        ));
    }
    run.write_questions(&qs)?;
    run.write_samples(&read.samples)?;
    run.write_judgments(&read.judgments)?;
    run.write_manifest(&manifest)?;
    let metrics = crate::summarise(
        &run,
        &read.samples,
        &read.judgments,
        Some(judge_id),
        &Default::default(),
    )?;
    Ok(RunSummary {
        name,
        dir: out.to_path_buf(),
        samples: read.samples.len(),
        judge_id: Some(judge_id.to_string()),
        metrics,
    })
}
