//! Finds and loads plugins, and turns intervention plans into runtime hooks.
//!
//! Every plugin, built-in or third-party, goes through [`load`]: each library
//! is opened on its own (so any number of plugins of one kind live side by
//! side), its interface version is checked, and it is never unloaded.

mod execute;
mod judge;

pub use execute::{apply_adapter_controls, apply_plan, CaptureSet};
pub use judge::{Judge, JudgeProgress, Judged};

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use abi_stable::sabi_types::VersionNumber;
use abi_stable::std_types::RResult;
use emh_plugin_api::{
    JudgeBatch, JudgeIdentity, ModelShape, Organism, Plan, PluginKind, PluginModRef,
};

/// Errors finding, loading or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{path}: not a loadable emh plugin: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "{path}: built against emh plugin interface {theirs}, but this emh provides {ours}; \
         rebuild the plugin against emh-plugin-api {ours}"
    )]
    Version {
        path: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error("plugin `{plugin}`: {reason}")]
    Call { plugin: String, reason: String },
    #[error("no plugin named `{name}`; found: {found}")]
    NotFound { name: String, found: String },
}

/// Where a plugin was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Named by path on the command line.
    Explicit,
    /// In a `--plugin-dir` folder.
    PluginDir,
    /// In a folder of `EMH_PLUGIN_PATH`.
    EnvPath,
    /// Shipped beside the `emh` binary.
    BuiltIn,
}

impl Origin {
    /// Short name for listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Explicit => "path",
            Origin::PluginDir => "plugin-dir",
            Origin::EnvPath => "EMH_PLUGIN_PATH",
            Origin::BuiltIn => "built-in",
        }
    }
}

/// A loaded plugin.
pub struct Plugin {
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
    pub description: String,
    pub config_schema: String,
    pub path: PathBuf,
    pub origin: Origin,
    module: PluginModRef,
}

fn open_err(path: &Path, e: impl std::fmt::Display) -> PluginError {
    PluginError::Open {
        path: path.to_path_buf(),
        reason: e.to_string().trim().replace('\n', " "),
    }
}

/// Loads the plugin library at `path`.
pub fn load(path: &Path, origin: Origin) -> Result<Plugin, PluginError> {
    let header = lib_header_from_path(path).map_err(|e| match e {
        LibraryError::GetSymbolError { .. } => {
            open_err(path, "it exports no emh plugin (see plugins/template)")
        }
        other => open_err(path, other),
    })?;
    let version = |v| VersionNumber::new(v).map_err(|e| open_err(path, e));
    let theirs = version(header.version_strings())?;
    let ours = version(PluginModRef::VERSION_STRINGS)?;
    if theirs.major != ours.major || theirs.minor != ours.minor {
        return Err(PluginError::Version {
            path: path.to_path_buf(),
            theirs: theirs.to_string(),
            ours: ours.to_string(),
        });
    }
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|e| open_err(path, e))?;
    let info = (module.info())();
    Ok(Plugin {
        name: info.name.into(),
        version: info.version.into(),
        kind: info.kind,
        description: info.description.into(),
        config_schema: info.config_schema.into(),
        path: path.to_path_buf(),
        origin,
        module,
    })
}

fn call<T>(plugin: &str, r: RResult<T, abi_stable::std_types::RString>) -> Result<T, PluginError> {
    r.into_result().map_err(|e| PluginError::Call {
        plugin: plugin.to_string(),
        reason: e.into(),
    })
}

impl Plugin {
    /// Checks a JSON config with the plugin.
    pub fn validate(&self, config: &str) -> Result<(), PluginError> {
        call(&self.name, (self.module.validate())(config.into()))
    }

    /// The plan of an intervention plugin for this config and model.
    pub fn plan(&self, config: &str, shape: ModelShape) -> Result<Plan, PluginError> {
        if self.kind != PluginKind::Intervention {
            return Err(PluginError::Call {
                plugin: self.name.clone(),
                reason: format!("is a {} plugin, not an intervention", self.kind.as_str()),
            });
        }
        self.validate(config)?;
        call(&self.name, (self.module.plan())(config.into(), shape))
    }

