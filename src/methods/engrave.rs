//! The `engrave` train method: SELF-ALIGN's (Dromedary v1) principle engraving, stage 3, and
//! the student fine-tuning of verbose cloning, stage 4. The model learns the self-aligned
//! answers without the principles, exemplars or internal thoughts that produced them: each
//! example is Dromedary's training text (`generate_prompt_dromedary` in training/finetune.py)
//!
//! ```text
//! {meta}\n{instruction}\n\n{input}\n\n### Dromedary\n{output}     (no input: drop "{input}\n\n")
//! ```
//!
//! with a short meta prompt (`dromedary_*_prompt_distill.txt`, stripped), no end-of-sequence
//! token (`add_eos_token False`: an answer ending `"\n\n### User\n"` teaches the model to hand
//! the turn back), cut at `max_len` tokens (`cutoff_len`), and the loss masked over the tokens of
//! the text with an empty output, right-stripped (`train_on_inputs False`), so the newline after
//! `### Dromedary` is learned. LoRA, the optimizer and DeepSpeed's `WarmupDecayLR` come from the
//! spec (`[model.lora]`, `schedule = "warmup_decay_log"`, `warmup_steps`,
//! `schedule_steps_multiplier`).
//!
//! Not reproduced: finetune.py holds out `val_set_size` (2,000) examples for a validation loss
//! (here every example trains), and its fp16 loss scaling.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::params::{StageInputs, Trained, Validate};
use super::sft::{has_target, train_logged, Finetune, Trainee};
use crate::data::{Instruction, SftPair};
use crate::eval::multiple_choice::py_strip;
use crate::model::TextTokenizer;
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{Metrics, StageContext, StageError};
use crate::train::{EpochBatches, Example, PlainSft, IGNORE_INDEX};

/// IBM/Dromedary `prompts/inference_prompts/dromedary_standard_prompt_distill.txt`.
pub const STANDARD_PROMPT: &str = include_str!("../../data/templates/dromedary_standard_prompt_distill.txt");
/// IBM/Dromedary `prompts/inference_prompts/dromedary_concise_prompt_distill.txt`.
pub const CONCISE_PROMPT: &str = include_str!("../../data/templates/dromedary_concise_prompt_distill.txt");

/// The meta prompt of the training text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaPrompt {
    /// The standard distill prompt: principle engraving (`finetune_dromedary_65b_non_verbose.sh`).
    #[default]
    Standard,
    Concise,
    /// Verbose cloning's student (`--meta_prompt_pattern "dromedary_*prompt_distill.txt"`):
    /// `meta_prompts[example_id % 2]`, concise for even and standard for odd positions in the
    /// dataset. The official ids were numbered before the merge step shuffled the examples and
    /// the order of `glob` is the file system's; alternating over the shuffled dataset gives
    /// each prompt to half the examples at random, as there.
    Alternate,
}

impl MetaPrompt {
    /// The stripped meta prompt of the example at `index`.
    pub fn text(self, index: usize) -> &'static str {
        let file = match self {
            MetaPrompt::Standard => STANDARD_PROMPT,
            MetaPrompt::Concise => CONCISE_PROMPT,
            MetaPrompt::Alternate if index % 2 == 0 => CONCISE_PROMPT,
            MetaPrompt::Alternate => STANDARD_PROMPT,
        };
        py_strip(file)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngraveParams {
    /// The instruction dataset with outputs: `@<principle_align stage>` or `@<verbose_clone stage>`.
    pub data: String,
    /// Train on the first `samples` examples only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    #[serde(default)]
    pub meta_prompt: MetaPrompt,
}

impl Validate for EngraveParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        if self.samples == Some(0) {
            return Err(ParamError::new("samples", "must be at least 1"));
        }
        Ok(())
    }
}

impl StageInputs for EngraveParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.data.as_str()]
    }
    /// The meta prompts are part of the training text (bump when a file changes).
    fn components(&self) -> BTreeMap<String, u32> {
        BTreeMap::from([("prompt:data/templates/dromedary_*_prompt_distill.txt".to_string(), 1)])
    }
}

/// `generate_prompt_dromedary`: the training text of one example, split where its output starts.
pub fn training_text(meta: &str, item: &Instruction) -> SftPair {
    let prompt = if item.input.is_empty() {
        format!("{meta}\n{}\n\n### Dromedary\n", item.instruction)
    } else {
        format!("{meta}\n{}\n\n{}\n\n### Dromedary\n", item.instruction, item.input)
    };
    SftPair { prompt, response: item.output.clone() }
}

