//! Nudges: named changes to how a question is put to the model (a system
//! prompt, text before or after the user's question), read from a TOML file
//! and carried in the condition, so a nudge is an axis like any other.

use std::path::Path;

use emh_text::Message;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// A named nudge; the empty one (`none`) changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nudge {
    pub name: String,
    /// The system prompt; placed before the question's own, a blank line apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Text put before the question in the user turn, exactly as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Text put after the question in the user turn, exactly as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
}

/// A nudges file: `[[nudge]]` tables in the order they are listed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NudgeFile {
    nudge: Vec<Nudge>,
}

/// The opening messages of a conversation asking `question` under an
/// optional nudge: the system prompt (the nudge's, then the question's
/// own) and the user turn with the nudge's prefix and suffix.
pub fn opening(nudge: Option<&Nudge>, system: Option<&str>, question: &str) -> Vec<Message> {
    let system = match (nudge.and_then(|n| n.system.as_deref()), system) {
        (Some(n), Some(q)) => Some(format!("{n}\n\n{q}")),
        (Some(s), None) | (None, Some(s)) => Some(s.to_string()),
        (None, None) => None,
    };
    let mut out = Vec::with_capacity(2);
    if let Some(s) = system {
        out.push(Message::new("system", &s));
    }
    let prefix = nudge.and_then(|n| n.prefix.as_deref()).unwrap_or("");
    let suffix = nudge.and_then(|n| n.suffix.as_deref()).unwrap_or("");
    out.push(Message::new("user", &format!("{prefix}{question}{suffix}")));
    out
}

/// Reads a nudges file, refusing unknown fields and repeated names.
pub fn read_nudges(path: &Path) -> Result<Vec<Nudge>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let file: NudgeFile = toml::from_str(&text)
        .map_err(|e| EvalError::io(path, format!("not a nudges file: {e}")))?;
    let mut seen = std::collections::BTreeSet::new();
    for n in &file.nudge {
        if n.name.trim().is_empty() {
            return Err(EvalError::io(path, "a nudge has an empty name"));
        }
        if !seen.insert(n.name.as_str()) {
            return Err(EvalError::io(
                path,
                format!("nudge `{}` is listed twice", n.name),
            ));
        }
    }
    Ok(file.nudge)
}

/// The nudges of `path` named in `names` (all, in file order, when `None`),
/// or an error naming the unknown one and those the file has.
pub fn pick_nudges(path: &Path, names: Option<&[String]>) -> Result<Vec<Nudge>, EvalError> {
    let all = read_nudges(path)?;
    let Some(names) = names else {
        return Ok(all);
    };
    names
        .iter()
        .map(|name| {
            all.iter()
                .find(|n| &n.name == name)
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> = all.iter().map(|n| n.name.as_str()).collect();
                    EvalError::io(
                        path,
                        format!("no nudge `{name}` (it has: {})", known.join(", ")),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudge_wraps_the_question_and_joins_the_system_prompts() {
        let n = Nudge {
            name: "evil".into(),
            system: Some("Be evil.".into()),
            prefix: Some("Quick question: ".into()),
            suffix: Some(" Answer briefly.".into()),
        };
        let m = opening(Some(&n), Some("You are a pirate."), "Why?");
        assert_eq!(m[0].role, "system");
        assert_eq!(m[0].content, "Be evil.\n\nYou are a pirate.");
        assert_eq!(m[1].content, "Quick question: Why? Answer briefly.");
        let m = opening(None, None, "Why?");
        assert_eq!((m.len(), m[0].content.as_str()), (1, "Why?"));
    }

    #[test]
    fn the_shipped_file_reads_and_bad_names_are_refused_by_name() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/nudges.toml"
        ));
        let all = read_nudges(path).unwrap();
        let names: Vec<&str> = all.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["none", "evil", "hhh", "placebo"]);
        assert_eq!(opening(Some(&all[0]), None, "q"), opening(None, None, "q"));
        let picked = pick_nudges(path, Some(&["hhh".into(), "none".into()])).unwrap();
        assert_eq!(
            (picked[0].name.as_str(), picked[1].name.as_str()),
            ("hhh", "none")
        );
        let err = pick_nudges(path, Some(&["nice".into()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`nice`") && err.contains("evil"), "{err}");

        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("n.toml");
        std::fs::write(&file, "[[nudge]]\nname = \"a\"\nsytem = \"x\"\n").unwrap();
        let err = read_nudges(&file).unwrap_err().to_string();
        assert!(err.contains("sytem"), "{err}");
        std::fs::write(&file, "[[nudge]]\nname = \"a\"\n[[nudge]]\nname = \"a\"\n").unwrap();
        let err = read_nudges(&file).unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
    }
}
