//! The `self_instruct` generate method: SELF-ALIGN's (Dromedary v1) vanilla Self-Instruct, stage 1
//! of the pipeline. Each query shows the model the official prompt with 5 random seed tasks (of
//! Self-Instruct's 175) and lets it continue the list at T 1.0 / top-p 0.98 with the EOS logit
//! bias; each generation is parsed and filtered as `data::self_instruct` describes (word bounds,
//! blacklist, punctuation and non-ASCII starts, ROUGE-L > 0.7 against the pool, the merge step's
//! normalized dedup). Queries go in batches until `instructions` tasks are kept (the last batch
//! is kept whole, as the official loop) or `max_queries` were sent.
//!
//! Writes the kept tasks as an instruction dataset (no outputs yet: stage 2 answers them), what
//! each filter dropped in the metrics (`dropped_<filter>`) and `filter.json`, and per query in
//! `outputs.jsonl` the seed tasks shown, the sampling seed, the raw generation and what became of
//! each parsed piece (a kept one names its record), so every record traces back to its prompt.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::params::{StageInputs, Validate};
use super::respond::{check_sampling, default_batch, one};
use crate::data::filter::FilterReport;
use crate::data::self_instruct::{self as si, Candidate, InstructionPool, Verdict};
use crate::data::{Instruction, Items, SeededRng};
use crate::eval::generation::{eos_logit_bias, generate_responses, GenOptions};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{AdapterMode, Metrics, StageContext, StageError};
use crate::store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfInstructParams {
    /// Stop once this many tasks are kept (the official `--num_instructions_to_generate`: 8,192
    /// per group of GPUs, 32 groups).
    #[serde(default = "default_instructions")]
    pub instructions: usize,
    /// Send at most this many queries (default: `instructions`; a query that follows the format
    /// yields up to 14 tasks, and a model that does not keeps none, so the stage still ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queries: Option<usize>,
    /// Seed tasks shown per query (`--num_prompt_instructions`).
    #[serde(default = "default_prompt_tasks")]
    pub seed_tasks_per_query: usize,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// The official `--generate_max_len`.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Queries per batch (the official `--request_batch_size` is 64).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Added to the logits of the end-of-text tokens (`logit_bias={eos_id: -100}`); 0 lets the
    /// model stop.
    #[serde(default = "default_eos_bias")]
    pub eos_logit_bias: f64,
}

fn default_instructions() -> usize {
    100
}
fn default_prompt_tasks() -> usize {
    si::PROMPT_TASKS
}
fn default_top_p() -> f64 {
    0.98
}
fn default_max_new_tokens() -> usize {
    1024
}
/// Dromedary's end-of-text bias (shared with the TGRT methods).
pub(super) fn default_eos_bias() -> f64 {
    -100.0
}

crate::whole_table_params!(SelfInstructParams);

/// Checks shared by the stage-1 generate methods: counts at least 1, sampling in range, a finite
/// bias.
pub(super) fn check_generation(
    max_new_tokens: usize,
    batch_size: usize,
    temperature: f64,
    top_p: f64,
    bias: f64,
) -> Result<(), ParamError> {
    at_least_one("max_new_tokens", max_new_tokens)?;
    at_least_one("batch_size", batch_size)?;
    check_sampling(temperature, top_p)?;
    if !bias.is_finite() {
        return Err(ParamError::new("eos_logit_bias", format!("{bias} is not a finite number")));
    }
    Ok(())
}

pub(super) fn at_least_one(key: &str, v: usize) -> Result<(), ParamError> {
    if v == 0 {
        return Err(ParamError::new(key, "must be at least 1"));
    }
    Ok(())
}

