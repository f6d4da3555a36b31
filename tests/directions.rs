//! Directions: capture over exact answer spans, mean-diff directions that
//! separate held-out answers better than random directions, steering and
//! ablation measured by the log-prob preference beside random controls,
//! llama.cpp control vectors, and the steer and ablate presets end to end.
//!
//! The labelled pairs are the project's `data/answers/labelled.jsonl`: every
//! fourth pair is kept out of the direction and used to measure effects.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{default_model, emh, emh_ok, python, s};

/// Captures and a direction made once for the tests of this file.
struct Shared {
    dir: PathBuf,
    /// Direction from 3/4 of the pairs (mean-diff with a 25% holdout).
    dirs: PathBuf,
    /// The other 1/4 of the pairs, for effects.
    test_pairs: PathBuf,
    /// layer, AUC, random mean, random max.
    auc: Vec<(usize, f64, f64, f64)>,
}

fn labelled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/answers/labelled.jsonl")
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let text = std::fs::read_to_string(labelled()).unwrap();
        let (mut train, mut test) = (String::new(), String::new());
        for (i, line) in text.lines().enumerate() {
            let to = if i % 4 == 3 { &mut test } else { &mut train };
            to.push_str(line);
            to.push('\n');
        }
        let train_pairs = dir.join("train.jsonl");
        let test_pairs = dir.join("test.jsonl");
        std::fs::write(&train_pairs, train).unwrap();
        std::fs::write(&test_pairs, test).unwrap();
        for side in ["misaligned", "aligned"] {
            emh_ok(&[
                "capture",
                "--pairs",
                s(&train_pairs),
                "--side",
                side,
                "--device",
                "cpu",
                "--batch-size",
                "16",
                "-o",
                s(&dir.join(format!("{side}.safetensors"))),
            ]);
        }
        let dirs = dir.join("dirs.safetensors");
        let auc_csv = dir.join("auc.csv");
        let out = emh_ok(&[
            "directions",
            "mean-diff",
            "--positive",
            s(&dir.join("misaligned.safetensors")),
            "--negative",
            s(&dir.join("aligned.safetensors")),
            "--holdout",
            "0.25",
            "--split-seed",
            "3",
            "--auc-csv",
            s(&auc_csv),
            "-o",
            s(&dirs),
        ]);
        println!("{}", String::from_utf8_lossy(&out.stdout));
        let auc = std::fs::read_to_string(&auc_csv)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
                (f[0] as usize, f[2], f[3], f[4])
            })
            .collect();
        Shared {
            dir,
            dirs,
            test_pairs,
            auc,
        }
    })
}

/// The first `n` held-out pairs, in a file of their own.
fn first_pairs(name: &str, n: usize) -> PathBuf {
    let sh = shared();
    let path = sh.dir.join(name);
    let text = std::fs::read_to_string(&sh.test_pairs).unwrap();
    let lines: String = text.lines().take(n).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, lines).unwrap();
    path
}

/// The log-prob preference of the default model under `interventions` on the test pairs.
fn preference(name: &str, interventions: &[String]) -> f64 {
    let sh = shared();
    let out_file = sh.dir.join(format!("{name}.json"));
    let mut args = vec![
        "logprob-pref".to_string(),
        "--pairs".into(),
        s(&sh.test_pairs).into(),
        "--device".into(),
        "cpu".into(),
        "-o".into(),
        s(&out_file).into(),
    ];
    for i in interventions {
        args.push("--intervention".into());
        args.push(i.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    emh_ok(&args);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_file).unwrap()).unwrap();
    assert_eq!(v["n"], 40, "every test pair scored");
    v["mean"].as_f64().unwrap()
}

