//! The `tgrt_topics` generate method: the topic brainstorm of SELF-ALIGN's (Dromedary v1)
//! Topic-Guided Red-Teaming. Starting from one seed topic for each of the 20 adversarial question
//! types, every growth round deduplicates each type's topics (ignoring case), cuts every type to
//! the smallest type's count, and asks the model for more topics once per topic (the brainstorm
//! prompt listing that topic, or 5 of the type's topics once it has 10); the first 20 lines of
//! each generation become topics if they pass the official filters (at most three words, not
//! blank, an ASCII capital first, no punctuation last). After the last round the same dedup and
//! balancing run once more (`deduplicate_tgrt_topic.py`) and the (type, topic) pairs are
//! shuffled. The official run grew the topics for 9 rounds and used the file of round 5, so the
//! default is 6 rounds (0 to 5).
//!
//! Writes the topics as prompts (`prompt` = the topic, `category` = the question type), which
//! `tgrt_questions` reads; what each filter dropped in the metrics; per query in `outputs.jsonl`
//! the round, type, listed topics, sampling seed, raw generation and each line's verdict; and per
//! round a line of `log.jsonl`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::params::{StageInputs, Validate};
use super::respond::{default_batch, one};
use super::self_instruct::{at_least_one, check_generation, default_eos_bias, round_seed};
use crate::data::tgrt::{self, TopicDrop, TopicPool};
use crate::data::{Items, Prompt, SeededRng};
use crate::eval::generation::{eos_logit_bias, generate_responses, GenOptions};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{AdapterMode, Metrics, StageContext, StageError};
use crate::store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TgrtTopicsParams {
    /// Growth rounds (the official run used the topics after round 5: 6 rounds).
    #[serde(default = "default_rounds")]
    pub rounds: usize,
    /// Topics a prompt lists once a type has twice as many (`--num_examples`).
    #[serde(default = "default_examples")]
    pub examples_per_query: usize,
    /// Carry at most this many topics of each type into a round (runner's bound on a round's
    /// queries, which otherwise grow about twentyfold per round; the official run has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_topics_per_type: Option<usize>,
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

fn default_rounds() -> usize {
    6
}
fn default_examples() -> usize {
    5
}
fn default_top_p() -> f64 {
    0.98
}
fn default_max_new_tokens() -> usize {
    128
}

crate::whole_table_params!(TgrtTopicsParams);

impl Validate for TgrtTopicsParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        at_least_one("rounds", self.rounds)?;
        at_least_one("examples_per_query", self.examples_per_query)?;
        if let Some(m) = self.max_topics_per_type {
            at_least_one("max_topics_per_type", m)?;
        }
        check_generation(self.max_new_tokens, self.batch_size, self.temperature, self.top_p, self.eos_logit_bias)
    }
}

impl StageInputs for TgrtTopicsParams {
    fn datasets(&self) -> Vec<&str> {
        Vec::new()
    }
    fn components(&self) -> BTreeMap<String, u32> {
        BTreeMap::from([(format!("prompt:{}", tgrt::TOPIC_PROMPT_FILE), 1), (format!("seed_questions:{}", tgrt::SEED_QUESTIONS_FILE), 1)])
    }
}

/// One brainstormed line: the topic it gave, or why none.
#[derive(Debug, Clone, Serialize)]
pub struct LineRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<TopicDrop>,
}

/// One brainstorm query, as `outputs.jsonl` keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct TopicQueryRecord {
    pub round: usize,
    pub question_type: String,
    /// The topics the prompt listed.
    pub listed: Vec<String>,
    pub sampling_seed: u64,
    pub response: String,
    pub lines: Vec<LineRecord>,
}

/// A round's line of `log.jsonl`.
#[derive(Debug, Clone, Serialize)]
struct RoundLog {
    round: usize,
    /// Topics carried into the round (after dedup, balancing and the cap).
    topics: usize,
    queries: usize,
    new_topics: usize,
}

/// The `tgrt_topics` generate method.
pub struct TgrtTopics;

impl super::TypedMethod for TgrtTopics {
    const NAME: &'static str = "tgrt_topics";
    const KIND: StageKind = StageKind::Generate;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = false;
    type Params = TgrtTopicsParams;
    fn run(ctx: &StageContext, p: &TgrtTopicsParams) -> Result<Metrics, StageError> {
        run(ctx, p)
    }
}

