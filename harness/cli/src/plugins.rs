//! `emh plugins` and the `--intervention` option.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use emh_eval::PluginUse;
use emh_plugins::{load, Origin, PluginError, Registry};

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
    /// Loads every plugin these arguments, the environment and the built-in
    /// folder name; a `--plugin` library that does not load is an error.
    pub fn registry(&self) -> Result<Registry> {
        let reg = self.all();
        if let Some(e) = reg.failures.iter().find(|e| match e {
            PluginError::Open { path, .. } | PluginError::Version { path, .. } => {
                self.plugins.contains(path)
            }
            _ => false,
        }) {
            anyhow::bail!("--plugin {e}");
        }
        Ok(reg)
    }

    /// Every plugin that loads, with the failures beside them (for `emh plugins list`).
    fn all(&self) -> Registry {
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

impl PluginUseArgs {
    /// The plugins these arguments, the environment and the built-in folder name.
    pub fn registry(&self) -> Result<Registry> {
        self.plugins.registry()
    }

    /// The organism of --organism, if given.
    pub fn organism(&self) -> Result<Option<PluginUse>> {
        Ok(self.organism.as_deref().map(PluginUse::parse).transpose()?)
    }

    /// The interventions of --intervention, in order.
    pub fn interventions(&self) -> Result<Vec<PluginUse>> {
        Ok(self
            .interventions
            .iter()
            .map(|s| PluginUse::parse(s))
            .collect::<Result<_, _>>()?)
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
            let reg = args.all();
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
