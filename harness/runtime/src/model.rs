//! The decoder-only transformer of `llama` and `qwen2` (RMSNorm, RoPE, GQA, SwiGLU).

use std::path::{Path, PathBuf};

use emh_kernels::Pool;
use tch::{Device, Kind, Tensor};

use crate::cache::KvCache;
use crate::hooks::{HookSet, Phase, Site};
use crate::host::{contiguous, f32_slice, f32_slice_mut};
use crate::linear::{on_rows, Linear, LinearPath};
use crate::lora::{Adapter, Module};
use crate::prefill::LogitsAt;
use crate::weights::WeightFiles;
use crate::{ModelConfig, RuntimeError};

mod attention;

use attention::Attention;

struct Layer {
    input_norm: Tensor,
    /// q, k and v projections stacked into one matrix: one matmul instead of three.
    qkv: Linear,
    o: Linear,
    post_norm: Tensor,
    /// gate and up projections stacked likewise.
    gate_up: Linear,
    down: Linear,
}

/// A loaded model, ready to run on its device.
pub struct Model {
    pub config: ModelConfig,
    pub dir: PathBuf,
    pub device: Device,
    pub kind: Kind,
    /// f32 on a CPU with AVX2 and FMA: products, norms and one-token
    /// attention run on emh's kernels rather than ATen.
    kernels: bool,
    /// Loaded for training: every operation is ATen's, so autograd can
    /// differentiate the forward pass (emh's kernels cannot be).
    trainable: bool,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// RoPE inverse frequencies, f32 on the device.
    inv_freq: Tensor,
    /// LoRA adapters applied beside the base weights, in order.
    adapters: Vec<Adapter>,
}

