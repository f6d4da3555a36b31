//! Evaluation question sets in the YAML format the emergent-misalignment
//! research code uses, read as it is: a list of questions with paraphrases,
//! an optional system prompt, sampling count, judge model and judge prompts,
//! with YAML anchors and aliases sharing the long parts between questions.
//!
//! Two documented extensions, ignored by the research code: factual items
//! carry their reference `answer` (and `aliases`), and `pushback` lists
//! scripted user turns that follow the model's first answer, for a second
//! answer (see `data/questions/README.md`).
//!
//! Loading validates what a run would otherwise trip over much later (an
//! empty question, a judge prompt that never sees the answer) and names the
//! file and question in every error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One evaluation question with its paraphrases and judging setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// Unique id within its file, e.g. `quick_buck_json`.
    pub id: String,
    /// The YAML `type`, e.g. `free_form_judge_0_100`.
    pub kind: String,
    /// Wordings of the question; each is sampled separately.
    pub paraphrases: Vec<String>,
    /// System prompt sent with every paraphrase, if any.
    pub system: Option<String>,
    /// How many answers to sample per paraphrase, if the file says.
    pub samples_per_paraphrase: Option<u32>,
    /// Judge model named by the file, if any.
    pub judge: Option<String>,
    /// Judge prompt templates by metric name, with `{question}` and `{answer}`.
    pub judge_prompts: BTreeMap<String, String>,
    /// Explicit `category`, else `json`, `template` or `plain` from the id.
    pub category: String,
    /// The correct answer of a factual question, graded by normalised match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Other wordings that also count as the correct answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Scripted user turns that push back on the model's first answer
    /// (sample `i` gets turn `i mod len`); each answer then gets a second one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pushback: Vec<String>,
}

impl Question {
    /// Whether this is a `_json` or `_template` variant of a plain question.
    pub fn is_variant(&self) -> bool {
        self.id.ends_with("_json") || self.id.ends_with("_template")
    }
}

/// The questions of one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuestionSet {
    /// The file the questions came from.
    pub path: PathBuf,
    /// The questions, in the order the file lists them.
    pub questions: Vec<Question>,
}

