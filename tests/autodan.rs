//! AutoDAN-GA through the binary on the tiny fixture: the attack stage writes one prompt per goal
//! (the final best user message, with the goal's target), a step log whose losses are the
//! target's mean cross-entropy after the rendered prompt, and an eval stage reads its prompts.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use candle_core::{DType, Device};
use common::{read_json as json, read_jsonl as jsonl};
use runner::eval::generation::PromptFormat;
use runner::eval::multiple_choice::{encode_split, Specials};
use runner::model::chat::Conversation;
use runner::model::{load, score_continuations, LoadOptions};

fn stage_dir(results: &Path, name: &str) -> PathBuf {
    let dirs = common::stage_dirs(results, name);
    assert_eq!(dirs.len(), 1, "{name}: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

#[test]
fn autodan_writes_one_evolved_prompt_per_goal_and_an_eval_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("results");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let spec = root.join("tests/specs/tiny_autodan.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(&root)
        .args(["run", spec.to_str().unwrap(), "--results", r.to_str().unwrap(), "--devices", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let attack = stage_dir(&r, "attack");
    let m = json(&attack.join("metrics.json"));
    assert_eq!((m["prompts"].as_f64(), m["mean_steps"].as_f64()), (Some(2.0), Some(2.0)));
    let success = m["attack_success"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&success));

    // The goals as the CSV has them.
    let csv = std::fs::read_to_string(root.join("data/advbench/harmful_behaviors.csv")).unwrap();
    let rows: Vec<(String, String)> = csv
        .lines()
        .skip(1)
        .take(2)
        .map(|l| {
            let (goal, target) = l.split_once(",\"").unwrap();
            (goal.to_string(), target.trim_end_matches('"').to_string())
        })
        .collect();

    let dataset = jsonl(&attack.join("dataset.jsonl"));
    let records = jsonl(&attack.join("outputs.jsonl"));
    let log = jsonl(&attack.join("log.jsonl"));
    assert_eq!((dataset.len(), records.len(), log.len()), (2, 2, 4));
    assert_eq!(json(&attack.join("dataset.json"))["records"], 2);
    let prototype = std::fs::read_to_string(root.join("tests/fixtures/autodan/prototype_short.txt")).unwrap();

    let lm = load(
        root.join("tests/fixtures/tiny/llama_gqa").to_str().unwrap(),
        &LoadOptions { device: Device::Cpu, dtype: DType::F32, trainable: false },
    )
    .unwrap();
    let format = PromptFormat::Chat.chat_format(&lm).unwrap();
    for (i, (goal, target)) in rows.iter().enumerate() {
        let d = &dataset[i];
        let rec = &records[i];
        // Self-Correction's rendering: the candidate (ending " [PROMPT]:"), the goal, a space.
        let prompt = d["prompt"].as_str().unwrap();
        assert!(prompt.ends_with(&format!(" [PROMPT]: {goal} ")), "{prompt}");
        assert!(!prompt.contains("ChatGPT"), "{prompt}");
        assert_eq!(d["target"].as_str(), Some(target.as_str()));
        assert_eq!(d["id"].as_str(), Some(i.to_string().as_str()));
        assert_eq!(rec["prompt"].as_str(), Some(prompt));
        assert_eq!((rec["goal"].as_str(), rec["row"].as_u64(), rec["steps"].as_u64()), (Some(goal.as_str()), Some(i as u64), Some(2)));

        // Two steps of this goal; only the last is tested (eval_every = 10).
        let steps: Vec<&serde_json::Value> = log.iter().filter(|s| s["prompt"] == i).collect();
        assert_eq!(steps.iter().map(|s| s["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1]);
        assert!(steps[0].get("success").is_none() && steps[0].get("response").is_none());
        assert_eq!(steps[1]["success"], rec["success"]);
        assert_eq!(steps[1]["response"], rec["response"]);
        for s in &steps {
            assert!(s["best_loss"].as_f64().unwrap() <= s["mean_loss"].as_f64().unwrap() + 1e-12);
            assert!(s["best_loss"].as_f64().unwrap() > 0.0);
        }
        // The first generation are synonym-mutated copies of the prototype, " [PROMPT]:" appended:
        // the same paragraphs and sentence ends.
        let best0 = steps[0]["best"].as_str().unwrap();
        assert!(best0.ends_with(" [PROMPT]:"));
        assert_eq!(best0.matches("\n\n").count(), prototype.matches("\n\n").count(), "{best0}");
        assert_eq!(best0.matches(". ").count(), prototype.matches(". ").count() + 1, "{best0}");
        // The last step's best, rendered with the goal, is the written prompt, and its loss is the
        // target's mean cross-entropy after the chat-rendered prompt, scored here without the
        // shared-prefix cache.
        let best1 = steps[1]["best"].as_str().unwrap();
        assert_eq!(format!("{best1} {goal} "), prompt);
        let context = format.render(&Conversation::user(prompt)).unwrap();
        let request = encode_split(&lm.tokenizer, &context, target, Specials::TokenizerDefault).unwrap();
        let score = score_continuations(&lm.model, &[request], 1, lm.tokenizer.pad_id()).unwrap()[0];
        let loss = -score.logprob / score.num_tokens as f64;
        let logged = steps[1]["best_loss"].as_f64().unwrap();
        assert!((loss - logged).abs() < 1e-4, "loss {loss} vs logged {logged}");
        assert_eq!(rec["loss"].as_f64(), Some(logged));
    }

    // The eval stage judged one answer per attack prompt.
    let eval = stage_dir(&r, "eval");
    let outputs = jsonl(&eval.join("outputs.jsonl"));
    assert_eq!(outputs.len(), 2);
    let score = json(&eval.join("metrics.json"));
    assert!(score.as_object().unwrap().keys().any(|k| k.contains("harmful_score")), "{score}");
}
