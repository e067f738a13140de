//! Text filters for generated data: the SELF-ALIGN (Dromedary) self-instruct and red-teaming
//! filters, usable for any list of texts (instructions, questions, analyses).
//!
//! Pure functions over strings: no model, no files. A [`FilterSpec`] says which rules apply;
//! [`FilterSpec::apply`] runs them over texts in order, against a pool of existing texts (e.g.
//! the seed tasks), and reports how many texts each rule dropped.
//!
//! ```
//! use runner::data::filter::FilterSpec;
//! let spec = FilterSpec::self_instruct();
//! let texts = ["Give three tips for staying healthy.", "Draw a map of Europe.", "Give me three tips for staying healthy."];
//! let out = spec.apply(&texts, &[]).unwrap();
//! assert_eq!(out.kept, vec![0]);
//! assert_eq!(out.report.dropped["blacklist"], 1);
//! assert_eq!(out.report.dropped["rouge_l_max"], 1);
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};

/// Self-instruct's keyword blacklist (Dromedary `generate_vanilla_instruction.py`, taken from
/// Stanford Alpaca's `generate_instruction.py`): tasks a text-only model cannot do.
pub const SELF_INSTRUCT_BLACKLIST: [&str; 18] = [
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
];

/// Self-instruct drops a new instruction whose ROUGE-L F with any earlier one is above this.
pub const SELF_INSTRUCT_ROUGE_L_MAX: f64 = 0.7;

/// Errors in a [`FilterSpec`]; each names the spec key (and list index) at fault.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{key}: {msg}")]
    Invalid { key: String, msg: String },
    #[error("{key}: invalid regex: {source}")]
    Regex { key: String, source: regex::Error },
}

fn invalid(key: impl Into<String>, msg: impl Into<String>) -> FilterError {
    FilterError::Invalid { key: key.into(), msg: msg.into() }
}

// ---------------------------------------------------------------------------------------------
// ROUGE-L

