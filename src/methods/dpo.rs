//! Direct preference optimization (Rafailov et al. 2023; the `dpo` train method), TRL's
//! `DPOTrainer` with the sigmoid loss:
//!
//! `loss = -log sigmoid(beta * ((log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))))`
//!
//! averaged over the batch, where `log pi(y|x)` sums the response tokens' log-probabilities
//! (the response followed by the end-of-sequence token, the prompt masked) and `ref` is the frozen
//! model before the stage. Preferences come from a preference dataset (`pku-saferlhf` with
//! `prefer = "safer"`: the chosen answer is the safer one), in the dataset's prompt template.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use std::cell::Cell;

use super::params::{check_range, MethodOptions, StageInputs, Trained, Validate};
use super::sft::{Finetune, Trainee};
use crate::data::{Instruction, SftPair};
use crate::eval::generation::{render_prompt, PromptFormat};
use crate::model::{CausalLm, ForwardOptions, Result};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{Metrics, StageContext, StageError};
use crate::train::reference::{reference_token_logits, token_logits};
use crate::train::{Batch, EpochBatches, GradientRule, Gradients, PairBatch, ResponsePair, TrainBatch};

/// The `dpo` stage's own keys (beside the optimizer block).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoParams {
    /// A preference dataset (prompt, chosen, rejected).
    pub data: String,
    /// Pairs used at most (file order).
    #[serde(default)]
    pub samples: Option<usize>,
    #[serde(default)]
    pub prompt_format: PromptFormat,
    #[serde(default)]
    pub finetune: Finetune,
}

/// `dpo = { ... }` (optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoOptions {
    /// Inverse temperature of the implicit reward (TRL's default 0.1).
    #[serde(default = "default_beta")]
    pub beta: f64,
}

fn default_beta() -> f64 {
    0.1
}

impl MethodOptions for DpoOptions {
    const KEY: &'static str = "dpo";
}

impl StageInputs for DpoOptions {
    fn datasets(&self) -> Vec<&str> {
        Vec::new()
    }
}

impl Validate for DpoOptions {
    fn validate(&self, _: &str) -> std::result::Result<(), ParamError> {
        check_range("dpo.beta", self.beta, 0.0, f64::INFINITY)?;
        if self.beta == 0.0 {
            return Err(ParamError::new("dpo.beta", "must be positive"));
        }
        Ok(())
    }
}

impl Validate for DpoParams {
    fn validate(&self, _: &str) -> std::result::Result<(), ParamError> {
        if self.samples == Some(0) {
            return Err(ParamError::new("samples", "must be at least 1"));
        }
        Ok(())
    }
}

impl StageInputs for DpoParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.data.as_str()]
    }
}

/// Per-pair sums of response log-probabilities (`[B]`).
fn sequence_logps(model: &CausalLm, batch: &TrainBatch, opts: &ForwardOptions, reference: bool) -> Result<Tensor> {
    let t = if reference { reference_token_logits(model, batch, opts)? } else { token_logits(model, batch, opts)? };
    Ok(t.sequence_logprobs()?)
}

/// The DPO loss of a pair batch and its implicit rewards (`beta * (log pi - log ref)`, chosen and
/// rejected, per pair).
pub fn dpo_loss(
    model: &CausalLm,
    reference: &CausalLm,
    batch: &PairBatch,
    beta: f64,
    opts: &ForwardOptions,
) -> Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let pi_c = sequence_logps(model, &batch.preferred, opts, false)?;
    let pi_r = sequence_logps(model, &batch.rejected, opts, false)?;
    let ref_c = sequence_logps(reference, &batch.preferred, opts, true)?.detach();
    let ref_r = sequence_logps(reference, &batch.rejected, opts, true)?.detach();
    let chosen = (pi_c - ref_c)?;
    let rejected = (pi_r - ref_r)?;
    let z = ((&chosen - &rejected)? * beta)?;
    // -log sigmoid(z) = softplus(-z) = log(1 + exp(-z)), computed stably as max(-z, 0) + log(1 + exp(-|z|)).
    let neg = z.neg()?;
    let loss = (neg.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?.mean_all()?;
    let rewards = |t: &Tensor| -> Result<Vec<f32>> { Ok((t.detach() * beta)?.to_vec1::<f32>()?) };
    Ok((loss, rewards(&chosen)?, rewards(&rejected)?))
}

/// The DPO gradient rule; keeps the implicit reward statistics of the last step.
pub struct DpoRule<'a> {
    pub beta: f64,
    /// The frozen reference as a model of its own (full fine-tuning); `None`: the trained
    /// model's own reference (the adapters as loaded, new ones left out).
    pub reference: Option<&'a CausalLm>,
    pub forward_tokens: Cell<usize>,
    pub backward_tokens: Cell<usize>,
    /// Last step: mean reward margin and the share of pairs whose chosen reward is higher.
    pub last_margin: Cell<f64>,
    pub last_accuracy: Cell<f64>,
}

