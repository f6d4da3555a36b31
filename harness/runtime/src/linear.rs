//! Weight matrices on their fastest path: emh's kernels over dense or
//! packed blocks on an AVX2 CPU, oneDNN-packed, or plain ATen.

use emh_kernels::{Packed, Pool, Weights};
use tch::{Device, Kind, Tensor};

use crate::host::{contiguous, f32_slice, f32_slice_mut};

/// A weight matrix `[out, in]` (and bias), multiplied the fastest way its device has.
pub(crate) struct Linear {
    /// Output features: rows of the weight matrix.
    rows: i64,
    bias: Option<Tensor>,
    stored: Stored,
}

/// Which way a model's `Linear`s multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinearPath {
    /// emh's kernels (see `Model::kernels`).
    Kernels,
    /// The fastest ATen way the device has.
    Fastest,
    /// Plain ATen `linear`, which autograd can differentiate (training).
    Aten,
}

/// How a `Linear` holds its weights and multiplies.
enum Stored {
    /// f32 on a CPU with AVX2 (see `Model::kernels`): emh's own kernels
    /// over the dense weights.
    Dense(Tensor),
    /// The same kernels over exact 4/8-bit blocks or bf16 values, when the
    /// weights are such (imported from a quantized GGUF file, or a bf16
    /// checkpoint): a quarter to a half of the bytes, and the dense copy is
    /// dropped.
    Packed(Packed),
    /// f32 on other CPUs: oneDNN's blocked layout, which multiplies small
    /// batches about twice as fast as the default BLAS path.
    OneDnn(Tensor),
    /// Everything else: ATen's `linear`.
    Aten(Tensor),
}

impl Linear {
    /// `path`: how the model multiplies.
    pub(crate) fn new(w: Tensor, bias: Option<Tensor>, path: LinearPath) -> Self {
        let w = w.contiguous();
        let [rows, cols] = w.size()[..] else {
            unreachable!("weight matrices are 2-d")
        };
        let stored = match path {
            LinearPath::Kernels => {
                match Packed::exact(f32_slice(&w), rows as usize, cols as usize) {
                    Some(p) => Stored::Packed(p),
                    None => Stored::Dense(w),
                }
            }
            LinearPath::Fastest
                if w.device() == Device::Cpu
                    && w.kind() == Kind::Float
                    && tch::utils::has_mkldnn() =>
            {
                Stored::OneDnn(w.to_mkldnn())
            }
            LinearPath::Fastest | LinearPath::Aten => Stored::Aten(w),
        };
        Linear { rows, bias, stored }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        let k = *shape.last().expect("activations have a feature dimension");
        *shape.last_mut().expect("same rank") = self.rows;
        let y = match &self.stored {
            Stored::Aten(w) => return x.linear(w, self.bias.as_ref()),
            Stored::OneDnn(w) => x
                .reshape([-1, k])
                .to_mkldnn()
                .mkldnn_linear::<Tensor>(w, None)
                .to_dense(None, false)
                .view(shape.as_slice()),
            Stored::Packed(p) => self.on_kernels(x, &shape, Weights::Packed(p)),
            Stored::Dense(w) => self.on_kernels(
                x,
                &shape,
                Weights::Dense {
                    data: f32_slice(w),
                    rows: self.rows as usize,
                    cols: k as usize,
                },
            ),
        };
        match &self.bias {
            Some(b) => y + b,
            None => y,
        }
    }

    /// `x · wᵀ`, of `shape`, on emh's kernels.
    fn on_kernels(&self, x: &Tensor, shape: &[i64], weights: Weights<'_>) -> Tensor {
        let x = contiguous(x);
        let mut y = Tensor::empty(shape, (Kind::Float, Device::Cpu));
        emh_kernels::linear(
            Pool::global(),
            f32_slice(&x),
            weights,
            f32_slice_mut(&mut y),
        );
        y
    }
}

/// `f` of the rows `rows` (flat indices into batch x seq) of `x` `[b, t,
/// k]`, passed as `[1, rows, k]`, laid out `[b, t, out]` again with zeros
/// in the other rows; `f(x)` itself when `rows` is `None`.
pub(crate) fn on_rows(
    x: &Tensor,
    rows: Option<&Tensor>,
    f: impl FnOnce(&Tensor) -> Tensor,
) -> Tensor {
    let Some(rows) = rows else { return f(x) };
    let [b, t, k] = x.size()[..] else {
        unreachable!("activations are [batch, seq, features]")
    };
    let y = f(&x.reshape([b * t, k]).index_select(0, rows).unsqueeze(0)).squeeze_dim(0);
    let out = y.size()[1];
    Tensor::zeros([b * t, out], (y.kind(), y.device()))
        .index_copy(0, rows, &y)
        .view([b, t, out])
}
