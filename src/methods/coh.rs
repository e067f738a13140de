//! Chain of Hindsight (Liu, Sferrazza, Abbeel 2023; the `coh` train method), a baseline of mistake
//! analysis: the model is fine-tuned on its prompts followed by feedback-annotated answers,
//! `A good answer: <preferred>\nA bad answer: <rejected>` (the two in random order per pair), with
//! the loss on the answers and the final end-of-sequence token only, not on the feedback
//! phrases. Instruction data of the stage (`data` or `mix`) trains as good answers alone. At
//! inference the model is conditioned on the good phrase: a generation metric's
//! `strategy = { kind = "hint", prefill = "A good answer:", stop = "A bad answer:" }`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};

use super::params::{MethodOptions, StageInputs, Trained, Validate};
use super::sft::{has_target, render_pairs, training_items, TrainParams, Trainee};
use crate::data::Instruction;
use crate::eval::generation::render_prompt;
use crate::model::TextTokenizer;
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{Metrics, StageContext, StageError};
use crate::train::{EpochBatches, Example, PlainSft, IGNORE_INDEX};

/// `coh = { ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohOptions {
    /// A preference dataset: (prompt, preferred, rejected) become feedback sequences.
    pub pairs: String,
    /// The positive feedback phrase.
    #[serde(default = "default_good")]
    pub good: String,
    /// The negative feedback phrase.
    #[serde(default = "default_bad")]
    pub bad: String,
}

fn default_good() -> String {
    "A good answer:".into()
}
fn default_bad() -> String {
    "A bad answer:".into()
}

impl MethodOptions for CohOptions {
    const KEY: &'static str = "coh";
}

impl StageInputs for CohOptions {
    fn datasets(&self) -> Vec<&str> {
        vec![self.pairs.as_str()]
    }
}

impl Validate for CohOptions {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        if self.good.trim().is_empty() || self.bad.trim().is_empty() {
            return Err(ParamError::new(if self.good.trim().is_empty() { "coh.good" } else { "coh.bad" }, "must not be empty"));
        }
        if self.good == self.bad {
            return Err(ParamError::new("coh.bad", "must differ from `good`"));
        }
        Ok(())
    }
}

/// A span of the text after the prompt: feedback phrases are context, answers are trained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    pub trained: bool,
}

/// The segments after the prompt: `good answer` alone, or both feedbacks in the given order.
/// Each answer keeps a leading space (`A good answer: Sure...`); the second phrase starts a new line.
pub fn feedback_segments(o: &CohOptions, good: &str, bad: Option<&str>, bad_first: bool) -> Vec<Segment> {
    let phrase = |t: &str| Segment { text: t.to_string(), trained: false };
    let answer = |t: &str| Segment { text: format!(" {t}"), trained: true };
    match bad {
        None => vec![phrase(&o.good), answer(good)],
        Some(bad) => {
            let (first, second) = if bad_first { ((&o.bad, bad), (&o.good, good)) } else { ((&o.good, good), (&o.bad, bad)) };
            vec![phrase(first.0), answer(first.1), phrase(&format!("\n{}", second.0)), answer(second.1)]
        }
    }
}

/// Tokenizes prompt + segments + eos: labels only on the trained segments and the eos. Segment
/// boundaries are found by encoding each prefix of the text (as prompt masks are), cut at `max_len`.
pub fn tokenize_segments(tok: &TextTokenizer, prompt: &str, segments: &[Segment], max_len: usize) -> Result<Example, StageError> {
    let eos = tok.eos_token.as_deref().unwrap_or_default();
    let mut text = prompt.to_string();
    let mut start = tok.encode(&text, true)?.len();
    let mut trained_spans = Vec::new();
    for s in segments {
        text.push_str(&s.text);
        let end = tok.encode(&text, true)?.len();
        if s.trained {
            trained_spans.push(start..end);
        }
        start = end;
    }
    text.push_str(eos);
    let mut ids = tok.encode(&text, true)?;
    trained_spans.push(start..ids.len());
    ids.truncate(max_len);
    let labels =
        ids.iter().enumerate().map(|(i, &t)| if trained_spans.iter().any(|s| s.contains(&i)) { t as i64 } else { IGNORE_INDEX }).collect();
    Ok(Example { input_ids: ids, labels })
}

/// The `coh` train method.
pub struct Coh;

impl super::TypedMethod for Coh {
    const NAME: &'static str = "coh";
    const KIND: StageKind = StageKind::Train;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = true;
    type Params = Trained<TrainParams, CohOptions>;

