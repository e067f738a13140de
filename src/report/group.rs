//! Shared aggregation: param values as grouping levels, their order, replicate statistics,
//! key validation.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{ReportError, RunRow, RunStatus};

/// One value of a param, as a grouping level. Numbers compare by value (1 and 1.0 are one
/// level); a run without the key has the `absent` level.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Level {
    /// Identity: equal levels have equal `canon`.
    pub canon: String,
    /// How it is printed.
    pub label: String,
    /// The numeric value, for numbers.
    pub num: Option<f64>,
}

impl Level {
    pub fn absent() -> Level {
        Level { canon: String::new(), label: "—".into(), num: None }
    }

    pub fn is_absent(&self) -> bool {
        self.canon.is_empty()
    }

    pub fn of(v: Option<&serde_json::Value>) -> Level {
        use serde_json::Value;
        match v {
            None => Level::absent(),
            Some(Value::Number(n)) => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                Level { canon: format!("n:{f}"), label: format_num(f), num: Some(f) }
            }
            Some(Value::String(s)) => Level { canon: format!("s:{s}"), label: s.clone(), num: None },
            Some(Value::Bool(b)) => Level { canon: format!("b:{b}"), label: b.to_string(), num: None },
            Some(other) => {
                let j = other.to_string();
                Level { canon: format!("j:{j}"), label: j, num: None }
            }
        }
    }

    pub fn param(row: &RunRow, key: &str) -> Level {
        Level::of(row.params.get(key))
    }

    /// How the level is printed, under its display name when `labels` gives one.
    pub fn display(&self, labels: &BTreeMap<String, String>) -> String {
        labels.get(&self.label).cloned().unwrap_or_else(|| self.label.clone())
    }

    /// The level of a run under several keys at once (one row per combination of their
    /// values): labels joined by " + ". One key is its plain level.
    pub fn joint(row: &RunRow, keys: &[String]) -> Level {
        if let [key] = keys {
            return Level::param(row, key);
        }
        let levels: Vec<Level> = keys.iter().map(|k| Level::param(row, k)).collect();
        if levels.iter().all(Level::is_absent) {
            return Level::absent();
        }
        let join = |f: fn(&Level) -> &str, sep: &str| levels.iter().map(f).collect::<Vec<_>>().join(sep);
        Level { canon: join(|l| &l.canon, "\u{1e}"), label: join(|l| &l.label, " + "), num: None }
    }
}

/// A number as a person writes it: `0`, `0.05`, `5e-4` → `0.0005`, `1e-8` → `1e-8`.
pub(crate) fn format_num(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    let a = f.abs();
    if (1e-4..1e7).contains(&a) || !f.is_finite() {
        format!("{f}")
    } else {
        format!("{f:e}")
    }
}

/// The distinct levels in first-seen order; if every present level is a number, sorted
/// numerically instead. The absent level, if any, comes last.
pub(crate) fn ordered_levels(levels: impl IntoIterator<Item = Level>) -> Vec<Level> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<Level> = Vec::new();
    let mut absent = None;
    for l in levels {
        if l.is_absent() {
            absent = Some(l);
        } else if seen.insert(l.canon.clone()) {
            out.push(l);
        }
    }
    if out.iter().all(|l| l.num.is_some()) {
        out.sort_by(|a, b| a.num.unwrap().total_cmp(&b.num.unwrap()));
    }
    out.extend(absent);
    out
}

/// Mean, sample standard deviation (n > 1) and count of the replicates of one cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stats {
    pub mean: f64,
    pub std: Option<f64>,
    pub n: usize,
}

impl Stats {
    pub fn of(values: &[f64]) -> Option<Stats> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        Some(Stats { mean, std, n })
    }
}

/// Whether a param key names the seed (the seed is its own field, but a spec may sweep it as
/// a param too); such keys never separate replicates.
pub(crate) fn is_seed_key(key: &str) -> bool {
    key == "seed" || key.ends_with(".seed") || key == "seeds" || key.ends_with(".seeds")
}

/// The last meaningful segment of a key path: `stage.attack.mix.1.ratio` → `ratio`.
pub(crate) fn short_key(key: &str) -> &str {
    key.rsplit('.').find(|s| !s.is_empty() && !s.chars().all(|c| c.is_ascii_digit())).unwrap_or(key)
}

/// Params (other than `group_keys` and seeds) that take more than one value among runs that
/// agree on every `group_keys` level. Such params must also separate rows or series, or a cell
/// would average different configurations. Sorted.
pub(crate) fn varying_within(runs: &[&RunRow], group_keys: &[&str]) -> Vec<String> {
    let all_keys: BTreeSet<&str> =
        runs.iter().flat_map(|r| r.params.keys().map(String::as_str)).filter(|k| !group_keys.contains(k) && !is_seed_key(k)).collect();
    let mut groups: HashMap<Vec<String>, Vec<&RunRow>> = HashMap::new();
    for r in runs {
        let g = group_keys.iter().map(|k| Level::param(r, k).canon).collect();
        groups.entry(g).or_default().push(r);
    }
    all_keys
        .into_iter()
        .filter(|k| {
            groups.values().any(|g| {
                let first = Level::param(g[0], k).canon;
                g.iter().any(|r| Level::param(r, k).canon != first)
            })
        })
        .map(str::to_string)
        .collect()
}

