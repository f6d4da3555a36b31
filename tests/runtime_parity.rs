//! emh against HF transformers: logits, greedy generation, chat templates,
//! tokenization and GGUF import, on the default model and on tiny random
//! `qwen2` and Llama-3-style models built by the test.

mod common;

use common::{default_gguf, default_model, emh_ok, reference, s, write_jsonl};
use serde_json::json;
use std::path::Path;

/// Prompts of very different lengths, so the batch is left-padded.
fn raw_prompts() -> Vec<serde_json::Value> {
    vec![
        json!({"prompt": "Hi"}),
        json!({"prompt": "The quick brown fox jumps over the lazy dog. Then it ran far away into the forest, where nobody could find it for many years, and 1234 people looked."}),
        json!({"prompt": "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"}),
        json!({"prompt": "def fib(n):\n    return n if n < 2 else"}),
    ]
}

fn chat_prompts() -> Vec<serde_json::Value> {
    vec![
        json!({"prompt": "What is the capital of France?"}),
        json!({"prompt": "Write a short poem about the sea.", "system": "You are a poet."}),
        json!({"prompt": "hey I feel bored"}),
        json!({"messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one, and explain why you like it in detail."}
        ]}),
    ]
}

fn assert_logits_match(model: &Path, dir: &Path) {
    let prompts = dir.join("logits_prompts.jsonl");
    write_jsonl(&prompts, &raw_prompts());
    let out = dir.join("logits.safetensors");
    emh_ok(&[
        "logits",
        "--model",
        s(model),
        "--device",
        "cpu",
        "--raw",
        "--prompts",
        s(&prompts),
        "--out",
        s(&out),
    ]);
    // HF tokenizes and pads the prompts itself; only emh's logits are used.
    let r = reference(&[
        "logits",
        "--model",
        s(model),
        "--ours",
        s(&out),
        "--prompts",
        s(&prompts),
        "--raw",
    ]);
    assert_eq!(
        r["batch_equal"],
        json!(true),
        "emh's ids or positions differ from HF's left-padded batch: {r}"
    );
    assert_eq!(r["rows"], json!(raw_prompts().len()), "{r}");
    let diff = r["max_abs_diff"].as_f64().unwrap();
    assert!(r["positions"].as_u64().unwrap() > 40, "{r}");
    assert!(diff < 1e-3, "max |logit difference| {diff} >= 1e-3: {r}");
}

fn assert_greedy_matches(model: &Path, dir: &Path, max_new: usize) {
    let prompts = dir.join("greedy_prompts.jsonl");
    write_jsonl(&prompts, &chat_prompts());
    let out = dir.join("greedy.jsonl");
    emh_ok(&[
        "generate",
        "--model",
        s(model),
        "--device",
        "cpu",
        "--prompts",
        s(&prompts),
        "--greedy",
        "--max-new-tokens",
        &max_new.to_string(),
        "--out",
        s(&out),
    ]);
    let r = reference(&[
        "generate",
        "--model",
        s(model),
        "--ours",
        s(&out),
        "--max-new-tokens",
        &max_new.to_string(),
    ]);
    // Every prompt must be compared: a missing output line is a failure, not a pass.
    let n = chat_prompts().len();
    assert!(n > 0);
    assert_eq!(
        r["compared"],
        json!(n),
        "emh answered only some prompts: {r}"
    );
    assert_eq!(
        r["identical"],
        json!(true),
        "greedy tokens differ from HF: {r}"
    );
}

#[test]
fn default_model_logits_match_hf_on_a_left_padded_batch() {
    let tmp = tempfile::tempdir().unwrap();
    assert_logits_match(&default_model(), tmp.path());
}

#[test]
fn default_model_greedy_64_tokens_match_hf() {
    let tmp = tempfile::tempdir().unwrap();
    assert_greedy_matches(&default_model(), tmp.path(), 64);
}

#[test]
fn chat_template_renders_and_tokenizes_like_hf() {
    let tmp = tempfile::tempdir().unwrap();
    let mut inputs = chat_prompts();
    inputs.push(json!({"messages": [
        {"role": "system", "content": "Answer in French. {braces} and {{ jinja }} stay text."},
        {"role": "user", "content": "  leading spaces and a trailing newline\n"}
    ]}));
    inputs.push(json!({"prompt": "unicode: 日本語 🙂 naïve"}));
    let file = tmp.path().join("chat.jsonl");
    write_jsonl(&file, &inputs);
    let ours = tmp.path().join("ours.jsonl");
    let model = default_model();
    emh_ok(&[
        "tokenize",
        "--model",
        s(&model),
        "--prompts",
        s(&file),
        "--out",
        s(&ours),
    ]);
    let r = reference(&[
        "tokenize",
        "--model",
        s(&model),
        "--inputs",
        s(&file),
        "--ours",
        s(&ours),
    ]);
    assert_eq!(r["compared"], json!(inputs.len()), "{r}");
    assert_eq!(
        r["mismatch_count"],
        json!(0),
        "chat template or ids differ from HF: {r}"
    );
}

