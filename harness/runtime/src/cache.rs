//! The key/value cache of a batch being generated.

use emh_kernels::Pool;
use tch::{Device, Kind, Tensor};

use crate::host::f32_slice_mut;
use crate::ModelConfig;

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
    /// zeroed on `pool` when one is given (f32 CPU caches only).
    pub(crate) fn new(
        cfg: &ModelConfig,
        batch: i64,
        capacity: i64,
        kind: Kind,
        device: Device,
        pool: Option<&Pool>,
    ) -> Self {
        let shape = [
            batch,
            cfg.num_kv_heads as i64,
            capacity,
            cfg.head_dim as i64,
        ];
        let alloc = || {
            (0..cfg.num_layers)
                .map(|_| match pool {
                    // The cache is often the largest allocation of a run, and
                    // the first touch of fresh memory is page faults: all
                    // cores take them together.
                    Some(pool) => {
                        let mut t = Tensor::empty(shape, (kind, device));
                        emh_kernels::zero(pool, f32_slice_mut(&mut t));
                        t
                    }
                    _ => Tensor::zeros(shape, (kind, device)),
                })
                .collect()
        };
        KvCache {
            k: alloc(),
            v: alloc(),
            valid: Tensor::zeros([batch, capacity], (Kind::Bool, device)),
            len: 0,
            capacity,
            has_padding: false,
        }
    }

    /// Keeps only the given rows (sequences still generating), in that order.
    pub fn select_rows(&mut self, rows: &Tensor) {
        let used = self.len;
        let keep = |t: &Tensor| {
            // Only the filled slots matter; copy those and leave the rest zero.
            let out = Tensor::zeros(
                [rows.size()[0], t.size()[1], self.capacity, t.size()[3]],
                (t.kind(), t.device()),
            );
            out.narrow(2, 0, used)
                .copy_(&t.narrow(2, 0, used).index_select(0, rows));
            out
        };
        self.k = self.k.iter().map(keep).collect();
        self.v = self.v.iter().map(keep).collect();
        self.valid = self.valid.index_select(0, rows);
    }
}