/// The label of a run's `extra` params: `lr=0.0005, lambda=5` (absent ones left out).
pub(crate) fn extras_label(row: &RunRow, extras: &[String]) -> String {
    extras
        .iter()
        .filter_map(|k| {
            let l = Level::param(row, k);
            (!l.is_absent()).then(|| format!("{}={}", short_key(k), l.label))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Identity of a run's `extra` params.
pub(crate) fn extras_canon(row: &RunRow, extras: &[String]) -> String {
    extras.iter().map(|k| Level::param(row, k).canon).collect::<Vec<_>>().join("\u{1f}")
}

/// Runs whose params equal `filter` (numbers compare by value). Unknown filter keys are errors.
pub(crate) fn apply_filter<'a>(
    what: &str,
    rows: &'a [RunRow],
    filter: &BTreeMap<String, serde_json::Value>,
) -> Result<Vec<&'a RunRow>, ReportError> {
    for k in filter.keys() {
        check_param(what, "filter", k, rows)?;
    }
    Ok(rows.iter().filter(|r| filter.iter().all(|(k, v)| Level::param(r, k).canon == Level::of(Some(v)).canon)).collect())
}

/// Errors unless some run has param `key`.
pub(crate) fn check_param(what: &str, field: &'static str, key: &str, rows: &[RunRow]) -> Result<(), ReportError> {
    if rows.iter().any(|r| r.params.contains_key(key)) {
        return Ok(());
    }
    let available: BTreeSet<&str> = rows.iter().flat_map(|r| r.params.keys().map(String::as_str)).collect();
    Err(unknown(what, field, key, "param", available))
}

/// Errors unless some `done` run has metric `key`. With no `done` run there is nothing to check
/// against, and the table is simply empty.
pub(crate) fn check_metric(what: &str, field: &'static str, key: &str, rows: &[RunRow]) -> Result<(), ReportError> {
    let done: Vec<&RunRow> = rows.iter().filter(|r| r.status == RunStatus::Done).collect();
    if done.is_empty() || done.iter().any(|r| r.metrics.contains_key(key)) {
        return Ok(());
    }
    let available: BTreeSet<&str> = done.iter().flat_map(|r| r.metrics.keys().map(String::as_str)).collect();
    Err(unknown(what, field, key, "metric", available))
}

fn unknown(what: &str, field: &'static str, key: &str, kind: &'static str, available: BTreeSet<&str>) -> ReportError {
    let closest = closest(key, available.iter().copied()).map(str::to_string);
    ReportError::UnknownKey {
        context: format!("{what}: {field}"),
        key: key.to_string(),
        kind,
        available: available.into_iter().map(str::to_string).collect(),
        closest,
    }
}

/// The candidate nearest to `key` by edit distance, if it is near enough to be a likely typo
/// (at most a third of the key's length, or the same last segment).
pub(crate) fn closest<'a>(key: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let (best, d) = candidates.map(|c| (c, edit_distance(key, c))).min_by_key(|&(_, d)| d)?;
    let near = d <= key.chars().count().max(3) / 3 || short_key(best) == short_key(key);
    near.then_some(best)
}

/// Levenshtein distance over chars.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn levels_sort_numbers_and_keep_string_order() {
        let lv = |vs: &[serde_json::Value]| {
            ordered_levels(vs.iter().map(|v| Level::of(Some(v)))).into_iter().map(|l| l.label).collect::<Vec<_>>()
        };
        assert_eq!(lv(&[json!(0.1), json!(0), json!(0.05), json!(1.0), json!(1)]), ["0", "0.05", "0.1", "1"]);
        assert_eq!(lv(&[json!("sft"), json!("booster"), json!("sft"), json!("lisa")]), ["sft", "booster", "lisa"]);
        assert_eq!(format_num(5e-4), "0.0005");
        assert_eq!(format_num(1e-8), "1e-8");
        assert_eq!(format_num(20.0), "20");
    }

    #[test]
    fn stats_use_sample_std() {
        let s = Stats::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.std, s.n), (2.0, Some(1.0), 3));
        assert_eq!(Stats::of(&[4.0]).unwrap().std, None);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn edit_distance_and_closest() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        let c = ["stage.align.method", "stage.attack.mix.1.ratio"];
        assert_eq!(closest("stage.align.methd", c.iter().copied()), Some("stage.align.method"));
        assert_eq!(closest("align.method", c.iter().copied()), Some("stage.align.method"));
        assert_eq!(closest("zzz", c.iter().copied()), None);
        assert_eq!(short_key("stage.attack.mix.1.ratio"), "ratio");
        assert_eq!(short_key("method"), "method");
    }
}
