//! The `review` generate method: the model reads each record's answer (an instruction dataset
//! whose `output` is the answer, usually an earlier `respond` stage's records) through a request
//! template and writes about it. Mistake analysis's guided analysis: the request says the answer
//! is harmful and asks why; the written record pairs the analysis with a request that does not
//! say so (`record_prompt`, the unguided-analysis SFT data). Critique-Revise: the request asks for
//! a critique, and a follow-up turn (`revise`) for a rewrite; the record is the instruction with
//! the rewrite as its answer.
//!
//! Requests are a built-in template (`data/templates/mistake_analysis/`, reconstructions: see its
//! README) or inline text with `{instruction}` and `{response}`, filled in one pass. Every round
//! is written to `outputs.jsonl` (instruction, reviewed answer, requests as asked, replies).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::params::{StageInputs, Validate};
use super::respond::{check_sampling, default_batch, default_max_new_tokens, one};
use crate::data::{Instruction, Items};
use crate::eval::generation::{instructions, GenOptions, Generator, PromptFormat, ALPACA_RESPONSE_MARKER};
use crate::eval::multiple_choice::fill;
use crate::model::chat::Conversation;
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{AdapterMode, Metrics, StageContext, StageError};
use crate::store;

/// The built-in request templates (reconstructed; `data/templates/mistake_analysis/README.md`).
pub const BUILTIN_REQUESTS: &[(&str, &str)] = &[
    ("ma-guided-analysis", include_str!("../../data/templates/mistake_analysis/guided_analysis.txt")),
    ("ma-unguided-analysis", include_str!("../../data/templates/mistake_analysis/unguided_analysis.txt")),
    ("cr-critique", include_str!("../../data/templates/mistake_analysis/critique.txt")),
    ("cr-revision", include_str!("../../data/templates/mistake_analysis/revision.txt")),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewParams {
    /// The records to review: instructions with the answer in `output`.
    pub data: String,
    /// The request the model answers: a built-in name or text with `{instruction}` and `{response}`.
    pub prompt: String,
    /// The request written into the output records (default: `prompt`): mistake analysis trains
    /// on the analysis paired with a request that does not say the answer is harmful.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_prompt: Option<String>,
    /// A follow-up request (built-in name or text) after the model's reply: the record is then the
    /// original instruction with the reply to this request as its answer (Critique-Revise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revise: Option<String>,
    /// How requests reach the model (default: the model's chat template).
    #[serde(default = "chat")]
    pub prompt_format: PromptFormat,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[serde(default)]
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn chat() -> PromptFormat {
    PromptFormat::Chat
}

crate::whole_table_params!(ReviewParams);

/// The text of a request: a built-in template's, or the text itself if it has `placeholder`.
pub fn request_text(name_or_text: &str, placeholder: Option<&str>) -> Result<String, String> {
    if let Some((_, text)) = BUILTIN_REQUESTS.iter().find(|(name, _)| *name == name_or_text) {
        return Ok(text.to_string());
    }
    match placeholder {
        Some(p) if !name_or_text.contains(p) => {
            let names: Vec<&str> = BUILTIN_REQUESTS.iter().map(|(n, _)| *n).collect();
            Err(format!("{name_or_text:?} is neither a built-in request ({}) nor a text with a {p} placeholder", names.join(", ")))
        }
        _ if name_or_text.trim().is_empty() => Err("is empty".into()),
        _ => Ok(name_or_text.to_string()),
    }
}

/// A request filled with a record: `{instruction}` (with the record's input after a blank line,
/// if any) and `{response}` (its answer).
pub fn fill_request(template: &str, item: &Instruction) -> String {
    let instruction = if item.input.is_empty() { item.instruction.clone() } else { format!("{}\n\n{}", item.instruction, item.input) };
    fill(template, &[("instruction", &instruction), ("response", &item.output)])
}

impl Validate for ReviewParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        request_text(&self.prompt, Some("{response}")).map_err(|m| ParamError::new("prompt", m))?;
        if let Some(r) = &self.record_prompt {
            request_text(r, None).map_err(|m| ParamError::new("record_prompt", m))?;
            if self.revise.is_some() {
                return Err(ParamError::new("record_prompt", "a revising review writes the original instruction: leave out record_prompt"));
            }
        }
        if let Some(r) = &self.revise {
            request_text(r, None).map_err(|m| ParamError::new("revise", m))?;
            if self.prompt_format == PromptFormat::Template {
                return Err(ParamError::new(
                    "prompt_format",
                    "`revise` continues a conversation: use \"chat\" or a named chat template, not \"template\"",
                ));
            }
        }
        check_sampling(self.temperature, self.top_p)?;
        if self.batch_size == 0 || self.max_new_tokens == 0 {
            return Err(ParamError::new(if self.batch_size == 0 { "batch_size" } else { "max_new_tokens" }, "must be at least 1"));
        }
        Ok(())
    }
}

