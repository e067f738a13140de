//! The `principle_align` generate method: SELF-ALIGN's (Dromedary v1) Principle-Driven
//! Self-Alignment, stage 2 of the pipeline. Every instruction of the input datasets (usually the
//! stage-1 `self_instruct` and `tgrt_questions` stages) is put after the Watson prompt (16
//! principles, 5 exemplars) and answered at the official decoding (T 0.5, top-p 0.95, 256 new
//! tokens, a -100 logit bias on the token of "Sorry", no stop string: the end-of-text token or
//! the limit ends it); each generation goes through the merge step's filters
//! (`data::watson::filter_generation`), the 910 identity conversations are added and the whole
//! shuffled, as `merge_and_fileter_self_align_with_dummy.py` does. (The official generator cuts
//! a prompt of more than 1,984 tokens, its 2,048-token window less 64, at its last newline until
//! it fits; here every prompt goes whole, the model's context permitting.)
//!
//! Writes the (instruction, input, output) records as an instruction dataset, what each filter
//! dropped in the metrics (`dropped_<filter>`) and `filter.json`, and per query in
//! `outputs.jsonl` the dataset and index of its instruction, the sampling seed, the raw
//! generation, the verdict and the index of the kept record, so every record traces back to its
//! query.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

use super::params::{StageInputs, Validate};
use super::respond::{check_sampling, default_batch};
use super::self_instruct::{at_least_one, round_seed};
use crate::data::filter::FilterReport;
use crate::data::watson::{self, Dropped};
use crate::data::{Instruction, Items, SeededRng};
use crate::eval::generation::{generate_responses, instructions, GenOptions};
use crate::model::LoadedModel;
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{AdapterMode, Metrics, StageContext, StageError};
use crate::store;

/// One dataset name or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DatasetNames {
    One(String),
    Many(Vec<String>),
}

