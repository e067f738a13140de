//! Paper-style outputs from finished runs: the summary frame (`summary.parquet`, `summary.csv`),
//! tables (`tables/*.md|tex|csv`) and figures (`figures/*.png|svg`).
//!
//! The module knows nothing of models, spec parsing or scheduling. Its input is plain data: one
//! [`RunRow`] per run (exactly what each run's `result.json` holds) and a [`ReportSpec`] (the
//! `[[report.table]]` and `[[report.plot]]` sections of a spec). Every output is a pure function
//! of those, so a results directory copied from elsewhere, or a sweep that is only partly done,
//! reports the same way.
//!
//! Aggregation: runs whose params are identical except for the seed are replicates; a table
//! cell or plot point is the mean over the replicates that are `done`, with the sample standard
//! deviation when there are two or more. Failed runs show as "—" and are listed under the
//! table with the first line of their error.

mod check;
mod group;
pub mod page;
mod plot;
mod summary;
mod table;
mod text;

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{self, IntoDeserializer, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

pub use check::{check_spec, ReportSpecError};
pub use plot::font_path;
pub use summary::write_summary;

/// State of one run, as its `result.json` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every stage finished; `metrics` holds the results.
    Done,
    /// A stage failed; `error` says why.
    Failed,
    /// Not started yet.
    Pending,
    /// In progress.
    Running,
    /// Stopped by a signal or a crash before it finished; will be resumed.
    Interrupted,
}

impl RunStatus {
    /// The snake_case name used in files (`done`, `failed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run as one flat row: the swept params and the resulting metrics. This is the content of
/// `runs/<run-id>/result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    /// The run's id (its directory name under `runs/`).
    pub run_id: String,
    /// Where the run stands.
    pub status: RunStatus,
    /// For a failed run, the error (possibly several lines).
    #[serde(default)]
    pub error: Option<String>,
    /// The run's seed; runs that differ only in the seed are replicates.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Swept values by key path, e.g. `"stage.align.method" = "booster"`.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Results by key, e.g. `"eval.harmful_score" = 12.5`.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

impl RunRow {
    /// Reads a `result.json`.
    pub fn read(path: &Path) -> Result<RunRow, ReportError> {
        let bytes = std::fs::read(path).map_err(|e| ReportError::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|source| ReportError::Json { path: path.to_path_buf(), source })
    }

    /// Writes the row as pretty JSON, atomically (temporary file in the same directory, then
    /// rename).
    pub fn write(&self, path: &Path) -> Result<(), ReportError> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|source| ReportError::Json { path: path.to_path_buf(), source })?;
        bytes.push(b'\n');
        crate::util::write_atomic(path, &bytes).map_err(|e| ReportError::io(path, e))
    }
}

/// Which value in a table column is the best one (printed in bold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Best {
    /// The highest mean (accuracy).
    #[default]
    Max,
    /// The lowest mean (harmful score).
    Min,
    /// Nothing in bold.
    None,
}

