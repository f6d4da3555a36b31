//! Plans: data that says what to do to which activations, run by the host.

use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;

/// The model a plan is made for.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub num_layers: u32,
    pub hidden_size: u32,
}

/// Where in a layer a step acts.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteKind {
    /// The residual stream entering the layer.
    ResidPre,
    /// The residual stream leaving the layer.
    ResidPost,
    /// The MLP output before it joins the residual stream.
    MlpOut,
}

/// Which tokens a step acts on.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    All,
    /// Prompt tokens.
    Prompt,
    /// Generated (answer) tokens.
    Answer,
    /// The newest token of each sequence: the last prompt token, then each generated one.
    Last,
    /// Token positions `start..end` of each sequence.
    Positions {
        start: i64,
        end: i64,
    },
}

/// What a step does.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum Op {
    /// x ← x + scale · vector.
    Add { vector: RVec<f32>, scale: f64 },
    /// x ← x − v̂ v̂ᵀ x, with v̂ the unit vector along `vector`.
    ProjectOut { vector: RVec<f32> },
    /// x ← factor · x.
    Scale { factor: f64 },
    /// Record the activation under `name`.
    Capture { name: RString },
    /// Hand a host copy of the activation to the plugin's callback with this step id.
    Callback { id: u32 },
}

/// One operation at one site of one layer.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Step {
    pub site: SiteKind,
    pub layer: u32,
    pub op: Op,
    pub at: Where,
}

/// Multiplies the output of a model organism's LoRA adapters.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct AdapterControl {
    /// The adapter's name (its folder name); empty for every adapter.
    pub adapter: RString,
    /// Adapted layers to scale; empty for all of them.
    pub layers: RVec<u32>,
    /// 0 switches those adapters off, 1 leaves them as trained.
    pub factor: f64,
}

/// An intervention's plan: activation steps, adapter controls, and JSON notes
/// for the run's record (for example the seed a random control was drawn from).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub steps: RVec<Step>,
    pub adapters: RVec<AdapterControl>,
    pub notes: RString,
}

/// One adapter of an organism.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    /// A PEFT adapter folder.
    pub path: RString,
    /// Multiplies the adapter's output.
    pub scale: f64,
}

/// A model plugin's organism: a base model and the adapters over it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Default)]
pub struct Organism {
    /// Model name or folder; empty to use the one given on the command line.
    pub base: RString,
    pub adapters: RVec<AdapterSpec>,
    /// JSON notes for the run's record.
    pub notes: RString,
}
