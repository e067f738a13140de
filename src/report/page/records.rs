//! Per-sample records of eval stages (`outputs.jsonl`) and generate stages (`dataset.jsonl`),
//! for the page's sample browser: one script per stage, `page/records/<stage-id>.js`, which calls
//! the page's global `runnerRecords(stageId, samples)` when a `<script>` tag loads it. Browsers
//! refuse `fetch()` of `file://` URLs but run scripts from them, and loading one stage at a time
//! keeps the page quick with 100,000 records.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::script::js_value;
use crate::report::ReportError;

/// Where the record scripts live, relative to the results directory (and the page).
pub const RECORDS_DIR: &str = "page/records";

/// What the page knows of a stage's records before loading them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordsSummary {
    /// The script, relative to the page (`page/records/<stage-id>.js`).
    pub file: String,
    pub count: usize,
    /// The metrics of the records (eval stages), in order of first appearance.
    pub metrics: Vec<String>,
    /// The verdicts that occur (`harmful`, `correct`, ...), sorted.
    pub verdicts: Vec<String>,
}

/// One record as the browser shows it (short keys: 100,000 of them are in one file).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The metric (eval records; empty for a generate stage's).
    pub m: String,
    /// The dataset the record comes from (eval records).
    pub d: String,
    /// The prompt (`prompt`, `context`, or `instruction` with its `input`).
    pub p: String,
    /// The response (`response`, `output`, or `chosen`); for judged records the text the judge saw.
    pub r: String,
    /// The response before the judge's stripping, where the record keeps both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The verdict: `harmful`/`harmless`, `correct`/`wrong`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v: Option<String>,
    /// The judge's score (or reward, ROUGE-L).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s: Option<f64>,
    /// Every other field of the record.
    pub x: Map<String, Value>,
}

/// A record line as its stage wrote it: eval stages wrap each record as
/// `{"metric", "data", "record"}`; generate stages write the record itself.
pub fn sample_of(line: Value) -> Sample {
    let (m, d, record) = match line {
        Value::Object(mut o) if o.contains_key("record") && o.contains_key("metric") => {
            let text = |v: Option<Value>| match v {
                Some(Value::String(s)) => s,
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            let m = text(o.remove("metric"));
            let d = text(o.remove("data"));
            (m, d, o.remove("record").unwrap_or(Value::Null))
        }
        other => (String::new(), String::new(), other),
    };
    let mut x = match record {
        Value::Object(o) => o,
        other => Map::from_iter([("value".to_string(), other)]),
    };
    let mut take = |keys: &[&str]| {
        keys.iter().find_map(|k| match x.get(*k) {
            Some(Value::String(_)) => x.remove(*k).and_then(|v| v.as_str().map(str::to_string)),
            _ => None,
        })
    };
    let p = match take(&["prompt", "context"]) {
        Some(p) => p,
        None => {
            let instruction = take(&["instruction"]).unwrap_or_default();
            match take(&["input"]) {
                Some(input) if !input.is_empty() => format!("{instruction}\n\n{input}"),
                _ => instruction,
            }
        }
    };
    let r = take(&["response", "output", "chosen"]).unwrap_or_default();
    let raw = take(&["raw_response"]);
    let v = verdict(&x);
    let s = ["score", "reward", "rouge_l"].iter().find_map(|k| x.get(*k).and_then(Value::as_f64));
    Sample { m, d, p, r, raw, v, s, x }
}

/// The record's verdict, from the field that carries it.
fn verdict(x: &Map<String, Value>) -> Option<String> {
    let flag = |key: &str, yes: &str, no: &str| x.get(key).and_then(Value::as_bool).map(|b| if b { yes } else { no }.to_string());
    flag("harmful", "harmful", "harmless")
        .or_else(|| flag("correct", "correct", "wrong"))
        .or_else(|| x.get("acc").and_then(Value::as_f64).map(|a| if a >= 1.0 { "correct" } else { "wrong" }.to_string()))
}

/// Reads a stage's records file (one JSON object a line; blank lines skipped). A malformed
/// line is an error naming the file and line.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>, ReportError> {
    let file = std::fs::File::open(path).map_err(|e| ReportError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ReportError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).map_err(|e| ReportError::Records { path: path.to_path_buf(), line: i + 1, msg: e.to_string() })?;
        out.push(sample_of(value));
    }
    Ok(out)
}

/// The records script of a stage: `runnerRecords("<id>", [...]);`.
pub fn records_script(stage_id: &str, samples: &[Sample]) -> Result<String, serde_json::Error> {
    Ok(format!("runnerRecords({}, {});\n", js_value(stage_id)?, js_value(samples)?))
}

/// Writes `page/records/<stage-id>.js` (and its summary beside it, `<stage-id>.json`) under
/// `root` from the stage's records file `source`, unless both are already newer than it: a
/// refresh during a sweep rewrites only the stages that finished since.
pub fn write_stage_records(root: &Path, stage_id: &str, source: &Path) -> Result<RecordsSummary, ReportError> {
    let file = format!("{RECORDS_DIR}/{stage_id}.js");
    let script = root.join(&file);
    let summary_path = root.join(RECORDS_DIR).join(format!("{stage_id}.json"));
    if is_newer(&script, source) && is_newer(&summary_path, source) {
        if let Ok(summary) = read_summary(&summary_path) {
            if summary.file == file {
                return Ok(summary);
            }
        }
    }
    let samples = read_samples(source)?;
    let mut metrics: Vec<String> = Vec::new();
    let mut verdicts: Vec<String> = Vec::new();
    for s in &samples {
        if !s.m.is_empty() && !metrics.contains(&s.m) {
            metrics.push(s.m.clone());
        }
        if let Some(v) = &s.v {
            if !verdicts.contains(v) {
                verdicts.push(v.clone());
            }
        }
    }
    verdicts.sort();
    let summary = RecordsSummary { file, count: samples.len(), metrics, verdicts };
    let json_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Json { path, source }
    };
    let text = records_script(stage_id, &samples).map_err(json_err(&script))?;
    crate::util::write_atomic(&script, text.as_bytes()).map_err(|e| ReportError::io(&script, e))?;
    let bytes = serde_json::to_vec(&summary).map_err(json_err(&summary_path))?;
    crate::util::write_atomic(&summary_path, &bytes).map_err(|e| ReportError::io(&summary_path, e))?;
    Ok(summary)
}

