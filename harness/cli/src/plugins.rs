//! `emh plugins` and the `--intervention` option.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use emh_plugin_api::{ModelShape, Organism};
use emh_plugins::{apply_adapter_controls, apply_plan, load, Origin, Registry};
use emh_runtime::{HookSet, Model};

/// Where to look for plugins besides `EMH_PLUGIN_PATH` and the built-in folder.
#[derive(Args, Clone, Default)]
pub struct PluginArgs {
    /// A plugin library to load (repeatable).
    #[arg(long = "plugin")]
    plugins: Vec<PathBuf>,
    /// A folder of plugin libraries (repeatable).
    #[arg(long)]
    plugin_dir: Vec<PathBuf>,
}

impl PluginArgs {
    /// Loads every plugin these arguments, the environment and the built-in folder name.
    pub fn registry(&self) -> Registry {
        Registry::discover(&self.plugins, &self.plugin_dir)
    }
}

/// Plugins used on the command line: an organism and interventions.
#[derive(Args, Clone, Default)]
pub struct PluginUseArgs {
    /// NAME=CONFIG: load the model as model-plugin NAME's organism (a base
    /// model and adapters), config inline or @file.json. Example:
    /// --organism 'lora-organism={"adapters": ["./medical-r1"]}'
    #[arg(long, value_name = "NAME=CONFIG")]
    organism: Option<String>,
    /// NAME=CONFIG: run intervention plugin NAME with a JSON config, given
    /// inline or as @file.json (repeatable; applied in order). Example:
    /// --intervention 'steering={"directions": "dirs.safetensors", "layers": [12], "scale": 8}'
    #[arg(long = "intervention", value_name = "NAME=CONFIG")]
    interventions: Vec<String>,
    #[command(flatten)]
    plugins: PluginArgs,
}

/// A plugin as used: which plugin, its config and its notes.
pub struct Applied {
    pub plugin: String,
    pub version: String,
    pub config: String,
    pub notes: String,
}

/// Splits NAME=CONFIG, reading CONFIG from a file when it starts with @.
pub(crate) fn name_and_config<'a>(spec: &'a str, option: &str) -> Result<(&'a str, String)> {
    let (name, config) = spec
        .split_once('=')
        .with_context(|| format!("--{option} `{spec}`: expected NAME=CONFIG"))?;
    let config = match config.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("--{option} {name}: reading {file}"))?,
        None => config.to_string(),
    };
    Ok((name, config))
}

impl PluginUseArgs {
    /// The plugins these arguments, the environment and the built-in folder name.
    pub fn registry(&self) -> Registry {
        self.plugins.registry()
    }

    /// The organism of --organism, if given.
    pub fn organism(&self, registry: &Registry) -> Result<Option<(Organism, Applied)>> {
        let Some(spec) = &self.organism else {
            return Ok(None);
        };
        let (name, config) = name_and_config(spec, "organism")?;
        let plugin = registry.get(name)?;
        let organism = plugin.organism(&config)?;
        let applied = Applied {
            plugin: plugin.name.clone(),
            version: plugin.version.clone(),
            config,
            notes: organism.notes.to_string(),
        };
        Ok(Some((organism, applied)))
    }

    /// Adds the hooks of every requested intervention for `model` to `hooks`,
    /// and applies their adapter controls to the model's adapters.
    pub fn apply(
        &self,
        registry: &Registry,
        model: &mut Model,
        hooks: &mut HookSet,
    ) -> Result<Vec<Applied>> {
        let shape = ModelShape {
            num_layers: model.config.num_layers as u32,
            hidden_size: model.config.hidden_size as u32,
        };
        let mut applied = Vec::new();
        for spec in &self.interventions {
            let (name, config) = name_and_config(spec, "intervention")?;
            let plugin = registry.get(name)?;
            let plan = plugin.plan(&config, shape)?;
            apply_plan(&plan, plugin, &config, shape, hooks)?;
            apply_adapter_controls(&plan, plugin, model)?;
            applied.push(Applied {
                plugin: plugin.name.clone(),
                version: plugin.version.clone(),
                config,
                notes: plan.notes.to_string(),
            });
        }
        Ok(applied)
    }
}

/// `emh plugins` subcommands.
#[derive(Subcommand)]
pub enum PluginsCommand {
    /// Every plugin found: name, kind, version and where it came from.
    List(PluginArgs),
    /// Load one plugin library and explain why it does or does not load.
    Check {
        /// The plugin library (.so, .dylib or .dll).
        path: PathBuf,
        /// Also validate this JSON config (inline or @file.json).
        #[arg(long)]
        config: Option<String>,
    },
}

/// Runs an `emh plugins` subcommand.
pub fn run(cmd: PluginsCommand) -> Result<()> {
    match cmd {
        PluginsCommand::List(args) => {
            let reg = args.registry();
            if reg.plugins.is_empty() {
                println!("no plugins found");
            }
            for p in &reg.plugins {
                println!(
                    "{:<24} {:<13} {:<9} {:<16} {}\n{:<24} {}",
                    p.name,
                    p.kind.as_str(),
                    p.version,
                    p.origin.as_str(),
                    p.path.display(),
                    "",
                    p.description
                );
            }
            for e in &reg.failures {
                println!("not loaded: {e}");
            }
            Ok(())
        }
        PluginsCommand::Check { path, config } => {
            let p = load(&path, Origin::Explicit)?;
            println!(
                "{}: loads: {} {} ({} plugin, interface {})",
                path.display(),
                p.name,
                p.version,
                p.kind.as_str(),
                emh_plugin_api::INTERFACE_VERSION
            );
            println!("config schema: {}", p.config_schema);
            if let Some(c) = config {
                let c = match c.strip_prefix('@') {
                    Some(f) => {
                        std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?
                    }
                    None => c,
                };
                p.validate(&c)?;
                println!("config: valid");
            }
            Ok(())
        }
    }
}
