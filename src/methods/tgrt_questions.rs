//! The `tgrt_questions` generate method: the question generation of SELF-ALIGN's (Dromedary v1)
//! Topic-Guided Red-Teaming. The (type, topic) pairs of a dataset (usually a `tgrt_topics` stage's
//! records: `prompt` = topic, `category` = question type) are taken 5 at a time; each query's
//! prompt lists as hints 5 random seed questions' (type, topic) and then the 5 new ones, and as
//! examples the 5 seed questions; the model continues the list (T 1.0, top-p 0.95, 384 tokens, the
//! EOS logit bias). Every generated line but the last that starts with one of the query's hint
//! lines is a question for that hint; the merge step keeps the first question of each
//! (topic, type) and shuffles (`merge_tgrt_question.py`).
//!
//! Writes the questions as an instruction dataset (`label` = the question type), the counts in the
//! metrics, and per query in `outputs.jsonl` the hints, examples, sampling seed, raw generation and
//! each line's verdict (a kept question names its record).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

use super::params::{StageInputs, Validate};
use super::respond::{default_batch, one};
use super::self_instruct::{at_least_one, check_generation, default_eos_bias, round_seed};
use crate::data::tgrt::{self, Hint, SeedQuestion};
use crate::data::{Instruction, Items, SeededRng};
use crate::eval::generation::{eos_logit_bias, generate_responses, GenOptions};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{AdapterMode, Metrics, StageContext, StageError};
use crate::store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TgrtQuestionsParams {
    /// The (type, topic) pairs: prompts whose `category` is the question type.
    pub data: String,
    /// New (type, topic) hints per query (`--num_instructions_to_generate`).
    #[serde(default = "five")]
    pub hints_per_query: usize,
    /// Seed questions shown per query (`--num_examples`), at most the 20 there are.
    #[serde(default = "five")]
    pub examples_per_query: usize,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Queries per batch (the official `--request_batch_size` is 32).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Added to the logits of the end-of-text tokens; 0 lets the model stop.
    #[serde(default = "default_eos_bias")]
    pub eos_logit_bias: f64,
}

fn five() -> usize {
    5
}
fn default_top_p() -> f64 {
    0.95
}
fn default_max_new_tokens() -> usize {
    384
}

crate::whole_table_params!(TgrtQuestionsParams);

impl Validate for TgrtQuestionsParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        at_least_one("hints_per_query", self.hints_per_query)?;
        let seeds = tgrt::seed_questions().map_err(|e| ParamError::new("examples_per_query", e.to_string()))?;
        if !(1..=seeds.len()).contains(&self.examples_per_query) {
            return Err(ParamError::new(
                "examples_per_query",
                format!("{} is out of range: there are {} seed questions", self.examples_per_query, seeds.len()),
            ));
        }
        check_generation(self.max_new_tokens, self.batch_size, self.temperature, self.top_p, self.eos_logit_bias)
    }
}

impl StageInputs for TgrtQuestionsParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.data.as_str()]
    }
    fn components(&self) -> BTreeMap<String, u32> {
        BTreeMap::from([
            (format!("prompt:{}", tgrt::QUESTION_PROMPT_FILE), 1),
            (format!("seed_questions:{}", tgrt::SEED_QUESTIONS_FILE), 1),
        ])
    }
}

/// What became of a generated line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineVerdict {
    Kept,
    /// Starts with none of the query's hint lines.
    NoHint,
    /// A question for a (topic, type) that already has one.
    Duplicate,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuestionLine {
    /// Index into the query's hints (examples' first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    pub verdict: LineVerdict,
    /// The index of the kept question in `dataset.jsonl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<usize>,
}

/// One query, as `outputs.jsonl` keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct QuestionQueryRecord {
    pub query: usize,
    /// The seed questions shown, as their topics.
    pub examples: Vec<String>,
    /// The new (type, topic) pairs asked for.
    pub hints: Vec<Hint>,
    pub sampling_seed: u64,
    pub response: String,
    pub lines: Vec<QuestionLine>,
}

/// The merge step's state across queries: the (topic, type) pairs that have a question, the
/// kept questions, and the line counts.
#[derive(Default)]
struct Collector {
    seen: HashSet<(String, String)>,
    kept: Vec<Instruction>,
    lines: usize,
    no_hint: usize,
    duplicates: usize,
}

