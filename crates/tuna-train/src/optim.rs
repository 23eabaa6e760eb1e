//! AdamW over a list of parameter tensors, with f32 moments laid out like the gradients
//! ([`Gradients`] order), plus global-norm clipping as `torch.nn.utils.clip_grad_norm_`.
//!
//! The element-wise update is the engine's `adamw_update` (PyTorch's `torch.optim.AdamW`
//! arithmetic); this file only keeps the state. Which tensors are decayed comes from the model's
//! parameter table (`tuna_model::ParamLayout::decay_flags`).

use tuna_engine::ops::adamw::{AdamWConfig, adamw_update, grad_norm, scale_in_place};
use tuna_model::Gradients;

/// Optimizer hyper-parameters other than the learning rate (which the schedule sets per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// AdamW state: first and second moments per tensor and the number of steps taken.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub settings: AdamWSettings,
    /// `exp_avg` per tensor.
    pub m: Vec<Vec<f32>>,
    /// `exp_avg_sq` per tensor.
    pub v: Vec<Vec<f32>>,
    /// Whether weight decay applies to each tensor.
    pub decay: Vec<bool>,
    /// Steps taken (PyTorch's `state["step"]`); the next update uses `step + 1`.
    pub step: u64,
}

impl AdamW {
    /// Zero moments for tensors of `sizes`; `decay[i]` says whether tensor `i` is decayed.
    pub fn new(settings: AdamWSettings, sizes: &[usize], decay: Vec<bool>) -> Self {
        assert_eq!(
            sizes.len(),
            decay.len(),
            "AdamW::new: one decay flag per tensor"
        );
        AdamW {
            settings,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            decay,
            step: 0,
        }
    }

    /// The engine's settings for each tensor at learning rate `lr` (decay per the table).
    pub fn configs(&self, lr: f32) -> Vec<AdamWConfig> {
        let s = self.settings;
        self.decay
            .iter()
            .map(|&decay| AdamWConfig {
                lr,
                beta1: s.beta1,
                beta2: s.beta2,
                eps: s.eps,
                weight_decay: if decay { s.weight_decay } else { 0.0 },
            })
            .collect()
    }

    /// One update of every tensor with learning rate `lr`.
    pub fn update(&mut self, mut params: Vec<&mut [f32]>, grads: &Gradients, lr: f32) {
        assert_eq!(
            params.len(),
            self.m.len(),
            "AdamW::update: parameter count changed"
        );
        self.step += 1;
        for ((i, p), cfg) in params.iter_mut().enumerate().zip(self.configs(lr)) {
            adamw_update(
                p,
                &grads.tensors[i],
                &mut self.m[i],
                &mut self.v[i],
                &cfg,
                self.step,
            );
        }
    }
}

/// Global L2 norm of all gradients; when above `max_norm`, scales them by
/// `max_norm / (norm + 1e-6)` (PyTorch's `clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: Option<f32>) -> f32 {
    let norm = grad_norm(&grads.as_slices());
    if let Some(max) = max_norm {
        let coef = max as f64 / (norm as f64 + 1e-6);
        if coef < 1.0 {
            grads
                .tensors
                .iter_mut()
                .for_each(|g| scale_in_place(g, coef as f32));
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_scales_to_the_max_norm_and_leaves_small_grads_alone() {
        let mut g = Gradients {
            tensors: vec![vec![3.0, 0.0], vec![4.0]],
        };
        assert_eq!(clip_grad_norm(&mut g, Some(10.0)), 5.0);
        assert_eq!(g.tensors, vec![vec![3.0, 0.0], vec![4.0]]);
        assert_eq!(clip_grad_norm(&mut g, Some(1.0)), 5.0);
        let after = grad_norm(&g.as_slices());
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        assert_eq!(clip_grad_norm(&mut g, None), after);
    }

    #[test]
    fn first_step_matches_torch_adamw() {
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.5) with p = [1, -2], grad = [0.5, 0.25]:
        // step 1 moves every element by lr·sign(g) after decay (m̂/√v̂ = ±1): p·(1 − 0.05) − 0.1.
        let mut p = vec![1.0f32, -2.0];
        let s = AdamWSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.5,
        };
        let mut opt = AdamW::new(s, &[2], vec![true]);
        opt.update(
            vec![&mut p],
            &Gradients {
                tensors: vec![vec![0.5, 0.25]],
            },
            0.1,
        );
        assert!(
            (p[0] - 0.85).abs() < 1e-6 && (p[1] - (-2.0)).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(opt.step, 1);
        // Without decay only the Adam step remains.
        let mut p = vec![1.0f32];
        let mut opt = AdamW::new(s, &[1], vec![false]);
        opt.update(
            vec![&mut p],
            &Gradients {
                tensors: vec![vec![-1.0]],
            },
            0.1,
        );
        assert!((p[0] - 1.1).abs() < 1e-6, "{p:?}");
    }
}
