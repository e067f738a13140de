//! The `[report]` section checked before any run exists (by the planner, so `runner plan` and
//! `runner run` refuse a broken report at once instead of after the sweep): unknown keys, wrong
//! types, param keys that no planned run has, metric keys that name no stage, and everything
//! else a table or plot rejects when it is built.

use std::collections::BTreeMap;

use figment::providers::Serialized;
use figment::Figment;
use serde::de::DeserializeOwned;

use super::group::closest;
// Field names and values are short: the spec's looser typo rule, as for stage keys.
use super::{plot, table, PlotSpec, ReportSpec, RunRow, RunStatus, TableSpec};
use crate::spec::closest as key_closest;

/// A problem in `[report]`, at a key path below `report` (`["table", "0", "rows"]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSpecError {
    pub path: Vec<String>,
    pub msg: String,
    /// The closest valid key or value, for a likely typo.
    pub suggestion: Option<String>,
}

impl ReportSpecError {
    fn new(path: Vec<String>, msg: impl Into<String>) -> Self {
        ReportSpecError { path, msg: msg.into(), suggestion: None }
    }
}

/// Parses and checks the `[report]` table. `params` are the swept params of every planned run
/// (what tables and plots group and filter by); `stages` the stage ids of the spec (the first
/// segment of every metric key, `eval.harmful_score`).
pub fn check_spec(
    report: &toml::Table,
    params: &[BTreeMap<String, serde_json::Value>],
    stages: &[&str],
) -> Result<ReportSpec, ReportSpecError> {
    let mut spec = ReportSpec::default();
    for (key, value) in report {
        match key.as_str() {
            "table" => spec.table = entries::<TableSpec>(key, value)?,
            "plot" => spec.plot = entries::<PlotSpec>(key, value)?,
            other => {
                return Err(ReportSpecError {
                    path: vec![other.to_string()],
                    msg: "unknown key (valid: table, plot)".into(),
                    suggestion: key_closest(other, ["table", "plot"]),
                })
            }
        }
    }
    // Rows as the report will see them before any result exists.
    let rows: Vec<RunRow> = params
        .iter()
        .enumerate()
        .map(|(i, p)| RunRow {
            run_id: format!("run{i}"),
            status: RunStatus::Pending,
            error: None,
            seed: None,
            params: p.clone(),
            metrics: BTreeMap::new(),
        })
        .collect();
    let known: Vec<&str> = {
        let mut k: Vec<&str> = params.iter().flat_map(|p| p.keys().map(String::as_str)).collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    for (i, t) in spec.table.iter().enumerate() {
        let at = |field: &str| vec!["table".to_string(), i.to_string(), field.to_string()];
        for r in &t.rows {
            check_param(r, &known, at("rows"))?;
        }
        if let Some(c) = &t.cols {
            check_param(c, &known, at("cols"))?;
        }
        for k in t.filter.keys() {
            check_param(k, &known, at("filter"))?;
        }
        for m in &t.value {
            check_metric(m, stages, at("value"))?;
        }
        let name = t.name.clone().unwrap_or_else(|| table::default_name(t));
        table::build(&name, &rows, t).map_err(|e| ReportSpecError::new(vec!["table".into(), i.to_string()], e.to_string()))?;
    }
    for (i, p) in spec.plot.iter().enumerate() {
        let at = |field: &str| vec!["plot".to_string(), i.to_string(), field.to_string()];
        check_param(&p.x, &known, at("x"))?;
        for s in &p.series {
            check_param(s, &known, at("series"))?;
        }
        for k in p.filter.keys() {
            check_param(k, &known, at("filter"))?;
        }
        check_metric(&p.y, stages, at("y"))?;
        let name = p.name.clone().unwrap_or_else(|| plot::default_name(p));
        plot::build(&name, &rows, p).map_err(|e| ReportSpecError::new(vec!["plot".into(), i.to_string()], e.to_string()))?;
    }
    Ok(spec)
}

/// `[[report.table]]` or `[[report.plot]]`: an array of tables, each parsed with key paths.
fn entries<T: DeserializeOwned>(section: &str, value: &toml::Value) -> Result<Vec<T>, ReportSpecError> {
    let toml::Value::Array(items) = value else {
        return Err(ReportSpecError::new(vec![section.into()], format!("expected an array of tables: [[report.{section}]]")));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = vec![section.to_string(), i.to_string()];
            let toml::Value::Table(t) = item else {
                return Err(ReportSpecError::new(at, format!("expected a table, found {}", item.type_str())));
            };
            parse_entry(t, at)
        })
        .collect()
}

fn parse_entry<T: DeserializeOwned>(t: &toml::Table, at: Vec<String>) -> Result<T, ReportSpecError> {
    Figment::from(Serialized::globals(t)).extract::<T>().map_err(|e| {
        let e = e.into_iter().next().expect("a figment error holds at least one error");
        let mut path = at;
        path.extend(e.path.iter().cloned());
        let (msg, suggestion) = match &e.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                if e.path.last() != Some(field) {
                    path.push(field.clone());
                }
                (format!("unknown key (valid: {})", expected.join(", ")), key_closest(field, expected.iter().copied()))
            }
            figment::error::Kind::MissingField(field) => {
                path.push(field.to_string());
                ("missing".to_string(), None)
            }
            figment::error::Kind::UnknownVariant(v, expected) => {
                (format!("unknown value {v:?} (expected one of: {})", expected.join(", ")), key_closest(v, expected.iter().copied()))
            }
            other => (other.to_string(), None),
        };
        ReportSpecError { path, msg, suggestion }
    })
}

