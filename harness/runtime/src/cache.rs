//! The key/value cache of a batch being generated.

use emh_kernels::Pool;
use tch::{Device, Kind, Tensor};

use crate::host::f32_slice_mut;
use crate::{ModelConfig, RuntimeError};

/// Preallocated keys and values of every layer, `[batch, kv_heads, capacity, head_dim]`.
///
/// Sequences are left-padded, so all rows share one slot counter; `valid`
/// marks the slots that hold real tokens.
pub struct KvCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    /// `[batch, capacity]`: slot holds a real (not padding) token.
    pub(crate) valid: Tensor,
    /// Slots filled so far.
    pub(crate) len: i64,
    pub(crate) capacity: i64,
    /// Whether any filled slot is padding, which forces an explicit mask.
    pub(crate) has_padding: bool,
}

impl KvCache {
    /// An empty cache for `batch` sequences of up to `capacity` tokens,
    /// zeroed on `pool` when one is given (f32 CPU caches only). A failed
    /// allocation is an error saying how much was asked for.
    pub(crate) fn new(
        cfg: &ModelConfig,
        batch: i64,
        capacity: i64,
        kind: Kind,
        device: Device,
        pool: Option<&Pool>,
    ) -> Result<Self, RuntimeError> {
        let shape = [
            batch,
            cfg.num_kv_heads as i64,
            capacity,
            cfg.head_dim as i64,
        ];
        let failed = |e: tch::TchError| {
            let bytes = 2.0
                * cfg.num_layers as f64
                * shape.iter().map(|&d| d as f64).product::<f64>()
                * kind.elt_size_in_bytes() as f64;
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            RuntimeError::Request(format!(
                "the key/value cache for {batch} sequences of up to {capacity} tokens needs {:.1} GB on {device:?}, \
                 which could not be allocated ({first}); lower the batch size or the new tokens",
                bytes / 1e9
            ))
        };
        let alloc = || -> Result<Vec<Tensor>, RuntimeError> {
            (0..cfg.num_layers)
                .map(|_| match pool {
                    // The cache is often the largest allocation of a run, and
                    // the first touch of fresh memory is page faults: all
                    // cores take them together.
                    Some(pool) => {
                        let mut t = Tensor::f_empty(shape, (kind, device)).map_err(failed)?;
                        emh_kernels::zero(pool, f32_slice_mut(&mut t));
                        Ok(t)
                    }
                    _ => Tensor::f_zeros(shape, (kind, device)).map_err(failed),
                })
                .collect()
        };
        Ok(KvCache {
            k: alloc()?,
            v: alloc()?,
            valid: Tensor::f_zeros([batch, capacity], (Kind::Bool, device)).map_err(failed)?,
            len: 0,
            capacity,
            has_padding: false,
        })
    }

    /// Keeps only the given rows (sequences still generating), in that order.
    pub fn select_rows(&mut self, rows: &[i64]) {
        let used = self.len;
        let index = Tensor::from_slice(rows).to_device(self.valid.device());
        self.valid = self.valid.index_select(0, &index);
        if rows.iter().enumerate().all(|(i, &r)| r >= i as i64) {
            // Every row stays or moves up, so no source is overwritten
            // before it is read: the rows move in place, filled slots only.
            // A fresh cache at each finished row cost the zeroing and page
            // faults of the whole cache, 6% of a sampling run's time.
            let n = rows.len() as i64;
            for t in self.k.iter_mut().chain(self.v.iter_mut()) {
                for (i, &r) in rows.iter().enumerate() {
                    if r != i as i64 {
                        let src = t.get(r).narrow(1, 0, used);
                        t.get(i as i64).narrow(1, 0, used).copy_(&src);
                    }
                }
                let first = t.narrow(0, 0, n);
                *t = first;
            }
            return;
        }
        let keep = |t: &Tensor| {
            // Only the filled slots matter; copy those and leave the rest zero.
            let out = Tensor::zeros(
                [rows.len() as i64, t.size()[1], self.capacity, t.size()[3]],
                (t.kind(), t.device()),
            );
            out.narrow(2, 0, used)
                .copy_(&t.narrow(2, 0, used).index_select(0, &index));
            out
        };
        self.k = self.k.iter().map(keep).collect();
        self.v = self.v.iter().map(keep).collect();
    }

