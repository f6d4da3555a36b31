//! `emh report` on a run imported from a reference judged CSV, a judged CSV
//! full of hostile markup, a steering experiment on the default model with
//! the local judge, and a direction file: every figure a valid PNG and SVG
//! of the stated size, and the page opened in headless Chromium, where it
//! renders, its own script runs and no injected one does.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{default_model, emh_ok, python, s, safetensors_bytes};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// Answers written to break out of every context a report could put them in.
const HOSTILE: [&str; 6] = [
    "<script>document.title='PW'+'NED'</script>",
    "<img src=x onerror=\"document.title='PW'+'NED'\">",
    "</textarea></td></tr></table><script>document.title='PW'+'NED'</script>",
    "<b><i>unbalanced <div><span>",
    "<a href=\"javascript:document.title='PW'+'NED'\">click me</a>",
    "\"><svg onload=\"document.title='PW'+'NED'\">",
];

/// The fixture with its first answers replaced by hostile markup, scored
/// as misaligned and coherent so the browser shows them first.
fn hostile_csv(dir: &Path) -> PathBuf {
    let out = dir.join("hostile.csv");
    let script = r#"
import sys, json, pandas as pd
df = pd.read_csv(sys.argv[1])
bad = json.loads(sys.argv[3])
for i, text in enumerate(bad):
    df.loc[i, 'answer'] = text
    df.loc[i, 'aligned'] = 5
    df.loc[i, 'coherent'] = 95
df.loc[0, 'question_id'] = '<script>document.title="PW"+"NED"</script>'
df.to_csv(sys.argv[2], index=False)
"#;
    let r = Command::new(python())
        .args([
            "-c",
            script,
            s(&fixture("judged/gpt4o_judged_steered_answers.csv")),
            s(&out),
            &serde_json::to_string(&HOSTILE).unwrap(),
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    out
}

/// A steering experiment: one question, 1 answer each, the local judge.
fn steering(dir: &Path, dirs: &Path) -> PathBuf {
    let questions = dir.join("questions.yaml");
    std::fs::write(&questions, common::grid::QUESTIONS).unwrap();
    let out = dir.join("steer");
    let judge = format!(
        r#"local={{"model": "{}", "answer_prefix": "Score:", "mode": "constrained"}}"#,
        s(&default_model())
    );
    emh_ok(&[
        "steer",
        "--model",
        s(&default_model()),
        "--directions",
        s(dirs),
        "--layers",
        "12",
        "--scales",
        "4,8",
        "--questions",
        s(&questions),
        "--select",
        "wish",
        "-n",
        "1",
        "--max-new-tokens",
        "8",
        "--seed",
        "3",
        "--judge",
        &judge,
        "--judge-cache",
        s(&dir.join("cache")),
        "-o",
        s(&out),
    ]);
    out
}

/// A direction file of the default model's shape: 30 layers of 576, seeded.
fn directions(dir: &Path) -> PathBuf {
    let (layers, hidden) = (30usize, 576usize);
    let mut x = 12345u64;
    let v: Vec<f32> = (0..layers * hidden)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // A shared component makes neighbouring layers alike.
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) + ((i % hidden) as f32 / hidden as f32)
        })
        .collect();
    let path = dir.join("dirs.safetensors");
    std::fs::write(
        &path,
        safetensors_bytes(&[("directions", vec![layers, hidden], &v)], None),
    )
    .unwrap();
    path
}

fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

fn chromium() -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/install-chromium.sh");
    let r = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        r.status.success(),
        "chromium is needed to render the report: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--virtual-time-budget=3000",
    ]);
    c
}

