//! Device and dtype selection.

use tch::{Device, Kind};

use crate::RuntimeError;

/// Opens `libtorch_cuda.so` so CUDA kernels register before the first tensor.
///
/// The linker drops the library when no symbol of it is referenced directly,
/// and then CUDA looks absent. Returns whether the library was found; on a
/// CPU-only install it is not, and that is fine.
pub fn init_cuda() -> bool {
    // SAFETY: loading libtorch_cuda only runs its static initialisers, which
    // register kernels with the already loaded libtorch_cpu.
    match unsafe { libloading::Library::new("libtorch_cuda.so") } {
        Ok(lib) => {
            // Never unload: registered kernels point into the library.
            std::mem::forget(lib);
            true
        }
        Err(_) => false,
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
pub fn parse_device(s: &str) -> Result<Device, RuntimeError> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| {
                RuntimeError::Request(format!("unknown device `{s}` (cpu, cuda, cuda:N, auto)"))
            }),
    }
}

/// Parses `f32`, `bf16` or `f16` (and their torch names).
pub fn parse_dtype(s: &str) -> Result<Kind, RuntimeError> {
    match s {
        "f32" | "float32" | "float" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" | "half" => Ok(Kind::Half),
        _ => Err(RuntimeError::Request(format!(
            "unknown dtype `{s}` (f32, bf16, f16)"
        ))),
    }
}