impl Validate for SelfInstructParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        at_least_one("instructions", self.instructions)?;
        if let Some(m) = self.max_queries {
            at_least_one("max_queries", m)?;
        }
        // The prompt asks for a list of 20 tasks and the model continues after the seed tasks.
        if !(1..=19).contains(&self.seed_tasks_per_query) {
            return Err(ParamError::new(
                "seed_tasks_per_query",
                format!("{} is out of range: the prompt asks for 20 tasks, so 1 to 19 seed tasks", self.seed_tasks_per_query),
            ));
        }
        check_generation(self.max_new_tokens, self.batch_size, self.temperature, self.top_p, self.eos_logit_bias)
    }
}

impl StageInputs for SelfInstructParams {
    fn datasets(&self) -> Vec<&str> {
        Vec::new()
    }
    /// The shipped prompt and seed tasks (bump a version when the file changes).
    fn components(&self) -> BTreeMap<String, u32> {
        BTreeMap::from([(format!("prompt:{}", si::PROMPT_FILE), 1), (format!("seed_tasks:{}", si::SEED_TASKS_FILE), 1)])
    }
}

/// The sampling seed of a round of queries (a batch, or a TGRT growth round): the stage seed and
/// the round mixed, so that rounds draw independent streams; batch `i` of the round samples with
/// this plus `i`.
pub(super) fn round_seed(seed: u64, round: u64) -> u64 {
    SeededRng::new(seed.wrapping_add(round.wrapping_mul(0x9E37_79B9))).next_u64()
}

/// What became of one parsed piece of a generation.
#[derive(Debug, Clone, Serialize)]
pub struct PieceRecord {
    #[serde(flatten)]
    pub task: Option<Candidate>,
    pub verdict: Verdict,
    /// The index of the kept task in `dataset.jsonl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<usize>,
}

/// One query, as `outputs.jsonl` keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct QueryRecord {
    pub query: usize,
    /// The ids of the seed tasks shown, in prompt order.
    pub seed_tasks: Vec<String>,
    pub sampling_seed: u64,
    /// The generated text after the prompt, as decoded.
    pub response: String,
    pub pieces: Vec<PieceRecord>,
}

