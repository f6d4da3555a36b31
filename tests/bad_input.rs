//! Bad input gets a clear error naming the file, a non-zero exit, and no panic.

mod common;

use std::path::{Path, PathBuf};

use common::{default_gguf, default_model, emh, s};

/// A copy of the default model folder (weights linked, not copied) to spoil.
fn model_copy(dir: &Path) -> PathBuf {
    let src = default_model();
    let dst = dir.join("model");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".safetensors") {
            std::os::unix::fs::symlink(entry.path(), dst.join(&name)).unwrap();
        } else {
            std::fs::copy(entry.path(), dst.join(&name)).unwrap();
        }
    }
    dst
}

fn edit_config(model: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = model.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
}

/// Runs emh, expecting exit code 1 and every `needles` in its stderr.
fn assert_fails_clearly(args: &[&str], needles: &[&str]) {
    let out = emh(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "emh {args:?} should fail cleanly; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "emh {args:?} panicked:\n{stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "stderr of emh {args:?} lacks `{n}`:\n{stderr}"
        );
    }
}

fn generate_args(model: &Path) -> Vec<String> {
    [
        "generate",
        "--model",
        s(model),
        "--device",
        "cpu",
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn run_generate(model: &Path, needles: &[&str]) {
    let args = generate_args(model);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_fails_clearly(&args, needles);
}

#[test]
fn missing_tokenizer_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    let expected = model.join("tokenizer.json");
    run_generate(&model, &[s(&expected), "missing"]);
}

#[test]
fn truncated_safetensors_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let weights = model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::remove_file(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 3]).unwrap();
    run_generate(&model, &[s(&weights), "truncated"]);
}

#[test]
fn tensor_of_the_wrong_shape_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    edit_config(&model, |c| c["intermediate_size"] = 1000.into());
    run_generate(
        &model,
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "[1536, 576]",
            "[1000, 576]",
        ],
    );
}

#[test]
fn unknown_architecture_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    edit_config(&model, |c| {
        c["model_type"] = "gpt_neox".into();
        c["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    });
    run_generate(
        &model,
        &["config.json", "gpt_neox", "supported: llama, qwen2"],
    );
}

#[test]
fn corrupt_gguf_header_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.gguf");
    std::fs::write(
        &bad,
        b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
    )
    .unwrap();
    let out = tmp.path().join("out");
    assert_fails_clearly(
        &["import-gguf", s(&bad), "--out", s(&out)],
        &[s(&bad), "corrupt header"],
    );
    std::fs::write(&bad, b"not a gguf file at all").unwrap();
    assert_fails_clearly(&["import-gguf", s(&bad), "--out", s(&out)], &["bad magic"]);
    assert!(!out.join("config.json").exists(), "no partial output");
}

#[test]
fn truncated_gguf_names_a_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(default_gguf()).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = tmp.path().join("out");
    assert_fails_clearly(
        &["import-gguf", s(&cut), "--out", s(&out)],
        &[s(&cut), "tensor `", "truncated"],
    );
}

#[test]
fn malformed_prompt_line_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"ok\"}\n{\"prompt\": 3}\n").unwrap();
    let model = default_model();
    assert_fails_clearly(
        &[
            "generate",
            "--model",
            s(&model),
            "--prompts",
            s(&prompts),
            "--max-new-tokens",
            "2",
        ],
        &[&format!("{}:2", prompts.display())],
    );
}

#[test]
fn unknown_model_name_says_where_it_looked() {
    assert_fails_clearly(
        &[
            "generate",
            "--model",
            "no-such-org/no-such-model",
            "--prompt",
            "hi",
        ],
        &[
            "no-such-org/no-such-model",
            "models--no-such-org--no-such-model",
        ],
    );
}
