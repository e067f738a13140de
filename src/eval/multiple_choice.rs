//! Multiple-choice scoring as lm-evaluation-harness (v0.4.13) defines it.
//!
//! Each choice is a continuation `target_delimiter + choice` of the context; its log-likelihood
//! decides (`lm_eval/api/task.py`, `ConfigurableTask.construct_requests` and
//! `process_results` for `output_type: multiple_choice`):
//!
//! - `acc`: the argmax of the log-likelihoods is a gold choice;
//! - `acc_norm`: the argmax of `loglik / len(choice)` is a gold choice, where `len` counts the
//!   characters (Unicode code points, Python's `len`) of the choice string alone, *without* the
//!   delimiter (`completion_len = [len(i) for i in choices]`);
//! - MC2 (`lm_eval/tasks/truthfulqa/utils.py`, `process_results_mc2`): the probability mass of
//!   the true choices after normalizing over all choices, `Σ_true p_i / Σ_all p_i` with
//!   `p_i = exp(loglik_i)`. lm-eval 0.4.13 sums over `labels == 1`; older versions split at the
//!   first false label, which is the same for TruthfulQA (true answers come first). Here the
//!   exponentials are taken after subtracting the largest log-likelihood, which changes nothing
//!   but avoids lm-eval's 0/0 when every `exp` underflows.
//!
//! Argmax ties go to the first index, as `np.argmax`.
//!
//! Tokenization follows lm-eval's `HFLM` for causal models (`lm_eval/api/model.py`
//! `_encode_pair`, `loglikelihood`; `lm_eval/models/huggingface.py` `tok_encode`,
//! `_loglikelihood_tokens`): trailing whitespace of the context moves to the start of the
//! continuation; `context + continuation` is encoded whole and split at the length of the encoded
//! context (so a merge across the boundary stays in the continuation); the tokenizer adds its own
//! special tokens (`add_special_tokens=True`, the HF default) unless the string already starts
//! with the BOS token; an empty context becomes the prefix token (BOS, else EOS); a sequence
//! longer than `max_length + 1` tokens loses tokens from the left of the context (the default
//! `max_length` is the model's `max_position_embeddings`, as lm-eval's `resolve_max_length`).

use serde::Serialize;

use crate::data::MultipleChoice;
use crate::model::{
    score_continuations, score_continuations_shared_prefix, CausalLm, ContinuationScore, ModelError, Result, TextTokenizer,
};