/// The tokens Google's `rouge_score` scores (its default tokenizer, no stemming): the text is
/// lowercased with Unicode rules (so `İ` becomes `i` + a combining dot and the Kelvin sign
/// becomes `k`), every run of characters outside `[a-z0-9]` separates tokens, and empty tokens
/// are dropped.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Length of the longest common subsequence, in O(len(a)·len(b)) time and O(len(b)) memory.
fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { cur[j].max(prev[j + 1]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// `rouge_score`'s F-measure from an LCS length, with its operations in its order (so the
/// float is bit-identical): precision = lcs/len(prediction), recall = lcs/len(target),
/// F = 2·P·R/(P+R); 0 when either side has no tokens.
fn lcs_fmeasure(lcs: usize, target_len: usize, prediction_len: usize) -> f64 {
    if target_len == 0 || prediction_len == 0 {
        return 0.0;
    }
    let precision = lcs as f64 / prediction_len as f64;
    let recall = lcs as f64 / target_len as f64;
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// ROUGE-L F-measure of `prediction` against `target`, as
/// `RougeScorer(["rougeL"], use_stemmer=False).score(target, prediction)["rougeL"].fmeasure`
/// computes it (see [`rouge_tokens`]). Symmetric up to float rounding.
pub fn rouge_l(target: &str, prediction: &str) -> f64 {
    let (t, p) = (rouge_tokens(target), rouge_tokens(prediction));
    lcs_fmeasure(lcs_len(&t, &p), t.len(), p.len())
}

/// A text of the pool: token ids in order, and the same ids sorted (for a cheap bound).
#[derive(Debug, Clone)]
struct PoolText {
    ids: Vec<u32>,
    sorted: Vec<u32>,
}

impl PoolText {
    fn new(ids: Vec<u32>) -> Self {
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        PoolText { ids, sorted }
    }
}

/// Size of the multiset intersection of two sorted id lists: an upper bound of their LCS.
fn bag_overlap(a: &[u32], b: &[u32]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// Pools this large are scanned in parallel.
const PARALLEL_POOL: usize = 2048;

/// Texts tokenized once (tokens interned as ids) for repeated ROUGE-L comparisons, as
/// self-instruct compares every new instruction with all instructions so far. Scores follow
/// self-instruct's call `_score_lcs(new_tokens, pool_tokens)`: the new text is the target, the
/// pool text the prediction.
#[derive(Debug, Clone, Default)]
pub struct RougePool {
    vocab: HashMap<String, u32>,
    texts: Vec<PoolText>,
}

impl RougePool {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut pool = Self::new();
        for t in texts {
            pool.push(t);
        }
        pool
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    pub fn push(&mut self, text: &str) {
        let ids = rouge_tokens(text)
            .into_iter()
            .map(|t| {
                let next = self.vocab.len() as u32;
                *self.vocab.entry(t).or_insert(next)
            })
            .collect();
        self.texts.push(PoolText::new(ids));
    }

    /// The query's ids; a token the pool has never seen gets `u32::MAX`, which matches nothing.
    fn encode(&self, text: &str) -> PoolText {
        PoolText::new(rouge_tokens(text).iter().map(|t| self.vocab.get(t).copied().unwrap_or(u32::MAX)).collect())
    }

    fn score(q: &PoolText, p: &PoolText) -> f64 {
        lcs_fmeasure(lcs_len(&q.ids, &p.ids), q.ids.len(), p.ids.len())
    }

    /// Whether `p` could score above `threshold`: the F-measure of the bag-of-tokens bound
    /// (F grows with the LCS length, so this never skips a text that scores above).
    fn may_exceed(q: &PoolText, p: &PoolText, threshold: f64) -> bool {
        lcs_fmeasure(bag_overlap(&q.sorted, &p.sorted), q.ids.len(), p.ids.len()) > threshold
    }

    /// The highest ROUGE-L F of `text` against any pool text; 0 for an empty pool.
    pub fn max_similarity(&self, text: &str) -> f64 {
        let q = self.encode(text);
        if self.texts.len() >= PARALLEL_POOL {
            self.texts.par_iter().map(|p| Self::score(&q, p)).reduce(|| 0.0, f64::max)
        } else {
            let mut best = 0.0;
            for p in &self.texts {
                if Self::may_exceed(&q, p, best) {
                    best = f64::max(best, Self::score(&q, p));
                }
            }
            best
        }
    }

    /// Whether the ROUGE-L F of `text` against some pool text is above `threshold` (the
    /// self-instruct rule, with threshold 0.7); stops at the first such text.
    pub fn exceeds(&self, text: &str, threshold: f64) -> bool {
        let q = self.encode(text);
        let above = |p: &PoolText| Self::may_exceed(&q, p, threshold) && Self::score(&q, p) > threshold;
        if self.texts.len() >= PARALLEL_POOL {
            self.texts.par_iter().any(above)
        } else {
            self.texts.iter().any(above)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Text measures

/// Python's `str.isspace()`: Unicode White_Space plus the separators U+001C..U+001F.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Words as self-instruct counts them (`len(text.split())`).
pub fn word_count(text: &str) -> usize {
    text.split(is_py_space).filter(|w| !w.is_empty()).count()
}

/// The key texts are deduplicated by: lowercased words of Unicode letters and digits, joined by
/// single spaces (so case, punctuation and whitespace differences vanish:
/// `"Hello,  World!"` and `"hello world"` share the key `"hello world"`).
///
/// Dromedary's `merge_self_instruct.py` replaces each character outside `[a-zA-Z0-9]` by a space
/// and lowercases, without collapsing runs. This key is coarser in two ways, on purpose: runs of
/// spaces and punctuation are collapsed (`"a, b"` and `"a b"` are the same instruction), and
/// non-ASCII letters are kept, since with ASCII-only keys every text in a non-Latin script would
/// share the empty key and all but one would be dropped. For ASCII texts two texts Dromedary
/// calls duplicates are duplicates here too.
pub fn dedup_key(text: &str) -> String {
    let mut key = String::with_capacity(text.len());
    let mut gap = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if gap && !key.is_empty() {
                key.push(' ');
            }
            gap = false;
            key.extend(c.to_lowercase());
        } else {
            gap = true;
        }
    }
    key
}

/// A regex that finds any of `phrases` as a whole word or phrase, ignoring case: self-instruct's
/// `re.search(r"\b({phrase})\b", text, flags=re.IGNORECASE)` for each phrase (Unicode word
/// boundaries; phrases taken literally).
pub fn phrase_regex<S: AsRef<str>>(phrases: &[S]) -> Result<Regex, regex::Error> {
    let alternatives: Vec<String> = phrases.iter().map(|p| regex::escape(p.as_ref())).collect();
    Regex::new(&format!(r"(?i)\b(?:{})\b", alternatives.join("|")))
}

// ---------------------------------------------------------------------------------------------
// The spec

/// Which texts to keep. Every field is optional; the default keeps everything.
///
/// Rules are tried in this fixed order and a text is counted under the first that drops it
/// (the key in [`FilterReport::dropped`] is the field name):
/// 1. `min_words`, `max_words`, `min_chars`, `max_chars`: bounds, inclusive. Words are
///    whitespace-separated (Python's `str.split()`); characters are Unicode scalar values.
/// 2. `drop_starting_with_punctuation` (first non-whitespace character in ASCII punctuation,
///    Python's `string.punctuation`), then `drop_non_ascii_start` (first non-whitespace
///    character not ASCII).
/// 3. `blacklist`: drop a text containing one of the phrases as a whole word or phrase,
///    ignoring case (self-instruct's `\b(phrase)\b` with IGNORECASE; Unicode word boundaries;
///    the phrase is taken literally, not as a regex).
/// 4. `keep_regex` (when non-empty, drop a text that matches none of them), then `drop_regex`
///    (drop a text that matches any). Rust `regex` syntax, case-sensitive unless `(?i)`.
/// 5. `dedup`: drop a text whose [`dedup_key`] equals that of a pool text or of a text kept
///    earlier.
/// 6. `rouge_l_max`: drop a text whose ROUGE-L F ([`rouge_l`]) with a pool text or a text kept
///    earlier is above the threshold (self-instruct: 0.7, strictly above).
///
/// Rules 5 and 6 are sequential as in self-instruct: a kept text joins the pool for later texts;
/// a dropped one does not.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_words: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_words: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_chars: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_chars: Option<usize>,
    pub drop_starting_with_punctuation: bool,
    pub drop_non_ascii_start: bool,
    pub blacklist: Vec<String>,
    pub keep_regex: Vec<String>,
    pub drop_regex: Vec<String>,
    pub dedup: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rouge_l_max: Option<f64>,
}

/// One rule of a [`FilterSpec`], in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    MinWords,
    MaxWords,
    MinChars,
    MaxChars,
    PunctuationStart,
    NonAsciiStart,
    Blacklist,
    KeepRegex,
    DropRegex,
    Dedup,
    RougeL,
}

impl Rule {
    /// The spec field that states the rule; the report's key.
    fn key(self) -> &'static str {
        match self {
            Rule::MinWords => "min_words",
            Rule::MaxWords => "max_words",
            Rule::MinChars => "min_chars",
            Rule::MaxChars => "max_chars",
            Rule::PunctuationStart => "drop_starting_with_punctuation",
            Rule::NonAsciiStart => "drop_non_ascii_start",
            Rule::Blacklist => "blacklist",
            Rule::KeepRegex => "keep_regex",
            Rule::DropRegex => "drop_regex",
            Rule::Dedup => "dedup",
            Rule::RougeL => "rouge_l_max",
        }
    }
}

/// How many texts came in, how many were kept, and how many each rule dropped (keyed by the
/// spec field; rules that dropped nothing are absent). `input == kept + Σ dropped`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct FilterReport {
    pub input: usize,
    pub kept: usize,
    pub dropped: BTreeMap<String, usize>,
}

/// The result of [`FilterSpec::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterOutcome {
    /// Indices into the input texts, ascending.
    pub kept: Vec<usize>,
    pub report: FilterReport,
}