impl DatasetNames {
    pub fn names(&self) -> Vec<&str> {
        match self {
            DatasetNames::One(n) => vec![n.as_str()],
            DatasetNames::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipleAlignParams {
    /// The instructions to answer: one dataset or a list (e.g. `["@instruct", "@questions"]`),
    /// read in order; their outputs are ignored.
    pub data: DatasetNames,
    /// Answer only the first this many instructions (of all the datasets, in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queries: Option<usize>,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// The official `--generate_max_len`.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Queries per batch (the official `--max_batch_size` is 64).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Added to the logits of the token(s) of "Sorry" ([`sorry_token_ids`]); 0 disables it.
    #[serde(default = "default_sorry_bias")]
    pub sorry_logit_bias: f64,
    /// Add the identity conversations (`data::watson::dummy_conversations`) to the records.
    #[serde(default = "yes")]
    pub dummy: bool,
    /// Add only the first this many identity conversations (default: all 910).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dummy: Option<usize>,
}

fn default_temperature() -> f64 {
    0.5
}
fn default_top_p() -> f64 {
    0.95
}
fn default_max_new_tokens() -> usize {
    256
}
fn default_sorry_bias() -> f64 {
    -100.0
}
fn yes() -> bool {
    true
}

crate::whole_table_params!(PrincipleAlignParams);

impl Validate for PrincipleAlignParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        let names = self.data.names();
        if names.is_empty() {
            return Err(ParamError::new("data", "names no dataset"));
        }
        if let Some(n) = names.iter().find(|n| n.trim().is_empty()) {
            return Err(ParamError::new("data", format!("{n:?} is not a dataset name")));
        }
        if let Some(m) = self.max_queries {
            at_least_one("max_queries", m)?;
        }
        at_least_one("max_new_tokens", self.max_new_tokens)?;
        at_least_one("batch_size", self.batch_size)?;
        check_sampling(self.temperature, self.top_p)?;
        if !self.sorry_logit_bias.is_finite() {
            return Err(ParamError::new("sorry_logit_bias", format!("{} is not a finite number", self.sorry_logit_bias)));
        }
        if self.max_dummy.is_some() && !self.dummy {
            return Err(ParamError::new("max_dummy", "is set but `dummy = false` adds none"));
        }
        Ok(())
    }
}

impl StageInputs for PrincipleAlignParams {
    fn datasets(&self) -> Vec<&str> {
        self.data.names()
    }
    /// The shipped prompt and identity conversations (bump a version when a file changes).
    fn components(&self) -> BTreeMap<String, u32> {
        let mut c = BTreeMap::from([(format!("prompt:{}", watson::PROMPT_FILE), 1)]);
        if self.dummy {
            c.insert(format!("dummy:{}", watson::DUMMY_FILE), 1);
        }
        c
    }
}

/// The token ids the "Sorry" bias goes on. The official script biases
/// `tokenizer.encode("Sorry")[0]`: LLaMA's SentencePiece prepends a space, so that is the one
/// token `"▁Sorry"`, the word after a space or at the start of the text. A byte-level BPE adds no
/// space, so the two spellings are separate tokens: `"Sorry"` (text or line start) and
/// `" Sorry"` (after a space). Each spelling that is a single token is biased; one that splits
/// into pieces is not, since its first piece (e.g. `"S"`) starts many other words.
pub fn sorry_token_ids(lm: &LoadedModel) -> Result<Vec<u32>, StageError> {
    let mut ids = Vec::new();
    for form in [watson::SORRY.to_string(), format!(" {}", watson::SORRY)] {
        if let [id] = lm.tokenizer.encode(&form, false)?[..] {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// One query, as `outputs.jsonl` keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct AlignQueryRecord {
    pub query: usize,
    /// The dataset of the instruction, as the stage names it, and its index there.
    pub source: String,
    pub source_index: usize,
    pub sampling_seed: u64,
    /// The generated text after the prompt, as decoded.
    pub response: String,
    /// `kept`, or the key of the filter that dropped the generation.
    pub verdict: &'static str,
    /// The index of the kept record in `dataset.jsonl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<usize>,
}

/// An instruction to answer and where it came from.
struct Query<'a> {
    source: &'a str,
    index: usize,
    item: Instruction,
}

/// The merge step over the queries' generations: the kept records (answers first), the
/// per-query records pointing into them, and the drop counts.
#[derive(Default)]
struct Merge {
    kept: Vec<Instruction>,
    records: Vec<AlignQueryRecord>,
    dropped: BTreeMap<Dropped, usize>,
}

impl Merge {
    fn query(&mut self, q: &Query, sampling_seed: u64, response: String) {
        let (verdict, record) = match watson::filter_generation(watson::as_merged(&response)) {
            Ok(output) => {
                self.kept.push(Instruction { instruction: q.item.instruction.clone(), input: q.item.input.clone(), output, label: None });
                ("kept", Some(self.kept.len() - 1))
            }
            Err(d) => {
                *self.dropped.entry(d).or_default() += 1;
                (d.key(), None)
            }
        };
        let query = self.records.len();
        self.records.push(AlignQueryRecord {
            query,
            source: q.source.to_string(),
            source_index: q.index,
            sampling_seed,
            response,
            verdict,
            record,
        });
    }

    /// Adds the identity conversations after the answers and shuffles all records with `rng`
    /// (the official merge's `random.shuffle`); the query records follow their record.
    fn finish(mut self, dummies: Vec<Instruction>, rng: &mut SeededRng) -> (Vec<Instruction>, Vec<AlignQueryRecord>, usize) {
        let answers = self.kept.len();
        self.kept.extend(dummies);
        let mut order: Vec<usize> = (0..self.kept.len()).collect();
        rng.shuffle(&mut order);
        let mut position = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            position[old] = new;
        }
        for r in &mut self.records {
            r.record = r.record.map(|old| position[old]);
        }
        let mut slots: Vec<Option<Instruction>> = self.kept.into_iter().map(Some).collect();
        let records = order.iter().filter_map(|&old| slots[old].take()).collect();
        (records, self.records, answers)
    }
}

/// The `principle_align` generate method.
pub struct PrincipleAlign;

impl super::TypedMethod for PrincipleAlign {
    const NAME: &'static str = "principle_align";
    const KIND: StageKind = StageKind::Generate;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = false;
    type Params = PrincipleAlignParams;
    fn run(ctx: &StageContext, p: &PrincipleAlignParams) -> Result<Metrics, StageError> {
        run(ctx, p)
    }
}

fn run(ctx: &StageContext, p: &PrincipleAlignParams) -> Result<Metrics, StageError> {
    let mut queries: Vec<Query> = Vec::new();
    for name in p.data.names() {
        let data = ctx.dataset(name)?;
        let items = instructions(&data).map_err(|e| StageError::Method(format!("stage {}: dataset `{name}`: {e}", ctx.config.name)))?;
        queries.extend(items.into_iter().enumerate().map(|(index, item)| Query { source: name, index, item }));
    }
    let available = queries.len();
    queries.truncate(p.max_queries.unwrap_or(usize::MAX));
    let dummies = match (p.dummy, p.max_dummy) {
        (false, _) => Vec::new(),
        (true, cap) => watson::dummy_conversations()?.into_iter().take(cap.unwrap_or(usize::MAX)).collect(),
    };
    let lm = ctx.load_model(AdapterMode::Merged)?;
    let sorry = sorry_token_ids(&lm)?;
    let bias: HashMap<u32, f32> =
        if p.sorry_logit_bias == 0.0 { HashMap::new() } else { sorry.iter().map(|&id| (id, p.sorry_logit_bias as f32)).collect() };
    tracing::info!(tokens = ?sorry, bias = p.sorry_logit_bias, "principle-align: the \"Sorry\" logit bias");
    let prompts: Vec<String> = queries.iter().map(|q| watson::query_prompt(watson::PROMPT, &q.item.instruction, &q.item.input)).collect();
    let progress = ctx.progress(prompts.len() as u64, "query");
    let tick = |n: usize| (0..n).for_each(|_| progress.step(None, 0));
    let options = GenOptions {
        temperature: p.temperature,
        top_p: p.top_p,
        seed: round_seed(ctx.config.seed, 0),
        logit_bias: bias,
        // The filters read the generation as it comes: its start decides filter 1.
        trim: false,
        ..GenOptions::greedy(p.max_new_tokens, p.batch_size)
    };
    let responses = generate_responses(&lm, &prompts, &options, Some(&tick))?;
    progress.finish();

    let mut merge = Merge::default();
    for (i, (q, r)) in queries.iter().zip(responses).enumerate() {
        merge.query(q, options.seed.wrapping_add((i / p.batch_size) as u64), r.text);
    }
    let dropped = merge.dropped.clone();
    let n_dummies = dummies.len();
    let (records, query_records, answers) = merge.finish(dummies, &mut SeededRng::new(ctx.config.seed));
    let count = |d: Dropped| dropped.get(&d).copied().unwrap_or(0);
    let report = FilterReport {
        input: queries.len(),
        kept: answers,
        dropped: Dropped::ALL.iter().filter(|d| count(**d) > 0).map(|d| (d.key().to_string(), count(*d))).collect(),
    };
    tracing::info!(queries = queries.len(), kept = answers, dummies = n_dummies, dropped = ?report.dropped, "principle-align");
    let mut metrics = Metrics::from([
        ("available".to_string(), available as f64),
        ("queries".to_string(), queries.len() as f64),
        ("kept".to_string(), answers as f64),
        ("dummies".to_string(), n_dummies as f64),
        ("records".to_string(), records.len() as f64),
        ("sorry_bias_tokens".to_string(), options.logit_bias.len() as f64),
    ]);
    for d in Dropped::ALL {
        metrics.insert(format!("dropped_{}", d.key()), count(d) as f64);
    }
    store::write_jsonl(&ctx.dir.outputs(), &query_records)?;
    store::write_json(&ctx.dir.filter_report(), &report)?;
    ctx.write_dataset(&Items::Instructions(records))?;
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: &str) -> Result<PrincipleAlignParams, ParamError> {
        crate::methods::params::checked(extra, "principle_align")
    }

