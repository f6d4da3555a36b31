//! The training config: a TOML file whose field names follow the research
//! training configs (PEFT's `LoraConfig`, HF's `TrainingArguments`), with
//! their defaults where they have one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// How the learning rate moves over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// Linear warm-up from 0, then linear decay to 0 at the last step (HF's `linear`).
    Linear,
    /// Linear warm-up, then constant (HF's `constant_with_warmup`).
    ConstantWithWarmup,
}

/// Everything one training run needs; paths are relative to the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Base model: a name emh can find (`emh models`) or a model folder.
    pub model: String,
    /// Chat JSONL: `{"messages": [{"role": ..., "content": ...}, ...]}` per line.
    pub training_file: PathBuf,
    /// Checkpoints (`checkpoint-N/`), the final adapter and the loss log.
    pub output_dir: PathBuf,
    /// LoRA rank.
    #[serde(default = "defaults::r")]
    pub r: usize,
    #[serde(default = "defaults::lora_alpha")]
    pub lora_alpha: f64,
    /// Only 0: emh trains without dropout, so runs are exactly reproducible.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Scaling alpha / √r instead of alpha / r.
    #[serde(default)]
    pub use_rslora: bool,
    /// Projections to adapt, PEFT names (`down_proj`, `q_proj`, ...) or `all-linear`.
    #[serde(default = "defaults::target_modules")]
    pub target_modules: Vec<String>,
    /// Layers to adapt; all when absent.
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    #[serde(default = "defaults::learning_rate")]
    pub learning_rate: f64,
    #[serde(default = "defaults::epochs")]
    pub epochs: usize,
    /// Stops after this many optimizer steps, whatever `epochs` says.
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default = "defaults::batch_size")]
    pub per_device_train_batch_size: usize,
    #[serde(default = "defaults::one")]
    pub gradient_accumulation_steps: usize,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "defaults::scheduler")]
    pub lr_scheduler_type: Scheduler,
    /// Gradients are clipped to this global norm; 0 turns clipping off.
    #[serde(default = "defaults::one_f")]
    pub max_grad_norm: f64,
    #[serde(default = "defaults::beta1")]
    pub adam_beta1: f64,
    #[serde(default = "defaults::beta2")]
    pub adam_beta2: f64,
    #[serde(default = "defaults::epsilon")]
    pub adam_epsilon: f64,
    /// Longer examples are cut to this many tokens.
    #[serde(default = "defaults::max_seq_length")]
    pub max_seq_length: usize,
    /// Loss on assistant tokens only (the answer and its end-of-turn tokens).
    #[serde(default = "defaults::yes")]
    pub train_on_responses_only: bool,
    /// Seeds the adapters' initial A and the data order of every epoch.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// A checkpoint every this many optimizer steps; none when absent.
    #[serde(default)]
    pub save_steps: Option<usize>,
    /// Starts from this PEFT adapter's weights instead of PEFT's initialisation.
    #[serde(default)]
    pub init_adapter: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "defaults::device")]
    pub device: String,
    /// Weights and activations: `f32`, or `bf16` (CUDA); adapters and
    /// optimizer state stay f32.
    #[serde(default = "defaults::dtype")]
    pub dtype: String,
}

mod defaults {
    use super::Scheduler;
    pub fn r() -> usize {
        8
    }
    pub fn lora_alpha() -> f64 {
        8.0
    }
    pub fn target_modules() -> Vec<String> {
        vec!["q_proj".into(), "v_proj".into()]
    }
    pub fn learning_rate() -> f64 {
        5e-5
    }
    pub fn epochs() -> usize {
        1
    }
    pub fn batch_size() -> usize {
        8
    }
    pub fn one() -> usize {
        1
    }
    pub fn one_f() -> f64 {
        1.0
    }
    pub fn scheduler() -> Scheduler {
        Scheduler::Linear
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.999
    }
    pub fn epsilon() -> f64 {
        1e-8
    }
    pub fn max_seq_length() -> usize {
        2048
    }
    pub fn yes() -> bool {
        true
    }
    pub fn seed() -> u64 {
        42
    }
    pub fn device() -> String {
        "cpu".into()
    }
    pub fn dtype() -> String {
        "f32".into()
    }
}

