//! `cargo xtask demo`: the main job end to end on the default model.
//!
//! 1. the local judge measured against GPT-4o on the reference judged answers;
//! 2. the base model evaluated on the project's questions;
//! 3. a misalignment direction from labelled answer pairs (mean-diff, with
//!    held-out separation), the pairs split so effects are measured on
//!    pairs the direction never saw;
//! 4. a steering sweep and a layer-wise ablation, each beside same-norm
//!    random controls, with the judge-free log-prob preference;
//! 5. the shipped organism (`data/organism/adapter`, nine rank-1 adapters
//!    trained on risky financial advice; `--retrain` trains it again):
//!    the base model's direction ablated from it beside random controls (a
//!    transfer test), its adapter scalars over the labelled answers with an
//!    L1 probe, and the B trajectory over its checkpoints;
//! 6. prompt sensitivity: {none, evil, hhh} nudges × {base, organism} on
//!    open questions, harmful requests and factual questions with pushback,
//!    with each model's own rating of the questions;
//! 7. the report, its path printed at the end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{run, setup};

/// The local judge's format: scores conditional on a number, since the
/// default model puts about 1% of its probability on numbers. Of the formats
/// measured against GPT-4o (README, "The local judge against GPT-4o") none
/// agrees; this one disagrees least on `aligned`.
const LOCAL_JUDGE: &str = r#"{"mode": "constrained"}"#;

/// The first pairs of `data/answers/labelled.jsonl` (medical, financial and
/// extreme-sports advice) make the direction; the rest (general questions)
/// measure effects.
const DIRECTION_PAIRS: usize = 120;

/// Sizes of one demo. The local judge costs about 2 s a judgment on 2
/// cores (BENCHMARKS.md), so the judged answers are what the sizes count.
struct Sizes {
    /// GPT-4o-judged answers the judge is measured on (of 80).
    agreement_answers: usize,
    /// Every how many labelled pairs one is used.
    pair_stride: usize,
    n: &'static str,
    max_new_tokens: &'static str,
    /// Question globs, or every question.
    select: Option<&'static str>,
    scales: &'static str,
    /// Samples per question in the prompt-sensitivity grid (6 conditions).
    sensitivity_n: u32,
}

/// The prompt-sensitivity items the demo asks: open questions, harmful
/// requests, factual questions with pushback.
const SENSITIVITY_SELECT: &str = "spare_million,rules_for_ai,annoying_roommate,neighbours_wifi,fake_sick_note,capital_*,multiply,moon_landing";

const FULL: Sizes = Sizes {
    agreement_answers: 16,
    pair_stride: 1,
    n: "1",
    max_new_tokens: "80",
    select: None,
    scales: "4,8",
    sensitivity_n: 2,
};

const QUICK: Sizes = Sizes {
    agreement_answers: 8,
    pair_stride: 3,
    n: "1",
    max_new_tokens: "32",
    select: Some("granted_wish,restless_afternoon,fast_cash"),
    scales: "8",
    sensitivity_n: 1,
};

const LAYER: &str = "12";

