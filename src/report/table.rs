//! Tables: `tables/<name>.md` (pipe table), `.tex` (booktabs) and `.csv` (numbers).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::group::{
    apply_filter, check_metric, check_param, extras_canon, extras_label, ordered_levels, short_key, varying_within, Level, Stats,
};
use super::{Best, ReportError, RunRow, RunStatus, Spread, TableSpec};

/// Default file stem: `harmful_score_by_method_ratio`.
pub(crate) fn default_name(t: &TableSpec) -> String {
    let metrics: Vec<&str> = t.value.iter().map(|m| short_key(m)).collect();
    let rows: Vec<&str> = t.rows.iter().map(|k| short_key(k)).collect();
    let mut s = format!("{}_by_{}", metrics.join("_"), rows.join("_"));
    if let Some(c) = &t.cols {
        s.push('_');
        s.push_str(short_key(c));
    }
    s
}

/// Builds the table and writes its three files; returns their paths.
pub(crate) fn write_table(dir: &Path, name: &str, rows: &[RunRow], spec: &TableSpec) -> Result<Vec<PathBuf>, ReportError> {
    let table = build(name, rows, spec)?;
    let mut out = Vec::new();
    for (ext, text) in [("md", table.markdown()), ("tex", table.latex(name)), ("csv", table.csv())] {
        let path = dir.join(format!("{name}.{ext}"));
        crate::util::write_atomic(&path, text.as_bytes()).map_err(|e| ReportError::io(&path, e))?;
        out.push(path);
    }
    Ok(out)
}

/// One cell of the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cell {
    /// No finished run (failed, not run yet, or the metric is missing).
    Missing,
    /// Mean ± std over the finished replicates.
    Stats(Stats),
    /// The average of a row's means over the columns.
    Avg(f64),
}

impl Cell {
    fn mean(&self) -> Option<f64> {
        match *self {
            Cell::Missing => None,
            Cell::Stats(s) => Some(s.mean),
            Cell::Avg(m) => Some(m),
        }
    }
}

/// One data column: a (column value, metric) pair, or a metric's average.
#[derive(Debug, Clone)]
pub(crate) struct ColDef {
    /// Flat header (markdown, csv): `HS p=0.1`.
    pub header: String,
    /// Index into `Table::groups`.
    pub group: usize,
    /// Index into `Table::metrics`.
    pub metric: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct TableRow {
    pub label: String,
    pub cells: Vec<Cell>,
    pub bold: Vec<bool>,
}

/// A table, built and ready to render.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub caption: String,
    pub row_header: String,
    /// Column groups: the column key's values (plus `Average`), or one unnamed group.
    pub groups: Vec<String>,
    /// Display names of the metrics.
    pub metrics: Vec<String>,
    pub columns: Vec<ColDef>,
    pub rows: Vec<TableRow>,
    pub decimals: usize,
    pub spread: Spread,
    /// The usual replicate count; cells with another count say so.
    pub common_n: Option<usize>,
    /// Failed runs, one line each.
    pub failed: Vec<String>,
    /// Runs that have not finished (pending, running, interrupted), by status.
    pub unfinished: Vec<(RunStatus, usize)>,
}

