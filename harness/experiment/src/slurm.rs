//! Slurm job arrays: one array task per shard, then a merge job that waits
//! for the whole array (`--dependency=afterok`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ExperimentError;

/// What the job scripts ask of Slurm.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    /// Array tasks, one shard each.
    pub shards: usize,
    pub partition: Option<String>,
    /// Time limit per task, in Slurm's format (`2:00:00`).
    pub time: Option<String>,
    pub gpus_per_task: Option<u32>,
    pub cpus_per_task: Option<u32>,
    /// Folder for the tasks' stdout and stderr [default: OUT/slurm/logs].
    pub logs: Option<PathBuf>,
}

/// The scripts written.
#[derive(Debug, Clone)]
pub struct SlurmScripts {
    pub array: PathBuf,
    pub merge: PathBuf,
}

fn absolute(p: &Path) -> Result<PathBuf, ExperimentError> {
    std::path::absolute(p).map_err(|e| ExperimentError::io(p, e))
}

/// Quotes a word for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Writes `OUT/slurm/array.sbatch` (task I runs `emh experiment SPEC
/// --shard auto`) and `OUT/slurm/merge.sbatch` (`emh merge OUT`).
pub fn write_scripts(
    spec_file: &Path,
    out: &Path,
    emh: &Path,
    o: &SlurmOptions,
) -> Result<SlurmScripts, ExperimentError> {
    if o.shards == 0 {
        return Err(ExperimentError::Spec {
            field: "--shards".into(),
            reason: "a job array needs at least one task".into(),
        });
    }
    let out = absolute(out)?;
    let dir = out.join("slurm");
    let logs = absolute(&o.logs.clone().unwrap_or_else(|| dir.join("logs")))?;
    std::fs::create_dir_all(&logs).map_err(|e| ExperimentError::io(&logs, e))?;
    let cwd = std::env::current_dir().map_err(|e| ExperimentError::io(Path::new("."), e))?;
    let (spec, emh) = (absolute(spec_file)?, absolute(emh)?);
    let header = |name: &str, array: bool| {
        let mut h = vec![
            "#!/bin/bash".to_string(),
            format!("#SBATCH --job-name={name}"),
        ];
        let pattern = if array { "%A_%a" } else { "%j" };
        h.push(format!(
            "#SBATCH --output={}/{name}-{pattern}.out",
            logs.display()
        ));
        h.push(format!(
            "#SBATCH --error={}/{name}-{pattern}.err",
            logs.display()
        ));
        if array {
            h.push(format!("#SBATCH --array=0-{}", o.shards - 1));
            if let Some(g) = o.gpus_per_task {
                h.push(format!("#SBATCH --gpus-per-task={g}"));
            }
        }
        if let Some(p) = &o.partition {
            h.push(format!("#SBATCH --partition={p}"));
        }
        if let Some(t) = &o.time {
            h.push(format!("#SBATCH --time={t}"));
        }
        if let Some(c) = o.cpus_per_task {
            h.push(format!("#SBATCH --cpus-per-task={c}"));
        }
        h.push("set -euo pipefail".into());
        h.push(format!("cd {}", quote(&cwd.display().to_string())));
        h.join("\n")
    };
    let array = dir.join("array.sbatch");
    let merge = dir.join("merge.sbatch");
    let text = format!(
        "{}\n# Shard $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT; a rerun resumes.\nexec {} experiment {} --shard auto\n",
        header("emh-shard", true),
        quote(&emh.display().to_string()),
        quote(&spec.display().to_string())
    );
    emh_atomic::write(&array, text.as_bytes()).map_err(|e| ExperimentError::io(&array, e))?;
    let text = format!(
        "{}\nexec {} merge {}\n",
        header("emh-merge", false),
        quote(&emh.display().to_string()),
        quote(&out.display().to_string())
    );
    emh_atomic::write(&merge, text.as_bytes()).map_err(|e| ExperimentError::io(&merge, e))?;
    Ok(SlurmScripts { array, merge })
}

fn sbatch(args: &[&str]) -> Result<String, ExperimentError> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .output()
        .map_err(|e| {
            ExperimentError::Slurm(format!("running sbatch: {e} (is Slurm installed?)"))
        })?;
    if !out.status.success() {
        return Err(ExperimentError::Slurm(format!(
            "sbatch {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // `--parsable` prints `ID` or `ID;CLUSTER`.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Submits the array, then the merge job after it; returns both job ids.
pub fn submit(s: &SlurmScripts) -> Result<(String, String), ExperimentError> {
    let array = sbatch(&[&s.array.display().to_string()])?;
    let merge = sbatch(&[
        &format!("--dependency=afterok:{array}"),
        &s.merge.display().to_string(),
    ])?;
    Ok((array, merge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_the_array_the_shards_and_the_dependency_free_merge() {
        let tmp = tempfile::tempdir().unwrap();
        let o = SlurmOptions {
            shards: 4,
            partition: Some("gpu".into()),
            gpus_per_task: Some(1),
            time: Some("1:00:00".into()),
            ..Default::default()
        };
        let s = write_scripts(
            &tmp.path().join("x.toml"),
            &tmp.path().join("out"),
            Path::new("/bin/emh"),
            &o,
        )
        .unwrap();
        let array = std::fs::read_to_string(&s.array).unwrap();
        for line in [
            "#SBATCH --array=0-3",
            "#SBATCH --partition=gpu",
            "#SBATCH --gpus-per-task=1",
            "#SBATCH --time=1:00:00",
            "--shard auto",
        ] {
            assert!(array.contains(line), "{line}\n{array}");
        }
        let merge = std::fs::read_to_string(&s.merge).unwrap();
        assert!(merge.contains(" merge "), "{merge}");
        assert!(!merge.contains("--array"), "{merge}");
    }
}
