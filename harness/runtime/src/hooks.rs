//! Residual-stream hooks: read or change activations during the forward pass.
//!
//! Hooks run on the model's device as tensor operations, so steering or
//! ablation on a GPU never copies activations to the host.

use std::sync::{Arc, Mutex};

use tch::{Kind, Tensor};

/// A place in the forward pass, by layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// The residual stream entering the layer.
    ResidPre(usize),
    /// The residual stream leaving the layer.
    ResidPost(usize),
    /// The MLP's output, before it is added to the residual stream.
    MlpOut(usize),
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Site::ResidPre(l) => write!(f, "resid_pre.{l}"),
            Site::ResidPost(l) => write!(f, "resid_post.{l}"),
            Site::MlpOut(l) => write!(f, "mlp_out.{l}"),
        }
    }
}

impl Site {
    /// The layer this site belongs to.
    pub fn layer(self) -> usize {
        match self {
            Site::ResidPre(l) | Site::ResidPost(l) | Site::MlpOut(l) => l,
        }
    }

    fn slot(self) -> usize {
        match self {
            Site::ResidPre(_) => 0,
            Site::ResidPost(_) => 1,
            Site::MlpOut(_) => 2,
        }
    }
}

/// Which forward pass of a generation a hook is called in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The prompt, all positions at once.
    Prefill,
    /// One generated token per sequence; `step` counts from 0.
    Decode { step: usize },
}

/// Which token positions a hook acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// Every token.
    All,
    /// Prompt tokens only.
    Prompt,
    /// Generated tokens only.
    Generated,
    /// The newest token of each sequence: the last prompt token at prefill,
    /// then each generated token.
    Last,
    /// Token positions `start..end` of each sequence (padding not counted).
    Positions { start: i64, end: i64 },
}

/// What a hook sees besides the activation.
pub struct HookCtx<'a> {
    pub site: Site,
    pub phase: Phase,
    /// Position of each token in its sequence, `[batch, seq]`; padding is -1.
    pub positions: &'a Tensor,
    /// The request each batch row belongs to (rows leave the batch as their
    /// sequences finish, so row `i` is not always request `i`).
    pub rows: &'a [usize],
}

impl HookCtx<'_> {
    /// A `[batch, seq, 1]` mask of the tokens in `span`, in `kind`; `None`
    /// when every token is in it, so callers can skip the multiply.
    pub fn span_mask(&self, span: Span, kind: Kind) -> Option<Tensor> {
        let is_prefill = self.phase == Phase::Prefill;
        match span {
            Span::All => None,
            Span::Prompt if is_prefill => None,
            Span::Generated if !is_prefill => None,
            Span::Prompt | Span::Generated => {
                Some(self.positions.zeros_like().to_kind(kind).unsqueeze(-1))
            }
            Span::Last if !is_prefill => None,
            Span::Last => {
                // Prompts are left-padded, so the last column is every prompt's last token.
                let t = self.positions.size()[1];
                let last = Tensor::arange(t, (Kind::Int64, self.positions.device())).eq(t - 1);
                Some(last.to_kind(kind).view([1, t, 1]))
            }
            Span::Positions { start, end } => Some(
                self.positions
                    .ge(start)
                    .logical_and(&self.positions.lt(end))
                    .to_kind(kind)
                    .unsqueeze(-1),
            ),
        }
    }
}

/// Code that runs at a site; returning a tensor replaces the activation.
pub trait Hook: Send {
    /// Called with the activation `[batch, seq, hidden]` at the hook's site.
    fn call(&mut self, x: &Tensor, ctx: &HookCtx) -> Option<Tensor>;

    /// Why the last call failed, if it did; the forward pass then fails with it.
    fn failure(&mut self) -> Option<String> {
        None
    }

    /// Whether the hook acts on the rows of `request`. Requests with the
    /// same prompt and the same hooks acting on them share one prompt pass.
    fn acts_on(&self, _request: usize) -> bool {
        true
    }
}

impl Hook for Box<dyn Hook> {
    fn call(&mut self, x: &Tensor, ctx: &HookCtx) -> Option<Tensor> {
        (**self).call(x, ctx)
    }

    fn failure(&mut self) -> Option<String> {
        (**self).failure()
    }

    fn acts_on(&self, request: usize) -> bool {
        (**self).acts_on(request)
    }
}

/// The hooks of one forward pass or generation, in the order they run.
#[derive(Default)]
pub struct HookSet {
    hooks: Vec<(Site, Box<dyn Hook>)>,
    /// `active[layer][slot]`: whether any hook is registered there, so the
    /// forward pass pays nothing at sites without hooks.
    active: Vec<[bool; 3]>,
    /// The first failure a hook reported.
    failure: Option<String>,
    /// The request of each batch row in the coming forward passes; empty
    /// means row `i` is request `i`.
    rows: Vec<usize>,
    /// `0..batch`, kept to lend as `HookCtx::rows` when `rows` is empty.
    identity: Vec<usize>,
}

