//! The AVX2/FMA inner loops, each with a plain fallback; the products'
//! loops hand over to `avx512` where the processor has it.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use crate::avx512::tile as tile_avx512;

use crate::pack::{q4_1_value, q8_0_value, Q4_1Block, Q8_0Block, BLOCK};

/// Whether the AVX2 and FMA paths can run here: asked at every tile, so
/// the checks are made once, as `avx512::available` does.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        });
        *AVAILABLE
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Writes the f32 values of `blocks` to `out`, exactly as the GGUF import does.
pub(crate) fn unpack_q4_1(blocks: &[Q4_1Block], out: &mut [f32]) {
    assert_eq!(out.len(), blocks.len() * BLOCK);
    #[cfg(target_arch = "x86_64")]
    if crate::avx512::available() {
        // SAFETY: the processor has AVX-512F and VL; the length is checked above.
        unsafe { crate::avx512::unpack(blocks, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the processor has AVX2 and FMA, and `out` holds 32 values per block.
        unsafe { unpack_q4_1_avx2(blocks, out) };
        return;
    }
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(BLOCK)) {
        for j in 0..16 {
            y[j] = q4_1_value(b.qs[j] & 0xF, b.d, b.m);
            y[j + 16] = q4_1_value(b.qs[j] >> 4, b.d, b.m);
        }
    }
}

/// Writes the f32 values of `blocks` to `out`, exactly as the GGUF import does.
pub(crate) fn unpack_q8_0(blocks: &[Q8_0Block], out: &mut [f32]) {
    assert_eq!(out.len(), blocks.len() * BLOCK);
    #[cfg(target_arch = "x86_64")]
    if crate::avx512::available() {
        // SAFETY: as above.
        unsafe { crate::avx512::unpack(blocks, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: as above.
        unsafe { unpack_q8_0_avx2(blocks, out) };
        return;
    }
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(BLOCK)) {
        for (v, &q) in y.iter_mut().zip(&b.qs) {
            *v = q8_0_value(q, b.d);
        }
    }
}

/// Writes the f32 values of bf16 `units` to `out`: each the high half of its f32.
pub(crate) fn unpack_bf16(units: &[[u16; BLOCK]], out: &mut [f32]) {
    assert_eq!(out.len(), units.len() * BLOCK);
    #[cfg(target_arch = "x86_64")]
    if crate::avx512::available() {
        // SAFETY: as above.
        unsafe { crate::avx512::unpack(units, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: as above.
        unsafe { unpack_bf16_avx2(units, out) };
        return;
    }
    for (v, h) in out.iter_mut().zip(units.as_flattened()) {
        *v = f32::from_bits((*h as u32) << 16);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unpack_bf16_avx2(units: &[[u16; BLOCK]], out: &mut [f32]) {
    let mut y = out.as_mut_ptr();
    for u in units {
        // SAFETY: 32 values at `u`, 32 floats at `y`.
        unsafe {
            for k in 0..4 {
                let h = _mm_loadu_si128(u.as_ptr().add(8 * k).cast());
                let f = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
                _mm256_storeu_ps(y.add(8 * k), _mm256_castsi256_ps(f));
            }
            y = y.add(BLOCK);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unpack_q4_1_avx2(blocks: &[Q4_1Block], out: &mut [f32]) {
    let low = _mm_set1_epi8(0x0F);
    let mut y = out.as_mut_ptr();
    for b in blocks {
        let d = _mm256_set1_ps(b.d);
        let m = _mm256_set1_ps(b.m);
        // SAFETY: 16 bytes of `qs`, 32 floats at `y` (checked by the caller's assert).
        unsafe {
            let q = _mm_loadu_si128(b.qs.as_ptr().cast());
            let lo = _mm_and_si128(q, low);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
            for (k, part) in [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)]
                .into_iter()
                .enumerate()
            {
                let f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part));
                // `q * d` is exact (4 bits times an f16's 11), so the fused
                // multiply-add rounds once where the import's separate
                // multiply and add round once too: the same values, bit for bit.
                _mm256_storeu_ps(y.add(8 * k), _mm256_fmadd_ps(f, d, m));
            }
            y = y.add(BLOCK);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unpack_q8_0_avx2(blocks: &[Q8_0Block], out: &mut [f32]) {
    let mut y = out.as_mut_ptr();
    for b in blocks {
        let d = _mm256_set1_ps(b.d);
        // SAFETY: 32 bytes of `qs`, 32 floats at `y`.
        unsafe {
            for k in 0..4 {
                let q = _mm_loadl_epi64(b.qs.as_ptr().add(8 * k).cast());
                let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                _mm256_storeu_ps(y.add(8 * k), _mm256_mul_ps(f, d));
            }
            y = y.add(BLOCK);
        }
    }
}

/// The largest tile `tile` takes for `m` rows of activations, as (rows of
/// `x`, rows of `w`). One row: eight weight rows, so eight accumulators hide
/// the multiply-add latency. More rows: 4 x 3 with AVX2's 16 registers,
/// twelve accumulators fed by seven loads; 8 x 3 with AVX-512's 32, 24
/// accumulators fed by eleven loads, which reads each weight row from the
/// cache half as often.
pub(crate) fn tile_shape(m: usize) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if m > 1 && crate::avx512::available() {
        return (8, 3);
    }
    if m == 1 {
        (1, 8)
    } else {
        (4, 3)
    }
}

/// One tile of the product: `out[i * ldo + j] = x_i · w_j` for `i < mb`
/// rows of `x` and `j < nb` rows of `w`, all `k` long, `mb` and `nb` at
/// most those of `tile_shape`.
///
/// # Safety
/// `x` must hold `mb` rows `ldx` apart, `w` `nb` rows `ldw` apart, each at
/// least `k` long, and `out` `mb` rows `ldo` apart of at least `nb` values.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
    mb: usize,
    nb: usize,
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! go {
            ($tile:ident; $($m:literal, $n:literal);*) => {
                match (mb, nb) {
                    // SAFETY: the caller's contract, and the processor has
                    // the tile's instructions.
                    $(($m, $n) => unsafe { $tile::<$m, $n>(x, ldx, w, ldw, k, out, ldo) },)*
                    _ => unreachable!("no {mb}x{nb} tile"),
                }
            };
        }
        if crate::avx512::available() {
            go!(tile_avx512; 1, 1; 1, 2; 1, 3; 1, 4; 1, 5; 1, 6; 1, 7; 1, 8;
                2, 1; 2, 2; 2, 3; 3, 1; 3, 2; 3, 3; 4, 1; 4, 2; 4, 3;
                5, 1; 5, 2; 5, 3; 6, 1; 6, 2; 6, 3; 7, 1; 7, 2; 7, 3; 8, 1; 8, 2; 8, 3);
            return;
        }
        if available() {
            go!(tile_avx2; 1, 1; 1, 2; 1, 3; 1, 4; 1, 5; 1, 6; 1, 7; 1, 8;
                2, 1; 2, 2; 2, 3; 3, 1; 3, 2; 3, 3; 4, 1; 4, 2; 4, 3);
            return;
        }
    }
    for i in 0..mb {
        for j in 0..nb {
            let mut s = 0.0f32;
            for t in 0..k {
                // SAFETY: the caller's contract.
                s += unsafe { *x.add(i * ldx + t) * *w.add(j * ldw + t) };
            }
            // SAFETY: the caller's contract.
            unsafe { *out.add(i * ldo + j) = s };
        }
    }
}

/// `tile` for fixed sizes: `MB * NB` accumulators of 8 lanes stay in
/// registers across the whole dot product, and are summed across lanes once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2<const MB: usize, const NB: usize>(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); NB]; MB];
    let whole = k - k % 8;
    let mut t = 0;
    // SAFETY (this block): reads stay within the caller's rows of length k.
    unsafe {
        while t < whole {
            let mut wv = [_mm256_setzero_ps(); NB];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(w.add(j * ldw + t));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(i * ldx + t));
                for (a, v) in row.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(xv, *v, *a);
                }
            }
            t += 8;
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                let mut s = hsum(*a);
                for r in whole..k {
                    s += *x.add(i * ldx + r) * *w.add(j * ldw + r);
                }
                *out.add(i * ldo + j) = s;
            }
        }
    }
}

/// The sum of 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `out[g] = Σ_t p[g][t] · v[t]` for rows `p[g]` of `len` weights (`g <
/// out.len() / d`) and rows `v[t]` of `d` values: the attention output of
/// the query heads that share one key/value head.
pub(crate) fn mix(p: &[f32], v: &[f32], d: usize, out: &mut [f32]) {
    assert!(d > 0 && out.len().is_multiple_of(d), "rows of {d}");
    let len = v.len() / d;
    assert!(v.len() == len * d && p.len() == out.len() / d * len);
    #[cfg(target_arch = "x86_64")]
    if crate::avx512::available() && d.is_multiple_of(16) {
        // SAFETY: AVX-512F and VL are present; the lengths are checked above.
        unsafe { crate::avx512::mix(p, v, d, len, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if available() && d.is_multiple_of(16) {
        // SAFETY: AVX2 and FMA are present; the lengths are checked above.
        unsafe { mix_avx2(p, v, d, len, out) };
        return;
    }
    for (pg, og) in p.chunks_exact(len.max(1)).zip(out.chunks_exact_mut(d)) {
        og.fill(0.0);
        for (&pt, row) in pg.iter().zip(v.chunks_exact(d)) {
            for (o, x) in og.iter_mut().zip(row) {
                *o += pt * x;
            }
        }
    }
}

/// `mix` for `d` a multiple of 16, up to four heads at a time, so that each
/// row of `v` is read once for all of them.
///
/// # Safety
/// As `mix` checks: `p` holds `out.len() / d` rows of `len`, `v` `len` rows of `d`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn mix_avx2(p: &[f32], v: &[f32], d: usize, len: usize, out: &mut [f32]) {
    let heads = out.len() / d;
    for g in (0..heads).step_by(4) {
        let (p, o) = (p[g * len..].as_ptr(), out[g * d..].as_mut_ptr());
        // SAFETY: the caller's contract, for heads g.. of this block.
        unsafe {
            match (heads - g).min(4) {
                1 => mix_heads::<1>(p, v.as_ptr(), d, len, o),
                2 => mix_heads::<2>(p, v.as_ptr(), d, len, o),
                3 => mix_heads::<3>(p, v.as_ptr(), d, len, o),
                _ => mix_heads::<4>(p, v.as_ptr(), d, len, o),
            }
        }
    }
}

/// `G` heads of `mix_avx2`, 16 columns at a time: `2 * G` accumulators.
///
/// # Safety
/// `p` holds `G` rows of `len`, `v` `len` rows of `d`, `out` `G` rows of `d`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn mix_heads<const G: usize>(
    p: *const f32,
    v: *const f32,
    d: usize,
    len: usize,
    out: *mut f32,
) {
    for c in (0..d).step_by(16) {
        let mut acc = [[_mm256_setzero_ps(); 2]; G];
        // SAFETY (this block): reads and writes stay within the caller's rows.
        unsafe {
            for t in 0..len {
                let row = v.add(t * d + c);
                let (lo, hi) = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
                for (g, a) in acc.iter_mut().enumerate() {
                    let w = _mm256_broadcast_ss(&*p.add(g * len + t));
                    a[0] = _mm256_fmadd_ps(w, lo, a[0]);
                    a[1] = _mm256_fmadd_ps(w, hi, a[1]);
                }
            }
            for (g, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(g * d + c), a[0]);
                _mm256_storeu_ps(out.add(g * d + c + 8), a[1]);
            }
        }
    }
}

/// One row of `rms_norm`.
pub(crate) fn rms_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX2 and FMA are present.
        unsafe { rms_row_avx2(x, w, eps, out) };
        return;
    }
    rms_row_plain(x, w, eps, out);
}

