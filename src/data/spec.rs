//! `DataSpec`: a dataset as a TOML spec declares it under `[data.NAME]`.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::DataError;
use super::read::FileKind;

/// The built-in dataset formats. Each reads one or more file layouts (see `docs/data.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// PKU-SafeRLHF rows, v0 or v1: `prompt, response_0, response_1, is_response_{0,1}_safe,
    /// better_response_id, safer_response_id` → preferences.
    PkuSaferlhf,
    /// Safe-vs-unsafe pairs: `{prompt, response: [safe, unsafe]}` (safety_realignment) or
    /// `{prompt, chosen, rejected}` → preferences (chosen safe, rejected unsafe).
    PkuSaferlhfPairs,
    /// `{prompt, response, is_safe, category?}` (BeaverTails QA; flattened PKU rows) → labeled.
    Beavertails,
    /// RepNoise/Booster `beavertails_with_refusals_train.json`: `refusal` = "Question: ...\nAnswer:
    /// ..." split as Booster does → instructions.
    BeavertailsRefusal,
    /// alignment-attribution-code's SFT csv: `prompt` = "[INST] {instruction} [/INST]" (the
    /// Llama-2 chat wrapper is removed), `response` = a Llama-2-chat refusal → instructions.
    RefusalSft,
    /// BeaverTails-Evaluation `{prompt, category}` → prompts.
    BeavertailsEval,
    /// nyu-mll/BBQ jsonl → multiple choice (with bias-score metadata).
    Bbq,
    /// BIG-bench bbq_lite_json (`{cat}_{ambig|disambig}/task.json`) → multiple choice.
    BbqLite,
    /// sylinrl TruthfulQA.csv → multiple choice (MC1 or MC2, see `mc`).
    TruthfulqaCsv,
    /// TruthfulQA `mc_task.json` (ordered `{answer: 0|1}` dicts) or the HF `multiple_choice`
    /// layout (`{choices, labels}`) → multiple choice.
    TruthfulqaMc,
    /// BIG-bench truthful_qa: `task_mc.json` (MC1) or `questions.json` → multiple choice.
    TruthfulqaBigbench,
    /// BIG-bench hhh_alignment (`{harmless,helpful,honest,other}/task.json`) or the HF
    /// `HuggingFaceH4/hhh_alignment` layout → multiple choice.
    Hhh,
    /// AdvBench harmful_behaviors.csv `goal, target` → prompts.
    Advbench,
    /// HarmBench behaviors csv → prompts.
    Harmbench,
    /// Any prompt list: `prompt` (or `instruction`, `goal`, `question`), `category?`, `target?`.
    Prompts,
    /// GLUE SST-2 `sentence, label` → instructions in Booster's format (or classification).
    Sst2,
    /// AG News `text, label` (label name or 0-3; headerless TSV accepted) → instructions in
    /// Booster's format (or classification).
    Agnews,
    /// GSM8K `{question, answer}` (Booster conversion) or `{instruction, output}` → instructions.
    Gsm8k,
    /// Alpaca `{instruction, input?, output}` → instructions.
    Alpaca,
    /// Alpaca-layout files with an optional `label` or `flag` field (e.g. pre-built fine-tune
    /// mixes) → instructions.
    InstructionJson,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::PkuSaferlhf => "pku-saferlhf",
            Format::PkuSaferlhfPairs => "pku-saferlhf-pairs",
            Format::Beavertails => "beavertails",
            Format::BeavertailsRefusal => "beavertails-refusal",
            Format::RefusalSft => "refusal-sft",
            Format::BeavertailsEval => "beavertails-eval",
            Format::Bbq => "bbq",
            Format::BbqLite => "bbq-lite",
            Format::TruthfulqaCsv => "truthfulqa-csv",
            Format::TruthfulqaMc => "truthfulqa-mc",
            Format::TruthfulqaBigbench => "truthfulqa-bigbench",
            Format::Hhh => "hhh",
            Format::Advbench => "advbench",
            Format::Harmbench => "harmbench",
            Format::Prompts => "prompts",
            Format::Sst2 => "sst2",
            Format::Agnews => "agnews",
            Format::Gsm8k => "gsm8k",
            Format::Alpaca => "alpaca",
            Format::InstructionJson => "instruction-json",
        }
    }

    /// File types this format reads (also the files picked up when `path` is a directory).
    pub(crate) fn file_kinds(self) -> &'static [FileKind] {
        use FileKind::*;
        match self {
            Format::TruthfulqaCsv => &[Csv],
            Format::RefusalSft => &[Csv, Json, Jsonl, Parquet],
            Format::Beavertails
            | Format::BeavertailsEval
            | Format::Advbench
            | Format::Harmbench
            | Format::Prompts
            | Format::Sst2
            | Format::Agnews => &[Csv, Tsv, Json, Jsonl, Parquet],
            _ => &[Json, Jsonl, Parquet],
        }
    }

    /// The kind of item the reader produces before any `view` conversion.
    pub fn native_kind(self) -> Kind {
        match self {
            Format::PkuSaferlhf | Format::PkuSaferlhfPairs => Kind::Preferences,
            Format::Beavertails => Kind::Labeled,
            Format::BeavertailsEval | Format::Advbench | Format::Harmbench | Format::Prompts => Kind::Prompts,
            Format::Bbq | Format::BbqLite | Format::TruthfulqaCsv | Format::TruthfulqaMc | Format::TruthfulqaBigbench | Format::Hhh => {
                Kind::MultipleChoice
            }
            Format::Sst2 | Format::Agnews => Kind::Classification,
            Format::BeavertailsRefusal | Format::RefusalSft | Format::Gsm8k | Format::Alpaca | Format::InstructionJson => {
                Kind::Instructions
            }
        }
    }

    /// The kind a dataset of this format holds when the spec sets no `view`.
    pub fn default_kind(self) -> Kind {
        match self {
            Format::Sst2 | Format::Agnews => Kind::Instructions,
            f => f.native_kind(),
        }
    }

    pub(crate) fn is_truthfulqa(self) -> bool {
        matches!(self, Format::TruthfulqaCsv | Format::TruthfulqaMc | Format::TruthfulqaBigbench)
    }

    pub(crate) fn is_bbq(self) -> bool {
        matches!(self, Format::Bbq | Format::BbqLite)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind of items a dataset holds; also the `view` option (convert on load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Instructions,
    Preferences,
    Labeled,
    Prompts,
    MultipleChoice,
    Classification,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Instructions => "instructions",
            Kind::Preferences => "preference pairs",
            Kind::Labeled => "labeled responses",
            Kind::Prompts => "prompts",
            Kind::MultipleChoice => "multiple-choice items",
            Kind::Classification => "classification items",
        }
    }
}

