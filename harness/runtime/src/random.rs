//! Random weights that depend on their seed alone.

/// `count` draws of normal(0, std) for the tensor `name`, from generators of
/// their own: seeded by (seed, name, chunk), so the values depend on nothing
/// else a process does (torch's global generator is shared by every thread).
pub fn normal_values(seed: u64, name: &str, count: usize, std: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    const CHUNK: usize = 1 << 16;
    let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut out = vec![0f32; count];
    let chunks: Vec<(usize, &mut [f32])> = out.chunks_mut(CHUNK).enumerate().collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = chunks.len().div_ceil(threads).max(1);
    let mut chunks = chunks;
    std::thread::scope(|scope| {
        while !chunks.is_empty() {
            let mine: Vec<_> = chunks.drain(..per_thread.min(chunks.len())).collect();
            scope.spawn(move || {
                for (i, chunk) in mine {
                    let s = crate::derive_seed(seed, name_hash, i as u64);
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s);
                    // Box-Muller: two uniforms give two independent normals.
                    for pair in chunk.chunks_mut(2) {
                        let u1: f32 = 1.0 - rng.random::<f32>();
                        let u2: f32 = rng.random();
                        let r = (-2.0 * u1.ln()).sqrt() * std;
                        let t = std::f32::consts::TAU * u2;
                        pair[0] = r * t.cos();
                        if let Some(second) = pair.get_mut(1) {
                            *second = r * t.sin();
                        }
                    }
                }
            });
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_weights_are_normal_with_the_asked_spread() {
        let v = normal_values(3, "w", 100_001, 0.02);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 3e-4, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 3e-4, "std {}", var.sqrt());
        assert_eq!(v, normal_values(3, "w", 100_001, 0.02));
        assert_ne!(v, normal_values(3, "v", 100_001, 0.02));
    }

    #[test]
    fn random_init_needs_only_a_config_and_is_fixed_by_its_seed() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = serde_json::json!({
            "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6, "vocab_size": 100, "tie_word_embeddings": false
        });
        std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
        let logits = |seed| {
            let m = crate::Model::random_init(tmp.path(), tch::Device::Cpu, tch::Kind::Float, seed)
                .unwrap();
            m.logits(&[vec![1, 2, 3], vec![4]], 0, &mut crate::HookSet::new())
                .unwrap()
                .0
        };
        let a = logits(1);
        assert_eq!(a.size(), vec![2, 3, 100]);
        assert!(bool::try_from(a.isfinite().all()).unwrap());
        // Draws from torch's global generator between loads change nothing.
        tch::manual_seed(99);
        let _ = tch::Tensor::randn([1000], (tch::Kind::Float, tch::Device::Cpu));
        assert!(a.equal(&logits(1)));
        assert!(!a.equal(&logits(2)));
    }
}
