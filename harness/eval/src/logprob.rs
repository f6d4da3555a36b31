//! The judge-free effect measure: over labelled pairs, how much more likely a
//! condition finds the misaligned answer than the aligned one, per token.
//!
//! For each pair, each answer's mean per-token log-probability given the
//! question (teacher-forced, exact answer span); the pair's preference is
//! misaligned − aligned, and the measure is the mean preference with a
//! Student-t 95% interval over pairs.

use emh_metrics::t_interval;
use serde::Serialize;

use crate::capture::{Pair, Side};
use crate::forced::{run_forced, Forced, ForcedOptions};
use crate::load::{Loaded, Planned};
use crate::EvalError;

/// One pair's mean per-token log-probabilities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairLogprob {
    pub id: String,
    pub misaligned: f64,
    pub aligned: f64,
}

/// The log-prob preference of one condition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preference {
    pub n: usize,
    /// Mean of misaligned − aligned over pairs.
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub pairs: Vec<PairLogprob>,
}

/// The preference of the condition `loaded` + `plans` over `pairs`.
pub fn preference(
    loaded: &mut Loaded,
    plans: &[Planned<'_>],
    pairs: &[Pair],
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Preference, EvalError> {
    let items: Vec<Forced> = pairs
        .iter()
        .flat_map(|p| [p.forced(Side::Misaligned), p.forced(Side::Aligned)])
        .collect();
    let options = ForcedOptions {
        batch_size,
        activations: false,
        logprobs: true,
        scalars: false,
    };
    let outs = run_forced(loaded, plans, &items, options, progress)?;
    let pairs: Vec<PairLogprob> = pairs
        .iter()
        .zip(outs.chunks(2))
        .map(|(p, o)| PairLogprob {
            id: p.id.clone(),
            misaligned: o[0].mean_logprob(),
            aligned: o[1].mean_logprob(),
        })
        .collect();
    let diffs: Vec<f64> = pairs.iter().map(|p| p.misaligned - p.aligned).collect();
    let Some((mean, ci_low, ci_high)) = t_interval(&diffs) else {
        return Err(EvalError::Spec {
            field: "pairs".into(),
            reason: format!("{} pair(s): an interval needs at least 2", diffs.len()),
        });
    };
    Ok(Preference {
        n: pairs.len(),
        mean,
        ci_low,
        ci_high,
        pairs,
    })
}
