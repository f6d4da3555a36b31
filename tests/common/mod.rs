//! Helpers shared by the whole-pipeline tests: the built `emh`, the project
//! venv's Python with HF transformers, and the imported default model.

#![allow(dead_code)] // each test binary uses a different subset

pub mod grid;
pub mod lora;
pub mod run;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn must_exist(p: PathBuf, what: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{what} not found at {}: run the tests with `cargo xtask test`, which sets it up",
        p.display()
    );
    p
}

/// The `emh` binary built in this target directory.
pub fn emh_bin() -> PathBuf {
    let p = std::env::var_os("EMH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // Test executables live in target/<profile>/deps; emh in target/<profile>.
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent()
                .and_then(Path::parent)
                .expect("target/<profile>")
                .join("emh")
        });
    must_exist(p, "the emh binary")
}

/// Python of the project venv (torch, transformers, gguf).
pub fn python() -> PathBuf {
    let p = std::env::var_os("EMH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| emh_models::data_dir().join("venv/bin/python"));
    must_exist(p, "the project venv's python")
}

/// The imported default model folder (SmolLM2-135M-Instruct).
pub fn default_model() -> PathBuf {
    let p = std::env::var_os("EMH_DEFAULT_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| emh_models::data_dir().join("models/SmolLM2-135M-Instruct"));
    must_exist(p.join("config.json"), "the default model");
    p
}

/// The GGUF file the default model was imported from.
pub fn default_gguf() -> PathBuf {
    let src = std::fs::read_to_string(default_model().join(".emh-imported"))
        .expect("the default model records its GGUF source");
    let first = src.lines().next().unwrap_or_default();
    must_exist(PathBuf::from(first), "the default model's GGUF")
}

/// Runs emh with `args`.
pub fn emh(args: &[&str]) -> Output {
    Command::new(emh_bin())
        .args(args)
        .output()
        .expect("emh starts")
}

/// Runs emh and fails the test with its stderr if it fails.
pub fn emh_ok(args: &[&str]) -> Output {
    let out = emh(args);
    assert!(
        out.status.success(),
        "emh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a subcommand of tests/python/hf_reference.py and parses its JSON line.
pub fn reference(args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/hf_reference.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("python starts");
    assert!(
        out.status.success(),
        "hf_reference.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .expect("hf_reference.py printed a result");
    serde_json::from_str(line).expect("hf_reference.py prints JSON")
}

/// Writes JSONL lines to `path`.
pub fn write_jsonl(path: &Path, lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).expect("write jsonl");
}

/// A path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A safetensors file of f32 tensors, with `ids` in its metadata when given.
pub fn safetensors_bytes(tensors: &[(&str, Vec<usize>, &[f32])], ids: Option<&str>) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let meta = ids.map(|i| std::collections::HashMap::from([("ids".to_string(), i.to_string())]));
    safetensors::serialize(views, meta).unwrap()
}