/// How many pieces each verdict got.
#[derive(Debug, Default)]
struct Tally(BTreeMap<&'static str, usize>);

impl Tally {
    fn add(&mut self, v: Verdict) {
        *self.0.entry(v.key()).or_default() += 1;
    }
    fn get(&self, v: Verdict) -> usize {
        self.0.get(v.key()).copied().unwrap_or(0)
    }
}

/// The stage's state across queries: the pool, the verdict counts, the kept tasks.
struct Collector {
    pool: InstructionPool,
    tally: Tally,
    kept: Vec<Instruction>,
    prompt_tasks: usize,
}

impl Collector {
    fn new(seeds: &[si::SeedTask], prompt_tasks: usize) -> Self {
        Collector { pool: InstructionPool::new(seeds), tally: Tally::default(), kept: Vec::new(), prompt_tasks }
    }

    /// Parses one generation and judges its pieces; kept tasks join `kept` (their piece records
    /// name the index).
    fn query(&mut self, query: usize, seed_tasks: Vec<String>, sampling_seed: u64, response: String) -> QueryRecord {
        let pieces = si::parse_generation(self.prompt_tasks, &response)
            .into_iter()
            .map(|task| {
                let verdict = self.pool.judge(task.as_ref());
                self.tally.add(verdict);
                let record = match (&task, verdict) {
                    (Some(t), Verdict::Kept) => {
                        let kept =
                            Instruction { instruction: t.instruction.clone(), input: t.input.clone(), output: String::new(), label: None };
                        self.kept.push(kept);
                        Some(self.kept.len() - 1)
                    }
                    _ => None,
                };
                PieceRecord { task, verdict, record }
            })
            .collect();
        QueryRecord { query, seed_tasks, sampling_seed, response, pieces }
    }
}

/// The `self_instruct` generate method.
pub struct SelfInstruct;

impl super::TypedMethod for SelfInstruct {
    const NAME: &'static str = "self_instruct";
    const KIND: StageKind = StageKind::Generate;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = false;
    type Params = SelfInstructParams;
    fn run(ctx: &StageContext, p: &SelfInstructParams) -> Result<Metrics, StageError> {
        run(ctx, p)
    }
}

fn run(ctx: &StageContext, p: &SelfInstructParams) -> Result<Metrics, StageError> {
    let seeds = si::seed_tasks()?;
    let lm = ctx.load_model(AdapterMode::Merged)?;
    let max_queries = p.max_queries.unwrap_or(p.instructions);
    let progress = ctx.progress(max_queries as u64, "query");
    let tick = |n: usize| (0..n).for_each(|_| progress.step(None, 0));
    let mut options = GenOptions {
        temperature: p.temperature,
        top_p: p.top_p,
        logit_bias: eos_logit_bias(&lm, p.eos_logit_bias as f32),
        // The generation is parsed as it comes: leading newlines and spaces matter.
        trim: false,
        ..GenOptions::greedy(p.max_new_tokens, p.batch_size)
    };
    let k = p.seed_tasks_per_query;
    let mut rng = SeededRng::new(ctx.config.seed);
    let mut c = Collector::new(&seeds, k);
    let mut queries: Vec<QueryRecord> = Vec::new();
    let mut round = 0u64;
    while c.kept.len() < p.instructions && queries.len() < max_queries {
        let n = p.batch_size.min(max_queries - queries.len());
        // `random.sample(seed_tasks, 5)`: distinct tasks in random order.
        let chosen: Vec<Vec<usize>> = (0..n).map(|_| rng.sample_indices(seeds.len(), k)).collect();
        let prompts: Vec<String> =
            chosen.iter().map(|idx| si::encode_prompt(si::PROMPT, &idx.iter().map(|&i| &seeds[i]).collect::<Vec<_>>())).collect();
        options.seed = round_seed(ctx.config.seed, round);
        let responses = generate_responses(&lm, &prompts, &options, Some(&tick))?;
        for (idx, r) in chosen.iter().zip(responses) {
            let seed_ids = idx.iter().map(|&i| seeds[i].id.clone()).collect();
            queries.push(c.query(queries.len(), seed_ids, options.seed, r.text));
        }
        round += 1;
    }
    progress.finish();
    let Collector { tally, kept, .. } = c;
    let pieces: usize = queries.iter().map(|q| q.pieces.len()).sum();
    let report = FilterReport {
        input: pieces,
        kept: kept.len(),
        dropped: Verdict::DROPS.iter().filter(|v| tally.get(**v) > 0).map(|v| (v.key().to_string(), tally.get(*v))).collect(),
    };
    tracing::info!(queries = queries.len(), pieces, kept = kept.len(), dropped = ?report.dropped, "self-instruct");
    let mut metrics = Metrics::from([
        ("queries".to_string(), queries.len() as f64),
        ("pieces".to_string(), pieces as f64),
        ("kept".to_string(), kept.len() as f64),
    ]);
    for v in Verdict::DROPS {
        metrics.insert(format!("dropped_{}", v.key()), tally.get(v) as f64);
    }
    store::write_jsonl(&ctx.dir.outputs(), &queries)?;
    store::write_json(&ctx.dir.filter_report(), &report)?;
    ctx.write_dataset(&Items::Instructions(kept))?;
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: &str) -> Result<SelfInstructParams, ParamError> {
        crate::methods::params::checked(extra, "self_instruct")
    }

    #[test]
    fn defaults_are_the_official_settings() {
        let p = params("").unwrap();
        assert_eq!((p.seed_tasks_per_query, p.temperature, p.top_p, p.max_new_tokens, p.eos_logit_bias), (5, 1.0, 0.98, 1024, -100.0));
        assert_eq!((p.instructions, p.max_queries), (100, None));
        assert!(p.datasets().is_empty());
        assert_eq!(
            p.components().keys().collect::<Vec<_>>(),
            ["prompt:data/templates/dromedary_self_instruct_prompt.txt", "seed_tasks:data/dromedary/self_instruct_seed_tasks.jsonl"]
        );
    }

    #[test]
    fn bad_parameters_name_their_key() {
        let key = |t: &str| params(t).unwrap_err().key;
        assert_eq!(key("instructions = 0"), "instructions");
        assert_eq!(key("max_queries = 0"), "max_queries");
        assert_eq!(key("seed_tasks_per_query = 0"), "seed_tasks_per_query");
        assert_eq!(key("seed_tasks_per_query = 20"), "seed_tasks_per_query");
        assert_eq!(key("top_p = 1.5"), "top_p");
        assert_eq!(key("temperature = -1.0"), "temperature");
        assert_eq!(key("max_new_tokens = 0"), "max_new_tokens");
        assert_eq!(key("batch_size = 0"), "batch_size");
        assert_eq!(key("eos_logit_bias = nan"), "eos_logit_bias");
        let e = params("instrutions = 5").unwrap_err();
        assert_eq!((e.key.as_str(), e.suggestion.as_deref()), ("instrutions", Some("instructions")));
        params("instructions = 3\nmax_queries = 2\nseed_tasks_per_query = 19\neos_logit_bias = 0.0").unwrap();
    }

    /// Hand-made generations through the parser, the filters and the records, across queries:
    /// the pool carries over, kept tasks are numbered in order, every piece gets one verdict.
    #[test]
    fn generations_become_records_with_their_verdicts() {
        let mut c = Collector::new(&si::seed_tasks().unwrap(), 5);
        let first = " Suggest a name for a bakery that sells bagels.\n6. Input:\n<noinput>\n###\n\
                     7. Instruction: Draw a picture of a cat.\n7. Input:\n<noinput>\n###\n\
                     8. Instruction: Explain how a rainbow forms after the rain.\n8. Input:\nI like tea.\n###\n\
                     9. Instruction: cut";
        let second = " Suggest a good name for a bakery that sells bagels.\n6. Input:\n<noinput>\n###\n\
                      Instruction: not numbered\n###\n\
                      8. Instruction: Write a poem.\n8. Input:\n<noinput>\n###\n";
        let a = c.query(0, vec!["seed_task_1".into()], 11, first.into());
        let b = c.query(1, vec![], 12, second.into());
        let Collector { tally, kept, .. } = c;
        let verdicts = |q: &QueryRecord| q.pieces.iter().map(|p| p.verdict).collect::<Vec<_>>();
        assert_eq!(verdicts(&a), [Verdict::Kept, Verdict::Blacklist, Verdict::Kept]);
        assert_eq!(verdicts(&b), [Verdict::RougeL, Verdict::Unparsed, Verdict::TooFewWords]);
        assert_eq!(a.pieces.iter().map(|p| p.record).collect::<Vec<_>>(), [Some(0), None, Some(1)]);
        assert_eq!(kept[1].instruction, "Explain how a rainbow forms after the rain.");
        assert_eq!(kept[1].input, "I like tea.");
        assert_eq!(kept[0].input, "");
        assert_eq!((tally.get(Verdict::Kept), tally.get(Verdict::Unparsed), tally.get(Verdict::RougeL)), (2, 1, 1));
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(json["pieces"][0]["verdict"], "rouge_l");
        assert_eq!(json["pieces"][0]["instruction"], "Suggest a good name for a bakery that sells bagels.");
        assert!(json["pieces"][1].get("instruction").is_none() && json["pieces"][1].get("record").is_none());
        assert_eq!(json["sampling_seed"], 12);
    }

    #[test]
    fn rounds_sample_with_distinct_seeds() {
        let seeds: std::collections::HashSet<u64> = (0..100).map(|r| round_seed(7, r)).collect();
        assert_eq!(seeds.len(), 100);
        assert_ne!(round_seed(7, 0), round_seed(8, 0));
        assert_eq!(round_seed(7, 3), round_seed(7, 3));
    }
}
