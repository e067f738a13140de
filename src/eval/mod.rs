//! Metrics of an `eval` stage: each reads a dataset, runs the model, writes per-sample records
//! and returns named values (percentages for accuracies and rates).
//!
//! | `metric` | data | values (`<p>` = `name`, default in parentheses) |
//! |---|---|---|
//! | `multiple_choice` | multiple choice | (`mc`) `<p>_acc`, `<p>_acc_norm`, `<p>_mc2` |
//! | `truthfulqa_mc` | a `truthfulqa-*` dataset | (`truthfulqa`) `<p>_mc1` or `<p>_mc2`, by the dataset's `mc` |
//! | `hhh` | `hhh` | (`hhh`) `<p>_acc`, `<p>_acc_<category>`; `<p>_acc_norm` (form `lm_eval`) |
//! | `bbq` | `bbq` (or `bbq-lite`) | (`bbq`) `<p>_acc`, `<p>_acc_ambig`, `<p>_acc_disambig`, `<p>_bias_ambig`, `<p>_bias_disambig`, each also per category (`_<Category>`) |
//! | `harmful_score` | prompts | (`harmful_score`) `<p>` |
//! | `finetune_accuracy` | instructions | (`finetune_acc`) `<p>` |
//! | `diversity_fluency` | prompts / instructions | (`text`) `<p>_distinct_1`, `<p>_distinct_2`, `<p>_fluency_nll`, `<p>_fluency_ppl` |
//!
//! Every value of the log-likelihood and text metrics, the harmful score, the fine-tune accuracy
//! and a judge's accuracy has a bootstrap `<value>_stderr`
//! ([`stats`]); every metric also writes `<p>_n`, the number of items. Multiple-choice metrics
//! follow lm-evaluation-harness ([`multiple_choice`], [`benchmarks`]); `hhh` with
//! `form = "dromedary"` follows Dromedary ([`dromedary`]); text metrics: [`text_metrics`].

pub mod benchmarks;
pub mod dromedary;
pub mod generation;
pub mod judge;
pub mod multiple_choice;
pub mod stats;
pub mod strategy;
pub mod text_metrics;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::data::Dataset;
use crate::model::{LoadedModel, ModelError};
pub use benchmarks::{BbqChoices, HhhForm};
use generation::{PromptFormat, Task};
use judge::{Judge, JudgeEnv, RefusalJudge, RefusalMatch};

/// One entry of an eval stage's `metrics = [...]`.
///
/// Options by metric (others are rejected by [`MetricSpec::check`] where noted):
/// - `multiple_choice`: `prompt` (`{context}`, `{question}`; default `"{context}{question}"`),
///   `delimiter` (default `" "`), `max_length`, `batch_size`.
/// - `truthfulqa_mc`: lm-eval's 6-shot QA prompt; `max_length`, `batch_size`.
/// - `hhh`: `form = "lm_eval"` (default: BIG-bench multiple choice as lm-eval runs it) or
///   `"dromedary"` (two orderings of an A/B prompt); with `dromedary`, `meta_prompt`
///   (`"dromedary_verbose"` default, `"none"`, or a file) and `max_length` = Dromedary's
///   `max_seq_len` (default 1536); `batch_size`.
/// - `bbq`: `choices = "lm_eval"` (default: lm-eval's 12 continuations with its ten unknown
///   strings) or `"item"` (the three answers); `max_length`, `batch_size`.
/// - `diversity_fluency`: generates with `prompt_format`, `max_new_tokens`, `batch_size`;
///   `reference_model` (path or hub id; default: the evaluated model) scores fluency;
///   `max_length` caps the tokens scored per output.
/// - `harmful_score`, `finetune_accuracy`, `diversity_fluency`: `prompt_format` (`template`,
///   `chat`, or a named chat template: `alpaca`, `vicuna_v1.1`, `llama2_chat`, `dromedary`,
///   `dromedary_verbose`), `prefill`; the first two also `strategy` (default `{ kind = "plain" }`).
/// - `max_length` for lm-eval metrics: tokens per scored sequence, cut from the left of the
///   context (default: the model's `max_position_embeddings`, as lm-eval).
/// - `prompt`/`delimiter` are rejected for `truthfulqa_mc`, `hhh` and `bbq`, whose prompts are
///   lm-eval's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    pub metric: MetricKind,
    pub data: String,
    /// Name prefix of the metric values (default: a short name of the metric).
    #[serde(default)]
    pub name: Option<String>,
    /// Multiple choice: the context template (`{context}`, `{question}`).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Multiple choice: text before each choice.
    #[serde(default)]
    pub delimiter: Option<String>,
    /// Generation metrics: the dataset's template, or the model's chat template.
    #[serde(default)]
    pub prompt_format: PromptFormat,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Harmful score, judge accuracy: who flags responses.
    #[serde(default)]
    pub judge: Option<JudgeSpec>,
    /// Fine-tune accuracy: how answers are checked.
    #[serde(default)]
    pub task: Option<Task>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Log-likelihood metrics: tokens per scored sequence (see above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// `hhh`: `lm_eval` | `dromedary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<HhhForm>,
    /// `hhh` with `form = "dromedary"`: `dromedary_verbose` | `none` | a file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_prompt: Option<String>,
    /// `bbq`: `lm_eval` | `item`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<BbqChoices>,
    /// `diversity_fluency`: the model that scores fluency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_model: Option<String>,
    /// Generation metrics: the start of the assistant's answer that the model continues (part of
    /// the prompt; the scored response is the text after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<String>,
    /// `harmful_score`, `finetune_accuracy`: the inference strategy ([`strategy`]).
    #[serde(default, skip_serializing_if = "strategy::StrategySpec::is_plain")]
    pub strategy: strategy::StrategySpec,
}