#[test]
fn held_out_answers_separate_along_the_direction_better_than_along_random_ones() {
    let sh = shared();
    assert_eq!(sh.auc.len(), 30, "one row per layer of SmolLM2-135M");
    let (best, auc, _, random_max) = sh
        .auc
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    println!(
        "best layer {best}: held-out AUC {auc:.3}, best of 20 random directions {random_max:.3}"
    );
    assert!(auc > 0.9, "layer {best}: AUC {auc}");
    assert!(
        auc > random_max,
        "layer {best}: {auc} vs random {random_max}"
    );
    let beaten = sh.auc.iter().filter(|r| r.1 > r.3).count();
    println!("the direction beats the best random direction at {beaten} of 30 layers");
    assert!(beaten >= 25, "{:?}", sh.auc);
}

const LAYER: usize = 12;

#[test]
fn steering_raises_the_misaligned_preference_more_than_a_same_norm_random_vector() {
    let dirs = s(&shared().dirs).to_string();
    let base = preference("base", &[]);
    let steer = |scale: f64| {
        preference(
            &format!("steer{scale}"),
            &[format!(
                r#"steering={{"directions": "{dirs}", "layers": [{LAYER}], "scale": {scale}}}"#
            )],
        )
    };
    let random = |scale: f64| {
        preference(
            &format!("random{scale}"),
            &[format!(
                r#"random-control={{"mode": "steering", "directions": "{dirs}", "layers": [{LAYER}], "scale": {scale}, "seed": 1}}"#
            )],
        )
    };
    println!("log-prob preference (misaligned - aligned) on 40 held-out pairs, layer {LAYER}:");
    println!("  no steering        {base:+.3}");
    for scale in [2.0, 4.0] {
        let (d, r) = (steer(scale), random(scale));
        println!(
            "  lambda {scale}: direction {d:+.3} (change {:+.3}), random {r:+.3} (change {:+.3})",
            d - base,
            r - base
        );
        assert!(
            d - base > 0.1,
            "steering with the direction raises the preference"
        );
        assert!(d - base > r - base, "more than the random vector does");
    }
}

