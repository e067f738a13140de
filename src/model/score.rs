//! Log-likelihood of continuations given contexts, batched (the basis of multiple-choice metrics).

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use super::batch::{PaddedBatch, Padding};
use super::decoder::CausalLm;
use super::layers::ForwardOptions;
use super::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContinuationScore {
    /// Sum of log-probabilities of the continuation tokens.
    pub logprob: f64,
    /// Whether every continuation token was the model's argmax.
    pub is_greedy: bool,
    pub num_tokens: usize,
}

/// Scores `(context, continuation)` pairs. Rows are right-padded, so causality keeps padding out
/// of every real position and the scores do not depend on `batch_size`. Requests with the same
/// model input (context + continuation without its last token; e.g. one-token continuations
/// " A" / " B" after one context) share one forward row, as lm-evaluation-harness does. Longest
/// inputs go first (fewer pad tokens per batch); results come back in request order.
pub fn score_continuations(
    model: &CausalLm,
    requests: &[(Vec<u32>, Vec<u32>)],
    batch_size: usize,
    pad_id: u32,
) -> Result<Vec<ContinuationScore>> {
    if let Some(i) = requests.iter().position(|(c, k)| c.is_empty() || k.is_empty()) {
        return Err(ModelError::Input(format!("scoring request {i} has an empty context or continuation")));
    }
    // The input drops the last token: position t predicts token t+1.
    let mut inputs: Vec<Vec<u32>> = Vec::new();
    let mut readers: Vec<Vec<usize>> = Vec::new();
    let mut input_of: HashMap<Vec<u32>, usize> = HashMap::new();
    for (i, (c, k)) in requests.iter().enumerate() {
        let mut s = c.clone();
        s.extend_from_slice(&k[..k.len() - 1]);
        let u = *input_of.entry(s).or_insert_with_key(|s| {
            inputs.push(s.clone());
            readers.push(Vec::new());
            inputs.len() - 1
        });
        readers[u].push(i);
    }
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&u| std::cmp::Reverse(inputs[u].len()));
    let mut results = vec![None; requests.len()];
    let opts = ForwardOptions::inference();
    for chunk in order.chunks(batch_size.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|&u| inputs[u].clone()).collect();
        let batch = PaddedBatch::new(&seqs, pad_id, Padding::Right, &model.device)?;
        let width = batch.ids.dim(1)?;
        let hidden = model.forward_hidden(&batch.ids, &batch.positions, &batch.valid, None, &opts)?;
        let hidden = hidden.flatten_to(1)?;
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (b, &u) in chunk.iter().enumerate() {
            for &i in &readers[u] {
                let (c, k) = &requests[i];
                for (j, &tok) in k.iter().enumerate() {
                    rows.push((b * width + c.len() - 1 + j) as u32);
                    targets.push(tok);
                }
            }
        }
        let picked = hidden.index_select(&Tensor::new(rows.as_slice(), &model.device)?, 0)?;
        let logp = candle_nn::ops::log_softmax(&model.logits(&picked, &opts)?, 1)?;
        let argmax: Vec<u32> = logp.argmax(1)?.to_vec1()?;
        let target_t = Tensor::new(targets.as_slice(), &model.device)?.unsqueeze(1)?;
        let lp: Vec<f32> = logp.gather(&target_t, 1)?.squeeze(1)?.to_dtype(DType::F32)?.to_vec1()?;
        let mut at = 0;
        for &u in chunk {
            for &i in &readers[u] {
                let n = requests[i].1.len();
                let logprob = lp[at..at + n].iter().map(|&v| v as f64).sum();
                let is_greedy = (at..at + n).all(|j| argmax[j] == targets[j]);
                results[i] = Some(ContinuationScore { logprob, is_greedy, num_tokens: n });
                at += n;
            }
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every request reads one input")).collect())
}
