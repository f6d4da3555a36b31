//! LoRA adapters in PEFT format, applied beside the frozen base weights.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tch::{Device, Kind, Tensor};

use crate::hooks::Phase;
use crate::weights::WeightFiles;
use crate::{ModelConfig, RuntimeError};

/// A projection of a decoder layer that an adapter can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Module {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Module {
    const ALL: [Module; 7] = [
        Module::Q,
        Module::K,
        Module::V,
        Module::O,
        Module::Gate,
        Module::Up,
        Module::Down,
    ];

    /// The HF module name, e.g. `down_proj`.
    pub fn name(self) -> &'static str {
        match self {
            Module::Q => "q_proj",
            Module::K => "k_proj",
            Module::V => "v_proj",
            Module::O => "o_proj",
            Module::Gate => "gate_proj",
            Module::Up => "up_proj",
            Module::Down => "down_proj",
        }
    }

    fn parent(self) -> &'static str {
        match self {
            Module::Gate | Module::Up | Module::Down => "mlp",
            _ => "self_attn",
        }
    }

    /// (out_features, in_features) of this projection in a model.
    fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        match self {
            Module::Q => (q, h),
            Module::K | Module::V => (kv, h),
            Module::O => (h, q),
            Module::Gate | Module::Up => (i, h),
            Module::Down => (h, i),
        }
    }
}

/// A projection an adapter config targets, and its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub layer: usize,
    pub module: Module,
    pub out_features: usize,
    pub in_features: usize,
}

/// The A and B matrices of one adapted projection.
pub struct LoraWeights {
    pub layer: usize,
    pub module: Module,
    /// `[rank, in_features]`.
    pub a: Tensor,
    /// `[out_features, rank]`.
    pub b: Tensor,
    /// Multiplies this projection's update, on top of the adapter's `scale`.
    pub scale: f64,
}

/// A·x × scaling of one adapted projection during one forward pass:
/// `[batch, seq, rank]`, the per-token feature of a rank-1 adapter.
pub struct ScalarRecord {
    pub layer: usize,
    pub module: Module,
    pub phase: Phase,
    pub values: Tensor,
}

/// A LoRA adapter and its run-time controls.
pub struct Adapter {
    pub name: String,
    pub dir: PathBuf,
    pub rank: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub weights: Vec<LoraWeights>,
    /// Multiplies the adapter's output; 0 gives the base model exactly.
    pub scale: f64,
    /// An adapter switched off costs nothing.
    pub enabled: bool,
    /// Record A·x × scaling for every token (see [`Adapter::take_scalars`]).
    pub record_scalars: bool,
    scalars: Arc<Mutex<Vec<ScalarRecord>>>,
    config: serde_json::Value,
}