fn check_param(key: &str, known: &[&str], path: Vec<String>) -> Result<(), ReportSpecError> {
    if known.contains(&key) {
        return Ok(());
    }
    let available = if known.is_empty() { "none: the spec sweeps nothing".to_string() } else { known.join(", ") };
    Err(ReportSpecError {
        path,
        msg: format!("`{key}` is not a param of any run (params are the swept keys; available: {available})"),
        suggestion: closest(key, known.iter().copied()).map(str::to_string),
    })
}

fn check_metric(key: &str, stages: &[&str], path: Vec<String>) -> Result<(), ReportSpecError> {
    let (stage, metric) = key.split_once('.').unwrap_or((key, ""));
    if stages.contains(&stage) && !metric.is_empty() {
        return Ok(());
    }
    Err(ReportSpecError {
        path,
        msg: format!("`{key}` is not a metric key `STAGE.METRIC` of a stage in the spec (stages: {})", stages.join(", ")),
        suggestion: closest(stage, stages.iter().copied()).filter(|_| !metric.is_empty()).map(|s| format!("{s}.{metric}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(text: &str) -> toml::Table {
        let doc: toml::Table = toml::from_str(text).unwrap();
        doc.get("report").and_then(|r| r.as_table()).cloned().unwrap_or_default()
    }

    fn params() -> Vec<BTreeMap<String, serde_json::Value>> {
        ["sft", "booster"]
            .iter()
            .flat_map(|m| {
                [0.0, 0.1].iter().map(move |r| {
                    BTreeMap::from([("stage.align.method".to_string(), json!(m)), ("stage.attack.mix.1.ratio".to_string(), json!(r))])
                })
            })
            .collect()
    }

    const STAGES: [&str; 3] = ["align", "attack", "eval"];

    fn check(text: &str) -> Result<ReportSpec, ReportSpecError> {
        check_spec(&report(text), &params(), &STAGES)
    }

    const GOOD: &str = r#"
[[report.table]]
rows = "stage.align.method"
cols = "stage.attack.mix.1.ratio"
value = ["eval.harmful_score", "eval.accuracy"]
best = ["min", "max"]

[[report.plot]]
x = "stage.attack.mix.1.ratio"
y = "eval.harmful_score"
series = "stage.align.method"
"#;

    #[test]
    fn a_valid_report_parses() {
        let spec = check(GOOD).unwrap();
        assert_eq!(spec.table.len(), 1);
        assert_eq!(spec.plot[0].y, "eval.harmful_score");
        assert_eq!(check("").unwrap(), ReportSpec::default());
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let e = check(&GOOD.replace("best = ", "bset = ")).unwrap_err();
        assert_eq!(e.path, ["table", "0", "bset"]);
        assert!(e.msg.contains("unknown key"), "{e:?}");
        assert_eq!(e.suggestion.as_deref(), Some("best"));
        let e = check(&GOOD.replace("[[report.plot]]\n", "[[report.plot]]\nxx = 1\n")).unwrap_err();
        assert_eq!(e.path, ["plot", "0", "xx"], "{e:?}");
        let e = check(&GOOD.replace("best = [\"min\", \"max\"]", "decimals = \"two\"")).unwrap_err();
        assert_eq!(e.path, ["table", "0", "decimals"], "{e:?}");
        let e = check(&GOOD.replace("best = [\"min\", \"max\"]", "best = \"mn\"")).unwrap_err();
        assert_eq!(e.suggestion.as_deref(), Some("min"), "{e:?}");
        let e = check(&GOOD.replace("rows = \"stage.align.method\"\n", "")).unwrap_err();
        assert_eq!((e.path.as_slice(), e.msg.as_str()), (&["table".to_string(), "0".into(), "rows".into()][..], "missing"));
        let e = check("[report]\ntabel = []").unwrap_err();
        assert_eq!((e.path, e.suggestion), (vec!["tabel".to_string()], Some("table".into())));
        let e = check("[report.table]\nrows = \"a\"").unwrap_err();
        assert!(e.msg.contains("[[report.table]]"), "{e:?}");
    }

    #[test]
    fn keys_must_name_params_and_stages() {
        let e = check(&GOOD.replace("rows = \"stage.align.method\"", "rows = \"stage.align.methd\"")).unwrap_err();
        assert_eq!(e.path, ["table", "0", "rows"]);
        assert_eq!(e.suggestion.as_deref(), Some("stage.align.method"));
        let e = check(&GOOD.replace("y = \"eval.harmful_score\"", "y = \"evl.harmful_score\"")).unwrap_err();
        assert_eq!(e.path, ["plot", "0", "y"]);
        assert_eq!(e.suggestion.as_deref(), Some("eval.harmful_score"));
        let e = check(&GOOD.replace("value = [\"eval.harmful_score\", \"eval.accuracy\"]", "value = \"harmful_score\"")).unwrap_err();
        assert!(e.msg.contains("STAGE.METRIC"), "{e:?}");
        let e = check(&format!("{GOOD}filter = {{ \"stage.align.lr\" = 1e-3 }}\n")).unwrap_err();
        assert_eq!(e.path, ["plot", "0", "filter"], "{e:?}");
    }

    #[test]
    fn what_a_table_rejects_when_built_is_rejected_now() {
        let e = check(&GOOD.replace("best = [\"min\", \"max\"]", "best = [\"min\", \"max\", \"min\"]")).unwrap_err();
        assert_eq!(e.path, ["table", "0"]);
        assert!(e.msg.contains("`best` has 3 entries"), "{e:?}");
    }
}