pub(crate) fn build(name: &str, all: &[RunRow], spec: &TableSpec) -> Result<Table, ReportError> {
    let what = format!("table `{name}`");
    if spec.value.is_empty() {
        return Err(ReportError::Spec { what, msg: "`value` names no metric".into() });
    }
    if spec.best.len() != 1 && spec.best.len() != spec.value.len() {
        return Err(ReportError::Spec {
            what,
            msg: format!("`best` has {} entries; give one, or one per metric in `value` ({})", spec.best.len(), spec.value.len()),
        });
    }
    if spec.rows.is_empty() {
        return Err(ReportError::Spec { what, msg: "`rows` names no param".into() });
    }
    for r in &spec.rows {
        check_param(&what, "rows", r, all)?;
    }
    if let Some(c) = &spec.cols {
        check_param(&what, "cols", c, all)?;
    }
    for m in &spec.value {
        check_metric(&what, "value", m, all)?;
    }
    let runs = apply_filter(&what, all, &spec.filter)?;

    let mut group_keys: Vec<&str> = spec.rows.iter().map(String::as_str).collect();
    group_keys.extend(spec.cols.as_deref());
    let extras = varying_within(&runs, &group_keys);
    let label_of = |key: &str| spec.labels.get(key).cloned().unwrap_or_else(|| short_key(key).into());
    // Several keys: a label for the keys joined by " + " names the column, else their labels joined.
    let row_header = spec
        .labels
        .get(&spec.rows.join(" + "))
        .cloned()
        .unwrap_or_else(|| spec.rows.iter().map(|k| label_of(k)).collect::<Vec<_>>().join(" + "));
    let row_level = |r: &RunRow| Level::joint(r, &spec.rows);

    // Rows: each value of the rows key, split further by any other param that varies within
    // a cell (so a cell never averages different configurations).
    let mut row_ids: Vec<(String, String, String)> = Vec::new(); // (level canon, extras canon, label)
    for level in ordered_levels(runs.iter().map(|r| row_level(r))) {
        for r in runs.iter().filter(|r| row_level(r).canon == level.canon) {
            let ec = extras_canon(r, &extras);
            if !row_ids.iter().any(|(c, e, _)| *c == level.canon && *e == ec) {
                let el = extras_label(r, &extras);
                let value = level.display(&spec.labels);
                let label = if el.is_empty() { value } else { format!("{value} ({el})") };
                row_ids.push((level.canon.clone(), ec, label));
            }
        }
    }
    let col_levels: Vec<Option<Level>> = match &spec.cols {
        Some(c) => ordered_levels(runs.iter().map(|r| Level::param(r, c))).into_iter().map(Some).collect(),
        None => vec![None],
    };

    let metrics = metric_names(spec);
    let multi = metrics.len() > 1;
    let col_name = spec.cols.as_deref().map(label_of);
    let mut groups: Vec<String> = col_levels
        .iter()
        .map(|l| match (l, &col_name) {
            (Some(l), Some(n)) => format!("{n}={}", l.label),
            _ => String::new(),
        })
        .collect();
    let mut columns = Vec::new();
    for (g, gname) in groups.iter().enumerate() {
        for (m, mname) in metrics.iter().enumerate() {
            let header = match (gname.is_empty(), multi) {
                (true, _) => mname.clone(),
                (false, false) => gname.clone(),
                (false, true) => format!("{mname} {gname}"),
            };
            columns.push(ColDef { header, group: g, metric: m });
        }
    }
    let average = spec.average && spec.cols.is_some();
    if average {
        groups.push("Average".into());
        for (m, mname) in metrics.iter().enumerate() {
            let header = if multi { format!("{mname} Average") } else { "Average".into() };
            columns.push(ColDef { header, group: groups.len() - 1, metric: m });
        }
    }

    let mut rows = Vec::new();
    for (rc, ec, label) in &row_ids {
        let in_row: Vec<&RunRow> = runs.iter().copied().filter(|r| row_level(r).canon == *rc && extras_canon(r, &extras) == *ec).collect();
        let mut cells = Vec::with_capacity(columns.len());
        for col in &columns {
            if col.group >= col_levels.len() {
                // Average over this row's cells for the metric, only when none is missing.
                let means: Vec<Option<f64>> = cells
                    .iter()
                    .zip(&columns)
                    .filter(|(_, c)| c.metric == col.metric && c.group < col_levels.len())
                    .map(|(cell, _): (&Cell, _)| cell.mean())
                    .collect();
                let all: Option<Vec<f64>> = means.into_iter().collect();
                cells.push(match all {
                    Some(v) if !v.is_empty() => Cell::Avg(v.iter().sum::<f64>() / v.len() as f64),
                    _ => Cell::Missing,
                });
                continue;
            }
            let key = &spec.value[col.metric];
            let values: Vec<f64> = in_row
                .iter()
                .filter(|r| r.status == RunStatus::Done)
                .filter(|r| match (&spec.cols, &col_levels[col.group]) {
                    (Some(c), Some(l)) => Level::param(r, c).canon == l.canon,
                    _ => true,
                })
                .filter_map(|r| r.metrics.get(key).copied())
                .collect();
            cells.push(Stats::of(&values).map_or(Cell::Missing, Cell::Stats));
        }
        rows.push(TableRow { label: label.clone(), bold: vec![false; cells.len()], cells });
    }

    // Bold: the best displayed (rounded) mean per column, ties included, when at least two
    // rows have a value.
    for (j, col) in columns.iter().enumerate() {
        let best = if spec.best.len() == 1 { spec.best[0] } else { spec.best[col.metric] };
        let shown: Vec<Option<f64>> =
            rows.iter().map(|r| r.cells[j].mean().filter(|m| m.is_finite()).map(|m| round_to(m, spec.decimals))).collect();
        let present: Vec<f64> = shown.iter().flatten().copied().collect();
        if present.len() < 2 {
            continue;
        }
        let target = match best {
            Best::Max => present.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Best::Min => present.iter().copied().fold(f64::INFINITY, f64::min),
            Best::None => continue,
        };
        for (r, s) in rows.iter_mut().zip(&shown) {
            if *s == Some(target) {
                r.bold[j] = true;
            }
        }
    }

    // Replicate counts: say n only where it differs from the usual count.
    let mut counts: HashMap<usize, usize> = HashMap::new();
    for r in &rows {
        for c in &r.cells {
            if let Cell::Stats(s) = c {
                *counts.entry(s.n).or_default() += 1;
            }
        }
    }
    let common_n = if counts.len() > 1 { counts.iter().max_by_key(|&(n, k)| (*k, *n)).map(|(n, _)| *n) } else { None };

    let mut failed = Vec::new();
    let mut unfinished: Vec<(RunStatus, usize)> = Vec::new();
    for r in &runs {
        match r.status {
            RunStatus::Done => {}
            RunStatus::Failed => {
                let mut ctx = vec![format!("{row_header}={}", row_level(r).label)];
                if let (Some(c), Some(n)) = (&spec.cols, &col_name) {
                    ctx.push(format!("{n}={}", Level::param(r, c).label));
                }
                let el = extras_label(r, &extras);
                if !el.is_empty() {
                    ctx.push(el);
                }
                if let Some(s) = r.seed {
                    ctx.push(format!("seed={s}"));
                }
                let err = r.error.as_deref().and_then(|e| e.lines().find(|l| !l.trim().is_empty()));
                let err = err.map_or("no error recorded".to_string(), |e| truncate(e.trim(), 200));
                failed.push(format!("{} ({}): {err}", r.run_id, ctx.join(", ")));
            }
            s => match unfinished.iter_mut().find(|(k, _)| *k == s) {
                Some((_, n)) => *n += 1,
                None => unfinished.push((s, 1)),
            },
        }
    }

    let caption = spec.caption.clone().unwrap_or_else(|| {
        let names: Vec<String> = spec
            .value
            .iter()
            .zip(&metrics)
            .map(|(k, n)| if n == short_key(k) { n.clone() } else { format!("{n} ({})", short_key(k)) })
            .collect();
        let mut c = format!("{} by {row_header}", names.join(" and "));
        if let Some(n) = &col_name {
            let _ = write!(c, " and {n}");
        }
        let _ = write!(c, "; mean ± {} over seeds.", spec.spread.describe());
        c
    });

    Ok(Table {
        caption,
        row_header,
        groups,
        metrics,
        columns,
        rows,
        decimals: spec.decimals,
        spread: spec.spread,
        common_n,
        failed,
        unfinished,
    })
}