impl Collector {
    /// Parses one generation; a question for a (topic, type) without one yet is kept (its record
    /// names the index into `kept`), labeled with the hint's question type as the data spells it.
    fn query(
        &mut self,
        query: usize,
        examples: &[&SeedQuestion],
        group: &[Hint],
        prefixes: &[String],
        sampling_seed: u64,
        response: String,
    ) -> QuestionQueryRecord {
        let parsed = tgrt::parse_questions(&response, prefixes);
        self.lines += parsed.len();
        let lines = parsed
            .into_iter()
            .map(|line| {
                let Some(g) = line else {
                    self.no_hint += 1;
                    return QuestionLine { hint: None, instruction: None, verdict: LineVerdict::NoHint, record: None };
                };
                if !self.seen.insert(tgrt::hint_key(&prefixes[g.hint])) {
                    self.duplicates += 1;
                    return QuestionLine {
                        hint: Some(g.hint),
                        instruction: Some(g.instruction),
                        verdict: LineVerdict::Duplicate,
                        record: None,
                    };
                }
                let question_type = match examples.get(g.hint) {
                    Some(e) => e.question_type.clone(),
                    None => group[g.hint - examples.len()].question_type.clone(),
                };
                self.kept.push(Instruction {
                    instruction: g.instruction.clone(),
                    input: String::new(),
                    output: String::new(),
                    label: Some(question_type),
                });
                QuestionLine {
                    hint: Some(g.hint),
                    instruction: Some(g.instruction),
                    verdict: LineVerdict::Kept,
                    record: Some(self.kept.len() - 1),
                }
            })
            .collect();
        QuestionQueryRecord {
            query,
            examples: examples.iter().map(|e| e.topic.clone()).collect(),
            hints: group.to_vec(),
            sampling_seed,
            response,
            lines,
        }
    }
}

/// The `tgrt_questions` generate method.
pub struct TgrtQuestions;

impl super::TypedMethod for TgrtQuestions {
    const NAME: &'static str = "tgrt_questions";
    const KIND: StageKind = StageKind::Generate;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = false;
    type Params = TgrtQuestionsParams;
    fn run(ctx: &StageContext, p: &TgrtQuestionsParams) -> Result<Metrics, StageError> {
        run(ctx, p)
    }
}

/// The (type, topic) hints of a dataset of prompts whose category is the question type.
fn hints_of(items: &Items, name: &str) -> Result<Vec<Hint>, String> {
    let Items::Prompts(v) = items else {
        return Err(format!("dataset `{name}` holds {}, not prompts (topics) with a question type", items.kind().describe()));
    };
    v.iter()
        .enumerate()
        .map(|(i, x)| match &x.category {
            Some(c) => Ok(Hint { question_type: c.clone(), topic: x.prompt.clone() }),
            None => Err(format!("dataset `{name}` record {}: topic {:?} has no question type (`category`)", i + 1, x.prompt)),
        })
        .collect()
}

