//! What crosses the boundary for judge plugins: JSON text of these types.
//!
//! A judge plugin returns the judge's distribution over its first answer;
//! the host turns it into a 0–100 score, so every judge is aggregated by the
//! same rule.

use serde::{Deserialize, Serialize};

/// Who a judge is: what names its judgments in tables and caches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeIdentity {
    /// Short id for tables (e.g. `gpt-4o-2024-08-06`).
    pub id: String,
    /// The judge model.
    pub model: String,
    /// Where it runs: a URL, or `local:<model folder>`.
    pub endpoint: String,
    /// Every parameter that changes a judgment (temperature, top_logprobs, seed, ...).
    pub params: serde_json::Value,
    /// The judge wants every prompt of a run in one call (a batch job).
    #[serde(default)]
    pub one_call: bool,
}

/// A token and its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
}

/// The judge's answer to one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum JudgeOutput {
    /// The most likely first tokens, as an API returns them.
    Top { top: Vec<TokenLogprob> },
    /// The exact probability of each answer 0..=100 and the judge's most likely first token.
    ///
    /// `min_mass` is the least total probability on numbers that gives a
    /// score; absent, the reference rule (0.25) holds.
    Numbers {
        probs: Vec<f64>,
        preferred: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_mass: Option<f64>,
    },
    /// No answer after every retry; the host keeps the prompt for a later run.
    Failed { error: String },
}

/// Requests, retries, tokens and cost of one batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeUsage {
    pub requests: u64,
    pub retries: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// In the currency of the configured prices; 0 without prices.
    pub cost: f64,
}

impl JudgeUsage {
    /// Adds another batch's usage.
    pub fn add(&mut self, other: &JudgeUsage) {
        self.requests += other.requests;
        self.retries += other.retries;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost += other.cost;
    }
}

/// The answers to a batch of prompts, in order, with its usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeBatch {
    pub outputs: Vec<JudgeOutput>,
    pub usage: JudgeUsage,
}