    #[test]
    fn defaults_are_the_official_settings() {
        let p = params("data = \"@instruct\"").unwrap();
        assert_eq!((p.temperature, p.top_p, p.max_new_tokens, p.sorry_logit_bias), (0.5, 0.95, 256, -100.0));
        assert_eq!((p.dummy, p.max_dummy, p.max_queries), (true, None, None));
        assert_eq!(p.datasets(), ["@instruct"]);
        assert_eq!(
            p.components().keys().collect::<Vec<_>>(),
            ["dummy:data/dromedary/vicuna_dummy_data.json", "prompt:data/templates/dromedary_watson_self_align_prompt.txt"]
        );
        let p = params("data = [\"@instruct\", \"@questions\"]\ndummy = false").unwrap();
        assert_eq!(p.datasets(), ["@instruct", "@questions"]);
        assert_eq!(p.components().len(), 1, "no identity conversations, no component");
    }

    #[test]
    fn bad_parameters_name_their_key() {
        let key = |t: &str| params(&format!("data = \"@instruct\"\n{t}")).unwrap_err().key;
        assert_eq!(key("max_queries = 0"), "max_queries");
        assert_eq!(key("top_p = 0.0"), "top_p");
        assert_eq!(key("temperature = -0.5"), "temperature");
        assert_eq!(key("max_new_tokens = 0"), "max_new_tokens");
        assert_eq!(key("batch_size = 0"), "batch_size");
        assert_eq!(key("sorry_logit_bias = inf"), "sorry_logit_bias");
        assert_eq!(key("dummy = false\nmax_dummy = 3"), "max_dummy");
        assert_eq!(params("").unwrap_err().key, "data");
        assert_eq!(params("data = []").unwrap_err().key, "data");
        assert_eq!(params("data = [\"@a\", \" \"]").unwrap_err().key, "data");
        assert_eq!(params("data = 3").unwrap_err().key, "data");
        let e = params("data = \"@instruct\"\nmax_dumy = 5").unwrap_err();
        assert_eq!((e.key.as_str(), e.suggestion.as_deref()), ("max_dumy", Some("max_dummy")));
        params("data = \"x\"\nmax_queries = 1\nmax_dummy = 0\nsorry_logit_bias = 0.0").unwrap();
    }

