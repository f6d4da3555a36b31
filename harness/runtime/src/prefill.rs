//! One pass over a left-padded batch of prompts: the prefill of
//! generation, and the whole of teacher-forced passes and parity checks.

use tch::{Device, Tensor};

use crate::hooks::{HookSet, Phase};
use crate::{Model, RuntimeError};

/// Token ids and positions of a left-padded batch.
pub struct Batch {
    /// `[batch, seq]` token ids (padding filled with the pad id).
    pub ids: Tensor,
    /// `[batch, seq]` position of each token in its sequence; -1 for padding.
    pub positions: Tensor,
}

impl Batch {
    /// Left-pads `prompts` to a common length.
    pub fn left_padded(prompts: &[Vec<u32>], pad_id: u32, device: Device) -> Self {
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(prompts.len() * width);
        let mut pos = Vec::with_capacity(prompts.len() * width);
        for p in prompts {
            let pad = width - p.len();
            ids.extend(std::iter::repeat_n(pad_id as i64, pad));
            ids.extend(p.iter().map(|&t| t as i64));
            pos.extend(std::iter::repeat_n(-1i64, pad));
            pos.extend(0..p.len() as i64);
        }
        let shape = [prompts.len() as i64, width as i64];
        Batch {
            ids: Tensor::from_slice(&ids).view(shape).to_device(device),
            positions: Tensor::from_slice(&pos).view(shape).to_device(device),
        }
    }
}

/// Which positions the forward pass returns logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsAt {
    Last,
    All,
}

impl Model {
    /// Logits at every position of left-padded `prompts`: `[batch, seq, vocab]`.
    pub fn logits(
        &self,
        prompts: &[Vec<u32>],
        pad_id: u32,
        hooks: &mut HookSet,
    ) -> Result<(Tensor, Batch), RuntimeError> {
        self.prefill(prompts, pad_id, hooks, LogitsAt::All)
    }

    /// One pass over left-padded `prompts` with `hooks`; logits at `at`
    /// (`Last` when only the hooks' view of the pass is wanted, since the
    /// full `[batch, seq, vocab]` logits are the largest tensor of a pass).
    pub fn prefill(
        &self,
        prompts: &[Vec<u32>],
        pad_id: u32,
        hooks: &mut HookSet,
        at: LogitsAt,
    ) -> Result<(Tensor, Batch), RuntimeError> {
        self.check_hooks(hooks)?;
        let batch = Batch::left_padded(prompts, pad_id, self.device);
        let (b, t) = (batch.ids.size()[0], batch.ids.size()[1]);
        self.config.check_length(t as usize, || {
            format!("a batch of {b} prompts, the longest")
        })?;
        let mut cache = self.new_cache(b, t)?;
        let logits = tch::no_grad(|| {
            self.forward(
                &batch.ids,
                &batch.positions,
                &mut cache,
                hooks,
                Phase::Prefill,
                at,
            )
        })?;
        Ok((logits, batch))
    }

    /// Fails when a hook refers to a layer the model does not have.
    pub(crate) fn check_hooks(&self, hooks: &HookSet) -> Result<(), RuntimeError> {
        match hooks.max_layer() {
            Some(l) if l >= self.config.num_layers => Err(RuntimeError::Request(format!(
                "a hook refers to layer {l}, but the model has {} layers (0..{})",
                self.config.num_layers,
                self.config.num_layers - 1
            ))),
            _ => Ok(()),
        }
    }
}