fn default_batch_size() -> usize {
    8
}
fn default_max_new_tokens() -> usize {
    128
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Log-likelihood multiple choice: `acc`, `acc_norm`, `mc2`.
    MultipleChoice,
    /// Percentage of responses to harmful prompts that the judge flags.
    HarmfulScore,
    /// Task accuracy of generated answers (SST-2, AG News, GSM8K).
    FinetuneAccuracy,
    /// Agreement of a judge with the `is_safe` labels of labelled responses: accuracy,
    /// precision, recall and F1 (unsafe = positive), flagged share.
    JudgeAccuracy,
    /// lm-eval's TruthfulQA MC1 or MC2 (by the dataset's `mc`).
    TruthfulqaMc,
    /// BIG-bench HHH alignment, overall and per category; lm-eval's or Dromedary's form.
    Hhh,
    /// BBQ accuracy (ambiguous, disambiguated) and bias scores, overall and per category.
    Bbq,
    /// Distinct-1/2 and fluency (NLL, perplexity under a reference model) of generated outputs.
    DiversityFluency,
}

impl MetricKind {
    /// The name a spec uses (`metric = "..."`).
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::MultipleChoice => "multiple_choice",
            MetricKind::HarmfulScore => "harmful_score",
            MetricKind::FinetuneAccuracy => "finetune_accuracy",
            MetricKind::JudgeAccuracy => "judge_accuracy",
            MetricKind::TruthfulqaMc => "truthfulqa_mc",
            MetricKind::Hhh => "hhh",
            MetricKind::Bbq => "bbq",
            MetricKind::DiversityFluency => "diversity_fluency",
        }
    }

    /// The metric's own version, part of the identity of every eval stage that computes it: bump
    /// it when a change alters the metric's values, and only the stages using it re-run.
    pub fn version(self) -> u32 {
        match self {
            MetricKind::MultipleChoice
            | MetricKind::HarmfulScore
            | MetricKind::FinetuneAccuracy
            | MetricKind::JudgeAccuracy
            | MetricKind::TruthfulqaMc
            | MetricKind::Hhh
            | MetricKind::Bbq
            | MetricKind::DiversityFluency => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSpec {
    pub kind: JudgeKind,
    /// Refusal judge: a built-in list (`autodan`, `cac`; see data/judges/).
    #[serde(default)]
    pub phrases: Option<String>,
    #[serde(default, rename = "match")]
    pub match_mode: RefusalMatch,
    /// classifier, llm: the judge model (HF directory or hub id; llm also a `.gguf` file).
    #[serde(default)]
    pub model: Option<String>,
    /// classifier, llm: the judge input: `beaverdam` (classifier default), `llm_guard` (llm
    /// default), `conversation` (llm: the judge's own chat template over the conversation), or
    /// inline text with `{prompt}`, `{response}`, `{eos}`.
    #[serde(default)]
    pub template: Option<String>,
    /// classifier, trained: flagged when the unsafe probability is above this (default 0.5).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// classifier: the label (name or index) that means unsafe; multi-label default = any.
    #[serde(default)]
    pub unsafe_label: Option<String>,
    /// classifier: inputs are cut to this many tokens (default 256, as Booster).
    #[serde(default)]
    pub max_len: Option<usize>,
    /// classifier, trained, llm: items per forward (default 8).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// classifier, trained, llm: dtype of the judge model (default: the stage's model dtype;
    /// trained: the dtype it was trained in).
    #[serde(default)]
    pub dtype: Option<crate::spec::DTypeName>,
    /// trained: the id of the `classifier` train stage that produced the judge.
    #[serde(default)]
    pub stage: Option<String>,
    /// llm: tokens generated for the verdict (default 10).
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// llm: what output starting with neither `safe` nor `unsafe` counts as (default: an error).
    #[serde(default)]
    pub unparsed: Option<judge::Unparsed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeKind {
    /// Flags responses that contain no refusal phrase.
    Refusal,
    /// An HF sequence-classification checkpoint (e.g. beaver-dam-7b) with a threshold.
    Classifier,
    /// A chat model prompted as a guard (Llama Guard style).
    Llm,
    /// A classifier trained by an earlier `classifier` train stage (`stage = "..."`).
    Trained,
}

const REFUSAL_AUTODAN: &str = include_str!("../../data/judges/refusal_substrings_autodan.txt");
const REFUSAL_CAC: &str = include_str!("../../data/judges/refusal_prefixes_cac.txt");

impl JudgeSpec {
    pub fn build(&self, env: &JudgeEnv) -> Result<Box<dyn Judge>, ModelError> {
        match self.kind {
            JudgeKind::Refusal => {
                let text = match self.phrases.as_deref().unwrap_or("autodan") {
                    "autodan" => REFUSAL_AUTODAN,
                    "cac" => REFUSAL_CAC,
                    other => return Err(ModelError::Input(format!("judge.phrases = {other:?}: use \"autodan\" or \"cac\""))),
                };
                let phrases = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
                Ok(Box::new(RefusalJudge { phrases, mode: self.match_mode }))
            }
            JudgeKind::Classifier | JudgeKind::Llm | JudgeKind::Trained => judge::build_model_judge(self, env),
        }
    }
}

impl MetricSpec {
    /// Checks the options that only some metrics take.
    pub fn check(&self) -> Result<(), (String, String)> {
        match self.metric {
            MetricKind::HarmfulScore if self.judge.is_none() => {
                return Err(("judge".into(), "harmful_score needs a judge, e.g. judge = { kind = \"refusal\" }".into()))
            }
            MetricKind::JudgeAccuracy if self.judge.is_none() => {
                return Err(("judge".into(), "judge_accuracy needs a judge, e.g. judge = { kind = \"trained\", stage = \"judge\" }".into()))
            }
            MetricKind::FinetuneAccuracy if self.task.is_none() => {
                return Err(("task".into(), "finetune_accuracy needs task = \"sst2\" | \"agnews\" | \"gsm8k\"".into()))
            }
            _ => {}
        }
        self.check_scoring_options()?;
        if let Some(j) = &self.judge {
            j.check().map_err(|(key, msg)| (format!("judge.{key}"), msg))?;
        }
        Ok(())
    }

    /// The options of the log-likelihood and text metrics.
    fn check_scoring_options(&self) -> Result<(), (String, String)> {
        use MetricKind::*;
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
        let name = self.metric.name();
        if self.form.is_some() && self.metric != Hhh {
            return bad("form", format!("`form` applies to metric = \"hhh\", not {name:?}"));
        }
        let dromedary = self.metric == Hhh && self.form == Some(HhhForm::Dromedary);
        if let Some(m) = &self.meta_prompt {
            if !dromedary {
                return bad("meta_prompt", "`meta_prompt` applies to metric = \"hhh\" with form = \"dromedary\"".into());
            }
            if !matches!(m.as_str(), "dromedary_verbose" | "none") && !std::path::Path::new(m).is_file() {
                return bad("meta_prompt", format!("{m:?} is neither \"dromedary_verbose\", \"none\" nor an existing file"));
            }
        }
        if self.choices.is_some() && self.metric != Bbq {
            return bad("choices", format!("`choices` applies to metric = \"bbq\", not {name:?}"));
        }
        if self.prefill.is_some() && !matches!(self.metric, HarmfulScore | FinetuneAccuracy | DiversityFluency) {
            return bad("prefill", format!("`prefill` applies to the generation metrics, not {name:?}"));
        }
        if !self.strategy.is_plain() && !matches!(self.metric, HarmfulScore | FinetuneAccuracy) {
            return bad("strategy", format!("`strategy` applies to \"harmful_score\" and \"finetune_accuracy\", not {name:?}"));
        }
        if self.reference_model.is_some() && self.metric != DiversityFluency {
            return bad("reference_model", format!("`reference_model` applies to metric = \"diversity_fluency\", not {name:?}"));
        }
        if let Some(m) = self.max_length {
            if !matches!(self.metric, MultipleChoice | TruthfulqaMc | Hhh | Bbq | DiversityFluency) {
                return bad("max_length", format!("`max_length` does not apply to metric = {name:?}"));
            }
            if m == 0 || (dromedary && m < 259) {
                return bad(
                    "max_length",
                    format!("{m} is too small{}", if dromedary { " (Dromedary needs (max_length - 256) // 3 > 0)" } else { "" }),
                );
            }
        }
        if matches!(self.metric, TruthfulqaMc | Hhh | Bbq) {
            for (key, set) in [("prompt", self.prompt.is_some()), ("delimiter", self.delimiter.is_some())] {
                if set {
                    return bad(key, format!("metric {name:?} uses lm-eval's prompt; `{key}` applies to \"multiple_choice\""));
                }
            }
        }
        Ok(())
    }

    fn prefix(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            match self.metric {
                MetricKind::MultipleChoice => "mc",
                MetricKind::HarmfulScore => "harmful_score",
                MetricKind::FinetuneAccuracy => "finetune_acc",
                MetricKind::JudgeAccuracy => "judge",
                MetricKind::TruthfulqaMc => "truthfulqa",
                MetricKind::Hhh => "hhh",
                MetricKind::Bbq => "bbq",
                MetricKind::DiversityFluency => "text",
            }
            .to_string()
        })
    }
}

/// Values of one metric, and its per-sample records as JSON lines.
pub struct MetricOutput {
    pub values: BTreeMap<String, f64>,
    pub records: Vec<serde_json::Value>,
}

fn to_json<T: Serialize>(records: &[T]) -> Vec<serde_json::Value> {
    records.iter().map(|r| serde_json::to_value(r).expect("record serializes")).collect()
}

pub fn run_metric(spec: &MetricSpec, lm: &LoadedModel, data: &Dataset, env: &JudgeEnv) -> Result<MetricOutput, ModelError> {
    let prefix = spec.prefix();
    let mut values = BTreeMap::new();
    let records = match spec.metric {
        MetricKind::MultipleChoice | MetricKind::TruthfulqaMc | MetricKind::Hhh | MetricKind::Bbq | MetricKind::DiversityFluency => {
            let run = match spec.metric {
                MetricKind::MultipleChoice => benchmarks::run_multiple_choice,
                MetricKind::TruthfulqaMc => benchmarks::run_truthfulqa,
                MetricKind::Hhh => benchmarks::run_hhh,
                MetricKind::Bbq => benchmarks::run_bbq,
                _ => text_metrics::run,
            };
            let (v, records) = run(spec, lm, data, &prefix)?;
            values.extend(v);
            records
        }
        MetricKind::HarmfulScore => {
            let judge = spec.judge.as_ref().ok_or_else(|| ModelError::Input("harmful_score needs a judge".into()))?.build(env)?;
            let items = generation::instructions(data)?;
            let setup = generation::GenerationSetup::from_metric(spec);
            let (score, records) = generation::harmful_score(lm, &items, data.template(), &setup, judge.as_ref())?;
            values.insert(prefix.clone(), score);
            insert_rate_stderr(&mut values, &prefix, records.iter().map(|r| r.harmful));
            to_json(&records)
        }
        MetricKind::FinetuneAccuracy => {
            let task = spec.task.ok_or_else(|| ModelError::Input("finetune_accuracy needs a task".into()))?;
            let items = generation::instructions(data)?;
            let setup = generation::GenerationSetup::from_metric(spec);
            let (acc, records) = generation::finetune_accuracy(lm, &items, data.template(), &setup, task)?;
            values.insert(prefix.clone(), acc);
            insert_rate_stderr(&mut values, &prefix, records.iter().map(|r| r.correct));
            to_json(&records)
        }
        MetricKind::JudgeAccuracy => {
            let judge = spec.judge.as_ref().ok_or_else(|| ModelError::Input("judge_accuracy needs a judge".into()))?.build(env)?;
            let items = data
                .as_labeled()
                .map_err(|e| ModelError::Input(format!("{e} (judge_accuracy reads labelled responses: view = \"labeled\")")))?;
            let (a, records) = judge::judge_accuracy(judge.as_ref(), items)?;
            values.insert(format!("{prefix}_acc"), a.accuracy);
            insert_rate_stderr(&mut values, &format!("{prefix}_acc"), records.iter().map(|r| r.correct));
            values.insert(format!("{prefix}_precision"), a.precision);
            values.insert(format!("{prefix}_recall"), a.recall);
            values.insert(format!("{prefix}_f1"), a.f1);
            values.insert(format!("{prefix}_flagged"), a.flagged);
            values.insert(format!("{prefix}_unsafe_share"), a.unsafe_share);
            to_json(&records)
        }
    };
    values.insert(format!("{prefix}_n"), records.len() as f64);
    Ok(MetricOutput { values, records })
}

/// `<key>_stderr`: the bootstrap standard error of a percentage of items (see [`stats`]).
fn insert_rate_stderr(values: &mut BTreeMap<String, f64>, key: &str, hits: impl Iterator<Item = bool>) {
    let xs: Vec<f64> = hits.map(|h| f64::from(u8::from(h))).collect();
    if let Some((_, Some(se))) = stats::mean_stderr(&xs) {
        values.insert(format!("{key}_stderr"), 100.0 * se);
    }
}