impl HookSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a hook at `site`; hooks at one site run in the order added.
    pub fn add(&mut self, site: Site, hook: impl Hook + 'static) -> &mut Self {
        let layer = site.layer();
        if self.active.len() <= layer {
            self.active.resize(layer + 1, [false; 3]);
        }
        self.active[layer][site.slot()] = true;
        self.hooks.push((site, Box::new(hook)));
        self
    }

    /// Says which request each batch row of the coming forward passes
    /// belongs to; generation calls it as finished rows leave the batch.
    pub fn set_rows(&mut self, rows: &[usize]) {
        self.rows.clear();
        self.rows.extend_from_slice(rows);
    }

    /// Which hooks act on `request`, one flag per hook in order.
    pub fn acting_on(&self, request: usize) -> Vec<bool> {
        self.hooks.iter().map(|(_, h)| h.acts_on(request)).collect()
    }

    /// The highest layer any hook refers to.
    pub fn max_layer(&self) -> Option<usize> {
        self.hooks.iter().map(|(s, _)| s.layer()).max()
    }

    /// Runs the hooks at `site` on `x` in place.
    pub(crate) fn run(&mut self, site: Site, x: &mut Tensor, phase: Phase, positions: &Tensor) {
        let on = self
            .active
            .get(site.layer())
            .is_some_and(|slots| slots[site.slot()]);
        if !on {
            return;
        }
        let batch = positions.size()[0] as usize;
        if self.rows.is_empty() && self.identity.len() != batch {
            self.identity = (0..batch).collect();
        }
        let rows = if self.rows.is_empty() {
            &self.identity
        } else {
            &self.rows
        };
        let ctx = HookCtx {
            site,
            phase,
            positions,
            rows,
        };
        for (s, hook) in &mut self.hooks {
            if *s == site {
                if let Some(y) = hook.call(x, &ctx) {
                    *x = y;
                }
                if let Some(why) = hook.failure() {
                    self.failure
                        .get_or_insert(format!("hook at {site:?}: {why}"));
                }
            }
        }
    }

    /// Takes the first failure a hook reported since the last call.
    pub(crate) fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }
}

/// Adds `scale * vector` to the activation (steering).
pub struct AddVector {
    vector: Tensor,
    scale: f64,
    span: Span,
}

impl AddVector {
    /// Steers by `scale * vector` over `span`; `vector` has the hidden size.
    pub fn new(vector: &Tensor, scale: f64, span: Span) -> Self {
        AddVector {
            vector: vector.shallow_clone(),
            scale,
            span,
        }
    }
}

impl Hook for AddVector {
    fn call(&mut self, x: &Tensor, ctx: &HookCtx) -> Option<Tensor> {
        let delta = (&self.vector * self.scale)
            .to_device(x.device())
            .to_kind(x.kind());
        Some(match ctx.span_mask(self.span, x.kind()) {
            None => x + delta,
            Some(mask) => x + mask * delta,
        })
    }
}

/// Projects a direction out of the activation: x ← x − v̂ v̂ᵀ x (ablation).
pub struct ProjectOut {
    unit: Tensor,
    span: Span,
}

impl ProjectOut {
    /// Ablates the direction of `vector` (normalised here) over `span`.
    pub fn new(vector: &Tensor, span: Span) -> Self {
        let v = vector.to_kind(Kind::Float);
        ProjectOut {
            unit: &v / v.norm(),
            span,
        }
    }
}

impl Hook for ProjectOut {
    fn call(&mut self, x: &Tensor, ctx: &HookCtx) -> Option<Tensor> {
        // Project in f32 so the result is orthogonal to working precision.
        let unit = self.unit.to_device(x.device());
        let xf = x.to_kind(Kind::Float);
        let coeff = xf.matmul(&unit).unsqueeze(-1);
        let removed = match ctx.span_mask(self.span, Kind::Float) {
            None => coeff,
            Some(mask) => coeff * mask,
        };
        Some((xf - removed * unit).to_kind(x.kind()))
    }
}

/// Multiplies the activation by a factor.
pub struct ScaleBy {
    factor: f64,
    span: Span,
}

impl ScaleBy {
    /// Scales by `factor` over `span`.
    pub fn new(factor: f64, span: Span) -> Self {
        ScaleBy { factor, span }
    }
}

impl Hook for ScaleBy {
    fn call(&mut self, x: &Tensor, ctx: &HookCtx) -> Option<Tensor> {
        Some(match ctx.span_mask(self.span, x.kind()) {
            None => x * self.factor,
            // Inside the span x·factor, outside x: x · (1 + mask·(factor − 1)).
            Some(mask) => x * (mask * (self.factor - 1.0) + 1.0),
        })
    }
}

