//! AdamW, the learning-rate schedule and gradient clipping, computed as
//! PyTorch and HF compute them, so a step here is a step there.

use tch::Tensor;

use crate::config::Scheduler;

/// HF's schedule: the learning rate of optimizer step `step` (0-based) of
/// `total`. Warm-up starts at 0, so with warm-up the first step does not move.
pub fn learning_rate(base: f64, step: usize, warmup: usize, total: usize, s: Scheduler) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    match s {
        Scheduler::ConstantWithWarmup => base,
        Scheduler::Linear => {
            base * ((total - step.min(total)) as f64 / (total - warmup).max(1) as f64).max(0.0)
        }
    }
}

/// `torch.nn.utils.clip_grad_norm_`: scales every gradient by
/// `max_norm / (norm + 1e-6)` when that is below 1; returns the norm before.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> f64 {
    let norm = grads
        .iter()
        .map(|g| g.square().sum(tch::Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    if max_norm > 0.0 {
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g *= coef;
            }
        }
    }
    norm
}

/// AdamW's first and second moments of one parameter.
pub struct Moments {
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

/// AdamW's hyper-parameters.
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    /// One update of `param` by `grad` as `torch.optim.AdamW` (not fused,
    /// not amsgrad) does it, for the `step`-th update (1-based).
    pub fn update(&self, param: &mut Tensor, grad: &Tensor, m: &mut Moments, lr: f64, step: usize) {
        tch::no_grad(|| {
            let _ = param.g_mul_scalar_(1.0 - lr * self.weight_decay);
            let _ = m.exp_avg.lerp_(grad, 1.0 - self.beta1);
            let _ = m
                .exp_avg_sq
                .g_mul_scalar_(self.beta2)
                .addcmul_(grad, &grad.g_mul_scalar(1.0 - self.beta2));
            let bc1 = 1.0 - self.beta1.powi(step as i32);
            let bc2 = 1.0 - self.beta2.powi(step as i32);
            let denom = (m.exp_avg_sq.sqrt() / bc2.sqrt()) + self.eps;
            let _ = param.g_add_(&((&m.exp_avg / denom) * (-lr / bc1)));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_as_hf() {
        let lr = |s| learning_rate(1.0, s, 2, 10, Scheduler::Linear);
        let got: Vec<f64> = (0..10).map(lr).collect();
        let want = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(
            learning_rate(1.0, 5, 2, 10, Scheduler::ConstantWithWarmup),
            1.0
        );
    }

    /// Two AdamW steps against the closed form written out by hand.
    #[test]
    fn adamw_matches_the_closed_form() {
        let opt = AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut p = Tensor::from_slice(&[1.0f64, -2.0]);
        let mut m = Moments {
            exp_avg: p.zeros_like(),
            exp_avg_sq: p.zeros_like(),
        };
        let (g1, g2) = ([0.5, -1.0], [0.25, 3.0]);
        opt.update(&mut p, &Tensor::from_slice(&g1), &mut m, 0.01, 1);
        opt.update(&mut p, &Tensor::from_slice(&g2), &mut m, 0.01, 2);
        for (i, start) in [1.0f64, -2.0].into_iter().enumerate() {
            let (mut x, mut a, mut v) = (start, 0.0, 0.0);
            for (step, g) in [(1, g1[i]), (2, g2[i])] {
                x *= 1.0 - 0.01 * 0.1;
                a = 0.9 * a + 0.1 * g;
                v = 0.999 * v + 0.001 * g * g;
                let mhat = a / (1.0 - 0.9f64.powi(step));
                let vhat = v / (1.0 - 0.999f64.powi(step));
                x -= 0.01 * mhat / (vhat.sqrt() + 1e-8);
            }
            assert!((p.double_value(&[i as i64]) - x).abs() < 1e-12);
        }
    }

    #[test]
    fn clipping_scales_to_the_norm() {
        let mut g = vec![Tensor::from_slice(&[3.0f32, 4.0])];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((g[0].norm().double_value(&[]) - 1.0).abs() < 1e-5);
    }
}