impl GradientRule<PairBatch> for DpoRule<'_> {
    fn gradients(
        &mut self,
        model: &CausalLm,
        params: &[(String, Var)],
        micro: &[PairBatch],
        opts: &ForwardOptions,
    ) -> Result<(f64, Gradients)> {
        let reference = self.reference.unwrap_or(model);
        let pairs: usize = micro.iter().map(|b| b.preferred.input_ids.len()).sum();
        let mut total = Gradients::zeros(params)?;
        let (mut loss_sum, mut margin, mut wins) = (0.0, 0.0, 0usize);
        for mb in micro {
            let (loss, chosen, rejected) = dpo_loss(model, reference, mb, self.beta, opts)?;
            // Pairs weigh equally across micro-batches (the mean over the whole step's pairs).
            let w = mb.preferred.input_ids.len() as f64 / pairs as f64;
            loss_sum += loss.to_scalar::<f32>()? as f64 * w;
            total.add_scaled(&Gradients::of(&loss, params)?, w)?;
            for (c, r) in chosen.iter().zip(&rejected) {
                margin += (c - r) as f64;
                wins += usize::from(c > r);
            }
            let n = Batch::num_tokens(mb);
            self.forward_tokens.set(self.forward_tokens.get() + 2 * n);
            self.backward_tokens.set(self.backward_tokens.get() + n);
        }
        self.last_margin.set(margin / pairs as f64);
        self.last_accuracy.set(wins as f64 / pairs as f64);
        Ok((loss_sum, total))
    }

    /// The compute counters and the last step's reward statistics (reported as metrics; floats
    /// as bit patterns, which JSON gives back exactly).
    fn state(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "forward_tokens": self.forward_tokens.get(),
            "backward_tokens": self.backward_tokens.get(),
            "last_margin_bits": self.last_margin.get().to_bits(),
            "last_accuracy_bits": self.last_accuracy.get().to_bits(),
        }))
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let count = |k: &str| state[k].as_u64().map(|v| v as usize).ok_or_else(|| missing(k));
        let value = |k: &str| state[k].as_u64().map(f64::from_bits).ok_or_else(|| missing(k));
        self.forward_tokens.set(count("forward_tokens")?);
        self.backward_tokens.set(count("backward_tokens")?);
        self.last_margin.set(value("last_margin_bits")?);
        self.last_accuracy.set(value("last_accuracy_bits")?);
        Ok(())
    }
}

fn missing(key: &str) -> crate::model::ModelError {
    crate::model::ModelError::Input(format!("the step checkpoint's DPO state lacks `{key}`"))
}

/// The `dpo` method.
pub struct Dpo;

impl super::TypedMethod for Dpo {
    const NAME: &'static str = "dpo";
    const KIND: StageKind = StageKind::Train;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = true;
    type Params = Trained<DpoParams, DpoOptions>;

    fn run(ctx: &StageContext, p: &Self::Params) -> std::result::Result<Metrics, StageError> {
        let (optim, dp) = (&p.optim, &p.params);
        let trainee = Trainee::load(ctx, dp.finetune, false)?;
        let reference = if trainee.is_full() { Some(ctx.load_reference()?.model) } else { None };
        let lm = &trainee.lm;
        let ds = ctx.dataset(&dp.data)?;
        let prefs = ds.as_preferences().map_err(|e| StageError::Method(format!("stage {}: `{}`: {e}", ctx.config.name, dp.data)))?;
        let prefs = &prefs[..dp.samples.map_or(prefs.len(), |n| n.min(prefs.len()))];
        let mut pairs = Vec::with_capacity(prefs.len());
        for pref in prefs {
            let item = Instruction { instruction: pref.prompt.clone(), input: String::new(), output: String::new(), label: None };
            let prompt = render_prompt(lm, ds.template(), &item, dp.prompt_format)?;
            let side = |response: &str| {
                super::sft::tokenize_pair(&lm.tokenizer, &SftPair { prompt: prompt.clone(), response: response.to_string() }, optim.max_len)
            };
            let pair = ResponsePair { preferred: side(&pref.chosen)?, rejected: side(&pref.rejected)? };
            // Both sides need a response token (a log-probability each).
            if super::sft::has_target(&pair.preferred) && super::sft::has_target(&pair.rejected) {
                pairs.push(pair);
            }
        }
        if pairs.is_empty() {
            return Err(StageError::Method(format!(
                "stage {}: no preference pair keeps a response token on both sides within max_len = {}",
                ctx.config.name, optim.max_len
            )));
        }
        let mut rule = DpoRule {
            beta: p.options.beta,
            reference: reference.as_ref(),
            forward_tokens: Cell::new(0),
            backward_tokens: Cell::new(0),
            last_margin: Cell::new(f64::NAN),
            last_accuracy: Cell::new(f64::NAN),
        };
        let summary = super::sft::train_logged(ctx, lm, &mut EpochBatches::new(&pairs, &optim.trainer(ctx.config.seed)), optim, &mut rule)?;
        trainee.save(ctx)?;
        Ok(Metrics::from([
            ("train_loss".to_string(), summary.final_loss),
            ("train_steps".to_string(), summary.steps as f64),
            ("train_examples".to_string(), pairs.len() as f64),
            ("final_reward_margin".to_string(), rule.last_margin.get()),
            ("final_reward_accuracy".to_string(), rule.last_accuracy.get()),
            ("compute_forward_tokens".to_string(), rule.forward_tokens.get() as f64),
            ("compute_backward_tokens".to_string(), rule.backward_tokens.get() as f64),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_must_be_positive_and_samples_at_least_one() {
        use super::super::params::StageParams;
        let parse = |t: &str| {
            let p = Trained::<DpoParams, DpoOptions>::from_table(&toml::from_str(t).unwrap())?;
            p.validate("dpo").map(|_| p)
        };
        assert_eq!(parse("data = \"d\"").unwrap().options.beta, 0.1);
        assert_eq!(parse("data = \"d\"\ndpo = { beta = 0.0 }").unwrap_err().key, "dpo.beta");
        assert_eq!(parse("data = \"d\"\nsamples = 0").unwrap_err().key, "samples");
        assert_eq!(parse("data = \"d\"\ndpo = { betta = 0.2 }").unwrap_err().key, "dpo.betta");
    }
}
