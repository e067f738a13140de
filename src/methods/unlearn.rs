//! LLM unlearning (Yao, Xu, Liu; the `unlearn` train method), as llm_unlearn's `unlearn_harm.py`
//! computes it. Every step takes one batch of the forget set (harmful question/answer pairs, file
//! order, cycling) and one of the retain set (TruthfulQA question/best answer, shuffled):
//!
//! `loss = e1 * L_fgt + e2 * L_rdn + e3 * L_nor`
//!
//! - `L_fgt`: gradient ascent, the negated answer loss of the forget batch;
//! - `L_rdn`: random mismatch, the answer loss of each forget question paired with K answers
//!   drawn once per step from a pool of normal answers (the same K for the whole batch);
//! - `L_nor`: the forward KL from the frozen original model to the current one on the retain
//!   batch, per position, averaged over positions (or the official cross-entropy form,
//!   `-sum p_orig log p_cur`, which is the KL plus the original's entropy).
//!
//! The answer loss of one sequence is the official `get_answer_loss`: positions from the last
//! prompt token on (`start_loc`) are weighted 1 and normalized by their count, which is one more
//! than the number of answer tokens (the last position predicts nothing), so a sample's loss is
//! `sum of its answer tokens' CE / (answer tokens + 1)`; the batch's loss is the mean over samples.
//! Sequences are `### Question: {q}\n ### Answer: {a}` without an end-of-sequence token.
//!
//! Official behaviour kept selectable: the mismatch loss that also trains on the question
//! (`mismatch_positions = "official"`: the code's `start_loc` is the length of a dict, 2, so the
//! loss starts at position 2), and the KL over every position of the retain sequences, prompt
//! included (`retain_positions = "all"`; the official code also averages over padding positions,
//! whose number depends on the batch: not reproduced). GA is `mismatch_weight = 0`.

use candle_core::{Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::cell::Cell;

use super::params::{check_range, MethodOptions, StageInputs, Trained, Validate};
use super::sft::{Finetune, Trainee};
use crate::data::{Dataset, Items};
use crate::eval::generation::PromptFormat;
use crate::model::{CausalLm, ForwardOptions, ModelError, Result, TextTokenizer};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{Metrics, StageContext, StageError};
use crate::train::reference::{log_softmax, reference_token_logits, token_logits};
use crate::train::{Batch, Example, GradientRule, Gradients, Order, Stream, StreamSteps, TrainBatch, TrainItem, IGNORE_INDEX};

/// The `unlearn` stage's own keys (beside the optimizer block). They are the keys the SFT and DPO
/// stages have too, so one stage can sweep `method` over `sft`, `unlearn` and `dpo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlearnParams {
    /// The forget set: harmful question/answer pairs (an instruction dataset), in file order.
    pub data: String,
    /// What trains: a LoRA adapter or every weight (the official default is every weight).
    #[serde(default)]
    pub finetune: Finetune,
}

/// `unlearn = { ... }`: the retain set and the loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlearnOptions {
    /// Normal question/answer pairs kept close to the original model (an instruction dataset).
    pub retain: String,
    /// Datasets whose answers the mismatch term draws from: an instruction dataset gives its
    /// outputs, a multiple-choice dataset every choice (the official pool: TruthfulQA's best,
    /// correct and incorrect answers). Default: the retain set's answers.
    #[serde(default)]
    pub mismatch_pool: Vec<String>,
    /// e1, the gradient-ascent weight (the official `bad_weight`).
    #[serde(default = "default_forget_weight")]
    pub forget_weight: f64,
    /// e2, the random-mismatch weight (`random_weight`); 0 is plain GA.
    #[serde(default = "one")]
    pub mismatch_weight: f64,
    /// e3, the weight of the divergence from the original model (`normal_weight`).
    #[serde(default = "one")]
    pub retain_weight: f64,
    /// K, random answers per step.
    #[serde(default = "default_k")]
    pub mismatch_answers: usize,
    #[serde(default)]
    pub mismatch_positions: MismatchPositions,
    #[serde(default)]
    pub retain_divergence: Divergence,
    #[serde(default)]
    pub retain_positions: RetainPositions,
}

fn default_forget_weight() -> f64 {
    0.5
}
fn one() -> f64 {
    1.0
}
fn default_k() -> usize {
    5
}