/// Python's `str.isspace` for one character (`str.rstrip()`/`strip()` without arguments).
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Fills `{name}` placeholders in one pass (a value containing `{name}` is not substituted
/// again); other braces are kept as they are.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match values.iter().find(|(k, _)| after.starts_with(k) && after[k.len()..].starts_with('}')) {
            Some((k, v)) => {
                out.push_str(v);
                rest = &after[k.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// How special tokens are added to an encoded string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Specials {
    /// The tokenizer's post-processor (`add_special_tokens=True`), skipped when the string
    /// already starts with the prefix token's text (BOS, else EOS): lm-eval's `HFLM.tok_encode`
    /// with its defaults.
    #[default]
    TokenizerDefault,
    /// The BOS token prepended (if the tokenizer has one), nothing else: llama_dromedary's
    /// `tokenizer.encode(s, bos=True, eos=False)`.
    Bos,
}

fn bos_id(tok: &TextTokenizer) -> Option<u32> {
    tok.bos_token.as_deref().and_then(|t| tok.token_id(t))
}

/// lm-eval's `prefix_token_id`: BOS, else EOS.
pub fn prefix_token_id(tok: &TextTokenizer) -> Result<u32> {
    bos_id(tok)
        .or_else(|| tok.eos_id())
        .ok_or_else(|| ModelError::Input("the tokenizer has neither a BOS nor an EOS token to condition an empty context on".into()))
}

pub fn encode(tok: &TextTokenizer, text: &str, specials: Specials) -> Result<Vec<u32>> {
    match specials {
        Specials::TokenizerDefault => {
            // `has_bos_prefix(string, tokenizer.decode(prefix_token_id))`: BOS, else EOS text.
            let prefix = tok.bos_token.as_deref().filter(|_| bos_id(tok).is_some()).or(tok.eos_token.as_deref());
            let starts_with_prefix = prefix.is_some_and(|b| !b.is_empty() && text.starts_with(b));
            tok.encode(text, !starts_with_prefix)
        }
        Specials::Bos => {
            let mut ids = tok.encode(text, false)?;
            if let Some(b) = bos_id(tok) {
                ids.insert(0, b);
            }
            Ok(ids)
        }
    }
}

/// `enc(context + continuation)[len(enc(context)):]` as the continuation tokens, `enc(context)`
/// as the context (no whitespace moved; llama_dromedary's `score` does exactly this). An empty
/// context becomes the prefix token, as lm-eval's `loglikelihood` does.
pub fn encode_split(tok: &TextTokenizer, context: &str, continuation: &str, specials: Specials) -> Result<(Vec<u32>, Vec<u32>)> {
    if context.is_empty() {
        let cont = tok.encode(continuation, false)?;
        let prefix = prefix_token_id(tok)?;
        return match cont.split_first() {
            Some((&first, rest)) if first == prefix => Ok((vec![first], rest.to_vec())),
            _ => Ok((vec![prefix], cont)),
        };
    }
    let whole = encode(tok, &format!("{context}{continuation}"), specials)?;
    let ctx = encode(tok, context, specials)?;
    if whole.len() <= ctx.len() {
        return Err(ModelError::Input(format!("continuation {continuation:?} encodes to no tokens after its context")));
    }
    let cont = whole[ctx.len()..].to_vec();
    Ok((ctx, cont))
}

/// lm-eval's `_encode_pair`: trailing whitespace of the context moves to the continuation, then
/// [`encode_split`].
pub fn encode_pair(tok: &TextTokenizer, context: &str, continuation: &str, specials: Specials) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end_matches(is_py_space);
    let moved = &context[trimmed.len()..];
    encode_split(tok, trimmed, &format!("{moved}{continuation}"), specials)
}

/// Left truncation of `_loglikelihood_tokens`: the scored window is the last `max_length + 1`
/// tokens of `context + continuation`; the continuation itself must fit in `max_length`.
pub fn truncate_left(mut ctx: Vec<u32>, cont: &[u32], max_length: usize) -> Result<Vec<u32>> {
    if cont.len() > max_length {
        return Err(ModelError::Input(format!(
            "a continuation of {} tokens does not fit max_length = {max_length} (lm-eval refuses it too)",
            cont.len()
        )));
    }
    let total = ctx.len() + cont.len();
    if total > max_length + 1 {
        ctx.drain(..total - (max_length + 1));
    }
    Ok(ctx)
}

/// One question: a context and its continuations (delimiter included).
#[derive(Debug, Clone, PartialEq)]
pub struct McQuestion {
    pub context: String,
    pub continuations: Vec<String>,
}

/// How questions become scored token sequences.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreOptions {
    pub batch_size: usize,
    /// Left-truncate to this many tokens (lm-eval); `None`: no truncation.
    pub max_length: Option<usize>,
    pub specials: Specials,
    /// Move the context's trailing whitespace into the continuation (lm-eval); off for
    /// Dromedary's scoring.
    pub move_whitespace: bool,
    /// Run shared tokens once: the prefix all contexts start with (a few-shot or meta prompt)
    /// and each question's context for its choices
    /// ([`crate::model::score_continuations_shared_prefix`]; the full sequences' scores up to
    /// float rounding, as `tests/eval_mc.rs` checks against lm-eval). Off: every sequence whole.
    pub shared_prefix: bool,
}

impl ScoreOptions {
    /// lm-eval's HFLM defaults with this `max_length` (shared contexts computed once).
    pub fn lm_eval(batch_size: usize, max_length: usize) -> Self {
        Self { batch_size, max_length: Some(max_length), specials: Specials::TokenizerDefault, move_whitespace: true, shared_prefix: true }
    }
}

