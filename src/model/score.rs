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
    score_after_cache(model, requests, batch_size, pad_id, None, 0)
}

/// Shared prefixes shorter than this are not worth a cache.
const MIN_SHARED_PREFIX: usize = 16;

/// As [`score_continuations`], with every token sequence that several requests share computed
/// once: the tokens all contexts start with (a few-shot or meta prompt before each question) in
/// one row whose keys and values are copied into every batch, and each context shared by several
/// continuations (a question's choices) once more on top of it. A prefix stops a token short
/// where needed so that every row still reads a token of its own before its continuation. The
/// scores equal [`score_continuations`]' (those of the full sequences) up to the rounding of the
/// attention sums.
pub fn score_continuations_shared_prefix(
    model: &CausalLm,
    requests: &[(Vec<u32>, Vec<u32>)],
    batch_size: usize,
    pad_id: u32,
) -> Result<Vec<ContinuationScore>> {
    check_requests(requests, 0)?;
    let mut contexts = requests.iter().map(|(c, _)| c.as_slice());
    let Some(first) = contexts.next() else { return Ok(Vec::new()) };
    let mut shared = first.len();
    for c in contexts {
        shared = shared.min(c.iter().zip(first).take_while(|(a, b)| a == b).count());
        shared = shared.min(c.len().saturating_sub(1));
    }
    shared = shared.min(first.len().saturating_sub(1));
    let prefix = if shared >= MIN_SHARED_PREFIX { shared } else { 0 };
    let base = prefix_cache(model, &first[..prefix], None, 0)?;
    // Requests by context, in order of first appearance.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<&[u32], usize> = HashMap::new();
    for (i, (c, _)) in requests.iter().enumerate() {
        let g = *group_of.entry(c.as_slice()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    // A context of several requests with tokens of its own past the prefix gets a cache of its
    // own; the rest are scored together after the common prefix.
    let own_cache = |g: &Vec<usize>| g.len() > 1 && requests[g[0]].0.len() > prefix + 1;
    let mut results: Vec<Option<ContinuationScore>> = vec![None; requests.len()];
    let mut score_into = |members: &[usize], cache: Option<&KvCache>, cached: usize| -> Result<()> {
        let subset: Vec<(Vec<u32>, Vec<u32>)> = members.iter().map(|&i| requests[i].clone()).collect();
        for (&i, s) in members.iter().zip(score_after_cache(model, &subset, batch_size, pad_id, cache, cached)?) {
            results[i] = Some(s);
        }
        Ok(())
    };
    let loose: Vec<usize> = groups.iter().filter(|g| !own_cache(g)).flatten().copied().collect();
    if !loose.is_empty() {
        score_into(&loose, base.as_ref(), prefix)?;
    }
    for g in groups.iter().filter(|g| own_cache(g)) {
        let context = &requests[g[0]].0;
        let cache = prefix_cache(model, &context[prefix..context.len() - 1], base.as_ref(), prefix)?;
        score_into(g, cache.as_ref(), context.len() - 1)?;
    }
    Ok(results.into_iter().map(|r| r.expect("every request is in one group")).collect())
}

fn check_requests(requests: &[(Vec<u32>, Vec<u32>)], prefix: usize) -> Result<()> {
    match requests.iter().position(|(c, k)| c.len() <= prefix || k.is_empty()) {
        Some(i) => Err(ModelError::Input(format!("scoring request {i} has an empty context or continuation"))),
        None => Ok(()),
    }
}

/// The keys and values (one row) of `tokens` at positions `start..`, after `past` (which holds
/// the first `start` tokens); `None` when there is nothing to cache.
fn prefix_cache(model: &CausalLm, tokens: &[u32], past: Option<&KvCache>, start: usize) -> Result<Option<KvCache>> {
    let mut cache = match past {
        Some(p) => p.repeat(1)?,
        None => KvCache::new(model.num_layers(), 1),
    };
    if !tokens.is_empty() {
        let ids = Tensor::new(tokens, &model.device)?.unsqueeze(0)?;
        let end = (start + tokens.len()) as u32;
        let positions = Tensor::new((start as u32..end).collect::<Vec<_>>().as_slice(), &model.device)?.unsqueeze(0)?;
        model.forward_hidden(&ids, &positions, &[vec![true; tokens.len()]], Some(&mut cache), &ForwardOptions::inference())?;
    }
    Ok((!cache.is_empty()).then_some(cache))
}

/// Scores the requests without a cache (`prefix` = 0) or after `cached`, which holds their
/// contexts' first `prefix` tokens (one row).
fn score_after_cache(
    model: &CausalLm,
    requests: &[(Vec<u32>, Vec<u32>)],
    batch_size: usize,
    pad_id: u32,
    cached: Option<&KvCache>,
    prefix: usize,
) -> Result<Vec<ContinuationScore>> {
    check_requests(requests, prefix)?;
    let opts = ForwardOptions::inference();
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
        let hidden = match cached {
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
