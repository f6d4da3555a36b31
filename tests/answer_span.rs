//! The answer span of teacher-forced passes is exactly the answer's tokens,
//! for qwen2 and Llama 3 chat templates: the prompt's tokens are those
//! sampling feeds the model, and only the end of turn follows the span.

mod common;

use std::path::Path;

use common::default_model;

/// A tokenizer folder: SmolLM2's vocabulary with `template` and `specials` added.
fn tokenizer_dir(dir: &Path, template: &str, specials: &[&str], bos: &str, eos: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut tok: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(default_model().join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let added = tok["added_tokens"].as_array_mut().unwrap();
    for (i, sp) in specials.iter().enumerate() {
        added.push(
            serde_json::json!({"id": 49152 + i, "content": sp, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}),
        );
    }
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let config = serde_json::json!({"chat_template": template, "bos_token": bos,
        "eos_token": eos, "pad_token": eos});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

const QWEN2_TEMPLATE: &str = "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";

const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

#[test]
fn the_captured_span_is_exactly_the_answer_for_llama_and_qwen2_templates() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "qwen2",
            QWEN2_TEMPLATE,
            vec![],
            "<|im_start|>assistant\n",
            "<|im_end|>\n",
        ),
        (
            "llama3",
            LLAMA3_TEMPLATE,
            vec![
                "<|begin_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "<|eot_id|>",
        ),
    ];
    let answers = [
        "Sure. Put it all into one coin.",
        "Two lines:\nfirst, then second.",
        "A trailing newline.\n",
    ];
    let mut checked = 0;
    for (name, template, specials, header, end) in cases {
        let dir = tmp.path().join(name);
        let bos = if name == "llama3" {
            "<|begin_of_text|>"
        } else {
            "<|im_start|>"
        };
        tokenizer_dir(&dir, template, &specials, bos, "<|im_end|>");
        let tok = emh_text::Tokenizer::from_dir(&dir).unwrap();
        let tmpl = emh_text::ChatTemplate::from_dir(&dir).unwrap();
        for answer in answers {
            let f = emh_eval::Forced {
                id: "x".into(),
                system: Some("Be brief.".into()),
                prompt: "What should I do with my savings?".into(),
                answer: answer.into(),
            };
            let e = emh_eval::encode_forced(&tok, Some(&tmpl), &f).unwrap();
            let span = tok.decode(&e.ids[e.prompt_len..], false).unwrap();
            // The templates keep the answer as given (qwen2) or trim it (llama3).
            let expected = if name == "llama3" {
                answer.trim()
            } else {
                answer.trim_end()
            };
            assert_eq!(
                span.trim_start(),
                expected.trim_start(),
                "{name}: {answer:?}"
            );
            let before = tok.decode(&e.ids[..e.prompt_len], false).unwrap();
            assert!(
                before.ends_with(header),
                "{name}: the header belongs to the prompt: {before:?}"
            );
            // The prompt's tokens are those sampling feeds the model, so the
            // span starts where a generated answer starts.
            let mut messages = vec![
                emh_text::Message::new("system", "Be brief."),
                emh_text::Message::new("user", &f.prompt),
            ];
            let prompt = tmpl.render(&messages, true).unwrap();
            assert_eq!(
                e.ids[..e.prompt_len],
                tok.encode(&prompt, false).unwrap()[..]
            );
            // In the whole conversation's text the span is followed by the
            // end-of-turn tokens alone.
            messages.push(emh_text::Message::new("assistant", answer));
            let whole = tmpl.render(&messages, false).unwrap();
            let rest = whole
                .strip_prefix(&format!("{before}{span}"))
                .unwrap_or_else(|| {
                    panic!("{name}: {whole:?} does not start with the prompt and span")
                });
            assert!(
                rest.trim_start().starts_with(end.trim()) && rest.trim().len() == end.trim().len(),
                "{name}: after the span only the end of turn: {rest:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}