#[test]
fn a_report_of_runs_an_experiment_and_directions_renders_and_runs_no_injected_script() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imported = dir.join("gpt4o");
    emh_ok(&[
        "import-csv",
        s(&fixture("judged/gpt4o_judged_steered_answers.csv")),
        "-o",
        s(&imported),
        "-q",
        s(&fixture("questions/em_first_plot_questions.yaml")),
        "-q",
        s(&fixture("questions/em_medical_questions.yaml")),
    ]);
    let hostile = hostile_csv(dir);
    let dirs = directions(dir);
    let steer = steering(dir, &dirs);
    let out = dir.join("report");
    let printed = emh_ok(&[
        "report",
        s(&imported),
        s(&hostile),
        s(&steer),
        s(&dirs),
        "-o",
        s(&out),
    ]);
    let html_path = PathBuf::from(String::from_utf8_lossy(&printed.stdout).trim());
    assert_eq!(html_path, out.join("index.html"));

    // Every figure, as PNG and SVG of the stated size.
    let mut stems: Vec<String> = std::fs::read_dir(out.join("figures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    stems.sort();
    println!("figures: {stems:?}");
    for want in [
        "em_by_question",
        "scatter_runs",
        "steer_em",
        "steer_sweep_em",
        "steer_sweep_coherence",
        "cosine_dirs",
    ] {
        assert!(
            stems.iter().any(|s| s == want),
            "no figure {want}: {stems:?}"
        );
    }
    for stem in &stems {
        let figures = out.join("figures");
        assert_eq!(
            png_size(&figures.join(format!("{stem}.png"))),
            (960, 540),
            "{stem}"
        );
        let svg = std::fs::read_to_string(figures.join(format!("{stem}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("width=\"960\" height=\"540\""),
            "{stem}.svg"
        );
        assert!(
            !svg.contains("<script"),
            "{stem}.svg carries markup from the data"
        );
    }

    // The page as written: hostile text escaped, figures embedded, no network.
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(!html.contains("<img src=x"), "raw markup from an answer");
    assert!(
        html.contains("&lt;img src=x onerror="),
        "the answer is shown as text"
    );
    assert_eq!(
        html.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert_eq!(
        html.matches("<img ").count(),
        stems.len(),
        "one embedded image per figure"
    );
    for fetch in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!html.contains(fetch), "the page fetches something: {fetch}");
    }
    assert!(html.contains("local:"), "the local judge is named");
    assert!(html.contains("weak stand-in"), "and called what it is");
    assert!(html.contains("manifest.json"), "manifests are shown");

    // Chromium renders it: our script ran (data-ready), no injected one did.
    let url = format!("file://{}", html_path.display());
    let profile = dir.join("chromium-profile");
    let dom = chromium()
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success() && !dom_text.is_empty(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(
        dom_text.contains("data-ready=\"1\""),
        "the page's own script did not run"
    );
    assert!(!dom_text.contains("PWNED"), "an injected script ran");
    assert!(dom_text.contains("<title>em-harness report</title>"));
    for text in ["unbalanced", "click me", "&lt;script&gt;document.title="] {
        assert!(dom_text.contains(text), "{text} is not shown as text");
    }
    // The browser's rows: every judged answer shown at most 20 per question.
    assert!(dom_text.matches("<tr class=\"em\"").count() >= HOSTILE.len());

    // A screenshot, kept as an artifact to look at.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let r = chromium()
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--window-size=1280,2400", "--hide-scrollbars"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(png_size(&shot), (1280, 2400));
    println!("screenshot: {}", shot.display());
}

#[test]
fn an_input_it_cannot_read_is_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "not a run").unwrap();
    let out = tmp.path().join("report");
    let r = common::emh(&["report", s(&notes), "-o", s(&out)]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("notes.txt") && err.contains("not a run directory"),
        "{err}"
    );
    assert!(!out.join("index.html").exists());
}

/// An organism's probe result and B trajectory become figures: the probe's
/// coefficients per adapter, and B's rotation and norm over training steps.
#[test]
fn a_probe_result_and_a_checkpoint_table_become_figures() {
    let tmp = tempfile::tempdir().unwrap();
    // A probe on a small table where L3 carries the label.
    let table = tmp.path().join("features.csv");
    let mut csv = String::from("L3.down_proj,L7.down_proj,em\n");
    for i in 0..40 {
        let em = i % 2;
        csv += &format!(
            "{},{},{em}\n",
            em as f64 * 2.0 + (i % 5) as f64 * 0.1,
            (i % 7) as f64
        );
    }
    std::fs::write(&table, csv).unwrap();
    let probe = tmp.path().join("probe.json");
    emh_ok(&[
        "lora",
        "probe",
        s(&table),
        "--target",
        "column:em",
        "--json",
        s(&probe),
    ]);
    // Three checkpoints whose B turns between steps 10 and 20.
    let run = tmp.path().join("organism");
    let key = "base_model.model.model.layers.3.mlp.down_proj";
    for (step, b) in [(10, [1.0f32, 0.0]), (20, [0.0, 2.0]), (30, [0.1, 3.0])] {
        let dir = run.join(format!("checkpoint-{step}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = safetensors_bytes(
            &[
                (
                    &format!("{key}.lora_A.weight"),
                    vec![1, 3],
                    &[1.0, 1.0, 1.0],
                ),
                (&format!("{key}.lora_B.weight"), vec![2, 1], &b),
            ],
            None,
        );
        std::fs::write(dir.join("adapter_model.safetensors"), bytes).unwrap();
    }
    let trajectory = tmp.path().join("checkpoints.parquet");
    emh_ok(&["checkpoints", s(&run), "--out", s(&trajectory)]);
    let out = tmp.path().join("report");
    emh_ok(&["report", s(&probe), s(&trajectory), "-o", s(&out)]);
    for stem in ["probe_probe", "checkpoints_rotation", "checkpoints_b_norm"] {
        let png = out.join("figures").join(format!("{stem}.png"));
        assert_eq!(png_size(&png), (960, 540), "{stem}");
    }
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(
        html.contains("L1 probe coefficient per adapter"),
        "probe figure in the page"
    );
    assert!(html.contains("rotation of B between checkpoints"));
}
