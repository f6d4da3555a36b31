//! The AVX-512 forms of the products' inner loops, used where the processor
//! has them: twice the lanes of the AVX2 loops, and for a single row of
//! activations, packed weights decoded straight into registers.
//!
//! Every dot product here sums in 16 lanes along the row, 16 values at a
//! time, then across lanes with `hsum`, whatever the tile shape or weight
//! format: so a row's result has the same bits alone or in a batch, packed or
//! dense, as the AVX2 loops guarantee with their 8 lanes.

use std::arch::x86_64::*;
use std::sync::LazyLock;

use crate::pack::{Q4_1Block, Q8_0Block, BLOCK};

/// Whether the AVX-512 loops can run here: asked at every tile, so the four
/// feature checks are made once.
pub(crate) fn available() -> bool {
    static AVAILABLE: LazyLock<bool> = LazyLock::new(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    });
    *AVAILABLE
}

/// `tile` for fixed sizes with 16-lane accumulators.
///
/// # Safety
/// As `avx2::tile`, and the processor has AVX-512F and VL.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile<const MB: usize, const NB: usize>(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); NB]; MB];
    let whole = k - k % 16;
    let mut t = 0;
    // SAFETY (this block): reads stay within the caller's rows of length k.
    unsafe {
        while t < whole {
            let mut wv = [_mm512_setzero_ps(); NB];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(w.add(j * ldw + t));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.add(i * ldx + t));
                for (a, v) in row.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *v, *a);
                }
            }
            t += 16;
        }
        // The tail apart: with its loop inside this one, the accumulators
        // were kept in memory, and that memory zeroed at each call.
        for (i, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                *out.add(i * ldo + j) = hsum(*a);
            }
        }
        if whole < k {
            for i in 0..MB {
                for j in 0..NB {
                    let mut s = *out.add(i * ldo + j);
                    for r in whole..k {
                        s += *x.add(i * ldx + r) * *w.add(j * ldw + r);
                    }
                    *out.add(i * ldo + j) = s;
                }
            }
        }
    }
}

/// The sum of 16 lanes, in one fixed order.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn hsum(v: __m512) -> f32 {
    let h = _mm256_add_ps(
        _mm512_castps512_ps256(v),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
    );
    let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The 32 values of one unit of a packed matrix (a block, or 32 bf16
/// values), as two registers of 16.
pub(crate) trait Decode {
    /// # Safety
    /// `p` points at a unit, and the processor has AVX-512F and VL.
    unsafe fn decode(p: *const Self) -> [__m512; 2];
}

impl Decode for Q4_1Block {
    #[inline(always)]
    unsafe fn decode(p: *const Self) -> [__m512; 2] {
        // SAFETY: the caller's contract.
        unsafe {
            let b = &*p;
            // The block's 16 possible values `q * d + m` (one rounding each,
            // as in the AVX2 unpacking) make a table that each nibble picks
            // from: one multiply-add per block rather than one per 16 values.
            // A permute reads only the low 4 bits of each index, so the
            // bytes need no masking: values 0..16 are the low nibbles,
            // 16..32 the high ones.
            let steps = _mm512_setr_ps(
                0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0,
                15.0,
            );
            let table = _mm512_fmadd_ps(steps, _mm512_set1_ps(b.d), _mm512_set1_ps(b.m));
            let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.qs.as_ptr().cast()));
            [
                _mm512_permutexvar_ps(q, table),
                _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(q), table),
            ]
        }
    }
}

impl Decode for Q8_0Block {
    #[inline(always)]
    unsafe fn decode(p: *const Self) -> [__m512; 2] {
        // SAFETY: the caller's contract.
        unsafe {
            let b = &*p;
            let d = _mm512_set1_ps(b.d);
            let value = |k: usize| {
                let q = _mm_loadu_si128(b.qs.as_ptr().add(16 * k).cast());
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d)
            };
            [value(0), value(1)]
        }
    }
}

impl Decode for [u16; BLOCK] {
    #[inline(always)]
    unsafe fn decode(p: *const Self) -> [__m512; 2] {
        // SAFETY: the caller's contract.
        unsafe {
            let value = |k: usize| {
                let h = _mm256_loadu_si256(p.cast::<u16>().add(16 * k).cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            };
            [value(0), value(1)]
        }
    }
}

/// Writes the values of `units` to `out`.
///
/// # Safety
/// `out` holds `units.len() * BLOCK` values, and the processor has AVX-512F
/// and VL.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(crate) unsafe fn unpack<U: Decode>(units: &[U], out: &mut [f32]) {
    let mut y = out.as_mut_ptr();
    for u in units {
        // SAFETY: the caller's contract.
        unsafe {
            let [lo, hi] = U::decode(u);
            _mm512_storeu_ps(y, lo);
            _mm512_storeu_ps(y.add(16), hi);
            y = y.add(BLOCK);
        }
    }
}

/// `out[j] = x · w_j` for one row `x` and `NB` packed weight rows of
/// `per_row` units each starting at `w`, decoding each unit into registers
/// and multiplying at once: the same sums, in the same order, as
/// `tile::<1, NB>` over the unpacked rows. The bytes of the next `NB` rows
/// to multiply, from `next` on, are fetched meanwhile.
///
/// # Safety
/// `x` holds `per_row * BLOCK` values, `w` `NB` rows of units, `out` `NB`
/// values, and the processor has AVX-512F and VL. `next` may point anywhere: a
/// prefetch never faults.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn decode_row<U: Decode, const NB: usize>(
    x: *const f32,
    w: *const U,
    per_row: usize,
    out: *mut f32,
    next: *const u8,
) {
    let mut acc = [_mm512_setzero_ps(); NB];
    // The rows are short (some hundreds of bytes), so each load of a unit
    // waited on memory: the next rows' bytes are fetched meanwhile, an equal
    // share at each step.
    let share = (NB * size_of::<U>()).next_multiple_of(64);
    // SAFETY (this block): the caller's contract.
    unsafe {
        for u in 0..per_row {
            for line in (u * share..(u + 1) * share).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(line).cast());
            }
            let xlo = _mm512_loadu_ps(x.add(u * BLOCK));
            let xhi = _mm512_loadu_ps(x.add(u * BLOCK + 16));
            for (j, a) in acc.iter_mut().enumerate() {
                let [lo, hi] = U::decode(w.add(j * per_row + u));
                *a = _mm512_fmadd_ps(xlo, lo, *a);
                *a = _mm512_fmadd_ps(xhi, hi, *a);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            *out.add(j) = hsum(*a);
        }
    }
}

