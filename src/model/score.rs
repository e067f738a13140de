//! Log-likelihood of continuations given contexts, batched (the basis of multiple-choice metrics).

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use super::batch::{PaddedBatch, Padding};
use super::cache::KvCache;
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
    score_after_prefix(model, requests, batch_size, pad_id, 0)
}

/// Shared prefixes shorter than this are not worth a cache.
const MIN_SHARED_PREFIX: usize = 16;

/// As [`score_continuations`], with the tokens every context starts with (a long meta prompt
/// before each question) run once: their keys and values are computed in one row and copied into
/// every batch. The prefix is the contexts' longest common one, less a token where needed so that
/// every row still reads a token of its own before its continuation. The scores equal
/// [`score_continuations`]' up to the rounding of the attention sums.
pub fn score_continuations_shared_prefix(
    model: &CausalLm,
    requests: &[(Vec<u32>, Vec<u32>)],
    batch_size: usize,
    pad_id: u32,
) -> Result<Vec<ContinuationScore>> {
    let mut contexts = requests.iter().map(|(c, _)| c.as_slice());
    let Some(first) = contexts.next() else { return Ok(Vec::new()) };
    let mut shared = first.len();
    for c in contexts {
        shared = shared.min(c.iter().zip(first).take_while(|(a, b)| a == b).count());
        shared = shared.min(c.len().saturating_sub(1));
    }
    shared = shared.min(first.len().saturating_sub(1));
    let prefix = if shared >= MIN_SHARED_PREFIX { shared } else { 0 };
    score_after_prefix(model, requests, batch_size, pad_id, prefix)
}

/// Scores the requests, whose contexts share their first `prefix` tokens (0: none cached).
fn score_after_prefix(
    model: &CausalLm,
    requests: &[(Vec<u32>, Vec<u32>)],
    batch_size: usize,
    pad_id: u32,
    prefix: usize,
) -> Result<Vec<ContinuationScore>> {
    if let Some(i) = requests.iter().position(|(c, k)| c.len() <= prefix || k.is_empty()) {
        return Err(ModelError::Input(format!("scoring request {i} has an empty context or continuation")));
    }
    let opts = ForwardOptions::inference();
    // The prefix's keys and values, computed once in a row of its own.
    let cached = if prefix > 0 {
        let ids = Tensor::new(&requests[0].0[..prefix], &model.device)?.unsqueeze(0)?;
        let positions = Tensor::new((0..prefix as u32).collect::<Vec<_>>().as_slice(), &model.device)?.unsqueeze(0)?;
        let mut cache = KvCache::new(model.num_layers(), 1);
        model.forward_hidden(&ids, &positions, &[vec![true; prefix]], Some(&mut cache), &opts)?;
        Some(cache)
    } else {
        None
    };
    // The input drops the last token: position t predicts token t+1.
    let mut inputs: Vec<Vec<u32>> = Vec::new();
    let mut readers: Vec<Vec<usize>> = Vec::new();
    let mut input_of: HashMap<Vec<u32>, usize> = HashMap::new();
    for (i, (c, k)) in requests.iter().enumerate() {
        let mut s = c[prefix..].to_vec();
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
    for chunk in order.chunks(batch_size.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|&u| inputs[u].clone()).collect();
        let batch = PaddedBatch::new(&seqs, pad_id, Padding::Right, &model.device)?;
        let width = batch.ids.dim(1)?;
        let hidden = match &cached {
            Some(cache) => {
                let mut rows = cache.repeat(chunk.len())?;
                let positions = batch.positions.broadcast_add(&Tensor::new(prefix as u32, &model.device)?)?;
                model.forward_hidden(&batch.ids, &positions, &batch.valid, Some(&mut rows), &opts)?
            }
            None => model.forward_hidden(&batch.ids, &batch.positions, &batch.valid, None, &opts)?,
        };
        let hidden = hidden.flatten_to(1)?;
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (b, &u) in chunk.iter().enumerate() {
            for &i in &readers[u] {
                let (c, k) = &requests[i];
                for (j, &tok) in k.iter().enumerate() {
                    rows.push((b * width + c.len() - prefix - 1 + j) as u32);
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