/// A checked [`FilterSpec`] with its regexes compiled, to filter many batches.
#[derive(Debug, Clone)]
pub struct Filter {
    spec: FilterSpec,
    blacklist: Option<Regex>,
    keep: Vec<Regex>,
    drop: Vec<Regex>,
}

fn check_bounds(min_key: &str, min: Option<usize>, max_key: &str, max: Option<usize>) -> Result<(), FilterError> {
    match (min, max) {
        (Some(lo), Some(hi)) if lo > hi => Err(invalid(min_key, format!("{lo} is above {max_key} = {hi}"))),
        _ => Ok(()),
    }
}

fn compile_all(key: &str, patterns: &[String]) -> Result<Vec<Regex>, FilterError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| Regex::new(p).map_err(|source| FilterError::Regex { key: format!("{key}.{i}"), source }))
        .collect()
}

impl FilterSpec {
    /// Self-instruct's filters as Dromedary runs them: more than 3 and at most 150 words, the
    /// keyword blacklist, no punctuation or non-ASCII first character, ROUGE-L ≤ 0.7 against
    /// the pool, and the merge step's dedup. (Dromedary also applies the blacklist to a task's
    /// input; filter the inputs with a spec holding only the blacklist for that.)
    pub fn self_instruct() -> Self {
        FilterSpec {
            min_words: Some(4),
            max_words: Some(150),
            drop_starting_with_punctuation: true,
            drop_non_ascii_start: true,
            blacklist: SELF_INSTRUCT_BLACKLIST.iter().map(|s| s.to_string()).collect(),
            dedup: true,
            rouge_l_max: Some(SELF_INSTRUCT_ROUGE_L_MAX),
            ..Default::default()
        }
    }

