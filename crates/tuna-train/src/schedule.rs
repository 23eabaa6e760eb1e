//! Learning-rate schedules with linear warmup, exactly transformers' `get_*_schedule_with_warmup`
//! (<https://github.com/huggingface/transformers/blob/main/src/transformers/optimization.py>), so
//! loss curves can be compared with runs of transformers and torchtune.
//!
//! The multiplier is a pure function of the 0-based optimizer step, so resuming needs no
//! scheduler state beyond the step. As in transformers, the first warmup step has lr 0.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Linear decay from the peak to 0 at the last step.
    Linear,
    /// Half a cosine from the peak to 0 (`num_cycles = 0.5`).
    #[default]
    Cosine,
    /// The peak after warmup.
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak_lr: f32,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// Warmup from a ratio of all steps is rounded up, as transformers' `get_warmup_steps`, but
    /// leaves at least one step after it (a 1-step run would otherwise train at lr 0).
    pub fn new(
        kind: ScheduleKind,
        peak_lr: f32,
        total_steps: usize,
        warmup_steps: Option<usize>,
        warmup_ratio: f32,
    ) -> Self {
        let warmup_steps = warmup_steps.unwrap_or_else(|| {
            ((warmup_ratio as f64 * total_steps as f64).ceil() as usize)
                .min(total_steps.saturating_sub(1))
        });
        Schedule {
            kind,
            peak_lr,
            warmup_steps,
            total_steps,
        }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f32 {
        (self.peak_lr as f64 * self.multiplier(step)) as f32
    }

    fn multiplier(&self, step: usize) -> f64 {
        let (s, w, t) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < self.warmup_steps {
            return s / w.max(1.0);
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (s - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_schedules() {
        // Values of transformers 5 get_{linear,cosine,constant}_schedule_with_warmup(opt, 2, 10), lr 1.0.
        let lin = Schedule::new(ScheduleKind::Linear, 1.0, 10, Some(2), 0.0);
        let got: Vec<f32> = (0..10).map(|s| lin.lr(s)).collect();
        let want = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        let cos = Schedule::new(ScheduleKind::Cosine, 1.0, 10, Some(2), 0.0);
        let want = [
            0.0, 0.5, 1.0, 0.9619398, 0.8535534, 0.6913417, 0.5, 0.3086583, 0.1464466, 0.0380602,
        ];
        for (s, w) in want.iter().enumerate() {
            assert!(
                (cos.lr(s) - w).abs() < 1e-6,
                "step {s}: {} vs {w}",
                cos.lr(s)
            );
        }
        let c = Schedule::new(ScheduleKind::Constant, 2e-4, 10, None, 0.0);
        assert_eq!((c.warmup_steps, c.lr(0), c.lr(9)), (0, 2e-4, 2e-4));
    }

    #[test]
    fn warmup_ratio_rounds_up() {
        assert_eq!(
            Schedule::new(ScheduleKind::Cosine, 1.0, 101, None, 0.03).warmup_steps,
            4
        );
        assert_eq!(
            Schedule::new(ScheduleKind::Cosine, 1.0, 10, Some(3), 0.5).warmup_steps,
            3
        );
        let one = Schedule::new(ScheduleKind::Cosine, 1.0, 1, None, 0.03);
        assert_eq!((one.warmup_steps, one.lr(0)), (0, 1.0));
    }
}
