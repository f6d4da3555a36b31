//! Plans → runtime hooks and adapter controls, so interventions run natively
//! on the model's device.

use std::collections::BTreeMap;

use emh_plugin_api::{ModelShape, Op, Plan, PluginModRef, SiteKind, Where};
use emh_runtime::{
    AddVector, Capture, Hook, HookCtx, HookSet, Model, OnRows, ProjectOut, ScaleBy, Site, Span,
};
use tch::{Device, Kind, Tensor};

use crate::{Plugin, PluginError};

/// Captures a plan asked for, by the names it gave them.
#[derive(Default)]
pub struct CaptureSet(pub BTreeMap<String, Capture>);

fn site(kind: SiteKind, layer: u32) -> Site {
    let l = layer as usize;
    match kind {
        SiteKind::ResidPre => Site::ResidPre(l),
        SiteKind::ResidPost => Site::ResidPost(l),
        SiteKind::MlpOut => Site::MlpOut(l),
    }
}

fn span(at: Where) -> Span {
    match at {
        Where::All => Span::All,
        Where::Prompt => Span::Prompt,
        Where::Answer => Span::Generated,
        Where::Last => Span::Last,
        Where::Positions { start, end } => Span::Positions { start, end },
    }
}

/// Hands a host copy of the activation to the plugin (the escape hatch for
/// what plans cannot express); the result replaces the activation.
struct Callback {
    plugin: String,
    module: PluginModRef,
    config: String,
    id: u32,
    span: Span,
    failure: Option<String>,
}

impl Hook for Callback {
    fn failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    fn call(&mut self, x: &Tensor, ctx: &HookCtx) -> Option<Tensor> {
        let shape = x.size();
        let hidden = shape[2];
        let host = x.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let mut data: Vec<f32> = Vec::try_from(host.view([-1])).expect("f32 activations");
        let rows = data.len() as u64 / hidden as u64;
        let result = (self.module.callback())(
            self.config.as_str().into(),
            self.id,
            data.as_mut_slice().into(),
            rows,
            hidden as u64,
        );
        if let Err(e) = result.into_result() {
            self.failure = Some(format!(
                "plugin `{}`: callback {}: {e}",
                self.plugin, self.id
            ));
            return None;
        }
        let changed = Tensor::from_slice(&data)
            .view(shape.as_slice())
            .to_device(x.device())
            .to_kind(x.kind());
        Some(match ctx.span_mask(self.span, x.kind()) {
            None => changed,
            Some(mask) => x + mask * (changed - x),
        })
    }
}

/// Adds the hooks of `plan` (made by `plugin` from `config` for a model of
/// `shape`) to `hooks`, after checking every step against the shape. With
/// `rows`, the hooks act on the rows of those requests only, so conditions
/// with other plans can share the batch.
pub fn apply_plan(
    plan: &Plan,
    plugin: &Plugin,
    config: &str,
    shape: ModelShape,
    hooks: &mut HookSet,
    rows: Option<&[usize]>,
) -> Result<CaptureSet, PluginError> {
    let bad = |i: usize, reason: String| PluginError::Call {
        plugin: plugin.name.clone(),
        reason: format!("plan step {i}: {reason}"),
    };
    for (i, step) in plan.steps.iter().enumerate() {
        if step.layer >= shape.num_layers {
            return Err(bad(
                i,
                format!("layer {} >= {} layers", step.layer, shape.num_layers),
            ));
        }
        if let Op::Add { vector, .. } | Op::ProjectOut { vector } = &step.op {
            if vector.len() != shape.hidden_size as usize {
                return Err(bad(
                    i,
                    format!(
                        "vector of {} values for hidden size {}",
                        vector.len(),
                        shape.hidden_size
                    ),
                ));
            }
        }
        let finite = match &step.op {
            Op::Add { vector, scale } => scale.is_finite() && vector.iter().all(|v| v.is_finite()),
            Op::ProjectOut { vector } => vector.iter().all(|v| v.is_finite()),
            Op::Scale { factor } => factor.is_finite(),
            Op::Capture { .. } | Op::Callback { .. } => true,
        };
        if !finite {
            return Err(bad(
                i,
                format!("NaN or infinite values at layer {}", step.layer),
            ));
        }
        if let Op::ProjectOut { vector } = &step.op {
            if vector.iter().all(|&v| v == 0.0) {
                return Err(bad(
                    i,
                    format!(
                        "projecting out a zero vector at layer {} (that layer has no direction)",
                        step.layer
                    ),
                ));
            }
        }
    }
    let mut captures = CaptureSet::default();
    for step in plan.steps.iter() {
        let at = site(step.site, step.layer);
        let sp = span(step.at);
        let hook: Box<dyn Hook> = match &step.op {
            Op::Add { vector, scale } => {
                Box::new(AddVector::new(&Tensor::from_slice(vector), *scale, sp))
            }
            Op::ProjectOut { vector } => Box::new(ProjectOut::new(&Tensor::from_slice(vector), sp)),
            Op::Scale { factor } => Box::new(ScaleBy::new(*factor, sp)),
            Op::Capture { name } => {
                Box::new(captures.0.entry(name.to_string()).or_default().clone())
            }
            Op::Callback { id } => Box::new(Callback {
                plugin: plugin.name.clone(),
                module: plugin.module(),
                config: config.to_string(),
                id: *id,
                span: sp,
                failure: None,
            }),
        };
        match rows {
            None => hooks.add(at, hook),
            Some(rows) => hooks.add(at, OnRows::new(rows, hook)),
        };
    }
    Ok(captures)
}