    /// Checks ranges (min ≤ max, `rouge_l_max` in [0, 1]), blacklist phrases (not blank) and
    /// regexes (they compile). Errors name the key, e.g. `drop_regex.1: invalid regex: ...`.
    pub fn check(&self) -> Result<(), FilterError> {
        self.compile().map(|_| ())
    }

    /// [`check`](Self::check)s the spec and compiles it.
    pub fn compile(&self) -> Result<Filter, FilterError> {
        check_bounds("min_words", self.min_words, "max_words", self.max_words)?;
        check_bounds("min_chars", self.min_chars, "max_chars", self.max_chars)?;
        if let Some(t) = self.rouge_l_max {
            if !(0.0..=1.0).contains(&t) {
                return Err(invalid("rouge_l_max", format!("{t} is not in [0, 1]")));
            }
        }
        for (i, phrase) in self.blacklist.iter().enumerate() {
            if phrase.trim().is_empty() {
                return Err(invalid(format!("blacklist.{i}"), "empty phrase"));
            }
        }
        let blacklist = if self.blacklist.is_empty() {
            None
        } else {
            Some(phrase_regex(&self.blacklist).map_err(|source| FilterError::Regex { key: "blacklist".into(), source })?)
        };
        Ok(Filter {
            spec: self.clone(),
            blacklist,
            keep: compile_all("keep_regex", &self.keep_regex)?,
            drop: compile_all("drop_regex", &self.drop_regex)?,
        })
    }

    /// Filters `texts` against `pool` (texts that already exist, e.g. seed tasks); see
    /// [`FilterSpec`] for the rules and their order.
    pub fn apply(&self, texts: &[&str], pool: &[&str]) -> Result<FilterOutcome, FilterError> {
        Ok(self.compile()?.apply(texts, pool))
    }
}