/// Runs a hook on the rows of some requests only, so one batch can carry
/// rows of several conditions, each with its own interventions.
pub struct OnRows<H> {
    /// `wanted[r]`: whether request `r` gets the hook.
    wanted: Vec<bool>,
    inner: H,
}

impl<H: Hook> OnRows<H> {
    /// `inner` on the rows of `requests` (request indices of the generation).
    pub fn new(requests: &[usize], inner: H) -> Self {
        let mut wanted = vec![false; requests.iter().max().map_or(0, |m| m + 1)];
        for &r in requests {
            wanted[r] = true;
        }
        OnRows { wanted, inner }
    }
}

impl<H: Hook> Hook for OnRows<H> {
    fn call(&mut self, x: &Tensor, ctx: &HookCtx) -> Option<Tensor> {
        let picked: Vec<usize> = (0..ctx.rows.len())
            .filter(|&i| self.wanted.get(ctx.rows[i]).copied().unwrap_or(false))
            .collect();
        if picked.is_empty() {
            return None;
        }
        if picked.len() == ctx.rows.len() {
            return self.inner.call(x, ctx);
        }
        // The hook sees its rows alone, exactly as if they were a batch of
        // their own; its result goes back into those rows only.
        let index = Tensor::from_slice(&picked.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .to_device(x.device());
        let rows: Vec<usize> = picked.iter().map(|&i| ctx.rows[i]).collect();
        let positions = ctx.positions.index_select(0, &index);
        let sub = HookCtx {
            site: ctx.site,
            phase: ctx.phase,
            positions: &positions,
            rows: &rows,
        };
        let y = self.inner.call(&x.index_select(0, &index), &sub)?;
        Some(x.index_copy(0, &index, &y))
    }

    fn failure(&mut self) -> Option<String> {
        self.inner.failure()
    }

    fn acts_on(&self, request: usize) -> bool {
        self.wanted.get(request).copied().unwrap_or(false)
    }
}

/// One forward pass as a capture saw it.
pub struct Captured {
    pub site: Site,
    pub phase: Phase,
    /// The request of each row of `x`.
    pub rows: Vec<usize>,
    /// Positions of `x`'s tokens, `[batch, seq]` (-1 for padding).
    pub positions: Tensor,
    /// A copy of the activation, `[batch, seq, hidden]`.
    pub x: Tensor,
}

/// Records copies of the activation, one `[batch, seq, hidden]` tensor per call.
#[derive(Clone, Default)]
pub struct Capture {
    store: Arc<Mutex<Vec<Captured>>>,
}

impl Capture {
    /// A capture with an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes what was recorded so far, leaving the store empty.
    pub fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.store.lock().expect("capture store poisoned"))
    }
}

