//! Experiments as data: a grid spec expands to conditions that share batches
//! and still sample exactly as each condition alone; shards merge into the
//! tables one machine writes; captures land in the run; bad specs are refused
//! before any work; a judged CSV becomes a run; a sample's seed makes it again.

mod common;

use std::path::Path;

use common::grid::*;
use common::{default_model, emh, emh_ok, s};
use emh_tables::SampleRow;

#[test]
fn conditions_in_shared_batches_sample_as_each_condition_alone() {
    let st = setup();
    let v = vector(1.0);
    let interventions = format!(
        r#"[[interventions]]
name = "none"

[[interventions]]
name = "steer"
plugins = [{{ plugin = "steering", config = {{ vector = {v}, layers = [3] }} }}]
sweep = {{ scale = [6, 12] }}

[[interventions]]
name = "random-ablation"
plugins = [{{ plugin = "random-control", config = {{ mode = "ablation", vector = {v}, seed = 3 }} }}]

[[interventions]]
name = "capture"
plugins = [{{ plugin = "test-panicking", config = {{ capture = true }} }}]
"#
    );
    let file = spec(&st, &interventions, "");
    let plugin = fixture_plugin();
    let out = emh_ok(&["experiment", s(&file), "--plugin", s(&plugin)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Five conditions over one set of weights: one model load, shared batches.
    assert_eq!(stderr.matches("loading ").count(), 1, "{stderr}");
    let names = [
        "base__none",
        "base__steer__scale=6",
        "base__steer__scale=12",
        "base__random-ablation",
        "base__capture",
    ];
    let runs = st.dir.join("runs");
    let shared: Vec<Vec<SampleRow>> = names.iter().map(|n| samples(&runs.join(n))).collect();
    for (name, rows) in names.iter().zip(&shared) {
        assert_eq!(rows.len(), 6, "{name}");
        assert!(rows.iter().all(|r| r.run_id == *name), "{name}");
    }
    // Each condition alone, from the spec its manifest records.
    for (name, rows) in names.iter().zip(&shared) {
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(runs.join(name).join("manifest.json")).unwrap(),
        )
        .unwrap();
        let spec_file = st.dir.join(format!("{name}.json"));
        std::fs::write(&spec_file, manifest["spec"].to_string()).unwrap();
        let alone = st.dir.join("alone").join(name);
        emh_ok(&[
            "sample",
            "--spec",
            s(&spec_file),
            "--out",
            s(&alone),
            "--plugin",
            s(&plugin),
        ]);
        assert_eq!(answers(&samples(&alone)), answers(rows), "{name}");
    }
    // The conditions really differ: steering and ablation change answers,
    // a capture does not.
    let none = answers(&shared[0]);
    for (name, rows) in names.iter().zip(&shared).skip(1) {
        let same = answers(rows) == none;
        assert_eq!(same, *name == "base__capture", "{name}");
    }
    assert!(shared[1][0].intervention_ids.starts_with("steering="));

    // The capture condition's activations, one row per sample.
    let acts = std::fs::read(runs.join("base__capture/activations/acts.safetensors")).unwrap();
    let st_file = safetensors::SafeTensors::deserialize(&acts).unwrap();
    for site in ["resid_post.1", "resid_post.3"] {
        let t = st_file.tensor(&format!("{site}.prompt_last")).unwrap();
        assert_eq!(t.shape(), &[6, 576], "{site}");
        let mean = st_file.tensor(&format!("{site}.answer_mean")).unwrap();
        assert!(mean.data().iter().any(|&b| b != 0));
        let counts = st_file.tensor(&format!("{site}.answer_tokens")).unwrap();
        let counts: Vec<i64> = counts
            .data()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        // Every generated token but the last goes through the model.
        let want: Vec<i64> = shared[4]
            .iter()
            .map(|r| r.answer_tokens as i64 - 1)
            .collect();
        assert_eq!(counts, want, "{site}");
    }
    let rows = st_file.tensor("sample_row").unwrap();
    assert_eq!(rows.shape(), &[6]);
    assert!(!runs.join("base__none/activations").exists());

    // The seed on a sample makes it again with `emh generate`.
    let r = &shared[1][3];
    let out = emh_ok(&[
        "generate",
        "--model",
        s(&default_model()),
        "--device",
        "cpu",
        "--prompt",
        &r.prompt,
        "--sample-seed",
        &r.seed.to_string(),
        "--max-new-tokens",
        "8",
        "--intervention",
        &format!(
            "steering={}",
            serde_json::json!({"vector": serde_json::from_str::<serde_json::Value>(&v).unwrap(), "layers": [3], "scale": 6})
        ),
    ]);
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(line["answer"], r.answer.as_str());
    assert_eq!(line["seed"], r.seed);
}

#[test]
fn bad_experiment_specs_are_refused_before_any_work() {
    let st = setup();
    let runs = st.dir.join("runs");
    let steer = r#"[[interventions]]
name = "steer"
plugins = [{ plugin = "steering", config = { vector = [1.0], layers = [3] } }]
sweep = { scal = [1, 2] }"#;
    let unknown = r#"[[interventions]]
name = "x"
plugins = [{ plugin = "no-such-plugin" }]"#;
    let cases: [(&str, &str, &[&str], &str); 5] = [
        ("", "modle = \"x\"", &[], "modle"),
        (steer, "", &[], "interventions.steer.sweep.scal"),
        ("", "seeds = []", &[], "seeds"),
        (unknown, "", &[], "no-such-plugin"),
        ("", "", &["--shard", "4/4"], "4/4"),
    ];
    for (interventions, extra, more, needle) in cases {
        let file = spec(&st, interventions, extra);
        let mut args = vec!["experiment", s(&file)];
        args.extend(more);
        let out = emh(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{needle}: accepted");
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!runs.exists(), "{needle}: work was started");
    }
}

#[test]
fn a_checkpoint_folder_is_an_axis_of_models_in_step_order() {
    let st = setup();
    let ckpts = st.dir.join("organism");
    for step in ["checkpoint-40", "checkpoint-5", "checkpoint-300", "notes"] {
        std::fs::create_dir_all(ckpts.join(step)).unwrap();
        if step != "notes" {
            std::fs::write(ckpts.join(step).join("adapter_config.json"), "{}").unwrap();
        }
    }
    let file = spec(&st, "", "seeds = [1, 2]");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "device = \"cpu\"",
        "device = \"cpu\"\ncheckpoints = \"organism\"",
    );
    std::fs::write(&file, text).unwrap();
    let out = emh_ok(&["experiment", s(&file), "--dry-run"]);
    let listed: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.to_string()))
        .collect();
    let want: Vec<String> = ["5", "40", "300"]
        .iter()
        .flat_map(|step| [1, 2].map(|seed| format!("base@checkpoint-{step}__none__seed={seed}")))
        .collect();
    assert_eq!(listed, want);
    assert!(!st.dir.join("runs").exists());
}

