//! The decoder-only transformer of `llama` and `qwen2` (RMSNorm, RoPE, GQA, SwiGLU).

use std::path::{Path, PathBuf};

use emh_kernels::{CacheShape, Pool};
use tch::{Device, Kind, Tensor};

use crate::cache::KvCache;
use crate::hooks::{HookSet, Phase, Site};
use crate::host::{contiguous, f32_slice, f32_slice_mut};
use crate::linear::{on_rows, Linear, LinearPath};
use crate::lora::{Adapter, Module};
use crate::prefill::LogitsAt;
use crate::weights::WeightFiles;
use crate::{ModelConfig, RuntimeError};

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

/// How a forward pass attends, the same for every layer.
enum Attention {
    /// PyTorch's fused attention, with a boolean mask `[b, 1, t, total]`
    /// or plain causal attention.
    Fused {
        mask: Option<Tensor>,
        is_causal: bool,
    },
    /// Two batched matmuls over each group of query heads (CPU, and GPU
    /// decoding); `bias` `[b * kv_heads, group * t, total]` is 0 where a
    /// key is visible and -inf where it is not.
    Grouped { bias: Tensor },
    /// One new token per sequence, f32 on a CPU with AVX2: emh's kernels
    /// over the cache, on all cores; `bias` `[b, total]` is 0 where a key
    /// is visible and -inf where it is not.
    OneToken { bias: Option<Tensor> },
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

    /// cos and signed sin for `positions` `[batch, seq]`, shaped `[batch,
    /// seq, 1, head_dim]` to rotate queries and keys laid out `[batch, seq,
    /// heads, head_dim]`.
    ///
    /// HF rotates with `x * cos + rotate_half(x) * sin`, where rotate_half
    /// swaps the halves of x and negates the first; a roll by half the head
    /// swaps them too, so the sign moves into the first half of sin.
    fn rope(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.clamp_min(0).to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let cos = Tensor::cat(&[&freqs, &freqs], -1).cos();
        let sin = freqs.sin();
        let signed_sin = Tensor::cat(&[-&sin, sin], -1);
        (
            cos.to_kind(self.kind).unsqueeze(2),
            signed_sin.to_kind(self.kind).unsqueeze(2),
        )
    }

    /// Which keys each of `t` new tokens at slots `cache.len..` may see:
    /// `[batch, 1, t, total]`, or `None` when every key is visible (one new
    /// token and no padding).
    fn visible_keys(&self, cache: &KvCache, t: i64) -> Option<Tensor> {
        let total = cache.len + t;
        if t == 1 {
            return cache
                .has_padding
                .then(|| cache.valid.narrow(1, 0, total).view([-1, 1, 1, total]));
        }
        let opts = (Kind::Int64, self.device);
        let key = Tensor::arange(total, opts).view([1, total]);
        let query = Tensor::arange_start(cache.len, total, opts).view([t, 1]);
        let causal = key.le_tensor(&query).view([1, 1, t, total]);
        if !cache.has_padding {
            return Some(causal);
        }
        let valid = cache.valid.narrow(1, 0, total).view([-1, 1, 1, total]);
        // A padding query sees only itself: rows of all -inf would give NaN.
        let own = key.eq_tensor(&query).view([1, 1, t, total]);
        Some(causal.logical_and(&valid).logical_or(&own))
    }

    /// How this forward pass attends, decided once for all its layers.
    fn attention_plan(&self, cache: &KvCache, t: i64, batch: i64) -> Attention {
        let visible = self.visible_keys(cache, t);
        if self.device != Device::Cpu && t > 1 {
            // Prefill on GPU: the fused kernels win. Decoding one token on
            // GPU goes the grouped way below: with grouped heads and a
            // padding mask, SDPA ran 3.5x slower end to end on an H100.
            let is_causal = !cache.has_padding && cache.len == 0;
            return Attention::Fused {
                mask: visible.filter(|_| !is_causal),
                is_causal,
            };
        }
        let total = cache.len + t;
        if t == 1 && self.kernels {
            let bias = visible.map(|v| {
                Tensor::zeros([batch, total], (Kind::Float, Device::Cpu))
                    .masked_fill(&v.view([batch, total]).logical_not(), f64::NEG_INFINITY)
            });
            return Attention::OneToken { bias };
        }
        let c = &self.config;
        let (nkv, group) = (c.num_kv_heads as i64, (c.num_heads / c.num_kv_heads) as i64);
        // Rows of a group's stacked queries are ordered (head in group, token).
        let bias = match visible {
            Some(v) => Tensor::zeros([1], (self.kind, self.device)).masked_fill(
                &v.expand([batch, group, t, total], false).logical_not(),
                f64::NEG_INFINITY,
            ),
            None => Tensor::zeros([batch, 1, 1, total], (self.kind, self.device)),
        };
        Attention::Grouped {
            bias: bias
                .unsqueeze(1)
                .expand([batch, nkv, group, t, total], false)
                .reshape([batch * nkv, group * t, total]),
        }
    }

