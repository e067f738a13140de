//! Batched generation with a KV cache: greedy or temperature/top-p sampling, stop tokens and
//! strings, logit bias, repetition and n-gram penalties (transformers' semantics), and
//! Dromedary's n-gram frequency penalties.

use candle_core::{IndexOp, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

use super::batch::{PaddedBatch, Padding};
use super::cache::KvCache;
use super::decoder::CausalLm;
use super::layers::ForwardOptions;
use super::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling threshold; 1.0 disables it.
    pub top_p: f64,
    pub seed: u64,
    /// Generation of a row ends after one of these tokens (the token is not returned).
    pub stop_token_ids: Vec<u32>,
    /// Generation of a row ends when its decoded text contains one of these; the text is cut there.
    pub stop_strings: Vec<String>,
    /// Added to the logits of the given token ids before any other processing.
    pub logit_bias: HashMap<u32, f32>,
    /// transformers' `repetition_penalty` over prompt and generated tokens; 1.0 disables it.
    pub repetition_penalty: f32,
    /// transformers' `no_repeat_ngram_size`; 0 disables it.
    pub no_repeat_ngram_size: usize,
    /// Dromedary's n-gram frequency penalties (verbose cloning); none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ngram_frequency: Option<NgramFrequencyPenalty>,
}

/// llama_dromedary's `unitoken/bitoken/tritoken/quadtoken_frequency_penalty` (`generation.py`,
/// Dromedary v1): for n = 1..4 with penalty `c_n > 0`, a candidate token `t` loses
/// `c_n * count(prefix + t)`, where `prefix` is the last n - 1 tokens and `count` how often that
/// n-gram was generated so far. Only generated tokens count, and (a quirk of the official loop's
/// position test) an n-gram is counted, and a penalty applied, only from the second generated
/// token on: the n-gram must start after the first generated token. Only `eligible` tokens are
/// penalized (the official `frequency_penalty_starts_only`: word-start pieces with an id above
/// 1024); `None` penalizes every token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NgramFrequencyPenalty {
    /// Penalties of unigrams, bigrams, trigrams and 4-grams.
    pub penalties: [f32; 4],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligible: Option<HashSet<u32>>,
}

/// The generated n-grams of one row, by length, prefix and last token.
#[derive(Debug, Default)]
struct NgramCounts([HashMap<Vec<u32>, HashMap<u32, u32>>; 4]);

impl NgramCounts {
    /// Subtracts the penalties from `row`; `generated` holds the row's generated tokens so far.
    fn penalize(&self, row: &mut [f32], generated: &[u32], cfg: &NgramFrequencyPenalty) {
        let j = generated.len();
        for (h, &c) in cfg.penalties.iter().enumerate() {
            if c <= 0.0 || j <= h {
                continue;
            }
            let Some(next) = self.0[h].get(&generated[j - h..]) else { continue };
            for (&tok, &count) in next {
                if cfg.eligible.as_ref().is_none_or(|e| e.contains(&tok)) {
                    if let Some(l) = row.get_mut(tok as usize) {
                        *l -= c * count as f32;
                    }
                }
            }
        }
    }

    /// Counts the n-grams that end at the last generated token.
    fn record(&mut self, generated: &[u32], cfg: &NgramFrequencyPenalty) {
        let Some((&last, before)) = generated.split_last() else { return };
        let j = before.len();
        for (h, &c) in cfg.penalties.iter().enumerate() {
            if c > 0.0 && j > h {
                *self.0[h].entry(before[j - h..].to_vec()).or_default().entry(last).or_default() += 1;
            }
        }
    }
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            logit_bias: HashMap::new(),
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            ngram_frequency: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    StopToken,
    StopString,
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// New tokens, without the stop token.
    pub token_ids: Vec<u32>,
    /// Decoded text (cut at a stop string), when a decoder was given.
    pub text: Option<String>,
    pub finish: FinishReason,
}

/// Decodes token ids to text (for stop strings and the returned text).
pub type Decoder<'a> = &'a dyn Fn(&[u32]) -> String;