/// TruthfulQA variant: MC1 (best answer among false ones, one gold) or MC2 (all true answers
/// gold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum McVariant {
    #[default]
    Mc1,
    Mc2,
}

/// Which PKU-SafeRLHF response is `chosen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// `safer_response_id` (safety alignment; default).
    #[default]
    Safer,
    /// `better_response_id` (helpfulness).
    Better,
}

/// A half-open row range over the records of the file(s), in file order, 0-based: `"0..100"`,
/// `"5001..10000"`, `"100.."`, `"..50"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRange {
    pub start: usize,
    pub end: Option<usize>,
}

impl std::str::FromStr for RowRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid row range {s:?} (expected \"START..END\", \"START..\" or \"..END\")");
        let (a, b) = s.trim().split_once("..").ok_or_else(bad)?;
        let start = if a.trim().is_empty() { 0 } else { a.trim().parse().map_err(|_| bad())? };
        let end = if b.trim().is_empty() { None } else { Some(b.trim().parse().map_err(|_| bad())?) };
        if let Some(e) = end {
            if e < start {
                return Err(format!("row range {s:?} ends before it starts"));
            }
        }
        Ok(RowRange { start, end })
    }
}

impl fmt::Display for RowRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.end {
            Some(e) => write!(f, "{}..{}", self.start, e),
            None => write!(f, "{}..", self.start),
        }
    }
}