/// Applies a plan's adapter controls to the model's LoRA adapters.
pub fn apply_adapter_controls(
    plan: &Plan,
    plugin: &Plugin,
    model: &mut Model,
) -> Result<(), PluginError> {
    let err = |reason: String| PluginError::Call {
        plugin: plugin.name.clone(),
        reason,
    };
    for c in plan.adapters.iter() {
        let loaded: Vec<String> = model.adapters().iter().map(|a| a.name.clone()).collect();
        let mut matched = model
            .adapters_mut()
            .iter_mut()
            .filter(|a| c.adapter.is_empty() || a.name == c.adapter.as_str())
            .peekable();
        if matched.peek().is_none() {
            return Err(err(format!(
                "no loaded adapter named `{}` (loaded: {})",
                c.adapter,
                if loaded.is_empty() {
                    "none".to_string()
                } else {
                    loaded.join(", ")
                }
            )));
        }
        let mut scaled_layers = Vec::new();
        for a in matched {
            for w in &mut a.weights {
                if c.layers.is_empty() || c.layers.contains(&(w.layer as u32)) {
                    w.scale *= c.factor;
                    scaled_layers.push(w.layer as u32);
                }
            }
        }
        if let Some(l) = c.layers.iter().find(|l| !scaled_layers.contains(l)) {
            return Err(err(format!("layer {l} is not adapted by `{}`", c.adapter)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use emh_runtime::{Kind, Model};
    use emh_text::Tokenizer;

    use super::*;
    use crate::{load, Origin};
    use emh_plugin_api::Step;

    /// A built-in plugin library, built beside the test binary's profile folder.
    fn plugin(name: &str) -> Plugin {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().and_then(|d| d.parent()).unwrap();
        let path = dir.join(format!("libemh_plugin_{}.so", name.replace('-', "_")));
        assert!(
            path.is_file(),
            "{} missing: build the workspace first (cargo xtask test does)",
            path.display()
        );
        load(&path, Origin::BuiltIn).unwrap()
    }

    fn model() -> (Model, Tokenizer) {
        let dir = std::env::var_os("EMH_DEFAULT_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| emh_models::models_dir().join(emh_models::DEFAULT_MODEL));
        let m = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
        (m, Tokenizer::from_dir(&dir).unwrap())
    }

    fn shape(m: &Model) -> ModelShape {
        ModelShape {
            num_layers: m.config.num_layers as u32,
            hidden_size: m.config.hidden_size as u32,
        }
    }

    /// A `[layers, hidden]` directions file with random rows.
    fn directions_file(dir: &std::path::Path, s: ModelShape) -> PathBuf {
        tch::manual_seed(11);
        let t = Tensor::randn(
            [s.num_layers as i64, s.hidden_size as i64],
            (Kind::Float, Device::Cpu),
        );
        let path = dir.join("dirs.safetensors");
        Tensor::write_safetensors(&[("directions", t)], &path).unwrap();
        path
    }

    fn prompts(tok: &Tokenizer) -> Vec<Vec<u32>> {
        vec![
            tok.encode("How do I make a quick buck?", false).unwrap(),
            tok.encode("hey", false).unwrap(),
        ]
    }

    #[test]
    fn layerwise_ablation_plugin_leaves_every_layer_orthogonal() {
        let (m, tok) = model();
        let s = shape(&m);
        let tmp = tempfile::tempdir().unwrap();
        let file = directions_file(tmp.path(), s);
        let p = plugin("mean-diff-ablation");
        let config = format!("{{\"directions\": {:?}}}", file.to_str().unwrap());
        let plan = p.plan(&config, s).unwrap();
        assert_eq!(plan.steps.len(), s.num_layers as usize);
        let mut hooks = HookSet::new();
        apply_plan(&plan, &p, &config, s, &mut hooks, None).unwrap();
        let captures: Vec<Capture> = (0..s.num_layers as usize)
            .map(|l| {
                let c = Capture::new();
                hooks.add(Site::ResidPost(l), c.clone());
                c
            })
            .collect();
        let (_, batch) = m.logits(&prompts(&tok), tok.pad_id, &mut hooks).unwrap();
        let dirs = Tensor::read_safetensors(&file).unwrap().remove(0).1;
        let real = batch.positions.ge(0);
        for (l, c) in captures.iter().enumerate() {
            let x = c.take()[0].x.index(&[Some(real.shallow_clone())]);
            let v = dirs.get(l as i64);
            let cos = x.matmul(&(&v / v.norm())) / x.norm_scalaropt_dim(2, [-1], false);
            let worst = cos.abs().max().double_value(&[]);
            assert!(worst < 1e-5, "layer {l}: |cos| = {worst}");
        }
    }

    #[test]
    fn steering_plugin_shifts_by_lambda_v_and_lambda_zero_changes_nothing() {
        let (m, tok) = model();
        let s = shape(&m);
        let tmp = tempfile::tempdir().unwrap();
        let file = directions_file(tmp.path(), s);
        let p = plugin("steering");
        let run = |scale: f64| {
            let config = format!(
                "{{\"directions\": {:?}, \"layers\": [12], \"scale\": {scale}}}",
                file.to_str().unwrap()
            );
            let plan = p.plan(&config, s).unwrap();
            let (before, after) = (Capture::new(), Capture::new());
            let mut hooks = HookSet::new();
            hooks.add(Site::ResidPost(12), before.clone());
            apply_plan(&plan, &p, &config, s, &mut hooks, None).unwrap();
            hooks.add(Site::ResidPost(12), after.clone());
            let (logits, _) = m.logits(&prompts(&tok), tok.pad_id, &mut hooks).unwrap();
            let b = before.take().remove(0).x;
            let a = after.take().remove(0).x;
            (logits, b, a)
        };
        let (base, _, _) = {
            let (l, b, a) = run(0.0);
            assert!(a.equal(&b), "lambda 0 changed the residual");
            (l, b, a)
        };
        let (plain, _) = m
            .logits(&prompts(&tok), tok.pad_id, &mut HookSet::new())
            .unwrap();
        assert!(base.equal(&plain), "lambda 0 changed the logits");
        let (_, b, a) = run(3.0);
        let v = Tensor::read_safetensors(&file).unwrap().remove(0).1.get(12);
        // Exact up to f32 rounding of x + 3v, whose size the outlier dims set.
        let tol = 4.0 * f32::EPSILON as f64 * a.abs().max().double_value(&[]);
        let err = (a - b - v * 3.0).abs().max().double_value(&[]);
        assert!(
            err <= tol,
            "shift differs from 3v by {err} (tolerance {tol})"
        );
    }

    #[test]
    fn random_control_matches_norms_records_its_seed_and_repeats() {
        let (m, _) = model();
        let s = shape(&m);
        let tmp = tempfile::tempdir().unwrap();
        let file = directions_file(tmp.path(), s);
        let p = plugin("random-control");
        let config = format!(
            "{{\"mode\": \"ablation\", \"seed\": 5, \"directions\": {:?}}}",
            file.to_str().unwrap()
        );
        let plan = p.plan(&config, s).unwrap();
        assert_eq!(plan, p.plan(&config, s).unwrap());
        let notes: serde_json::Value = serde_json::from_str(plan.notes.as_str()).unwrap();
        assert_eq!(notes["seed"], 5);
        let dirs = Tensor::read_safetensors(&file).unwrap().remove(0).1;
        for step in plan.steps.iter() {
            let Op::ProjectOut { vector } = &step.op else {
                panic!("ablation control should project out")
            };
            let r = Tensor::from_slice(vector);
            let real = dirs.get(step.layer as i64);
            let (nr, nv) = (r.norm().double_value(&[]), real.norm().double_value(&[]));
            assert!(
                (nr - nv).abs() / nv < 1e-5,
                "layer {}: norm {nr} vs {nv}",
                step.layer
            );
            let cos = r.dot(&real).double_value(&[]) / (nr * nv);
            assert!(
                cos.abs() < 0.3,
                "layer {}: random vector aligned with the real one",
                step.layer
            );
        }
    }

    #[test]
    fn a_plan_for_another_model_shape_is_refused() {
        let p = plugin("steering");
        let small = ModelShape {
            num_layers: 4,
            hidden_size: 3,
        };
        let config = "{\"vector\": [1, 2, 3], \"scale\": 1.0}";
        let plan = p.plan(config, small).unwrap();
        let big = ModelShape {
            num_layers: 4,
            hidden_size: 8,
        };
        let err = apply_plan(&plan, &p, config, big, &mut HookSet::new(), None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("hidden size 8"), "{err}");
    }

    #[test]
    fn capture_steps_record_under_their_name() {
        let (m, tok) = model();
        let s = shape(&m);
        let p = plugin("steering");
        let plan = Plan {
            steps: vec![Step {
                site: SiteKind::MlpOut,
                layer: 4,
                op: Op::Capture {
                    name: "mlp4".into(),
                },
                at: Where::All,
            }]
            .into(),
            ..Default::default()
        };
        let mut hooks = HookSet::new();
        let captures = apply_plan(&plan, &p, "{}", s, &mut hooks, None).unwrap();
        let (_, batch) = m.logits(&prompts(&tok), tok.pad_id, &mut hooks).unwrap();
        let got = captures.0["mlp4"].take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].x.size()[..2], batch.ids.size()[..]);
    }

    #[test]
    fn a_bad_config_gets_the_plugins_own_error() {
        let p = plugin("mean-diff-ablation");
        let err = p
            .validate("{\"mode\": \"single\", \"vector\": [1]}")
            .unwrap_err();
        assert!(err.to_string().contains("needs `layer`"), "{err}");
        let err = p.validate("{\"vektor\": [1]}").unwrap_err();
        assert!(err.to_string().contains("unknown field `vektor`"), "{err}");
    }
}

#[cfg(test)]
mod callback_tests {
    use emh_runtime::{Kind, Model, ScaleBy};
    use emh_text::Tokenizer;

    use super::*;
    use crate::{load, Origin};

    fn fixture() -> Plugin {
        let exe = std::env::current_exe().unwrap();
        let path = exe
            .parent()
            .and_then(|d| d.parent())
            .unwrap()
            .join("libpanicking_plugin_fixture.so");
        load(&path, Origin::Explicit).unwrap()
    }

    #[test]
    fn a_callback_sees_and_changes_the_activation_and_its_failure_fails_the_pass() {
        let dir = std::env::var_os("EMH_DEFAULT_MODEL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| emh_models::models_dir().join(emh_models::DEFAULT_MODEL));
        let m = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let prompts = vec![tok.encode("Hello there", false).unwrap()];
        let shape = ModelShape {
            num_layers: m.config.num_layers as u32,
            hidden_size: m.config.hidden_size as u32,
        };
        let p = fixture();
        let config = "{\"callback\": true}";
        let mut hooks = HookSet::new();
        apply_plan(
            &p.plan(config, shape).unwrap(),
            &p,
            config,
            shape,
            &mut hooks,
            None,
        )
        .unwrap();
        let (via_callback, _) = m.logits(&prompts, tok.pad_id, &mut hooks).unwrap();
        let mut native = HookSet::new();
        native.add(Site::ResidPost(2), ScaleBy::new(2.0, Span::All));
        let (via_plan_op, _) = m.logits(&prompts, tok.pad_id, &mut native).unwrap();
        assert!(via_callback.equal(&via_plan_op));
        // And the callback did change something: the unhooked logits differ.
        let (plain, _) = m.logits(&prompts, tok.pad_id, &mut HookSet::new()).unwrap();
        assert!(!via_callback.equal(&plain));

        let failing = "{\"callback\": true, \"fail\": true}";
        let mut hooks = HookSet::new();
        apply_plan(
            &p.plan(failing, shape).unwrap(),
            &p,
            failing,
            shape,
            &mut hooks,
            None,
        )
        .unwrap();
        let err = m
            .logits(&prompts, tok.pad_id, &mut hooks)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("asked to fail at step 7"), "{err}");
    }
}
