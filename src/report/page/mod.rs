//! `index.html`: one static page per experiment that opens from the file system (no server, no
//! network) and from a copied results folder. It shows the resolved spec, the sweep, every table
//! (built by the same code, from the same rows, as `tables/*.md|csv`), every figure (the files
//! under `figures/`), run and stage status with failure reasons, durations and compute, and a
//! browser over the per-sample records of every eval and generate stage.
//!
//! The page is the HTML shell, style and script under `assets/page/` (compiled into the binary),
//! plus the data: the overview inline in `index.html`, each stage's records in
//! `page/records/<stage-id>.js`, loaded on demand (see [`records`]).

pub mod records;
mod script;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use records::{RecordsSummary, Sample};
pub use script::js_value;

use super::table::{self, Cell};
use super::{plot_names, table_names, ReportError, ReportSpec, RunRow};
use crate::store::{ProgressSnapshot, StageStatus};

const SHELL: &str = include_str!("../../../assets/page/index.html");
const STYLE: &str = include_str!("../../../assets/page/style.css");
const APP: &str = include_str!("../../../assets/page/app.js");

/// The page's file name in the results directory.
pub const PAGE_FILE: &str = "index.html";

/// One run: its row (as `result.json` has it) and its stages, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PageRun {
    #[serde(flatten)]
    pub row: RunRow,
    pub stages: Vec<String>,
}

/// One stage of the plan with its current state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PageStage {
    pub id: String,
    /// The stage's name in the spec (`align`, `eval`).
    pub name: String,
    /// `train`, `generate` or `eval`.
    pub kind: String,
    pub method: Option<String>,
    /// The runs that share the stage.
    pub runs: Vec<String>,
    pub depends_on: Vec<String>,
    pub status: StageStatus,
    pub progress: Option<ProgressSnapshot>,
    /// `metrics.json` of a finished stage.
    pub metrics: BTreeMap<String, f64>,
    /// The stage's per-sample records (`outputs.jsonl`, `dataset.jsonl`), when it wrote them.
    #[serde(skip)]
    pub records: Option<PathBuf>,
}

/// What the page is made from.
#[derive(Debug, Clone)]
pub struct PageInput {
    pub experiment: String,
    /// The spec as run (`spec.toml`).
    pub spec_toml: String,
    pub runs: Vec<PageRun>,
    pub stages: Vec<PageStage>,
    pub report: ReportSpec,
}

/// Everything the page shows except the records (inline in `index.html` as `RUNNER_PAGE`).
#[derive(Debug, Clone, Serialize)]
pub struct PageData {
    pub experiment: String,
    /// Unix seconds.
    pub generated_at: u64,
    pub spec_toml: String,
    /// Every swept key with its values, in the order the runs take them.
    pub sweep: Vec<SweepKey>,
    pub runs: Vec<PageRun>,
    pub stages: Vec<StageView>,
    pub tables: Vec<TableView>,
    pub figures: Vec<FigureView>,
    /// What could not be shown (a table whose metric no run has yet, a malformed records file).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepKey {
    pub key: String,
    pub values: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageView {
    #[serde(flatten)]
    pub stage: PageStage,
    /// From start to finish, or to now while it runs.
    pub duration_secs: Option<u64>,
    /// The stage's `compute_*` metrics (tokens through forward and backward passes).
    pub compute: BTreeMap<String, f64>,
    pub records: Option<RecordsSummary>,
}

/// A table as `tables/<name>.md` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableView {
    pub name: String,
    pub caption: String,
    pub row_header: String,
    pub columns: Vec<String>,
    pub rows: Vec<RowView>,
    /// Failed runs, one line each (as listed under the markdown table).
    pub failed: Vec<String>,
    pub notes: Vec<String>,
    /// The table's files, relative to the page.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowView {
    pub label: String,
    pub cells: Vec<CellView>,
}

/// A cell: the markdown's text, whether it is bold, and the csv's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellView {
    pub text: String,
    pub bold: bool,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub n: Option<usize>,
}

/// A figure's files, relative to the page (those that exist).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FigureView {
    pub name: String,
    pub svg: Option<String>,
    pub png: Option<String>,
}