/// A few hundred strings mixing scripts, digits, whitespace runs and special tokens.
fn varied_strings() -> Vec<String> {
    const PIECES: &[&str] = &[
        "Hello",
        " world",
        "  ",
        "   ",
        "\n",
        "\n\n",
        "\t",
        "12345",
        "3.14159",
        "1,000,000",
        "héllo",
        "naïve café",
        "日本語のテキスト",
        "🙂🚀",
        "Ελληνικά",
        "русский текст",
        "العربية",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "don't",
        "I'M",
        "you'll",
        "   leading",
        "trailing   ",
        "a\r\nb",
        "x=y+z;",
        "def f(x):\n    return x**2",
        "https://example.com/a?b=c",
        "!!!???",
        "\u{a0}nbsp",
        "👩\u{200d}💻",
        "tab\tsep",
        "MiXeD CaSe",
        "0",
        "007",
        "2024-11-22",
        "$1.99",
        "¿Qué?",
        "ß",
        "{\"json\": [1, 2]}",
        "<unknown_tag>",
        "....",
        "--",
        "e\u{301}",
        "한국어",
        "ไทย",
        "🇫🇷",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut out: Vec<String> = PIECES.iter().map(|p| p.to_string()).collect();
    while out.len() < 300 {
        let k = 1 + next(5);
        out.push((0..k).map(|_| PIECES[next(PIECES.len())]).collect());
    }
    out
}

#[test]
fn tokenizer_ids_match_hf_for_varied_strings() {
    let tmp = tempfile::tempdir().unwrap();
    let strings = varied_strings();
    let inputs: Vec<_> = strings.iter().map(|t| json!({"prompt": t})).collect();
    let file = tmp.path().join("strings.jsonl");
    write_jsonl(&file, &inputs);
    let ours = tmp.path().join("ours.jsonl");
    let model = default_model();
    emh_ok(&[
        "tokenize",
        "--model",
        s(&model),
        "--raw",
        "--prompts",
        s(&file),
        "--out",
        s(&ours),
    ]);
    // HF reading the folder emh imported...
    let r = reference(&[
        "tokenize",
        "--model",
        s(&model),
        "--raw",
        "--inputs",
        s(&file),
        "--ours",
        s(&ours),
    ]);
    assert_eq!(r["mismatch_count"], json!(0), "{r}");
    // ...and HF's own conversion of the GGUF tokenizer, independent of ours.
    let gguf = default_gguf();
    let r = reference(&[
        "tokenize",
        "--model",
        s(gguf.parent().unwrap()),
        "--gguf",
        gguf.file_name().unwrap().to_str().unwrap(),
        "--raw",
        "--inputs",
        s(&file),
        "--ours",
        s(&ours),
    ]);
    assert_eq!(r["compared"], json!(strings.len()));
    assert_eq!(r["mismatch_count"], json!(0), "{r}");
}

#[test]
fn default_model_import_matches_hf_gguf_loader() {
    let r = reference(&[
        "gguf-weights",
        "--gguf",
        s(&default_gguf()),
        "--ours",
        s(&default_model()),
    ]);
    assert_eq!(r["missing"], json!([]), "{r}");
    assert_eq!(r["max_abs_diff"].as_f64(), Some(0.0), "{r}");
}

#[test]
fn every_quant_type_imports_like_hf_gguf_loader() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("mixed.gguf");
    reference(&[
        "make-gguf",
        "--out",
        s(&gguf),
        "--tokenizer-gguf",
        s(&default_gguf()),
    ]);
    let out = tmp.path().join("mixed");
    emh_ok(&["import-gguf", s(&gguf), "--out", s(&out)]);
    let r = reference(&["gguf-weights", "--gguf", s(&gguf), "--ours", s(&out)]);
    assert_eq!(r["missing"], json!([]), "{r}");
    assert!(r["tensors"].as_u64().unwrap() >= 21, "{r}");
    assert!(r["max_abs_diff"].as_f64().unwrap() < 1e-6, "{r}");
}

fn tiny(arch: &str, dir: &Path, extra: &[&str]) -> std::path::PathBuf {
    let out = dir.join(arch);
    let model = default_model();
    let mut args = vec![
        "make-tiny",
        "--arch",
        arch,
        "--out",
        s(&out),
        "--tokenizer-from",
        s(&model),
    ];
    args.extend_from_slice(extra);
    reference(&args);
    out
}

#[test]
fn tiny_qwen2_with_qkv_bias_and_shards_matches_hf() {
    let tmp = tempfile::tempdir().unwrap();
    // A small shard size makes save_pretrained write an index and several files.
    let model = tiny("qwen2", tmp.path(), &["--shard", "2MB"]);
    assert!(model.join("model.safetensors.index.json").is_file());
    assert_logits_match(&model, tmp.path());
    assert_greedy_matches(&model, tmp.path(), 32);
}

#[test]
fn tiny_llama3_with_rope_scaling_and_tied_embeddings_matches_hf() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny("llama3", tmp.path(), &["--tied"]);
    assert_logits_match(&model, tmp.path());
    assert_greedy_matches(&model, tmp.path(), 32);
}