/// `out[j] = x · w_j` for one row `x` and the `out.len()` packed weight rows
/// starting at `w`, eight at a time, fetching the bytes of `ahead` (the
/// rows multiplied next, if known) while multiplying the last eight.
///
/// # Safety
/// `x` holds `per_row * BLOCK` values, `w` `out.len()` rows of `per_row`
/// units, and the processor has AVX-512F and VL.
pub(crate) unsafe fn decode_rows<U: Decode>(
    x: &[f32],
    w: &[U],
    per_row: usize,
    out: &mut [f32],
    ahead: &[u8],
) {
    debug_assert!(x.len() == per_row * BLOCK && w.len() == out.len() * per_row);
    let groups = out.len().div_ceil(8);
    for (j, o) in out.chunks_mut(8).enumerate() {
        let (w, n, o) = (w[j * 8 * per_row..].as_ptr(), o.len(), o.as_mut_ptr());
        // The next group's rows follow this one's; after the last group,
        // the next rows are `ahead`, or else whatever follows in memory.
        // `wrapping_add`: they may lie past the matrix.
        let next = if ahead.is_empty() || j + 1 < groups {
            w.wrapping_add(n * per_row).cast::<u8>()
        } else {
            ahead.as_ptr()
        };
        // SAFETY: the caller's contract, for rows 8j.. of this chunk.
        unsafe {
            match n {
                1 => decode_row::<U, 1>(x.as_ptr(), w, per_row, o, next),
                2 => decode_row::<U, 2>(x.as_ptr(), w, per_row, o, next),
                3 => decode_row::<U, 3>(x.as_ptr(), w, per_row, o, next),
                4 => decode_row::<U, 4>(x.as_ptr(), w, per_row, o, next),
                5 => decode_row::<U, 5>(x.as_ptr(), w, per_row, o, next),
                6 => decode_row::<U, 6>(x.as_ptr(), w, per_row, o, next),
                7 => decode_row::<U, 7>(x.as_ptr(), w, per_row, o, next),
                _ => decode_row::<U, 8>(x.as_ptr(), w, per_row, o, next),
            }
        }
    }
}

/// `avx2::mix` for `d` a multiple of 16: up to four heads and 64 columns at
/// a time, so that each row of `v` is read once per 64 columns for all the
/// heads. Each value is summed over `t` in order with one rounding per term,
/// as in the AVX2 loop, so both give the same bits.
///
/// # Safety
/// `p` holds `out.len() / d` rows of `len`, `v` `len` rows of `d`, and the
/// processor has AVX-512F and VL.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(crate) unsafe fn mix(p: &[f32], v: &[f32], d: usize, len: usize, out: &mut [f32]) {
    debug_assert!(d.is_multiple_of(16) && p.len() == out.len() / d * len);
    let heads = out.len() / d;
    for g in (0..heads).step_by(4) {
        let (p, o) = (p[g * len..].as_ptr(), out[g * d..].as_mut_ptr());
        let mut c = 0;
        while c < d {
            let (v, o) = (v[c..].as_ptr(), o.wrapping_add(c));
            // SAFETY: the caller's contract, for heads g.. and columns c..
            unsafe {
                let wide = d - c >= 64;
                match ((heads - g).min(4), wide) {
                    (1, true) => mix_block::<1, 4>(p, v, d, len, o),
                    (2, true) => mix_block::<2, 4>(p, v, d, len, o),
                    (3, true) => mix_block::<3, 4>(p, v, d, len, o),
                    (_, true) => mix_block::<4, 4>(p, v, d, len, o),
                    (1, false) => mix_block::<1, 1>(p, v, d, len, o),
                    (2, false) => mix_block::<2, 1>(p, v, d, len, o),
                    (3, false) => mix_block::<3, 1>(p, v, d, len, o),
                    (_, false) => mix_block::<4, 1>(p, v, d, len, o),
                }
                c += if wide { 64 } else { 16 };
            }
        }
    }
}

/// `G` heads and `16 * W` columns of `mix`: `G * W` accumulators.
///
/// # Safety
/// `p` holds `G` rows of `len`, `v` `len` rows of `ldv` with `16 * W`
/// columns readable in each, `out` `G` rows of `ldv` likewise.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn mix_block<const G: usize, const W: usize>(
    p: *const f32,
    v: *const f32,
    ldv: usize,
    len: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); W]; G];
    // SAFETY (this block): reads and writes stay within the caller's rows.
    unsafe {
        for t in 0..len {
            let row = v.add(t * ldv);
            let mut vs = [_mm512_setzero_ps(); W];
            for (k, x) in vs.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(row.add(16 * k));
            }
            for (g, a) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*p.add(g * len + t));
                for (a, x) in a.iter_mut().zip(&vs) {
                    *a = _mm512_fmadd_ps(w, *x, *a);
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            for (k, a) in a.iter().enumerate() {
                _mm512_storeu_ps(out.add(g * ldv + 16 * k), *a);
            }
        }
    }
}
