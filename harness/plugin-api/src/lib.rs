//! The em-harness plugin interface.
//!
//! A plugin is a `cdylib` that exports one [`PluginModRef`] with
//! [`export_plugin!`]. Nothing but `abi_stable` types crosses the boundary:
//! configs cross as JSON text that the plugin validates, and interventions
//! return a [`Plan`] of plain data that the host runs natively on its device,
//! and judges return the distribution over their first answer token as JSON
//! ([`judge`]), which the host scores.
//! A plugin built against another version of this crate is refused at load.

pub mod config;
pub mod judge;
mod plan;

pub use abi_stable;
pub use judge::{JudgeBatch, JudgeIdentity, JudgeOutput, JudgeUsage, TokenLogprob};
pub use plan::{
    AdapterControl, AdapterSpec, ModelShape, Op, Organism, Plan, SiteKind, Step, Where,
};
pub use serde_json;

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RSliceMut, RStr, RString};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

/// The version of this interface; plugins and host must agree on major.minor.
pub const INTERFACE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a plugin is for.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// A model organism over a base model (e.g. LoRA adapters).
    Model,
    /// Turns a config into a plan that changes or reads activations.
    Intervention,
    /// Scores answers.
    Judge,
}

impl PluginKind {
    /// The lower-case name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Model => "model",
            PluginKind::Intervention => "intervention",
            PluginKind::Judge => "judge",
        }
    }
}

/// What a plugin says about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PluginInfo {
    pub name: RString,
    pub version: RString,
    pub kind: PluginKind,
    /// One line on what it does.
    pub description: RString,
    /// JSON Schema of its config.
    pub config_schema: RString,
}