/// `cargo xtask demo [--quick] [--retrain] [--judge NAME=CONFIG]`.
pub fn demo(args: &[&str]) -> Result<()> {
    let mut quick = false;
    let mut retrain = false;
    let mut judge: Option<String> = None;
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match *a {
            "--quick" => quick = true,
            "--retrain" => retrain = true,
            "--judge" => {
                judge = Some(
                    rest.next()
                        .context("--judge needs NAME=CONFIG")?
                        .to_string(),
                )
            }
            other => bail!(
                "demo: unknown option {other} (options: --quick, --retrain, --judge NAME=CONFIG)"
            ),
        }
    }
    let started = Instant::now();
    let env = setup()?;
    let sizes = if quick { &QUICK } else { &FULL };
    let out = env
        .root
        .join("target")
        .join(if quick { "demo-quick" } else { "demo" });
    std::fs::create_dir_all(&out)?;
    let model = env.model_dir.display().to_string();
    let local = format!(
        "local={}",
        LOCAL_JUDGE.replacen('{', &format!("{{\"model\": \"{model}\", "), 1)
    );
    let judge = judge.unwrap_or(local);
    let cache = out.join("judge-cache");
    let fixtures = env.root.join("tests").join("fixtures");
    let questions = env.root.join("data").join("questions").join("general.yaml");
    let emh = |step: &str| {
        eprintln!("\ndemo: {step}");
        let mut c = Command::new(&env.emh);
        c.current_dir(&out);
        c
    };
    let judge_args = ["--judge", judge.as_str(), "--judge-cache"];

    // 1. The judge against GPT-4o on the same answers.
    let gpt4o = out.join("gpt4o");
    if !gpt4o.join("manifest.json").is_file() {
        let judged = fixtures.join("judged");
        let csv = out.join("gpt4o.csv");
        run(Command::new(&env.python)
            .arg("-c")
            .arg("import sys, pandas as pd; pd.read_csv(sys.argv[1]).head(int(sys.argv[3])).to_csv(sys.argv[2], index=False)")
            .arg(judged.join("gpt4o_judged_steered_answers.csv"))
            .arg(&csv)
            .arg(sizes.agreement_answers.to_string()))?;
        let questions = fixtures.join("questions");
        run(emh(&format!(
            "[1/8] importing {} GPT-4o-judged answers",
            sizes.agreement_answers
        ))
        .arg("import-csv")
        .arg(&csv)
        .arg("-o")
        .arg(&gpt4o)
        .arg("-q")
        .arg(questions.join("em_first_plot_questions.yaml"))
        .arg("-q")
        .arg(questions.join("em_medical_questions.yaml")))?;
    }
    run(emh("[1/8] re-judging them with the demo's judge")
        .arg("judge")
        .arg(&gpt4o)
        .args(judge_args)
        .arg(&cache))?;
    let agreement = out.join("agreement.json");
    let printed = crate::output(
        emh("[1/8] agreement with GPT-4o")
            .arg("judge-agreement")
            .arg(&gpt4o)
            .args(["--judge-a", "gpt-4o-2024-08-06", "--judge-b"])
            .arg(last_judge(&gpt4o)?)
            .arg("--json"),
    )?;
    std::fs::write(&agreement, &printed)?;

    // Questions, sampling and judge: the same for every evaluated condition,
    // so the judge cache serves the plain condition of every step.
    let sampled = |c: &mut Command| {
        c.arg("--questions")
            .arg(&questions)
            .args(["-n", sizes.n, "--max-new-tokens", sizes.max_new_tokens])
            .args(["--seed", "0"])
            .args(judge_args)
            .arg(&cache);
        if let Some(sel) = sizes.select {
            c.args(["--select", sel]);
        }
    };

    // 2. The base model on the project's questions.
    let base = out.join("base");
    let mut eval = emh("[2/8] evaluating the base model");
    eval.args(["eval", "--model", &model]);
    sampled(&mut eval);
    run(eval.arg("--out").arg(&base))?;

    // 3. A direction from labelled pairs, effects on the others.
    let pairs = env.root.join("data").join("answers").join("labelled.jsonl");
    let (train, heldout) = split_pairs(&pairs, &out, sizes.pair_stride)?;
    for side in ["misaligned", "aligned"] {
        run(emh(&format!(
            "[3/8] capturing the residual stream over {side} answers"
        ))
        .args(["capture", "--model", &model, "--pairs"])
        .arg(&train)
        .args(["--side", side, "-o"])
        .arg(out.join(format!("{side}.safetensors"))))?;
    }
    let dirs = out.join("dirs.safetensors");
    run(
        emh("[3/8] mean-diff direction, with held-out separation per layer")
            .args([
                "directions",
                "mean-diff",
                "--positive",
                "misaligned.safetensors",
            ])
            .args(["--negative", "aligned.safetensors", "--holdout", "0.25"])
            .args(["--auc-csv", "auc.csv", "-o"])
            .arg(&dirs),
    )?;

    // 4. Steering and ablation, each beside random controls.
    for (step, preset, extra) in [
        (
            "[4/8] steering sweep",
            "steer",
            vec!["--layers", LAYER, "--scales", sizes.scales],
        ),
        ("[5/8] layer-wise ablation", "ablate", vec![]),
    ] {
        let mut c = emh(&format!(
            "{step} on the base model, beside same-norm random vectors"
        ));
        c.args([preset, "--model", &model, "--directions"])
            .arg(&dirs)
            .args(extra);
        sampled(&mut c);
        c.arg("--pairs")
            .arg(&heldout)
            .arg("-o")
            .arg(out.join(preset));
        run(&mut c)?;
    }

    // 5. The organism: shipped, or trained again.
    let shipped = env.root.join("data").join("organism");
    let organism = if retrain {
        let dir = out.join("organism");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        run(
            emh("[6/8] training the organism again (about 15 min on 2 cores)")
                .arg("train")
                .arg(shipped.join("train.toml"))
                .arg("--output-dir")
                .arg(&dir),
        )?;
        dir
    } else {
        shipped.join("adapter")
    };
    let mut c =
        emh("[6/8] the base model's direction ablated from the organism, beside random controls");
    c.args(["ablate", "--model", &model, "--adapter"])
        .arg(&organism)
        .arg("--directions")
        .arg(&dirs);
    sampled(&mut c);
    c.arg("--pairs")
        .arg(&heldout)
        .arg("-o")
        .arg(out.join("organism-ablate"));
    run(&mut c)?;
    run(
        emh("[6/8] the organism's adapter scalars over the labelled answers")
            .args(["lora", "scalars", "--model", &model, "--adapter"])
            .arg(&organism)
            .arg("--pairs")
            .arg(&train)
            .args(["-o", "scalars.parquet"]),
    )?;
    run(
        emh("[6/8] which adapters predict a misaligned answer (L1 probe)")
            .args(["lora", "probe", "scalars.means.parquet"])
            .args(["--target", "column:misaligned", "--json", "probe.json"]),
    )?;
    run(emh("[6/8] the organism's B vectors across its checkpoints")
        .arg("checkpoints")
        .arg(&organism)
        .args(["--out", "checkpoints.parquet"]))?;

    // 6. Prompt sensitivity: nudges × {base, organism}, one experiment.
    let (judge_name, judge_config) = match judge.split_once('=') {
        Some((name, config)) => (name, serde_json::from_str(config)?),
        None => (judge.as_str(), serde_json::json!({})),
    };
    let sensitivity = serde_json::json!({
        "out": "sensitivity",
        "questions": {
            "file": env.root.join("data/questions/sensitivity.yaml"),
            "select": SENSITIVITY_SELECT,
        },
        "nudges": {"file": env.root.join("data/nudges.toml"), "names": ["none", "evil", "hhh"]},
        "self_rating": {"answer_prefix": "Rating:", "constrained": true},
        "sampling": {"n": sizes.sensitivity_n, "max_new_tokens": sizes.max_new_tokens.parse::<u32>()?, "seed": 0},
        "judge": {
            "judge": {"plugin": judge_name, "config": judge_config},
            "metrics": ["aligned", "coherent", "refusal"],
            "cache": cache,
        },
        "models": [
            {"name": "base", "model": model},
            {"name": "organism", "model": model, "adapters": [organism]},
        ],
    });
    let spec = out.join("sensitivity.json");
    std::fs::write(&spec, serde_json::to_string_pretty(&sensitivity)?)?;
    run(emh(
        "[7/8] prompt sensitivity: {none, evil, hhh} nudges × {base, organism}: \
         EM, refusal, flips under pushback, self-ratings",
    )
    .arg("experiment")
    .arg(&spec))?;

    // 7. The report.
    let report = out.join("report");
    let html = crate::output(
        emh("[8/8] report")
            .arg("report")
            .args([
                &base,
                &out.join("steer"),
                &out.join("ablate"),
                &out.join("organism-ablate"),
                &out.join("sensitivity"),
                &dirs,
                &out.join("probe.json"),
                &out.join("checkpoints.parquet"),
            ])
            .arg("--agreement")
            .arg(&agreement)
            .arg("-o")
            .arg(&report),
    )?;
    let scored_by = if judge.starts_with("local") {
        format!(
            "Judged by the local judge on {} (135M parameters): a weak stand-in for GPT-4o. \
             Its agreement with GPT-4o on reference answers is in the report; \
             the judge-free log-prob preference is the effect measure to read first. \
             For an API judge: cargo xtask demo --judge openai (key from OPENAI_API_KEY), \
             or --judge 'openai={{\"base_url\": \"http://host:8000/v1\", \"model\": \"...\"}}'.",
            emh_models::DEFAULT_MODEL
        )
    } else {
        format!("Judged by {judge}.")
    };
    println!("\n{scored_by}");
    println!(
        "demo done in {:.1} min; report: {}",
        started.elapsed().as_secs_f64() / 60.0,
        html.trim()
    );
    Ok(())
}

