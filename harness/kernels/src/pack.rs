//! Weight matrices kept losslessly as ggml Q4_1 or Q8_0 blocks, or as bf16.

use half::f16;

use crate::product::{as_bytes, Plain};

/// Values per block along a row.
pub(crate) const BLOCK: usize = 32;

/// 32 values `q * d + m`, `q` in 0..16: element `j` is the low nibble of
/// `qs[j]`, element `j + 16` its high nibble (ggml's order).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Q4_1Block {
    /// The step, an f16 value as ggml stores it.
    pub d: f32,
    pub m: f32,
    pub qs: [u8; 16],
}

/// 32 values `q * d`, `q` a signed byte.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8_0Block {
    pub d: f32,
    pub qs: [i8; 32],
}

// SAFETY: `repr(C)` fields of 4-byte alignment filling the size (checked
// below), so no padding; bf16 units are plain `u16`s.
unsafe impl Plain for Q4_1Block {}
unsafe impl Plain for Q8_0Block {}
unsafe impl Plain for [u16; BLOCK] {}
const _: () = assert!(size_of::<Q4_1Block>() == 24 && size_of::<Q8_0Block>() == 36);

/// The blocks of a packed matrix, row after row.
pub(crate) enum Blocks {
    Q4_1(Vec<Q4_1Block>),
    Q8_0(Vec<Q8_0Block>),
    /// The high halves of f32 values whose low halves are zero, 32 at a time.
    Bf16(Vec<[u16; BLOCK]>),
}

/// A `[rows, cols]` weight matrix held as blocks that give back its f32
/// values exactly.
pub struct Packed {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) blocks: Blocks,
}

impl Packed {
    /// Packs row-major `w` `[rows, cols]` when every block is exactly Q4_1
    /// (tried first, the smallest), exactly Q8_0, or every value a bf16;
    /// `None` when none holds, so the matrix stays dense.
    pub fn exact(w: &[f32], rows: usize, cols: usize) -> Option<Packed> {
        assert_eq!(w.len(), rows * cols, "a [{rows}, {cols}] matrix");
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let blocks = if let Some(b) = each_block(w, q4_1) {
            Blocks::Q4_1(b)
        } else if let Some(b) = each_block(w, q8_0) {
            Blocks::Q8_0(b)
        } else {
            Blocks::Bf16(each_block(w, bf16)?)
        };
        Some(Packed { rows, cols, blocks })
    }

    /// Writes rows `first..first + out.len() / cols` as f32 into `out`.
    pub(crate) fn unpack_rows(&self, first: usize, out: &mut [f32]) {
        let n = out.len() / self.cols;
        match &self.blocks {
            Blocks::Q4_1(b) => crate::avx2::unpack_q4_1(&b[self.units(first, n)], out),
            Blocks::Q8_0(b) => crate::avx2::unpack_q8_0(&b[self.units(first, n)], out),
            Blocks::Bf16(b) => crate::avx2::unpack_bf16(&b[self.units(first, n)], out),
        }
    }

    /// `out[j] = x · w_{first + j}` for one row `x`, decoding the weights in
    /// registers rather than into memory first, when the processor has
    /// AVX-512: the same bits as unpacking and multiplying. The bytes of
    /// `ahead` (the rows multiplied next) are fetched meanwhile. `false`
    /// (and nothing written) without AVX-512.
    pub(crate) fn row_products(
        &self,
        x: &[f32],
        first: usize,
        out: &mut [f32],
        ahead: &[u8],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if crate::avx512::available() {
            assert_eq!(x.len(), self.cols, "x is one row of {}", self.cols);
            let (units, per_row) = (self.units(first, out.len()), self.cols / BLOCK);
            use crate::avx512::decode_rows;
            // SAFETY: AVX-512F and VL are present; `units` gives whole rows for
            // `out` and x holds one.
            unsafe {
                match &self.blocks {
                    Blocks::Q4_1(b) => decode_rows(x, &b[units], per_row, out, ahead),
                    Blocks::Q8_0(b) => decode_rows(x, &b[units], per_row, out, ahead),
                    Blocks::Bf16(b) => decode_rows(x, &b[units], per_row, out, ahead),
                }
            }
            return true;
        }
        let _ = (x, first, out, ahead);
        false
    }

