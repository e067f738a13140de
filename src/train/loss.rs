//! Next-token cross-entropy with label masks (`-100` = not supervised, as in transformers).

use candle_core::{DType, Tensor, D};

use super::cross_entropy::row_cross_entropy;
use crate::model::{CausalLm, ForwardOptions, ModelError, PaddedBatch, Padding, Result};

pub const IGNORE_INDEX: i64 = -100;

/// One batch of training sequences; `labels[b][t]` is the token expected at position t (usually
/// `input_ids[b][t]`), or `IGNORE_INDEX` for prompt tokens that are not trained on.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub labels: Vec<Vec<i64>>,
}

impl TrainBatch {
    /// Supervises every token after the first `prompt_len[b]` of each sequence.
    pub fn with_prompt_masked(sequences: Vec<Vec<u32>>, prompt_lens: &[usize]) -> Self {
        let labels = sequences
            .iter()
            .zip(prompt_lens)
            .map(|(s, &p)| s.iter().enumerate().map(|(i, &t)| if i < p { IGNORE_INDEX } else { t as i64 }).collect())
            .collect();
        Self { input_ids: sequences, labels }
    }

    /// Number of supervised (shifted) targets.
    pub fn num_targets(&self) -> usize {
        self.labels.iter().map(|l| l.iter().skip(1).filter(|&&x| x != IGNORE_INDEX).count()).sum()
    }
}

/// Mean cross-entropy over supervised tokens, as transformers' causal-LM loss: position t
/// predicts `labels[t+1]`. Logits are computed only at supervised positions.
pub fn lm_loss(model: &CausalLm, batch: &TrainBatch, opts: &ForwardOptions) -> Result<Tensor> {
    if batch.input_ids.len() != batch.labels.len() || batch.input_ids.iter().zip(&batch.labels).any(|(i, l)| i.len() != l.len()) {
        return Err(ModelError::Input("labels must have the shape of input_ids".into()));
    }
    let padded = PaddedBatch::new(&batch.input_ids, 0, Padding::Right, &model.device)?;
    let width = padded.ids.dim(1)?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, labels) in batch.labels.iter().enumerate() {
        for t in 0..labels.len().saturating_sub(1) {
            let y = labels[t + 1];
            if y != IGNORE_INDEX {
                if y < 0 || y as usize >= model.config.vocab_size {
                    return Err(ModelError::Input(format!("label {y} at row {b}, position {} is outside the vocabulary", t + 1)));
                }
                rows.push((b * width + t) as u32);
                targets.push(y as u32);
            }
        }
    }
    if rows.is_empty() {
        return Err(ModelError::Input("the batch has no supervised token (all labels are -100)".into()));
    }
    let hidden = model.forward_hidden(&padded.ids, &padded.positions, &padded.valid, None, opts)?;
    loss_at(model, &hidden, &rows, &targets, opts, false)
}

/// Rows (`b * width + t`) whose next-token labels are supervised, and those labels.
pub fn supervised_positions(batch: &TrainBatch, width: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, labels) in batch.labels.iter().enumerate() {
        for t in 0..labels.len().saturating_sub(1) {
            if labels[t + 1] != IGNORE_INDEX {
                rows.push((b * width + t) as u32);
                targets.push(labels[t + 1] as u32);
            }
        }
    }
    (rows, targets)
}

/// Mean cross-entropy of the next-token predictions read off `hidden` (`[B, T, H]`) at `rows`:
/// through the final norm and head (`lens`), or through the head only (`hidden` already normed).
pub fn loss_at(model: &CausalLm, hidden: &Tensor, rows: &[u32], targets: &[u32], opts: &ForwardOptions, lens: bool) -> Result<Tensor> {
    let picked = hidden.flatten_to(1)?.index_select(&Tensor::new(rows, &model.device)?, 0)?;
    let logits = if lens { model.lens_logits(&picked, opts)? } else { model.logits(&picked, opts)? };
    Ok(cross_entropy(&logits, &Tensor::new(targets, &model.device)?)?)
}

/// Mean of `-log softmax(logits)[target]` in differentiable ops. `logits: [N, V]`, `targets: [N]`.
/// On the CPU one fused op ([`row_cross_entropy`]) computes the same bits.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    if logits.device().is_cpu() && targets.dtype() == DType::U32 && targets.rank() == 1 {
        if let Some(rows) = row_cross_entropy(&logits, &targets.to_vec1::<u32>()?)? {
            return rows.mean_all();
        }
    }
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    (log_z - picked)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_closed_form() {
        let logits = Tensor::new(&[[0.0f32, 0.0], [2.0, 0.0]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
        let ce = cross_entropy(&logits, &t).unwrap().to_scalar::<f32>().unwrap();
        let expected = ((2f32).ln() + (1.0 + (-2f32).exp()).ln() + 2.0) / 2.0;
        assert!((ce - expected).abs() < 1e-6, "{ce} vs {expected}");
    }

    #[test]
    fn prompt_masking_counts_targets() {
        let b = TrainBatch::with_prompt_masked(vec![vec![1, 2, 3, 4], vec![5, 6]], &[2, 1]);
        assert_eq!(b.labels[0], vec![-100, -100, 3, 4]);
        assert_eq!(b.num_targets(), 3);
    }
}