impl Serialize for RowRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for RowRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Record filters, applied after `rows` and `view` (before the view when it is `prompts`, see
/// [`DataSpec::filter_kind`]), before `shuffle_seed` and `limit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Labeled responses: `is_safe == false`; instructions: `label == "unsafe"`; preference pairs:
    /// at least one response labeled unsafe.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unsafe_only: bool,
    /// Labeled responses: `is_safe`; instructions: `label == "safe"`; preference pairs: both
    /// responses labeled safe.
    #[serde(default, skip_serializing_if = "is_false")]
    pub safe_only: bool,
    /// Keep items whose category (any of a labeled response's categories) is one of these
    /// (ASCII case-insensitive). Prompts, labeled responses, multiple choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Vec<String>>,
    /// Instructions: keep items whose `label` is one of these; classification: label names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Vec<String>>,
    /// BBQ: `"ambig"` or `"disambig"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_condition: Option<String>,
    /// BBQ: `"neg"` or `"nonneg"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_polarity: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

/// A prompt template: a built-in name (`alpaca`, `raw`, `unlearn-qa`) or a file path (relative
/// to the spec's directory), or a pair of files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TemplateRef {
    Named(String),
    Pair { input: PathBuf, no_input: PathBuf },
}

/// One dataset, as `[data.NAME]` in a spec.
///
/// Order of operations: read every record of the file(s) (all are validated) → `rows` →
/// `view` → `filter` → `shuffle_seed` → `limit` (with `view = "prompts"`, `filter` comes before
/// `view`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub format: Format,
    /// A file, or a directory (all files of the format's types below it, sorted by path).
    pub path: PathBuf,
    /// With a directory `path`: only files whose name (without extension) is `split` or starts
    /// with `split-` / `split_` (HF layouts: `train.jsonl`, `test-00000-of-00001.parquet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<RowRange>,
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub filter: Filter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    /// Convert the items on load (e.g. preference pairs → labeled responses or instructions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<Kind>,
    /// TruthfulQA formats: `mc1` (default) or `mc2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mc: Option<McVariant>,
    /// `pku-saferlhf`: `safer` (default) or `better`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer: Option<Prefer>,
}

impl DataSpec {
    /// A spec with only `format` and `path` set.
    pub fn new(format: Format, path: impl Into<PathBuf>) -> Self {
        DataSpec {
            format,
            path: path.into(),
            split: None,
            rows: None,
            filter: Filter::default(),
            shuffle_seed: None,
            limit: None,
            template: None,
            view: None,
            mc: None,
            prefer: None,
        }
    }

    /// The kind of items `load` returns.
    pub fn kind(&self) -> Kind {
        self.view.unwrap_or(self.format.default_kind())
    }

    /// The kind of items `filter` applies to: the items after `view`, except for a view as
    /// prompts, which carry no safety labels: then the filter applies to the records before the
    /// conversion (e.g. the first N unsafe BeaverTails rows as prompts).
    pub fn filter_kind(&self) -> Kind {
        match self.kind() {
            Kind::Prompts => self.format.native_kind(),
            k => k,
        }
    }