/// Generates for every prompt in one left-padded batch.
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    pad_id: u32,
    decode: Option<Decoder>,
) -> Result<Vec<Generated>> {
    if !cfg.stop_strings.is_empty() && decode.is_none() {
        return Err(ModelError::Input("stop strings need a tokenizer to decode with".into()));
    }
    let opts = ForwardOptions::inference();
    let bsz = prompts.len();
    let batch = PaddedBatch::new(prompts, pad_id, Padding::Left, &model.device)?;
    let mut cache = KvCache::new(model.num_layers(), bsz);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); bsz];
    let mut finish: Vec<Option<FinishReason>> = vec![None; bsz];
    let mut texts: Vec<Option<String>> = vec![None; bsz];
    let mut next_pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let mut ngrams: Vec<NgramCounts> = (0..bsz).map(|_| NgramCounts::default()).collect();

    let width = batch.ids.dim(1)?;
    let hidden = model.forward_hidden(&batch.ids, &batch.positions, &batch.valid, Some(&mut cache), &opts)?;
    let mut logits = model.logits(&hidden.i((.., width - 1..width, ..))?, &opts)?.squeeze(1)?;

    for _ in 0..cfg.max_new_tokens {
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut step_ids = Vec::with_capacity(bsz);
        for (b, mut row) in rows.into_iter().enumerate() {
            if finish[b].is_some() {
                step_ids.push(pad_id);
                continue;
            }
            process_logits(&mut row, &history[b], cfg);
            if let Some(freq) = &cfg.ngram_frequency {
                ngrams[b].penalize(&mut row, &history[b][prompts[b].len()..], freq);
            }
            let tok = if cfg.temperature > 0.0 { sample(&row, cfg.temperature, cfg.top_p, &mut rng) } else { argmax(&row) };
            history[b].push(tok);
            if let Some(freq) = &cfg.ngram_frequency {
                ngrams[b].record(&history[b][prompts[b].len()..], freq);
            }
            step_ids.push(tok);
            if cfg.stop_token_ids.contains(&tok) {
                finish[b] = Some(FinishReason::StopToken);
                continue;
            }
            out[b].push(tok);
            if let (Some(decode), false) = (decode, cfg.stop_strings.is_empty()) {
                let text = decode(&out[b]);
                if let Some(cut) = cfg.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min() {
                    texts[b] = Some(text[..cut].to_string());
                    finish[b] = Some(FinishReason::StopString);
                }
            }
        }
        if finish.iter().all(Option::is_some) {
            break;
        }
        let valid: Vec<Vec<bool>> = finish.iter().map(|f| vec![f.is_none()]).collect();
        let ids = Tensor::from_vec(step_ids, (bsz, 1), &model.device)?;
        let positions = Tensor::from_vec(next_pos.clone(), (bsz, 1), &model.device)?;
        for p in next_pos.iter_mut() {
            *p += 1;
        }
        let hidden = model.forward_hidden(&ids, &positions, &valid, Some(&mut cache), &opts)?;
        logits = model.logits(&hidden, &opts)?.squeeze(1)?;
    }
    Ok(out
        .into_iter()
        .zip(finish)
        .zip(texts)
        .map(|((token_ids, finish), text)| {
            let text = text.or_else(|| decode.map(|d| d(&token_ids)));
            Generated { token_ids, text, finish: finish.unwrap_or(FinishReason::Length) }
        })
        .collect())
}

