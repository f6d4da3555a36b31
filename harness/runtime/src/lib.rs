//! The tch transformer runtime: loads `llama` / `qwen2` model folders, runs
//! batched KV-cached generation, and exposes the residual stream through hooks.

mod cache;
mod config;
mod device;
mod error;
mod generate;
mod hooks;
mod host;
mod linear;
mod lora;
mod model;
mod prefill;
mod random;
mod sampling;
mod score;
mod weights;

pub use config::{ModelConfig, RopeScaling};
pub use device::{init_cuda, parse_device, parse_dtype};
pub use error::RuntimeError;
pub use generate::{
    derive_seed, generate, shared_prompts, Event, FinishReason, GenOutput, GenRequest,
};
pub use hooks::{
    AddVector, Capture, Captured, Hook, HookCtx, HookSet, OnRows, Phase, ProjectOut, ScaleBy, Site,
    Span,
};
pub use lora::{Adapter, LoraWeights, Module, ScalarRecord, Target};
pub use model::Model;
pub use prefill::{Batch, LogitsAt};
pub use random::normal_values;
pub use sampling::SamplingParams;
pub use score::{NumberAnswers, PromptPrefix};

pub use tch::{Device, Kind};

/// The imported default model, for unit tests that need real weights.
#[cfg(test)]
pub(crate) mod test_model {
    use std::path::PathBuf;

    /// The folder `cargo xtask setup` imports the default model into.
    pub fn dir() -> PathBuf {
        let dir = std::env::var_os("EMH_DEFAULT_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| emh_models::models_dir().join(emh_models::DEFAULT_MODEL));
        assert!(
            dir.join("config.json").is_file(),
            "default model not found at {}: run the tests with `cargo xtask test`",
            dir.display()
        );
        dir
    }

    /// The default model on CPU in f32, with its tokenizer.
    pub fn load() -> (crate::Model, emh_text::Tokenizer) {
        let dir = dir();
        let model = crate::Model::load(&dir, tch::Device::Cpu, tch::Kind::Float).unwrap();
        (model, emh_text::Tokenizer::from_dir(&dir).unwrap())
    }
}
