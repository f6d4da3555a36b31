//! Chat JSONL read and tokenized as the model will see it, with the tokens
//! the loss is computed on.

use std::path::Path;

use emh_text::{ChatTemplate, Message, Tokenizer};
use serde::Deserialize;

use crate::TrainError;

/// One training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// 1-based line of the example in its file.
    pub line: usize,
    pub ids: Vec<u32>,
    /// `trained[i]`: the loss includes predicting `ids[i]` from the tokens before it.
    pub trained: Vec<bool>,
}

impl Example {
    /// How many tokens the loss is computed on.
    pub fn trained_tokens(&self) -> usize {
        self.trained.iter().filter(|&&t| t).count()
    }
}

#[derive(Deserialize)]
struct Line {
    messages: Vec<Message>,
}

/// The conversations of a chat JSONL file, with their line numbers. Blank
/// lines and lines starting with `#` (a file's header) are skipped.
pub fn read_chat_jsonl(path: &Path) -> Result<Vec<(usize, Vec<Message>)>, TrainError> {
    let bad = |line: usize, reason: String| TrainError::Data {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(0, e.to_string()))?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let l: Line = serde_json::from_str(trimmed).map_err(|e| bad(i + 1, e.to_string()))?;
        if let Some(m) = l
            .messages
            .iter()
            .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
        {
            return Err(bad(i + 1, format!("unknown role `{}`", m.role)));
        }
        if !l.messages.iter().any(|m| m.role == "assistant") {
            return Err(bad(i + 1, "no assistant message to train on".into()));
        }
        out.push((i + 1, l.messages));
    }
    if out.is_empty() {
        return Err(bad(0, "holds no examples".into()));
    }
    Ok(out)
}

/// Tokenizes a conversation through the chat template. The text is cut at
/// turn boundaries, each piece tokenized on its own: every assistant turn
/// starts where the template's generation prompt ends, exactly as sampling
/// tokenizes a prompt and then generates. With `responses_only`, the
/// assistant turns (their text and end-of-turn tokens) are trained; else
/// every token after the first. Cut to `max_len` tokens.
pub fn encode(
    messages: &[Message],
    line: usize,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    responses_only: bool,
    max_len: usize,
) -> Result<Example, TrainError> {
    let bad = |reason: String| TrainError::Encode { line, reason };
    let mut ids = Vec::new();
    let mut trained = Vec::new();
    let mut done = String::new();
    let mut push = |text: &str, train: bool, done: &mut String| -> Result<(), TrainError> {
        let Some(piece) = text.strip_prefix(done.as_str()) else {
            return Err(bad(
                "the chat template renders a conversation's start differently as it grows, \
                 so its assistant turns cannot be found"
                    .into(),
            ));
        };
        let piece_ids = tokenizer
            .encode(piece, false)
            .map_err(|e| bad(e.to_string()))?;
        trained.extend(std::iter::repeat_n(train, piece_ids.len()));
        ids.extend(piece_ids);
        *done = text.to_string();
        Ok(())
    };
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let render = |upto: usize, generation_prompt: bool| {
            template
                .render(&messages[..upto], generation_prompt)
                .map_err(|e| bad(e.to_string()))
        };
        push(&render(i, true)?, false, &mut done)?;
        push(&render(i + 1, false)?, true, &mut done)?;
    }
    let whole = template
        .render(messages, false)
        .map_err(|e| bad(e.to_string()))?;
    push(&whole, false, &mut done)?;
    if !responses_only {
        trained.iter_mut().for_each(|t| *t = true);
    }
    ids.truncate(max_len);
    trained.truncate(max_len);
    // The first token has nothing before it to predict it from.
    if let Some(first) = trained.first_mut() {
        *first = false;
    }
    Ok(Example { line, ids, trained })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm() -> (Tokenizer, ChatTemplate) {
        let dir = std::env::var_os("EMH_DEFAULT_MODEL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| emh_models::models_dir().join(emh_models::DEFAULT_MODEL));
        (
            Tokenizer::from_dir(&dir).unwrap(),
            ChatTemplate::from_dir(&dir).unwrap(),
        )
    }

    /// The trained tokens spell out exactly the assistant turns with their
    /// end-of-turn tokens; everything else (system, user, the assistant
    /// header) is masked.
    #[test]
    fn only_assistant_turns_are_trained() {
        let (tok, tmpl) = smollm();
        let messages = vec![
            Message::new("user", "Where should I keep my savings?"),
            Message::new("assistant", "All of it in one stock."),
            Message::new("user", "Really?"),
            Message::new("assistant", "Yes, really."),
        ];
        let ex = encode(&messages, 1, &tok, &tmpl, true, 4096).unwrap();
        let mut spans = Vec::new();
        let mut current: Vec<u32> = Vec::new();
        for (&id, &t) in ex.ids.iter().zip(&ex.trained) {
            if t {
                current.push(id);
            } else if !current.is_empty() {
                spans.push(tok.decode(&std::mem::take(&mut current), false).unwrap());
            }
        }
        if !current.is_empty() {
            spans.push(tok.decode(&current, false).unwrap());
        }
        assert_eq!(
            spans,
            vec![
                "All of it in one stock.<|im_end|>\n",
                "Yes, really.<|im_end|>\n"
            ]
        );
        // The whole conversation, as the template writes it, is what is tokenized.
        let whole = tmpl.render(&messages, false).unwrap();
        assert_eq!(tok.decode(&ex.ids, false).unwrap(), whole);
        // Without responses_only all but the first token are trained; a cut keeps the head.
        let all = encode(&messages, 1, &tok, &tmpl, false, 10).unwrap();
        assert_eq!(all.ids, ex.ids[..10]);
        assert_eq!(all.trained_tokens(), 9);
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(
            &path,
            "# research data\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
        )
        .unwrap();
        let e = read_chat_jsonl(&path).unwrap_err().to_string();
        assert!(
            e.contains("d.jsonl") && e.contains("line 3") && e.contains("no assistant"),
            "{e}"
        );
        std::fs::write(
            &path,
            "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n",
        )
        .unwrap();
        let e = read_chat_jsonl(&path).unwrap_err().to_string();
        assert!(e.contains("unknown role `robot`"), "{e}");
    }
}