/// Token-level requests of every continuation, question by question.
pub fn build_requests(tok: &TextTokenizer, questions: &[McQuestion], opts: &ScoreOptions) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
    let mut requests = Vec::new();
    for q in questions {
        for c in &q.continuations {
            let (ctx, cont) = if opts.move_whitespace {
                encode_pair(tok, &q.context, c, opts.specials)?
            } else {
                encode_split(tok, &q.context, c, opts.specials)?
            };
            let ctx = match opts.max_length {
                Some(m) => truncate_left(ctx, &cont, m)?,
                None => ctx,
            };
            requests.push((ctx, cont));
        }
    }
    Ok(requests)
}

/// Log-likelihood of every continuation of every question (batched; independent of the batch
/// size because rows are right-padded).
pub fn score_questions(
    model: &CausalLm,
    tok: &TextTokenizer,
    questions: &[McQuestion],
    opts: &ScoreOptions,
) -> Result<Vec<Vec<ContinuationScore>>> {
    let requests = build_requests(tok, questions, opts)?;
    let scores = if opts.shared_prefix {
        score_continuations_shared_prefix(model, &requests, opts.batch_size, tok.pad_id())?
    } else {
        score_continuations(model, &requests, opts.batch_size, tok.pad_id())?
    };
    let mut at = 0;
    Ok(questions
        .iter()
        .map(|q| {
            let s = scores[at..at + q.continuations.len()].to_vec();
            at += q.continuations.len();
            s
        })
        .collect())
}

/// `np.argmax`: the first maximum; a NaN wins (numpy returns the first NaN).
pub fn np_argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x.is_nan() {
            return i;
        }
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// lm-eval's per-item multiple-choice outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McOutcome {
    pub pred: usize,
    pub pred_norm: usize,
    pub acc: f64,
    pub acc_norm: f64,
    /// Probability mass of the gold choices (MC2).
    pub mc2: f64,
}

/// `acc`, `acc_norm` (log-likelihood / characters of the choice, delimiter excluded) and MC2.
pub fn outcome(lls: &[f64], choices: &[String], gold: &[usize]) -> McOutcome {
    let normed: Vec<f64> = lls.iter().zip(choices).map(|(ll, c)| ll / c.chars().count() as f64).collect();
    let pred = np_argmax(lls);
    let pred_norm = np_argmax(&normed);
    McOutcome {
        pred,
        pred_norm,
        acc: f64::from(u8::from(gold.contains(&pred))),
        acc_norm: f64::from(u8::from(gold.contains(&pred_norm))),
        mc2: gold_mass(lls, gold),
    }
}

/// `Σ_gold exp(ll) / Σ_all exp(ll)` (MC2), computed after subtracting the largest ll.
pub fn gold_mass(lls: &[f64], gold: &[usize]) -> f64 {
    let max = lls.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let probs: Vec<f64> = lls.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    gold.iter().filter_map(|&g| probs.get(g)).sum::<f64>() / total
}

/// How an item becomes a context string and continuations.
#[derive(Debug, Clone, PartialEq)]
pub struct McFormat {
    /// `{context}` and `{question}` are replaced.
    pub prompt: String,
    /// Put before each choice (lm-eval's `target_delimiter`).
    pub delimiter: String,
    /// Python-`strip()` the rendered context (BIG-bench's HF conversion strips `inputs`).
    pub strip_context: bool,
    /// Python-`strip()` each choice (BIG-bench's HF conversion strips the targets).
    pub strip_choices: bool,
}

impl Default for McFormat {
    fn default() -> Self {
        Self { prompt: "{context}{question}".into(), delimiter: " ".into(), strip_context: false, strip_choices: false }
    }
}

impl McFormat {
    pub fn context(&self, item: &MultipleChoice) -> String {
        let c = fill(&self.prompt, &[("context", &item.context), ("question", &item.question)]);
        if self.strip_context {
            py_strip(&c).to_string()
        } else {
            c
        }
    }

