//! The real `runner` binary on the judge pipeline in miniature (tests/specs/tiny_judges.toml):
//! a `classifier` train stage, then an eval stage whose trained judge is found through the
//! planner's stage inputs; and spec errors for judges.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_runner")).current_dir(env!("CARGO_MANIFEST_DIR")).args(args).output().unwrap();
    eprintln!("runner {args:?}\nstdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn spec() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tiny_judges.toml")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stage_dir(results: &Path, name: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(results.join("stages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{name}-")))
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[test]
fn trained_refusal_classifier_and_llm_judges_run_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("r");
    let out = run(&["run", spec().to_str().unwrap(), "--results", res.to_str().unwrap(), "--devices", "cpu"]);
    assert!(out.status.success());

    let judge = stage_dir(&res, "judge");
    for f in ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", "score.safetensors", "classifier.json", "lineage.json"] {
        assert!(judge.join(f).is_file(), "{f} missing");
    }
    let head = candle_core::safetensors::load(judge.join("score.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(head["score.weight"].dims(), &[2, 64]);
    assert_eq!(head["score.center"].dims(), &[64]);
    let lineage: serde_json::Value = serde_json::from_str(&read(&judge.join("lineage.json"))).unwrap();
    assert_eq!(lineage["adapters"], serde_json::json!([]), "the judge does not change the pipeline's model");
    let info: serde_json::Value = serde_json::from_str(&read(&judge.join("classifier.json"))).unwrap();
    assert_eq!(info["labels"], serde_json::json!(["safe", "unsafe"]));
    assert!(info["template"].as_str().unwrap().starts_with("BEGINNING OF CONVERSATION"));
    assert_eq!(read(&judge.join("log.jsonl")).lines().count(), 3, "max_steps = 3");

    let eval = stage_dir(&res, "eval");
    let plan: serde_json::Value = serde_json::from_str(&read(&res.join("plan.json"))).unwrap();
    let eval_plan = plan["stages"].as_array().unwrap().iter().find(|s| s["config"]["name"] == "eval").unwrap();
    let judge_id = judge.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(eval_plan["config"]["inputs"]["judge"], serde_json::json!(judge_id), "judge.stage is a stage input");
    // The classifier judge's relative model path is made absolute in the stage's parameters.
    let judge_model = eval_plan["config"]["params"]["metrics"][2]["judge"]["model"].as_str().unwrap();
    assert!(Path::new(judge_model).is_absolute() && judge_model.ends_with("tests/fixtures/tiny/llama_seqcls"), "{judge_model}");

    let m: serde_json::Value = serde_json::from_str(&read(&eval.join("metrics.json"))).unwrap();
    for prefix in ["trained_judge", "refusal_judge", "classifier_judge"] {
        for k in ["acc", "precision", "recall", "f1", "flagged", "unsafe_share", "n"] {
            assert!(m[format!("{prefix}_{k}")].is_number(), "{prefix}_{k} missing in {m}");
        }
        assert_eq!(m[format!("{prefix}_n")], 6.0);
        assert_eq!(m[format!("{prefix}_unsafe_share")], 50.0);
    }
    for k in ["hs_trained", "hs_llm"] {
        let v = m[k].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&v), "{k} = {v}");
    }
    let outputs = read(&eval.join("outputs.jsonl"));
    assert_eq!(outputs.lines().count(), 3 * 6 + 2 * 2);
    let first: serde_json::Value = serde_json::from_str(outputs.lines().next().unwrap()).unwrap();
    assert_eq!(first["metric"], "judge_accuracy");
    for k in ["prompt", "response", "is_safe", "flagged", "score", "reason", "correct"] {
        assert!(first["record"].get(k).is_some(), "record lacks {k}: {first}");
    }
    let llm_line = outputs.lines().last().unwrap();
    assert!(llm_line.contains("guard output"), "{llm_line}");
}

#[test]
fn judge_spec_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let text = read(&spec());
    let cases = [
        (r#"judge = { kind = "trained", stage = "judge" }"#, r#"judge = { kind = "trained", stage = "nope" }"#, "`@nope`"),
        (r#"judge = { kind = "trained", stage = "judge" }"#, r#"judge = { kind = "trained" }"#, "metrics.0.judge.stage"),
        (r#"judge = { kind = "refusal" }"#, r#"judge = { kind = "refusal", threshold = 0.5 }"#, "metrics.1.judge.threshold"),
        (r#"judge = { kind = "refusal" }"#, r#"judge = { kind = "refusl" }"#, "refusal"),
        ("max_steps = 3", "max_steps = 3\nrho = 1.0", "rho"),
        ("max_len = 64", "max_len = 1", "max_len"),
    ];
    for (i, (from, to, want)) in cases.iter().enumerate() {
        assert!(text.contains(from), "{from}");
        let path = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let out = run(&["plan", path.to_str().unwrap(), "--results", tmp.path().join("r").to_str().unwrap()]);
        assert!(!out.status.success(), "case {i} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "case {i}: {want:?} not in {err}");
    }
}
