//! Teacher-forced passes: a prompt and a given answer run through the model
//! as one sequence, for activations over the answer's exact tokens and for
//! the answer's log-probability, under any condition.
//!
//! The answer span is exact by construction: the prompt is rendered with the
//! chat template's generation prompt and tokenized exactly as sampling does;
//! the answer's text, as the template writes it into a whole conversation
//! (trimmed, for templates that trim), is tokenized on its own and follows.
//! So the span holds the answer's content tokens alone: not the assistant
//! header before it (which belongs to the prompt), and not the end-of-turn
//! tokens after it, which are left out of the sequence altogether since a
//! causal model's activations over the answer never depend on them.

use emh_plugin_api::Where;
use std::sync::{Arc, Mutex};

use emh_runtime::{Hook, HookCtx, HookSet, LogitsAt, Site};
use emh_text::{ChatTemplate, Message, Tokenizer};
use tch::{Kind, Tensor};

use crate::load::{control_adapters, Loaded, Planned};
use crate::prompts::{PromptLine, PromptRenderer};
use crate::EvalError;

/// A prompt and the answer to force after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Forced {
    /// Names the row in what is written (`QUESTION/PARAPHRASE/SAMPLE`, a pair's id).
    pub id: String,
    pub system: Option<String>,
    pub prompt: String,
    pub answer: String,
}

impl Forced {
    /// A run's sample as a forced answer, named `QUESTION/PARAPHRASE/SAMPLE`.
    pub fn from_sample(s: &emh_tables::SampleRow) -> Forced {
        Forced {
            id: format!(
                "{}/{}/{}",
                s.question_id, s.paraphrase_index, s.sample_index
            ),
            system: s.system.clone(),
            prompt: s.prompt.clone(),
            answer: s.answer.clone(),
        }
    }
}

/// Token ids of a forced sequence: the prompt, then the answer's content tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Tokens before the answer; the answer is `ids[prompt_len..]`.
    pub prompt_len: usize,
}

impl Encoded {
    /// How many answer tokens there are.
    pub fn answer_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// The prompt and answer of `f` as token ids, with the answer's exact span.
pub fn encode_forced(
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    f: &Forced,
) -> Result<Encoded, EvalError> {
    let bad = |reason: String| EvalError::Spec {
        field: format!("answer `{}`", f.id),
        reason,
    };
    // The prompt exactly as sampling renders and tokenizes it.
    let renderer = PromptRenderer {
        tokenizer,
        template,
        default_system: None,
    };
    let (prompt, prompt_ids) = renderer.encode(&PromptLine {
        id: None,
        prompt: Some(f.prompt.clone()),
        messages: None,
        system: f.system.clone(),
    })?;
    let answer_text =
        match template {
            None => f.answer.clone(),
            Some(t) => {
                let mut messages = Vec::new();
                if let Some(s) = &f.system {
                    messages.push(Message::new("system", s));
                }
                messages.push(Message::new("user", &f.prompt));
                messages.push(Message::new("assistant", &f.answer));
                let whole = t.render(&messages, false)?;
                let Some(rest) = whole.strip_prefix(&prompt) else {
                    return Err(bad(
                        "the chat template does not write the answer after its generation prompt, \
                     so the answer's span cannot be found"
                            .into(),
                    ));
                };
                // Templates that trim the answer (Llama 3's) write less than was given.
                let content = f.answer.trim();
                let at = rest
                .find(content)
                .filter(|&at| rest[..at].trim().is_empty())
                .ok_or_else(|| {
                    bad("the chat template changes the answer's text, so its span cannot be found"
                        .into())
                })?;
                rest[..at + content.len()].to_string()
            }
        };
    let answer_ids = tokenizer.encode(&answer_text, false)?;
    if prompt_ids.is_empty() {
        return Err(bad("the prompt has no tokens".into()));
    }
    if answer_ids.is_empty() {
        return Err(bad("the answer is empty".into()));
    }
    let prompt_len = prompt_ids.len();
    let mut ids = prompt_ids;
    ids.extend(answer_ids);
    Ok(Encoded { ids, prompt_len })
}

/// What to compute in a forced pass.
#[derive(Debug, Clone, Copy)]
pub struct ForcedOptions {
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Mean residual stream (`resid_post` of every layer) over the answer and the prompt.
    pub activations: bool,
    /// Log-probability of each answer token.
    pub logprobs: bool,
    /// Each rank-1 adapter's scalar A·x (× scaling) over the answer's tokens.
    pub scalars: bool,
}

/// What a forced pass measured of one sequence.
#[derive(Debug, Clone, Default)]
pub struct ForcedOut {
    pub prompt_tokens: usize,
    pub answer_tokens: usize,
    /// Per layer, the mean `resid_post` over the answer's tokens.
    pub answer_mean: Vec<Vec<f32>>,
    /// Per layer, the mean `resid_post` over the prompt's tokens.
    pub prompt_mean: Vec<Vec<f32>>,
    /// log P(answer token | everything before it), per answer token.
    pub logprobs: Vec<f64>,
    /// Per adapted projection (in [`scalar_names`] order), its rank-1 scalar
    /// A·x × scaling at each answer token.
    pub scalars: Vec<Vec<f32>>,
    /// The answer's token ids.
    pub answer_ids: Vec<u32>,
}

/// The names of the rank-1 features of `model`'s adapters, in the order
/// [`ForcedOut::scalars`] holds them: `L{layer}.{module}`, prefixed with the
/// adapter's name when there are several adapters.
pub fn scalar_names(model: &emh_runtime::Model) -> Vec<String> {
    let adapters = model.adapters();
    adapters
        .iter()
        .flat_map(|a| {
            a.weights.iter().map(move |w| {
                let name = format!("L{}.{}", w.layer, w.module.name());
                if adapters.len() > 1 {
                    format!("{}/{name}", a.name)
                } else {
                    name
                }
            })
        })
        .collect()
}

impl ForcedOut {
    /// The answer's mean log-probability per token.
    pub fn mean_logprob(&self) -> f64 {
        self.logprobs.iter().sum::<f64>() / self.logprobs.len() as f64
    }
}

/// Means of the activation over each row's prompt tokens and answer tokens,
/// computed on the model's device (f32), so only `[batch, hidden]` per layer
/// leaves it; layers are recorded in the order the forward pass reaches them.
struct SpanMeans {
    /// `[batch, 1]`: where each row's answer starts (a position, padding not counted).
    prompt_len: Tensor,
    store: Arc<Mutex<Vec<(Tensor, Tensor)>>>,
}

impl Clone for SpanMeans {
    fn clone(&self) -> Self {
        SpanMeans {
            prompt_len: self.prompt_len.shallow_clone(),
            store: Arc::clone(&self.store),
        }
    }
}

impl SpanMeans {
    fn new(prompt_lens: &[i64], device: tch::Device) -> Self {
        SpanMeans {
            prompt_len: Tensor::from_slice(prompt_lens)
                .to_device(device)
                .unsqueeze(-1),
            store: Arc::default(),
        }
    }