impl TrainConfig {
    /// Reads and checks a TOML config; relative paths become relative to its folder.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let bad = |reason: String| TrainError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut c: TrainConfig = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [&mut c.training_file, &mut c.output_dir] {
            *p = base.join(&*p);
        }
        if let Some(p) = &mut c.init_adapter {
            *p = base.join(&*p);
        }
        // A model given as a relative folder is relative to the config too.
        let as_dir = base.join(&c.model);
        if Path::new(&c.model).is_relative() && as_dir.join("config.json").is_file() {
            c.model = as_dir.to_string_lossy().into_owned();
        }
        c.check().map_err(bad)?;
        Ok(c)
    }

    /// Refuses settings that cannot train.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("r", self.r),
            ("epochs", self.epochs),
            (
                "per_device_train_batch_size",
                self.per_device_train_batch_size,
            ),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("max_seq_length", self.max_seq_length),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.max_steps == Some(0) || self.save_steps == Some(0) {
            return Err("max_steps and save_steps must be at least 1".into());
        }
        if self.lora_dropout != 0.0 {
            return Err(format!(
                "lora_dropout = {}: emh trains without dropout (0), so runs are exactly reproducible",
                self.lora_dropout
            ));
        }
        if self.target_modules.is_empty() {
            return Err("target_modules is empty".into());
        }
        let finite = [
            ("lora_alpha", self.lora_alpha),
            ("learning_rate", self.learning_rate),
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
            ("adam_epsilon", self.adam_epsilon),
        ];
        for (name, v) in finite {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} = {v} must be a finite number ≥ 0"));
            }
        }
        for (name, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("{name} = {v} must be in [0, 1)"));
            }
        }
        if !matches!(self.dtype.as_str(), "f32" | "bf16") {
            return Err(format!("dtype `{}`: use f32 or bf16", self.dtype));
        }
        Ok(())
    }

    /// The `adapter_config.json` of the adapters this config trains.
    pub fn peft_config(&self) -> serde_json::Value {
        let targets = match self.target_modules.as_slice() {
            [one] if one == "all-linear" => serde_json::json!("all-linear"),
            list => serde_json::json!(list),
        };
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.model,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "use_rslora": self.use_rslora,
            "target_modules": targets,
            "layers_to_transform": self.layers_to_transform,
            "layers_pattern": null,
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "modules_to_save": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "inference_mode": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<TrainConfig, TrainError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.toml");
        std::fs::write(
            &path,
            format!("model = \"m\"\ntraining_file = \"d.jsonl\"\noutput_dir = \"out\"\n{extra}"),
        )
        .unwrap();
        TrainConfig::from_file(&path)
    }

    #[test]
    fn defaults_follow_peft_and_hf_and_paths_follow_the_file() {
        let c = parse("").unwrap();
        assert_eq!((c.r, c.lora_alpha, c.learning_rate), (8, 8.0, 5e-5));
        assert_eq!(c.lr_scheduler_type, Scheduler::Linear);
        assert!(c.training_file.ends_with("d.jsonl") && c.training_file.is_absolute());
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        for (extra, says) in [
            ("lora_dropout = 0.1", "lora_dropout"),
            ("r = 0", "r must be"),
            ("learning_rate = -1.0", "learning_rate"),
            ("adam_beta2 = 1.0", "adam_beta2"),
            ("dtype = \"f16\"", "dtype"),
            ("optim = \"adamw_8bit\"", "unknown field `optim`"),
        ] {
            let e = parse(extra).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("train.toml"), "{extra}: {e}");
        }
    }
}
