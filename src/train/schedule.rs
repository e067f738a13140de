//! Learning-rate schedules: linear warmup then constant, linear or cosine decay, as
//! transformers' `get_*_schedule_with_warmup`; and DeepSpeed's `WarmupDecayLR` with its default
//! log warmup (Dromedary's training config).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
    /// DeepSpeed's `WarmupDecayLR` with `warmup_type = "log"` (its default) and a minimum
    /// learning rate of 0: `lr * ln(i + 1) / ln(W)` for step `i < W`, where
    /// `W = max(2, warmup_steps)`, then `lr * max(0, (T - i) / max(1, T - W))` with `T` the total
    /// number of steps (`deepspeed/runtime/lr_schedules.py`). Optimizer step `i` (0-based) runs
    /// at the scheduler's value for `last_batch_iteration = i`, the order of the applied steps of
    /// a DeepSpeed fp16 run: its scheduler steps after each applied optimizer step, and overflowed
    /// steps (the first ones of dynamic loss scaling) advance neither. The very first step thus
    /// has learning rate 0.
    WarmupDecayLog,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrSchedule {
    /// Learning rate for optimizer step `step` (0-based), as transformers' LambdaLR computes it
    /// (DeepSpeed's scheduler for [`ScheduleKind::WarmupDecayLog`]).
    pub fn lr_at(&self, step: usize) -> f64 {
        let decay: fn(f64) -> f64 = match self.kind {
            ScheduleKind::Constant => |_: f64| 1.0,
            ScheduleKind::Linear => |progress: f64| (1.0 - progress).max(0.0),
            ScheduleKind::Cosine => |progress: f64| (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
            ScheduleKind::WarmupDecayLog => return self.base_lr * self.deepspeed_gamma(step),
        };
        let s = step as f64;
        if step < self.warmup_steps {
            return self.base_lr * s / (self.warmup_steps.max(1) as f64);
        }
        let decay_steps = (self.total_steps.saturating_sub(self.warmup_steps)).max(1) as f64;
        self.base_lr * decay((s - self.warmup_steps as f64) / decay_steps)
    }

    /// `WarmupDecayLR._get_gamma` at `last_batch_iteration = step`.
    fn deepspeed_gamma(&self, step: usize) -> f64 {
        let warmup = self.warmup_steps.max(2);
        let i = step as f64;
        if step < warmup {
            return (i + 1.0).ln() / (warmup as f64).ln();
        }
        let total = self.total_steps as f64;
        ((total - i) / (total - warmup as f64).max(1.0)).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let lin = LrSchedule { kind: ScheduleKind::Linear, base_lr: 1.0, warmup_steps: 2, total_steps: 10 };
        assert_eq!(lin.lr_at(0), 0.0);
        assert_eq!(lin.lr_at(1), 0.5);
        assert_eq!(lin.lr_at(2), 1.0);
        assert!((lin.lr_at(6) - 0.5).abs() < 1e-12);
        assert_eq!(lin.lr_at(10), 0.0);
        let cos = LrSchedule { kind: ScheduleKind::Cosine, ..lin };
        assert!((cos.lr_at(6) - 0.5).abs() < 1e-12);
        let c = LrSchedule { kind: ScheduleKind::Constant, warmup_steps: 0, ..lin };
        assert_eq!(c.lr_at(9), 1.0);
    }

    /// DeepSpeed 0.19.8's `WarmupDecayLR` values (scripts/make_schedule_reference.py): the
    /// engraving run of Dromedary, a warmup longer than the run, and the floor of 2 warmup steps.
    #[test]
    fn warmup_decay_log_matches_deepspeed() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/schedule/deepspeed_warmup_decay.json")).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 3);
        for case in cases {
            let schedule = LrSchedule {
                kind: ScheduleKind::WarmupDecayLog,
                base_lr: case["lr"].as_f64().unwrap(),
                warmup_steps: case["warmup_steps"].as_u64().unwrap() as usize,
                total_steps: case["total_steps"].as_u64().unwrap() as usize,
            };
            let expected = case["lrs"].as_array().unwrap();
            assert_eq!(expected.len(), schedule.total_steps + 2);
            for (step, want) in expected.iter().enumerate() {
                let want = want.as_f64().unwrap();
                let got = schedule.lr_at(step);
                assert!((got - want).abs() <= 1e-12 * want.abs().max(1e-12), "{} step {step}: {got} vs {want}", case["name"]);
            }
        }
        // The log warmup: the first step at 0, the learning rate reached at the end of the warmup.
        let s = LrSchedule { kind: ScheduleKind::WarmupDecayLog, base_lr: 4e-4, warmup_steps: 100, total_steps: 337 };
        assert_eq!(s.lr_at(0), 0.0);
        assert!((s.lr_at(99) - 4e-4).abs() < 1e-18 && s.lr_at(337) == 0.0);
    }
}