/// Display names of the value metrics: the `labels` entry, else the key's last segment; with
/// several metrics, multi-word names are abbreviated to their initials (`harmful_score` → `HS`)
/// when that keeps them distinct.
fn metric_names(spec: &TableSpec) -> Vec<String> {
    let shorts: Vec<String> = spec.value.iter().map(|k| short_key(k).to_string()).collect();
    let abbrev: Vec<String> = shorts
        .iter()
        .map(|s| {
            let words: Vec<&str> = s.split(['_', '-', ' ']).filter(|w| !w.is_empty()).collect();
            if words.len() >= 2 {
                words.iter().filter_map(|w| w.chars().next()).flat_map(char::to_uppercase).collect()
            } else {
                s.clone()
            }
        })
        .collect();
    let distinct = |v: &[String]| {
        let mut s: Vec<&String> = v.iter().collect();
        s.sort();
        s.dedup();
        s.len() == v.len()
    };
    let auto = if spec.value.len() > 1 && distinct(&abbrev) {
        abbrev
    } else if distinct(&shorts) {
        shorts
    } else {
        spec.value.clone()
    };
    spec.value.iter().zip(auto).map(|(k, a)| spec.labels.get(k).cloned().unwrap_or(a)).collect()
}

fn round_to(x: f64, decimals: usize) -> f64 {
    format!("{x:.decimals$}").parse().unwrap_or(x)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Output flavour of a cell.
#[derive(Clone, Copy, PartialEq)]
enum Flavour {
    Markdown,
    Latex,
    /// The markdown text without bold markers (the page marks bold itself).
    Plain,
}

impl Table {
    fn cell_text(&self, row: &TableRow, j: usize, f: Flavour) -> String {
        let d = self.decimals;
        let (pm, dash) = match f {
            Flavour::Markdown | Flavour::Plain => (" ± ", "—"),
            Flavour::Latex => (" $\\pm$ ", "---"),
        };
        let (body, note) = match row.cells[j] {
            Cell::Missing => return dash.to_string(),
            Cell::Avg(m) => (format!("{m:.d$}"), String::new()),
            Cell::Stats(s) => {
                let body = match s.std {
                    Some(sd) => format!("{:.d$}{pm}{:.d$}", s.mean, self.spread.of(sd, s.n)),
                    None => format!("{:.d$}", s.mean),
                };
                let note = match self.common_n {
                    Some(c) if c != s.n => format!(" (n={})", s.n),
                    _ => String::new(),
                };
                (body, note)
            }
        };
        match (row.bold[j], f) {
            (false, _) | (true, Flavour::Plain) => format!("{body}{note}"),
            (true, Flavour::Markdown) => format!("**{body}**{note}"),
            (true, Flavour::Latex) => format!("\\textbf{{{body}}}{note}"),
        }
    }

    /// A cell as the markdown table shows it, without the bold markers (`row.bold` says which).
    pub(crate) fn plain_cell(&self, row: &TableRow, j: usize) -> String {
        self.cell_text(row, j, Flavour::Plain)
    }

    pub(crate) fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.unfinished.is_empty() {
            let total: usize = self.unfinished.iter().map(|(_, n)| n).sum();
            let parts: Vec<String> = self.unfinished.iter().map(|(s, n)| format!("{n} {s}")).collect();
            notes.push(format!("{total} run{} not finished ({}).", if total == 1 { "" } else { "s" }, parts.join(", ")));
        }
        notes
    }

    /// A pipe table with the caption (`Table: ...`) and the failed runs under it.
    pub fn markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut grid: Vec<Vec<String>> = Vec::new();
        let mut head = vec![esc(&self.row_header)];
        head.extend(self.columns.iter().map(|c| esc(&c.header)));
        grid.push(head);
        for r in &self.rows {
            let mut line = vec![esc(&r.label)];
            line.extend((0..self.columns.len()).map(|j| self.cell_text(r, j, Flavour::Markdown)));
            grid.push(line);
        }
        let ncol = self.columns.len() + 1;
        let width: Vec<usize> = (0..ncol).map(|j| grid.iter().map(|l| l[j].chars().count()).max().unwrap_or(0).max(3)).collect();
        let pad = |s: &str, w: usize, right: bool| {
            let fill = " ".repeat(w.saturating_sub(s.chars().count()));
            if right {
                format!("{fill}{s}")
            } else {
                format!("{s}{fill}")
            }
        };
        let mut out = String::new();
        for (i, line) in grid.iter().enumerate() {
            let cells: Vec<String> = line.iter().enumerate().map(|(j, s)| pad(s, width[j], j > 0)).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
            if i == 0 {
                let rules: Vec<String> = width
                    .iter()
                    .enumerate()
                    .map(|(j, &w)| if j == 0 { format!(":{}", "-".repeat(w - 1)) } else { format!("{}:", "-".repeat(w - 1)) })
                    .collect();
                let _ = writeln!(out, "| {} |", rules.join(" | "));
            }
        }
        let _ = writeln!(out, "\nTable: {}", self.caption);
        if !self.failed.is_empty() {
            let _ = writeln!(out, "\nFailed runs (shown as —):\n");
            for f in &self.failed {
                let _ = writeln!(out, "- {f}");
            }
        }
        for n in self.notes() {
            let _ = writeln!(out, "\n{n}");
        }
        out
    }

    /// A booktabs `table` environment (`\usepackage{booktabs}`; wide tables also use
    /// `\resizebox` from graphicx).
    pub fn latex(&self, name: &str) -> String {
        let ncols = self.columns.len();
        let grouped = self.groups.len() > 1 || !self.groups[0].is_empty();
        let two_level = grouped && self.metrics.len() > 1;
        let wide = ncols > 4;
        let mut out = String::new();
        let _ = writeln!(out, "% Generated by runner; needs \\usepackage{{booktabs}}{}.", if wide { " and graphicx" } else { "" });
        let _ = writeln!(out, "\\begin{{table}}[t]\n\\centering");
        let _ = writeln!(out, "\\caption{{{}}}", tex_escape(&self.caption));
        let _ = writeln!(out, "\\label{{tab:{name}}}");
        if wide {
            // Shrinks the table to the line width only when it is wider.
            let _ = writeln!(out, "\\resizebox{{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}}{{!}}{{%");
        }
        let _ = writeln!(out, "\\begin{{tabular}}{{l{}}}", "c".repeat(ncols));
        let _ = writeln!(out, "\\toprule");
        if two_level {
            let mut line = String::new();
            let mut rules = String::new();
            let mut start = 2;
            for (g, gname) in self.groups.iter().enumerate() {
                let span = self.columns.iter().filter(|c| c.group == g).count();
                let _ = write!(line, " & \\multicolumn{{{span}}}{{c}}{{{}}}", tex_escape(gname));
                let _ = write!(rules, "\\cmidrule(lr){{{start}-{}}}", start + span - 1);
                start += span;
            }
            let _ = writeln!(out, "{line} \\\\\n{rules}");
            let mut line = tex_escape(&self.row_header);
            for c in &self.columns {
                let _ = write!(line, " & {}", tex_escape(&self.metrics[c.metric]));
            }
            let _ = writeln!(out, "{line} \\\\");
        } else {
            let mut line = tex_escape(&self.row_header);
            for c in &self.columns {
                let _ = write!(line, " & {}", tex_escape(&c.header));
            }
            let _ = writeln!(out, "{line} \\\\");
        }
        let _ = writeln!(out, "\\midrule");
        for r in &self.rows {
            let mut line = tex_escape(&r.label);
            for j in 0..ncols {
                let _ = write!(line, " & {}", self.cell_text(r, j, Flavour::Latex));
            }
            let _ = writeln!(out, "{line} \\\\");
        }
        let _ = writeln!(out, "\\bottomrule\n\\end{{tabular}}");
        if wide {
            let _ = writeln!(out, "}}");
        }
        let mut notes: Vec<String> = Vec::new();
        if !self.failed.is_empty() {
            let list: Vec<String> = self.failed.iter().map(|f| tex_escape(f)).collect();
            notes.push(format!("--- : failed. {}", list.join("; ")));
        }
        notes.extend(self.notes().iter().map(|n| tex_escape(n)));
        if !notes.is_empty() {
            let _ = writeln!(out, "\\par\\smallskip");
            let _ = writeln!(out, "{{\\footnotesize {}\\par}}", notes.join(" "));
        }
        let _ = writeln!(out, "\\end{{table}}");
        out
    }

    /// Numbers for other tools: per column its mean, std and n (empty where missing).
    pub fn csv(&self) -> String {
        let mut out = String::new();
        let mut head = vec![csv_field(&self.row_header)];
        for c in &self.columns {
            head.push(csv_field(&c.header));
            head.push(csv_field(&format!("{} std", c.header)));
            head.push(csv_field(&format!("{} n", c.header)));
        }
        let _ = writeln!(out, "{}", head.join(","));
        for r in &self.rows {
            let mut line = vec![csv_field(&r.label)];
            for c in &r.cells {
                match *c {
                    Cell::Missing => line.extend(["".into(), "".into(), "".into()]),
                    Cell::Avg(m) => line.extend([format!("{m}"), "".into(), "".into()]),
                    Cell::Stats(s) => {
                        line.extend([format!("{}", s.mean), s.std.map(|v| format!("{v}")).unwrap_or_default(), s.n.to_string()])
                    }
                }
            }
            let _ = writeln!(out, "{}", line.join(","));
        }
        out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Escapes LaTeX specials; `±`, `—`, `–` become `$\pm$`, `---`, `--`.
pub(crate) fn tex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '<' => out.push_str("\\textless{}"),
            '>' => out.push_str("\\textgreater{}"),
            '±' => out.push_str("$\\pm$"),
            '—' => out.push_str("---"),
            '–' => out.push_str("--"),
            '…' => out.push_str("\\ldots{}"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(id: &str, method: &str, p: f64, seed: u64, hs: f64, acc: f64) -> RunRow {
        RunRow {
            run_id: id.into(),
            status: RunStatus::Done,
            error: None,
            seed: Some(seed),
            params: [("stage.align.method".to_string(), json!(method)), ("stage.attack.mix.1.ratio".to_string(), json!(p))].into(),
            metrics: [("eval.harmful_score".to_string(), hs), ("eval.accuracy".to_string(), acc)].into(),
        }
    }

    fn spec(value: &[&str]) -> TableSpec {
        TableSpec {
            name: None,
            rows: vec!["stage.align.method".into()],
            cols: Some("stage.attack.mix.1.ratio".into()),
            value: value.iter().map(|s| s.to_string()).collect(),
            caption: None,
            best: vec![Best::Min],
            average: false,
            decimals: 2,
            filter: Default::default(),
            labels: Default::default(),
            spread: Default::default(),
        }
    }

    /// 2 methods x 2 ratios x 2 seeds.
    fn grid() -> Vec<RunRow> {
        vec![
            run("r01", "sft", 0.1, 1, 30.0, 90.0),
            run("r02", "sft", 0.1, 2, 34.0, 92.0),
            run("r03", "sft", 0.0, 1, 10.0, 93.0),
            run("r04", "sft", 0.0, 2, 12.0, 95.0),
            run("r05", "booster", 0.1, 1, 20.0, 91.0),
            run("r06", "booster", 0.1, 2, 21.0, 91.0),
            run("r07", "booster", 0.0, 1, 11.0, 92.0),
            run("r08", "booster", 0.0, 2, 13.0, 94.0),
        ]
    }

    #[test]
    fn table_2x2_two_seeds_mean_std_and_bold() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(&["eval.harmful_score"]);
        assert_eq!(default_name(&s), "harmful_score_by_method_ratio");
        let paths = write_table(dir.path(), "t", &grid(), &s).unwrap();
        assert_eq!(paths.len(), 3);
        let md = std::fs::read_to_string(dir.path().join("t.md")).unwrap();
        // sft p=0: 11 ± 1.414; booster p=0: 12 ± 1.414; p=0.1: sft 32 ± 2.83, booster 20.5 ± 0.71.
        let expected = "\
| method  |          ratio=0 |        ratio=0.1 |
| :------ | ---------------: | ---------------: |
| sft     | **11.00 ± 1.41** |     32.00 ± 2.83 |
| booster |     12.00 ± 1.41 | **20.50 ± 0.71** |
";
        assert!(md.starts_with(expected), "{md}");
        assert!(md.contains("Table: harmful_score by method and ratio; mean ± std over seeds."));
        assert!(!md.contains("Failed"));

        let tex = std::fs::read_to_string(dir.path().join("t.tex")).unwrap();
        for line in [
            "\\toprule",
            "method & ratio=0 & ratio=0.1 \\\\",
            "\\midrule",
            "sft & \\textbf{11.00 $\\pm$ 1.41} & 32.00 $\\pm$ 2.83 \\\\",
            "booster & 12.00 $\\pm$ 1.41 & \\textbf{20.50 $\\pm$ 0.71} \\\\",
            "\\bottomrule",
            "\\caption{harmful\\_score by method and ratio; mean $\\pm$ std over seeds.}",
            "\\label{tab:t}",
        ] {
            assert!(tex.lines().any(|l| l == line), "missing {line:?} in\n{tex}");
        }

        let csv = std::fs::read_to_string(dir.path().join("t.csv")).unwrap();
        let mut lines = csv.lines();
        assert_eq!(lines.next().unwrap(), "method,ratio=0,ratio=0 std,ratio=0 n,ratio=0.1,ratio=0.1 std,ratio=0.1 n");
        let sft: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(&sft[..2], ["sft", "11"]);
        assert!((sft[2].parse::<f64>().unwrap() - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(sft[3], "2");
    }

    #[test]
    fn table_two_metrics_side_by_side_with_average() {
        let mut s = spec(&["eval.harmful_score", "eval.accuracy"]);
        s.best = vec![Best::Min, Best::Max];
        s.average = true;
        s.decimals = 1;
        s.labels.insert("stage.attack.mix.1.ratio".into(), "p".into());
        let t = build("t", &grid(), &s).unwrap();
        let headers: Vec<&str> = t.columns.iter().map(|c| c.header.as_str()).collect();
        assert_eq!(headers, ["HS p=0", "accuracy p=0", "HS p=0.1", "accuracy p=0.1", "HS Average", "accuracy Average"]);
        let md = t.markdown();
        // booster: HS avg (12 + 20.5) / 2 = 16.25 (best, min); sft acc avg (94 + 91) / 2 = 92.5 (best).
        assert!(md.contains("| booster |"), "{md}");
        let booster = md.lines().find(|l| l.starts_with("| booster")).unwrap();
        assert!(booster.contains("**16.2**") || booster.contains("**16.3**"), "{booster}");
        let sft = md.lines().find(|l| l.starts_with("| sft")).unwrap();
        assert!(sft.trim_end().ends_with("**92.5** |"), "{sft}");
        assert!(md.contains("HS (harmful_score) and accuracy by method and p"), "{md}");
        let tex = t.latex("t");
        assert!(tex.contains(" & \\multicolumn{2}{c}{p=0} & \\multicolumn{2}{c}{p=0.1} & \\multicolumn{2}{c}{Average} \\\\"), "{tex}");
        assert!(tex.contains("\\cmidrule(lr){2-3}\\cmidrule(lr){4-5}\\cmidrule(lr){6-7}"), "{tex}");
        assert!(tex.contains("method & HS & accuracy & HS & accuracy & HS & accuracy \\\\"), "{tex}");
        assert!(tex.contains("\\resizebox"), "{tex}");
    }

    #[test]
    fn table_with_failed_run_shows_dash_and_footnote() {
        let mut rows = grid();
        // booster p=0.1: one seed failed, the other done -> n=1; sft p=0.1: both failed.
        rows.retain(|r| !(r.run_id == "r06" || r.run_id == "r01" || r.run_id == "r02"));
        let mut f = run("r02", "sft", 0.1, 2, 0.0, 0.0);
        f.status = RunStatus::Failed;
        f.metrics.clear();
        f.error = Some("CUDA out of memory\nTraceback: ...".into());
        rows.push(f);
        let mut p = run("r09", "lisa", 0.0, 1, 0.0, 0.0);
        p.status = RunStatus::Pending;
        p.metrics.clear();
        rows.push(p);
        let t = build("t", &rows, &spec(&["eval.harmful_score"])).unwrap();
        let md = t.markdown();
        let sft = md.lines().find(|l| l.starts_with("| sft")).unwrap();
        assert!(sft.contains("| **11.00 ± 1.41** |") && sft.trim_end().ends_with("— |"), "{md}");
        let booster = md.lines().find(|l| l.starts_with("| booster")).unwrap();
        assert!(booster.contains("20.00 (n=1)"), "{md}");
        let lisa = md.lines().find(|l| l.starts_with("| lisa")).unwrap();
        assert_eq!(lisa.matches('—').count(), 2, "{md}");
        assert!(md.contains("Failed runs (shown as —):"), "{md}");
        assert!(md.contains("- r02 (method=sft, ratio=0.1, seed=2): CUDA out of memory\n"), "{md}");
        assert!(!md.contains("Traceback"));
        assert!(md.contains("1 run not finished (1 pending)."), "{md}");
        let tex = t.latex("t");
        assert!(tex.contains("sft & \\textbf{11.00 $\\pm$ 1.41} & --- \\\\"), "{tex}");
        assert!(tex.contains("--- : failed. r02 (method=sft, ratio=0.1, seed=2): CUDA out of memory"), "{tex}");
    }

    #[test]
    fn unknown_keys_name_the_closest() {
        let mut s = spec(&["eval.harmful_score"]);
        s.rows = vec!["stage.align.methd".into()];
        let e = build("t", &grid(), &s).unwrap_err().to_string();
        assert!(e.contains("table `t`: rows key `stage.align.methd` is not a param"), "{e}");
        assert!(e.contains("did you mean `stage.align.method`"), "{e}");
        assert!(e.contains("stage.attack.mix.1.ratio"), "{e}");
        let s = spec(&["eval.harmfulscore"]);
        let e = build("t", &grid(), &s).unwrap_err().to_string();
        assert!(e.contains("value key `eval.harmfulscore` is not a metric"), "{e}");
        assert!(e.contains("did you mean `eval.harmful_score`"), "{e}");
    }

    #[test]
    fn other_varying_params_split_rows_and_filter_selects() {
        let mut rows = grid();
        for r in &mut rows {
            let lr = if r.seed == Some(1) { 1e-4 } else { 1e-3 };
            r.params.insert("stage.align.lr".into(), json!(lr));
        }
        let t = build("t", &rows, &spec(&["eval.harmful_score"])).unwrap();
        let labels: Vec<&str> = t.rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["sft (lr=0.0001)", "sft (lr=0.001)", "booster (lr=0.0001)", "booster (lr=0.001)"]);
        let mut s = spec(&["eval.harmful_score"]);
        s.filter.insert("stage.align.lr".into(), json!(0.001));
        let t = build("t", &rows, &s).unwrap();
        let labels: Vec<&str> = t.rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["sft", "booster"]);
        assert_eq!(t.rows[0].cells[0], Cell::Stats(Stats { mean: 12.0, std: None, n: 1 }));
    }

    #[test]
    fn tex_escapes_specials() {
        assert_eq!(
            tex_escape("a_b & 50% #1 {x} ~ ^ \\ $"),
            "a\\_b \\& 50\\% \\#1 \\{x\\} \\textasciitilde{} \\textasciicircum{} \\textbackslash{} \\$"
        );
    }

    #[test]
    fn rows_by_two_keys_one_row_per_combination_with_value_labels() {
        // Lisa is SFT alignment followed by a Lisa fine-tune: the rows need both methods.
        let mut rows = grid();
        for r in &mut rows {
            r.params.insert("stage.attack.method".into(), json!("sft"));
        }
        for (i, (p, seed, hs)) in [(0.0, 1, 5.0), (0.0, 2, 7.0), (0.1, 1, 15.0), (0.1, 2, 17.0)].into_iter().enumerate() {
            let mut r = run(&format!("r1{i}"), "sft", p, seed, hs, 90.0);
            r.params.insert("stage.attack.method".into(), json!("lisa"));
            rows.push(r);
        }
        let mut s = spec(&["eval.harmful_score"]);
        s.rows = vec!["stage.align.method".into(), "stage.attack.method".into()];
        s.labels.insert("sft + lisa".into(), "Lisa".into());
        assert_eq!(default_name(&s), "harmful_score_by_method_method_ratio");
        let t = build("t", &rows, &s).unwrap();
        let labels: Vec<&str> = t.rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["sft + sft", "booster + sft", "Lisa"], "in order of first appearance");
        assert_eq!(t.rows[2].cells[0], Cell::Stats(Stats { mean: 6.0, std: Some(2f64.sqrt()), n: 2 }));
        assert_eq!(t.rows[0].cells[0], Cell::Stats(Stats { mean: 11.0, std: Some(2f64.sqrt()), n: 2 }));
        assert!(t.markdown().starts_with("| method + method "), "{}", t.markdown());
        s.labels.insert("stage.align.method + stage.attack.method".into(), "defense".into());
        assert!(build("t", &rows, &s).unwrap().markdown().starts_with("| defense "));
        // With one key the Lisa runs would be split off by the varying param instead.
        let t = build("t", &rows, &spec(&["eval.harmful_score"])).unwrap();
        let labels: Vec<&str> = t.rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["sft (method=sft)", "sft (method=lisa)", "booster (method=sft)"]);
    }

    #[test]
    fn stderr_spread_divides_the_std_by_sqrt_n() {
        let mut s = spec(&["eval.harmful_score"]);
        s.spread = Spread::Stderr;
        let t = build("t", &grid(), &s).unwrap();
        let md = t.markdown();
        // sft p=0.1: 32 ± 2.83 (std) -> 2.83 / sqrt(2) = 2.00.
        assert!(md.contains("32.00 ± 2.00"), "{md}");
        assert!(md.contains("mean ± standard error over seeds"), "{md}");
    }
}