/// One `[[report.table]]`: a metric (or several side by side) by one param in rows and,
/// optionally, another in columns.
///
/// ```toml
/// [[report.table]]
/// rows = "stage.align.method"
/// cols = "stage.attack.mix.1.ratio"
/// value = ["eval.harmful_score", "eval.accuracy"]
/// best = ["min", "max"]
/// labels = { "stage.attack.mix.1.ratio" = "p", "eval.harmful_score" = "HS", "eval.accuracy" = "FA" }
/// average = true
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// File stem under `tables/`; default derived from the keys (`harmful_score_by_method_ratio`).
    #[serde(default)]
    pub name: Option<String>,
    /// Param key whose values are the rows, or several keys: one row per combination of their
    /// values (`["stage.align.method", "stage.attack.method"]`, labelled `sft + lisa`).
    #[serde(deserialize_with = "one_or_many")]
    pub rows: Vec<String>,
    /// Param key whose values are the columns; none: one column per metric.
    #[serde(default)]
    pub cols: Option<String>,
    /// Metric key(s); a string or a list. With several, each (column value, metric) pair is a
    /// column.
    #[serde(deserialize_with = "one_or_many")]
    pub value: Vec<String>,
    /// Caption; default describes the table.
    #[serde(default)]
    pub caption: Option<String>,
    /// Which mean is best (bold): one for all metrics, or one per metric in `value`.
    #[serde(default = "default_best", deserialize_with = "one_or_many")]
    pub best: Vec<Best>,
    /// Add an "Average" column (per metric) over the columns.
    #[serde(default)]
    pub average: bool,
    /// Digits after the decimal point.
    #[serde(default = "default_decimals")]
    pub decimals: usize,
    /// What follows the ± of a cell: `std` (default) or `stderr` (std / sqrt(n), the standard
    /// error of the mean over seeds).
    #[serde(default)]
    pub spread: Spread,
    /// Only runs whose params have these values (e.g. `{ "stage.align.lr" = 5e-4 }`).
    #[serde(default)]
    pub filter: BTreeMap<String, serde_json::Value>,
    /// Display names for param and metric keys (default: the key's last segment; several
    /// metrics side by side are abbreviated to their initials, `harmful_score` -> `HS`), and for
    /// row values (`"sft + lisa" = "Lisa"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The spread a table shows after a mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// Sample standard deviation over the replicates.
    #[default]
    Std,
    /// Standard error of the mean: std / sqrt(n).
    Stderr,
}

impl Spread {
    pub fn describe(self) -> &'static str {
        match self {
            Spread::Std => "std",
            Spread::Stderr => "standard error",
        }
    }

    pub fn of(self, std: f64, n: usize) -> f64 {
        match self {
            Spread::Std => std,
            Spread::Stderr => std / (n.max(1) as f64).sqrt(),
        }
    }
}

fn default_best() -> Vec<Best> {
    vec![Best::Max]
}

fn default_decimals() -> usize {
    2
}

/// Kind of figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlotKind {
    /// One line per series value, points, error bars.
    #[default]
    Line,
    /// Grouped bars: one group per x value, one bar per series value.
    Bar,
}

/// One `[[report.plot]]`: a metric against a param, one line (or bar) per value of another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlotSpec {
    /// File stem under `figures/`; default derived from the keys (`harmful_score_vs_ratio_by_method`).
    #[serde(default)]
    pub name: Option<String>,
    /// `line` (default) or `bar`.
    #[serde(default)]
    pub kind: PlotKind,
    /// Param key on the x axis (numeric values: a numeric axis; otherwise categories).
    pub x: String,
    /// Metric key on the y axis.
    pub y: String,
    /// Param key whose values are the lines (bars within a group), or several keys: one line per
    /// combination of their values.
    #[serde(default, deserialize_with = "one_or_many")]
    pub series: Vec<String>,
    /// Display names of series values (`"sft + lisa" = "Lisa"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Title above the plot; default none (papers caption figures themselves).
    #[serde(default)]
    pub title: Option<String>,
    /// X axis label; default the x key.
    #[serde(default)]
    pub x_label: Option<String>,
    /// Y axis label; default the y key.
    #[serde(default)]
    pub y_label: Option<String>,
    /// Only runs whose params have these values.
    #[serde(default)]
    pub filter: BTreeMap<String, serde_json::Value>,
}

/// The `[report]` section of a spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// `[[report.table]]` entries.
    #[serde(default)]
    pub table: Vec<TableSpec>,
    /// `[[report.plot]]` entries.
    #[serde(default)]
    pub plot: Vec<PlotSpec>,
}

/// Accepts `"x"` or `["x", "y"]`.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            T::deserialize(v.into_deserializer()).map(|t| vec![t])
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Vec<T>, E> {
            T::deserialize(v.into_deserializer()).map(|t| vec![t])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }
    }
    d.deserialize_any(V(PhantomData))
}