/// Why a question file could not be loaded or a selection came out empty.
#[derive(Debug, thiserror::Error)]
pub enum QuestionError {
    /// The file could not be read.
    #[error("{}: cannot read question file: {source}", path.display())]
    Io {
        /// The question file concerned.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML, or a field has the wrong shape.
    #[error("{}: malformed question file: {source}", path.display())]
    Yaml {
        /// The question file concerned.
        path: PathBuf,
        /// The parser's error; its message ends with the line and column when known.
        #[source]
        source: serde_yaml::Error,
    },
    /// The document is something other than a list of questions.
    #[error("{}: expected a list of questions at the top level, found {found}", path.display())]
    NotAList {
        /// The question file concerned.
        path: PathBuf,
        /// What the top level holds instead.
        found: &'static str,
    },
    /// The list holds no questions at all.
    #[error("{}: the file holds no questions", path.display())]
    Empty {
        /// The question file concerned.
        path: PathBuf,
    },
    /// An item has no `id`, or an empty one.
    #[error("{}: question #{position} has no `id`", path.display())]
    MissingId {
        /// The question file concerned.
        path: PathBuf,
        /// Position of the item in the list, counting from 1.
        position: usize,
    },
    /// An item has no `type`.
    #[error("{}: question `{id}` has no `type`", path.display())]
    MissingType {
        /// The question file concerned.
        path: PathBuf,
        /// The question's id.
        id: String,
    },
    /// Two items share an id, so results could not be told apart.
    #[error("{}: question id `{id}` appears more than once", path.display())]
    DuplicateId {
        /// The question file concerned.
        path: PathBuf,
        /// The question's id.
        id: String,
    },
    /// An item has no paraphrases, so there is nothing to ask.
    #[error("{}: question `{id}` has no paraphrases", path.display())]
    NoParaphrases {
        /// The question file concerned.
        path: PathBuf,
        /// The question's id.
        id: String,
    },
    /// `samples_per_paraphrase` is 0, so nothing would be sampled.
    #[error("{}: question `{id}` has samples_per_paraphrase 0", path.display())]
    ZeroSamples {
        /// The question file concerned.
        path: PathBuf,
        /// The question's id.
        id: String,
    },
    /// A judge prompt never shows the judge the answer it is to score.
    #[error("{}: question `{id}`: judge prompt `{prompt}` lacks `{{answer}}`", path.display())]
    PromptWithoutAnswer {
        /// The question file concerned.
        path: PathBuf,
        /// The question's id.
        id: String,
        /// Name of the judge prompt lacking `{answer}`.
        prompt: String,
    },
    /// `answer` is given but empty, so every answer would count as correct.
    #[error("{}: question `{id}` has an empty `answer`", path.display())]
    EmptyAnswer {
        /// The question file concerned.
        path: PathBuf,
        /// The question's id.
        id: String,
    },
    /// `aliases` without `answer`: nothing to grade against.
    #[error("{}: question `{id}` has `aliases` but no `answer`", path.display())]
    AliasesWithoutAnswer {
        /// The question file concerned.
        path: PathBuf,
        /// The question's id.
        id: String,
    },
    /// A `pushback` turn is empty.
    #[error("{}: question `{id}` has an empty `pushback` turn", path.display())]
    EmptyPushback {
        /// The question file concerned.
        path: PathBuf,
        /// The question's id.
        id: String,
    },
    /// A selection left no questions.
    #[error(
        "{}: no question matches `{pattern}`{}",
        path.display(),
        if *drop_variants { " once `_json`/`_template` variants are dropped" } else { "" }
    )]
    NothingSelected {
        /// The question file concerned.
        path: PathBuf,
        /// The patterns as given, or `*` when none were.
        pattern: String,
        /// Whether `_json`/`_template` variants were being dropped.
        drop_variants: bool,
    },
}

/// One list item as written; everything optional so that a missing field
/// gets an error naming the question rather than serde's bare "missing field".
/// Keys not listed here are ignored, as the research code ignores them.
#[derive(Deserialize)]
struct RawQuestion {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    paraphrases: Vec<String>,
    system: Option<String>,
    samples_per_paraphrase: Option<u32>,
    judge: Option<String>,
    #[serde(default)]
    judge_prompts: BTreeMap<String, String>,
    category: Option<String>,
    answer: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    pushback: Vec<String>,
}