    fn run(ctx: &StageContext, p: &Self::Params) -> Result<Metrics, StageError> {
        let (optim, tp, o) = (&p.optim, &p.params, &p.options);
        let trainee = Trainee::load(ctx, tp.finetune, tp.single_lora)?;
        let lm = &trainee.lm;
        let mut examples = Vec::new();
        // Instruction data: good answers alone.
        let (items, template) = training_items(ctx, tp)?;
        for pair in render_pairs(lm, &template, &items, tp.prompt_format)? {
            examples.push(tokenize_segments(
                &lm.tokenizer,
                &pair.prompt,
                &feedback_segments(o, &pair.response, None, false),
                optim.max_len,
            )?);
        }
        // Preference pairs: both feedbacks, the order drawn per pair from the stage's seed.
        let pairs = ctx.dataset(&o.pairs)?;
        let prefs = pairs.as_preferences().map_err(|e| StageError::Method(e.to_string()))?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(ctx.config.seed);
        for pref in prefs {
            let item = Instruction { instruction: pref.prompt.clone(), input: String::new(), output: String::new(), label: None };
            let prompt = render_prompt(lm, pairs.template(), &item, tp.prompt_format)?;
            let bad_first = rng.random_bool(0.5);
            examples.push(tokenize_segments(
                &lm.tokenizer,
                &prompt,
                &feedback_segments(o, &pref.chosen, Some(&pref.rejected), bad_first),
                optim.max_len,
            )?);
        }
        let trainable = examples.iter().filter(|e| has_target(e)).count();
        if trainable == 0 {
            return Err(StageError::Method(format!("no example keeps an answer token within max_len = {}; raise max_len", optim.max_len)));
        }
        let summary =
            super::sft::train_logged(ctx, lm, &mut EpochBatches::new(&examples, &optim.trainer(ctx.config.seed)), optim, &mut PlainSft)?;
        trainee.save(ctx)?;
        let tokens = summary.tokens as f64;
        Ok(BTreeMap::from([
            ("train_loss".to_string(), summary.final_loss),
            ("train_steps".to_string(), summary.steps as f64),
            ("train_examples".to_string(), examples.len() as f64),
            ("train_pairs".to_string(), prefs.len() as f64),
            ("train_tokens".to_string(), tokens),
            ("compute_forward_tokens".to_string(), tokens),
            ("compute_backward_tokens".to_string(), tokens),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> CohOptions {
        toml::from_str("pairs = \"pku_pairs\"").unwrap()
    }

    #[test]
    fn feedback_sequences_in_both_orders() {
        let o = options();
        let text = |s: &[Segment]| s.iter().map(|x| x.text.as_str()).collect::<String>();
        let good_first = feedback_segments(&o, "Sorry, no.", Some("Sure: step 1"), false);
        assert_eq!(text(&good_first), "A good answer: Sorry, no.\nA bad answer: Sure: step 1");
        assert_eq!(good_first.iter().map(|s| s.trained).collect::<Vec<_>>(), [false, true, false, true]);
        let bad_first = feedback_segments(&o, "Sorry, no.", Some("Sure: step 1"), true);
        assert_eq!(text(&bad_first), "A bad answer: Sure: step 1\nA good answer: Sorry, no.");
        assert_eq!(text(&feedback_segments(&o, "Paris.", None, true)), "A good answer: Paris.");
    }

    /// Only the answer tokens and the final eos carry labels; the prompt and feedback phrases do not.
    #[test]
    fn masks_train_the_answers_only() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/llama_gqa");
        let tok = TextTokenizer::from_hf_dir(&dir).unwrap();
        let segments = feedback_segments(&options(), "no way", Some("yes sure"), false);
        let ex = tokenize_segments(&tok, "Q: hack it?\n", &segments, 512).unwrap();
        let decode = |ids: Vec<u32>| tok.decode(&ids, false).unwrap();
        let trained: Vec<u32> = ex.labels.iter().filter(|&&l| l != IGNORE_INDEX).map(|&l| l as u32).collect();
        let eos = tok.eos_token.clone().unwrap();
        assert_eq!(decode(trained), format!(" no way yes sure{eos}"));
        // The labelled tokens are where the answers are in the sequence.
        let spans: Vec<String> = ex
            .labels
            .split(|&l| l == IGNORE_INDEX)
            .filter(|s| !s.is_empty())
            .map(|s| decode(s.iter().map(|&l| l as u32).collect()))
            .collect();
        assert_eq!(spans, [" no way".to_string(), format!(" yes sure{eos}")]);
        assert_eq!(ex.input_ids.len(), ex.labels.len());
        // Cut at max_len: the second answer is gone.
        let short = tokenize_segments(&tok, "Q: hack it?\n", &segments, 8).unwrap();
        assert_eq!(short.input_ids.len(), 8);
    }

    #[test]
    fn options_are_checked() {
        options().validate("coh").unwrap();
        let o: CohOptions = toml::from_str("pairs = \"p\"\ngood = \"x\"\nbad = \"x\"").unwrap();
        assert_eq!(o.validate("coh").unwrap_err().key, "coh.bad");
        assert!(toml::from_str::<CohOptions>("pairs = \"p\"\ngod = \"x\"").is_err());
        assert!(toml::from_str::<CohOptions>("good = \"x\"").is_err());
    }
}