/// Builds the page's data; writes each stage's records script under `root` on the way (only for
/// stages whose records changed since the last time).
pub fn page_data(root: &Path, input: &PageInput) -> PageData {
    let now = crate::store::now_unix();
    let mut problems = Vec::new();
    let stages = input
        .stages
        .iter()
        .map(|s| {
            let records = s.records.as_deref().filter(|p| p.is_file()).and_then(|p| match records::write_stage_records(root, &s.id, p) {
                Ok(r) => Some(r),
                Err(e) => {
                    problems.push(format!("records of stage {}: {e}", s.id));
                    None
                }
            });
            let duration_secs = s.status.started_at.map(|start| s.status.finished_at.unwrap_or(now).saturating_sub(start));
            let compute = s.metrics.iter().filter(|(k, _)| k.starts_with("compute_")).map(|(k, v)| (k.clone(), *v)).collect();
            StageView { stage: s.clone(), duration_secs, compute, records }
        })
        .collect();

    let rows: Vec<RunRow> = input.runs.iter().map(|r| r.row.clone()).collect();
    let mut tables = Vec::new();
    let mut figures = Vec::new();
    if rows.is_empty() {
        if !(input.report.table.is_empty() && input.report.plot.is_empty()) {
            problems.push("no run has a result yet: no tables or figures".into());
        }
    } else {
        for (name, spec) in table_names(&input.report).into_iter().zip(&input.report.table) {
            match table::build(&name, &rows, spec) {
                Ok(t) => tables.push(table_view(root, &name, &t)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        for name in plot_names(&input.report) {
            let file = |ext: &str| {
                let rel = format!("figures/{name}.{ext}");
                root.join(&rel).is_file().then_some(rel)
            };
            let (svg, png) = (file("svg"), file("png"));
            if svg.is_none() && png.is_none() {
                problems.push(format!("figure `{name}`: not drawn yet (figures/{name}.svg is missing)"));
            }
            figures.push(FigureView { name, svg, png });
        }
    }

    PageData {
        experiment: input.experiment.clone(),
        generated_at: now,
        spec_toml: input.spec_toml.clone(),
        sweep: sweep(&input.runs),
        runs: input.runs.clone(),
        stages,
        tables,
        figures,
        problems,
    }
}

fn table_view(root: &Path, name: &str, t: &table::Table) -> TableView {
    let rows = t
        .rows
        .iter()
        .map(|r| RowView {
            label: r.label.clone(),
            cells: (0..t.columns.len())
                .map(|j| {
                    let (mean, std, n) = match r.cells[j] {
                        Cell::Missing => (None, None, None),
                        Cell::Avg(m) => (Some(m), None, None),
                        Cell::Stats(s) => (Some(s.mean), s.std, Some(s.n)),
                    };
                    CellView { text: t.plain_cell(r, j), bold: r.bold[j], mean, std, n }
                })
                .collect(),
        })
        .collect();
    let files = ["md", "csv", "tex"].iter().map(|ext| format!("tables/{name}.{ext}")).filter(|rel| root.join(rel).is_file()).collect();
    TableView {
        name: name.to_string(),
        caption: t.caption.clone(),
        row_header: t.row_header.clone(),
        columns: t.columns.iter().map(|c| c.header.clone()).collect(),
        rows,
        failed: t.failed.clone(),
        notes: t.notes(),
        files,
    }
}

/// The swept keys: every param key of the runs with its distinct values, in run order.
fn sweep(runs: &[PageRun]) -> Vec<SweepKey> {
    let mut keys: Vec<SweepKey> = Vec::new();
    for r in runs {
        for (k, v) in &r.row.params {
            let i = match keys.iter().position(|s| s.key == *k) {
                Some(i) => i,
                None => {
                    keys.push(SweepKey { key: k.clone(), values: Vec::new() });
                    keys.len() - 1
                }
            };
            if !keys[i].values.contains(v) {
                keys[i].values.push(v.clone());
            }
        }
    }
    keys.sort_by(|a, b| a.key.cmp(&b.key));
    keys
}

/// The page's HTML: the shell with the style, the data and the script inline.
pub fn render(data: &PageData) -> Result<String, serde_json::Error> {
    let data_js = js_value(data)?;
    let mut out = String::with_capacity(SHELL.len() + STYLE.len() + APP.len() + data_js.len());
    // One pass over the shell, so no inserted text is searched for markers again.
    let mut rest = SHELL;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        match &after[..end] {
            "title" => out.push_str(&html_escape(&data.experiment)),
            "style" => out.push_str(STYLE),
            "data" => out.push_str(&data_js),
            "app" => out.push_str(APP),
            other => {
                out.push_str("{{");
                out.push_str(other);
                out.push_str("}}");
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Writes `index.html` (and the records scripts it needs) into the results directory `root`;
/// returns the page's path.
pub fn write_page(root: &Path, input: &PageInput) -> Result<PathBuf, ReportError> {
    let data = page_data(root, input);
    let path = root.join(PAGE_FILE);
    let html = render(&data).map_err(|source| ReportError::Json { path: path.clone(), source })?;
    crate::util::write_atomic(&path, html.as_bytes()).map_err(|e| ReportError::io(&path, e))?;
    Ok(path)
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{write_report, write_summary, RunStatus};
    use crate::store::StageState;

    fn report_spec() -> ReportSpec {
        toml::from_str(
            r#"
[[table]]
name = "hs"
rows = "stage.align.method"
cols = "stage.attack.mix.1.ratio"
value = ["eval.harmful_score", "eval.accuracy"]
best = ["min", "max"]
average = true

[[table]]
name = "later"
rows = "stage.align.method"
value = "eval.not_yet"

[[plot]]
x = "stage.attack.mix.1.ratio"
y = "eval.harmful_score"
series = "stage.align.method"
"#,
        )
        .unwrap()
    }

    fn stage(id: &str, kind: &str, state: StageState, records: Option<PathBuf>) -> PageStage {
        let mut status = StageStatus::pending();
        status.state = state;
        status.started_at = Some(1000);
        status.finished_at = (state != StageState::Running).then_some(1125);
        status.reason = (state == StageState::Failed).then(|| "out of memory\nat step 3".to_string());
        PageStage {
            id: id.into(),
            name: id.split('-').next().unwrap().into(),
            kind: kind.into(),
            method: Some("sft".into()),
            runs: vec!["r000".into()],
            depends_on: vec![],
            status,
            progress: None,
            metrics: [("compute_forward_tokens".to_string(), 512.0), ("train_loss".to_string(), 0.5)].into(),
            records,
        }
    }

    /// A results directory with the Booster-like example report written, one failed run, and
    /// an eval stage with two records.
    fn example(dir: &Path) -> PageInput {
        let mut rows = crate::report::plot::tests::example_rows();
        rows[7].status = RunStatus::Failed;
        rows[7].metrics.clear();
        rows[7].error = Some("stage attack: CUDA out of memory".into());
        let spec = report_spec();
        write_summary(dir, &rows).unwrap();
        let mut plotted = spec.clone();
        plotted.table.retain(|t| t.name.as_deref() != Some("later"));
        write_report(dir, &rows, &plotted).unwrap();
        let outputs = dir.join("stages/eval-1/outputs.jsonl");
        std::fs::create_dir_all(outputs.parent().unwrap()).unwrap();
        std::fs::write(
            &outputs,
            "{\"metric\":\"harmful_score\",\"data\":\"bt\",\"record\":{\"prompt\":\"a\",\"response\":\"b\",\"harmful\":true,\"score\":1.0}}\n\
             {\"metric\":\"harmful_score\",\"data\":\"bt\",\"record\":{\"prompt\":\"c\",\"response\":\"d\",\"harmful\":false,\"score\":0.0}}\n",
        )
        .unwrap();
        PageInput {
            experiment: "booster <demo>".into(),
            spec_toml: "[experiment]\nname = \"x</script>\"\n".into(),
            runs: rows.into_iter().map(|row| PageRun { row, stages: vec!["align-1".into(), "eval-1".into()] }).collect(),
            stages: vec![
                stage("align-1", "train", StageState::Done, None),
                stage("attack-2", "train", StageState::Failed, None),
                stage("eval-1", "eval", StageState::Done, Some(outputs)),
            ],
            report: spec,
        }
    }

    /// Cells of a markdown pipe table, by row label (bold markers removed).
    fn markdown_cells(md: &str) -> Vec<Vec<String>> {
        md.lines()
            .take_while(|l| l.starts_with('|'))
            .filter(|l| !l.starts_with("| :"))
            .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().replace("**", "")).collect())
            .collect()
    }

    #[test]
    fn tables_show_the_numbers_of_the_md_and_csv_files_and_the_summary() {
        let dir = tempfile::tempdir().unwrap();
        let input = example(dir.path());
        let data = page_data(dir.path(), &input);
        let t = &data.tables[0];
        assert_eq!(t.name, "hs");
        assert_eq!(t.files, ["tables/hs.md", "tables/hs.csv", "tables/hs.tex"]);

        let md = markdown_cells(&std::fs::read_to_string(dir.path().join("tables/hs.md")).unwrap());
        assert_eq!(md[0][1..], t.columns[..]);
        assert_eq!(md.len(), t.rows.len() + 1);
        let csv = std::fs::read_to_string(dir.path().join("tables/hs.csv")).unwrap();
        let csv: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
        for (i, row) in t.rows.iter().enumerate() {
            assert_eq!(md[i + 1][0], row.label);
            assert_eq!(csv[i][0], row.label);
            for (j, cell) in row.cells.iter().enumerate() {
                assert_eq!(md[i + 1][j + 1], cell.text, "row {} col {j}", row.label);
                let num = |s: &str| (!s.is_empty()).then(|| s.parse::<f64>().unwrap());
                assert_eq!(num(csv[i][1 + 3 * j]), cell.mean, "row {} col {j}", row.label);
                assert_eq!(num(csv[i][2 + 3 * j]), cell.std);
                assert_eq!(num(csv[i][3 + 3 * j]).map(|n| n as usize), cell.n);
            }
        }
        // Bold where the markdown has it.
        let raw_md = std::fs::read_to_string(dir.path().join("tables/hs.md")).unwrap();
        let bold_cells = t.rows.iter().flat_map(|r| &r.cells).filter(|c| c.bold).count();
        assert_eq!(raw_md.matches("**").count(), 2 * bold_cells);
        assert!(bold_cells > 0);
        assert_eq!(t.failed.len(), 1);
        assert!(t.failed[0].starts_with("r007"), "{:?}", t.failed);

        // One cell against the summary itself: sft at p = 0.1, mean over its done runs.
        let summary = std::fs::read_to_string(dir.path().join("summary.csv")).unwrap();
        let head: Vec<&str> = summary.lines().next().unwrap().split(',').collect();
        let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
        let values: Vec<f64> = summary
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f[col("status")] == "done" && f[col("stage.align.method")] == "sft" && f[col("stage.attack.mix.1.ratio")] == "0.1")
            .map(|f| f[col("eval.harmful_score")].parse().unwrap())
            .collect();
        assert_eq!(values.len(), 2);
        let mean = values.iter().sum::<f64>() / 2.0;
        let j = t.columns.iter().position(|c| c == "HS ratio=0.1").unwrap();
        let sft = t.rows.iter().find(|r| r.label == "sft").unwrap();
        assert!((sft.cells[j].mean.unwrap() - mean).abs() < 1e-12);
        assert!(sft.cells[j].text.starts_with(&format!("{mean:.2} ± ")), "{}", sft.cells[j].text);
    }

    #[test]
    fn stages_runs_figures_and_problems() {
        let dir = tempfile::tempdir().unwrap();
        let input = example(dir.path());
        let data = page_data(dir.path(), &input);
        // The table whose metric no run has is not shown, and says why.
        assert_eq!(data.tables.len(), 1);
        assert!(data.problems.iter().any(|p| p.contains("later") && p.contains("not_yet")), "{:?}", data.problems);
        if crate::report::font_path().is_some() {
            assert_eq!(data.figures[0].svg.as_deref(), Some("figures/harmful_score_vs_ratio_by_method.svg"));
        }
        let (align, attack, eval) = (&data.stages[0], &data.stages[1], &data.stages[2]);
        assert_eq!(align.duration_secs, Some(125));
        assert_eq!(align.compute, BTreeMap::from([("compute_forward_tokens".to_string(), 512.0)]));
        assert!(align.records.is_none());
        assert_eq!(attack.stage.status.reason.as_deref(), Some("out of memory\nat step 3"));
        let rec = eval.records.as_ref().unwrap();
        assert_eq!((rec.count, rec.verdicts.clone()), (2, vec!["harmful".to_string(), "harmless".to_string()]));
        assert!(dir.path().join(&rec.file).is_file());
        let keys: Vec<&str> = data.sweep.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["stage.align.method", "stage.attack.mix.1.ratio"]);
        assert_eq!(data.sweep[1].values.len(), 5);
        assert_eq!(data.runs.len(), 40);
    }

    #[test]
    fn page_embeds_style_data_and_script_safely() {
        let dir = tempfile::tempdir().unwrap();
        let input = example(dir.path());
        let path = write_page(dir.path(), &input).unwrap();
        assert_eq!(path, dir.path().join("index.html"));
        let html = std::fs::read_to_string(&path).unwrap();
        assert!(html.contains("<title>booster &lt;demo&gt; · runner results</title>"), "{}", &html[..400]);
        assert!(!html.contains("{{"), "a marker was left in the page");
        // Two script elements end (the data, the app); the data's `</script>` does not.
        assert_eq!(html.matches("</script>").count(), 2);
        let start = html.find("window.RUNNER_PAGE = ").unwrap() + "window.RUNNER_PAGE = ".len();
        let end = start + html[start..].find(";\n</script>").unwrap();
        let back: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(back["spec_toml"], "[experiment]\nname = \"x</script>\"\n");
        assert_eq!(back["tables"][0]["rows"][0]["cells"].as_array().unwrap().len(), back["tables"][0]["columns"].as_array().unwrap().len());
        assert!(html.contains("window.runnerRecords = function"));
        assert!(!APP.contains("</script") && !STYLE.contains("</style"));
    }

    #[test]
    fn no_runs_yet_is_a_page_without_tables() {
        let dir = tempfile::tempdir().unwrap();
        let input = PageInput { experiment: "e".into(), spec_toml: String::new(), runs: vec![], stages: vec![], report: report_spec() };
        let data = page_data(dir.path(), &input);
        assert!(data.tables.is_empty() && data.figures.is_empty());
        assert_eq!(data.problems, ["no run has a result yet: no tables or figures"]);
        write_page(dir.path(), &input).unwrap();
    }
}