    /// Checks option combinations that do not depend on the files.
    pub fn validate(&self) -> Result<(), DataError> {
        let f = self.format;
        let kind = self.filter_kind();
        let bad = |msg: String| Err(DataError::Spec(msg));
        if self.mc.is_some() && !f.is_truthfulqa() {
            return bad(format!("`mc` applies to the truthfulqa formats, not {f}"));
        }
        if self.prefer.is_some() && f != Format::PkuSaferlhf {
            return bad(format!("`prefer` applies to format pku-saferlhf, not {f}"));
        }
        let flt = &self.filter;
        if flt.unsafe_only && flt.safe_only {
            return bad("`filter.unsafe_only` and `filter.safe_only` exclude each other".into());
        }
        if (flt.unsafe_only || flt.safe_only) && !matches!(kind, Kind::Labeled | Kind::Instructions | Kind::Preferences) {
            let which = if flt.unsafe_only { "unsafe_only" } else { "safe_only" };
            return bad(format!("`filter.{which}` does not apply to {}", kind.describe()));
        }
        if flt.category.is_some() && !matches!(kind, Kind::Labeled | Kind::Prompts | Kind::MultipleChoice) {
            return bad(format!("`filter.category` does not apply to {}", kind.describe()));
        }
        if flt.label.is_some() && !matches!(kind, Kind::Instructions | Kind::Classification) {
            return bad(format!("`filter.label` does not apply to {}", kind.describe()));
        }
        for (name, val, allowed) in [
            ("context_condition", &flt.context_condition, ["ambig", "disambig"]),
            ("question_polarity", &flt.question_polarity, ["neg", "nonneg"]),
        ] {
            if let Some(v) = val {
                if !f.is_bbq() || kind != Kind::MultipleChoice {
                    return bad(format!("`filter.{name}` applies to the bbq formats, not {f}"));
                }
                if !allowed.contains(&v.as_str()) {
                    return bad(format!("`filter.{name}` must be one of {allowed:?}, not {v:?}"));
                }
            }
        }
        if self.split.as_deref() == Some("") {
            return bad("`split` is empty".into());
        }
        if self.limit == Some(0) {
            return bad("`limit` must be at least 1 (0 would keep no items)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_from_toml() {
        let spec: DataSpec = toml::from_str(
            r#"
format = "bbq"
path = "data/bbq"
rows = "0..100"
shuffle_seed = 3
limit = 10
[filter]
context_condition = "ambig"
category = ["Age"]
"#,
        )
        .unwrap();
        assert_eq!(spec.format, Format::Bbq);
        assert_eq!(spec.rows, Some(RowRange { start: 0, end: Some(100) }));
        assert_eq!(spec.filter.context_condition.as_deref(), Some("ambig"));
        spec.validate().unwrap();
        let t: DataSpec = toml::from_str("format = \"alpaca\"\npath = \"a.json\"\ntemplate = \"alpaca\"").unwrap();
        assert_eq!(t.template, Some(TemplateRef::Named("alpaca".into())));
        let t: DataSpec =
            toml::from_str("format = \"alpaca\"\npath = \"a.json\"\ntemplate = { input = \"a.txt\", no_input = \"b.txt\" }").unwrap();
        assert!(matches!(t.template, Some(TemplateRef::Pair { .. })));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = toml::from_str::<DataSpec>("format = \"bbq\"\npath = \"x\"\nlimt = 3").unwrap_err().to_string();
        assert!(e.contains("limt"), "{e}");
        let e = toml::from_str::<DataSpec>("format = \"bbq\"\npath = \"x\"\n[filter]\nunsafe = true").unwrap_err().to_string();
        assert!(e.contains("unsafe"), "{e}");
        let e = toml::from_str::<DataSpec>("format = \"nope\"\npath = \"x\"").unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let e = toml::from_str::<DataSpec>("format = \"bbq\"\npath = \"x\"\nrows = \"5..2\"").unwrap_err().to_string();
        assert!(e.contains("ends before it starts"), "{e}");
        let mut s = DataSpec::new(Format::Hhh, "x");
        s.filter.context_condition = Some("ambig".into());
        assert!(s.validate().unwrap_err().to_string().contains("bbq formats"));
        let mut s = DataSpec::new(Format::Bbq, "x");
        s.filter.context_condition = Some("ambiguous".into());
        assert!(s.validate().is_err());
        let mut s = DataSpec::new(Format::Advbench, "x");
        s.filter.unsafe_only = true;
        assert!(s.validate().unwrap_err().to_string().contains("does not apply to prompts"));
        let mut s = DataSpec::new(Format::Advbench, "x");
        s.limit = Some(0);
        assert!(s.validate().unwrap_err().to_string().contains("`limit` must be at least 1"));
        s.limit = Some(1);
        s.validate().unwrap();
        let e = toml::from_str::<DataSpec>("format = \"bbq\"\npath = \"x\"\nlimit = -1").unwrap_err().to_string();
        assert!(e.contains("-1"), "{e}");
    }

    #[test]
    fn row_range_forms() {
        assert_eq!("5..".parse::<RowRange>().unwrap(), RowRange { start: 5, end: None });
        assert_eq!("..7".parse::<RowRange>().unwrap(), RowRange { start: 0, end: Some(7) });
        assert!("5".parse::<RowRange>().is_err());
        assert_eq!(RowRange { start: 1, end: Some(3) }.to_string(), "1..3");
    }
}
