//! Rotary position embedding of new queries and keys, with the new keys and
//! values written to the KV cache in the same pass.

use crate::attention::CacheShape;
use crate::pool::Pool;

/// For `t` new tokens of each sequence, rows `[q heads | k heads | v heads]`
/// of `qkv` `[batch, t, ...]`, with `cos` and signed `sin` `[batch, t,
/// head_dim]`: writes the rotated queries to `q` `[batch, heads, t,
/// head_dim]`, and the rotated keys and the values to cache slots
/// `s.len - t .. s.len`.
///
/// A head `x` becomes `x * cos + roll(x, head_dim / 2) * sin`, the products
/// rounded before the sum as HF's `x * cos + rotate_half(x) * sin` is; `sin`
/// carries the sign that `rotate_half` puts on the first half.
#[allow(clippy::too_many_arguments)]
pub fn rotate_into_cache(
    pool: &Pool,
    s: &CacheShape,
    t: usize,
    qkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    q: &mut [f32],
    keys: &mut [f32],
    values: &mut [f32],
) {
    let (d, nh, nkv) = (s.head_dim, s.heads, s.kv_heads);
    let width = (nh + 2 * nkv) * d;
    let rows = s.batch * t;
    assert!(
        t <= s.len && s.len <= s.capacity && d.is_multiple_of(2),
        "{s:?}, {t} new"
    );
    assert_eq!(qkv.len(), rows * width, "qkv for {s:?}");
    assert!(
        cos.len() == rows * d && sin.len() == rows * d,
        "cos, sin for {s:?}"
    );
    assert_eq!(q.len(), rows * nh * d, "queries for {s:?}");
    let cache = s.batch * nkv * s.capacity * d;
    assert!(
        keys.len() == cache && values.len() == cache,
        "cache for {s:?}"
    );
    let (q_addr, k_addr, v_addr) = (
        q.as_mut_ptr() as usize,
        keys.as_mut_ptr() as usize,
        values.as_mut_ptr() as usize,
    );
    // A row is a few hundred nanoseconds of work.
    const MIN_ROWS: usize = 64;
    pool.split(rows, MIN_ROWS, &|range| {
        for row in range {
            let (b, i) = (row / t, row % t);
            let slot = s.len - t + i;
            let x = &qkv[row * width..][..width];
            let (c, sn) = (&cos[row * d..][..d], &sin[row * d..][..d]);
            // SAFETY: each (sequence, token) row owns its query rows and
            // its cache slot in every head; all lie within the checked
            // lengths.
            unsafe {
                for h in 0..nh {
                    let out = (q_addr as *mut f32).add(((b * nh + h) * t + i) * d);
                    rotate(
                        &x[h * d..][..d],
                        c,
                        sn,
                        std::slice::from_raw_parts_mut(out, d),
                    );
                }
                for h in 0..nkv {
                    let at = ((b * nkv + h) * s.capacity + slot) * d;
                    let k = std::slice::from_raw_parts_mut((k_addr as *mut f32).add(at), d);
                    rotate(&x[(nh + h) * d..][..d], c, sn, k);
                    let v = std::slice::from_raw_parts_mut((v_addr as *mut f32).add(at), d);
                    v.copy_from_slice(&x[(nh + nkv + h) * d..][..d]);
                }
            }
        }
    });
}

/// `out = x * cos + roll(x, half) * sin`, each product rounded.
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    let (lo, hi) = x.split_at(half);
    let (out_lo, out_hi) = out.split_at_mut(half);
    for (((o, a), b), (c, s)) in out_lo.iter_mut().zip(lo).zip(hi).zip(cos.iter().zip(sin)) {
        *o = a * c + b * s;
    }
    for (((o, a), b), (c, s)) in out_hi
        .iter_mut()
        .zip(hi)
        .zip(lo)
        .zip(cos[half..].iter().zip(&sin[half..]))
    {
        *o = a * c + b * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::tests::noise;

    #[test]
    fn rotates_queries_and_keys_and_stores_values_in_their_slots() {
        let s = CacheShape {
            batch: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 6,
            capacity: 5,
            len: 4,
        };
        let (t, d) = (3, s.head_dim);
        let width = (s.heads + 2 * s.kv_heads) * d;
        let qkv = noise(s.batch * t * width, 1);
        let cos = noise(s.batch * t * d, 2);
        let sin = noise(s.batch * t * d, 3);
        let cache = s.batch * s.kv_heads * s.capacity * d;
        for threads in [1, 2] {
            let mut q = vec![f32::NAN; s.batch * s.heads * t * d];
            let (mut keys, mut values) = (vec![7.0; cache], vec![7.0; cache]);
            rotate_into_cache(
                &Pool::new(threads),
                &s,
                t,
                &qkv,
                &cos,
                &sin,
                &mut q,
                &mut keys,
                &mut values,
            );
            let turned = |row: usize, head: usize| -> Vec<f32> {
                let x = &qkv[row * width + head * d..][..d];
                (0..d)
                    .map(|j| x[j] * cos[row * d + j] + x[(j + d / 2) % d] * sin[row * d + j])
                    .collect()
            };
            for b in 0..s.batch {
                for i in 0..t {
                    let row = b * t + i;
                    for h in 0..s.heads {
                        assert_eq!(q[((b * s.heads + h) * t + i) * d..][..d], turned(row, h));
                    }
                    for h in 0..s.kv_heads {
                        let at = ((b * s.kv_heads + h) * s.capacity + 1 + i) * d;
                        assert_eq!(keys[at..][..d], turned(row, s.heads + h));
                        let v = &qkv[row * width + (s.heads + s.kv_heads + h) * d..][..d];
                        assert_eq!(&values[at..][..d], v);
                    }
                }
                for h in 0..s.kv_heads {
                    let first = ((b * s.kv_heads + h) * s.capacity) * d;
                    assert!(
                        keys[first..][..d].iter().all(|v| *v == 7.0),
                        "slot 0 untouched"
                    );
                }
            }
        }
    }
}
