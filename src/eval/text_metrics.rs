//! Text metrics of generated outputs, as used to evaluate LLM unlearning (Yao et al. 2024,
//! METHODS.md 2.4, whose exact definitions are not released):
//!
//! - diversity, distinct-n (Li et al. 2016): distinct n-grams / all n-grams over the outputs,
//!   with words = Python `str.split()` (whitespace runs), n-grams not crossing outputs, case kept;
//!   reported for n = 1, 2 as fractions in [0, 1];
//! - fluency: the mean negative log-likelihood per token (nats) of the outputs under a reference
//!   model, pooled over all tokens, and its exponential, the perplexity. Each output is scored on
//!   its own (tokenizer without special tokens), after the model's BOS token (else EOS) as the
//!   only context, and is cut to its first `max_length` tokens. The paper's fluency values (0.8
//!   to 3.8, lower is better) look like the log form; both are reported.

use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

use super::benchmarks::Output;
use super::generation::{instructions, GenerationSetup};
use super::multiple_choice::{is_py_space, prefix_token_id};
use super::stats::Values;
use super::{DiversityFluencyOptions, RewardOptions, SimilarityOptions};
use crate::data::Dataset;
use crate::model::{load, score_continuations, CausalLm, LoadOptions, LoadedModel, Result, TextTokenizer};

pub fn words(text: &str) -> Vec<&str> {
    text.split(is_py_space).filter(|w| !w.is_empty()).collect()
}

/// (distinct, total) n-grams of words over `texts`.
pub fn ngram_counts<S: AsRef<str>>(texts: &[S], n: usize) -> (usize, usize) {
    let mut seen: HashSet<Vec<&str>> = HashSet::new();
    let mut total = 0;
    for t in texts {
        let w = words(t.as_ref());
        for g in w.windows(n.max(1)) {
            total += 1;
            seen.insert(g.to_vec());
        }
    }
    (seen.len(), total)
}

/// distinct-n; `None` when the texts hold no n-gram.
pub fn distinct_n<S: AsRef<str>>(texts: &[S], n: usize) -> Option<f64> {
    let (d, t) = ngram_counts(texts, n);
    (t > 0).then(|| d as f64 / t as f64)
}

/// Σ log p and the token count of each text under `model` (0 tokens: empty text, not scored).
pub fn text_logprobs(
    model: &CausalLm,
    tok: &TextTokenizer,
    texts: &[String],
    max_length: usize,
    batch_size: usize,
) -> Result<Vec<(f64, usize)>> {
    let prefix = prefix_token_id(tok)?;
    let mut requests = Vec::new();
    let mut which = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let mut ids = tok.encode(t, false)?;
        ids.truncate(max_length.max(1));
        if !ids.is_empty() {
            requests.push((vec![prefix], ids));
            which.push(i);
        }
    }
    let scores = score_continuations(model, &requests, batch_size, tok.pad_id())?;
    let mut out = vec![(0.0, 0); texts.len()];
    for (i, s) in which.into_iter().zip(scores) {
        out[i] = (s.logprob, s.num_tokens);
    }
    Ok(out)
}

/// Pooled mean NLL per token of the selected texts; `None` without tokens.
pub fn pooled_nll(lp: &[(f64, usize)], idx: impl Iterator<Item = usize>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for i in idx {
        s += lp[i].0;
        n += lp[i].1;
    }
    (n > 0).then(|| -s / n as f64)
}

#[derive(Debug, Clone, Serialize)]
pub struct TextRecord {
    pub prompt: String,
    pub response: String,
    pub words: usize,
    pub distinct_1: Option<f64>,
    pub tokens: usize,
    /// Mean NLL per token under the reference model.
    pub nll: Option<f64>,
}

