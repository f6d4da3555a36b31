//! From a condition to what runs it: the model with its adapters, and the
//! plans of its interventions.

use std::path::{Path, PathBuf};

use emh_plugin_api::{ModelShape, Plan};
use emh_plugins::{apply_adapter_controls, apply_plan, CaptureSet, Plugin, Registry};
use emh_runtime::{HookSet, Model};
use emh_text::{ChatTemplate, Tokenizer};

use crate::{EvalError, ModelRecord, ModelSpec, PluginRecord, PluginUse};

/// A loaded model with what came with it.
pub struct Loaded {
    /// The model's name: the spec's, the organism's base, or the default.
    pub name: String,
    /// The folder it was loaded from.
    pub dir: PathBuf,
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// `None` when loaded raw (no chat template).
    pub template: Option<ChatTemplate>,
    /// Every adapter folder loaded: the organism's, then the spec's.
    pub adapter_dirs: Vec<PathBuf>,
    /// The model plugin that made the organism, if one did.
    pub organism: Option<PluginRecord>,
}

impl Loaded {
    /// The model's shape, as plans are made for it.
    pub fn shape(&self) -> ModelShape {
        ModelShape {
            num_layers: self.model.config.num_layers as u32,
            hidden_size: self.model.config.hidden_size as u32,
        }
    }

    /// How the model runs, for the manifest.
    pub fn record(&self) -> ModelRecord {
        ModelRecord {
            name: self.name.clone(),
            device: format!("{:?}", self.model.device).to_lowercase(),
            dtype: match self.model.kind {
                tch::Kind::BFloat16 => "bf16",
                tch::Kind::Half => "f16",
                _ => "f32",
            }
            .into(),
        }
    }
}

/// Loads the model of `spec` (an organism's base unless `model` names one),
/// then the organism's adapters and the spec's. `raw` skips the chat template.
pub fn load_model(spec: &ModelSpec, registry: &Registry, raw: bool) -> Result<Loaded, EvalError> {
    let organism = spec
        .organism
        .as_ref()
        .map(|o| -> Result<_, EvalError> {
            let plugin = registry.get(&o.plugin)?;
            let config = o.config_text();
            let organism = plugin.organism(&config)?;
            let record = PluginRecord {
                plugin: plugin.name.clone(),
                version: plugin.version.clone(),
                config,
                notes: lines(&organism.notes),
            };
            Ok((organism, record))
        })
        .transpose()?;
    let base = organism
        .as_ref()
        .map(|o| o.0.base.as_str())
        .filter(|b| !b.is_empty());
    let name = spec
        .model
        .as_deref()
        .or(base)
        .unwrap_or(emh_models::DEFAULT_MODEL);
    let found = emh_models::resolve(name).map_err(|e| EvalError::Load {
        what: name.to_string(),
        reason: e.to_string(),
    })?;
    let device = emh_runtime::parse_device(&spec.device)?;
    if device.is_cuda() && !tch::Cuda::is_available() {
        return Err(EvalError::Load {
            what: format!("device {}", spec.device),
            reason: "CUDA is not available on this machine".into(),
        });
    }
    let config = emh_runtime::ModelConfig::from_dir(&found.dir)?;
    let kind = match (&spec.dtype, device) {
        (Some(d), _) => emh_runtime::parse_dtype(d)?,
        (None, tch::Device::Cpu) => tch::Kind::Float,
        (None, _) => config
            .torch_dtype
            .as_deref()
            .map(emh_runtime::parse_dtype)
            .transpose()?
            .unwrap_or(tch::Kind::BFloat16),
    };
    let tokenizer = Tokenizer::from_dir(&found.dir)?;
    let template = if raw {
        None
    } else {
        Some(
            ChatTemplate::from_dir(&found.dir).map_err(|e| EvalError::Load {
                what: found.dir.display().to_string(),
                reason: format!("{e} (a base model needs raw prompts)"),
            })?,
        )
    };
    let mut model = match spec.random_init {
        Some(seed) => Model::random_init(&found.dir, device, kind, seed),
        None => Model::load(&found.dir, device, kind),
    }
    .map_err(|e| EvalError::Load {
        what: found.dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut adapter_dirs = Vec::new();
    let organism_adapters = organism.iter().flat_map(|o| o.0.adapters.iter());
    for a in organism_adapters {
        let dir = Path::new(a.path.as_str());
        model
            .load_adapter(dir)
            .map_err(|e| adapter_err(dir, e))?
            .scale = a.scale;
        adapter_dirs.push(dir.to_path_buf());
    }
    for dir in &spec.adapters {
        model.load_adapter(dir).map_err(|e| adapter_err(dir, e))?;
        adapter_dirs.push(dir.clone());
    }
    Ok(Loaded {
        name: name.to_string(),
        dir: found.dir,
        model,
        tokenizer,
        template,
        adapter_dirs,
        organism: organism.map(|o| o.1),
    })
}

fn adapter_err(dir: &Path, e: emh_runtime::RuntimeError) -> EvalError {
    EvalError::Load {
        what: format!("adapter {}", dir.display()),
        reason: e.to_string(),
    }
}

fn lines(notes: &str) -> Vec<String> {
    notes.lines().map(str::to_string).collect()
}

/// An intervention's plan, with the plugin and config that made it.
pub struct Planned<'r> {
    pub plugin: &'r Plugin,
    pub config: String,
    pub plan: Plan,
}

impl Planned<'_> {
    /// The record of this plugin's use, for the manifest.
    pub fn record(&self) -> PluginRecord {
        PluginRecord {
            plugin: self.plugin.name.clone(),
            version: self.plugin.version.clone(),
            config: self.config.clone(),
            notes: lines(&self.plan.notes),
        }
    }

    /// Adds the plan's hooks (on `rows` alone, when given) to `hooks`.
    pub fn hook(
        &self,
        shape: ModelShape,
        hooks: &mut HookSet,
        rows: Option<&[usize]>,
    ) -> Result<CaptureSet, EvalError> {
        Ok(apply_plan(
            &self.plan,
            self.plugin,
            &self.config,
            shape,
            hooks,
            rows,
        )?)
    }
}

/// The plans of `interventions` for a model of `shape`, in order.
pub fn plan_all<'r>(
    interventions: &[PluginUse],
    registry: &'r Registry,
    shape: ModelShape,
) -> Result<Vec<Planned<'r>>, EvalError> {
    interventions
        .iter()
        .map(|u| {
            let plugin = registry.get(&u.plugin)?;
            let config = u.config_text();
            let plan = plugin.plan(&config, shape)?;
            Ok(Planned {
                plugin,
                config,
                plan,
            })
        })
        .collect()
}

/// Applies the adapter controls of `plans` (scaling of LoRA adapters) to the model.
pub fn control_adapters(plans: &[Planned<'_>], model: &mut Model) -> Result<(), EvalError> {
    for p in plans {
        apply_adapter_controls(&p.plan, p.plugin, model)?;
    }
    Ok(())
}
