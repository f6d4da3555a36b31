//! Attention of one new token per sequence over its KV cache, split across
//! the pool's threads by (sequence, key/value head).
//!
//! At batch 16 a decoding step reads more cache than weights once the
//! sequences are a hundred tokens long; one thread alone cannot read it as
//! fast as two.

use std::cell::RefCell;

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
    fn check(&self, q: &[f32], cache: &[f32]) {
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
    }
}

thread_local! {
    /// Each thread's scores of one (sequence, key/value head) pair.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[b, h] = Σ_t p[b, h, t] · values[b, h / group, t]` for `t < len`,
/// where `p[b, h]` is the softmax over `t` of `scale * q[b, h] · keys[b, h /
/// group, t] + bias[b, t]`, with `bias` 0 for visible keys and -inf for
/// hidden ones.
#[allow(clippy::too_many_arguments)]
pub fn attend_one(
    pool: &Pool,
    s: &CacheShape,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    s.check(q, keys);
    s.check(out, values);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), s.batch * s.len, "bias for {s:?}");
    }
    let (d, group) = (s.head_dim, s.heads / s.kv_heads);
    let pairs = s.batch * s.kv_heads;
    let per = pairs.div_ceil(pool.threads());
    let out_addr = out.as_mut_ptr() as usize;
    // Left padding is a run of hidden slots at the start of a sequence:
    // skip all of it, so that a sequence's scores fill the same vector lanes
    // and sum to the same bits wherever its slots begin (alone, or in a row
    // refilled half way through a batch). Each sequence's first visible slot.
    let firsts: Vec<usize> = (0..s.batch)
        .map(|b| {
            bias.map_or(0, |bias| {
                bias[b * s.len..][..s.len]
                    .iter()
                    .position(|m| *m > f32::NEG_INFINITY)
                    .unwrap_or(0)
            })
        })
        .collect();
    // Where a pair's visible slots lie: (first slot, count, cache offset).
    let span = |pair: usize| {
        let (b, kh) = (pair / s.kv_heads, pair % s.kv_heads);
        let first = firsts[b];
        let cache = ((b * s.kv_heads + kh) * s.capacity + first) * d;
        (first, s.len - first, cache)
    };
    pool.run(&|index| {
        SCORES.with_borrow_mut(|scores| {
            let mine = index * per..((index + 1) * per).min(pairs);
            for pair in mine.clone() {
                let (b, kh) = (pair / s.kv_heads, pair % s.kv_heads);
                let bias = bias.map(|bias| &bias[b * s.len..][..s.len]);
                let (first, n, cache) = span(pair);
                scores.resize(group * n, 0.0);
                let head = b * s.heads + kh * group;
                // The keys of this thread's next pair come from memory while
                // this pair's scores are computed.
                let ahead: &[f32] = match pair + 1 {
                    next if mine.contains(&next) => {
                        let (_, n, cache) = span(next);
                        &keys[cache..][..n * d]
                    }
                    _ => &[],
                };
                // SAFETY: the pair's `group` query rows and `n` cached key
                // rows lie within the checked slices, and `scores` holds
                // `group` rows of `n`.
                unsafe {
                    chunk(
                        q.as_ptr().add(head * d),
                        group,
                        keys.as_ptr().add(cache),
                        n,
                        d,
                        scores.as_mut_ptr(),
                        n,
                        crate::product::as_bytes(ahead),
                    )
                };
                let v = &values[cache..][..n * d];
                for row in scores.chunks_exact_mut(n) {
                    match bias {
                        Some(bias) => {
                            for (x, m) in row.iter_mut().zip(&bias[first..]) {
                                *x = *x * scale + m;
                            }
                        }
                        None => row.iter_mut().for_each(|x| *x *= scale),
                    }
                    let inv = 1.0 / crate::avx2::exp_shifted(row);
                    row.iter_mut().for_each(|x| *x *= inv);
                }
                // SAFETY: each pair writes only its own heads' output rows.
                let o = unsafe {
                    std::slice::from_raw_parts_mut((out_addr as *mut f32).add(head * d), group * d)
                };
                crate::avx2::mix(scores, v, d, o);
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::tests::noise;

    #[test]
    fn attention_matches_a_plain_reference() {
        // Groups of 3, 5 and 1 query heads; head sizes with and without the
        // 16-column vector path, and with its 64-column blocks (64, and 80 =
        // 64 + 16).
        for (heads, kv_heads, head_dim) in
            [(6, 2, 20), (10, 2, 32), (3, 3, 16), (6, 2, 64), (10, 2, 80)]
        {
            check(CacheShape {
                batch: 3,
                heads,
                kv_heads,
                head_dim,
                capacity: 21,
                len: 19,
            });
        }
    }

    #[test]
    fn left_padding_is_never_read() {
        // 11 hidden slots; the first 8 hold NaN, which would show if read.
        // The same cache with those 8 dropped gives the same bits.
        let s = CacheShape {
            batch: 1,
            heads: 6,
            kv_heads: 2,
            head_dim: 32,
            capacity: 30,
            len: 29,
        };
        let d = s.head_dim;
        let q = noise(s.heads * d, 1);
        let poison = |mut cache: Vec<f32>| {
            for head in cache.chunks_mut(s.capacity * d) {
                head[..8 * d].fill(f32::NAN);
            }
            cache
        };
        let keys = poison(noise(s.kv_heads * s.capacity * d, 2));
        let values = poison(noise(keys.len(), 3));
        let attend = |first: usize, hidden: usize| {
            let short = CacheShape {
                capacity: s.capacity - first,
                len: s.len - first,
                ..s
            };
            let drop = |cache: &[f32]| -> Vec<f32> {
                cache
                    .chunks(s.capacity * d)
                    .flat_map(|head| head[first * d..].to_vec())
                    .collect()
            };
            let mut bias = vec![0.0; short.len];
            bias[..hidden].fill(f32::NEG_INFINITY);
            let mut out = vec![0.0; q.len()];
            let (k, v) = (drop(&keys), drop(&values));
            attend_one(
                &Pool::new(2),
                &short,
                &q,
                &k,
                &v,
                0.5,
                Some(&bias),
                &mut out,
            );
            out
        };
        let padded = attend(0, 11);
        assert!(padded.iter().all(|x| x.is_finite()));
        assert_eq!(padded, attend(8, 3));
    }

    fn check(s: CacheShape) {
        let (d, g) = (s.head_dim, s.heads / s.kv_heads);
        let q = noise(s.batch * s.heads * d, 1);
        let keys = noise(s.batch * s.kv_heads * s.capacity * d, 2);
        let values = noise(keys.len(), 3);
        // Sequence 1 has a left-padded start longer than one vector.
        let mut bias = vec![0.0; s.batch * s.len];
        bias[s.len..s.len + 9.min(s.len - 1)].fill(f32::NEG_INFINITY);
        let at = |cache: &[f32], b: usize, h: usize, t: usize| {
            cache[((b * s.kv_heads + h / g) * s.capacity + t) * d..][..d].to_vec()
        };
        for threads in [1, 2] {
            let pool = Pool::new(threads);
            let mut out = vec![0.0; q.len()];
            attend_one(&pool, &s, &q, &keys, &values, 0.5, Some(&bias), &mut out);
            for b in 0..s.batch {
                for h in 0..s.heads {
                    let qh = &q[(b * s.heads + h) * d..][..d];
                    let scores: Vec<f64> = (0..s.len)
                        .map(|t| {
                            let dot: f64 = qh
                                .iter()
                                .zip(at(&keys, b, h, t))
                                .map(|(a, k)| *a as f64 * k as f64)
                                .sum();
                            dot * 0.5 + bias[b * s.len + t] as f64
                        })
                        .collect();
                    let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - top).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let mut want = vec![0.0f64; d];
                    for (t, p) in e.iter().enumerate() {
                        for (m, v) in want.iter_mut().zip(at(&values, b, h, t)) {
                            *m += p / sum * v as f64;
                        }
                    }
                    let got = &out[(b * s.heads + h) * d..][..d];
                    for (g, w) in got.iter().zip(&want) {
                        assert!((*g as f64 - w).abs() < 1e-5, "{b} {h}: {g} vs {w}");
                    }
                }
            }
        }
    }
}
