//! LoRA organisms: PEFT adapters applied unmerged match python `peft` + transformers.

mod common;

use std::path::Path;

use common::lora::{logits_diff, make_lora};
use common::{default_model, emh, emh_ok, s, write_jsonl};
use serde_json::json;

#[test]
fn rank_1_rslora_adapter_matches_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("rank1");
    make_lora(&a, 1, 8.0, "down_proj", "5,12,20", true, 1);
    let diff = logits_diff(tmp.path(), &[&a]);
    assert!(diff < 1e-3, "max |logit difference| {diff}");
}

#[test]
fn rank_4_adapter_on_every_projection_matches_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("rank4");
    make_lora(
        &a,
        4,
        16.0,
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        "3,7",
        false,
        2,
    );
    let diff = logits_diff(tmp.path(), &[&a]);
    assert!(diff < 1e-3, "max |logit difference| {diff}");
}

#[test]
fn two_adapters_add_up_as_in_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    make_lora(&a, 1, 8.0, "down_proj", "15,16,17", true, 3);
    make_lora(&b, 1, 8.0, "down_proj", "21,22,23", true, 4);
    let diff = logits_diff(tmp.path(), &[&a, &b]);
    assert!(diff < 1e-3, "max |logit difference| {diff}");
}

#[test]
fn an_adapter_for_another_model_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    make_lora(&a, 1, 8.0, "down_proj", "5", false, 5);
    // Claim rank 2: every A and B now has the wrong shape for the config.
    let cfg = a.join("adapter_config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    c["r"] = json!(2);
    std::fs::write(&cfg, c.to_string()).unwrap();
    let model = default_model();
    let out = emh(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "hi",
        "--adapter",
        s(&a),
        "--max-new-tokens",
        "2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("model.layers.5.mlp.down_proj.lora_A.weight") && err.contains("[1, 1536]"),
        "{err}"
    );
}

/// Logits of `emh logits` with extra arguments, as a flat list of f32 bytes.
fn emh_logits(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let prompts = dir.join("p.jsonl");
    write_jsonl(
        &prompts,
        &[json!({"prompt": "Is it safe to mix bleach and ammonia?"})],
    );
    let out = dir.join("l.safetensors");
    let model = default_model();
    let mut args = vec![
        "logits",
        "--model",
        s(&model),
        "--device",
        "cpu",
        "--prompts",
        s(&prompts),
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    emh_ok(&args);
    std::fs::read(&out).unwrap()
}

#[test]
fn adapter_scaling_plugin_switches_chosen_layers_off() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("organism");
    make_lora(&a, 1, 8.0, "down_proj", "15,16,17,21,22,23", true, 6);
    let base = emh_logits(tmp.path(), &[]);
    let adapted = emh_logits(tmp.path(), &["--adapter", s(&a)]);
    assert_ne!(base, adapted);
    let all_off = emh_logits(
        tmp.path(),
        &[
            "--adapter",
            s(&a),
            "--intervention",
            "adapter-scaling={\"rules\": [{\"factor\": 0}]}",
        ],
    );
    assert_eq!(
        base, all_off,
        "factor 0 on every adapter must give the base model exactly"
    );
    let half_off = emh_logits(
        tmp.path(),
        &["--adapter", s(&a), "--intervention", "adapter-scaling={\"rules\": [{\"adapter\": \"organism\", \"layers\": [15, 16, 17], \"factor\": 0}]}"],
    );
    assert_ne!(half_off, base);
    assert_ne!(half_off, adapted);
    let model = default_model();
    let out = emh(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
        "--adapter",
        s(&a),
        "--intervention",
        "adapter-scaling={\"rules\": [{\"layers\": [3], \"factor\": 2}]}",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("layer 3 is not adapted"), "{err}");
}