fn run(ctx: &StageContext, p: &TgrtQuestionsParams) -> Result<Metrics, StageError> {
    let name = &ctx.config.name;
    let data = ctx.dataset(&p.data)?;
    let hints = hints_of(data.items(), &p.data).map_err(|m| StageError::Method(format!("stage {name}: {m}")))?;
    let seeds = tgrt::seed_questions()?;
    let lm = ctx.load_model(AdapterMode::Merged)?;
    let mut rng = SeededRng::new(ctx.config.seed);
    let mut order: Vec<usize> = (0..seeds.len()).collect();
    // Per query, the seed questions are reshuffled and the first ones shown (the official script
    // shuffles one copy again and again).
    let queries: Vec<(Vec<&SeedQuestion>, &[Hint])> = hints
        .chunks(p.hints_per_query)
        .map(|group| {
            rng.shuffle(&mut order);
            (order[..p.examples_per_query].iter().map(|&i| &seeds[i]).collect(), group)
        })
        .collect();
    let (prompts, prefixes): (Vec<String>, Vec<Vec<String>>) =
        queries.iter().map(|(examples, group)| tgrt::question_prompt(tgrt::QUESTION_PROMPT, examples, group)).unzip();
    let progress = ctx.progress(prompts.len() as u64, "query");
    let tick = |n: usize| (0..n).for_each(|_| progress.step(None, 0));
    let options = GenOptions {
        temperature: p.temperature,
        top_p: p.top_p,
        seed: round_seed(ctx.config.seed, 0),
        logit_bias: eos_logit_bias(&lm, p.eos_logit_bias as f32),
        trim: false,
        ..GenOptions::greedy(p.max_new_tokens, p.batch_size)
    };
    let responses = generate_responses(&lm, &prompts, &options, Some(&tick))?;
    progress.finish();

    let mut c = Collector::default();
    let mut records: Vec<QuestionQueryRecord> = queries
        .iter()
        .zip(&prefixes)
        .zip(responses)
        .enumerate()
        .map(|(q, (((examples, group), prefixes), r))| {
            let sampling_seed = options.seed.wrapping_add((q / p.batch_size) as u64);
            c.query(q, examples, group, prefixes, sampling_seed, r.text)
        })
        .collect();
    let Collector { kept, lines, no_hint, duplicates, .. } = c;
    // merge_tgrt_question.py shuffles the merged questions; records follow their question.
    let mut shuffled: Vec<usize> = (0..kept.len()).collect();
    rng.shuffle(&mut shuffled);
    let mut position = vec![0; kept.len()];
    for (new, &old) in shuffled.iter().enumerate() {
        position[old] = new;
    }
    for line in records.iter_mut().flat_map(|r| r.lines.iter_mut()) {
        line.record = line.record.map(|old| position[old]);
    }
    let mut items = Items::Instructions(kept);
    items.select(&shuffled);
    let metrics = Metrics::from([
        ("topics".to_string(), hints.len() as f64),
        ("queries".to_string(), prompts.len() as f64),
        ("lines".to_string(), lines as f64),
        ("dropped_no_hint".to_string(), no_hint as f64),
        ("candidates".to_string(), (lines - no_hint) as f64),
        ("dropped_duplicate".to_string(), duplicates as f64),
        ("kept".to_string(), items.len() as f64),
    ]);
    tracing::info!(queries = prompts.len(), lines, kept = items.len(), "tgrt questions");
    store::write_jsonl(&ctx.dir.outputs(), &records)?;
    ctx.write_dataset(&items)?;
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Instruction, Prompt};

    fn params(extra: &str) -> Result<TgrtQuestionsParams, ParamError> {
        crate::methods::params::checked(&format!("data = \"@topics\"\n{extra}"), "tgrt_questions")
    }

    #[test]
    fn defaults_and_checks() {
        let p = params("").unwrap();
        assert_eq!((p.hints_per_query, p.examples_per_query), (5, 5));
        assert_eq!((p.temperature, p.top_p, p.max_new_tokens, p.eos_logit_bias), (1.0, 0.95, 384, -100.0));
        assert_eq!(p.datasets(), vec!["@topics"]);
        let key = |t: &str| params(t).unwrap_err().key;
        assert_eq!(key("hints_per_query = 0"), "hints_per_query");
        assert_eq!(key("examples_per_query = 0"), "examples_per_query");
        assert_eq!(key("examples_per_query = 21"), "examples_per_query");
        assert_eq!(key("max_new_tokens = 0"), "max_new_tokens");
        assert_eq!(key("temperature = -0.5"), "temperature");
        params("examples_per_query = 20").unwrap();
        let missing: toml::Table = toml::from_str("hints_per_query = 2").unwrap();
        assert_eq!(crate::methods::params::parse::<TgrtQuestionsParams>(&missing).unwrap_err().key, "data");
    }

    /// Hand-made generations through the parser and the merge step: one question per
    /// (topic, type) across queries, seed hints included, labeled with the data's type.
    #[test]
    fn one_question_per_topic_and_type_is_kept() {
        let seeds = tgrt::seed_questions().unwrap();
        let examples = [&seeds[0]];
        let group = [Hint { question_type: "Questions that require legal expertise".into(), topic: "Tax".into() }];
        let (_, prefixes) = tgrt::question_prompt(tgrt::QUESTION_PROMPT, &examples, &group);
        let mut c = Collector::default();
        let first = format!(
            "{}, instruction: How do I avoid paying taxes?\nnoise\n{}, instruction: Where should my wedding be?\n{}, instruction: cut",
            prefixes[1], prefixes[0], prefixes[1]
        );
        let a = c.query(0, &examples, &group, &prefixes, 5, first);
        let second = format!("\n{}, instruction: Is tax evasion legal?\n\nthe last line is dropped", prefixes[1]);
        let b = c.query(1, &examples, &group, &prefixes, 6, second);
        let verdicts = |q: &QuestionQueryRecord| q.lines.iter().map(|l| l.verdict).collect::<Vec<_>>();
        assert_eq!(verdicts(&a), [LineVerdict::Kept, LineVerdict::NoHint, LineVerdict::Kept]);
        assert_eq!(verdicts(&b), [LineVerdict::Duplicate]);
        assert_eq!((c.lines, c.no_hint, c.duplicates, c.kept.len()), (4, 1, 1, 2));
        assert_eq!(c.kept[0].instruction, "How do I avoid paying taxes?");
        assert_eq!(c.kept[0].label.as_deref(), Some("Questions that require legal expertise"));
        assert_eq!(c.kept[1].label.as_deref(), Some("Questions that require cultural context"));
        assert_eq!(a.lines[2].record, Some(1));
        assert_eq!(serde_json::to_value(&b).unwrap()["lines"][0]["verdict"], "duplicate");
    }

    #[test]
    fn hints_come_from_prompts_with_a_category() {
        let p = |prompt: &str, category: Option<&str>| Prompt {
            prompt: prompt.into(),
            category: category.map(str::to_string),
            target: None,
            context: None,
            id: None,
        };
        let items = Items::Prompts(vec![p("Wedding", Some("Questions that require cultural context")), p("Tax", Some("Legal"))]);
        let hints = hints_of(&items, "topics").unwrap();
        assert_eq!(hints[1], Hint { question_type: "Legal".into(), topic: "Tax".into() });
        let e = hints_of(&Items::Prompts(vec![p("Wedding", Some("T")), p("Rain", None)]), "topics").unwrap_err();
        assert_eq!(e, "dataset `topics` record 2: topic \"Rain\" has no question type (`category`)");
        let i = Instruction { instruction: "x".into(), input: String::new(), output: String::new(), label: None };
        let e = hints_of(&Items::Instructions(vec![i]), "topics").unwrap_err();
        assert!(e.starts_with("dataset `topics` holds instructions"), "{e}");
    }
}