fn read_summary(path: &Path) -> Result<RecordsSummary, ReportError> {
    let bytes = std::fs::read(path).map_err(|e| ReportError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| ReportError::Json { path: PathBuf::from(path), source })
}

/// Whether `path` exists and was modified no earlier than `than`.
fn is_newer(path: &Path, than: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(path), modified(than)), (Some(a), Some(b)) if a >= b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn eval_records_get_prompt_response_verdict_and_score() {
        let s = sample_of(json!({"metric": "harmful_score", "data": "bt", "record": {
            "prompt": "How?", "response": "No.", "harmful": false, "score": 0.25, "reason": "refusal", "raw_response": "No.</s>"}}));
        assert_eq!((s.m.as_str(), s.d.as_str(), s.p.as_str(), s.r.as_str()), ("harmful_score", "bt", "How?", "No."));
        assert_eq!(s.raw.as_deref(), Some("No.</s>"));
        assert_eq!((s.v.as_deref(), s.s), (Some("harmless"), Some(0.25)));
        assert_eq!(s.x.get("reason"), Some(&json!("refusal")));
        assert!(!s.x.contains_key("prompt") && !s.x.contains_key("response"));

        let mc =
            sample_of(json!({"metric": "multiple_choice", "data": "hhh", "record": {"context": "Q", "choices": ["a", "b"], "acc": 0.0}}));
        assert_eq!((mc.p.as_str(), mc.r.as_str(), mc.v.as_deref()), ("Q", "", Some("wrong")));
        let acc = sample_of(
            json!({"metric": "finetune_accuracy", "data": "sst2", "record": {"prompt": "p", "response": "positive", "correct": true}}),
        );
        assert_eq!(acc.v.as_deref(), Some("correct"));
    }

    #[test]
    fn generate_records_join_instruction_and_input() {
        let s = sample_of(json!({"instruction": "Summarize", "input": "text", "output": "sum", "label": null}));
        assert_eq!((s.m.as_str(), s.p.as_str(), s.r.as_str(), s.v), ("", "Summarize\n\ntext", "sum", None));
        let s = sample_of(json!({"instruction": "Hi", "input": "", "output": "Hello"}));
        assert_eq!(s.p, "Hi");
    }

    #[test]
    fn stage_script_is_escaped_counted_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("outputs.jsonl");
        let lines = [
            json!({"metric": "harmful_score", "data": "bt", "record": {"prompt": "</script><script>alert(1)</script>", "response": "é😀", "harmful": true, "score": 1.0}}),
            json!({"metric": "finetune_accuracy", "data": "sst2", "record": {"prompt": "p", "response": "r", "correct": false}}),
        ];
        let text: String = lines.iter().map(|l| format!("{l}\n\n")).collect();
        std::fs::write(&source, text).unwrap();
        let root = dir.path().join("results");
        let summary = write_stage_records(&root, "eval-abc", &source).unwrap();
        assert_eq!(summary.file, "page/records/eval-abc.js");
        assert_eq!(
            (summary.count, summary.metrics.clone(), summary.verdicts.clone()),
            (2, vec!["harmful_score".into(), "finetune_accuracy".into()], vec!["harmful".into(), "wrong".into()])
        );
        let script = std::fs::read_to_string(root.join(&summary.file)).unwrap();
        assert!(script.is_ascii() && !script.contains("</script"), "{script}");
        let body = script.strip_prefix("runnerRecords(\"eval-abc\", ").and_then(|s| s.strip_suffix(");\n")).unwrap();
        let back: Value = serde_json::from_str(body).unwrap();
        assert_eq!(back[0]["p"], "</script><script>alert(1)</script>");
        assert_eq!(back[0]["r"], "é😀");
        assert_eq!(back[1]["v"], "wrong");

        // Unchanged source: the summary is reused (a marker in it survives); a newer source rewrites.
        let summary_path = root.join("page/records/eval-abc.json");
        let mut marked = summary.clone();
        marked.verdicts = vec!["cached".into()];
        std::fs::write(&summary_path, serde_json::to_vec(&marked).unwrap()).unwrap();
        assert_eq!(write_stage_records(&root, "eval-abc", &source).unwrap().verdicts, ["cached"]);
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&source).unwrap().set_modified(later).unwrap();
        assert_eq!(write_stage_records(&root, "eval-abc", &source).unwrap(), summary);
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("outputs.jsonl");
        std::fs::write(&source, "{\"a\": 1}\n{\"a\": \n").unwrap();
        let e = write_stage_records(dir.path(), "s", &source).unwrap_err().to_string();
        assert!(e.contains("outputs.jsonl") && e.contains("line 2"), "{e}");
    }
}
