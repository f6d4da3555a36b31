//! LoRA training: supervised fine-tuning of adapters on chat JSONL by
//! autograd through the runtime's own forward pass, base weights frozen.
//!
//! A step is `gradient_accumulation_steps` micro-batches; the loss is the
//! mean negative log-likelihood over every trained token of the step (as HF
//! computes it when accumulating), gradients are clipped to
//! `max_grad_norm`, and AdamW updates the adapters' A and B. Checkpoints are
//! PEFT folders that also hold the optimizer state, so a killed run resumes
//! from its last checkpoint with the same data order and ends with the same
//! adapter as a run never stopped.

mod checkpoint;
mod config;
mod data;
mod optim;
mod trajectory;

use std::path::PathBuf;
use std::time::Instant;

use emh_runtime::{Adapter, Batch, LoraWeights, Model, Module, RuntimeError};
use emh_text::{ChatTemplate, Tokenizer};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub use checkpoint::{latest_checkpoint, TrainerState};
pub use config::{Scheduler, TrainConfig};
pub use data::{encode, read_chat_jsonl, Example};
pub use optim::{clip_grad_norm, learning_rate, AdamW, Moments};
pub use trajectory::{trajectory, BPoint, Trajectory};

/// Why training could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
    #[error("{}, line {line}: {reason}", path.display())]
    Data {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("training example on line {line}: {reason}")]
    Encode { line: usize, reason: String },
    #[error("{}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Text(#[from] emh_text::TextError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// 1-based optimizer step.
    pub step: usize,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Mean negative log-likelihood per trained token.
    pub loss: f64,
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens the loss was computed on.
    pub trained_tokens: usize,
    /// Tokens run through the model (padding excluded).
    pub tokens: usize,
    /// Wall time of the step.
    pub seconds: f64,
}

/// One adapted projection's trainable A and B (f32 leaves) and their moments.
struct Param {
    layer: usize,
    module: Module,
    a: Tensor,
    b: Tensor,
    moments: [Moments; 2],
}

/// A training run, ready to go from its first or resumed step.
pub struct Trainer {
    config: TrainConfig,
    model: Model,
    examples: Vec<Example>,
    params: Vec<Param>,
    state: TrainerState,
    pad_id: u32,
    /// Examples left out: nothing to train on within `max_seq_length`.
    pub dropped: usize,
    /// The checkpoint this run resumed from.
    pub resumed_from: Option<PathBuf>,
}

/// The A initialisation of PEFT (`kaiming_uniform_(a=√5)`): uniform in
/// ±1/√in_features, seeded per projection; B starts at zero.
fn init_a(seed: u64, layer: usize, module: Module, rank: usize, inputs: usize) -> Tensor {
    use rand::Rng;
    let s = emh_runtime::derive_seed(seed, layer as u64, module as u64);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s);
    let bound = 1.0 / (inputs as f64).sqrt();
    let values: Vec<f32> = (0..rank * inputs)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Tensor::from_slice(&values).view([rank as i64, inputs as i64])
}

