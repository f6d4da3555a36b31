//! Chat templates from `tokenizer_config.json`, rendered as HF `apply_chat_template` does.

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::{read_json, token_text, TextError};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message with the given role.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template and the special tokens it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    source_path: PathBuf,
    special_tokens: Vec<(String, String)>,
}

const TEMPLATE_NAME: &str = "chat";

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)` for templates that stamp the date (Llama 3).
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date crate for one call.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    fmt.replace("%Y", &year.to_string())
        .replace("%m", &format!("{month:02}"))
        .replace("%d", &format!("{day:02}"))
        .replace("%B", name)
        .replace("%b", &name[..3])
}

impl ChatTemplate {
    /// Loads the `chat_template` of a model folder's `tokenizer_config.json`
    /// (or its `chat_template.jinja`).
    pub fn from_dir(dir: &Path) -> Result<Self, TextError> {
        let path = dir.join("tokenizer_config.json");
        let config = read_json(&path)?;
        let jinja = dir.join("chat_template.jinja");
        let (source, source_path) = match &config["chat_template"] {
            serde_json::Value::String(s) => (s.clone(), path.clone()),
            serde_json::Value::Array(named) => {
                let default = named
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .ok_or_else(|| TextError::Template {
                        path: path.clone(),
                        reason: "no template named `default`".into(),
                    })?;
                (default.to_string(), path.clone())
            }
            _ if jinja.is_file() => (
                std::fs::read_to_string(&jinja).map_err(|e| TextError::File {
                    path: jinja.clone(),
                    reason: e.to_string(),
                })?,
                jinja,
            ),
            _ => {
                return Err(TextError::Template {
                    path,
                    reason: "no `chat_template`: this is not a chat model".into(),
                })
            }
        };
        let mut special_tokens = Vec::new();
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "pad_token",
            "sep_token",
            "cls_token",
            "mask_token",
        ] {
            if let Some(t) = token_text(&config[key]) {
                special_tokens.push((key.to_string(), t));
            }
        }
        Self::new(source, source_path, special_tokens)
    }

    fn new(
        source: String,
        source_path: PathBuf,
        special_tokens: Vec<(String, String)>,
    ) -> Result<Self, TextError> {
        let mut env = Environment::new();
        // The settings HF uses for chat templates.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| TextError::Template {
                path: source_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(ChatTemplate {
            env,
            source_path,
            special_tokens,
        })
    }

    /// Renders the conversation; with `add_generation_prompt` it ends where
    /// the assistant's answer begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        let mut ctx: std::collections::BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("added in new()");
        tmpl.render(Value::from(ctx))
            .map_err(|e| TextError::Template {
                path: self.source_path.clone(),
                reason: format!("rendering failed: {e:#}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(src: &str) -> ChatTemplate {
        ChatTemplate::new(
            src.into(),
            PathBuf::from("test"),
            vec![("eos_token".into(), "</s>".into())],
        )
        .unwrap()
    }

    #[test]
    fn renders_with_trim_and_lstrip_blocks() {
        let t = template(
            "{% for m in messages %}\n  {% if m.role %}{{ m.role }}: {{ m.content }}{{ eos_token }}\n  {% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
        );
        let out = t.render(&[Message::new("user", "hi")], true).unwrap();
        assert_eq!(out, "user: hi</s>\nassistant:");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = template("{{ raise_exception('no system role') }}");
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("no system role"), "{err}");
    }

    #[test]
    fn python_string_methods_work() {
        let t = template("{{ messages[0].content.strip().upper() }}");
        let out = t.render(&[Message::new("user", "  x ")], false).unwrap();
        assert_eq!(out, "X");
    }

    #[test]
    fn strftime_formats_a_date() {
        let s = strftime_now("%d %b %Y".into());
        assert_eq!(s.len(), 11, "{s}");
    }
}
