//! Whole `emh generate` runs on the default model.

mod common;

use common::{default_model, emh_ok, s, write_jsonl};
use serde_json::json;

#[test]
fn a_warmup_generation_leaves_the_samples_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    write_jsonl(
        &prompts,
        &[
            json!({"prompt": "Name a river."}),
            json!({"prompt": "Tell me something about the moon, briefly."}),
            json!({"prompt": "hey"}),
        ],
    );
    let run = |warmup: &str| {
        let out = tmp.path().join(format!("warmup_{warmup}.jsonl"));
        emh_ok(&[
            "generate",
            "--model",
            s(&default_model()),
            "--device",
            "cpu",
            "--prompts",
            s(&prompts),
            "-n",
            "2",
            "--batch-size",
            "4",
            "--max-new-tokens",
            "12",
            "--seed",
            "7",
            "--warmup-tokens",
            warmup,
            "--out",
            s(&out),
        ]);
        std::fs::read_to_string(out).unwrap()
    };
    let cold = run("0");
    assert_eq!(cold.lines().count(), 6);
    assert_eq!(cold, run("3"));
}