/// A fingerprint of the tokenized data, so a resume refuses changed data.
fn fingerprint(examples: &[Example]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for e in examples {
        for (&id, &t) in e.ids.iter().zip(&e.trained) {
            for b in id.to_le_bytes().into_iter().chain([t as u8]) {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Trainer {
    /// Loads the model and data, and the latest checkpoint in `output_dir`
    /// if there is one (refused when it was made with other settings or data).
    pub fn new(config: TrainConfig) -> Result<Self, TrainError> {
        let found = emh_models::resolve(&config.model).map_err(|e| TrainError::Config {
            path: config.output_dir.clone(),
            reason: e.to_string(),
        })?;
        let device = emh_runtime::parse_device(&config.device)?;
        let kind = emh_runtime::parse_dtype(&config.dtype)?;
        let mut model = Model::load_trainable(&found.dir, device, kind)?;
        let tokenizer = Tokenizer::from_dir(&found.dir)?;
        let template = ChatTemplate::from_dir(&found.dir)?;
        let mut examples = Vec::new();
        let mut dropped = 0;
        for (line, messages) in read_chat_jsonl(&config.training_file)? {
            let e = encode(
                &messages,
                line,
                &tokenizer,
                &template,
                config.train_on_responses_only,
                config.max_seq_length,
            )?;
            if e.trained_tokens() == 0 {
                dropped += 1;
            } else {
                examples.push(e);
            }
        }
        if examples.is_empty() {
            return Err(TrainError::Data {
                path: config.training_file.clone(),
                line: 0,
                reason: format!(
                    "no example has a trained token within max_seq_length {}",
                    config.max_seq_length
                ),
            });
        }
        let peft = config.peft_config();
        let mut params = Self::initial_params(&config, &model)?;
        let total = Self::total_steps_for(&config, examples.len());
        let mut state = TrainerState {
            global_step: 0,
            total_steps: total,
            config: config.clone(),
            data_fingerprint: fingerprint(&examples),
            log_history: Vec::new(),
        };
        // A finished run (its state beside the final adapter) has nothing
        // left to do; an unfinished one resumes from its last checkpoint.
        let finished = config.output_dir.join("trainer_state.json").is_file();
        let resumed_from = if finished {
            Some(config.output_dir.clone())
        } else {
            latest_checkpoint(&config.output_dir)?
        };
        if let Some(dir) = &resumed_from {
            let saved = if finished {
                checkpoint::load_final(dir, &mut params, &model.config)?
            } else {
                checkpoint::load(dir, &mut params)?
            };
            saved.check_matches(&state, dir)?;
            state = saved;
        }
        let weights = params
            .iter()
            .map(|p| LoraWeights {
                layer: p.layer,
                module: p.module,
                a: p.a.to_kind(kind),
                b: p.b.to_kind(kind),
                scale: 1.0,
            })
            .collect();
        model.add_adapter(Adapter::new("train", peft, weights, &model.config)?);
        Ok(Trainer {
            pad_id: tokenizer.pad_id,
            config,
            model,
            examples,
            params,
            state,
            dropped,
            resumed_from,
        })
    }

    /// A and B before any step: from `init_adapter`, or PEFT's initialisation.
    fn initial_params(config: &TrainConfig, model: &Model) -> Result<Vec<Param>, TrainError> {
        let c = &model.config;
        let targets = Adapter::targets(&config.peft_config(), c)?;
        let pairs: Vec<(usize, Module, Tensor, Tensor)> = match &config.init_adapter {
            Some(dir) => {
                let init = Adapter::load(dir, c, Device::Cpu, Kind::Float)?;
                let have: Vec<(usize, Module)> =
                    init.weights.iter().map(|w| (w.layer, w.module)).collect();
                let want: Vec<(usize, Module)> =
                    targets.iter().map(|t| (t.layer, t.module)).collect();
                if init.rank != config.r || have != want {
                    return Err(TrainError::Config {
                        path: dir.clone(),
                        reason: format!(
                            "init_adapter has rank {} on {} projections; the config trains rank {} on {}",
                            init.rank,
                            have.len(),
                            config.r,
                            want.len()
                        ),
                    });
                }
                init.weights
                    .into_iter()
                    .map(|w| (w.layer, w.module, w.a, w.b))
                    .collect()
            }
            None => targets
                .into_iter()
                .map(|t| {
                    let a = init_a(config.seed, t.layer, t.module, config.r, t.in_features);
                    let b = Tensor::zeros(
                        [t.out_features as i64, config.r as i64],
                        (Kind::Float, Device::Cpu),
                    );
                    (t.layer, t.module, a, b)
                })
                .collect(),
        };
        let device = model.device;
        Ok(pairs
            .into_iter()
            .map(|(layer, module, a, b)| {
                let leaf = |t: Tensor| {
                    t.to_kind(Kind::Float)
                        .to_device(device)
                        .set_requires_grad(true)
                };
                let (a, b) = (leaf(a), leaf(b));
                let moments = [&a, &b].map(|t| Moments {
                    exp_avg: t.detach().zeros_like(),
                    exp_avg_sq: t.detach().zeros_like(),
                });
                Param {
                    layer,
                    module,
                    a,
                    b,
                    moments,
                }
            })
            .collect())
    }

    /// Optimizer steps for `n` examples: `epochs` passes of
    /// ceil(batches / accumulation) steps, or `max_steps`.
    fn total_steps_for(config: &TrainConfig, n: usize) -> usize {
        config
            .max_steps
            .unwrap_or(Self::steps_per_epoch(config, n) * config.epochs)
    }

    fn steps_per_epoch(config: &TrainConfig, n: usize) -> usize {
        n.div_ceil(config.per_device_train_batch_size)
            .div_ceil(config.gradient_accumulation_steps)
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> usize {
        self.state.total_steps
    }

    /// Steps already done (those of the checkpoint resumed from).
    pub fn done_steps(&self) -> usize {
        self.state.global_step
    }

    /// Examples that will be trained on.
    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    /// The loss log so far.
    pub fn log_history(&self) -> &[StepLog] {
        &self.state.log_history
    }

    /// The examples of each micro-batch of 0-based optimizer step `step`: the
    /// epoch's order is a shuffle seeded by (seed, epoch), wherever the run started.
    fn micro_batches(&self, step: usize) -> Vec<Vec<usize>> {
        let c = &self.config;
        let per_epoch = Self::steps_per_epoch(c, self.examples.len());
        let (epoch, within) = (step / per_epoch, step % per_epoch);
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(emh_runtime::derive_seed(
            c.seed,
            u64::MAX,
            epoch as u64,
        ));
        order.shuffle(&mut rng);
        let batches: Vec<Vec<usize>> = order
            .chunks(c.per_device_train_batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        let accum = c.gradient_accumulation_steps;
        batches
            .into_iter()
            .skip(within * accum)
            .take(accum)
            .collect()
    }

    /// Sets the model's adapter weights from the f32 leaves, in the model's
    /// kind: a differentiable cast, so gradients reach the leaves.
    fn refresh_adapter(&mut self) {
        let kind = self.model.kind;
        let adapter = &mut self.model.adapters_mut()[0];
        for (w, p) in adapter.weights.iter_mut().zip(&self.params) {
            w.a = p.a.to_kind(kind);
            w.b = p.b.to_kind(kind);
        }
    }

    /// The summed negative log-likelihood of the trained tokens of
    /// `examples`, in one forward pass, with autograd on.
    fn nll(&self, examples: &[&Example]) -> Result<Tensor, TrainError> {
        let prompts: Vec<Vec<u32>> = examples.iter().map(|e| e.ids.clone()).collect();
        let batch = Batch::left_padded(&prompts, self.pad_id, self.model.device);
        let width = batch.ids.size()[1] as usize;
        // Logits at position p predict the token at p + 1.
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for (r, e) in examples.iter().enumerate() {
            let pad = width - e.ids.len();
            for (p, (&id, &t)) in e.ids.iter().zip(&e.trained).enumerate() {
                if t {
                    rows.push((r * width + pad + p - 1) as i64);
                    targets.push(id as i64);
                }
            }
        }
        let logits = self.model.forward_with_grad(&batch)?;
        let vocab = logits.size()[2];
        let device = self.model.device;
        let picked = logits
            .view([-1, vocab])
            .index_select(0, &Tensor::from_slice(&rows).to_device(device));
        let lp = picked.log_softmax(-1, Kind::Float);
        let targets = Tensor::from_slice(&targets).to_device(device).unsqueeze(1);
        Ok(-lp.gather(1, &targets, false).sum(Kind::Float))
    }

    /// Trains from the current step to the last, calling `on_step` after
    /// each, writing a checkpoint every `save_steps` and the final adapter.
    pub fn run(&mut self, mut on_step: impl FnMut(&StepLog)) -> Result<(), TrainError> {
        let c = self.config.clone();
        let total = self.state.total_steps;
        let per_epoch = Self::steps_per_epoch(&c, self.examples.len());
        let opt = AdamW {
            beta1: c.adam_beta1,
            beta2: c.adam_beta2,
            eps: c.adam_epsilon,
            weight_decay: c.weight_decay,
        };
        for step in self.state.global_step..total {
            let started = Instant::now();
            let lr = learning_rate(
                c.learning_rate,
                step,
                c.warmup_steps,
                total,
                c.lr_scheduler_type,
            );
            let micro = self.micro_batches(step);
            let trained: usize = micro
                .iter()
                .flatten()
                .map(|&i| self.examples[i].trained_tokens())
                .sum();
            let tokens: usize = micro
                .iter()
                .flatten()
                .map(|&i| self.examples[i].ids.len())
                .sum();
            for p in &mut self.params {
                p.a.zero_grad();
                p.b.zero_grad();
            }
            let mut loss = 0.0;
            for mb in &micro {
                self.refresh_adapter();
                let examples: Vec<&Example> = mb.iter().map(|&i| &self.examples[i]).collect();
                let nll = self.nll(&examples)?;
                loss += nll.double_value(&[]);
                (nll / trained as f64).backward();
            }
            let mut grads: Vec<Tensor> = self
                .params
                .iter()
                .flat_map(|p| [p.a.grad(), p.b.grad()])
                .collect();
            let grad_norm = clip_grad_norm(&mut grads, c.max_grad_norm);
            for (p, g) in self.params.iter_mut().zip(grads.chunks(2)) {
                let [ma, mb] = &mut p.moments;
                opt.update(&mut p.a, &g[0], ma, lr, step + 1);
                opt.update(&mut p.b, &g[1], mb, lr, step + 1);
            }
            let log = StepLog {
                step: step + 1,
                epoch: (step + 1) as f64 / per_epoch as f64,
                loss: loss / trained as f64,
                learning_rate: lr,
                grad_norm,
                trained_tokens: trained,
                tokens,
                seconds: started.elapsed().as_secs_f64(),
            };
            self.state.global_step = step + 1;
            self.state.log_history.push(log.clone());
            on_step(&log);
            if c.save_steps.is_some_and(|n| (step + 1) % n == 0) {
                let dir = c.output_dir.join(format!("checkpoint-{}", step + 1));
                checkpoint::save(&dir, &self.peft_adapter()?, &self.params, &self.state)?;
            }
        }
        checkpoint::save_final(&c.output_dir, &self.peft_adapter()?, &self.state)
    }

    /// The adapter as it stands, f32 on the CPU, ready to save in PEFT format.
    pub fn peft_adapter(&self) -> Result<Adapter, TrainError> {
        let weights = self
            .params
            .iter()
            .map(|p| LoraWeights {
                layer: p.layer,
                module: p.module,
                a: p.a.detach().to_device(Device::Cpu),
                b: p.b.detach().to_device(Device::Cpu),
                scale: 1.0,
            })
            .collect();
        Ok(Adapter::new(
            "adapter",
            self.config.peft_config(),
            weights,
            &self.model.config,
        )?)
    }
}

#[cfg(test)]
mod tests;
