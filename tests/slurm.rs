//! An experiment submitted to a real one-node Slurm cluster runs as a job
//! array, and its merge job writes the tables of an unsharded run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::grid::*;
use common::s;

/// A one-node Slurm cluster on this machine (tests/slurm/start-cluster.sh
/// installs Debian's slurm-wlm when missing), stopped by pid when dropped.
struct Cluster {
    state: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    fn start(state: &Path) -> Cluster {
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("slurm");
        let out = Command::new("bash")
            .arg(scripts.join("start-cluster.sh"))
            .arg(state)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "could not start a Slurm cluster here:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster {
            state: state.to_path_buf(),
            conf: state.join("slurm.conf"),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("slurm");
        let _ = Command::new("bash")
            .arg(scripts.join("stop-cluster.sh"))
            .arg(&self.state)
            .status();
    }
}

/// Every file under `dir`, with its text, for a failure message.
fn logs(dir: &Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        text.push_str(&format!(
            "== {}\n{}\n",
            e.path().display(),
            std::fs::read_to_string(e.path()).unwrap_or_default()
        ));
    }
    text
}

#[test]
fn an_experiment_submitted_to_slurm_runs_as_a_job_array_and_merges() {
    let st = setup();
    let file = two_condition_spec(&st, "");
    let whole = whole_run(&st, &file, &TWO, &[]);
    let cluster = Cluster::start(&st.dir.join("slurm-state"));
    let out = cluster
        .command(s(&common::emh_bin()))
        .args([
            "experiment",
            s(&file),
            "--slurm",
            "--submit",
            "--shards",
            "4",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = |what: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(what))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no `{what}` in {stdout}"))
            .to_string()
    };
    let (array, merge) = (id("array job "), id("merge job "));
    let log_dir = st.dir.join("runs/slurm/logs");
    let started = Instant::now();
    loop {
        let q = cluster
            .command("squeue")
            .args(["-h", "-j", &format!("{array},{merge}"), "-o", "%i %T %r"])
            .output()
            .unwrap();
        let q = String::from_utf8_lossy(&q.stdout).into_owned();
        assert!(
            !q.contains("DependencyNeverSatisfied"),
            "a shard failed:\n{q}\n{}",
            logs(&log_dir)
        );
        if q.trim().is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the jobs did not finish:\n{q}\n{}",
            logs(&log_dir)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    for i in 0..4 {
        assert!(
            st.dir.join(format!("runs/shards/{i}-of-4")).is_dir(),
            "array task {i} left no shard\n{}",
            logs(&log_dir)
        );
    }
    assert!(
        st.dir
            .join("runs")
            .join(TWO[0])
            .join("metrics.parquet")
            .is_file(),
        "the merge job did not merge\n{}",
        logs(&log_dir)
    );
    assert_same_tables(&st.dir.join("runs"), &TWO, &whole);
}