/// Where the mismatch loss is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MismatchPositions {
    /// The random answer's tokens (the paper: "all GA and GD are done on the y part only").
    #[default]
    Answer,
    /// From position 2 on, question included (the released code).
    Official,
}

/// How the retain term compares the current model with the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Divergence {
    /// `sum p_orig (log p_orig - log p_cur)` (the paper's forward KL).
    #[default]
    Kl,
    /// `-sum p_orig log p_cur` (the released code; the KL plus a constant).
    CrossEntropy,
}

/// Which positions of the retain sequences the divergence averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetainPositions {
    /// The positions that predict the answer (the paper's `(x, y_<i)`).
    #[default]
    Answer,
    /// Every position that predicts a token, prompt included (the released code, less padding).
    All,
}

impl Validate for UnlearnParams {
    fn validate(&self, _: &str) -> std::result::Result<(), ParamError> {
        Ok(())
    }
}

impl StageInputs for UnlearnParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.data.as_str()]
    }
}

impl MethodOptions for UnlearnOptions {
    const KEY: &'static str = "unlearn";
}

impl Validate for UnlearnOptions {
    fn validate(&self, _: &str) -> std::result::Result<(), ParamError> {
        check_range("unlearn.forget_weight", self.forget_weight, 0.0, f64::INFINITY)?;
        check_range("unlearn.mismatch_weight", self.mismatch_weight, 0.0, f64::INFINITY)?;
        check_range("unlearn.retain_weight", self.retain_weight, 0.0, f64::INFINITY)?;
        if self.mismatch_answers == 0 && self.mismatch_weight > 0.0 {
            return Err(ParamError::new("unlearn.mismatch_answers", "must be at least 1 when mismatch_weight > 0"));
        }
        Ok(())
    }
}

impl StageInputs for UnlearnOptions {
    fn datasets(&self) -> Vec<&str> {
        let mut v = vec![self.retain.as_str()];
        for d in &self.mismatch_pool {
            if !v.contains(&d.as_str()) {
                v.push(d);
            }
        }
        v
    }
}

/// A question/answer sequence and its rendered prompt (the mismatch term re-pairs prompts with
/// other answers).
#[derive(Debug, Clone, PartialEq)]
pub struct QaExample {
    pub example: Example,
    pub prompt: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QaBatch {
    pub batch: TrainBatch,
    pub prompts: Vec<String>,
}

impl TrainItem for QaExample {
    type Batch = QaBatch;
    fn collate(items: &[&Self]) -> QaBatch {
        QaBatch {
            batch: Example::collate(&items.iter().map(|q| &q.example).collect::<Vec<_>>()),
            prompts: items.iter().map(|q| q.prompt.clone()).collect(),
        }
    }
}

impl Batch for QaBatch {
    fn num_targets(&self) -> usize {
        self.batch.num_targets()
    }
    fn num_tokens(&self) -> usize {
        Batch::num_tokens(&self.batch)
    }
}

/// Tokenizes `prompt + answer` without an end-of-sequence token (the official format), cut at
/// `max_len`; labels supervise the tokens from `from` on (the prompt's token count for
/// the answer; 3 for the official mismatch loss, which weights positions from 2 on).
pub fn qa_example(tok: &TextTokenizer, prompt: &str, answer: &str, max_len: usize, from: SuperviseFrom) -> Result<QaExample> {
    let mut ids = tok.encode(&format!("{prompt}{answer}"), true)?;
    ids.truncate(max_len);
    let start = match from {
        SuperviseFrom::Answer => tok.encode(prompt, true)?.len(),
        SuperviseFrom::Position(p) => p,
    }
    .min(ids.len());
    let labels = ids.iter().enumerate().map(|(i, &t)| if i < start { IGNORE_INDEX } else { t as i64 }).collect();
    Ok(QaExample { example: Example { input_ids: ids, labels }, prompt: prompt.to_string() })
}

/// The first supervised token of a [`qa_example`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperviseFrom {
    Answer,
    Position(usize),
}