impl Filter {
    pub fn spec(&self) -> &FilterSpec {
        &self.spec
    }

    /// The first rule among those that look at the text alone (1–4) that drops it.
    fn first_failing(&self, text: &str) -> Option<Rule> {
        let s = &self.spec;
        let words = word_count(text);
        let chars = text.chars().count();
        let first = text.trim_start_matches(is_py_space).chars().next();
        let checks = [
            (Rule::MinWords, s.min_words.is_some_and(|m| words < m)),
            (Rule::MaxWords, s.max_words.is_some_and(|m| words > m)),
            (Rule::MinChars, s.min_chars.is_some_and(|m| chars < m)),
            (Rule::MaxChars, s.max_chars.is_some_and(|m| chars > m)),
            (Rule::PunctuationStart, s.drop_starting_with_punctuation && first.is_some_and(|c| c.is_ascii_punctuation())),
            (Rule::NonAsciiStart, s.drop_non_ascii_start && first.is_some_and(|c| !c.is_ascii())),
        ];
        if let Some((rule, _)) = checks.iter().find(|(_, fails)| *fails) {
            return Some(*rule);
        }
        if self.blacklist.as_ref().is_some_and(|re| re.is_match(text)) {
            return Some(Rule::Blacklist);
        }
        if !self.keep.is_empty() && !self.keep.iter().any(|re| re.is_match(text)) {
            return Some(Rule::KeepRegex);
        }
        if self.drop.iter().any(|re| re.is_match(text)) {
            return Some(Rule::DropRegex);
        }
        None
    }

