//! Per-token logits and sequence log-probabilities at a batch's supervised positions: of the
//! model being trained, and of the frozen reference (the model before this stage, through
//! `ForwardOptions::reference`), for KL terms and DPO. The reference shares the base weights
//! with the trained model: only the adapters' loaded values are kept aside.

use candle_core::{DType, Tensor, D};

use super::loss::{supervised_positions, TrainBatch};
use crate::model::{CausalLm, ForwardOptions, ModelError, PaddedBatch, Padding, Result};

/// Logits at the supervised positions of `batch` (`[N, V]`, N = its supervised targets, in row
/// order), the targets there (`[N]`), and the sequence each position belongs to.
pub struct TokenLogits {
    pub logits: Tensor,
    pub targets: Tensor,
    pub sequence: Vec<usize>,
    pub sequences: usize,
}

pub fn token_logits(model: &CausalLm, batch: &TrainBatch, opts: &ForwardOptions) -> Result<TokenLogits> {
    let padded = PaddedBatch::new(&batch.input_ids, 0, Padding::Right, &model.device)?;
    let width = padded.ids.dim(1)?;
    let (rows, targets) = supervised_positions(batch, width);
    if rows.is_empty() {
        return Err(ModelError::Input("the batch has no supervised token (all labels are -100)".into()));
    }
    let hidden = model.forward_hidden(&padded.ids, &padded.positions, &padded.valid, None, opts)?;
    let picked = hidden.flatten_to(1)?.index_select(&Tensor::new(rows.as_slice(), &model.device)?, 0)?;
    let logits = model.logits(&picked, opts)?.to_dtype(DType::F32)?;
    let sequence = rows.iter().map(|&r| r as usize / width).collect();
    Ok(TokenLogits { logits, targets: Tensor::new(targets.as_slice(), &model.device)?, sequence, sequences: batch.input_ids.len() })
}

/// The reference model's [`token_logits`], detached.
pub fn reference_token_logits(model: &CausalLm, batch: &TrainBatch, opts: &ForwardOptions) -> Result<TokenLogits> {
    let mut t = token_logits(model, batch, &opts.reference())?;
    t.logits = t.logits.detach();
    Ok(t)
}

impl TokenLogits {
    /// `log softmax(logits)[target]` per position (`[N]`), in differentiable ops.
    pub fn target_logprobs(&self) -> candle_core::Result<Tensor> {
        let max = self.logits.max_keepdim(D::Minus1)?.detach();
        let shifted = self.logits.broadcast_sub(&max)?;
        let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        shifted.gather(&self.targets.unsqueeze(1)?, 1)?.broadcast_sub(&log_z)?.squeeze(1)
    }

    /// Sum of the target log-probabilities of each sequence (`[B]`; TRL's `logps` for DPO).
    pub fn sequence_logprobs(&self) -> candle_core::Result<Tensor> {
        let per_token = self.target_logprobs()?;
        let n = self.sequence.len();
        let onehot: Vec<f32> =
            (0..self.sequences).flat_map(|b| self.sequence.iter().map(move |&s| if s == b { 1.0 } else { 0.0 })).collect();
        let assign = Tensor::from_vec(onehot, (self.sequences, n), per_token.device())?;
        assign.matmul(&per_token.unsqueeze(1)?)?.squeeze(1)
    }
}

/// `log softmax` over the vocabulary, row by row (`[N, V]`).
pub fn log_softmax(logits: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}