/// The official `get_answer_loss` of a batch: per sequence, the sum of its supervised tokens'
/// cross-entropy over (their count + 1), averaged over the sequences that have any.
pub fn answer_loss(model: &CausalLm, batch: &TrainBatch, opts: &ForwardOptions) -> Result<Tensor> {
    let t = token_logits(model, batch, opts)?;
    let per_token = t.target_logprobs()?.neg()?;
    let mut counts = vec![0usize; t.sequences];
    for &s in &t.sequence {
        counts[s] += 1;
    }
    let used = counts.iter().filter(|&&c| c > 0).count();
    // Each token weighs 1 / ((its sequence's count + 1) * sequences used).
    let weights: Vec<f32> = t.sequence.iter().map(|&s| 1.0 / ((counts[s] + 1) as f32 * used as f32)).collect();
    let w = Tensor::from_vec(weights, t.sequence.len(), per_token.device())?;
    Ok((per_token * w)?.sum_all()?)
}

/// The retain term: the divergence of the current model from the reference at the batch's
/// supervised positions, averaged over positions.
pub fn retain_divergence(
    model: &CausalLm,
    reference: &CausalLm,
    batch: &TrainBatch,
    kind: Divergence,
    opts: &ForwardOptions,
) -> Result<Tensor> {
    let orig = reference_token_logits(reference, batch, opts)?;
    let cur = token_logits(model, batch, opts)?;
    let log_p = log_softmax(&orig.logits)?;
    let p = log_p.exp()?;
    let log_q = log_softmax(&cur.logits)?;
    let per_position = match kind {
        Divergence::Kl => (&p * (log_p - log_q)?)?.sum(1)?,
        Divergence::CrossEntropy => (&p * log_q)?.sum(1)?.neg()?,
    };
    Ok(per_position.mean_all()?)
}

/// Builds the mismatch sequences of one step: every prompt with every drawn answer.
pub type MismatchBuilder<'a> = Box<dyn Fn(&str, &str) -> Result<QaExample> + 'a>;

/// The unlearning gradient of one step, whose micro-batch is `[forget, retain]`.
pub struct UnlearnRule<'a> {
    pub forget_weight: f64,
    pub mismatch_weight: f64,
    pub retain_weight: f64,
    pub divergence: Divergence,
    pub mismatch_answers: usize,
    pub pool: Vec<String>,
    pub build: MismatchBuilder<'a>,
    /// The frozen original as a model of its own (full fine-tuning); `None`: the trained model's
    /// own reference (its adapters as loaded, new ones left out).
    pub reference: Option<&'a CausalLm>,
    pub rng: StdRng,
    /// Tokens run forward and backward so far (compute, as the paper compares it with RLHF).
    pub forward_tokens: Cell<usize>,
    pub backward_tokens: Cell<usize>,
    /// The last step's forget answer loss (which ascent drives up), mismatch loss and divergence.
    pub last_terms: Cell<[f64; 3]>,
}

impl UnlearnRule<'_> {
    fn count(&self, batch: &TrainBatch, backward: bool) {
        let n = Batch::num_tokens(batch);
        self.forward_tokens.set(self.forward_tokens.get() + n);
        if backward {
            self.backward_tokens.set(self.backward_tokens.get() + n);
        }
    }

    /// The K answers of this step, drawn without replacement (Python's `random.sample`).
    fn draw(&mut self) -> Vec<String> {
        let k = self.mismatch_answers.min(self.pool.len());
        self.pool.choose_multiple(&mut self.rng, k).cloned().collect()
    }
}

impl GradientRule<Vec<QaBatch>> for UnlearnRule<'_> {
    fn gradients(
        &mut self,
        model: &CausalLm,
        params: &[(String, Var)],
        micro: &[Vec<QaBatch>],
        opts: &ForwardOptions,
    ) -> Result<(f64, Gradients)> {
        let mut total = Gradients::zeros(params)?;
        let mut loss_sum = 0.0;
        let mut terms = [0.0; 3];
        for step in micro {
            let [forget, retain] = step.as_slice() else {
                return Err(ModelError::Input("an unlearning step needs one forget and one retain batch".into()));
            };
            let mut add = |loss: Tensor, weight: f64, slot: usize| -> Result<()> {
                let value = loss.to_scalar::<f32>()? as f64;
                terms[slot] += value / micro.len() as f64;
                loss_sum += weight * value / micro.len() as f64;
                total.add_scaled(&Gradients::of(&loss, params)?, weight / micro.len() as f64)?;
                Ok(())
            };
            if self.forget_weight > 0.0 && forget.num_targets() > 0 {
                self.count(&forget.batch, true);
                // Gradient ascent: the answer loss enters with a negative weight.
                add(answer_loss(model, &forget.batch, opts)?, -self.forget_weight, 0)?;
            }
            if self.mismatch_weight > 0.0 && !self.pool.is_empty() {
                let answers = self.draw();
                let mut seqs = Vec::new();
                for prompt in &forget.prompts {
                    for answer in &answers {
                        seqs.push((self.build)(prompt, answer)?.example);
                    }
                }
                let batch = Example::collate(&seqs.iter().collect::<Vec<_>>());
                if batch.num_targets() > 0 {
                    self.count(&batch, true);
                    add(answer_loss(model, &batch, opts)?, self.mismatch_weight, 1)?;
                }
            }
            if self.retain_weight > 0.0 && retain.num_targets() > 0 {
                self.count(&retain.batch, false);
                self.count(&retain.batch, true);
                let reference = self.reference.unwrap_or(model);
                add(retain_divergence(model, reference, &retain.batch, self.divergence, opts)?, self.retain_weight, 2)?;
            }
        }
        self.last_terms.set(terms);
        Ok((loss_sum, total))
    }
}