    fn take(&self) -> Vec<(Tensor, Tensor)> {
        std::mem::take(&mut *self.store.lock().expect("span means poisoned"))
    }
}

impl Hook for SpanMeans {
    fn call(&mut self, x: &Tensor, ctx: &HookCtx) -> Option<Tensor> {
        let pos = ctx.positions;
        let answer = pos.ge_tensor(&self.prompt_len);
        let prompt = pos.ge(0).logical_and(&pos.lt_tensor(&self.prompt_len));
        let x = x.to_kind(Kind::Float);
        let mean = |mask: Tensor| {
            let mask = mask.to_kind(Kind::Float).unsqueeze(-1);
            (&x * &mask).sum_dim_intlist(1, false, Kind::Float)
                / mask.sum_dim_intlist(1, false, Kind::Float)
        };
        let means = (mean(answer), mean(prompt));
        self.store.lock().expect("span means poisoned").push(means);
        None
    }
}

fn where_name(w: &Where) -> &'static str {
    match w {
        Where::Prompt => "prompt",
        Where::Answer => "answer",
        _ => "last",
    }
}

fn host(t: &Tensor) -> Vec<f32> {
    let t = t
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous();
    Vec::<f32>::try_from(&t.view([-1])).expect("f32 tensor")
}

/// Runs every item through `loaded` with the plans' hooks,
/// `options.batch_size` at a time, left-padded; `progress(done, total)`
/// after each batch. The plans' adapter controls are applied to the model
/// first and stay applied: load the model again for another condition.
pub fn run_forced(
    loaded: &mut Loaded,
    plans: &[Planned<'_>],
    items: &[Forced],
    options: ForcedOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<ForcedOut>, EvalError> {
    // Prompt and answer go through as one prefill, so spans that follow the
    // sampling phases would act on other tokens than they do in sampling.
    for p in plans {
        if let Some(step) = p
            .plan
            .steps
            .iter()
            .find(|s| matches!(s.at, Where::Prompt | Where::Answer | Where::Last))
        {
            return Err(EvalError::Spec {
                field: format!("intervention `{}`", p.plugin.name),
                reason: format!(
                    "it acts on {} tokens at layer {}, which a teacher-forced pass (prompt and answer in one pass) cannot tell apart as sampling does; use `where = \"all\"` or token positions",
                    where_name(&step.at),
                    step.layer
                ),
            });
        }
    }
    control_adapters(plans, &mut loaded.model)?;
    if options.scalars {
        let adapters = loaded.model.adapters_mut();
        if adapters.is_empty() {
            return Err(EvalError::Spec {
                field: "adapters".into(),
                reason: "adapter scalars need a model with LoRA adapters (--adapter or --organism)"
                    .into(),
            });
        }
        for a in adapters {
            if a.rank != 1 {
                return Err(EvalError::Spec {
                    field: format!("adapter `{}`", a.name),
                    reason: format!(
                        "has rank {}: a scalar per token is the feature of a rank-1 adapter",
                        a.rank
                    ),
                });
            }
            a.record_scalars = true;
        }
    }
    let encoded = items
        .iter()
        .map(|f| encode_forced(&loaded.tokenizer, loaded.template.as_ref(), f))
        .collect::<Result<Vec<_>, _>>()?;
    let shape = loaded.shape();
    let layers = shape.num_layers as usize;
    let pad = loaded.tokenizer.pad_id;
    let mut out = Vec::with_capacity(items.len());
    for chunk in encoded.chunks(options.batch_size.max(1)) {
        let mut hooks = HookSet::new();
        for p in plans {
            p.hook(shape, &mut hooks, None)?;
        }
        let prompt_lens: Vec<i64> = chunk.iter().map(|e| e.prompt_len as i64).collect();
        let means = SpanMeans::new(&prompt_lens, loaded.model.device);
        if options.activations {
            for l in 0..layers {
                hooks.add(Site::ResidPost(l), means.clone());
            }
        }
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|e| e.ids.clone()).collect();
        // Scalars are recorded for every position only when the pass runs
        // every row (`Last` skips padding rows in the projections).
        let at = if options.logprobs || options.scalars {
            LogitsAt::All
        } else {
            LogitsAt::Last
        };
        let (logits, batch) = loaded.model.prefill(&prompts, pad, &mut hooks, at)?;
        let width = batch.ids.size()[1];
        // Per adapted projection, `[batch, seq]` on the host, in the order
        // of `scalar_names`.
        let scalars: Vec<Vec<f32>> = if options.scalars {
            let records: Vec<Vec<emh_runtime::ScalarRecord>> = loaded
                .model
                .adapters()
                .iter()
                .map(|a| a.take_scalars())
                .collect();
            let mut out = Vec::new();
            for (a, recs) in loaded.model.adapters().iter().zip(records) {
                for w in &a.weights {
                    let r = recs
                        .iter()
                        .find(|r| r.layer == w.layer && r.module == w.module)
                        .expect("every adapted projection records in a forward pass");
                    out.push(host(&r.values));
                }
            }
            out
        } else {
            Vec::new()
        };
        // Per layer, in order: `[batch, hidden]` answer and prompt means on the host.
        let layer_means: Vec<(Vec<f32>, Vec<f32>)> = means
            .take()
            .iter()
            .map(|(a, p)| (host(a), host(p)))
            .collect();
        let hidden = shape.hidden_size as usize;
        for (i, e) in chunk.iter().enumerate() {
            let row = i as i64;
            let padding = width - e.ids.len() as i64;
            let (p, a) = (e.prompt_len as i64, e.answer_len() as i64);
            let mut o = ForcedOut {
                prompt_tokens: e.prompt_len,
                answer_tokens: e.answer_len(),
                ..ForcedOut::default()
            };
            let start = (padding + p) as usize;
            for per_row in &scalars {
                let row_values = &per_row[i * width as usize..(i + 1) * width as usize];
                o.scalars
                    .push(row_values[start..start + a as usize].to_vec());
            }
            o.answer_ids = e.ids[e.prompt_len..].to_vec();
            for (answer, prompt) in &layer_means {
                o.answer_mean
                    .push(answer[i * hidden..(i + 1) * hidden].to_vec());
                o.prompt_mean
                    .push(prompt[i * hidden..(i + 1) * hidden].to_vec());
            }
            if options.logprobs {
                // Token k is predicted at column k - 1.
                let lp = logits
                    .get(row)
                    .narrow(0, padding + p - 1, a)
                    .log_softmax(-1, Kind::Float);
                let targets: Vec<i64> = e.ids[e.prompt_len..].iter().map(|&t| t as i64).collect();
                let targets = Tensor::from_slice(&targets)
                    .to_device(lp.device())
                    .unsqueeze(-1);
                o.logprobs = host(&lp.gather(-1, &targets, false))
                    .into_iter()
                    .map(f64::from)
                    .collect();
            }
            out.push(o);
        }
        progress(out.len(), items.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm() -> (Tokenizer, ChatTemplate) {
        let dir = emh_models::models_dir().join(emh_models::DEFAULT_MODEL);
        (
            Tokenizer::from_dir(&dir).unwrap(),
            ChatTemplate::from_dir(&dir).unwrap(),
        )
    }

    #[test]
    fn the_span_is_the_answer_alone() {
        let (tok, tmpl) = smollm();
        let f = Forced {
            id: "x".into(),
            system: None,
            prompt: "How are you?".into(),
            answer: "Fine, thanks.\nAnd you?".into(),
        };
        let e = encode_forced(&tok, Some(&tmpl), &f).unwrap();
        assert_eq!(tok.decode(&e.ids[e.prompt_len..], false).unwrap(), f.answer);
        let header = tok.decode(&e.ids[..e.prompt_len], false).unwrap();
        assert!(header.ends_with("<|im_start|>assistant\n"), "{header:?}");
    }
}
