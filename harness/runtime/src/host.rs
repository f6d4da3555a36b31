//! The values of f32 CPU tensors as Rust slices, for emh's kernels.

use tch::{Device, Kind, Tensor};

/// How many values a contiguous f32 CPU tensor holds; panics on any other tensor.
fn checked_len(t: &Tensor) -> usize {
    assert!(
        t.is_contiguous() && t.kind() == Kind::Float && t.device() == Device::Cpu,
        "a contiguous f32 CPU tensor, not {:?} {:?} {:?}",
        t.kind(),
        t.device(),
        t.size()
    );
    t.numel()
}

/// `t` itself when it is contiguous, else a contiguous copy: at batch 16 a
/// decoding step makes some hundreds of these checks, and ATen's own
/// `contiguous` costs a dispatch each time even when it returns `t`.
pub(crate) fn contiguous(t: &Tensor) -> Tensor {
    if t.is_contiguous() {
        t.shallow_clone()
    } else {
        t.contiguous()
    }
}

/// The values of a contiguous f32 CPU tensor.
pub(crate) fn f32_slice(t: &Tensor) -> &[f32] {
    match checked_len(t) {
        0 => &[],
        // SAFETY: a contiguous f32 CPU tensor holds `n` f32 values at its
        // data pointer, alive and unmoved while `t` is borrowed.
        n => unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) },
    }
}

/// The values of a contiguous f32 CPU tensor, to write.
///
/// The tensor must not share storage with another that is read meanwhile:
/// callers pass freshly allocated tensors, or the KV cache's own.
pub(crate) fn f32_slice_mut(t: &mut Tensor) -> &mut [f32] {
    match checked_len(t) {
        0 => &mut [],
        // SAFETY: as above, and `t` is borrowed mutably.
        n => unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) },
    }
}