    fn query(source: &'static str, index: usize, instruction: &str, input: &str) -> Query<'static> {
        Query {
            source,
            index,
            item: Instruction { instruction: instruction.into(), input: input.into(), output: "old".into(), label: Some("t".into()) },
        }
    }

    /// Hand-made generations through the filters and the merge: verdicts per query, the kept
    /// answers and the identity conversations shuffled together, each query naming its record.
    #[test]
    fn generations_become_records_with_their_verdicts() {
        let thought = " I am a helpful, ethical, and reliable assistant. The user asks. I should follow rule 3.";
        let qs = [query("@instruct", 0, "Name a fruit.", ""), query("@instruct", 1, "Add.", "1 2"), query("@questions", 0, "Why?", "")];
        let mut m = Merge::default();
        m.query(&qs[0], 5, format!("{thought}\n\nWatson: Watson says an apple is a fruit"));
        m.query(&qs[1], 5, " The sum is 3.".into());
        m.query(&qs[2], 6, format!("{thought}\n\nWatson: I'm sorry, I cannot"));
        assert_eq!(m.dropped, BTreeMap::from([(Dropped::NoInternalThought, 1), (Dropped::SorryStart, 1)]));
        let dummies = watson::dummy_conversations().unwrap()[..4].to_vec();
        let (records, queries, answers) = m.finish(dummies.clone(), &mut SeededRng::new(3));
        assert_eq!((records.len(), answers), (5, 1));
        assert_eq!(queries.iter().map(|q| q.verdict).collect::<Vec<_>>(), ["kept", "no_internal_thought", "sorry_start"]);
        assert_eq!(queries.iter().map(|q| q.record.is_some()).collect::<Vec<_>>(), [true, false, false]);
        let kept = &records[queries[0].record.unwrap()];
        assert_eq!(
            (kept.instruction.as_str(), kept.input.as_str(), kept.output.as_str(), &kept.label),
            ("Name a fruit.", "", "Dromedary says an apple is a", &None)
        );
        for d in &dummies {
            assert!(records.contains(d), "{d:?}");
        }
        let json = serde_json::to_value(&queries[2]).unwrap();
        assert_eq!(
            (json["source"].as_str(), json["source_index"].as_u64(), json["sampling_seed"].as_u64()),
            (Some("@questions"), Some(0), Some(6))
        );
        assert!(json.get("record").is_none());
        // The order depends on the seed, the content does not.
        let shuffled = |seed: u64| {
            let mut m = Merge::default();
            m.query(&qs[0], 5, format!("{thought}\n\nWatson: Watson says an apple is a fruit"));
            m.finish(watson::dummy_conversations().unwrap()[..20].to_vec(), &mut SeededRng::new(seed)).0
        };
        let (a, b) = (shuffled(3), shuffled(4));
        assert_ne!(a, b);
        let sorted = |mut v: Vec<Instruction>| {
            v.sort_by(|x, y| (&x.instruction, &x.output).cmp(&(&y.instruction, &y.output)));
            v
        };
        assert_eq!(sorted(a.clone()), sorted(b));
        assert_eq!(a, shuffled(3));
    }
}
