//! `out = x · wᵀ`, split by weight rows across the pool's threads.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::avx2::{tile, tile_shape};
use crate::pack::Packed;
use crate::pool::Pool;

/// A weight matrix `[rows, cols]` for `linear`.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    /// Row-major f32 values.
    Dense {
        data: &'a [f32],
        rows: usize,
        cols: usize,
    },
    /// Exact 4/8-bit blocks.
    Packed(&'a Packed),
}

impl Weights<'_> {
    /// The bytes holding rows `first..first + n`.
    fn bytes(&self, first: usize, n: usize) -> &[u8] {
        match self {
            Weights::Dense { data, cols, .. } => as_bytes(&data[first * cols..(first + n) * cols]),
            Weights::Packed(p) => p.bytes(first, n),
        }
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Weights::Dense { rows, cols, .. } => (*rows, *cols),
            Weights::Packed(p) => (p.rows, p.cols),
        }
    }
}

/// Weight rows unpacked at a time: small enough to stay in a core's L2
/// cache while every row of `x` passes over them.
const CHUNK: usize = 24;

thread_local! {
    /// Each thread's buffer for unpacked weight rows.
    static UNPACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[i, j] = Σ_t x[i, t] · w[j, t]` for row-major `x` `[m, cols]` and
/// `out` `[m, rows]`, on every thread of `pool`.
pub fn linear(pool: &Pool, x: &[f32], w: Weights<'_>, out: &mut [f32]) {
    let (rows, cols) = w.shape();
    if let Weights::Dense { data, .. } = w {
        assert_eq!(data.len(), rows * cols, "weights are [{rows}, {cols}]");
    }
    assert!(
        cols > 0 && x.len().is_multiple_of(cols),
        "x has {cols} columns"
    );
    let m = x.len() / cols;
    assert_eq!(out.len(), m * rows, "out is [{m}, {rows}]");
    if m == 0 || rows == 0 {
        return;
    }
    // Threads take chunks of rows from a shared counter rather than fixed
    // halves: a thread that starts late or is interrupted takes fewer. Each
    // claims its next chunk before multiplying the current one, so that the
    // next chunk's weights come from memory meanwhile: the unpacking of a
    // chunk otherwise waited on its first loads.
    let next = AtomicUsize::new(0);
    let claim = || Some(next.fetch_add(CHUNK, Relaxed)).filter(|s| *s < rows);
    let out_addr = out.as_mut_ptr() as usize;
    pool.run(&|_| {
        UNPACKED.with_borrow_mut(|buf| {
            let mut claimed = claim();
            while let Some(start) = claimed {
                let n = CHUNK.min(rows - start);
                claimed = claim();
                let ahead = claimed.map_or(&[][..], |s| w.bytes(s, CHUNK.min(rows - s)));
                let rows_ptr = match w {
                    Weights::Dense { data, .. } => data[start * cols..].as_ptr(),
                    Weights::Packed(p) => {
                        if m == 1 {
                            // SAFETY: as below, for this chunk's n values of `out`.
                            let out = unsafe {
                                std::slice::from_raw_parts_mut((out_addr as *mut f32).add(start), n)
                            };
                            // A single row uses each decoded value once, so it
                            // is decoded in registers where the processor can.
                            if p.row_products(x, start, out, ahead) {
                                continue;
                            }
                        }
                        // Grown only: shrinking and regrowing between products
                        // of different widths would zero it each time.
                        if buf.len() < CHUNK * cols {
                            buf.resize(CHUNK * cols, 0.0);
                        }
                        p.unpack_rows(start, &mut buf[..n * cols]);
                        buf.as_ptr()
                    }
                };
                // SAFETY: `rows_ptr` holds n rows of `cols`, `x` m rows of
                // `cols`, and `out` m rows of `rows` with start + n <= rows.
                // Each chunk's columns of `out` are written by one thread
                // only, and `run` returns after all threads are done.
                unsafe {
                    let out = (out_addr as *mut f32).add(start);
                    chunk(x.as_ptr(), m, rows_ptr, n, cols, out, rows, ahead)
                };
            }
        });
    });
}

/// Plain data without padding: every byte of a value is initialized.
///
/// # Safety
/// Implement only for such types.
pub(crate) unsafe trait Plain: Copy {}

// SAFETY: four bytes, all of them the value.
unsafe impl Plain for f32 {}

/// The bytes of `v`, for `chunk` to fetch ahead.
pub(crate) fn as_bytes<T: Plain>(v: &[T]) -> &[u8] {
    // SAFETY: `Plain`: every byte is initialized; they live as long as `v`.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), size_of_val(v)) }
}

/// Asks for the cache line at `p` ahead of its use; never faults.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and never faults.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `out[i * ldo + j] = x_i · w_j` for `m` rows of `x` and `n` rows of `w`,
/// fetching the bytes of `ahead` into the cache a share at each tile.
///
/// # Safety
/// As `tile`, for `m` and `n` rows.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn chunk(
    x: *const f32,
    m: usize,
    w: *const f32,
    n: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
    ahead: &[u8],
) {
    let (mb, nb) = tile_shape(m);
    let mut lines = ahead.chunks(64);
    let share = lines.len().div_ceil(m.div_ceil(mb) * n.div_ceil(nb));
    for i in (0..m).step_by(mb) {
        let rows_i = mb.min(m - i);
        for j in (0..n).step_by(nb) {
            let cols_j = nb.min(n - j);
            lines
                .by_ref()
                .take(share)
                .for_each(|l| prefetch(l.as_ptr()));
            // SAFETY: the caller's contract; tiles stay within m x n.
            unsafe {
                tile(
                    rows_i,
                    cols_j,
                    x.add(i * k),
                    k,
                    w.add(j * k),
                    k,
                    k,
                    out.add(i * ldo + j),
                    ldo,
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::tests::{as_bf16, as_q4_1, as_q8_0, noise};

    /// The product in f64, as the reference.
    fn reference(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for xr in x.chunks(k) {
            for wr in w.chunks(k) {
                out.push(
                    xr.iter()
                        .zip(wr)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>() as f32,
                );
            }
        }
        out
    }

    fn check(m: usize, rows: usize, cols: usize, threads: usize, quantize: fn(&[f32]) -> Vec<f32>) {
        let pool = Pool::new(threads);
        let x = noise(m * cols, 7);
        let w = quantize(&noise(rows * cols, 8));
        let want = reference(&x, &w, cols);
        let mut dense = vec![f32::NAN; m * rows];
        linear(
            &pool,
            &x,
            Weights::Dense {
                data: &w,
                rows,
                cols,
            },
            &mut dense,
        );
        let tol = 1e-5 * cols as f32;
        let worst = |got: &[f32]| {
            got.iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max)
        };
        assert!(
            worst(&dense) < tol,
            "dense {m}x{rows}x{cols}: {}",
            worst(&dense)
        );
        if let Some(p) = Packed::exact(&w, rows, cols) {
            let mut packed = vec![f32::NAN; m * rows];
            linear(&pool, &x, Weights::Packed(&p), &mut packed);
            assert_eq!(packed, dense, "packed and dense products agree bit for bit");
        } else {
            assert!(!cols.is_multiple_of(32), "quantized weights pack");
        }
    }

    #[test]
    fn products_match_the_reference_for_every_tile_shape() {
        for (m, rows, cols) in [
            (1, 61, 64),
            (2, 50, 96),
            (3, 7, 32),
            (5, 29, 40),
            (16, 100, 64),
            (7, 1, 8),
            (14, 20, 48),
            (33, 77, 160),
        ] {
            for threads in [1, 2, 3] {
                check(m, rows, cols, threads, as_q4_1);
                check(m, rows, cols, threads, as_q8_0);
                check(m, rows, cols, threads, as_bf16);
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_and_in_a_batch() {
        let pool = Pool::new(2);
        let (m, rows, cols) = (9, 53, 96);
        let x = noise(m * cols, 11);
        for quantize in [as_q4_1, as_q8_0, as_bf16, |w: &[f32]| w.to_vec()] {
            let w = quantize(&noise(rows * cols, 12));
            let p = Packed::exact(&w, rows, cols);
            let weights = match &p {
                Some(p) => Weights::Packed(p),
                None => Weights::Dense {
                    data: &w,
                    rows,
                    cols,
                },
            };
            let mut batch = vec![0.0; m * rows];
            linear(&pool, &x, weights, &mut batch);
            for (xi, want) in x.chunks(cols).zip(batch.chunks(rows)) {
                let mut alone = vec![0.0; rows];
                linear(&pool, xi, weights, &mut alone);
                assert_eq!(alone, want);
            }
        }
    }

    #[test]
    fn odd_lengths_take_the_scalar_tail() {
        check(3, 5, 13, 2, |w| w.to_vec());
    }
}