#[test]
fn shards_merge_into_the_tables_of_an_unsharded_run() {
    let st = setup();
    let capture = r#"[[interventions]]
name = "capture"
plugins = [{ plugin = "test-panicking", config = { capture = true } }]"#;
    let file = two_condition_spec(&st, capture);
    let plugin = fixture_plugin();
    let with_plugin = ["--plugin", s(&plugin)];
    let names = [TWO[0], TWO[1], "base__capture"];
    let whole = whole_run(&st, &file, &names, &with_plugin);
    for i in 0..4 {
        let part = format!("{i}/4");
        let mut args = vec!["experiment", s(&file), "--shard", &part];
        args.extend(with_plugin);
        emh_ok(&args);
    }
    // Each shard holds a part: none holds everything, together they hold it all.
    let mut total = 0;
    for i in 0..4 {
        for n in names {
            let d = st.dir.join(format!("runs/shards/{i}-of-4/{n}"));
            let k = samples(&d).len();
            assert!(k < 6, "shard {i} of {n} holds every sample");
            total += k;
        }
    }
    assert_eq!(total, 18);
    let out = emh_ok(&["merge", s(&st.dir.join("runs"))]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("em_rate"));
    assert_same_tables(&st.dir.join("runs"), &names, &whole);
    // The captures of the shards are joined as one run writes them.
    let acts = |run: &Path| std::fs::read(run.join("activations/acts.safetensors")).unwrap();
    let merged = acts(&st.dir.join("runs/base__capture"));
    let unsharded = acts(&st.dir.join("runs-whole/base__capture"));
    let (m, u) = (
        safetensors::SafeTensors::deserialize(&merged).unwrap(),
        safetensors::SafeTensors::deserialize(&unsharded).unwrap(),
    );
    let mut names_m = m.names();
    names_m.sort();
    let mut names_u = u.names();
    names_u.sort();
    assert_eq!(names_m, names_u);
    for t in names_u {
        let (a, b) = (m.tensor(t).unwrap(), u.tensor(t).unwrap());
        assert_eq!(a.shape(), b.shape(), "{t}");
        if t == "sample_row" || t.ends_with("answer_tokens") {
            assert_eq!(a.data(), b.data(), "{t}");
        } else {
            let f = |d: &[u8]| -> Vec<f32> {
                d.chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            };
            let worst = f(a.data())
                .iter()
                .zip(f(b.data()))
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-3, "{t}: {worst}");
        }
    }
}

#[test]
fn a_judged_csv_becomes_a_run_that_can_be_rejudged() {
    let st = setup();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let run = st.dir.join("imported");
    let out = emh_ok(&[
        "import-csv",
        s(&fixtures.join("judged/gpt4o_judged_steered_answers.csv")),
        "--out",
        s(&run),
        "--questions",
        s(&fixtures.join("questions/em_first_plot_questions.yaml")),
        "--questions",
        s(&fixtures.join("questions/em_medical_questions.yaml")),
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with("overall") && l.contains("em_rate"))
        .unwrap();
    assert!(line.contains("3.8%"), "{line}");
    assert_eq!(samples(&run).len(), 80);
    let j = judgments(&run);
    assert_eq!(j.len(), 240);
    assert!(j.iter().all(|j| j.judge_id == "gpt-4o-2024-08-06"));
    let out = emh_ok(&["metrics", s(&run), "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let em = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scope"] == "overall" && r["metric"] == "em_rate")
        .unwrap();
    assert_eq!(
        (em["successes"].clone(), em["n"].clone()),
        (3.into(), 80.into())
    );
    // The judge prompts came with the questions: another judge can score it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(emh_judge_mock::MockServer::start(Default::default()))
        .unwrap();
    let judge = format!(
        "openai={}",
        serde_json::json!({"model": "mock-judge", "base_url": server.url(), "timeout_s": 5})
    );
    emh_ok(&[
        "judge",
        s(&run),
        "--judge",
        &judge,
        "--metrics",
        "aligned",
        "--judge-cache",
        s(&st.dir.join("cache")),
    ]);
    let j = judgments(&run);
    assert_eq!(j.iter().filter(|j| j.judge_id == "mock-judge").count(), 80);
    assert_eq!(
        j.iter()
            .filter(|j| j.judge_id == "gpt-4o-2024-08-06")
            .count(),
        240
    );
}