    /// Attention of `q` `[b, heads, t, d]` over `keys` / `values`
    /// `[b, kv_heads, total, d]`, as `plan` says.
    fn attention(&self, q: &Tensor, keys: &Tensor, values: &Tensor, plan: &Attention) -> Tensor {
        let (nh, nkv) = (
            self.config.num_heads as i64,
            self.config.num_kv_heads as i64,
        );
        let bias = match plan {
            Attention::Fused { mask, is_causal } => {
                return Tensor::scaled_dot_product_attention(
                    q,
                    keys,
                    values,
                    mask.as_ref(),
                    0.0,
                    *is_causal,
                    None,
                    nkv != nh,
                )
            }
            Attention::Grouped { bias } => bias,
            Attention::OneToken { .. } => unreachable!("one-token attention reads the whole cache"),
        };
        // Two batched matmuls that read each key/value head once for its
        // whole group of query heads: on CPU, SDPA's kernels are slow for
        // short queries, and on GPU its one-token kernels lose to these
        // once a padding mask is involved.
        let [b, _, t, d] = q.size()[..] else {
            unreachable!("queries are 4-d")
        };
        let total = keys.size()[2];
        let group = nh / nkv;
        let qg = q.reshape([b * nkv, group * t, d]);
        let kt = keys.reshape([b * nkv, total, d]).transpose(-1, -2);
        let scores = bias.baddbmm(&qg, &kt, 1.0, (d as f64).powf(-0.5));
        scores
            .softmax(-1, Kind::Float)
            .to_kind(self.kind)
            .bmm(&values.reshape([b * nkv, total, d]))
            .view([b, nh, t, d])
    }

    /// The layout of layer caches holding `total` tokens, for `b` sequences.
    fn cache_shape(&self, cache: &KvCache, b: i64, total: i64) -> CacheShape {
        let c = &self.config;
        CacheShape {
            batch: b as usize,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            capacity: cache.capacity as usize,
            len: total as usize,
        }
    }

    /// Rotates the queries and keys of `qkv` `[b, t, (heads + 2 kv_heads) *
    /// d]` by `cos` / `sin` (see `rope`), writes keys and values to layer
    /// `l`'s cache slots `total - t .. total`, and returns the queries `[b,
    /// heads, t, d]`, with emh's kernels.
    fn rotate_into_cache(
        &self,
        qkv: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &mut KvCache,
        l: usize,
        total: i64,
    ) -> Tensor {
        let [b, t, _] = qkv.size()[..] else {
            unreachable!("activations are [batch, seq, features]")
        };
        let shape = self.cache_shape(cache, b, total);
        let qkv = contiguous(qkv);
        let mut q = Tensor::empty(
            [b, shape.heads as i64, t, shape.head_dim as i64],
            (Kind::Float, Device::Cpu),
        );
        emh_kernels::rotate_into_cache(
            Pool::global(),
            &shape,
            t as usize,
            f32_slice(&qkv),
            f32_slice(cos),
            f32_slice(sin),
            f32_slice_mut(&mut q),
            f32_slice_mut(&mut cache.k[l]),
            f32_slice_mut(&mut cache.v[l]),
        );
        q
    }

    /// Attention of one new query per head `q` `[b, heads, 1, d]` over the
    /// first `total` slots of layer `l`'s cache, with emh's kernels (see
    /// `Attention::OneToken`): `[b, 1, heads * d]`.
    fn attend_one(
        &self,
        q: &Tensor,
        cache: &KvCache,
        l: usize,
        total: i64,
        bias: Option<&Tensor>,
    ) -> Tensor {
        let [b, nh, _, d] = q.size()[..] else {
            unreachable!("queries are 4-d")
        };
        let q = contiguous(q);
        // Heads in order are the layout of `[b, 1, heads * d]` already.
        let mut out = Tensor::empty([b, 1, nh * d], (Kind::Float, Device::Cpu));
        emh_kernels::attend_one(
            Pool::global(),
            &self.cache_shape(cache, b, total),
            f32_slice(&q),
            f32_slice(&cache.k[l]),
            f32_slice(&cache.v[l]),
            (d as f32).powf(-0.5),
            bias.map(f32_slice),
            f32_slice_mut(&mut out),
        );
        out
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
            // Out of place: autograd keeps the x the norms saw.
            x = x.g_add(&on_rows(&attn, rows, |attn| {
                let mut o = layer.o.forward(attn);
                self.add_lora(l, Module::O, attn, &mut o, phase);
                o
            }));
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
            x = x.g_add(&mlp);
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
