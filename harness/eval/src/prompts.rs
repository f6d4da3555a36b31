//! Prompt files: JSONL lines of `{"prompt": ...}` or `{"messages": [...]}`.

use std::path::Path;

use emh_text::{ChatTemplate, Message, Tokenizer};
use serde::Deserialize;

use crate::EvalError;

/// One line of a prompts file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptLine {
    /// Carried to the output unchanged.
    pub id: Option<serde_json::Value>,
    /// A user message (or, with `--raw`, the exact text to continue).
    pub prompt: Option<String>,
    /// A whole conversation, rendered with the chat template.
    pub messages: Option<Vec<Message>>,
    /// A system prompt placed before `prompt`.
    pub system: Option<String>,
}

/// Reads a prompts file, naming the line of any error.
pub fn read_prompts(path: &Path) -> Result<Vec<PromptLine>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // Named as `file:line`, as compilers and editors read it.
        let at = |reason: String| {
            EvalError::io(Path::new(&format!("{}:{}", path.display(), i + 1)), reason)
        };
        let p: PromptLine =
            serde_json::from_str(line).map_err(|e| at(format!("not a prompt line: {e}")))?;
        if p.prompt.is_some() == p.messages.is_some() {
            return Err(at("give exactly one of `prompt` and `messages`".into()));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(EvalError::io(path, "no prompts"));
    }
    Ok(out)
}

/// Turns prompt lines into model input text and token ids.
pub struct PromptRenderer<'a> {
    pub tokenizer: &'a Tokenizer,
    /// `None` means raw mode: `prompt` text is used as is.
    pub template: Option<&'a ChatTemplate>,
    /// System prompt for lines that have none of their own.
    pub default_system: Option<&'a str>,
}

impl PromptRenderer<'_> {
    /// The text given to the model for a line.
    pub fn text(&self, p: &PromptLine) -> Result<String, EvalError> {
        let messages = match (&p.messages, &p.prompt) {
            (Some(m), _) => m.clone(),
            (None, Some(prompt)) => {
                let Some(_) = self.template else {
                    return Ok(prompt.clone());
                };
                let mut m = Vec::new();
                if let Some(s) = p.system.as_deref().or(self.default_system) {
                    m.push(Message::new("system", s));
                }
                m.push(Message::new("user", prompt));
                m
            }
            (None, None) => {
                return Err(EvalError::Spec {
                    field: "prompt line".into(),
                    reason: "it has neither `prompt` nor `messages`".into(),
                })
            }
        };
        let Some(template) = self.template else {
            return Err(EvalError::Spec {
                field: "messages".into(),
                reason: "a conversation needs the chat template; drop --raw".into(),
            });
        };
        Ok(template.render(&messages, true)?)
    }

    /// Text and token ids for a line.
    pub fn encode(&self, p: &PromptLine) -> Result<(String, Vec<u32>), EvalError> {
        let text = self.text(p)?;
        // A rendered template already holds its special tokens as text (as HF
        // `apply_chat_template` does); raw text gets the tokenizer's own, as
        // HF `tokenizer(text)` does.
        let ids = self.tokenizer.encode(&text, self.template.is_none())?;
        Ok((text, ids))
    }
}