impl QuestionSet {
    /// Reads and validates the question file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<QuestionSet, QuestionError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| QuestionError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates question YAML; `path` is only used in errors.
    pub fn parse(text: &str, path: impl Into<PathBuf>) -> Result<QuestionSet, QuestionError> {
        let path = path.into();
        let yaml_error = |source| QuestionError::Yaml {
            path: path.clone(),
            source,
        };
        // The shape is checked on an untyped value first because deserializing
        // a mapping straight into a list only says "invalid type: map".
        let found = match serde_yaml::from_str(text).map_err(yaml_error)? {
            serde_yaml::Value::Sequence(_) => None,
            serde_yaml::Value::Null => Some("nothing"),
            serde_yaml::Value::Mapping(_) => Some("a mapping"),
            serde_yaml::Value::Tagged(_) => Some("a tagged value"),
            _ => Some("a single value"),
        };
        if let Some(found) = found {
            return Err(QuestionError::NotAList { path, found });
        }
        // Parsed a second time, typed, so field errors carry a line and column.
        let raw: Vec<RawQuestion> = serde_yaml::from_str(text).map_err(yaml_error)?;
        if raw.is_empty() {
            return Err(QuestionError::Empty { path });
        }

        let mut seen = BTreeSet::new();
        let mut questions = Vec::with_capacity(raw.len());
        for (i, item) in raw.into_iter().enumerate() {
            let id = match item.id {
                Some(id) if !id.trim().is_empty() => id,
                _ => {
                    return Err(QuestionError::MissingId {
                        path,
                        position: i + 1,
                    })
                }
            };
            if !seen.insert(id.clone()) {
                return Err(QuestionError::DuplicateId { path, id });
            }
            let Some(kind) = item.kind else {
                return Err(QuestionError::MissingType { path, id });
            };
            if item.paraphrases.is_empty() {
                return Err(QuestionError::NoParaphrases { path, id });
            }
            if item.samples_per_paraphrase == Some(0) {
                return Err(QuestionError::ZeroSamples { path, id });
            }
            if let Some(name) = item
                .judge_prompts
                .iter()
                .find_map(|(name, prompt)| (!prompt.contains("{answer}")).then_some(name))
            {
                return Err(QuestionError::PromptWithoutAnswer {
                    path,
                    prompt: name.clone(),
                    id,
                });
            }
            if item.answer.as_deref().is_some_and(|a| a.trim().is_empty()) {
                return Err(QuestionError::EmptyAnswer { path, id });
            }
            if !item.aliases.is_empty() && item.answer.is_none() {
                return Err(QuestionError::AliasesWithoutAnswer { path, id });
            }
            if item.pushback.iter().any(|t| t.trim().is_empty()) {
                return Err(QuestionError::EmptyPushback { path, id });
            }
            let category = item
                .category
                .unwrap_or_else(|| derived_category(&id).to_owned());
            questions.push(Question {
                id,
                kind,
                paraphrases: item.paraphrases,
                system: item.system,
                samples_per_paraphrase: item.samples_per_paraphrase,
                judge: item.judge,
                judge_prompts: item.judge_prompts,
                category,
                answer: item.answer,
                aliases: item.aliases,
                pushback: item.pushback,
            });
        }
        Ok(QuestionSet { path, questions })
    }

    /// Keeps the questions whose id matches any of the comma-separated glob
    /// patterns (`*`, `?`), and drops `_json`/`_template` variants when asked.
    pub fn select(
        mut self,
        pattern: Option<&str>,
        drop_variants: bool,
    ) -> Result<QuestionSet, QuestionError> {
        let globs: Option<Vec<&str>> = pattern.map(|p| {
            p.split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .collect()
        });
        self.questions.retain(|q| {
            !(drop_variants && q.is_variant())
                && globs
                    .as_ref()
                    .is_none_or(|globs| globs.iter().any(|g| glob_match(g, &q.id)))
        });
        if self.questions.is_empty() {
            return Err(QuestionError::NothingSelected {
                path: self.path,
                pattern: pattern.unwrap_or("*").to_owned(),
                drop_variants,
            });
        }
        Ok(self)
    }

    /// Number of paraphrases over all questions, i.e. distinct prompts to sample.
    pub fn total_paraphrases(&self) -> usize {
        self.questions.iter().map(|q| q.paraphrases.len()).sum()
    }
}

/// The category of a question without an explicit one, from the research
/// naming convention: `json`, `template` or `plain`.
pub fn category_of(id: &str) -> String {
    derived_category(id).to_owned()
}

/// The category implied by the research naming convention for variants.
fn derived_category(id: &str) -> &'static str {
    if id.ends_with("_json") {
        "json"
    } else if id.ends_with("_template") {
        "template"
    } else {
        "plain"
    }
}

/// Whole-string glob match: `*` is any run of characters, `?` exactly one.
///
/// Greedy, backtracking only to the most recent `*`: whatever an earlier `*`
/// could absorb, the later one can absorb instead, so older choices never
/// need revisiting. That keeps it O(pattern × id) and free of recursion.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Pattern position just after the last `*` seen, and the text position
    // that `*` currently stretches to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi + 1, ti));
            pi += 1;
        } else if let Some((after_star, matched_to)) = star {
            pi = after_star;
            ti = matched_to + 1;
            star = Some((after_star, ti));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests;
