//! Attention of one new token per sequence over its KV cache, split across
//! the pool's threads by (sequence, key/value head).
//!
//! At batch 16 a decoding step reads more cache than weights once the
//! sequences are a hundred tokens long; one thread alone cannot read it as
//! fast as two.

use crate::pool::Pool;
use crate::product::chunk;

/// The layout of a KV cache `[batch, kv_heads, capacity, head_dim]` (keys
/// and values alike) and of one query per head `[batch, heads, head_dim]`.
#[derive(Clone, Copy, Debug)]
pub struct CacheShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Slots per sequence and head in the cache.
    pub capacity: usize,
    /// Filled slots to attend over, the new token's included.
    pub len: usize,
}

impl CacheShape {
    fn check(&self, q: &[f32], cache: &[f32], rows: &[f32]) {
        let s = self;
        assert!(
            s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads),
            "{s:?}"
        );
        assert!(s.len <= s.capacity, "{s:?}");
        assert_eq!(q.len(), s.batch * s.heads * s.head_dim, "queries for {s:?}");
        assert_eq!(
            cache.len(),
            s.batch * s.kv_heads * s.capacity * s.head_dim,
            "cache for {s:?}"
        );
        assert_eq!(rows.len(), s.batch * s.heads * s.len, "scores for {s:?}");
    }

    /// Runs `f(sequence, kv_head)` for every pair, the pairs split evenly over `pool`.
    fn each_pair(&self, pool: &Pool, f: impl Fn(usize, usize) + Sync) {
        let pairs = self.batch * self.kv_heads;
        let per = pairs.div_ceil(pool.threads());
        pool.run(&|index| {
            for p in index * per..((index + 1) * per).min(pairs) {
                f(p / self.kv_heads, p % self.kv_heads);
            }
        });
    }
}

/// `scores[b, h, t] = scale * q[b, h] · keys[b, h / group, t] + bias[b, t]`
/// for `t < len`, with `bias` 0 for visible keys and -inf for hidden ones.
pub fn attention_scores(
    pool: &Pool,
    s: &CacheShape,
    q: &[f32],
    keys: &[f32],
    scale: f32,
    bias: Option<&[f32]>,
    scores: &mut [f32],
) {
    s.check(q, keys, scores);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), s.batch * s.len, "bias for {s:?}");
    }
    let (d, group) = (s.head_dim, s.heads / s.kv_heads);
    let out = scores.as_mut_ptr() as usize;
    s.each_pair(pool, |b, kh| {
        let head = b * s.heads + kh * group;
        let row0 = head * s.len;
        // SAFETY: the pair's `group` query rows, its `len` cached key rows,
        // and its `group` score rows lie within the checked slices; no
        // other pair writes those score rows.
        unsafe {
            let rows = (out as *mut f32).add(row0);
            let k = keys.as_ptr().add((b * s.kv_heads + kh) * s.capacity * d);
            chunk(q.as_ptr().add(head * d), group, k, s.len, d, rows, s.len);
            let rows = std::slice::from_raw_parts_mut(rows, group * s.len);
            for row in rows.chunks_exact_mut(s.len) {
                match bias {
                    Some(bias) => {
                        let bias = &bias[b * s.len..(b + 1) * s.len];
                        for (v, m) in row.iter_mut().zip(bias) {
                            *v = *v * scale + m;
                        }
                    }
                    None => row.iter_mut().for_each(|v| *v *= scale),
                }
            }
        }
    });
}

/// `out[b, h] = Σ_t probs[b, h, t] · values[b, h / group, t]` for `t < len`.
pub fn attention_mix(pool: &Pool, s: &CacheShape, probs: &[f32], values: &[f32], out: &mut [f32]) {
    s.check(out, values, probs);
    let (d, group) = (s.head_dim, s.heads / s.kv_heads);
    let out_addr = out.as_mut_ptr() as usize;
    s.each_pair(pool, |b, kh| {
        let head = b * s.heads + kh * group;
        let v = &values[(b * s.kv_heads + kh) * s.capacity * d..][..s.len * d];
        for h in head..head + group {
            // SAFETY: each pair writes only its own heads' output rows.
            let o = unsafe { std::slice::from_raw_parts_mut((out_addr as *mut f32).add(h * d), d) };
            crate::avx2::mix(&probs[h * s.len..(h + 1) * s.len], v, o);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::tests::noise;

    #[test]
    fn scores_and_mix_match_a_plain_reference() {
        let s = CacheShape {
            batch: 3,
            heads: 6,
            kv_heads: 2,
            head_dim: 20,
            capacity: 9,
            len: 7,
        };
        let (d, g) = (s.head_dim, s.heads / s.kv_heads);
        let q = noise(s.batch * s.heads * d, 1);
        let keys = noise(s.batch * s.kv_heads * s.capacity * d, 2);
        let values = noise(keys.len(), 3);
        let mut bias = vec![0.0; s.batch * s.len];
        bias[s.len] = f32::NEG_INFINITY;
        let at = |cache: &[f32], b: usize, h: usize, t: usize| {
            cache[((b * s.kv_heads + h / g) * s.capacity + t) * d..][..d].to_vec()
        };
        for threads in [1, 2] {
            let pool = Pool::new(threads);
            let mut scores = vec![0.0; s.batch * s.heads * s.len];
            attention_scores(&pool, &s, &q, &keys, 0.5, Some(&bias), &mut scores);
            let mut probs = scores.clone();
            for row in probs.chunks_exact_mut(s.len) {
                let top = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                row.iter_mut().for_each(|v| *v = (*v - top).exp());
                let sum: f32 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= sum);
            }
            let mut out = vec![0.0; q.len()];
            attention_mix(&pool, &s, &probs, &values, &mut out);
            for b in 0..s.batch {
                for h in 0..s.heads {
                    let qh = &q[(b * s.heads + h) * d..][..d];
                    let mut want_mix = vec![0.0f32; d];
                    for t in 0..s.len {
                        let dot: f32 = qh.iter().zip(at(&keys, b, h, t)).map(|(a, k)| a * k).sum();
                        let want = dot * 0.5 + bias[b * s.len + t];
                        let got = scores[(b * s.heads + h) * s.len + t];
                        assert!(
                            got == want || (got - want).abs() < 1e-5,
                            "score {b} {h} {t}"
                        );
                        let p = probs[(b * s.heads + h) * s.len + t];
                        for (m, v) in want_mix.iter_mut().zip(at(&values, b, h, t)) {
                            *m += p * v;
                        }
                    }
                    let got = &out[(b * s.heads + h) * d..][..d];
                    for (g, w) in got.iter().zip(&want_mix) {
                        assert!((g - w).abs() < 1e-5, "mix {b} {h}: {g} vs {w}");
                    }
                }
            }
        }
    }
}