/// The loops of `rms_row`: squares summed in 8 lanes, as the vector units
/// would, then each value scaled as HF does (`w * (x * rsqrt(var + eps))`).
#[inline(always)]
fn rms_row_plain(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mut lanes = [0.0f32; 8];
    let whole = x.len() - x.len() % 8;
    for c in x[..whole].chunks_exact(8) {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let tail: f32 = x[whole..].iter().map(|v| v * v).sum();
    let var = (lanes.iter().sum::<f32>() + tail) / x.len() as f32;
    let r = 1.0 / (var + eps).sqrt();
    for ((o, v), wi) in out.iter_mut().zip(x).zip(w) {
        *o = wi * (v * r);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rms_row_avx2(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rms_row_plain(x, w, eps, out);
}

/// `e^x` of 8 lanes, within 2 ulp: Cephes' `expf`, `e^x = 2^n · e^r` with
/// `n = round(x / ln 2)` and a degree-7 polynomial for `e^r`. Lanes below
/// the smallest normal result give 0 (so -inf gives 0), lanes above the
/// largest finite one give +inf, NaN stays NaN.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let lowest = _mm256_set1_ps(-87.336_55);
    let zero = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lowest);
    let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
    let inf = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(88.722_84));
    let c = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.376_26)), lowest);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        c,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln 2 in two parts, so that n · ln 2 is subtracted without rounding.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), c);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for k in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(k));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    )));
    let y = _mm256_andnot_ps(zero, _mm256_mul_ps(y, pow2));
    let y = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), inf);
    _mm256_blendv_ps(y, x, nan)
}