fn run(ctx: &StageContext, p: &TgrtTopicsParams) -> Result<Metrics, StageError> {
    let seeds = tgrt::seed_questions()?;
    let lm = ctx.load_model(AdapterMode::Merged)?;
    let mut options = GenOptions {
        temperature: p.temperature,
        top_p: p.top_p,
        logit_bias: eos_logit_bias(&lm, p.eos_logit_bias as f32),
        // Lines are read as generated: a leading newline is an (empty) first line.
        trim: false,
        ..GenOptions::greedy(p.max_new_tokens, p.batch_size)
    };
    let mut pool = TopicPool::from_seeds(&seeds);
    let seed_topics = pool.len();
    let mut rng = SeededRng::new(ctx.config.seed);
    let mut count = BTreeMap::<&str, usize>::new();
    let mut add = |key: &'static str, n: usize| *count.entry(key).or_default() += n;
    let mut records: Vec<TopicQueryRecord> = Vec::new();
    for round in 0..p.rounds {
        let pruned = pool.dedup_and_balance();
        add("dropped_duplicate", pruned.duplicates);
        add("dropped_balance", pruned.balance);
        add("dropped_over_cap", p.max_topics_per_type.map_or(0, |m| pool.cap(m)));
        let carried = pool.len();
        let queries = pool.round_queries(p.examples_per_query, &mut rng);
        let prompts: Vec<String> = queries.iter().map(|q| tgrt::topic_prompt(tgrt::TOPIC_PROMPT, &q.question_type, &q.topics)).collect();
        let progress = ctx.progress(prompts.len() as u64, "query");
        let tick = |n: usize| (0..n).for_each(|_| progress.step(None, 0));
        options.seed = round_seed(ctx.config.seed, round as u64);
        let responses = generate_responses(&lm, &prompts, &options, Some(&tick))?;
        progress.finish();
        let mut new_topics = 0;
        for (i, (q, r)) in queries.into_iter().zip(responses).enumerate() {
            let lines: Vec<LineRecord> = tgrt::parse_topics(&r.text)
                .into_iter()
                .map(|line| match line {
                    Ok(topic) => {
                        pool.add(&q.question_type, &topic);
                        new_topics += 1;
                        LineRecord { topic: Some(topic), dropped: None }
                    }
                    Err(why) => {
                        add(drop_key(why), 1);
                        LineRecord { topic: None, dropped: Some(why) }
                    }
                })
                .collect();
            add("lines", lines.len());
            records.push(TopicQueryRecord {
                round,
                question_type: q.question_type,
                listed: q.topics,
                sampling_seed: options.seed.wrapping_add((i / p.batch_size) as u64),
                response: r.text,
                lines,
            });
        }
        add("candidates", new_topics);
        add("queries", prompts.len());
        ctx.log_jsonl(&RoundLog { round, topics: carried, queries: prompts.len(), new_topics })?;
    }
    // deduplicate_tgrt_topic.py: the same dedup and balancing, then a shuffle.
    let pruned = pool.dedup_and_balance();
    add("dropped_duplicate", pruned.duplicates);
    add("dropped_balance", pruned.balance);
    let mut pairs = pool.pairs();
    rng.shuffle(&mut pairs);
    let types = pool.types().count();
    let mut metrics: Metrics = count.into_iter().map(|(k, v)| (k.to_string(), v as f64)).collect();
    for key in
        TopicDrop::ALL.map(drop_key).into_iter().chain(["dropped_duplicate", "dropped_balance", "dropped_over_cap", "lines", "candidates"])
    {
        metrics.entry(key.to_string()).or_insert(0.0);
    }
    metrics.insert("rounds".into(), p.rounds as f64);
    metrics.insert("seed_topics".into(), seed_topics as f64);
    metrics.insert("types".into(), types as f64);
    metrics.insert("kept".into(), pairs.len() as f64);
    metrics.insert("kept_per_type".into(), pairs.len() as f64 / types.max(1) as f64);
    tracing::info!(kept = pairs.len(), types, "topics");
    store::write_jsonl(&ctx.dir.outputs(), &records)?;
    let items = pairs
        .into_iter()
        .map(|(question_type, topic)| Prompt { prompt: topic, category: Some(question_type), target: None, context: None, id: None })
        .collect();
    ctx.write_dataset(&Items::Prompts(items))?;
    Ok(metrics)
}

/// The metric a line filter counts under.
fn drop_key(d: TopicDrop) -> &'static str {
    match d {
        TopicDrop::TooLong => "dropped_too_long",
        TopicDrop::Empty => "dropped_empty",
        TopicDrop::NotCapitalized => "dropped_not_capitalized",
        TopicDrop::EndsWithPunctuation => "dropped_ends_with_punctuation",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: &str) -> Result<TgrtTopicsParams, ParamError> {
        crate::methods::params::checked(extra, "tgrt_topics")
    }

    #[test]
    fn defaults_and_checks() {
        let p = params("").unwrap();
        assert_eq!((p.rounds, p.examples_per_query, p.max_topics_per_type), (6, 5, None));
        assert_eq!((p.temperature, p.top_p, p.max_new_tokens, p.eos_logit_bias), (1.0, 0.98, 128, -100.0));
        let key = |t: &str| params(t).unwrap_err().key;
        assert_eq!(key("rounds = 0"), "rounds");
        assert_eq!(key("examples_per_query = 0"), "examples_per_query");
        assert_eq!(key("max_topics_per_type = 0"), "max_topics_per_type");
        assert_eq!(key("top_p = 0.0"), "top_p");
        assert_eq!(key("batch_size = 0"), "batch_size");
        assert_eq!(key("epochs = 3"), "epochs");
        params("rounds = 2\nmax_topics_per_type = 3").unwrap();
    }

    #[test]
    fn every_line_filter_has_its_own_metric() {
        let keys: std::collections::HashSet<&str> = TopicDrop::ALL.map(drop_key).into_iter().collect();
        assert_eq!(keys.len(), TopicDrop::ALL.len());
        assert!(TopicDrop::ALL.iter().all(|d| drop_key(*d) == format!("dropped_{}", d.key())));
    }
}
