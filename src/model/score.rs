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
    // A context of several requests with tokens of its own past the prefix is run once for them;
    // the rest are scored whole after the common prefix.
    let (mut cached, loose): (Vec<&Vec<usize>>, Vec<&Vec<usize>>) =
        groups.iter().partition(|g| g.len() > 1 && requests[g[0]].0.len() > prefix + 1);
    let mut results: Vec<Option<ContinuationScore>> = vec![None; requests.len()];
    let loose: Vec<usize> = loose.into_iter().flatten().copied().collect();
    if !loose.is_empty() {
        let subset: Vec<(Vec<u32>, Vec<u32>)> = loose.iter().map(|&i| requests[i].clone()).collect();
        for (&i, s) in loose.iter().zip(score_after_cache(model, &subset, batch_size, pad_id, base.as_ref(), prefix)?) {
            results[i] = Some(s);
        }
    }
    // Longest first, so that the groups batched together pad little (as the loose inputs).
    cached.sort_by_key(|g| std::cmp::Reverse(requests[g[0]].0.len() + g.iter().map(|&i| requests[i].1.len()).max().unwrap_or(0)));
    for chunk in cached.chunks(batch_size.max(1)) {
        for (i, s) in score_group_chunk(model, requests, chunk, batch_size, pad_id, base.as_ref(), prefix)? {
            results[i] = Some(s);
        }
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

/// Scores groups of requests that share a context (each context with tokens of its own after
/// the `prefix` that `base` holds): the groups' contexts, all but their last token, in one batch
/// on copies of `base`; then the distinct inputs `[last context token] + continuation[..-1]` of
/// the groups, `batch_size` a batch, each row on a copy of its context's row.
fn score_group_chunk(
    model: &CausalLm,
    requests: &[(Vec<u32>, Vec<u32>)],
    groups: &[&Vec<usize>],
    batch_size: usize,
    pad_id: u32,
    base: Option<&KvCache>,
    prefix: usize,
) -> Result<Vec<(usize, ContinuationScore)>> {
    let opts = ForwardOptions::inference();
    let device = &model.device;
    let context = |g: &Vec<usize>| requests[g[0]].0.as_slice();
    let own: Vec<Vec<u32>> = groups
        .iter()
        .map(|g| {
            let c = context(g);
            c[prefix..c.len() - 1].to_vec()
        })
        .collect();
    let mut cache = match base {
        Some(b) => b.repeat(groups.len())?,
        None => KvCache::new(model.num_layers(), groups.len()),
    };
    let batch = PaddedBatch::new(&own, pad_id, Padding::Right, device)?;
    let positions = batch.positions.broadcast_add(&Tensor::new(prefix as u32, device)?)?;
    model.forward_hidden(&batch.ids, &positions, &batch.valid, Some(&mut cache), &opts)?;
    let (mut inputs, mut readers, mut row_group, mut starts): (Vec<Vec<u32>>, Vec<Vec<usize>>, Vec<usize>, Vec<u32>) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (gi, g) in groups.iter().enumerate() {
        let c = context(g);
        let mut input_of: HashMap<Vec<u32>, usize> = HashMap::new();
        for &i in g.iter() {
            let k = &requests[i].1;
            let s = [&c[c.len() - 1..], &k[..k.len() - 1]].concat();
            let u = *input_of.entry(s).or_insert_with_key(|s| {
                inputs.push(s.clone());
                readers.push(Vec::new());
                row_group.push(gi);
                starts.push((c.len() - 1) as u32);
                inputs.len() - 1
            });
            readers[u].push(i);
        }
    }
    // The inputs longest first, `batch_size` a forward (little padding, bounded logits).
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&u| std::cmp::Reverse(inputs[u].len()));
    let mut scores = Vec::with_capacity(requests.len());
    for part in order.chunks(batch_size.max(1)) {
        let mut rows = cache.select_rows(&part.iter().map(|&u| row_group[u]).collect::<Vec<_>>())?;
        let seqs: Vec<Vec<u32>> = part.iter().map(|&u| inputs[u].clone()).collect();
        let batch = PaddedBatch::new(&seqs, pad_id, Padding::Right, device)?;
        let width = batch.ids.dim(1)?;
        let positions: Vec<u32> = part
            .iter()
            .flat_map(|&u| {
                let s = starts[u];
                (0..width as u32).map(move |t| s + t)
            })
            .collect();
        let positions = Tensor::from_vec(positions, (part.len(), width), device)?;
        let hidden = model.forward_hidden(&batch.ids, &positions, &batch.valid, Some(&mut rows), &opts)?.flatten_to(1)?;
        let at: Vec<(usize, usize)> = part.iter().enumerate().flat_map(|(b, &u)| readers[u].iter().map(move |&i| (i, b * width))).collect();
        scores.extend(read_scores(model, &hidden, requests, &at)?);
    }
    Ok(scores)
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
        let at: Vec<(usize, usize)> = chunk
            .iter()
            .enumerate()
            .flat_map(|(b, &u)| readers[u].iter().map(move |&i| (i, b * width + requests[i].0.len() - prefix - 1)))
            .collect();
        for (i, s) in read_scores(model, &hidden, requests, &at)? {
            results[i] = Some(s);
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every request reads one input")).collect())
}

/// The scores of requests `(i, first)`: request `i`'s `j`-th continuation token is predicted by
/// row `first + j` of `hidden` (`[rows, E]`).
fn read_scores(
    model: &CausalLm,
    hidden: &Tensor,
    requests: &[(Vec<u32>, Vec<u32>)],
    at: &[(usize, usize)],
) -> Result<Vec<(usize, ContinuationScore)>> {
    let opts = ForwardOptions::inference();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for &(i, first) in at {
        for (j, &tok) in requests[i].1.iter().enumerate() {
            rows.push((first + j) as u32);
            targets.push(tok);
        }
    }
    let picked = hidden.index_select(&Tensor::new(rows.as_slice(), &model.device)?, 0)?;
    let logp = super::softmax::log_softmax_last_dim(&model.logits(&picked, &opts)?)?;
    let argmax: Vec<u32> = logp.argmax(1)?.to_vec1()?;
    let target_t = Tensor::new(targets.as_slice(), &model.device)?.unsqueeze(1)?;
    let lp: Vec<f32> = logp.gather(&target_t, 1)?.squeeze(1)?.to_dtype(DType::F32)?.to_vec1()?;
    let mut pos = 0;
    Ok(at
        .iter()
        .map(|&(i, _)| {
            let n = requests[i].1.len();
            let logprob = lp[pos..pos + n].iter().map(|&v| v as f64).sum();
            let is_greedy = (pos..pos + n).all(|j| argmax[j] == targets[j]);
            pos += n;
            (i, ContinuationScore { logprob, is_greedy, num_tokens: n })
        })
        .collect())
}
