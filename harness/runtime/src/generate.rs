//! Batched, KV-cached generation over left-padded prompts.

use emh_text::Tokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::Tensor;

use crate::hooks::{HookSet, Phase};
use crate::model::{Batch, LogitsAt};
use crate::{Model, RuntimeError, SamplingParams};

/// One sequence to generate.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// Prompt token ids (chat template already applied).
    pub prompt: Vec<u32>,
    /// Seed of this sequence's own generator: same seed, same device, same tokens.
    pub seed: u64,
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

struct Running {
    tokens: Vec<u32>,
    rng: ChaCha8Rng,
    next_position: i64,
    finish: Option<(FinishReason, String)>,
}

/// Generates a continuation of every request, all in one batch.
///
/// `on_step` is told how many tokens each decoding step produced.
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    requests: &[GenRequest],
    params: &SamplingParams,
    hooks: &mut HookSet,
    mut on_step: impl FnMut(usize),
) -> Result<Vec<GenOutput>, RuntimeError> {
    params.validate()?;
    model.check_hooks(hooks)?;
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = requests.iter().position(|r| r.prompt.is_empty()) {
        return Err(RuntimeError::Request(format!("prompt {i} has no tokens")));
    }
    let prompts: Vec<Vec<u32>> = requests.iter().map(|r| r.prompt.clone()).collect();
    let batch = Batch::left_padded(&prompts, tokenizer.pad_id, model.device);
    let width = batch.ids.size()[1];
    let mut cache = model.new_cache(requests.len() as i64, width + params.max_new_tokens as i64);
    let mut seqs: Vec<Running> = requests
        .iter()
        .map(|r| Running {
            tokens: Vec::with_capacity(params.max_new_tokens),
            rng: ChaCha8Rng::seed_from_u64(r.seed),
            next_position: r.prompt.len() as i64,
            finish: None,
        })
        .collect();
    // Rows of the cache, in order, map to these request indices.
    let mut active: Vec<usize> = (0..requests.len()).collect();

    tch::no_grad(|| -> Result<(), RuntimeError> {
        let mut logits = model.forward(
            &batch.ids,
            &batch.positions,
            &mut cache,
            hooks,
            Phase::Prefill,
            LogitsAt::Last,
        )?;
        for step in 0..params.max_new_tokens {
            let uniform: Vec<f64> = active.iter().map(|&r| seqs[r].rng.random()).collect();
            let chosen = params.choose(&logits.squeeze_dim(1), &uniform);
            let chosen: Vec<i64> = Vec::try_from(&chosen)?;
            on_step(active.len());
            let mut keep = Vec::with_capacity(active.len());
            for (row, (&r, &tok)) in active.iter().zip(&chosen).enumerate() {
                let s = &mut seqs[r];
                s.tokens.push(tok as u32);
                s.finish = finish_of(s, tok as u32, tokenizer, params)?;
                if s.finish.is_none() {
                    keep.push(row);
                }
            }
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                let rows = Tensor::from_slice(
                    &keep.iter().map(|&k| k as i64).collect::<Vec<_>>(),
                )
                .to_device(model.device);
                cache.select_rows(&rows);
                active = keep.iter().map(|&k| active[k]).collect();
            }
            let ids: Vec<i64> = active.iter().map(|&r| *seqs[r].tokens.last().expect("one token per step") as i64).collect();
            let pos: Vec<i64> = active.iter().map(|&r| seqs[r].next_position).collect();
            for &r in &active {
                seqs[r].next_position += 1;
            }
            let n = active.len() as i64;
            logits = model.forward(
                &Tensor::from_slice(&ids).view([n, 1]).to_device(model.device),
                &Tensor::from_slice(&pos).view([n, 1]).to_device(model.device),
                &mut cache,
                hooks,
                Phase::Decode { step },
                LogitsAt::Last,
            )?;
        }
        Ok(())
    })?;

    seqs.into_iter()
        .map(|s| {
            let (finish, text) = match s.finish {
                Some(f) => f,
                None => (FinishReason::Length, tokenizer.decode(&s.tokens, true)?),
            };
            Ok(GenOutput {
                tokens: s.tokens,
                text,
                finish,
            })
        })
        .collect()
}

/// Whether a sequence is done after its newest token, and its final text if so.
fn finish_of(
    s: &Running,
    token: u32,
    tokenizer: &Tokenizer,
    params: &SamplingParams,
) -> Result<Option<(FinishReason, String)>, RuntimeError> {
    if !params.ignore_eos && tokenizer.eos_ids.contains(&token) {
        return Ok(Some((FinishReason::Eos, tokenizer.decode(&s.tokens, true)?)));
    }
    if !params.stop.is_empty() {
        let text = tokenizer.decode(&s.tokens, true)?;
        if let Some(cut) = params.stop.iter().filter_map(|p| text.find(p.as_str())).min() {
            return Ok(Some((FinishReason::Stop, text[..cut].to_string())));
        }
    }
    if s.tokens.len() >= params.max_new_tokens {
        return Ok(Some((FinishReason::Length, tokenizer.decode(&s.tokens, true)?)));
    }
    Ok(None)
}