    /// The bytes holding rows `first..first + n`.
    pub(crate) fn bytes(&self, first: usize, n: usize) -> &[u8] {
        let units = self.units(first, n);
        match &self.blocks {
            Blocks::Q4_1(b) => as_bytes(&b[units]),
            Blocks::Q8_0(b) => as_bytes(&b[units]),
            Blocks::Bf16(b) => as_bytes(&b[units]),
        }
    }

    /// The blocks holding rows `first..first + n`.
    fn units(&self, first: usize, n: usize) -> std::ops::Range<usize> {
        let per_row = self.cols / BLOCK;
        first * per_row..(first + n) * per_row
    }
}

/// `pack` of every block of `w`, `None` as soon as one gives `None`; the
/// blocks are split over the cores, since a model has some hundred million
/// values to check on load.
fn each_block<B: Send>(w: &[f32], pack: fn(&[f32]) -> Option<B>) -> Option<Vec<B>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = (w.len() / BLOCK).div_ceil(threads).max(1) * BLOCK;
    std::thread::scope(|scope| {
        let parts: Vec<_> = w
            .chunks(per_thread)
            .map(|part| {
                scope.spawn(move || {
                    part.chunks_exact(BLOCK)
                        .map(pack)
                        .collect::<Option<Vec<B>>>()
                })
            })
            .collect();
        let mut blocks = Vec::with_capacity(w.len() / BLOCK);
        for part in parts {
            blocks.extend(part.join().expect("a packing thread panicked")?);
        }
        Some(blocks)
    })
}

/// The f32 value ggml's Q4_1 dequantization gives for `q`.
pub(crate) fn q4_1_value(q: u8, d: f32, m: f32) -> f32 {
    q as f32 * d + m
}

/// The f32 value ggml's Q8_0 dequantization gives for `q`.
pub(crate) fn q8_0_value(q: i8, d: f32) -> f32 {
    q as f32 * d
}

/// Candidate scales near `span / steps`: its f16 rounding (ggml stores the
/// scale as f16) and the f16 values either side.
fn scales(span: f32, steps: f32) -> [f32; 3] {
    let d = f16::from_f32(span / steps);
    let bits = d.to_bits();
    [
        d.to_f32(),
        f16::from_bits(bits.wrapping_add(1)).to_f32(),
        f16::from_bits(bits.wrapping_sub(1)).to_f32(),
    ]
}

/// The Q4_1 block whose values are exactly `w`, if there is one.
fn q4_1(w: &[f32]) -> Option<Q4_1Block> {
    let (lo, hi) = min_max(w)?;
    let fits = |d: f32| -> Option<Q4_1Block> {
        let mut qs = [0u8; 16];
        for (j, &v) in w.iter().enumerate() {
            let q = if d == 0.0 {
                0.0
            } else {
                ((v - lo) / d).round()
            };
            if !(0.0..=15.0).contains(&q) || q4_1_value(q as u8, d, lo) != v {
                return None;
            }
            qs[j % 16] |= (q as u8) << (4 * (j / 16));
        }
        Some(Q4_1Block { d, m: lo, qs })
    };
    if lo == hi {
        return fits(0.0);
    }
    // The largest value is usually q = 15; a block whose values all round
    // below that may top out lower.
    (1..=15)
        .rev()
        .flat_map(|top| scales(hi - lo, top as f32))
        .find_map(|d| (d > 0.0).then(|| fits(d)).flatten())
}

/// The Q8_0 block whose values are exactly `w`, if there is one.
fn q8_0(w: &[f32]) -> Option<Q8_0Block> {
    let (lo, hi) = min_max(w)?;
    let amax = lo.abs().max(hi.abs());
    let fits = |d: f32| -> Option<Q8_0Block> {
        let mut qs = [0i8; 32];
        for (q_out, &v) in qs.iter_mut().zip(w) {
            let q = if d == 0.0 { 0.0 } else { (v / d).round() };
            if !(-128.0..=127.0).contains(&q) || q8_0_value(q as i8, d) != v {
                return None;
            }
            *q_out = q as i8;
        }
        Some(Q8_0Block { d, qs })
    };
    if amax == 0.0 {
        return fits(0.0);
    }
    [127.0, 128.0, 126.0]
        .into_iter()
        .flat_map(|top| scales(amax, top))
        .find_map(|d| (d > 0.0).then(|| fits(d)).flatten())
}

