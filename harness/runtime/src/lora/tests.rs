use super::*;
use crate::hooks::{Capture, HookSet, Site};
use crate::test_model;

/// A rank-1 rsLoRA adapter on down_proj of layers 4 and 9, random weights.
fn write_adapter(dir: &Path, c: &ModelConfig) {
    std::fs::create_dir_all(dir).unwrap();
    tch::manual_seed(3);
    let opts = (Kind::Float, Device::Cpu);
    let mut tensors = Vec::new();
    for l in [4, 9] {
        let p = format!("base_model.model.model.layers.{l}.mlp.down_proj");
        tensors.push((
            format!("{p}.lora_A.weight"),
            Tensor::randn([1, c.intermediate_size as i64], opts) * 0.05,
        ));
        tensors.push((
            format!("{p}.lora_B.weight"),
            Tensor::randn([c.hidden_size as i64, 1], opts) * 0.05,
        ));
    }
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, dir.join("adapter_model.safetensors")).unwrap();
    let cfg = serde_json::json!({"peft_type": "LORA", "r": 1, "lora_alpha": 16, "use_rslora": true,
        "target_modules": ["down_proj"], "layers_to_transform": [4, 9]});
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
}

fn prompts(tok: &emh_text::Tokenizer) -> Vec<Vec<u32>> {
    vec![tok
        .encode("Should I take more of my medication?", false)
        .unwrap()]
}

#[test]
fn scale_zero_and_switching_off_give_the_base_logits_exactly() {
    let (mut model, tok) = test_model::load();
    let tmp = tempfile::tempdir().unwrap();
    write_adapter(tmp.path(), &model.config);
    let (base, _) = model
        .logits(&prompts(&tok), tok.pad_id, &mut HookSet::new())
        .unwrap();
    model.load_adapter(tmp.path()).unwrap();
    let (adapted, _) = model
        .logits(&prompts(&tok), tok.pad_id, &mut HookSet::new())
        .unwrap();
    assert!(!adapted.equal(&base), "the adapter changes nothing");
    model.adapters_mut()[0].scale = 0.0;
    let (zero, _) = model
        .logits(&prompts(&tok), tok.pad_id, &mut HookSet::new())
        .unwrap();
    assert!(zero.equal(&base), "scale 0 differs from the base model");
    model.adapters_mut()[0].scale = 1.0;
    model.adapters_mut()[0].enabled = false;
    let (off, _) = model
        .logits(&prompts(&tok), tok.pad_id, &mut HookSet::new())
        .unwrap();
    assert!(
        off.equal(&base),
        "a disabled adapter differs from the base model"
    );
}

#[test]
fn saved_adapters_load_back_identical() {
    let (mut model, tok) = test_model::load();
    let tmp = tempfile::tempdir().unwrap();
    write_adapter(&tmp.path().join("a"), &model.config);
    model.load_adapter(&tmp.path().join("a")).unwrap();
    let (first, _) = model
        .logits(&prompts(&tok), tok.pad_id, &mut HookSet::new())
        .unwrap();
    model.adapters()[0].save(&tmp.path().join("b")).unwrap();
    model.adapters_mut()[0].enabled = false;
    model.load_adapter(&tmp.path().join("b")).unwrap();
    let (second, _) = model
        .logits(&prompts(&tok), tok.pad_id, &mut HookSet::new())
        .unwrap();
    assert!(first.equal(&second));
}

#[test]
fn projecting_a_direction_out_of_b_leaves_b_orthogonal() {
    let (mut model, _) = test_model::load();
    let tmp = tempfile::tempdir().unwrap();
    write_adapter(tmp.path(), &model.config);
    let a = model.load_adapter(tmp.path()).unwrap();
    let hidden = a.weights[0].b.size()[0];
    let v = Tensor::randn([hidden], (Kind::Float, Device::Cpu));
    a.project_out_of_b(&v);
    for w in &a.weights {
        let cos = (w.b.view([-1]).dot(&v) / (w.b.norm() * v.norm())).double_value(&[]);
        assert!(cos.abs() < 1e-6, "layer {}: cos {cos}", w.layer);
    }
}

/// The stored tensor `name` of the model at `dir`, read here rather than
/// through the model, so the check below shares no code with the forward pass.
fn stored(dir: &Path, name: &str) -> Tensor {
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "safetensors") {
            if let Some((_, t)) = Tensor::read_safetensors(&f)
                .unwrap()
                .into_iter()
                .find(|(n, _)| n == name)
            {
                return t.to_kind(Kind::Float);
            }
        }
    }
    panic!("{name} not in {}", dir.display())
}

/// Each record is one value per token, and that value is A·x × scaling:
/// x, the input of down_proj, is rebuilt from the captured residual
/// stream with the layer's stored weights, and A read from the file.
#[test]
fn rank_1_scalars_are_recorded_per_token_and_adapter() {
    let (mut model, tok) = test_model::load();
    let tmp = tempfile::tempdir().unwrap();
    write_adapter(tmp.path(), &model.config);
    model.load_adapter(tmp.path()).unwrap().record_scalars = true;
    let p = prompts(&tok);
    let capture = Capture::new();
    let mut hooks = HookSet::new();
    for l in [4, 9] {
        hooks.add(Site::MlpOut(l), capture.clone());
        hooks.add(Site::ResidPost(l), capture.clone());
    }
    let _logits = model.logits(&p, tok.pad_id, &mut hooks).unwrap();
    let records = model.adapters()[0].take_scalars();
    let layers: Vec<usize> = records.iter().map(|r| r.layer).collect();
    assert_eq!(layers, vec![4, 9]);
    let captured = capture.take();
    let at = |site: Site| &captured.iter().find(|c| c.site == site).unwrap().x;
    let adapter: Vec<(String, Tensor)> =
        Tensor::read_safetensors(tmp.path().join("adapter_model.safetensors")).unwrap();
    // write_adapter's config: rsLoRA, alpha 16, r 1.
    let scaling = 16.0 / 1f64.sqrt();
    for r in &records {
        assert_eq!(r.module, Module::Down);
        assert_eq!(r.phase, Phase::Prefill);
        assert_eq!(r.values.size(), vec![1, p[0].len() as i64, 1]);
        let l = r.layer;
        // The residual stream between attention and MLP: what leaves
        // the layer minus what the MLP added to it.
        let mid = at(Site::ResidPost(l)) - at(Site::MlpOut(l));
        let layer = |n: &str| stored(&model.dir, &format!("model.layers.{l}.{n}.weight"));
        let eps = model.config.rms_norm_eps;
        let h = &mid / (mid.square().mean_dim(-1i64, true, Kind::Float) + eps).sqrt()
            * layer("post_attention_layernorm");
        let x =
            h.matmul(&layer("mlp.gate_proj").tr()).silu() * h.matmul(&layer("mlp.up_proj").tr());
        let a = &adapter
            .iter()
            .find(|(n, _)| {
                n == &format!("base_model.model.model.layers.{l}.mlp.down_proj.lora_A.weight")
            })
            .unwrap()
            .1;
        let expected = x.matmul(&a.tr()) * scaling;
        let err = (&r.values - &expected).abs().max().double_value(&[]);
        let size = expected.abs().max().double_value(&[]);
        assert!(size > 0.1, "layer {l}: A·x is too small to test ({size})");
        assert!(
            err < 1e-4 * size,
            "layer {l}: recorded scalars differ from A·x × scaling by {err} (|A·x| up to {size})"
        );
    }
    assert!(
        model.adapters()[0].take_scalars().is_empty(),
        "take empties the store"
    );
}
