//! Killed runs resume: a run killed with SIGKILL in generation or in
//! judging, and one killed while a Batch API job is pending, finish to the
//! tables an uninterrupted run writes, asking nothing twice.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::grid::{judgments, samples};
use common::run::{eval_args, mock, mock_judge, run_emh, sample_args, setup};
use common::{emh_bin, emh_ok, s};
use emh_judge_mock::{MockConfig, MockServer};
use emh_tables::JudgmentRow;

/// Starts emh and kills it with SIGKILL once `ready` holds.
fn kill_when(args: &[String], ready: impl Fn() -> bool) -> bool {
    let mut child: Child = Command::new(emh_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if ready() {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn count_files(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_run_killed_in_generation_and_in_judging_resumes_to_the_same_tables() {
    let st = setup();
    let (rt, server) = mock();
    let judge = mock_judge(&server);
    let reference = st.dir.join("reference");
    run_emh(&eval_args(&st, &reference, &["--judge", &judge]));

    // Killed after the first generation batch, before the samples table.
    let run = st.dir.join("killed");
    let args = eval_args(&st, &run, &["--judge", &judge]);
    let first_batch = run.join("work/samples/000000.json");
    let killed = kill_when(&args, || {
        first_batch.is_file() && !run.join("samples.parquet").exists()
    });
    assert!(
        killed,
        "emh finished before it could be killed in generation"
    );
    let before = std::fs::read(&first_batch).unwrap();
    let modified = std::fs::metadata(&first_batch).unwrap().modified().unwrap();
    run_emh(&args);
    assert_eq!(std::fs::read(&first_batch).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&first_batch).unwrap().modified().unwrap(),
        modified,
        "a finished batch was generated again"
    );
    assert_eq!(samples(&run), samples(&reference));
    assert_eq!(judgments(&run), judgments(&reference));

    // Killed inside judging, with a cache of its own: some judgments cached, no table yet.
    let run2 = st.dir.join("killed-judging");
    let cache = st.dir.join("cache2");
    let mut args = eval_args(&st, &run2, &["--judge", &judge]);
    let c = args.iter().position(|x| x == "--judge-cache").unwrap();
    args[c + 1] = s(&cache).to_string();
    // A slow judge, so the kill lands between batches.
    let slow = rt
        .block_on(MockServer::start(MockConfig {
            latency: Duration::from_millis(150),
            ..Default::default()
        }))
        .unwrap();
    let j = args.iter().position(|x| x == "--judge").unwrap();
    args[j + 1] = mock_judge(&slow);
    let killed = kill_when(&args, || {
        count_files(&cache) >= 2 && !run2.join("judgments.parquet").exists()
    });
    assert!(killed, "emh finished before it could be killed in judging");
    let cached = count_files(&cache);
    let asked_before = slow
        .stats
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    let out = run_emh(&args);
    let asked_after = slow
        .stats
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        asked_after - asked_before <= 12 - cached as u64,
        "{cached} cached judgments were asked again ({} requests)\n{}",
        asked_after - asked_before,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(samples(&run2), samples(&reference));
    assert_eq!(judgments(&run2), judgments(&reference));
}

#[test]
fn a_batch_api_job_gives_the_same_scores_and_a_killed_run_picks_the_job_up_again() {
    let st = setup();
    let run = st.dir.join("run");
    run_emh(&sample_args(&st, &run));
    let (rt, online) = mock();
    emh_ok(&[
        "judge",
        s(&run),
        "--judge",
        &mock_judge(&online),
        "--judge-cache",
        s(&st.dir.join("online-cache")),
    ]);
    let expected = judgments(&run);

    // The job stays in progress for a while, so the kill lands while it is pending.
    let batch = rt
        .block_on(MockServer::start(MockConfig {
            batch_polls: 40,
            ..Default::default()
        }))
        .unwrap();
    let config = serde_json::json!({
        "model": "mock-judge", "base_url": batch.url(), "batch_api": true,
        "poll_s": 0.05, "state_dir": s(&st.dir.join("batches"))
    });
    let judge_args: Vec<String> = [
        "judge",
        s(&run),
        "--judge",
        &format!("openai={config}"),
        "--judge-cache",
        s(&st.dir.join("batch-cache")),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let stats = batch.stats.clone();
    let killed = kill_when(&judge_args, || {
        stats.polls.load(std::sync::atomic::Ordering::SeqCst) >= 3
    });
    assert!(killed, "the batch job ended before emh could be killed");
    assert_eq!(
        batch
            .stats
            .batches
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    run_emh(&judge_args);
    assert_eq!(
        batch
            .stats
            .batches
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the resumed run submitted a second job instead of collecting the first"
    );
    assert_eq!(
        batch
            .stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let got = judgments(&run);
    assert_eq!(got.len(), 12);
    let strip_judge = |rows: Vec<JudgmentRow>| -> Vec<JudgmentRow> {
        rows.into_iter()
            .map(|mut r| {
                r.judge_id = String::new();
                r
            })
            .collect()
    };
    assert_eq!(strip_judge(got), strip_judge(expected));
}
