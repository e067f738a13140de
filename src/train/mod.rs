//! Training primitives: masked next-token loss, gradients as values, AdamW with f32 state,
//! clipping, learning-rate schedules, accumulation, and exact in-place perturbations.
//! Methods compose these; none of it knows about scheduling or specs.

pub mod batches;
pub mod checkpoint;
pub mod classify;
pub mod cross_entropy;
pub mod grads;
pub mod loss;
pub mod optim;
pub mod reference;
pub mod schedule;
pub mod trainer;

pub use batches::{Batch, BatchSource, EpochBatches, Order, PairBatch, ResponsePair, Step, Stream, StreamSteps, TrainItem};
pub use checkpoint::Checkpointing;
pub use classify::{classification_example, ClassificationLoss, FrozenPrefix};
pub use grads::{Gradients, ParamSnapshot};
pub use loss::{lm_loss, TrainBatch, IGNORE_INDEX};
pub use optim::{AdamW, AdamWConfig};
pub use schedule::{LrSchedule, ScheduleKind};
pub use trainer::{
    train, train_checkpointed, train_on, train_params, Example, GradientRule, PlainSft, StepLog, TrainSummary, TrainerConfig,
};

use crate::model::{CausalLm, ForwardOptions};
use candle_core::{Tensor, Var};

/// Gradient accumulation: the gradient of the weighted mean of the micro-batches' losses, each
/// micro-batch weighted by `weight(mb)` over the total (its count of supervised tokens for a
/// token-mean loss, so that the result equals the gradient of one big batch). Returns the weighted
/// mean loss too.
pub fn accumulate<B>(
    params: &[(String, Var)],
    micro_batches: &[B],
    weight: impl Fn(&B) -> usize,
    mut loss_of: impl FnMut(&B) -> crate::model::Result<Tensor>,
) -> crate::model::Result<(f64, Gradients)> {
    let total: usize = micro_batches.iter().map(&weight).sum();
    let mut sum = Gradients::zeros(params)?;
    let mut loss_sum = 0.0;
    for mb in micro_batches {
        let loss = loss_of(mb)?;
        let w = weight(mb) as f64 / total.max(1) as f64;
        loss_sum += loss.to_scalar::<f32>()? as f64 * w;
        sum.add_scaled(&Gradients::of(&loss, params)?, w)?;
    }
    Ok((loss_sum, sum))
}

/// [`accumulate`] for the masked next-token loss, weighted by supervised tokens.
pub fn accumulated_gradients(
    model: &CausalLm,
    params: &[(String, Var)],
    micro_batches: &[TrainBatch],
    opts: &ForwardOptions,
) -> crate::model::Result<(f64, Gradients)> {
    accumulate(params, micro_batches, TrainBatch::num_targets, |mb| lm_loss(model, mb, opts))
}
