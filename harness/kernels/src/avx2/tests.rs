//! The AVX2 loops beside the plain ones, and the two vector widths beside
//! each other. Where AVX-512 is present the dispatchers never take the
//! AVX2 loops, so these tests call them directly.

use super::*;
use crate::pack::tests::{as_bf16, as_q4_1, as_q8_0, noise};
use crate::pack::{Blocks, Packed};

#[test]
fn exp_shifted_is_within_two_ulp_and_sends_minus_infinity_to_zero() {
    let mut x: Vec<f32> = (0..2000).map(|i| -100.0 + i as f32 * 0.0513).collect();
    x.push(f32::NEG_INFINITY);
    x.push(3.0);
    // The shift is rounded to f32 first, as the kernel rounds it.
    let want: Vec<f64> = x.iter().map(|v| ((v - 3.0) as f64).exp()).collect();
    let mut got = x.clone();
    let sum = exp_shifted(&mut got);
    for ((g, w), v) in got.iter().zip(&want).zip(&x) {
        if *w < f32::MIN_POSITIVE as f64 {
            assert!(*g as f64 <= f32::MIN_POSITIVE as f64, "e^{v}: {g}");
        } else {
            assert!(((*g as f64) - w).abs() <= 2.5e-7 * w, "e^{v}: {g} vs {w}");
        }
    }
    assert_eq!(got[2000], 0.0);
    let total: f64 = want.iter().sum();
    assert!((sum as f64 - total).abs() < 1e-5 * total);
}

#[test]
fn both_widths_of_mix_give_the_same_bits() {
    if !(available() && crate::avx512::available()) {
        return;
    }
    let len = 37;
    for (heads, d) in [(3, 64), (5, 80), (2, 16), (4, 128)] {
        let p = crate::pack::tests::noise(heads * len, 1);
        let v = crate::pack::tests::noise(len * d, 2);
        let (mut narrow, mut wide) = (vec![0.0; heads * d], vec![1.0; heads * d]);
        // SAFETY: both instruction sets are present; the lengths fit.
        unsafe {
            mix_avx2(&p, &v, d, len, &mut narrow);
            crate::avx512::mix(&p, &v, d, len, &mut wide);
        }
        assert_eq!(narrow, wide, "{heads} heads of {d}");
    }
}

/// The blocks `w` `[rows, cols]` packs into, and `w` itself.
fn packed(w: Vec<f32>, rows: usize, cols: usize) -> (Packed, Vec<f32>) {
    (
        Packed::exact(&w, rows, cols).expect("quantized values pack"),
        w,
    )
}

#[test]
fn the_avx2_unpacking_gives_back_the_exact_values() {
    if !available() {
        return;
    }
    let (rows, cols) = (5, 96);
    let mut seen = std::collections::HashSet::new();
    for quantize in [as_q4_1, as_q8_0, as_bf16] {
        let (p, want) = packed(quantize(&noise(rows * cols, 21)), rows, cols);
        let mut got = vec![f32::NAN; rows * cols];
        // SAFETY: AVX2 and FMA are present; `got` holds 32 values per block.
        unsafe {
            match &p.blocks {
                Blocks::Q4_1(b) => unpack_q4_1_avx2(b, &mut got),
                Blocks::Q8_0(b) => unpack_q8_0_avx2(b, &mut got),
                Blocks::Bf16(b) => unpack_bf16_avx2(b, &mut got),
            }
        }
        assert_eq!(got, want);
        seen.insert(std::mem::discriminant(&p.blocks));
    }
    assert_eq!(seen.len(), 3, "each block format was unpacked");
}

#[test]
fn every_avx2_tile_gives_each_dot_product_the_bits_it_has_alone() {
    if !available() {
        return;
    }
    // 37 columns: four whole vectors of 8 and a tail of 5.
    let k = 37;
    let x = noise(8 * k, 22);
    let w = noise(8 * k, 23);
    let alone = |i: usize, j: usize| {
        let mut s = f32::NAN;
        // SAFETY: AVX2 and FMA are present; one row of each, k long.
        unsafe { tile_avx2::<1, 1>(x[i * k..].as_ptr(), k, w[j * k..].as_ptr(), k, k, &mut s, 1) };
        s
    };
    let mut shapes = 0;
    let one_row = (1..=8).map(|nb| (1, nb));
    let more_rows = (2..=4).flat_map(|mb| (1..=3).map(move |nb| (mb, nb)));
    for (mb, nb) in one_row.chain(more_rows) {
        let mut out = vec![f32::NAN; mb * nb];
        macro_rules! run {
            ($($m:literal, $n:literal);*) => {
                match (mb, nb) {
                    // SAFETY: as above, for mb rows of x and nb of w.
                    $(($m, $n) => unsafe {
                        tile_avx2::<$m, $n>(x.as_ptr(), k, w.as_ptr(), k, k, out.as_mut_ptr(), nb)
                    },)*
                    _ => unreachable!(),
                }
            };
        }
        run!(1, 1; 1, 2; 1, 3; 1, 4; 1, 5; 1, 6; 1, 7; 1, 8;
            2, 1; 2, 2; 2, 3; 3, 1; 3, 2; 3, 3; 4, 1; 4, 2; 4, 3);
        for i in 0..mb {
            for j in 0..nb {
                let exact: f64 = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum();
                assert!(
                    (out[i * nb + j] as f64 - exact).abs() < 1e-5,
                    "{mb}x{nb} at {i},{j}"
                );
                assert_eq!(out[i * nb + j], alone(i, j), "{mb}x{nb} at {i},{j}");
            }
        }
        shapes += 1;
    }
    assert_eq!(shapes, 17);
}

#[test]
fn the_avx2_rms_norm_and_silu_match_the_plain_loops() {
    if !available() {
        return;
    }
    let x = noise(100, 24);
    let w = noise(100, 25);
    let (mut vector, mut plain) = (vec![0.0; 100], vec![1.0; 100]);
    // SAFETY: AVX2 and FMA are present.
    unsafe { rms_row_avx2(&x, &w, 1e-5, &mut vector) };
    rms_row_plain(&x, &w, 1e-5, &mut plain);
    assert_eq!(vector, plain);
    let up = noise(100, 26);
    let mut out = vec![0.0; 100];
    // SAFETY: as above.
    let done = unsafe { silu_mul_avx2(&x, &up, &mut out) };
    assert_eq!(done, 96);
    for ((o, g), u) in out[..done].iter().zip(&x).zip(&up) {
        let want = g / (1.0 + (-g).exp()) * u;
        assert!(
            (o - want).abs() <= 1e-6 * want.abs().max(1e-3),
            "{o} vs {want}"
        );
    }
}