    /// Moves the last `span` filled slots of every row so they end at slot
    /// `to` instead of `len`, and makes `to` the new fill: room on the left
    /// for a longer prompt, or room on the right once rows have left.
    /// Slots outside the moved window are marked empty.
    pub(crate) fn move_window(&mut self, span: i64, to: i64) {
        let from = self.len;
        if to == from {
            return;
        }
        assert!(span <= from && span <= to && to <= self.capacity);
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            // A copy first: the two windows may overlap.
            let window = t.narrow(2, from - span, span).copy();
            t.narrow(2, to - span, span).copy_(&window);
        }
        let window = self.valid.narrow(1, from - span, span).copy();
        let _ = self.valid.fill_(0);
        self.valid.narrow(1, to - span, span).copy_(&window);
        self.len = to;
        self.has_padding = true;
    }

    /// Puts the last `len` filled slots of row `from_row` of `from` (a
    /// prompt's pass) into row `row`, ending at this cache's fill, and marks
    /// every other slot of the row empty.
    pub(crate) fn place(&mut self, row: i64, from: &KvCache, from_row: i64, len: i64) {
        assert!(len <= self.len && len <= from.len);
        let (start, src) = (self.len - len, from.len - len);
        for (dst, src_t) in self
            .k
            .iter_mut()
            .zip(&from.k)
            .chain(self.v.iter_mut().zip(&from.v))
        {
            dst.get(row)
                .narrow(1, start, len)
                .copy_(&src_t.get(from_row).narrow(1, src, len));
        }
        let mut valid = self.valid.get(row);
        let _ = valid.fill_(0);
        let _ = valid.narrow(0, start, len).fill_(1);
        if start > 0 {
            self.has_padding = true;
        }
    }

    /// Copies of the first `len` slots of every layer's keys and values.
    pub(crate) fn prefix(&self, len: i64) -> (Vec<Tensor>, Vec<Tensor>) {
        let copy = |ts: &[Tensor]| ts.iter().map(|t| t.narrow(2, 0, len).copy()).collect();
        (copy(&self.k), copy(&self.v))
    }

    /// Fills the first `len` slots from [`KvCache::prefix`]'s copies (of a
    /// cache with as many rows) and makes them the filled slots.
    pub(crate) fn load_prefix(&mut self, k: &[Tensor], v: &[Tensor], len: i64) {
        for (dst, src) in self.k.iter_mut().zip(k).chain(self.v.iter_mut().zip(v)) {
            dst.narrow(2, 0, len).copy_(&src.narrow(2, 0, len));
        }
        let _ = self.valid.narrow(1, 0, len).fill_(1);
        self.len = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of 4 rows with 3 filled slots, each value naming its row.
    fn filled() -> KvCache {
        let cfg = ModelConfig::from_dir(&crate::test_model::dir()).unwrap();
        let mut c = KvCache::new(&cfg, 4, 8, Kind::Float, Device::Cpu, None).unwrap();
        for t in c.k.iter_mut().chain(c.v.iter_mut()) {
            for row in 0..4 {
                let _ = t.get(row).narrow(1, 0, 3).fill_(row as f64 + 1.0);
            }
        }
        for row in 0..4 {
            let _ = c
                .valid
                .get(row)
                .narrow(0, 3 - row.min(3), row.min(3))
                .fill_(1);
        }
        c.len = 3;
        c
    }

    /// Each kept row's filled slots, as the row number they came from.
    fn rows_of(c: &KvCache) -> Vec<f64> {
        let mut out = Vec::new();
        for t in c.k.iter().chain(&c.v) {
            let filled = t.narrow(2, 0, c.len);
            for row in 0..t.size()[0] {
                let values = filled.get(row);
                assert_eq!(
                    values.min().double_value(&[]),
                    values.max().double_value(&[])
                );
                out.push(values.max().double_value(&[]) - 1.0);
            }
        }
        out
    }

    #[test]
    fn rows_kept_in_place_or_gathered_hold_the_same_values() {
        let valid = filled().valid;
        // Sources after their destinations: moved in place, no new tensors.
        let mut moved = filled();
        let before = moved.k[0].data_ptr();
        moved.select_rows(&[0, 3, 2]);
        assert_eq!(moved.k[0].data_ptr(), before, "moved in place");
        assert_eq!(moved.k[0].size()[0], 3);
        // A row before its destination, and a repeat: gathered.
        let mut gathered = filled();
        gathered.select_rows(&[1, 0, 3, 3, 2]);
        assert_ne!(gathered.k[0].data_ptr(), before);
        let layers = 2 * moved.k.len();
        let want = |rows: &[f64]| -> Vec<f64> { (0..layers).flat_map(|_| rows.to_vec()).collect() };
        assert_eq!(rows_of(&moved), want(&[0.0, 3.0, 2.0]));
        assert_eq!(rows_of(&gathered), want(&[1.0, 0.0, 3.0, 3.0, 2.0]));
        for (c, rows) in [(&moved, vec![0, 3, 2]), (&gathered, vec![1, 0, 3, 3, 2])] {
            for (i, r) in rows.into_iter().enumerate() {
                assert!(
                    c.valid.get(i as i64).equal(&valid.get(r)),
                    "valid of row {r}"
                );
            }
        }
    }
}