/// Logit bias, repetition penalty and n-gram blocking, in transformers' order.
fn process_logits(row: &mut [f32], history: &[u32], cfg: &GenerationConfig) {
    for (&tok, &bias) in &cfg.logit_bias {
        if let Some(l) = row.get_mut(tok as usize) {
            *l += bias;
        }
    }
    if cfg.repetition_penalty != 1.0 {
        let seen: HashSet<u32> = history.iter().copied().collect();
        for tok in seen {
            if let Some(l) = row.get_mut(tok as usize) {
                *l = if *l < 0.0 { *l * cfg.repetition_penalty } else { *l / cfg.repetition_penalty };
            }
        }
    }
    for tok in banned_ngram_tokens(history, cfg.no_repeat_ngram_size) {
        if let Some(l) = row.get_mut(tok as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Tokens that would complete an n-gram already present in `history`.
fn banned_ngram_tokens(history: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || history.len() + 1 < n {
        return Vec::new();
    }
    let prefix = &history[history.len() + 1 - n..];
    history.windows(n).filter(|w| &w[..n - 1] == prefix).map(|w| w[n - 1]).collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(row: &[f32], temperature: f64, top_p: f64, rng: &mut StdRng) -> u32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> =
        row.iter().enumerate().map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp())).filter(|(_, p)| *p > 0.0).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    if top_p < 1.0 {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut cum = 0.0;
        let mut keep = 0;
        for p in &probs {
            keep += 1;
            cum += p.1;
            if cum >= top_p {
                break;
            }
        }
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * total;
    for &(tok, p) in &probs {
        if u < p {
            return tok;
        }
        u -= p;
    }
    probs.last().map_or(0, |p| p.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_blocking_finds_completions() {
        assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2], 3), vec![3]);
        assert_eq!(banned_ngram_tokens(&[1, 2, 3], 0), Vec::<u32>::new());
        assert_eq!(banned_ngram_tokens(&[7, 7], 2), vec![7]);
    }

    /// Counts a generated sequence token by token, as the generation loop does, then penalizes
    /// the next position.
    fn penalized(generated: &[u32], cfg: &NgramFrequencyPenalty) -> Vec<f32> {
        let mut counts = NgramCounts::default();
        for j in 1..=generated.len() {
            counts.record(&generated[..j], cfg);
        }
        let mut row = vec![0.0; 10];
        counts.penalize(&mut row, generated, cfg);
        row
    }

    /// Hand-computed from llama_dromedary's loop with Dromedary's verbose-cloning penalties
    /// (trigram 1, 4-gram 2).
    #[test]
    fn dromedary_frequency_penalties_count_generated_ngrams() {
        let cfg = NgramFrequencyPenalty { penalties: [0.0, 0.0, 1.0, 2.0], eligible: None };
        // Trigrams counted: (1,2,3) (2,3,1) (3,1,2); the prefix (1,2) was followed by 3 once.
        let mut want = vec![0.0; 10];
        want[3] = -1.0;
        assert_eq!(penalized(&[5, 1, 2, 3, 1, 2], &cfg), want);
        // The same n-gram starting at the first generated token is not counted (official quirk).
        assert_eq!(penalized(&[1, 2, 3, 1, 2], &cfg), vec![0.0; 10]);
        // (1,2,3,4) once as a 4-gram (-2) and (2,3,4) once as a trigram (-1).
        want[3] = 0.0;
        want[4] = -3.0;
        assert_eq!(penalized(&[9, 1, 2, 3, 4, 1, 2, 3], &cfg), want);
        // Unigrams count every generated token after the first.
        let uni = NgramFrequencyPenalty { penalties: [0.5, 0.0, 0.0, 0.0], eligible: None };
        let row = penalized(&[7, 7, 7, 2], &uni);
        assert_eq!((row[7], row[2]), (-1.0, -0.5));
        // Tokens outside the eligible set keep their logits.
        let starts = NgramFrequencyPenalty { eligible: Some(HashSet::from([2])), ..uni };
        let row = penalized(&[7, 7, 7, 2], &starts);
        assert_eq!((row[7], row[2]), (0.0, -0.5));
    }

    #[test]
    fn repetition_penalty_follows_transformers_sign_rule() {
        let cfg = GenerationConfig { repetition_penalty: 2.0, ..Default::default() };
        let mut row = vec![4.0, -4.0, 4.0];
        process_logits(&mut row, &[0, 1], &cfg);
        assert_eq!(row, vec![2.0, -8.0, 4.0]);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let row = vec![10.0, 9.9, -10.0, -10.0];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let t = sample(&row, 1.0, 0.9, &mut rng);
            assert!(t < 2, "sampled {t} outside the nucleus");
        }
        let seen: HashSet<u32> = (0..200).map(|_| sample(&row, 1.0, 0.9, &mut rng)).collect();
        assert_eq!(seen.len(), 2);
    }
}
