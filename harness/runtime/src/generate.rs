//! Batched, KV-cached generation: continuous batching over a fixed number
//! of rows, with samples of one prompt sharing its prompt pass.

use std::collections::HashMap;

use emh_text::Tokenizer;
use serde::Serialize;

use crate::hooks::HookSet;
use crate::{Model, RuntimeError, SamplingParams};

mod engine;

use engine::{Engine, Running};

/// One sequence to generate.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// Prompt token ids (chat template already applied).
    pub prompt: Vec<u32>,
    /// Seed of this sequence's own generator: same seed, same device, same tokens.
    pub seed: u64,
}

/// The seed of sample `j` of prompt `i` under a base seed: SplitMix64 over
/// the triple, so seeds of neighbouring samples are unrelated.
pub fn derive_seed(seed: u64, i: u64, j: u64) -> u64 {
    let mut z = seed
        .wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(j.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It produced an end-of-sequence token.
    Eos,
    /// Its text reached a stop string.
    Stop,
    /// It reached the maximum number of new tokens.
    Length,
}

/// A generated sequence.
#[derive(Debug, Clone)]
pub struct GenOutput {
    /// New token ids, the end-of-sequence token included when there was one.
    pub tokens: Vec<u32>,
    /// Decoded text without special tokens, cut before a stop string.
    pub text: String,
    pub finish: FinishReason,
}

/// What [`generate`] reports as it goes.
pub enum Event<'a> {
    /// A step chose this many new tokens.
    Step(usize),
    /// Request `.0` finished with this output.
    Done(usize, &'a GenOutput),
}

/// The request whose prompt pass each request uses: the first one with the
/// same prompt and the same hooks acting on it (itself when there is none).
/// Captures of a prompt pass hold rows for these requests only.
pub fn shared_prompts(requests: &[GenRequest], hooks: &HookSet) -> Vec<usize> {
    let mut first: HashMap<(&[u32], Vec<bool>), usize> = HashMap::new();
    requests
        .iter()
        .enumerate()
        .map(|(i, r)| *first.entry((&r.prompt, hooks.acting_on(i))).or_insert(i))
        .collect()
}

/// Generates a continuation of every request, at most `slots` sequences at
/// a time: when one finishes, the next request takes its row, so the batch
/// stays full while requests wait. Requests are started in order; those
/// sharing a prompt (see [`shared_prompts`]) compute it once. Each
/// sequence's tokens depend only on its prompt, its seed and its hooks, not
/// on what else is in the batch.
pub fn generate<E: From<RuntimeError>>(
    model: &Model,
    tokenizer: &Tokenizer,
    requests: &[GenRequest],
    params: &SamplingParams,
    hooks: &mut HookSet,
    slots: usize,
    on_event: impl FnMut(Event<'_>) -> Result<(), E>,
) -> Result<Vec<GenOutput>, E> {
    params.validate()?;
    model.check_hooks(hooks)?;
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = requests.iter().position(|r| r.prompt.is_empty()) {
        return Err(RuntimeError::Request(format!("prompt {i} has no tokens")).into());
    }
    for (i, r) in requests.iter().enumerate() {
        model
            .config
            .check_length(r.prompt.len() + params.max_new_tokens, || {
                format!(
                    "request {i}: a prompt of {} tokens and up to {} new tokens",
                    r.prompt.len(),
                    params.max_new_tokens
                )
            })?;
    }
    let mut engine = Engine::new(model, tokenizer, requests, params, hooks, slots.max(1))?;
    let result = tch::no_grad(|| engine.run(hooks, on_event));
    // The hooks may serve another generation next.
    hooks.set_rows(&[]);
    result?;
    Ok(engine.outputs())
}

/// Whether a sequence is done after its newest token, and its final text if so.
fn finish_of(
    s: &Running,
    token: u32,
    tokenizer: &Tokenizer,
    params: &SamplingParams,
) -> Result<Option<(FinishReason, String)>, RuntimeError> {
    if !params.ignore_eos && tokenizer.eos_ids.contains(&token) {
        return Ok(Some((
            FinishReason::Eos,
            tokenizer.decode(&s.tokens, true)?,
        )));
    }
    if !params.stop.is_empty() {
        let text = tokenizer.decode(&s.tokens, true)?;
        if let Some(cut) = params
            .stop
            .iter()
            .filter_map(|p| text.find(p.as_str()))
            .min()
        {
            return Ok(Some((FinishReason::Stop, text[..cut].to_string())));
        }
    }
    if s.tokens.len() >= params.max_new_tokens {
        return Ok(Some((
            FinishReason::Length,
            tokenizer.decode(&s.tokens, true)?,
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