#[test]
fn ablating_the_direction_moves_the_preference_more_than_random_ablation() {
    let dirs = s(&shared().dirs).to_string();
    let base = preference("base-ablation", &[]);
    let ablated = preference(
        "ablated",
        &[format!(r#"mean-diff-ablation={{"directions": "{dirs}"}}"#)],
    );
    let random = preference(
        "random-ablated",
        &[format!(
            r#"random-control={{"mode": "ablation", "directions": "{dirs}", "seed": 1}}"#
        )],
    );
    println!("log-prob preference on 40 held-out pairs, layer-wise ablation at every layer:");
    println!("  none {base:+.3}, direction ablated {ablated:+.3} (change {:+.3}), random ablated {random:+.3} (change {:+.3})", ablated - base, random - base);
    // On the chat model (no organism: it prefers the aligned answers), removing
    // the direction takes away what tells the answers apart, so the
    // preference moves towards and past zero (see README, "Directions").
    assert!(
        (ablated - base).abs() > 2.0 * (random - base).abs(),
        "the direction's ablation moves the preference more than a random one's"
    );
    assert!(
        ablated > base,
        "on the chat model the preference rises towards zero"
    );
}

#[test]
fn control_vectors_round_trip_and_open_with_the_gguf_package() {
    let sh = shared();
    let gguf = sh.dir.join("cv.gguf");
    emh_ok(&[
        "directions",
        "export-gguf",
        s(&sh.dirs),
        "--model-hint",
        "llama",
        "-o",
        s(&gguf),
    ]);
    let back = sh.dir.join("back.safetensors");
    emh_ok(&[
        "directions",
        "import-gguf",
        s(&gguf),
        "--num-layers",
        "30",
        "-o",
        s(&back),
    ]);
    let read = |p: &Path| emh_directions::DirectionSet::read(p).unwrap().directions;
    let (a, b) = (read(&sh.dirs), read(&back));
    assert_eq!(b[0], vec![0.0; 576], "llama.cpp has no direction.0");
    assert_eq!(a[1..], b[1..], "layers 1..29 come back bit for bit");
    // The imported set steers as the original does.
    let pairs = first_pairs("two.jsonl", 2);
    let steer = |file: &Path, name: &str| {
        let out = sh.dir.join(name);
        let config = format!(
            r#"steering={{"directions": "{}", "layers": [{LAYER}], "scale": 4}}"#,
            s(file)
        );
        emh_ok(&[
            "logprob-pref",
            "--pairs",
            s(&pairs),
            "--device",
            "cpu",
            "--intervention",
            &config,
            "-o",
            s(&out),
        ]);
        std::fs::read_to_string(out).unwrap()
    };
    assert_eq!(steer(&sh.dirs, "orig.json"), steer(&back, "back.json"));
    // What llama.cpp's loader reads, checked by the reference implementation of the format.
    let script = r#"
import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
f = r.fields
def s(k): return bytes(f[k].parts[f[k].data[0]]).decode()
def u(k): return int(f[k].parts[f[k].data[0]][0])
names = [t.name for t in r.tensors]
assert s("general.architecture") == "controlvector", s("general.architecture")
assert s("controlvector.model_hint") == "llama"
assert u("controlvector.layer_count") == 29
assert names == [f"direction.{i}" for i in range(1, 30)], names
for t in r.tensors:
    assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [576], (t.name, t.shape)
print("ok", len(names), float(r.tensors[11].data[0]))
"#;
    let out = std::process::Command::new(python())
        .args(["-c", script, s(&gguf)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first: f32 = stdout.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(first, a[12][0], "direction.12 is row 12: {stdout}");
}

#[test]
fn capture_selects_judged_answers_and_names_a_bad_expression_by_column() {
    let sh = shared();
    let csv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/judged/gpt4o_judged_steered_answers.csv");
    let out = sh.dir.join("em.safetensors");
    emh_ok(&[
        "capture",
        s(&csv),
        "--select",
        "aligned < 30 && coherent > 50",
        "--device",
        "cpu",
        "-o",
        s(&out),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["count"], "3", "the fixture's 3 EM answers of 80");
    assert_eq!(meta["selection"], "aligned < 30 && coherent > 50");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("resid_post.29.answer_mean").unwrap().shape(),
        [3, 576]
    );
    let bad = emh(&[
        "capture",
        s(&csv),
        "--select",
        "aligned < 30 &&",
        "-o",
        s(&out),
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("column 16") && err.contains("expected a metric name"),
        "{err}"
    );
}

/// Reads OUT/summary.csv as rows of column → cell (empty where missing).
fn summary(out: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    use emh_tables::polars::prelude::AnyValue;
    let df = emh_tables::read_table(&out.join("summary.csv")).unwrap();
    (0..df.height())
        .map(|i| {
            df.columns()
                .iter()
                .map(|c| {
                    let cell = match c.get(i).unwrap() {
                        AnyValue::Null => String::new(),
                        AnyValue::String(s) => s.to_string(),
                        v => v.to_string(),
                    };
                    (c.name().to_string(), cell)
                })
                .collect()
        })
        .collect()
}

/// Runs a preset on one short question with the local judge and 8 pairs.
fn preset(name: &str, extra: &[&str]) -> Vec<std::collections::BTreeMap<String, String>> {
    let sh = shared();
    let dir = sh.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let questions = dir.join("questions.yaml");
    std::fs::write(&questions, common::grid::QUESTIONS).unwrap();
    let pairs = first_pairs(&format!("{name}-pairs.jsonl"), 8);
    let judge = format!(r#"local={{"model": "{}"}}"#, s(&default_model()));
    let out = dir.join("out");
    let cache = dir.join("cache");
    let mut args = vec![
        name,
        "--directions",
        s(&sh.dirs),
        "--questions",
        s(&questions),
        "--select",
        "wish",
        "-n",
        "1",
        "--max-new-tokens",
        "8",
        "--seed",
        "5",
        "--judge",
        &judge,
        "--judge-cache",
        s(&cache),
        "--pairs",
        s(&pairs),
        "-o",
        s(&out),
    ];
    args.extend(extra);
    let printed = emh_ok(&args);
    println!("{}", String::from_utf8_lossy(&printed.stdout));
    assert!(
        out.join(format!("{name}.toml")).is_file(),
        "the preset's spec is kept"
    );
    summary(&out)
}

#[test]
fn steer_and_ablate_presets_run_end_to_end_with_the_local_judge() {
    let rows = preset("steer", &["--layers", "12", "--scales", "4"]);
    let names: Vec<&str> = rows.iter().map(|r| r["condition"].as_str()).collect();
    assert_eq!(
        names,
        [
            "model__none",
            "model__steer__layers=12__scale=4",
            "model__random__layers=12__scale=4"
        ]
    );
    for r in &rows {
        assert_eq!(r["samples"], "2", "{r:?}");
        assert!(r["judge"].starts_with("local:"), "{r:?}");
        // Every answer judged: a score, or a null counted as such (a 135M
        // judge often puts under 0.25 of its probability on numbers).
        let counted = |m: &str| {
            r[&format!("{m}_n")].parse::<u64>().unwrap()
                + r[&format!("{m}_nulls")].parse::<u64>().unwrap()
        };
        assert_eq!((counted("em"), counted("coherence")), (2, 2), "{r:?}");
        assert_eq!(r["pairs"], "8");
    }
    let pref = |i: usize| rows[i]["logprob_pref"].parse::<f64>().unwrap();
    assert!(
        pref(1) > pref(0) && pref(1) != pref(2),
        "steering moved the preference: {rows:?}"
    );

    let rows = preset("ablate", &["--single-layers", "12"]);
    let names: Vec<&str> = rows.iter().map(|r| r["condition"].as_str()).collect();
    assert_eq!(
        names,
        [
            "model__none",
            "model__ablate",
            "model__random",
            "model__ablate-single__layer=12",
            "model__random-single__source_layer=12"
        ]
    );
    assert!(rows
        .iter()
        .all(|r| r["judge"].starts_with("local:") && !r["logprob_pref"].is_empty()));
    let pref = |i: usize| rows[i]["logprob_pref"].parse::<f64>().unwrap();
    assert_ne!(pref(1), pref(0), "ablation changed the preference");
    assert!(
        rows[0]["em_reduction"].is_empty(),
        "no reduction for the baseline itself"
    );
}

#[test]
fn a_capture_under_an_intervention_differs_from_the_layer_it_acts_at() {
    let sh = shared();
    let pairs = first_pairs("four.jsonl", 4);
    let capture = |name: &str, extra: &[&str]| {
        let out = sh.dir.join(format!("{name}.safetensors"));
        let mut args = vec![
            "capture",
            "--pairs",
            s(&pairs),
            "--side",
            "misaligned",
            "--device",
            "cpu",
            "-o",
            s(&out),
        ];
        args.extend(extra);
        emh_ok(&args);
        std::fs::read(out).unwrap()
    };
    let plain = capture("plain", &[]);
    let dirs = s(&sh.dirs).to_string();
    let steer = format!(r#"steering={{"directions": "{dirs}", "layers": [{LAYER}], "scale": 4}}"#);
    let steered = capture("steered", &["--intervention", &steer]);
    let (p, q) = (
        safetensors::SafeTensors::deserialize(&plain).unwrap(),
        safetensors::SafeTensors::deserialize(&steered).unwrap(),
    );
    let same = |l: usize| {
        let name = format!("resid_post.{l}.answer_mean");
        p.tensor(&name).unwrap().data() == q.tensor(&name).unwrap().data()
    };
    assert!(
        (0..LAYER).all(same),
        "layers before the steered one see no change"
    );
    assert!(
        (LAYER..30).all(|l| !same(l)),
        "the steered layer and those after it do"
    );
    // Spans that follow the sampling phases are refused: prompt and answer
    // go through as one pass.
    let answer_only = format!(
        r#"steering={{"directions": "{dirs}", "layers": [{LAYER}], "scale": 4, "where": "answer"}}"#
    );
    let out = emh(&[
        "logprob-pref",
        "--pairs",
        s(&pairs),
        "--device",
        "cpu",
        "--intervention",
        &answer_only,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("teacher-forced") && err.contains("answer tokens"),
        "{err}"
    );
}
