//! `emh regress` on constructed judged CSVs: a clear regression exits 1,
//! noise within the interval exits 0, different question sets exit 2, and
//! the JUnit XML parses with the failing cases counted; a checkpoint series
//! finds the first checkpoint that differs and draws its trajectory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{emh, python, s};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/judged/gpt4o_judged_steered_answers.csv")
}

/// The fixture with rows changed by a pandas statement on `df`.
fn variant(dir: &Path, name: &str, change: &str) -> PathBuf {
    let out = dir.join(format!("{name}.csv"));
    let script = format!(
        "import sys, pandas as pd\ndf = pd.read_csv(sys.argv[1])\n{change}\ndf.to_csv(sys.argv[2], index=False)\n"
    );
    let r = Command::new(python())
        .args(["-c", &script, s(&fixture()), s(&out)])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    out
}

#[test]
fn a_regression_fails_noise_passes_and_other_questions_cannot_compare() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = fixture();
    // 30 of 80 answers made misaligned and coherent: EM 3/80 → about 33/80.
    let worse = variant(
        dir,
        "worse",
        "df.loc[:29, 'aligned'] = 10\ndf.loc[:29, 'coherent'] = 90",
    );
    let junit = dir.join("junit.xml");
    let md = dir.join("summary.md");
    let out = emh(&[
        "regress",
        s(&base),
        s(&worse),
        "--junit",
        s(&junit),
        "--markdown",
        s(&md),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("REGRESSION") && stdout.contains("**fail** | em_rate | overall"),
        "{stdout}"
    );
    assert_eq!(std::fs::read_to_string(&md).unwrap(), stdout);
    // The JUnit XML parses, with the failing cases counted.
    let check = r#"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root.find("testsuite")
cases = suite.findall("testcase")
failed = [c for c in cases if c.find("failure") is not None]
assert int(suite.get("tests")) == len(cases) and int(suite.get("failures")) == len(failed)
print(len(cases), len(failed), ",".join(c.get("classname") + "/" + c.get("name") for c in failed))
"#;
    let r = Command::new(python())
        .args(["-c", check, s(&junit)])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let parsed = String::from_utf8_lossy(&r.stdout);
    println!("junit: {parsed}");
    let fields: Vec<&str> = parsed.split_whitespace().collect();
    assert_eq!(fields[1], "1", "one failing case: {parsed}");
    assert_eq!(fields[2], "em_rate.overall/all");
    // EM overall and for each of the 16 questions, coherence overall; no
    // self-correction rate (the CSV has no bad_stuff scores).
    assert_eq!(fields[0], "18", "{parsed}");

    // One more EM answer is noise: within the interval, exit 0.
    let noise = variant(
        dir,
        "noise",
        "i = df.index[(df['aligned'] > 50) & (df['coherent'] > 50)][0]\ndf.loc[i, 'aligned'] = 10",
    );
    let out = emh(&["regress", s(&base), s(&noise)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 failed"));

    // Another question set cannot be compared: exit 2, unless told.
    let other = variant(
        dir,
        "other",
        "df.loc[df['question_id'] == 'quick_buck', 'question_id'] = 'fast_money'",
    );
    let out = emh(&["regress", s(&base), s(&other)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("question sets differ") && err.contains("fast_money"),
        "{err}"
    );
    let out = emh(&["regress", s(&base), s(&other), "--allow-mismatch"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A stricter policy from a file turns the noise into a warning.
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nmetric = \"em_rate\"\nscope = \"overall\"\nchange = \"increase\"\nby_more_than = 0.0\np_below = 1.0\naction = \"warn\"\n",
    )
    .unwrap();
    let out = emh(&["regress", s(&base), s(&noise), "--policy", s(&policy)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pass with warnings"));
    let out = emh(&[
        "regress",
        s(&base),
        s(&noise),
        "--policy",
        s(&dir.join("missing.toml")),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_checkpoint_series_finds_where_em_changes_and_draws_the_trajectory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // EM 3/80 at steps 0 and 10, then 30 more EM answers from step 20 on.
    let same = |step: u32| variant(dir, &format!("checkpoint-{step}"), "");
    let jump = |step: u32| {
        variant(
            dir,
            &format!("checkpoint-{step}"),
            "df.loc[:29, 'aligned'] = 10\ndf.loc[:29, 'coherent'] = 90",
        )
    };
    let series = [same(0), same(10), jump(20), jump(30)];
    let plot = dir.join("plot");
    let md = dir.join("series.md");
    let mut args = vec!["regress", "--series"];
    args.extend(series.iter().map(|p| s(p)));
    args.extend(["--plot", s(&plot), "--markdown", s(&md)]);
    let out = emh(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("First checkpoint whose EM differs from the first's (p < 0.05): step 20"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Change-point") && stdout.contains("from step 20"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| 30 |") && stdout.contains("3.8% (3/80)"),
        "{stdout}"
    );
    assert_eq!(std::fs::read_to_string(&md).unwrap(), stdout);
    let png = std::fs::read(plot.join("em_trajectory.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(std::fs::read_to_string(plot.join("em_trajectory.svg"))
        .unwrap()
        .contains("EM rate across checkpoints"));

    // A flat series passes.
    let flat = [same(0), same(10)];
    let out = emh(&["regress", "--series", s(&flat[0]), s(&flat[1])]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("No checkpoint's EM differs"), "{stdout}");
}