/// The high halves of a block's values, when all are finite and every low
/// half is zero.
fn bf16(w: &[f32]) -> Option<[u16; BLOCK]> {
    let mut out = [0u16; BLOCK];
    for (o, v) in out.iter_mut().zip(w) {
        let bits = v.to_bits();
        if bits & 0xFFFF != 0 || !v.is_finite() {
            return None;
        }
        *o = (bits >> 16) as u16;
    }
    Some(out)
}

/// Least and greatest value, `None` when one is not finite.
fn min_max(w: &[f32]) -> Option<(f32, f32)> {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in w {
        if !v.is_finite() {
            return None;
        }
        lo = lo.min(v);
        hi = hi.max(v);
    }
    Some((lo, hi))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    pub(crate) fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// What ggml's quantizer and our GGUF import produce for `w`: the Q4_1 values.
    pub(crate) fn as_q4_1(w: &[f32]) -> Vec<f32> {
        w.chunks(BLOCK)
            .flat_map(|b| {
                let lo = b.iter().cloned().fold(f32::INFINITY, f32::min);
                let hi = b.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let d = f16::from_f32((hi - lo) / 15.0).to_f32();
                let m = f16::from_f32(lo).to_f32();
                b.iter()
                    .map(move |&v| {
                        let q = if d == 0.0 {
                            0.0
                        } else {
                            ((v - lo) / d).round().min(15.0)
                        };
                        q4_1_value(q as u8, d, m)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The Q8_0 values ggml's quantizer produces for `w`.
    pub(crate) fn as_q8_0(w: &[f32]) -> Vec<f32> {
        w.chunks(BLOCK)
            .flat_map(|b| {
                let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = f16::from_f32(amax / 127.0).to_f32();
                b.iter()
                    .map(move |&v| {
                        let q = if d == 0.0 { 0.0 } else { (v / d).round() };
                        q8_0_value(q as i8, d)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn format(p: &Packed) -> &'static str {
        match p.blocks {
            Blocks::Q4_1(_) => "q4_1",
            Blocks::Q8_0(_) => "q8_0",
            Blocks::Bf16(_) => "bf16",
        }
    }

    fn unpacked(p: &Packed) -> Vec<f32> {
        let mut out = vec![0.0; p.rows * p.cols];
        p.unpack_rows(0, &mut out);
        out
    }

    #[test]
    fn q4_1_weights_pack_and_unpack_exactly() {
        let w = as_q4_1(&noise(64 * 96, 1));
        let p = Packed::exact(&w, 64, 96).expect("Q4_1 values pack");
        assert_eq!(format(&p), "q4_1");
        assert_eq!(unpacked(&p), w);
    }

    #[test]
    fn q8_0_weights_pack_and_unpack_exactly() {
        let w = as_q8_0(&noise(16 * 64, 2));
        let p = Packed::exact(&w, 16, 64).expect("Q8_0 values pack");
        assert_eq!(format(&p), "q8_0");
        assert_eq!(unpacked(&p), w);
    }

    /// `w` rounded to bf16 values, as a bf16 checkpoint loaded as f32 holds them.
    pub(crate) fn as_bf16(w: &[f32]) -> Vec<f32> {
        w.iter()
            .map(|v| half::bf16::from_f32(*v).to_f32())
            .collect()
    }

    #[test]
    fn bf16_weights_pack_and_unpack_exactly() {
        let w = as_bf16(&noise(24 * 64, 6));
        let p = Packed::exact(&w, 24, 64).expect("bf16 values pack");
        assert_eq!(format(&p), "bf16");
        assert_eq!(unpacked(&p), w);
    }

    #[test]
    fn constant_and_zero_blocks_pack() {
        let mut w = vec![0.0; 64];
        w[32..].fill(0.25);
        let p = Packed::exact(&w, 1, 64).expect("constant blocks pack");
        assert_eq!(unpacked(&p), w);
    }

    #[test]
    fn dense_weights_stay_dense() {
        assert!(Packed::exact(&noise(8 * 64, 3), 8, 64).is_none());
        // One value off a Q4_1 grid in the last block is enough.
        let mut w = as_q4_1(&noise(8 * 64, 4));
        *w.last_mut().unwrap() += 1e-3;
        assert!(Packed::exact(&w, 8, 64).map(|p| format(&p)) != Some("q4_1"));
        assert!(Packed::exact(&[f32::NAN; 32], 1, 32).is_none());
        assert!(
            Packed::exact(&noise(2 * 40, 5), 2, 40).is_none(),
            "rows not whole blocks"
        );
    }
}