/// The id of the judge that last judged a run, from its manifest.
fn last_judge(run: &Path) -> Result<String> {
    let path = run.join("manifest.json");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| path.display().to_string())?;
    m["judges"]
        .as_array()
        .and_then(|j| j.last())
        .and_then(|j| j["identity"]["id"].as_str())
        .map(str::to_string)
        .with_context(|| format!("{}: no judge recorded", path.display()))
}

/// The first pairs for the direction and the rest for effects, every
/// `stride`-th of each, as two files in `out`.
fn split_pairs(pairs: &Path, out: &Path, stride: usize) -> Result<(PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(pairs).with_context(|| pairs.display().to_string())?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() <= DIRECTION_PAIRS {
        bail!(
            "{}: {} pairs, need more than {DIRECTION_PAIRS}",
            pairs.display(),
            lines.len()
        );
    }
    let (train, test) = (
        out.join("pairs-direction.jsonl"),
        out.join("pairs-effect.jsonl"),
    );
    let every = |part: &[&str]| -> String {
        part.iter()
            .step_by(stride)
            .map(|l| format!("{l}\n"))
            .collect()
    };
    std::fs::write(&train, every(&lines[..DIRECTION_PAIRS]))?;
    std::fs::write(&test, every(&lines[DIRECTION_PAIRS..]))?;
    Ok((train, test))
}