/// Errors from reading results or writing the report. Each names the file, or the table/plot
/// and the key.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: malformed JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {source}")]
    Polars { path: PathBuf, source: polars::error::PolarsError },
    /// A key in a table or plot spec that no run has.
    #[error("{context} key `{key}` is not a {kind} of any run{}; available {kind}s: {}",
        closest.as_ref().map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default(),
        if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    UnknownKey {
        /// The table or plot and its field: ``table `name`: rows``.
        context: String,
        key: String,
        /// `param` or `metric`.
        kind: &'static str,
        available: Vec<String>,
        closest: Option<String>,
    },
    /// A table or plot spec that cannot be honoured as written.
    #[error("{what}: {msg}")]
    Spec { what: String, msg: String },
    /// A line of a stage's records file that is not JSON.
    #[error("{path}: line {line}: {msg}")]
    Records { path: PathBuf, line: usize, msg: String },
    /// Drawing a figure failed.
    #[error("{path}: drawing failed: {msg}")]
    Plot { path: PathBuf, msg: String },
}

impl ReportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ReportError::Io { path: path.to_path_buf(), source }
    }
}

/// Reads every `runs/*/result.json` under a results directory, sorted by run id. Run
/// directories without a `result.json` (runs not finished, or never started) are skipped; a
/// malformed file is an error naming it.
pub fn collect_rows(results_dir: &Path) -> Result<Vec<RunRow>, ReportError> {
    let runs = results_dir.join("runs");
    let entries = std::fs::read_dir(&runs).map_err(|e| ReportError::io(&runs, e))?;
    let mut rows = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ReportError::io(&runs, e))?;
        let path = entry.path().join("result.json");
        if !path.is_file() {
            continue;
        }
        rows.push(RunRow::read(&path)?);
    }
    rows.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    Ok(rows)
}

/// Writes every table (`tables/<name>.md`, `.tex`, `.csv`) and figure (`figures/<name>.png`,
/// `.svg`) of `spec` into `dir`, and returns the paths written. Only `done` runs enter the
/// numbers; failed ones are listed under the tables. Figures are skipped, with a warning, when
/// no TrueType font can be found (see [`font_path`]); tables are still written.
pub fn write_report(dir: &Path, rows: &[RunRow], spec: &ReportSpec) -> Result<Vec<PathBuf>, ReportError> {
    let mut written = Vec::new();
    if rows.is_empty() && !(spec.table.is_empty() && spec.plot.is_empty()) {
        tracing::warn!("no runs have a result yet; no tables or figures written");
        return Ok(written);
    }
    for (name, t) in table_names(spec).into_iter().zip(&spec.table) {
        written.extend(table::write_table(&dir.join("tables"), &name, rows, t)?);
    }
    for (name, p) in plot_names(spec).into_iter().zip(&spec.plot) {
        written.extend(plot::write_plot(&dir.join("figures"), &name, rows, p)?);
    }
    Ok(written)
}

/// The file stem of each table of `spec` (`tables/<stem>.md`), in order.
pub(crate) fn table_names(spec: &ReportSpec) -> Vec<String> {
    let mut names = NameSet::default();
    spec.table.iter().enumerate().map(|(i, t)| names.claim(t.name.clone().unwrap_or_else(|| table::default_name(t)), i)).collect()
}

/// The file stem of each figure of `spec` (`figures/<stem>.svg`), in order.
pub(crate) fn plot_names(spec: &ReportSpec) -> Vec<String> {
    let mut names = NameSet::default();
    spec.plot.iter().enumerate().map(|(i, p)| names.claim(p.name.clone().unwrap_or_else(|| plot::default_name(p)), i)).collect()
}

/// File stems in use, so two tables without names do not overwrite each other.
#[derive(Default)]
struct NameSet(std::collections::HashSet<String>);

impl NameSet {
    fn claim(&mut self, name: String, index: usize) -> String {
        let mut name = sanitize_name(&name);
        if name.is_empty() {
            name = format!("{}", index + 1);
        }
        let mut candidate = name.clone();
        let mut k = 2;
        while !self.0.insert(candidate.clone()) {
            candidate = format!("{name}_{k}");
            k += 1;
        }
        candidate
    }
}