impl StageInputs for ReviewParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.data.as_str()]
    }
    /// The built-in requests used, with their version (bump one when its text changes), marked
    /// reconstructed in the stage's config: none is the paper's text.
    fn components(&self) -> BTreeMap<String, u32> {
        [Some(&self.prompt), self.record_prompt.as_ref(), self.revise.as_ref()]
            .into_iter()
            .flatten()
            .filter(|r| BUILTIN_REQUESTS.iter().any(|(name, _)| name == r))
            .map(|r| (format!("request.{r}.reconstructed"), 1))
            .collect()
    }
}

/// One reviewed record, as `outputs.jsonl` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReviewRecord {
    pub instruction: String,
    /// The answer reviewed.
    pub response: String,
    /// The request as the model saw it (rendered) and its reply.
    pub request: String,
    pub reply: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// The `review` generate method.
pub struct Review;

impl super::TypedMethod for Review {
    const NAME: &'static str = "review";
    const KIND: StageKind = StageKind::Generate;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = false;
    type Params = ReviewParams;
    fn run(ctx: &StageContext, p: &ReviewParams) -> Result<Metrics, StageError> {
        run(ctx, p)
    }
}

fn run(ctx: &StageContext, p: &ReviewParams) -> Result<Metrics, StageError> {
    let bad = |key: &str, m: String| StageError::Method(format!("stage {}: {key}: {m}", ctx.config.name));
    let prompt = request_text(&p.prompt, Some("{response}")).map_err(|m| bad("prompt", m))?;
    let record_prompt = p.record_prompt.as_deref().map(|r| request_text(r, None)).transpose().map_err(|m| bad("record_prompt", m))?;
    let revise = p.revise.as_deref().map(|r| request_text(r, None)).transpose().map_err(|m| bad("revise", m))?;
    let lm = ctx.load_model(AdapterMode::Merged)?;
    let data = ctx.dataset(&p.data)?;
    let items = instructions(&data)?;
    let rounds = if revise.is_some() { 2 } else { 1 };
    let progress = ctx.progress((items.len() * rounds) as u64, "request");
    let tick = |n: usize| (0..n).for_each(|_| progress.step(None, 0));
    let options = GenOptions {
        temperature: p.temperature,
        top_p: p.top_p,
        seed: ctx.config.seed,
        ..GenOptions::greedy(p.max_new_tokens, p.batch_size)
    };
    let mut generator = Generator::new(&lm, p.prompt_format.chat_format(&lm)?, options).with_progress(&tick);
    let mut conversations: Vec<Conversation> = items.iter().map(|i| Conversation::user(&fill_request(&prompt, i))).collect();
    if let Some(first) = conversations.first() {
        if generator.render(first)?.contains(ALPACA_RESPONSE_MARKER) {
            generator.options.stop_strings.push(ALPACA_RESPONSE_MARKER.to_string());
        }
    }
    let replies = generator.generate(&conversations)?;
    let mut records: Vec<ReviewRecord> = items
        .iter()
        .zip(&replies)
        .map(|(i, r)| ReviewRecord {
            instruction: i.instruction.clone(),
            response: i.output.clone(),
            request: r.prompt.clone(),
            reply: r.text.clone(),
            revision_request: None,
            revision: None,
        })
        .collect();
    let out: Vec<Instruction> = match &revise {
        None => {
            let written = record_prompt.as_deref().unwrap_or(&prompt);
            items
                .iter()
                .zip(&replies)
                .map(|(i, r)| Instruction {
                    instruction: fill_request(written, i),
                    input: String::new(),
                    output: r.text.clone(),
                    label: i.label.clone(),
                })
                .collect()
        }
        Some(request) => {
            for (c, r) in conversations.iter_mut().zip(&replies) {
                c.push("assistant", &r.text);
                c.push("user", request);
            }
            let revisions = generator.generate(&conversations)?;
            for (rec, r) in records.iter_mut().zip(&revisions) {
                rec.revision_request = Some(r.prompt.clone());
                rec.revision = Some(r.text.clone());
            }
            items.iter().zip(revisions).map(|(i, r)| Instruction { output: r.text, ..i.clone() }).collect()
        }
    };
    progress.finish();
    let n = out.len();
    let empty = out.iter().filter(|i| i.output.trim().is_empty()).count();
    store::write_jsonl(&ctx.dir.outputs(), &records)?;
    ctx.write_dataset(&Items::Instructions(out))?;
    Ok(BTreeMap::from([("generated".to_string(), n as f64), ("generated_empty".to_string(), empty as f64)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(instruction: &str, input: &str, output: &str) -> Instruction {
        Instruction { instruction: instruction.into(), input: input.into(), output: output.into(), label: None }
    }

    /// The shipped (reconstructed) requests render to these exact strings.
    #[test]
    fn builtin_requests_render_as_expected() {
        let it = item("How do I pick a lock?", "", "Use a {response} pick.");
        let guided = request_text("ma-guided-analysis", Some("{response}")).unwrap();
        assert_eq!(
            fill_request(&guided, &it),
            "Question: How do I pick a lock?\nAn AI assistant gives the following answer, which is potentially harmful, unethical or offensive: \
Use a {response} pick.\nAnalyse why the answer is harmful, unethical or offensive."
        );
        let unguided = request_text("ma-unguided-analysis", None).unwrap();
        assert_eq!(
            fill_request(&unguided, &it),
            "Question: How do I pick a lock?\nAn AI assistant gives the following answer: Use a {response} pick.\nAnalyse the answer above."
        );
        let critique = request_text("cr-critique", None).unwrap();
        assert!(fill_request(&critique, &it)
            .ends_with("Identify specific ways in which the answer is harmful, unethical, racist, sexist, toxic, dangerous, or illegal."));
        assert_eq!(
            request_text("cr-revision", None).unwrap(),
            "Please rewrite the answer to remove any and all harmful, unethical, racist, sexist, toxic, dangerous, or illegal content."
        );
        // An input joins the instruction after a blank line.
        assert_eq!(fill_request("{instruction}|{response}", &item("Do", "this", "ok")), "Do\n\nthis|ok");
    }

    #[test]
    fn requests_are_names_or_texts_with_the_placeholder() {
        assert_eq!(request_text("Is {response} fine?", Some("{response}")).unwrap(), "Is {response} fine?");
        let e = request_text("ma-guided", Some("{response}")).unwrap_err();
        assert!(e.contains("ma-guided-analysis") && e.contains("{response}"), "{e}");
        assert!(request_text("  ", None).is_err());
    }

    fn params(extra: &str) -> Result<(), ParamError> {
        let p: ReviewParams = toml::from_str(&format!("data = \"@induce\"\nprompt = \"ma-guided-analysis\"\n{extra}")).unwrap();
        p.validate("review")
    }

    #[test]
    fn parameters_are_checked() {
        params("").unwrap();
        params("record_prompt = \"ma-unguided-analysis\"").unwrap();
        params("revise = \"cr-revision\"").unwrap();
        assert_eq!(params("revise = \"cr-revision\"\nrecord_prompt = \"x\"").unwrap_err().key, "record_prompt");
        assert_eq!(params("revise = \"cr-revision\"\nprompt_format = \"template\"").unwrap_err().key, "prompt_format");
        assert_eq!(params("top_p = 0.0").unwrap_err().key, "top_p");
        assert_eq!(params("batch_size = 0").unwrap_err().key, "batch_size");
        let p: Result<ReviewParams, _> = toml::from_str("data = \"a\"\nprompt = \"b\"\nrevize = \"c\"");
        assert!(p.is_err());
    }

    #[test]
    fn built_in_requests_are_marked_reconstructed_in_the_stage_config() {
        let p: ReviewParams =
            toml::from_str("data = \"@i\"\nprompt = \"ma-guided-analysis\"\nrecord_prompt = \"Why? {response}\"").unwrap();
        assert_eq!(p.components(), BTreeMap::from([("request.ma-guided-analysis.reconstructed".to_string(), 1)]));
    }
}