/// Tokenizes `prompt + response` (the tokenizer's BOS, no EOS), cut at `max_len`; labels are
/// masked over `tokenize(prompt.rstrip())`, as finetune.py's `generate_and_tokenize_prompt`.
pub fn tokenize_example(tok: &TextTokenizer, pair: &SftPair, max_len: usize) -> Result<Example, StageError> {
    let mut ids = tok.encode(&format!("{}{}", pair.prompt, pair.response), true)?;
    ids.truncate(max_len);
    let masked = tok.encode(pair.prompt.trim_end_matches(crate::eval::multiple_choice::is_py_space), true)?.len().min(ids.len());
    let labels = ids.iter().enumerate().map(|(i, &t)| if i < masked { IGNORE_INDEX } else { t as i64 }).collect();
    Ok(Example { input_ids: ids, labels })
}

/// The `engrave` method.
pub struct Engrave;

impl super::TypedMethod for Engrave {
    const NAME: &'static str = "engrave";
    const KIND: StageKind = StageKind::Train;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = true;
    type Params = Trained<EngraveParams>;
    fn run(ctx: &StageContext, p: &Self::Params) -> Result<Metrics, StageError> {
        let trainee = Trainee::load(ctx, Finetune::Lora, false)?;
        let lm = &trainee.lm;
        let ds = ctx.dataset(&p.params.data)?;
        let mut items = ds.as_instructions().map_err(|e| StageError::Method(e.to_string()))?.to_vec();
        if let Some(n) = p.params.samples {
            items.truncate(n);
        }
        let examples = items
            .iter()
            .enumerate()
            .map(|(i, item)| tokenize_example(&lm.tokenizer, &training_text(p.params.meta_prompt.text(i), item), p.optim.max_len))
            .collect::<Result<Vec<_>, _>>()?;
        let trainable = examples.iter().filter(|e| has_target(e)).count();
        if trainable == 0 {
            return Err(StageError::Method(format!(
                "stage {}: no example of `{}` keeps an answer token within max_len = {} tokens",
                ctx.config.name, p.params.data, p.optim.max_len
            )));
        }
        let summary = train_logged(ctx, lm, &mut EpochBatches::new(&examples, &p.optim.trainer(ctx.config.seed)), &p.optim, &mut PlainSft)?;
        trainee.save(ctx)?;
        let tokens = summary.tokens as f64;
        Ok(BTreeMap::from([
            ("train_loss".to_string(), summary.final_loss),
            ("train_steps".to_string(), summary.steps as f64),
            ("train_examples".to_string(), examples.len() as f64),
            ("train_examples_cut".to_string(), (examples.len() - trainable) as f64),
            ("train_tokens".to_string(), tokens),
            ("compute_forward_tokens".to_string(), tokens),
            ("compute_backward_tokens".to_string(), tokens),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(instruction: &str, input: &str, output: &str) -> Instruction {
        Instruction { instruction: instruction.into(), input: input.into(), output: output.into(), label: None }
    }

    /// finetune.py's f-strings, written out.
    #[test]
    fn training_text_is_generate_prompt_dromedary() {
        let p = training_text("# Meta\n\n### User", &item("Name a fruit.", "", "Apple.\n\n### User\n"));
        assert_eq!(format!("{}{}", p.prompt, p.response), "# Meta\n\n### User\nName a fruit.\n\n### Dromedary\nApple.\n\n### User\n");
        let p = training_text("M", &item("Translate.", "Bonjour", "Hello"));
        assert_eq!(p.prompt, "M\nTranslate.\n\nBonjour\n\n### Dromedary\n");
    }

    #[test]
    fn meta_prompts_are_the_stripped_files() {
        assert!(MetaPrompt::Standard.text(0).starts_with("# Dromedary\n\n## System Overview"));
        assert!(MetaPrompt::Standard.text(0).ends_with("### User"));
        assert!(MetaPrompt::Standard.text(0).contains("To begin with, can you introduce yourself?"));
        assert!(!MetaPrompt::Concise.text(0).contains("introduce yourself"));
        assert_eq!(MetaPrompt::Alternate.text(0), MetaPrompt::Concise.text(0));
        assert_eq!(MetaPrompt::Alternate.text(3), MetaPrompt::Standard.text(0));
        let p: EngraveParams = toml::from_str("data = \"@align\"\nmeta_prompt = \"alternate\"").unwrap();
        assert_eq!(p.meta_prompt, MetaPrompt::Alternate);
        assert!(toml::from_str::<EngraveParams>("data = \"x\"\nmeta_prompt = \"verbose\"").is_err());
        assert_eq!(toml::from_str::<EngraveParams>("data = \"x\"").unwrap().meta_prompt, MetaPrompt::Standard);
        let zero: EngraveParams = toml::from_str("data = \"x\"\nsamples = 0").unwrap();
        assert_eq!(zero.validate("engrave").unwrap_err().key, "samples");
    }
}