/// Keeps a name usable as a file stem on every OS.
fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect::<String>()
        .trim_matches('.')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_accepts_one_or_many_values() {
        let t: TableSpec = serde_json::from_str(r#"{"rows": "stage.align.method", "value": "eval.harmful_score"}"#).unwrap();
        assert_eq!(t.value, vec!["eval.harmful_score"]);
        assert_eq!(t.best, vec![Best::Max]);
        assert_eq!(t.decimals, 2);
        assert!(!t.average);
        let t: TableSpec =
            serde_json::from_str(r#"{"rows": "a", "value": ["m1", "m2"], "best": ["min", "max"], "average": true}"#).unwrap();
        assert_eq!(t.value, vec!["m1", "m2"]);
        assert_eq!(t.best, vec![Best::Min, Best::Max]);
        let e = serde_json::from_str::<TableSpec>(r#"{"rows": "a", "value": "m", "bset": "min"}"#).unwrap_err();
        assert!(e.to_string().contains("bset"), "{e}");
        let e = serde_json::from_str::<TableSpec>(r#"{"rows": "a", "value": "m", "best": "mx"}"#).unwrap_err();
        assert!(e.to_string().contains("mx"), "{e}");
        let r: ReportSpec = serde_json::from_str(r#"{"plot": [{"kind": "bar", "x": "a", "y": "m", "series": "b"}]}"#).unwrap();
        assert_eq!(r.plot[0].kind, PlotKind::Bar);
        assert!(r.table.is_empty());
    }

    #[test]
    fn spec_from_toml() {
        #[derive(Deserialize)]
        struct Doc {
            report: ReportSpec,
        }
        let doc: Doc = toml::from_str(
            r#"
[[report.table]]
rows = "stage.align.method"
cols = "stage.attack.mix.1.ratio"
value = "eval.harmful_score"
best = "min"

[[report.plot]]
kind = "line"
x = "stage.attack.mix.1.ratio"
y = "eval.harmful_score"
series = "stage.align.method"
"#,
        )
        .unwrap();
        assert_eq!(doc.report.table[0].best, vec![Best::Min]);
        assert_eq!(doc.report.plot[0].series, ["stage.align.method"]);
    }

    #[test]
    fn run_row_round_trip_and_status_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runs/r1/result.json");
        let row = RunRow {
            run_id: "r1".into(),
            status: RunStatus::Interrupted,
            error: None,
            seed: Some(43),
            params: [("stage.align.method".to_string(), serde_json::json!("sft"))].into(),
            metrics: [("eval.harmful_score".to_string(), 12.5)].into(),
        };
        row.write(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"interrupted\""), "{text}");
        assert_eq!(RunRow::read(&p).unwrap(), row);
    }

    #[test]
    fn collect_rows_sorts_and_names_malformed_file() {
        let dir = tempfile::tempdir().unwrap();
        for id in ["b", "a", "c"] {
            let row = RunRow {
                run_id: id.into(),
                status: RunStatus::Done,
                error: None,
                seed: None,
                params: BTreeMap::new(),
                metrics: BTreeMap::new(),
            };
            row.write(&dir.path().join("runs").join(id).join("result.json")).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("runs/pending_run")).unwrap();
        let rows = collect_rows(dir.path()).unwrap();
        let ids: Vec<_> = rows.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);

        let bad = dir.path().join("runs/d/result.json");
        std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
        std::fs::write(&bad, "{\"run_id\": \"d\", \"status\": \"done\",").unwrap();
        let e = collect_rows(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&bad.display().to_string()), "{e}");
        std::fs::write(&bad, r#"{"run_id": "d", "status": "finished"}"#).unwrap();
        let e = collect_rows(dir.path()).unwrap_err().to_string();
        assert!(e.contains("runs/d/result.json") && e.contains("finished"), "{e}");

        let e = collect_rows(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope/runs"), "{e}");
    }

    /// The whole report for a Booster-like sweep (4 methods x 5 ratios x 2 seeds, one run
    /// failed). With `RUNNER_REPORT_EXAMPLE_DIR` set, the outputs are also written there, to
    /// look at.
    #[test]
    fn write_report_end_to_end() {
        let mut rows = plot::tests::example_rows();
        rows[7].status = RunStatus::Failed;
        rows[7].metrics.clear();
        rows[7].error = Some("stage attack: CUDA out of memory\n  at train step 12".into());
        let spec: ReportSpec = toml::from_str(
            r#"
[[table]]
rows = "stage.align.method"
cols = "stage.attack.mix.1.ratio"
value = "eval.harmful_score"
best = "min"
average = true

[[table]]
name = "booster_table1"
rows = "stage.align.method"
cols = "stage.attack.mix.1.ratio"
value = ["eval.harmful_score", "eval.accuracy"]
best = ["min", "max"]
labels = { "stage.attack.mix.1.ratio" = "p", "eval.accuracy" = "FA" }
decimals = 1

[[plot]]
x = "stage.attack.mix.1.ratio"
y = "eval.harmful_score"
series = "stage.align.method"
x_label = "harmful ratio p"
y_label = "harmful score (%)"

[[plot]]
kind = "bar"
x = "stage.align.method"
y = "eval.harmful_score"
series = "stage.attack.mix.1.ratio"
y_label = "harmful score (%)"
x_label = "alignment method"

[[plot]]
kind = "bar"
x = "stage.align.method"
y = "eval.accuracy"
filter = { "stage.attack.mix.1.ratio" = 0.1 }
y_label = "fine-tune accuracy (%)"
"#,
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut dirs = vec![tmp.path().to_path_buf()];
        if let Some(d) = std::env::var_os("RUNNER_REPORT_EXAMPLE_DIR") {
            dirs.push(PathBuf::from(d));
        }
        for dir in dirs {
            write_summary(&dir, &rows).unwrap();
            let written = write_report(&dir, &rows, &spec).unwrap();
            let rel: Vec<String> = written.iter().map(|p| p.strip_prefix(&dir).unwrap().display().to_string()).collect();
            let mut expected = vec![
                "tables/harmful_score_by_method_ratio.md",
                "tables/harmful_score_by_method_ratio.tex",
                "tables/harmful_score_by_method_ratio.csv",
                "tables/booster_table1.md",
                "tables/booster_table1.tex",
                "tables/booster_table1.csv",
            ];
            if font_path().is_some() {
                expected.extend([
                    "figures/harmful_score_vs_ratio_by_method.png",
                    "figures/harmful_score_vs_ratio_by_method.svg",
                    "figures/harmful_score_vs_method_by_ratio.png",
                    "figures/harmful_score_vs_method_by_ratio.svg",
                    "figures/accuracy_vs_method.png",
                    "figures/accuracy_vs_method.svg",
                ]);
            }
            assert_eq!(rel, expected);
            let md = std::fs::read_to_string(dir.join("tables/booster_table1.md")).unwrap();
            let header: Vec<&str> = md.lines().next().unwrap().split('|').map(str::trim).collect();
            assert_eq!(header[1..4], ["method", "HS p=0", "FA p=0"], "{md}");
            assert_eq!(header[header.len() - 3..], ["HS p=0.2", "FA p=0.2", ""], "{md}");
            let sft = md.lines().find(|l| l.starts_with("| sft")).unwrap();
            assert!(sft.contains(" 44.5 (n=1) | **92.6** (n=1) |"), "{md}");
            assert!(md.contains("r007 (method=sft, p=0.15, seed=43): stage attack: CUDA out of memory"), "{md}");
            assert!(dir.join("summary.parquet").is_file() && dir.join("summary.csv").is_file());
        }
    }

    #[test]
    fn names_are_unique_and_safe() {
        let mut n = NameSet::default();
        assert_eq!(n.claim("a b/c".into(), 0), "a_b_c");
        assert_eq!(n.claim("a b/c".into(), 1), "a_b_c_2");
        assert_eq!(n.claim("..".into(), 2), "3");
    }
}
