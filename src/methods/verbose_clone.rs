//! The `verbose_clone` generate method: SELF-ALIGN's (Dromedary v1) verbose cloning, stage 4's
//! teacher. The engraved (non-verbose) model, prompted with the verbose teacher prompt, answers
//! every stage-1 query (and the identity questions) in "Dromedary (extensive)" style at T 0.3 /
//! top-p 0.7 with the official n-gram frequency penalties (trigram 1, 4-gram 2, on word-start
//! tokens above id 1024); `data::verbose_clone` filters the answers; an `engrave` stage with
//! `meta_prompt = "alternate"` then trains the student on them (context distillation).
//!
//! The inputs (with the 910 identity questions) are shuffled with the stage seed, as
//! `prepare_verbose_clone_input.py` does, and the
//! kept examples again, as the merge step does. A row stops at the first `"### User\n"`: the
//! filter cuts there and drops what follows, so the kept text is what the official run, which
//! writes on to `max_new_tokens`, would keep from the same tokens (the sampling stream of the
//! other rows in a batch does change).
//!
//! Writes the kept (instruction, input, answer) as an instruction dataset, `dropped_<rule>`
//! metrics, `filter.json`, and per query in `outputs.jsonl` the source, the sampling seed, the raw
//! answer, how it ended and what became of it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::params::{StageInputs, Validate};
use super::principle_align::DatasetNames;
use super::respond::{check_sampling, default_batch};
use super::self_instruct::at_least_one;
use crate::data::filter::FilterReport;
use crate::data::verbose_clone::{self as vc, Drop};
use crate::data::watson;
use crate::data::{shuffle_seeded, Instruction, Items};
use crate::eval::generation::{generate_responses, GenOptions};
use crate::model::generate::FinishReason;
use crate::model::NgramFrequencyPenalty;
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{AdapterMode, Metrics, StageContext, StageError};
use crate::store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerboseCloneParams {
    /// The queries: instruction datasets (the stage-1 stages, `["@instruct", "@questions"]`);
    /// their outputs, if any, are ignored.
    pub data: DatasetNames,
    /// Add the identity questions (`data::watson::dummy_questions`), as
    /// `prepare_verbose_clone_input.py` does.
    #[serde(default = "yes")]
    pub dummy: bool,
    /// Add at most this many identity questions (all 910 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dummy: Option<usize>,
    /// Answer at most this many queries (after the shuffle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queries: Option<usize>,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// The official `--generate_max_len`.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Frequency penalties of unigrams, bigrams, trigrams and 4-grams.
    #[serde(default = "default_penalties")]
    pub ngram_penalties: [f32; 4],
    /// Penalize only word-start tokens with an id above this (`frequency_penalty_starts_only`,
    /// `frequency_penalty_min_range`); `-1` penalizes every token.
    #[serde(default = "default_min_id")]
    pub penalty_min_id: i64,
}

fn yes() -> bool {
    true
}
fn default_temperature() -> f64 {
    0.3
}
fn default_top_p() -> f64 {
    0.7
}
fn default_max_new_tokens() -> usize {
    512
}
fn default_penalties() -> [f32; 4] {
    [0.0, 0.0, 1.0, 2.0]
}
fn default_min_id() -> i64 {
    1024
}

crate::whole_table_params!(VerboseCloneParams);

impl Validate for VerboseCloneParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        if self.data.names().is_empty() {
            return Err(ParamError::new("data", "needs at least one dataset of queries"));
        }
        if self.max_dummy.is_some() && !self.dummy {
            return Err(ParamError::new("max_dummy", "is set but `dummy = false` adds none"));
        }
        if let Some(m) = self.max_queries {
            at_least_one("max_queries", m)?;
        }
        at_least_one("max_new_tokens", self.max_new_tokens)?;
        at_least_one("batch_size", self.batch_size)?;
        check_sampling(self.temperature, self.top_p)?;
        if self.ngram_penalties.iter().any(|c| !(c.is_finite() && *c >= 0.0)) {
            return Err(ParamError::new("ngram_penalties", "penalties must be finite and at least 0"));
        }
        if self.penalty_min_id < -1 {
            return Err(ParamError::new("penalty_min_id", "a token id, or -1 to penalize every token"));
        }
        Ok(())
    }
}