/// `metric = "diversity_fluency"`: generates (greedy) on the prompts, then `<p>_distinct_1`,
/// `<p>_distinct_2`, `<p>_fluency_nll`, `<p>_fluency_ppl` (fluency keys are left out when no
/// output has a token, the paper's "not measurable").
pub fn run(spec: &DiversityFluencyOptions, lm: &LoadedModel, data: &Dataset, prefix: &str) -> Result<Output> {
    let (prompts, responses) = greedy_answers(lm, data, spec.prompt_format, spec.prefill.clone(), spec.max_new_tokens, spec.batch_size)?;
    let reference;
    let scorer = match &spec.reference_model {
        Some(path) => {
            let opts = LoadOptions { device: lm.model.device.clone(), dtype: lm.model.dtype, trainable: false };
            reference = load(path, &opts)?;
            &reference
        }
        None => lm,
    };
    let max_length = spec.max_length.unwrap_or(scorer.model.config.max_position_embeddings);
    let lp = text_logprobs(&scorer.model, &scorer.tokenizer, &responses, max_length, spec.batch_size)?;
    let mut values = BTreeMap::new();
    let mut v = Values { map: &mut values, prefix };
    let n = responses.len();
    for k in [1, 2] {
        v.put_stat(&format!("distinct_{k}"), n, 1.0, |idx| distinct_n(&idx.iter().map(|&i| &responses[i]).collect::<Vec<_>>(), k));
    }
    v.put_stat("fluency_nll", n, 1.0, |idx| pooled_nll(&lp, idx.iter().copied()));
    v.put_stat("fluency_ppl", n, 1.0, |idx| pooled_nll(&lp, idx.iter().copied()).map(f64::exp));
    let records: Vec<TextRecord> = prompts
        .into_iter()
        .zip(&responses)
        .zip(&lp)
        .map(|((prompt, response), &(s, t))| TextRecord {
            prompt,
            response: response.clone(),
            words: words(response).len(),
            distinct_1: distinct_n(&[response], 1),
            tokens: t,
            nll: (t > 0).then(|| -s / t as f64),
        })
        .collect();
    Ok((values, records.iter().map(|r| serde_json::to_value(r).expect("record serializes")).collect()))
}

/// Greedy answers of `lm` to the dataset's prompts: (prompts, answers).
fn greedy_answers(
    lm: &LoadedModel,
    data: &Dataset,
    format: super::PromptFormat,
    prefill: Option<String>,
    max_new_tokens: usize,
    batch_size: usize,
) -> Result<(Vec<String>, Vec<String>)> {
    let items = instructions(data)?;
    let (conversations, generator) =
        GenerationSetup::greedy(format, prefill, max_new_tokens, batch_size, &Default::default())?.prepare(lm, data.template(), &items)?;
    Ok(generator.generate(&conversations)?.into_iter().map(|r| (r.prompt, r.text)).unzip())
}

#[derive(Serialize)]
pub struct SimilarityRecord {
    pub prompt: String,
    pub response: String,
    /// The original model's answer, or the dataset's.
    pub reference: String,
    pub rouge_l: f64,
}

/// `metric = "similarity_rougel"`: the model's greedy answers and the references (the original
/// model's greedy answers to the same prompts, or the dataset's answers without a
/// `reference_model`), and `<p>_rouge_l`, their mean ROUGE-L F1 (the reference as the target).
pub fn run_similarity(spec: &SimilarityOptions, lm: &LoadedModel, data: &Dataset, prefix: &str) -> Result<Output> {
    let (prompts, responses) = greedy_answers(lm, data, spec.prompt_format, spec.prefill.clone(), spec.max_new_tokens, spec.batch_size)?;
    let originals = match &spec.reference_model {
        Some(path) => {
            let opts = LoadOptions { device: lm.model.device.clone(), dtype: lm.model.dtype, trainable: false };
            let original = load(path, &opts)?;
            greedy_answers(&original, data, spec.prompt_format, spec.prefill.clone(), spec.max_new_tokens, spec.batch_size)?.1
        }
        None => dataset_answers(data)?,
    };
    let scores: Vec<f64> = originals.iter().zip(&responses).map(|(o, r)| crate::data::filter::rouge_l(o, r)).collect();
    let mut values = BTreeMap::new();
    let mut v = Values { map: &mut values, prefix };
    v.put_mean("rouge_l", &scores, 1.0);
    let records: Vec<SimilarityRecord> = prompts
        .into_iter()
        .zip(responses)
        .zip(originals)
        .zip(&scores)
        .map(|(((prompt, response), reference), &rouge_l)| SimilarityRecord { prompt, response, reference, rouge_l })
        .collect();
    Ok((values, records.iter().map(|r| serde_json::to_value(r).expect("record serializes")).collect()))
}