/// `out = silu(gate) * up`, with `silu(g) = g / (1 + e^-g)` as ATen computes it.
pub(crate) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX2 and FMA are present.
        done = unsafe { silu_mul_avx2(gate, up, out) };
    }
    for ((o, g), u) in out[done..].iter_mut().zip(&gate[done..]).zip(&up[done..]) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// The whole vectors of `silu_mul`; returns how many values it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
    let one = _mm256_set1_ps(1.0);
    let whole = out.len() - out.len() % 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= whole <= each slice's length.
        unsafe {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
        }
    }
    whole
}

/// `x = e^(x - max x)`, returning the sum of the new values.
pub(crate) fn exp_shifted(x: &mut [f32]) -> f32 {
    let top = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut done = 0;
    let mut sum = 0.0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX2 and FMA are present.
        (done, sum) = unsafe { exp_shifted_avx2(x, top) };
    }
    for v in &mut x[done..] {
        *v = (*v - top).exp();
        sum += *v;
    }
    sum
}

/// The whole vectors of `exp_shifted`: how many values it wrote, and their sum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_avx2(x: &mut [f32], top: f32) -> (usize, f32) {
    let top = _mm256_set1_ps(top);
    let mut acc = _mm256_setzero_ps();
    let whole = x.len() - x.len() % 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= whole <= x.len().
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), top));
            _mm256_storeu_ps(p, e);
            acc = _mm256_add_ps(acc, e);
        }
    }
    (whole, hsum(acc))
}

#[cfg(test)]
mod tests;