/// The table of functions a plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// Name, version, kind and config schema.
    pub info: extern "C" fn() -> PluginInfo,
    /// Checks a JSON config; the error says what is wrong with it.
    pub validate: extern "C" fn(config: RStr<'_>) -> RResult<(), RString>,
    /// An intervention's plan for a model of the given shape.
    pub plan: extern "C" fn(config: RStr<'_>, shape: ModelShape) -> RResult<Plan, RString>,
    /// A model plugin's organism.
    pub organism: extern "C" fn(config: RStr<'_>) -> RResult<Organism, RString>,
    /// The code behind an [`Op::Callback`] step: changes `data` (row-major
    /// `[rows, hidden]` f32, a host copy of the activation) in place.
    pub callback: extern "C" fn(
        config: RStr<'_>,
        step: u32,
        data: RSliceMut<'_, f32>,
        rows: u64,
        hidden: u64,
    ) -> RResult<(), RString>,
    /// A judge's [`JudgeIdentity`] as JSON.
    pub judge_identity: extern "C" fn(config: RStr<'_>) -> RResult<RString, RString>,
    /// Judges filled judge prompts (a JSON array of strings); returns a
    /// [`JudgeBatch`] as JSON with one output per prompt, in order.
    #[sabi(last_prefix_field)]
    pub judge: extern "C" fn(config: RStr<'_>, prompts: RStr<'_>) -> RResult<RString, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "emh_plugin";
    const NAME: &'static str = "emh_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// What a plugin implements; [`export_plugin!`] turns it into the exported
/// function table, with panics turned into errors. An intervention implements
/// `plan` (and `callback` if its plans use one); a model plugin `organism`;
/// a judge `judge_identity` and `judge`.
pub trait Plugin {
    /// Name, version, kind, description and config schema.
    fn info() -> PluginInfo;
    /// Checks a config.
    fn validate(config: &str) -> Result<(), String>;
    /// An intervention's plan for a config and a model shape.
    fn plan(config: &str, shape: ModelShape) -> Result<Plan, String> {
        let _ = (config, shape);
        Err("this plugin is not an intervention".into())
    }
    /// Runs a callback step of this plugin's plan.
    fn callback(
        config: &str,
        step: u32,
        data: &mut [f32],
        rows: usize,
        hidden: usize,
    ) -> Result<(), String> {
        let _ = (config, data, rows, hidden);
        Err(format!("this plugin has no callback (step {step})"))
    }
    /// A model plugin's organism: which base model and adapters.
    fn organism(config: &str) -> Result<Organism, String> {
        let _ = config;
        Err("this plugin is not a model plugin".into())
    }
    /// A judge's identity for a config.
    fn judge_identity(config: &str) -> Result<JudgeIdentity, String> {
        let _ = config;
        Err("this plugin is not a judge".into())
    }
    /// Judges filled prompts: one output per prompt, in order. A prompt that
    /// fails after every retry is a [`JudgeOutput::Failed`], not an error of
    /// the batch, so the others are kept.
    fn judge(config: &str, prompts: &[String]) -> Result<JudgeBatch, String> {
        let _ = (config, prompts);
        Err("this plugin is not a judge".into())
    }
}

/// Runs `f`, turning a panic into an error that says so.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> RResult<T, RString> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            RResult::RErr(format!("plugin panicked in {what}: {msg}").into())
        }
    }
}

/// Exports a [`Plugin`] implementation as this library's plugin.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        mod __emh_plugin_export {
            use super::*;
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            use $crate::abi_stable::std_types::{RResult, RSliceMut, RStr, RString};

            extern "C" fn info() -> $crate::PluginInfo {
                <$ty as $crate::Plugin>::info()
            }
            extern "C" fn organism(config: RStr<'_>) -> RResult<$crate::Organism, RString> {
                $crate::guard("organism", || {
                    <$ty as $crate::Plugin>::organism(config.as_str())
                })
            }
            extern "C" fn validate(config: RStr<'_>) -> RResult<(), RString> {
                $crate::guard("validate", || {
                    <$ty as $crate::Plugin>::validate(config.as_str())
                })
            }
            extern "C" fn plan(
                config: RStr<'_>,
                shape: $crate::ModelShape,
            ) -> RResult<$crate::Plan, RString> {
                $crate::guard("plan", || {
                    <$ty as $crate::Plugin>::plan(config.as_str(), shape)
                })
            }
            extern "C" fn callback(
                config: RStr<'_>,
                step: u32,
                mut data: RSliceMut<'_, f32>,
                rows: u64,
                hidden: u64,
            ) -> RResult<(), RString> {
                $crate::guard("callback", || {
                    <$ty as $crate::Plugin>::callback(
                        config.as_str(),
                        step,
                        data.as_mut_slice(),
                        rows as usize,
                        hidden as usize,
                    )
                })
            }

            extern "C" fn judge_identity(config: RStr<'_>) -> RResult<RString, RString> {
                $crate::guard("judge_identity", || {
                    let id = <$ty as $crate::Plugin>::judge_identity(config.as_str())?;
                    $crate::serde_json::to_string(&id)
                        .map(RString::from)
                        .map_err(|e| e.to_string())
                })
            }
            extern "C" fn judge(config: RStr<'_>, prompts: RStr<'_>) -> RResult<RString, RString> {
                $crate::guard("judge", || {
                    let prompts: Vec<String> = $crate::serde_json::from_str(prompts.as_str())
                        .map_err(|e| {
                            format!("judge prompts are not a JSON array of strings: {e}")
                        })?;
                    let batch = <$ty as $crate::Plugin>::judge(config.as_str(), &prompts)?;
                    if batch.outputs.len() != prompts.len() {
                        return Err(format!(
                            "the judge answered {} of {} prompts",
                            batch.outputs.len(),
                            prompts.len()
                        ));
                    }
                    $crate::serde_json::to_string(&batch)
                        .map(RString::from)
                        .map_err(|e| e.to_string())
                })
            }

            #[$crate::abi_stable::export_root_module]
            pub fn get_library() -> $crate::PluginModRef {
                $crate::PluginMod {
                    info,
                    validate,
                    plan,
                    organism,
                    callback,
                    judge_identity,
                    judge,
                }
                .leak_into_prefix()
            }
        }
    };
}
