//! Batched, KV-cached generation over left-padded prompts.

use emh_text::Tokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::Tensor;

use crate::hooks::{HookSet, Phase};
use crate::prefill::{Batch, LogitsAt};
use crate::{Model, RuntimeError, SamplingParams};

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
    let mut cache = model.new_cache(requests.len() as i64, width + params.max_new_tokens as i64)?;
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

    hooks.set_rows(&active);
    let result = tch::no_grad(|| -> Result<(), RuntimeError> {
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
                let rows = Tensor::from_slice(&keep.iter().map(|&k| k as i64).collect::<Vec<_>>())
                    .to_device(model.device);
                cache.select_rows(&rows);
                active = keep.iter().map(|&k| active[k]).collect();
                hooks.set_rows(&active);
            }
            let ids: Vec<i64> = active
                .iter()
                .map(|&r| *seqs[r].tokens.last().expect("one token per step") as i64)
                .collect();
            let pos: Vec<i64> = active.iter().map(|&r| seqs[r].next_position).collect();
            for &r in &active {
                seqs[r].next_position += 1;
            }
            let n = active.len() as i64;
            logits = model.forward(
                &Tensor::from_slice(&ids)
                    .view([n, 1])
                    .to_device(model.device),
                &Tensor::from_slice(&pos)
                    .view([n, 1])
                    .to_device(model.device),
                &mut cache,
                hooks,
                Phase::Decode { step },
                LogitsAt::Last,
            )?;
        }
        Ok(())
    });
    // The hooks may serve another generation next.
    hooks.set_rows(&[]);
    result?;

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
mod tests {
    use super::*;
    use crate::hooks::{Capture, Site};
    use crate::test_model;

    fn chat(tok: &Tokenizer, text: &str) -> Vec<u32> {
        let t = format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n");
        tok.encode(&t, false).unwrap()
    }

    #[test]
    fn left_padding_does_not_change_a_prompts_logits() {
        let (model, tok) = test_model::load();
        let short = tok.encode("Paris is the capital of", false).unwrap();
        let long = tok
            .encode(
                "A much longer prompt that forces the short one to be padded on the left side.",
                false,
            )
            .unwrap();
        let (alone, _) = model
            .logits(
                std::slice::from_ref(&short),
                tok.pad_id,
                &mut HookSet::new(),
            )
            .unwrap();
        let (batched, batch) = model
            .logits(&[long, short.clone()], tok.pad_id, &mut HookSet::new())
            .unwrap();
        let width = batch.ids.size()[1];
        let n = short.len() as i64;
        let padded = batched.get(1).narrow(0, width - n, n);
        let diff = (padded - alone.get(0)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "padding changed logits by {diff}");
    }

    #[test]
    fn same_seed_gives_same_tokens_and_another_seed_differs() {
        let (model, tok) = test_model::load();
        let params = SamplingParams {
            max_new_tokens: 24,
            temperature: 1.0,
            top_p: 0.95,
            top_k: 100,
            ..Default::default()
        };
        let reqs = |seed: u64| {
            vec![
                GenRequest {
                    prompt: chat(&tok, "Tell me a story."),
                    seed,
                },
                GenRequest {
                    prompt: chat(&tok, "hey I feel bored"),
                    seed: seed + 1,
                },
            ]
        };
        let run = |seed| {
            generate(
                &model,
                &tok,
                &reqs(seed),
                &params,
                &mut HookSet::new(),
                |_| {},
            )
            .unwrap()
            .into_iter()
            .map(|o| o.tokens)
            .collect::<Vec<_>>()
        };
        let first = run(7);
        assert_eq!(first, run(7));
        assert_ne!(first, run(1000));
    }

    #[test]
    fn hooks_run_at_prefill_and_every_decode_step() {
        let (model, tok) = test_model::load();
        let capture = Capture::new();
        let mut hooks = HookSet::new();
        hooks.add(Site::ResidPost(2), capture.clone());
        let params = SamplingParams {
            max_new_tokens: 4,
            ignore_eos: true,
            greedy: true,
            ..Default::default()
        };
        let req = GenRequest {
            prompt: chat(&tok, "Hello"),
            seed: 0,
        };
        let out = generate(
            &model,
            &tok,
            std::slice::from_ref(&req),
            &params,
            &mut hooks,
            |_| {},
        )
        .unwrap();
        assert_eq!(out[0].tokens.len(), 4);
        let phases: Vec<Phase> = capture.take().into_iter().map(|c| c.phase).collect();
        // The last token needs no forward pass of its own.
        assert_eq!(
            phases,
            vec![
                Phase::Prefill,
                Phase::Decode { step: 0 },
                Phase::Decode { step: 1 },
                Phase::Decode { step: 2 }
            ]
        );
    }

    #[test]
    fn stop_strings_end_a_sequence_and_cut_its_text() {
        let (model, tok) = test_model::load();
        let params = SamplingParams {
            max_new_tokens: 40,
            greedy: true,
            stop: vec!["Paris".into()],
            ..Default::default()
        };
        let req = GenRequest {
            prompt: chat(&tok, "What is the capital of France?"),
            seed: 0,
        };
        let out = generate(&model, &tok, &[req], &params, &mut HookSet::new(), |_| {}).unwrap();
        assert_eq!(out[0].finish, FinishReason::Stop);
        assert_eq!(out[0].text, "The capital of France is ");
    }

    #[test]
    fn finished_sequences_leave_the_batch_without_changing_the_others() {
        let (model, tok) = test_model::load();
        let params = SamplingParams {
            max_new_tokens: 30,
            greedy: true,
            ..Default::default()
        };
        let long = GenRequest {
            prompt: chat(&tok, "Write a long essay about the ocean."),
            seed: 0,
        };
        let short = GenRequest {
            prompt: chat(&tok, "Say yes."),
            seed: 0,
        };
        let alone = generate(
            &model,
            &tok,
            std::slice::from_ref(&long),
            &params,
            &mut HookSet::new(),
            |_| {},
        )
        .unwrap();
        let both = generate(
            &model,
            &tok,
            &[short, long],
            &params,
            &mut HookSet::new(),
            |_| {},
        )
        .unwrap();
        assert!(
            both[0].tokens.len() < both[1].tokens.len(),
            "the short answer ends first"
        );
        assert_eq!(both[1].tokens, alone[0].tokens);
    }
}