    pub fn choices(&self, item: &MultipleChoice) -> Vec<String> {
        item.choices.iter().map(|c| if self.strip_choices { py_strip(c).to_string() } else { c.clone() }).collect()
    }

    pub fn question(&self, item: &MultipleChoice) -> McQuestion {
        McQuestion {
            context: self.context(item),
            continuations: self.choices(item).iter().map(|c| format!("{}{c}", self.delimiter)).collect(),
        }
    }
}

/// Per-item result (one line of `outputs.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct McRecord {
    pub id: String,
    pub category: Option<String>,
    pub context: String,
    pub choices: Vec<String>,
    pub gold: Vec<usize>,
    pub loglikelihoods: Vec<f64>,
    pub is_greedy: Vec<bool>,
    pub pred: usize,
    pub pred_norm: usize,
    pub acc: f64,
    pub acc_norm: f64,
    /// Probability mass on the true choices after normalizing over all choices (MC2).
    pub mc2: f64,
}

/// Scores every item with lm-eval's formulation.
pub fn score_items(
    model: &CausalLm,
    tok: &TextTokenizer,
    items: &[MultipleChoice],
    format: &McFormat,
    opts: &ScoreOptions,
) -> Result<Vec<McRecord>> {
    let questions: Vec<McQuestion> = items.iter().map(|i| format.question(i)).collect();
    let scores = score_questions(model, tok, &questions, opts)?;
    Ok(items
        .iter()
        .zip(questions)
        .zip(scores)
        .map(|((item, q), s)| {
            let lls: Vec<f64> = s.iter().map(|s| s.logprob).collect();
            let choices = format.choices(item);
            let o = outcome(&lls, &choices, &item.gold);
            McRecord {
                id: item.id.clone(),
                category: item.category.clone(),
                context: q.context,
                choices,
                gold: item.gold.clone(),
                is_greedy: s.iter().map(|s| s.is_greedy).collect(),
                loglikelihoods: lls,
                pred: o.pred,
                pred_norm: o.pred_norm,
                acc: o.acc,
                acc_norm: o.acc_norm,
                mc2: o.mc2,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_norm_divides_by_choice_characters_without_delimiter() {
        // lls / len(choice) in characters: -5/2 = -2.5 < -7/3 = -2.33, so the second choice wins
        // (by UTF-8 bytes, -5/4, or with the delimiter counted, -5/3 > -7/4, the first would).
        let choices = vec!["éé".to_string(), "abc".to_string()];
        let o = outcome(&[-5.0, -7.0], &choices, &[1]);
        assert_eq!(o.pred, 0);
        assert_eq!(o.pred_norm, 1);
        assert_eq!((o.acc, o.acc_norm), (0.0, 1.0));
        let mass = gold_mass(&[(0.5f64).ln(), (0.25f64).ln(), (0.25f64).ln()], &[1, 2]);
        assert!((mass - 0.5).abs() < 1e-12);
        assert_eq!(np_argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(np_argmax(&[1.0, f64::NAN, 3.0]), 1);
    }

    #[test]
    fn python_whitespace_and_single_pass_fill() {
        assert_eq!(py_strip("\n\u{1f} a b \u{a0}"), "a b");
        assert_eq!(fill("{context}|{question}|{x}", &[("context", "{question}"), ("question", "q")]), "{question}|q|{x}");
        assert_eq!(fill("a {b", &[("b", "c")]), "a {b");
    }

    #[test]
    fn truncation_keeps_the_last_max_length_plus_one_tokens() {
        assert_eq!(truncate_left(vec![1, 2, 3, 4], &[5, 6], 4).unwrap(), vec![2, 3, 4]);
        assert_eq!(truncate_left(vec![1, 2], &[5, 6], 4).unwrap(), vec![1, 2]);
        assert!(truncate_left(vec![1], &[5, 6, 7], 2).is_err());
    }
}
