//! Jailbreak attacks through the binary on the tiny fixture: a `gcg` stage writes one adversarial
//! prompt per AdvBench row (goal + optimised suffix, target kept) and logs every step, and an eval
//! stage reads the prompts as `@attack`.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{read_json as json, read_jsonl as jsonl};
use runner::model::TextTokenizer;

fn stage_dir(results: &Path, name: &str) -> PathBuf {
    let dirs = common::stage_dirs(results, name);
    assert_eq!(dirs.len(), 1, "{name}: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// The first two rows of the shipped AdvBench file: (goal, target).
fn advbench_rows() -> Vec<(String, String)> {
    let text = common::read_text(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/advbench/harmful_behaviors.csv"));
    text.lines()
        .skip(1)
        .take(2)
        .map(|l| {
            let (goal, target) = l.split_once(",\"").unwrap();
            (goal.to_string(), target.trim_end_matches('"').to_string())
        })
        .collect()
}

#[test]
fn gcg_writes_adversarial_prompts_that_an_eval_stage_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("results");
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tiny_gcg.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["run", spec.to_str().unwrap(), "--results", r.to_str().unwrap(), "--devices", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let attack = stage_dir(&r, "attack");
    let rows = advbench_rows();
    let written = jsonl(&attack.join("dataset.jsonl"));
    assert_eq!(written.len(), 2);
    let manifest = json(&attack.join("dataset.json"));
    assert_eq!((manifest["kind"].as_str(), manifest["records"].as_u64()), (Some("prompts"), Some(2)));
    assert_eq!(manifest["producer"]["method"], "gcg");

    // Each step of each prompt is logged; success tests at steps 2 and 3 (the last).
    let log = jsonl(&attack.join("log.jsonl"));
    assert_eq!(log.len(), 6);
    let tok = TextTokenizer::from_hf_dir(&common::tiny("llama_gqa")).unwrap();
    let chat = |user: &str| format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n");
    let mut final_losses = Vec::new();
    for (i, ((goal, target), rec)) in rows.iter().zip(&written).enumerate() {
        let steps: Vec<&serde_json::Value> = log.iter().filter(|s| s["prompt"] == i).collect();
        assert_eq!(steps.iter().map(|s| s["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(steps.iter().map(|s| s.get("success").is_some()).collect::<Vec<_>>(), [false, true, true]);
        assert!(steps.iter().all(|s| s["id"] == i.to_string() && s["candidates"].as_u64().unwrap() >= 1));
        assert!(steps.windows(2).all(|w| w[1]["best_loss"].as_f64() <= w[0]["best_loss"].as_f64()));
        assert!(steps.iter().all(|s| s["best_loss"].as_f64() <= s["loss"].as_f64()));
        // The written prompt is the goal with the last step's suffix (keep = "final").
        let prompt = rec["prompt"].as_str().unwrap();
        let suffix = steps[2]["suffix"].as_str().unwrap();
        assert_eq!(prompt, format!("{goal} {suffix}"));
        assert_ne!(suffix, "! ! ! ! !", "three steps changed the initial suffix");
        assert_eq!((rec["target"].as_str(), rec["id"].as_str()), (Some(target.as_str()), Some(i.to_string().as_str())));
        // same_length: rendered and tokenized again, the suffix still spans five tokens.
        let len = |text: &str| tok.encode(&chat(text), true).unwrap().len();
        assert_eq!(len(prompt), len(&format!("{goal} ! ! ! ! !")), "{prompt:?}");
        final_losses.push(steps[2]["loss"].as_f64().unwrap());
    }
    let m = json(&attack.join("metrics.json"));
    assert_eq!((m["prompts"].as_f64(), m["steps_mean"].as_f64()), (Some(2.0), Some(3.0)));
    assert!((m["final_loss_mean"].as_f64().unwrap() - (final_losses[0] + final_losses[1]) / 2.0).abs() < 1e-9);
    assert!(m["best_loss_mean"].as_f64() <= m["final_loss_mean"].as_f64());
    let successes = log.iter().filter(|s| s["step"] == 3 && s["success"] == true).count();
    assert_eq!(m["success_rate"].as_f64(), Some(successes as f64 / 2.0));

    // The eval stage asks the model the adversarial prompts.
    let eval = stage_dir(&r, "eval");
    let records = jsonl(&eval.join("outputs.jsonl"));
    let asked: Vec<&str> = records.iter().map(|x| x["record"]["prompt"].as_str().unwrap()).collect();
    let prompts: Vec<&str> = written.iter().map(|x| x["prompt"].as_str().unwrap()).collect();
    assert_eq!(asked, prompts);
    let stage: toml::Table = common::read_text(&eval.join("stage.toml")).parse().unwrap();
    assert_eq!(stage["inputs"]["attack"].as_str(), attack.file_name().unwrap().to_str());
}