/// The answers a pool dataset contributes.
fn pool_answers(ds: &Dataset) -> std::result::Result<Vec<String>, String> {
    match ds.items() {
        Items::Instructions(v) => Ok(v.iter().map(|i| i.output.clone()).collect()),
        Items::MultipleChoice(v) => Ok(v.iter().flat_map(|q| q.choices.iter().cloned()).collect()),
        _ => Err(format!("dataset `{}` holds {:?} items: a mismatch pool needs instructions or multiple choice", ds.name(), ds.kind())),
    }
}

/// The `unlearn` method.
pub struct Unlearn;

impl super::TypedMethod for Unlearn {
    const NAME: &'static str = "unlearn";
    const KIND: StageKind = StageKind::Train;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = true;
    type Params = Trained<UnlearnParams, UnlearnOptions>;

    fn run(ctx: &StageContext, p: &Self::Params) -> std::result::Result<Metrics, StageError> {
        let (optim, up) = (&p.optim, &p.options);
        let err = |msg: String| StageError::Method(format!("stage {}: {msg}", ctx.config.name));
        if up.forget_weight == 0.0 && up.mismatch_weight == 0.0 && up.retain_weight == 0.0 {
            tracing::warn!("every unlearning weight is 0: no gradient, the model leaves the stage unchanged");
        }
        let trainee = Trainee::load(ctx, p.params.finetune, false)?;
        let reference = if trainee.is_full() && up.retain_weight > 0.0 { Some(ctx.load_reference()?.model) } else { None };
        let lm = &trainee.lm;
        let tok = &lm.tokenizer;

        let qa = |name: &str| -> std::result::Result<Vec<(String, String)>, StageError> {
            let ds = ctx.dataset(name)?;
            let items = ds.as_instructions().map_err(|e| err(format!("`{name}`: {e}")))?;
            let pairs = super::sft::render_pairs(lm, ds.template(), items, PromptFormat::Template)?;
            Ok(pairs.into_iter().map(|p| (p.prompt, p.response)).collect())
        };
        let forget = qa(&p.params.data)?;
        let retain = qa(&up.retain)?;
        let retain_from = match up.retain_positions {
            RetainPositions::Answer => SuperviseFrom::Answer,
            RetainPositions::All => SuperviseFrom::Position(1),
        };
        let tokenize = |pairs: &[(String, String)], from: SuperviseFrom| -> std::result::Result<Vec<QaExample>, StageError> {
            let mut v = pairs.iter().map(|(pr, a)| qa_example(tok, pr, a, optim.max_len, from)).collect::<Result<Vec<_>>>()?;
            v.retain(|q| q.example.labels.iter().skip(1).any(|&l| l != IGNORE_INDEX));
            Ok(v)
        };
        let forget_ex = tokenize(&forget, SuperviseFrom::Answer)?;
        let retain_ex = tokenize(&retain, retain_from)?;
        if forget_ex.is_empty() || retain_ex.is_empty() {
            return Err(err(format!(
                "the forget ({}) or retain ({}) set keeps no answer token within max_len = {}",
                forget_ex.len(),
                retain_ex.len(),
                optim.max_len
            )));
        }
        let mut pool = Vec::new();
        if up.mismatch_pool.is_empty() {
            pool.extend(retain.iter().map(|(_, a)| a.clone()));
        }
        for name in &up.mismatch_pool {
            pool.extend(pool_answers(&ctx.dataset(name)?).map_err(err)?);
        }
        let mismatch_from = match up.mismatch_positions {
            MismatchPositions::Answer => SuperviseFrom::Answer,
            MismatchPositions::Official => SuperviseFrom::Position(3),
        };
        let seed = ctx.config.seed;
        let steps = optim.max_steps.unwrap_or_else(|| forget_ex.len().div_ceil(optim.batch_size) * optim.epochs);
        let (n_forget, n_retain) = (forget_ex.len(), retain_ex.len());
        let mut source = StreamSteps::new(
            vec![
                Stream::new(forget_ex, optim.batch_size, Order::Sequential, seed),
                Stream::new(retain_ex, optim.batch_size, Order::Shuffled, seed.wrapping_add(1)),
            ],
            steps,
        );
        let mut rule = UnlearnRule {
            forget_weight: up.forget_weight,
            mismatch_weight: up.mismatch_weight,
            retain_weight: up.retain_weight,
            divergence: up.retain_divergence,
            mismatch_answers: up.mismatch_answers,
            pool,
            build: Box::new(|prompt, answer| qa_example(tok, prompt, answer, optim.max_len, mismatch_from)),
            reference: reference.as_ref(),
            rng: StdRng::seed_from_u64(seed.wrapping_add(2)),
            forward_tokens: Cell::new(0),
            backward_tokens: Cell::new(0),
            last_terms: Cell::new([0.0; 3]),
        };
        let summary = super::sft::train_logged(ctx, lm, &mut source, optim, &mut rule)?;
        let [fgt, rdn, nor] = rule.last_terms.get();
        trainee.save(ctx)?;
        Ok(Metrics::from([
            ("train_loss".to_string(), summary.final_loss),
            ("train_steps".to_string(), summary.steps as f64),
            ("forget_examples".to_string(), n_forget as f64),
            ("retain_examples".to_string(), n_retain as f64),
            ("final_forget_loss".to_string(), fgt),
            ("final_mismatch_loss".to_string(), rdn),
            ("final_retain_divergence".to_string(), nor),
            ("compute_forward_tokens".to_string(), rule.forward_tokens.get() as f64),
            ("compute_backward_tokens".to_string(), rule.backward_tokens.get() as f64),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<Trained<UnlearnParams, UnlearnOptions>, ParamError> {
        use super::super::params::StageParams;
        let text = format!("data = \"f\"\nunlearn = {{ {} }}", text.replace('\n', ", "));
        let p = Trained::<UnlearnParams, UnlearnOptions>::from_table(&toml::from_str(&text).unwrap())?;
        p.validate("unlearn")?;
        Ok(p)
    }

    #[test]
    fn defaults_are_the_official_weights_and_options_are_checked() {
        let p = parse("retain = \"r\"").unwrap();
        let u = &p.options;
        assert_eq!((u.forget_weight, u.mismatch_weight, u.retain_weight, u.mismatch_answers), (0.5, 1.0, 1.0, 5));
        assert_eq!(
            (u.mismatch_positions, u.retain_divergence, u.retain_positions),
            (MismatchPositions::Answer, Divergence::Kl, RetainPositions::Answer)
        );
        assert_eq!(p.datasets(), vec!["f", "r"]);
        let p = parse("retain = \"r\"\nmismatch_pool = [\"r\", \"mc\"]\nretain_divergence = \"cross_entropy\"").unwrap();
        assert_eq!(p.datasets(), vec!["f", "r", "mc"]);
        assert_eq!(parse("retain = \"r\"\nforget_weight = -1.0").unwrap_err().key, "unlearn.forget_weight");
        assert_eq!(parse("retain = \"r\"\nmismatch_answers = 0").unwrap_err().key, "unlearn.mismatch_answers");
        assert!(parse("retain = \"r\"\nmismatch_answers = 0\nmismatch_weight = 0.0").is_ok());
        assert_eq!(parse("retain = \"r\"\nretain_positions = \"some\"").unwrap_err().key, "unlearn.retain_positions");
        // Without the option table the method says what it needs.
        use super::super::params::StageParams;
        let e = Trained::<UnlearnParams, UnlearnOptions>::from_table(&toml::from_str("data = \"f\"").unwrap()).unwrap_err();
        assert_eq!(e.key, "unlearn.retain");
    }
}
