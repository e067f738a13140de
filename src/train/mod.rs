//! Training primitives: masked next-token loss, gradients as values, AdamW with f32 state,
//! clipping, learning-rate schedules, accumulation, and exact in-place perturbations.
//! Methods compose these; none of it knows about scheduling or specs.

pub mod classify;
pub mod grads;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use classify::{classification_example, ClassificationLoss, FrozenPrefix};
pub use grads::{Gradients, ParamSnapshot};
pub use loss::{lm_loss, TrainBatch, IGNORE_INDEX};
pub use optim::{AdamW, AdamWConfig};
pub use schedule::{LrSchedule, ScheduleKind};
pub use trainer::{train, train_params, Example, GradientRule, PlainSft, StepLog, TrainSummary, TrainerConfig};

use crate::model::{CausalLm, ForwardOptions};
use candle_core::Var;

/// Gradients of the mean loss over micro-batches (gradient accumulation): each micro-batch's
/// gradient is weighted by its share of the supervised tokens, so the result equals the
/// gradient of one big batch. Returns the (token-weighted) mean loss too.
pub fn accumulated_gradients(
    model: &CausalLm,
    params: &[(String, Var)],
    micro_batches: &[TrainBatch],
    opts: &ForwardOptions,
) -> crate::model::Result<(f64, Gradients)> {
    let total: usize = micro_batches.iter().map(TrainBatch::num_targets).sum();
    let mut sum = Gradients::zeros(params)?;
    let mut loss_sum = 0.0;
    for mb in micro_batches {
        let loss = lm_loss(model, mb, opts)?;
        let w = mb.num_targets() as f64 / total.max(1) as f64;
        loss_sum += loss.to_scalar::<f32>()? as f64 * w;
        let g = Gradients::of(&loss, params)?;
        sum.add_scaled(&g, w)?;
    }
    Ok((loss_sum, sum))
}