#[test]
fn a_lora_organism_plugin_loads_its_adapters_like_adapter_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("medical");
    make_lora(&a, 1, 8.0, "down_proj", "10,20", true, 7);
    let base = emh_logits(tmp.path(), &[]);
    let flagged = emh_logits(tmp.path(), &["--adapter", s(&a)]);
    // No --model: the base comes from the adapter's base_model_name_or_path.
    let organism = format!("lora-organism={{\"adapters\": [{:?}]}}", s(&a));
    let prompts = tmp.path().join("p.jsonl");
    let out = tmp.path().join("o.safetensors");
    emh_ok(&[
        "logits",
        "--device",
        "cpu",
        "--prompts",
        s(&prompts),
        "--out",
        s(&out),
        "--organism",
        &organism,
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), flagged);
    let off = format!(
        "lora-organism={{\"adapters\": [{{\"path\": {:?}, \"scale\": 0}}]}}",
        s(&a)
    );
    assert_eq!(emh_logits(tmp.path(), &["--organism", &off]), base);
    let bad = emh(&[
        "logits",
        "--prompts",
        s(&prompts),
        "--out",
        s(&out),
        "--organism",
        "lora-organism={\"adapters\": [\"/no/such/adapter\"]}",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        err.contains("/no/such/adapter/adapter_config.json"),
        "{err}"
    );
}

/// Rewrites an adapter's `adapter_config.json`.
fn edit_adapter(a: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let cfg = a.join("adapter_config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(&cfg, c.to_string()).unwrap();
}

/// A rank-2 adapter on q_proj and v_proj of layers 3 and 7 whose config is
/// then edited: emh must apply exactly what peft applies.
fn edited_adapter_matches_peft(seed: u32, edit: impl FnOnce(&mut serde_json::Value)) {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    make_lora(&a, 2, 16.0, "q_proj,v_proj", "3,7", false, seed);
    edit_adapter(&a, edit);
    let diff = logits_diff(tmp.path(), &[&a]);
    assert!(diff < 1e-3, "max |logit difference| {diff}");
}

#[test]
fn weights_of_modules_the_config_does_not_target_are_ignored_as_in_peft() {
    // The file keeps q_proj's weights; the config targets v_proj alone.
    edited_adapter_matches_peft(6, |c| c["target_modules"] = json!(["v_proj"]));
}

#[test]
fn weights_of_layers_not_transformed_are_ignored_as_in_peft() {
    edited_adapter_matches_peft(7, |c| c["layers_to_transform"] = json!([7]));
}

#[test]
fn a_target_modules_pattern_matches_whole_module_names_as_in_peft() {
    edited_adapter_matches_peft(8, |c| {
        c["target_modules"] = json!(r"model\.layers\.3\.self_attn\.(q|v)_proj");
        c["layers_to_transform"] = serde_json::Value::Null;
    });
}

#[test]
fn target_modules_the_model_does_not_have_are_refused_as_in_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    make_lora(&a, 1, 8.0, "down_proj", "5", false, 9);
    edit_adapter(&a, |c| c["target_modules"] = json!(["dense_4h_to_h"]));
    let model = default_model();
    let out = emh(&[
        "generate",
        "--model",
        s(&model),
        "--device",
        "cpu",
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
        "--adapter",
        s(&a),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("dense_4h_to_h") && err.contains("not found in the model"),
        "{err}"
    );
    // PEFT refuses the same adapter.
    let script = r#"
import sys
from transformers import AutoModelForCausalLM
from peft import PeftModel
m = AutoModelForCausalLM.from_pretrained(sys.argv[1])
try:
    PeftModel.from_pretrained(m, sys.argv[2])
except ValueError as e:
    print("refused:", str(e).splitlines()[0])
    sys.exit(0)
sys.exit("peft accepted it")
"#;
    let py = std::process::Command::new(common::python())
        .args(["-c", script, s(&model), s(&a)])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert!(String::from_utf8_lossy(&py.stdout).contains("not found in the base model"));
}