impl StageInputs for VerboseCloneParams {
    fn datasets(&self) -> Vec<&str> {
        self.data.names()
    }
    /// The teacher prompt and the identity questions (bump when a file changes).
    fn components(&self) -> BTreeMap<String, u32> {
        let mut c = BTreeMap::from([("prompt:data/templates/dromedary_verbose_teacher_prompt.txt".to_string(), 1)]);
        if self.dummy {
            c.insert(format!("dummy:{}", watson::DUMMY_FILE), 1);
        }
        c
    }
}

/// One query, as `outputs.jsonl` keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct QueryRecord {
    pub query: usize,
    /// The dataset the query came from.
    pub source: String,
    pub instruction: String,
    pub input: String,
    pub sampling_seed: u64,
    /// The teacher's answer as generated (the stop string `"### User\n"` put back).
    pub response: String,
    pub finish: FinishReason,
    /// `kept`, or the rule that dropped it.
    pub verdict: &'static str,
    /// The index of the kept example in `dataset.jsonl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<usize>,
}

/// The `verbose_clone` method.
pub struct VerboseClone;

impl super::TypedMethod for VerboseClone {
    const NAME: &'static str = "verbose_clone";
    const KIND: StageKind = StageKind::Generate;
    // 2: an answer that ends at the end of turn (where the teacher stops) hands the turn back.
    const VERSION: u32 = 2;
    const CHANGES_MODEL: bool = false;
    type Params = VerboseCloneParams;
    fn run(ctx: &StageContext, p: &VerboseCloneParams) -> Result<Metrics, StageError> {
        run(ctx, p)
    }
}

/// The queries of every dataset and the identity questions, tagged with their source, shuffled
/// with the stage seed and capped.
fn queries(ctx: &StageContext, p: &VerboseCloneParams) -> Result<Vec<(String, Instruction)>, StageError> {
    let mut all = Vec::new();
    for name in p.data.names() {
        let ds = ctx.dataset(name)?;
        let items = ds.as_instructions().map_err(|e| StageError::Method(format!("verbose_clone `data` {name}: {e}")))?;
        all.extend(items.iter().map(|i| (name.to_string(), Instruction { output: String::new(), ..i.clone() })));
    }
    if p.dummy {
        let dummies = watson::dummy_questions()?;
        all.extend(dummies.into_iter().take(p.max_dummy.unwrap_or(usize::MAX)).map(|q| (watson::DUMMY_FILE.to_string(), q)));
    }
    shuffle_seeded(&mut all, ctx.config.seed);
    if let Some(m) = p.max_queries {
        all.truncate(m);
    }
    Ok(all)
}