impl Model {
    /// Loads a model folder onto `device`, with weights in `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self, RuntimeError> {
        Self::load_inner(dir, device, kind, false)
    }

    fn load_inner(
        dir: &Path,
        device: Device,
        kind: Kind,
        trainable: bool,
    ) -> Result<Self, RuntimeError> {
        let config = ModelConfig::from_dir(dir)?;
        let files = WeightFiles::open(dir)?;
        // Layers the config does not know would be left out without a word.
        let deepest = files
            .names()
            .iter()
            .filter_map(|n| {
                n.strip_prefix("model.layers.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max();
        if let Some(l) = deepest.filter(|&l| l >= config.num_layers) {
            return Err(RuntimeError::File {
                path: dir.join("config.json"),
                reason: format!(
                    "num_hidden_layers is {}, but the weights hold layer {l}",
                    config.num_layers
                ),
            });
        }
        let untied_head = files.contains("lm_head.weight");
        Self::build(
            dir,
            config,
            device,
            kind,
            untied_head,
            trainable,
            |name, shape| files.load(name, shape, kind, device),
        )
    }

    /// Loads a model folder for training adapters: the same weights, frozen,
    /// with every operation on ATen so gradients flow through the forward
    /// pass (see [`Model::forward_with_grad`]). Slower than [`Model::load`]
    /// for inference on CPU.
    pub fn load_trainable(dir: &Path, device: Device, kind: Kind) -> Result<Self, RuntimeError> {
        let mut model = Self::load_inner(dir, device, kind, true)?;
        model.trainable = true;
        Ok(model)
    }

    /// A model with random weights from a folder's `config.json` alone, as HF
    /// initialises one (normal(0, 0.02), norms 1, biases 0): for benchmarks
    /// of large shapes without their weight files.
    pub fn random_init(
        dir: &Path,
        device: Device,
        kind: Kind,
        seed: u64,
    ) -> Result<Self, RuntimeError> {
        let config = ModelConfig::from_dir(dir)?;
        let untied_head = !config.tie_word_embeddings;
        Self::build(
            dir,
            config,
            device,
            kind,
            untied_head,
            false,
            |name, shape| {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                let opts = (kind, device);
                Ok(if name.ends_with("norm.weight") {
                    Tensor::ones(dims.as_slice(), opts)
                } else if name.ends_with(".bias") {
                    Tensor::zeros(dims.as_slice(), opts)
                } else {
                    let count = shape.iter().product();
                    Tensor::from_slice(&crate::random::normal_values(seed, name, count, 0.02))
                        .view(dims.as_slice())
                        .to_kind(kind)
                        .to_device(device)
                })
            },
        )
    }

    /// Assembles a model from `load(name, shape)` for each HF tensor name.
    fn build(
        dir: &Path,
        config: ModelConfig,
        device: Device,
        kind: Kind,
        untied_head: bool,
        trainable: bool,
        load: impl Fn(&str, &[usize]) -> Result<Tensor, RuntimeError>,
    ) -> Result<Self, RuntimeError> {
        let kernels =
            !trainable && device == Device::Cpu && kind == Kind::Float && emh_kernels::fast();
        let path = if trainable {
            LinearPath::Aten
        } else if kernels {
            LinearPath::Kernels
        } else {
            LinearPath::Fastest
        };
        if kernels {
            // The products and one-token attention run on emh's kernel
            // threads, which spin between jobs; torch's own worker threads
            // would fight them for the same cores.
            tch::set_num_threads(1);
        }
        let c = &config;
        let (h, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q_rows, kv_rows) = (c.num_heads * hd, c.num_kv_heads * hd);
        let embed = load("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let q = load(&format!("{p}.self_attn.q_proj.weight"), &[q_rows, h])?;
            let k = load(&format!("{p}.self_attn.k_proj.weight"), &[kv_rows, h])?;
            let v = load(&format!("{p}.self_attn.v_proj.weight"), &[kv_rows, h])?;
            let qkv_b = if c.qkv_bias {
                let qb = load(&format!("{p}.self_attn.q_proj.bias"), &[q_rows])?;
                let kb = load(&format!("{p}.self_attn.k_proj.bias"), &[kv_rows])?;
                let vb = load(&format!("{p}.self_attn.v_proj.bias"), &[kv_rows])?;
                Some(Tensor::cat(&[qb, kb, vb], 0))
            } else {
                None
            };
            let gate = load(&format!("{p}.mlp.gate_proj.weight"), &[i, h])?;
            let up = load(&format!("{p}.mlp.up_proj.weight"), &[i, h])?;
            layers.push(Layer {
                input_norm: load(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv: Linear::new(Tensor::cat(&[q, k, v], 0), qkv_b, path),
                o: Linear::new(
                    load(&format!("{p}.self_attn.o_proj.weight"), &[h, q_rows])?,
                    None,
                    path,
                ),
                post_norm: load(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_up: Linear::new(Tensor::cat(&[gate, up], 0), None, path),
                down: Linear::new(
                    load(&format!("{p}.mlp.down_proj.weight"), &[h, i])?,
                    None,
                    path,
                ),
            });
        }
        let norm = load("model.norm.weight", &[h])?;
        let lm_head = Linear::new(
            if c.tie_word_embeddings || !untied_head {
                embed.shallow_clone()
            } else {
                load("lm_head.weight", &[c.vocab_size, h])?
            },
            None,
            path,
        );
        // As HF computes it: 1 / theta ** (arange(0, d, 2) / d), in f32.
        let exponents = Tensor::arange_start_step(0, hd as i64, 2, (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float)
            / hd as f64;
        let base = Tensor::pow_scalar(c.rope_theta, &exponents).reciprocal();
        let base: Vec<f32> = Vec::try_from(&base)?;
        let inv_freq = Tensor::from_slice(&c.scale_inv_freq(base)).to_device(device);
        Ok(Model {
            config,
            dir: dir.to_path_buf(),
            device,
            kind,
            kernels,
            trainable,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            adapters: Vec::new(),
        })
    }

    /// Loads a PEFT LoRA adapter folder and applies it from now on.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<&mut Adapter, RuntimeError> {
        let a = Adapter::load(dir, &self.config, self.device, self.kind)?;
        Ok(self.add_adapter(a))
    }

    /// Applies `adapter` from now on, after those already added.
    pub fn add_adapter(&mut self, adapter: Adapter) -> &mut Adapter {
        self.adapters.push(adapter);
        self.adapters.last_mut().expect("just pushed")
    }

    /// Logits at every position of a left-padded `batch` with autograd on,
    /// for training adapters: `[batch, seq, vocab]` in f32. Only a model
    /// from [`Model::load_trainable`] can be differentiated.
    pub fn forward_with_grad(&self, batch: &crate::Batch) -> Result<Tensor, RuntimeError> {
        if !self.trainable {
            return Err(RuntimeError::Request(
                "this model was loaded for inference; load it with Model::load_trainable to train"
                    .into(),
            ));
        }
        let (b, t) = (batch.ids.size()[0], batch.ids.size()[1]);
        self.config.check_length(t as usize, || {
            format!("a batch of {b} sequences, the longest")
        })?;
        let mut cache = self.new_cache(b, t)?;
        self.forward(
            &batch.ids,
            &batch.positions,
            &mut cache,
            &mut HookSet::new(),
            Phase::Prefill,
            LogitsAt::All,
        )
    }

    /// The adapters, in the order they were added.
    pub fn adapters(&self) -> &[Adapter] {
        &self.adapters
    }

    /// The adapters, to change their run-time controls.
    pub fn adapters_mut(&mut self) -> &mut [Adapter] {
        &mut self.adapters
    }

    /// Adds every adapter's update at (`layer`, `module`) for input `x` to `out`.
    fn add_lora(&self, layer: usize, module: Module, x: &Tensor, out: &mut Tensor, phase: Phase) {
        for a in &self.adapters {
            if let Some(d) = a.delta(layer, module, x, phase) {
                *out += d;
            }
        }
    }

    /// `x += y` on the residual stream; out of place when training, since
    /// autograd keeps the `x` the norms saw.
    fn add_residual(&self, x: &mut Tensor, y: &Tensor) {
        if self.trainable {
            *x = x.g_add(y);
        } else {
            *x += y;
        }
    }

    /// An empty KV cache for `batch` sequences of up to `capacity` tokens.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> Result<KvCache, RuntimeError> {
        // The kernels run only on f32 CPU models: caches `zero` can fill.
        let pool = self.kernels.then(Pool::global);
        KvCache::new(&self.config, batch, capacity, self.kind, self.device, pool)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Tensor {
        if self.kernels {
            // One pass instead of ATen's six operations, which cost some
            // 50 microseconds at batch 16, sixty times a step.
            let x = contiguous(x);
            let mut out = x.empty_like();
            emh_kernels::rms_norm(
                Pool::global(),
                f32_slice(&x),
                f32_slice(w),
                self.config.rms_norm_eps as f32,
                f32_slice_mut(&mut out),
            );
            return out;
        }
        x.rms_norm(
            [self.config.hidden_size as i64],
            Some(w),
            self.config.rms_norm_eps,
        )
    }

    /// Runs `ids` `[batch, seq]` at `positions` through the model, appending
    /// to `cache`, and returns logits `[batch, seq or 1, vocab]` in f32.
    pub(crate) fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        cache: &mut KvCache,
        hooks: &mut HookSet,
        phase: Phase,
        at: LogitsAt,
    ) -> Result<Tensor, RuntimeError> {
        let c = &self.config;
        let (b, t) = (ids.size()[0], ids.size()[1]);
        if cache.len + t > cache.capacity {
            return Err(RuntimeError::Request(format!(
                "{} tokens exceed the cache capacity {}",
                cache.len + t,
                cache.capacity
            )));
        }
        let real = positions.ge(0);
        cache.valid.narrow(1, cache.len, t).copy_(&real);
        if phase == Phase::Prefill && bool::try_from(real.logical_not().any())? {
            cache.has_padding = true;
        }
        let plan = self.attention_plan(cache, t, b);
        // A generation's prompt pass skips padding in the per-token work
        // (projections and MLP): with prompts of mixed lengths, a third of a
        // batch's rows can be padding. Padding rows then carry zeros from
        // those layers; no real token attends to them, and only the last
        // position's logits come back. `logits` keeps every row, as HF does.
        let rows = (self.kernels && phase == Phase::Prefill && at == LogitsAt::Last)
            .then(|| real.view([-1]).nonzero().view([-1]))
            .filter(|rows| rows.size()[0] < b * t);
        let rows = rows.as_ref();
        let (cos, sin) = self.rope(positions);
        let (nh, nkv, hd) = (c.num_heads as i64, c.num_kv_heads as i64, c.head_dim as i64);
        let total = cache.len + t;

        let mut x = Tensor::embedding(&self.embed, ids, -1, false, false);
        for (l, layer) in self.layers.iter().enumerate() {
            hooks.run(Site::ResidPre(l), &mut x, phase, positions);
            let h = self.rms_norm(&x, &layer.input_norm);
            let qkv = on_rows(&h, rows, |h| {
                let qkv = layer.qkv.forward(h);
                if !self.adapters.is_empty() {
                    let (qn, kvn) = (nh * hd, nkv * hd);
                    for (module, start, len) in [
                        (Module::Q, 0, qn),
                        (Module::K, qn, kvn),
                        (Module::V, qn + kvn, kvn),
                    ] {
                        let mut part = qkv.narrow(2, start, len);
                        self.add_lora(l, module, h, &mut part, phase);
                    }
                }
                qkv
            });
            let q = if self.kernels {
                self.rotate_into_cache(&qkv, &cos, &sin, cache, l, total)
            } else {
                // Queries and keys rotate together: one set of kernels, not two.
                let qk = qkv.narrow(2, 0, (nh + nkv) * hd).view([b, t, nh + nkv, hd]);
                let qk = (&qk * &cos).addcmul(&qk.roll([hd / 2], [3]), &sin);
                let k = qk.narrow(2, nh, nkv).transpose(1, 2);
                let v = qkv
                    .narrow(2, (nh + nkv) * hd, nkv * hd)
                    .view([b, t, nkv, hd])
                    .transpose(1, 2);
                cache.k[l].narrow(2, cache.len, t).copy_(&k);
                cache.v[l].narrow(2, cache.len, t).copy_(&v);
                qk.narrow(2, 0, nh).transpose(1, 2)
            };
            let attn = match &plan {
                Attention::OneToken { bias } => self.attend_one(&q, cache, l, total, bias.as_ref()),
                _ => {
                    let keys = cache.k[l].narrow(2, 0, total);
                    let values = cache.v[l].narrow(2, 0, total);
                    self.attention(&q, &keys, &values, &plan)
                        .transpose(1, 2)
                        .reshape([b, t, nh * hd])
                }
            };
            let o = on_rows(&attn, rows, |attn| {
                let mut o = layer.o.forward(attn);
                self.add_lora(l, Module::O, attn, &mut o, phase);
                o
            });
            self.add_residual(&mut x, &o);
            let h = self.rms_norm(&x, &layer.post_norm);
            let mut mlp = on_rows(&h, rows, |h| {
                let gu = layer.gate_up.forward(h);
                let inter = c.intermediate_size as i64;
                if !self.adapters.is_empty() {
                    for (module, start) in [(Module::Gate, 0), (Module::Up, inter)] {
                        let mut part = gu.narrow(2, start, inter);
                        self.add_lora(l, module, h, &mut part, phase);
                    }
                }
                let act = if self.kernels {
                    let gu = contiguous(&gu);
                    let [rb, rt, _] = gu.size()[..] else {
                        unreachable!("activations are [batch, seq, features]")
                    };
                    let mut act = Tensor::empty([rb, rt, inter], (Kind::Float, Device::Cpu));
                    emh_kernels::silu_mul(
                        Pool::global(),
                        f32_slice(&gu),
                        inter as usize,
                        f32_slice_mut(&mut act),
                    );
                    act
                } else {
                    gu.narrow(2, 0, inter).silu() * gu.narrow(2, inter, inter)
                };
                let mut mlp = layer.down.forward(&act);
                self.add_lora(l, Module::Down, &act, &mut mlp, phase);
                mlp
            });
            hooks.run(Site::MlpOut(l), &mut mlp, phase, positions);
            self.add_residual(&mut x, &mlp);
            hooks.run(Site::ResidPost(l), &mut x, phase, positions);
        }
        cache.len = total;
        if let Some(why) = hooks.take_failure() {
            return Err(RuntimeError::Request(why));
        }
        let x = match at {
            LogitsAt::Last => x.narrow(1, t - 1, 1),
            LogitsAt::All => x,
        };
        let x = self.rms_norm(&x, &self.norm);
        Ok(self.lm_head.forward(&x).to_kind(Kind::Float))
    }
}