    /// The organism of a model plugin for this config.
    pub fn organism(&self, config: &str) -> Result<Organism, PluginError> {
        if self.kind != PluginKind::Model {
            return Err(PluginError::Call {
                plugin: self.name.clone(),
                reason: format!("is a {} plugin, not a model plugin", self.kind.as_str()),
            });
        }
        self.validate(config)?;
        call(&self.name, (self.module.organism())(config.into()))
    }

    /// The identity of a judge plugin for this config.
    pub fn judge_identity(&self, config: &str) -> Result<JudgeIdentity, PluginError> {
        self.expect_judge()?;
        self.validate(config)?;
        let json = call(&self.name, (self.module.judge_identity())(config.into()))?;
        serde_json::from_str(&json).map_err(|e| PluginError::Call {
            plugin: self.name.clone(),
            reason: format!("its judge identity is not valid JSON: {e}"),
        })
    }

    /// Judges filled prompts with a judge plugin: one output per prompt.
    pub fn judge(&self, config: &str, prompts: &[String]) -> Result<JudgeBatch, PluginError> {
        self.expect_judge()?;
        let request = serde_json::to_string(prompts).expect("strings serialise");
        let json = call(
            &self.name,
            (self.module.judge())(config.into(), request.as_str().into()),
        )?;
        let batch: JudgeBatch = serde_json::from_str(&json).map_err(|e| PluginError::Call {
            plugin: self.name.clone(),
            reason: format!("its judge answer is not valid JSON: {e}"),
        })?;
        if batch.outputs.len() != prompts.len() {
            return Err(PluginError::Call {
                plugin: self.name.clone(),
                reason: format!(
                    "answered {} of {} prompts",
                    batch.outputs.len(),
                    prompts.len()
                ),
            });
        }
        Ok(batch)
    }

    fn expect_judge(&self) -> Result<(), PluginError> {
        if self.kind == PluginKind::Judge {
            return Ok(());
        }
        Err(PluginError::Call {
            plugin: self.name.clone(),
            reason: format!("is a {} plugin, not a judge", self.kind.as_str()),
        })
    }

    pub(crate) fn module(&self) -> PluginModRef {
        self.module
    }
}

fn is_library(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("so" | "dylib" | "dll")
    )
}

/// Plugins found, and the libraries that looked like plugins but failed to load.
#[derive(Default)]
pub struct Registry {
    pub plugins: Vec<Plugin>,
    pub failures: Vec<PluginError>,
}

/// The folder of plugins shipped with emh: beside the executable.
pub fn builtin_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

impl Registry {
    /// Loads plugins from explicit paths, `dirs`, `EMH_PLUGIN_PATH` and the
    /// built-in folder, in that order; a name found twice keeps its first.
    pub fn discover(explicit: &[PathBuf], dirs: &[PathBuf]) -> Registry {
        let mut reg = Registry::default();
        for p in explicit {
            reg.add(load(p, Origin::Explicit));
        }
        for d in dirs {
            reg.scan(d, Origin::PluginDir, |_| true);
        }
        if let Some(paths) = std::env::var_os("EMH_PLUGIN_PATH") {
            for d in std::env::split_paths(&paths) {
                reg.scan(&d, Origin::EnvPath, |_| true);
            }
        }
        if let Some(d) = builtin_dir() {
            // Only our own libraries: other shared objects may sit there too.
            reg.scan(&d, Origin::BuiltIn, |name| {
                name.contains("emh_plugin_") || name.contains("emh_judge_")
            });
        }
        reg
    }

    fn add(&mut self, r: Result<Plugin, PluginError>) {
        match r {
            Ok(p) => self.plugins.push(p),
            Err(e) => self.failures.push(e),
        }
    }

    fn scan(&mut self, dir: &Path, origin: Origin, wanted: impl Fn(&str) -> bool) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                is_library(p) && p.file_name().and_then(|n| n.to_str()).is_some_and(&wanted)
            })
            .collect();
        paths.sort();
        for p in paths {
            self.add(load(&p, origin));
        }
    }

    /// The first plugin with this name.
    pub fn get(&self, name: &str) -> Result<&Plugin, PluginError> {
        self.plugins
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| PluginError::NotFound {
                name: name.to_string(),
                found: self
                    .plugins
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}