fn run(ctx: &StageContext, p: &VerboseCloneParams) -> Result<Metrics, StageError> {
    let queries = queries(ctx, p)?;
    let lm = ctx.load_model(AdapterMode::Merged)?;
    let eligible = (p.penalty_min_id >= 0).then(|| lm.tokenizer.word_start_ids(p.penalty_min_id as u32));
    let options = GenOptions {
        temperature: p.temperature,
        top_p: p.top_p,
        seed: ctx.config.seed,
        stop_strings: vec![vc::END_OF_TURN.to_string()],
        ngram_frequency: p
            .ngram_penalties
            .iter()
            .any(|&c| c > 0.0)
            .then(|| NgramFrequencyPenalty { penalties: p.ngram_penalties, eligible }),
        // The filter strips the answer itself.
        trim: false,
        ..GenOptions::greedy(p.max_new_tokens, p.batch_size)
    };
    let prompts: Vec<String> = queries.iter().map(|(_, q)| vc::teacher_query(q)).collect();
    let progress = ctx.progress(prompts.len() as u64, "query");
    let tick = |n: usize| (0..n).for_each(|_| progress.step(None, 0));
    let responses = generate_responses(&lm, &prompts, &options, Some(&tick))?;
    progress.finish();

    let mut kept: Vec<Instruction> = Vec::new();
    let mut records = Vec::with_capacity(queries.len());
    let mut dropped: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (i, ((source, query), r)) in queries.into_iter().zip(responses).enumerate() {
        let response = if r.finish == FinishReason::StopString { format!("{}{}", r.text, vc::END_OF_TURN) } else { r.text };
        let (verdict, record) = match vc::filter_answer(&query, &response) {
            Ok(answer) => {
                kept.push(Instruction { output: answer, ..query.clone() });
                ("kept", Some(kept.len() - 1))
            }
            Err(drop) => {
                *dropped.entry(drop.key()).or_default() += 1;
                (drop.key(), None)
            }
        };
        let sampling_seed = options.seed.wrapping_add((i / p.batch_size) as u64);
        records.push(QueryRecord {
            query: i,
            source,
            instruction: query.instruction,
            input: query.input,
            sampling_seed,
            response,
            finish: r.finish,
            verdict,
            record,
        });
    }
    // The merge step shuffles the kept examples; records name their place after the shuffle.
    let mut order: Vec<usize> = (0..kept.len()).collect();
    shuffle_seeded(&mut order, ctx.config.seed.wrapping_add(1));
    let mut place = vec![0; kept.len()];
    for (new, &old) in order.iter().enumerate() {
        place[old] = new;
    }
    for r in records.iter_mut() {
        r.record = r.record.map(|old| place[old]);
    }
    let shuffled: Vec<Instruction> = order.iter().map(|&old| kept[old].clone()).collect();

    let report =
        FilterReport { input: records.len(), kept: shuffled.len(), dropped: dropped.iter().map(|(k, v)| (k.to_string(), *v)).collect() };
    tracing::info!(queries = records.len(), kept = shuffled.len(), dropped = ?report.dropped, "verbose cloning");
    let mut metrics = Metrics::from([("queries".to_string(), records.len() as f64), ("kept".to_string(), shuffled.len() as f64)]);
    for d in Drop::ALL {
        metrics.insert(format!("dropped_{}", d.key()), dropped.get(d.key()).copied().unwrap_or(0) as f64);
    }
    store::write_jsonl(&ctx.dir.outputs(), &records)?;
    store::write_json(&ctx.dir.filter_report(), &report)?;
    ctx.write_dataset(&Items::Instructions(shuffled))?;
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: &str) -> Result<VerboseCloneParams, ParamError> {
        crate::methods::params::checked(extra, "verbose_clone")
    }

    #[test]
    fn defaults_are_the_official_settings() {
        let p = params("data = [\"@instruct\", \"@questions\"]").unwrap();
        assert_eq!((p.temperature, p.top_p, p.max_new_tokens), (0.3, 0.7, 512));
        assert_eq!((p.ngram_penalties, p.penalty_min_id), ([0.0, 0.0, 1.0, 2.0], 1024));
        assert_eq!(p.datasets(), ["@instruct", "@questions"]);
        assert!(p.dummy && p.max_dummy.is_none());
        assert!(p.components().contains_key("dummy:data/dromedary/vicuna_dummy_data.json"));
    }

    #[test]
    fn bad_parameters_name_their_key() {
        let key = |t: &str| params(t).unwrap_err().key;
        assert_eq!(key("data = []"), "data");
        assert_eq!(key("data = [\"a\"]\nmax_queries = 0"), "max_queries");
        assert_eq!(key("data = \"a\"\ndummy = false\nmax_dummy = 2"), "max_dummy");
        assert_eq!(key("data = [\"a\"]\nngram_penalties = [0.0, 0.0, -1.0, 2.0]"), "ngram_penalties");
        assert_eq!(key("data = [\"a\"]\npenalty_min_id = -2"), "penalty_min_id");
        assert_eq!(key("data = [\"a\"]\ntop_p = 0.0"), "top_p");
        assert_eq!(key("data = [\"a\"]\nbatch_size = 0"), "batch_size");
        let e = params("data = [\"a\"]\ntemprature = 0.3").unwrap_err();
        assert_eq!((e.key.as_str(), e.suggestion.as_deref()), ("temprature", Some("temperature")));
    }
}