fn file_err(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Which projections an adapter's config targets, matched as PEFT matches
/// them against module names like `model.layers.3.self_attn.q_proj`.
enum Targets {
    /// A list: a module whose name is one of them or ends in `.NAME`.
    Names(Vec<String>),
    /// A string: a regular expression the whole module name must match.
    Pattern(regex::Regex),
    /// `all-linear`: every projection.
    AllLinear,
}

impl Targets {
    fn from_config(config: &serde_json::Value) -> Result<Targets, String> {
        Ok(match &config["target_modules"] {
            // PEFT's default for llama and qwen2.
            serde_json::Value::Null => Targets::Names(vec!["q_proj".into(), "v_proj".into()]),
            serde_json::Value::String(s) if s == "all-linear" => Targets::AllLinear,
            serde_json::Value::String(s) => {
                Targets::Pattern(regex::Regex::new(&format!("^(?:{s})$")).map_err(|e| {
                    format!("target_modules `{s}` is not a regular expression: {e}")
                })?)
            }
            serde_json::Value::Array(a) => Targets::Names(
                a.iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or("target_modules holds a non-string")?,
            ),
            other => {
                return Err(format!(
                    "target_modules {other} is neither a list nor a string"
                ))
            }
        })
    }

    fn wants(&self, layer: usize, module: Module) -> bool {
        let name = format!("model.layers.{layer}.{}.{}", module.parent(), module.name());
        match self {
            Targets::Names(names) => names
                .iter()
                .any(|t| name == *t || name.ends_with(&format!(".{t}"))),
            Targets::Pattern(re) => re.is_match(&name),
            Targets::AllLinear => true,
        }
    }
}

/// `layers_to_transform`: one layer or a list; `None` for every layer.
fn layers_to_transform(config: &serde_json::Value) -> Result<Option<Vec<usize>>, String> {
    let bad = || {
        format!(
            "layers_to_transform {} is not a layer or a list of layers",
            config["layers_to_transform"]
        )
    };
    match &config["layers_to_transform"] {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => Ok(Some(vec![n.as_u64().ok_or_else(bad)? as usize])),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|v| v.as_u64().map(|l| l as usize))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// `base_model.model.model.layers.{l}.{parent}.{module}.lora_{A|B}.weight` → parts.
fn parse_key(key: &str) -> Option<(usize, Module, char)> {
    let rest = key.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (_, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let which = match rest {
        "lora_A.weight" => 'A',
        "lora_B.weight" => 'B',
        _ => return None,
    };
    let module = Module::ALL.into_iter().find(|m| m.name() == module)?;
    Some((layer.parse().ok()?, module, which))
}

/// What an `adapter_config.json` says, checked against a model.
struct Settings {
    rank: usize,
    alpha: f64,
    use_rslora: bool,
    targets: Targets,
    only_layers: Option<Vec<usize>>,
}

impl Settings {
    fn from_config(config: &serde_json::Value, c: &ModelConfig) -> Result<Settings, String> {
        if config["peft_type"].as_str().unwrap_or("LORA") != "LORA" {
            return Err(format!("peft_type {} is not LORA", config["peft_type"]));
        }
        let rank = config["r"]
            .as_u64()
            .filter(|&r| r > 0)
            .ok_or("no positive integer `r`")? as usize;
        let alpha = config["lora_alpha"]
            .as_f64()
            .ok_or("no number `lora_alpha`")?;
        for key in ["rank_pattern", "alpha_pattern"] {
            if config[key].as_object().is_some_and(|o| !o.is_empty()) {
                return Err(format!("`{key}` (per-module ranks) is not supported"));
            }
        }
        if config["fan_in_fan_out"].as_bool() == Some(true) {
            return Err("fan_in_fan_out = true is not supported".into());
        }
        if !config["modules_to_save"].is_null() {
            return Err("modules_to_save is not supported".into());
        }
        let settings = Settings {
            rank,
            alpha,
            use_rslora: config["use_rslora"].as_bool().unwrap_or(false),
            targets: Targets::from_config(config)?,
            only_layers: layers_to_transform(config)?,
        };
        // As PEFT: a module gets an adapter when the config targets it; a
        // config that targets no projection of the model is refused, and
        // weights for modules it does not target are ignored.
        if !(0..c.num_layers).any(|l| Module::ALL.into_iter().any(|m| settings.wants(l, m))) {
            return Err(format!(
                "target_modules {} (layers_to_transform {}) not found in the model: it has {}",
                config["target_modules"],
                config["layers_to_transform"],
                Module::ALL.map(Module::name).join(", ")
            ));
        }
        Ok(settings)
    }

    fn wants(&self, layer: usize, module: Module) -> bool {
        self.only_layers.as_ref().is_none_or(|l| l.contains(&layer))
            && self.targets.wants(layer, module)
    }
}

impl Adapter {
    /// An adapter from its PEFT `config` (as `adapter_config.json` holds it)
    /// and weights, for a model with config `c`: every projection the config
    /// targets, and no other, with A `[r, in]` and B `[out, r]`.
    pub fn new(
        name: &str,
        config: serde_json::Value,
        weights: Vec<LoraWeights>,
        c: &ModelConfig,
    ) -> Result<Self, RuntimeError> {
        let settings = Settings::from_config(&config, c).map_err(RuntimeError::Request)?;
        let mut want: Vec<(usize, Module)> = Self::targets(&config, c)?
            .into_iter()
            .map(|t| (t.layer, t.module))
            .collect();
        let mut have: Vec<(usize, Module)> = weights.iter().map(|w| (w.layer, w.module)).collect();
        want.sort();
        have.sort();
        if want != have {
            return Err(RuntimeError::Request(format!(
                "adapter `{name}`: its config targets {} projections but {} weights were given",
                want.len(),
                have.len()
            )));
        }
        for w in &weights {
            let (out, inp) = w.module.shape(c);
            let (r, i) = (settings.rank as i64, inp as i64);
            if w.a.size() != [r, i] || w.b.size() != [out as i64, r] {
                return Err(RuntimeError::Request(format!(
                    "adapter `{name}`: layer {} {} has A {:?} and B {:?}, expected [{r}, {i}] and [{out}, {r}]",
                    w.layer,
                    w.module.name(),
                    w.a.size(),
                    w.b.size()
                )));
            }
        }
        Ok(Adapter::with_settings(
            name.to_string(),
            Path::new(name),
            settings,
            weights,
            config,
        ))
    }

    fn with_settings(
        name: String,
        dir: &Path,
        settings: Settings,
        weights: Vec<LoraWeights>,
        config: serde_json::Value,
    ) -> Adapter {
        Adapter {
            name,
            dir: dir.to_path_buf(),
            rank: settings.rank,
            alpha: settings.alpha,
            use_rslora: settings.use_rslora,
            weights,
            scale: 1.0,
            enabled: true,
            record_scalars: false,
            scalars: Default::default(),
            config,
        }
    }

    /// The projections a PEFT `config` targets in a model with config `c`, in order.
    pub fn targets(
        config: &serde_json::Value,
        c: &ModelConfig,
    ) -> Result<Vec<Target>, RuntimeError> {
        let settings = Settings::from_config(config, c).map_err(RuntimeError::Request)?;
        Ok((0..c.num_layers)
            .flat_map(|l| Module::ALL.into_iter().map(move |m| (l, m)))
            .filter(|&(l, m)| settings.wants(l, m))
            .map(|(layer, module)| {
                let (out_features, in_features) = module.shape(c);
                Target {
                    layer,
                    module,
                    out_features,
                    in_features,
                }
            })
            .collect())
    }

    /// The PEFT config this adapter was made from, written by [`Adapter::save`].
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// Loads a PEFT adapter folder (`adapter_config.json`,
    /// `adapter_model.safetensors`) for a model with config `c`.
    pub fn load(
        dir: &Path,
        c: &ModelConfig,
        device: Device,
        kind: Kind,
    ) -> Result<Self, RuntimeError> {
        let cfg_path = dir.join("adapter_config.json");
        let text =
            std::fs::read_to_string(&cfg_path).map_err(|e| file_err(&cfg_path, e.to_string()))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| file_err(&cfg_path, format!("invalid JSON: {e}")))?;
        let settings = Settings::from_config(&config, c).map_err(|r| file_err(&cfg_path, r))?;
        let wanted = |layer: usize, module: Module| settings.wants(layer, module);
        let rank = settings.rank;
        let files = WeightFiles::open_file(&dir.join("adapter_model.safetensors"))?;
        // (layer, module) → (A, B), filled as the keys come.
        let mut pairs: std::collections::BTreeMap<(usize, Module), [Option<Tensor>; 2]> =
            Default::default();
        let weights_path = dir.join("adapter_model.safetensors");
        for key in files.names() {
            let (layer, module, which) = parse_key(&key).ok_or_else(|| RuntimeError::Weight {
                path: weights_path.clone(),
                tensor: key.clone(),
                reason: "not a LoRA A/B weight of a decoder-layer projection".into(),
            })?;
            if layer >= c.num_layers {
                return Err(RuntimeError::Weight {
                    path: weights_path.clone(),
                    tensor: key,
                    reason: format!("layer {layer}, but the model has {}", c.num_layers),
                });
            }
            if !wanted(layer, module) {
                continue;
            }
            let (out, inp) = module.shape(c);
            let shape = if which == 'A' {
                [rank, inp]
            } else {
                [out, rank]
            };
            let t = files.load(&key, &shape, kind, device)?;
            if !bool::try_from(t.isfinite().all()).unwrap_or(false) {
                return Err(RuntimeError::Weight {
                    path: weights_path.clone(),
                    tensor: key,
                    reason: "holds NaN or infinite values".into(),
                });
            }
            pairs.entry((layer, module)).or_default()[usize::from(which == 'B')] = Some(t);
        }
        let mut weights = Vec::new();
        for ((layer, module), [a, b]) in pairs {
            match (a, b) {
                (Some(a), Some(b)) => weights.push(LoraWeights {
                    layer,
                    module,
                    a,
                    b,
                    scale: 1.0,
                }),
                _ => {
                    return Err(RuntimeError::Weight {
                        path: weights_path.clone(),
                        tensor: format!("layers.{layer}.{}", module.name()),
                        reason: "has only one of lora_A and lora_B".into(),
                    })
                }
            }
        }
        if weights.is_empty() {
            return Err(file_err(
                &weights_path,
                "holds no LoRA weights for the modules its config targets",
            ));
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "adapter".into());
        Ok(Adapter::with_settings(name, dir, settings, weights, config))
    }

    /// PEFT's scaling: alpha / r, or alpha / √r with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Removes the component along `direction` from every B whose output is
    /// the residual stream (o_proj, down_proj): B ← B − v̂ v̂ᵀ B.
    pub fn project_out_of_b(&mut self, direction: &Tensor) {
        let v = direction.to_kind(Kind::Float);
        let unit = (&v / v.norm()).view([-1, 1]);
        for w in &mut self.weights {
            if matches!(w.module, Module::O | Module::Down) {
                let b = w.b.to_kind(Kind::Float);
                let unit = unit.to_device(b.device());
                let projected = &b - unit.matmul(&unit.transpose(0, 1).matmul(&b));
                w.b = projected.to_kind(w.b.kind());
            }
        }
    }

    /// Takes the A·x records made since the last call.
    pub fn take_scalars(&self) -> Vec<ScalarRecord> {
        std::mem::take(&mut *self.scalars.lock().expect("scalar store poisoned"))
    }

    /// The summed update of this adapter at (`layer`, `module`) for input `x`, if it adapts it.
    pub(crate) fn delta(
        &self,
        layer: usize,
        module: Module,
        x: &Tensor,
        phase: Phase,
    ) -> Option<Tensor> {
        if !self.enabled {
            return None;
        }
        let w = self
            .weights
            .iter()
            .find(|w| w.layer == layer && w.module == module)?;
        let ax = x.matmul(&w.a.tr()) * self.scaling();
        if self.record_scalars {
            self.scalars
                .lock()
                .expect("scalar store poisoned")
                .push(ScalarRecord {
                    layer,
                    module,
                    phase,
                    values: ax.to_kind(Kind::Float),
                });
        }
        Some(ax.matmul(&w.b.tr()) * (self.scale * w.scale))
    }

    /// Writes the adapter (with its current B matrices) in PEFT format.
    pub fn save(&self, dir: &Path) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))?;
        let mut tensors = Vec::new();
        for w in &self.weights {
            let p = format!(
                "base_model.model.model.layers.{}.{}.{}",
                w.layer,
                w.module.parent(),
                w.module.name()
            );
            tensors.push((
                format!("{p}.lora_A.weight"),
                w.a.detach().to_device(Device::Cpu).contiguous(),
            ));
            tensors.push((
                format!("{p}.lora_B.weight"),
                w.b.detach().to_device(Device::Cpu).contiguous(),
            ));
        }
        let path = dir.join("adapter_model.safetensors");
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&named, &path).map_err(|e| file_err(&path, e.to_string()))?;
        let cfg = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&self.config).expect("JSON values serialize");
        std::fs::write(&cfg, text + "\n").map_err(|e| file_err(&cfg, e.to_string()))
    }
}

#[cfg(test)]
mod tests;
