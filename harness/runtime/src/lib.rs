//! The tch transformer runtime: loads `llama` / `qwen2` model folders, runs
//! batched KV-cached generation, and exposes the residual stream through hooks.

mod cache;
mod config;
mod device;
mod error;
mod generate;
mod hooks;
mod model;
mod sampling;
mod weights;

pub use config::{ModelConfig, RopeScaling};
pub use device::{init_cuda, parse_device, parse_dtype};
pub use error::RuntimeError;
pub use generate::{generate, FinishReason, GenOutput, GenRequest};
pub use hooks::{AddVector, Capture, Hook, HookCtx, HookSet, Phase, ProjectOut, Site, Span};
pub use model::{Batch, Model};
pub use sampling::SamplingParams;

pub use tch::{Device, Kind};