/// The answers of an instruction dataset, the references of a similarity without a reference model.
fn dataset_answers(data: &Dataset) -> Result<Vec<String>> {
    let items = data.as_instructions().map_err(|e| crate::model::ModelError::Input(e.to_string()))?;
    if let Some(i) = items.iter().position(|i| i.output.trim().is_empty()) {
        return Err(crate::model::ModelError::Input(format!(
            "record {i} has no answer: a similarity without `reference_model` compares with the dataset's answers"
        )));
    }
    Ok(items.iter().map(|i| i.output.clone()).collect())
}

#[derive(Serialize)]
pub struct RewardRecord {
    pub prompt: String,
    pub response: String,
    pub reward: f32,
}

/// `metric = "reward"`: greedy answers to the prompts, scored by a reward model; `<p>_mean` is the
/// mean score. The prompt given to the reward model is the dataset's question (the item's
/// instruction and input), not the rendered generation prompt.
pub fn run_reward(spec: &RewardOptions, lm: &LoadedModel, data: &Dataset, prefix: &str) -> Result<Output> {
    let items = instructions(data)?;
    let (_, responses) = greedy_answers(lm, data, spec.prompt_format, spec.prefill.clone(), spec.max_new_tokens, spec.batch_size)?;
    let opts = LoadOptions { device: lm.model.device.clone(), dtype: lm.model.dtype, trainable: false };
    let rm = crate::model::load_classifier(&spec.model, &opts)?;
    let n_labels = rm.head.num_labels();
    let label = match spec.label {
        Some(l) if l < n_labels => l,
        None if n_labels == 1 => 0,
        other => {
            return Err(crate::model::ModelError::Input(format!(
                "reward model {}: it has {n_labels} logits; `label` ({other:?}) must name the one that is the reward",
                spec.model
            )))
        }
    };
    let template = spec.template.as_deref().unwrap_or("{prompt}\n{response}");
    let template = super::judge::JudgeTemplate { text: template.to_string() };
    let specials = rm.tokenizer.special_tokens();
    let eos = rm.tokenizer.eos_token.clone().unwrap_or_default();
    let questions: Vec<String> =
        items.iter().map(|i| if i.input.is_empty() { i.instruction.clone() } else { format!("{}\n{}", i.instruction, i.input) }).collect();
    let mut seqs = Vec::with_capacity(responses.len());
    for (q, r) in questions.iter().zip(&responses) {
        let strip = |t: &str| super::judge::strip_control_tokens(t, &specials);
        let mut ids = rm.tokenizer.encode(&template.render(&strip(q), &strip(r), &eos), true)?;
        ids.truncate(spec.max_len.max(1));
        seqs.push(ids);
    }
    let rewards: Vec<f32> = rm.logits(&seqs, spec.batch_size)?.into_iter().map(|l| l[label]).collect();
    let mut values = BTreeMap::new();
    let mut v = Values { map: &mut values, prefix };
    let as_f64: Vec<f64> = rewards.iter().map(|&x| x as f64).collect();
    v.put_mean("mean", &as_f64, 1.0);
    let records: Vec<RewardRecord> = questions
        .into_iter()
        .zip(responses)
        .zip(rewards)
        .map(|((prompt, response), reward)| RewardRecord { prompt, response, reward })
        .collect();
    Ok((values, records.iter().map(|r| serde_json::to_value(r).expect("record serializes")).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_n_counts_words_within_each_output() {
        let texts = ["the cat the dog", "the cat"];
        // unigrams: the, cat, the, dog, the, cat -> 3 distinct / 6
        assert_eq!(distinct_n(&texts, 1), Some(0.5));
        // bigrams: (the cat) (cat the) (the dog) | (the cat) -> 3 / 4; none across outputs
        assert_eq!(distinct_n(&texts, 2), Some(0.75));
        assert_eq!(distinct_n(&[""], 1), None);
        assert_eq!(words(" a\u{a0}b\n\nc "), vec!["a", "b", "c"]);
        assert_eq!(pooled_nll(&[(-2.0, 1), (-4.0, 3), (0.0, 0)], 0..3), Some(1.5));
    }
}