    /// Filters `texts` in order against `pool`; kept texts join the pool (dedup and ROUGE-L).
    pub fn apply(&self, texts: &[&str], pool: &[&str]) -> FilterOutcome {
        let mut seen: Option<HashSet<String>> = self.spec.dedup.then(|| pool.iter().map(|t| dedup_key(t)).collect());
        let mut rouge: Option<(RougePool, f64)> = self.spec.rouge_l_max.map(|t| (RougePool::from_texts(pool.iter().copied()), t));
        let mut kept = Vec::new();
        let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
        for (i, text) in texts.iter().enumerate() {
            let key = seen.as_ref().map(|_| dedup_key(text));
            let rule = self.first_failing(text).or_else(|| {
                if let (Some(seen), Some(key)) = (&seen, &key) {
                    if seen.contains(key) {
                        return Some(Rule::Dedup);
                    }
                }
                match &rouge {
                    Some((pool, t)) if pool.exceeds(text, *t) => Some(Rule::RougeL),
                    _ => None,
                }
            });
            match rule {
                Some(rule) => *dropped.entry(rule.key().to_string()).or_default() += 1,
                None => {
                    kept.push(i);
                    if let (Some(seen), Some(key)) = (&mut seen, key) {
                        seen.insert(key);
                    }
                    if let Some((pool, _)) = &mut rouge {
                        pool.push(text);
                    }
                }
            }
        }
        let report = FilterReport { input: texts.len(), kept: kept.len(), dropped };
        FilterOutcome { kept, report }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Fixture {
        pairs: Vec<Pair>,
        pool: PoolFixture,
    }
    #[derive(Deserialize)]
    struct Pair {
        target: String,
        prediction: String,
        fmeasure: f64,
    }
    #[derive(Deserialize)]
    struct PoolFixture {
        texts: Vec<String>,
        queries: Vec<Query>,
    }
    #[derive(Deserialize)]
    struct Query {
        text: String,
        max_fmeasure: f64,
    }

    fn fixture() -> Fixture {
        serde_json::from_str(include_str!("../../tests/fixtures/rouge/rouge_l.json")).unwrap()
    }

    fn spec(toml_text: &str) -> FilterSpec {
        toml::from_str(toml_text).unwrap()
    }

    fn kept(spec: &FilterSpec, texts: &[&str]) -> Vec<usize> {
        spec.apply(texts, &[]).unwrap().kept
    }

    fn dropped(out: &FilterOutcome) -> Vec<(&str, usize)> {
        out.report.dropped.iter().map(|(k, v)| (k.as_str(), *v)).collect()
    }

    #[test]
    fn rouge_l_matches_rouge_score() {
        let f = fixture();
        assert!(f.pairs.len() >= 30);
        for p in &f.pairs {
            let got = rouge_l(&p.target, &p.prediction);
            assert!((got - p.fmeasure).abs() < 1e-9, "{:?} vs {:?}: {got} != {}", p.target, p.prediction, p.fmeasure);
        }
    }

    #[test]
    fn rouge_tokens_follow_rouge_score() {
        assert_eq!(rouge_tokens("The Cat's 2nd-best_toy!"), ["the", "cat", "s", "2nd", "best", "toy"]);
        assert_eq!(rouge_tokens("İs"), ["i", "s"]);
        assert_eq!(rouge_tokens("\u{212a}m"), ["km"]);
        assert!(rouge_tokens("日本語 ... ").is_empty());
    }

    #[test]
    fn pool_max_similarity_matches_rouge_score() {
        let f = fixture();
        let pool = RougePool::from_texts(f.pool.texts.iter().map(String::as_str));
        assert_eq!(pool.len(), f.pool.texts.len());
        for q in &f.pool.queries {
            let got = pool.max_similarity(&q.text);
            assert!((got - q.max_fmeasure).abs() < 1e-9, "{:?}: {got} != {}", q.text, q.max_fmeasure);
            for t in [0.0, 0.5, 0.7, 0.8, q.max_fmeasure, 0.99] {
                assert_eq!(pool.exceeds(&q.text, t), q.max_fmeasure > t, "{:?} threshold {t}", q.text);
            }
        }
        // Same tokens, reversed: the bag bound (F = 1) passes, the LCS (1 token, F = 0.25) decides.
        let reversed = RougePool::from_texts(["a b c d"]);
        assert_eq!(reversed.max_similarity("d c b a"), 0.25);
        assert!(reversed.exceeds("d c b a", 0.2499));
        assert!(!reversed.exceeds("d c b a", 0.25));
        assert_eq!(RougePool::new().max_similarity("anything"), 0.0);
        assert!(!RougePool::new().exceeds("anything", 0.0));
    }

    #[test]
    fn pool_agrees_with_pairwise_scores_in_parallel_too() {
        // Above PARALLEL_POOL the scan runs on rayon; the answer must not change.
        let texts: Vec<String> = (0..PARALLEL_POOL + 10).map(|i| format!("task {} about item {} and {}", i % 7, i % 13, i)).collect();
        let pool = RougePool::from_texts(texts.iter().map(String::as_str));
        let query = "task 3 about item 5 and 1000";
        let want = texts.iter().map(|t| rouge_l(query, t)).fold(0.0, f64::max);
        assert_eq!(pool.max_similarity(query), want);
        assert!(want < 1.0 && want > 0.5);
        assert!(pool.exceeds(query, want - 1e-12));
        assert!(!pool.exceeds(query, want));
    }

    #[test]
    fn word_and_char_bounds() {
        let s = spec("min_words = 2\nmax_words = 3\nmin_chars = 4\nmax_chars = 12");
        let texts = ["one", "one two", "one two three four", "a b", "aaaaa bbbbbbb", "tab\tsep\u{1f}x"];
        let out = s.apply(&texts, &[]).unwrap();
        assert_eq!(out.kept, vec![1, 5]);
        assert_eq!(dropped(&out), [("max_chars", 1), ("max_words", 1), ("min_chars", 1), ("min_words", 1)]);
        assert_eq!(word_count("  a\u{a0}b\u{1c}c  "), 3);
        assert_eq!(kept(&spec("max_chars = 3"), &["äöü", "äöüx"]), [0]);
    }

    #[test]
    fn start_rules() {
        let texts = ["\"Quoted\" start", "  - bullet", "Élan start", "plain start", "¿Qué?", ""];
        assert_eq!(kept(&spec("drop_starting_with_punctuation = true"), &texts), [2, 3, 4, 5]);
        assert_eq!(kept(&spec("drop_non_ascii_start = true"), &texts), [0, 1, 3, 5]);
        let both = spec("drop_starting_with_punctuation = true\ndrop_non_ascii_start = true");
        assert_eq!(kept(&both, &texts), [3, 5]);
    }

    #[test]
    fn blacklist_matches_whole_words_ignoring_case() {
        let s = FilterSpec { blacklist: vec!["image".into(), "go to".into(), "c.d".into()], ..Default::default() };
        let texts = [
            "Describe this IMAGE please",
            "Describe the imagery",
            "Please Go To the store",
            "go  to (two spaces) is another phrase",
            "undergo total change",
            "an image-based task",
            "abc cxd",
            "see c.d here",
        ];
        assert_eq!(kept(&s, &texts), [1, 3, 4, 6]);
    }

    #[test]
    fn regex_rules() {
        let s = spec("keep_regex = ['\\?$', '^(?i)explain']\ndrop_regex = ['(?i)password', 'hack']");
        let texts = ["What is X?", "Explain Y.", "Say Z.", "What is my password?", "How to hack?"];
        let out = s.apply(&texts, &[]).unwrap();
        assert_eq!(out.kept, [0, 1]);
        assert_eq!(dropped(&out), [("drop_regex", 2), ("keep_regex", 1)]);
    }

    #[test]
    fn dedup_drops_normalized_variants_and_pool_texts() {
        assert_eq!(dedup_key("  Hello,   World!! "), "hello world");
        assert_eq!(dedup_key("Ça va?"), "ça va");
        let s = FilterSpec { dedup: true, ..Default::default() };
        let texts = ["Hello world", "hello, WORLD!", "Hello  world.", "Hello worlds", "Seed task", "日本語", "中文"];
        let out = s.apply(&texts, &["SEED task!"]).unwrap();
        assert_eq!(out.kept, [0, 3, 5, 6]);
        assert_eq!(dropped(&out), [("dedup", 3)]);
    }

    #[test]
    fn rouge_rule_is_sequential() {
        let s = FilterSpec { rouge_l_max: Some(0.7), ..Default::default() };
        let a = "Give three tips for staying healthy.";
        let b = "Give me three tips for staying healthy and fit.";
        // F(a, b) = 0.8: the first is kept, the second compared with it and dropped.
        assert_eq!(kept(&s, &[a, b]), [0]);
        assert_eq!(kept(&s, &[b, a]), [0]);
        // Against a pool holding `a`, both near-copies go.
        assert_eq!(s.apply(&[b, "Explain why the sky is blue."], &[a]).unwrap().kept, [1]);
        // Exactly 0.7 is not above the threshold.
        let c = "Generate a list of 5 adjectives that describe a cat.";
        let d = "Generate a list of five adjectives to describe a dog.";
        assert_eq!(rouge_l(c, d), 0.7);
        assert_eq!(kept(&s, &[c, d]), [0, 1]);
        // A dropped text does not join the pool: `e` only resembles the dropped `y`.
        let x = "Name three famous painters from Italy.";
        let y = "Name three famous painters from Italy and describe their style.";
        let e = "Painters from Italy and describe their style.";
        assert!(rouge_l(y, x) > 0.7 && rouge_l(e, y) > 0.7 && rouge_l(e, x) <= 0.7);
        assert_eq!(kept(&s, &[x, y, e]), [0, 2]);
    }

    #[test]
    fn first_failing_rule_in_order_is_counted() {
        let s = spec(
            "min_words = 3\ndrop_starting_with_punctuation = true\nblacklist = ['image']\n\
             drop_regex = ['x']\ndedup = true\nrouge_l_max = 0.7",
        );
        let texts = [
            "? image x",               // start (words ok) before blacklist and regex
            "image",                   // too short, though blacklisted too
            "an image with x",         // blacklist before drop_regex
            "a box of things",         // drop_regex
            "a set of things",         // kept
            "A set of things!",        // dedup, before rouge_l (also F = 1)
            "a set of nice things",    // rouge_l (F = 0.89)
            "something else entirely", // kept
        ];
        let out = s.apply(&texts, &[]).unwrap();
        assert_eq!(out.kept, [4, 7]);
        assert_eq!(
            dropped(&out),
            [
                ("blacklist", 1),
                ("dedup", 1),
                ("drop_regex", 1),
                ("drop_starting_with_punctuation", 1),
                ("min_words", 1),
                ("rouge_l_max", 1)
            ]
        );
        assert_eq!(out.report.input, 8);
        assert_eq!(out.report.kept, 2);
        assert_eq!(out.report.input, out.report.kept + out.report.dropped.values().sum::<usize>());
        let json = serde_json::to_value(&out.report).unwrap();
        assert_eq!(json["dropped"]["dedup"], 1);
    }

    #[test]
    fn default_keeps_everything() {
        let out = FilterSpec::default().apply(&["", "?", "a", "a"], &["a"]).unwrap();
        assert_eq!(out.kept, [0, 1, 2, 3]);
        assert!(out.report.dropped.is_empty());
    }

    #[test]
    fn self_instruct_preset() {
        let s = FilterSpec::self_instruct();
        s.check().unwrap();
        let texts = [
            "Write a poem.",                                  // 3 words
            "Plot the sales figures for the last year.",      // blacklist
            "1. List the planets of the solar system.",       // starts with a digit: kept
            "- List the planets of the solar system.",        // punctuation
            "Écris un poème sur la mer.",                     // non-ASCII start
            "List all the planets of the solar system.",      // ROUGE-L with #2 above 0.7
            "Suggest a name for a bakery that sells bagels.", // kept
        ];
        assert_eq!(kept(&s, &texts), [2, 6]);
        let long = "word ".repeat(151);
        assert_eq!(kept(&s, &[long.as_str(), &long[..long.len() - 5]]), [1]);
    }

    #[test]
    fn check_names_the_key() {
        let err = |s: FilterSpec| s.check().unwrap_err().to_string();
        assert_eq!(err(spec("min_words = 5\nmax_words = 4")), "min_words: 5 is above max_words = 4");
        assert_eq!(err(spec("min_chars = 9\nmax_chars = 2")), "min_chars: 9 is above max_chars = 2");
        assert_eq!(err(spec("rouge_l_max = 1.5")), "rouge_l_max: 1.5 is not in [0, 1]");
        assert!(err(FilterSpec { rouge_l_max: Some(f64::NAN), ..Default::default() }).starts_with("rouge_l_max: NaN"));
        assert_eq!(err(spec("blacklist = ['ok', ' ']")), "blacklist.1: empty phrase");
        let e = err(spec("drop_regex = ['ok', '(unclosed']"));
        assert!(e.starts_with("drop_regex.1: invalid regex: "), "{e}");
        assert!(err(spec("keep_regex = ['[z-a]']")).starts_with("keep_regex.0: "));
        assert!(spec("drop_regex = ['(unclosed']").apply(&["x"], &[]).is_err());
        spec("min_words = 4\nmax_words = 4\nrouge_l_max = 0.0").check().unwrap();
    }

    #[test]
    fn spec_serde_rejects_unknown_keys_and_round_trips() {
        let e = toml::from_str::<FilterSpec>("min_words = 4\nrouge_l = 0.7").unwrap_err().to_string();
        assert!(e.contains("rouge_l"), "{e}");
        let s = FilterSpec::self_instruct();
        let back: FilterSpec = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(spec(""), FilterSpec::default());
    }
}