impl Hook for Capture {
    fn call(&mut self, x: &Tensor, ctx: &HookCtx) -> Option<Tensor> {
        self.store
            .lock()
            .expect("capture store poisoned")
            .push(Captured {
                site: ctx.site,
                phase: ctx.phase,
                rows: ctx.rows.to_vec(),
                positions: ctx.positions.shallow_clone(),
                x: x.copy(),
            });
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_model;

    #[test]
    fn span_masks_follow_the_phase() {
        // Two left-padded rows of three columns; -1 is padding.
        let positions = Tensor::from_slice(&[-1i64, 0, 1, 0, 1, 2]).view([2, 3]);
        let ctx = |phase| HookCtx {
            site: Site::ResidPre(0),
            phase,
            positions: &positions,
            rows: &[0, 1],
        };
        let prefill = ctx(Phase::Prefill);
        let decode = ctx(Phase::Decode { step: 0 });
        let ones = |m: Option<Tensor>| Vec::<f32>::try_from(m.unwrap().view([-1])).unwrap();
        assert!(prefill.span_mask(Span::Prompt, Kind::Float).is_none());
        assert_eq!(
            ones(prefill.span_mask(Span::Generated, Kind::Float)),
            vec![0.0; 6]
        );
        assert!(decode.span_mask(Span::Generated, Kind::Float).is_none());
        assert_eq!(
            ones(decode.span_mask(Span::Prompt, Kind::Float)),
            vec![0.0; 6]
        );
        let last = prefill.span_mask(Span::Last, Kind::Float).unwrap();
        assert_eq!(last.size(), vec![1, 3, 1]);
        assert_eq!(ones(Some(last)), vec![0.0, 0.0, 1.0]);
        assert!(decode.span_mask(Span::Last, Kind::Float).is_none());
    }

    fn prompts(tok: &emh_text::Tokenizer) -> Vec<Vec<u32>> {
        vec![
            tok.encode("The weather today is", false).unwrap(),
            tok.encode(
                "Tell me something about the history of Rome and its emperors.",
                false,
            )
            .unwrap(),
        ]
    }

    fn random_vector(hidden: usize, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([hidden as i64], (Kind::Float, tch::Device::Cpu))
    }

    fn real_rows(x: &Tensor, positions: &Tensor) -> Tensor {
        x.index(&[Some(positions.ge(0))])
    }

    #[test]
    fn steering_shifts_the_residual_by_exactly_lambda_v() {
        let (model, tok) = test_model::load();
        let v = random_vector(model.config.hidden_size, 1);
        let (before, after) = (Capture::new(), Capture::new());
        let mut hooks = HookSet::new();
        hooks
            .add(Site::ResidPre(7), before.clone())
            .add(Site::ResidPre(7), AddVector::new(&v, 4.0, Span::All))
            .add(Site::ResidPre(7), after.clone());
        let _logits = model
            .logits(&prompts(&tok), tok.pad_id, &mut hooks)
            .unwrap();
        let (b, a) = (&before.take()[0].x, &after.take()[0].x);
        // Exact up to f32 rounding of x + 4v, whose size the outlier dims set.
        let tol = 4.0 * f32::EPSILON as f64 * a.abs().max().double_value(&[]);
        let err = (a - b - &v * 4.0).abs().max().double_value(&[]);
        assert!(
            err <= tol,
            "shift differs from 4v by {err} (tolerance {tol})"
        );
    }

    #[test]
    fn steering_with_lambda_zero_changes_nothing() {
        let (model, tok) = test_model::load();
        let v = random_vector(model.config.hidden_size, 2);
        let (base, _) = model
            .logits(&prompts(&tok), tok.pad_id, &mut HookSet::new())
            .unwrap();
        let mut hooks = HookSet::new();
        for l in 0..model.config.num_layers {
            hooks.add(Site::ResidPost(l), AddVector::new(&v, 0.0, Span::All));
        }
        let (steered, _) = model
            .logits(&prompts(&tok), tok.pad_id, &mut hooks)
            .unwrap();
        assert!(base.equal(&steered));
    }

    #[test]
    fn ablation_leaves_every_layer_orthogonal_to_the_direction() {
        let (model, tok) = test_model::load();
        let v = random_vector(model.config.hidden_size, 3);
        let unit = &v / v.norm();
        let mut hooks = HookSet::new();
        let captures: Vec<Capture> = (0..model.config.num_layers)
            .map(|_| Capture::new())
            .collect();
        for (l, c) in captures.iter().enumerate() {
            hooks
                .add(Site::ResidPost(l), ProjectOut::new(&v, Span::All))
                .add(Site::ResidPost(l), c.clone());
        }
        let (_, batch) = model
            .logits(&prompts(&tok), tok.pad_id, &mut hooks)
            .unwrap();
        for (l, c) in captures.iter().enumerate() {
            let x = real_rows(&c.take()[0].x, &batch.positions);
            let cos = x.matmul(&unit) / x.norm_scalaropt_dim(2, [-1], false);
            let worst = cos.abs().max().double_value(&[]);
            assert!(worst < 1e-5, "layer {l}: |cos| = {worst}");
        }
    }

    #[test]
    fn a_position_span_changes_only_those_tokens() {
        let (model, tok) = test_model::load();
        let v = random_vector(model.config.hidden_size, 4);
        let (plain, steered) = (Capture::new(), Capture::new());
        let mut hooks = HookSet::new();
        hooks
            .add(Site::ResidPre(3), plain.clone())
            .add(
                Site::ResidPre(3),
                AddVector::new(&v, 2.0, Span::Positions { start: 1, end: 3 }),
            )
            .add(Site::ResidPre(3), steered.clone());
        let (_, batch) = model
            .logits(&prompts(&tok), tok.pad_id, &mut hooks)
            .unwrap();
        let changed = (steered.take()[0].x.shallow_clone() - &plain.take()[0].x)
            .abs()
            .amax([-1], false)
            .gt(0.0);
        let inside = batch.positions.ge(1).logical_and(&batch.positions.lt(3));
        assert!(
            changed.equal(&inside),
            "changed {changed:?} vs span {inside:?}"
        );
    }

    #[test]
    fn a_hook_beyond_the_last_layer_is_an_error() {
        let (model, tok) = test_model::load();
        let mut hooks = HookSet::new();
        hooks.add(Site::MlpOut(model.config.num_layers), Capture::new());
        let err = model
            .logits(&prompts(&tok), tok.pad_id, &mut hooks)
            .err()
            .unwrap();
        assert!(err.to_string().contains("layer 30"), "{err}");
    }
}
