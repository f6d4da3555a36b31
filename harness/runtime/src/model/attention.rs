//! How a forward pass attends: RoPE, which keys each query sees, and the
//! attention itself on fused kernels, grouped matmuls or emh's one-token kernels.

use emh_kernels::{CacheShape, Pool};
use tch::{Device, Kind, Tensor};

use crate::cache::KvCache;
use crate::host::{contiguous, f32_slice, f32_slice_mut};
use crate::Model;

/// How a forward pass attends, the same for every layer.
pub(super) enum Attention {
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
    /// cos and signed sin for `positions` `[batch, seq]`, shaped `[batch,
    /// seq, 1, head_dim]` to rotate queries and keys laid out `[batch, seq,
    /// heads, head_dim]`.
    ///
    /// HF rotates with `x * cos + rotate_half(x) * sin`, where rotate_half
    /// swaps the halves of x and negates the first; a roll by half the head
    /// swaps them too, so the sign moves into the first half of sin.
    pub(super) fn rope(&self, positions: &Tensor) -> (Tensor, Tensor) {
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
    pub(super) fn visible_keys(&self, cache: &KvCache, t: i64) -> Option<Tensor> {
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
    pub(super) fn attention_plan(&self, cache: &KvCache, t: i64, batch: i64) -> Attention {
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
    pub(super) fn attention(
        &self,
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        plan: &Attention,
    ) -> Tensor {
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
    pub(super) fn cache_shape(&self, cache: &KvCache, b: i64, total: i64) -> CacheShape {
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
    pub(super) fn rotate_into_cache(
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
    pub(super) fn attend_one(
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
}
