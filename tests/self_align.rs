//! SELF-ALIGN (Dromedary v1) stages 1 and 2 through the binary on the tiny fixture:
//! `self_instruct`, `tgrt_topics`, `tgrt_questions` and `principle_align` write their records,
//! manifests (who made them, with which prompt files) and per-filter counts. The random model writes garbage, so most generations are
//! dropped; the test checks that the counts agree with the raw generations and with each other.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{read_json as json, read_jsonl as jsonl, read_text as read};

/// The one stage directory of stage `name`.
fn stage_dir(results: &Path, name: &str) -> PathBuf {
    let dirs = common::stage_dirs(results, name);
    assert_eq!(dirs.len(), 1, "{name}: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

fn count(m: &serde_json::Value, key: &str) -> usize {
    let v = m[key].as_f64().unwrap_or_else(|| panic!("metric {key} missing in {m}"));
    assert!(v >= 0.0 && v.fract() == 0.0, "{key} = {v}");
    v as usize
}

/// The producer of a stage's dataset names the method, the model and the shipped files it used.
fn check_producer(dir: &Path, method: &str, components: &[&str]) {
    let manifest = json(&dir.join("dataset.json"));
    let producer = &manifest["producer"];
    assert_eq!(producer["method"], method);
    assert_eq!(producer["seed"], 0);
    assert!(producer["model"].as_str().unwrap().ends_with("tests/fixtures/tiny/llama_gqa"));
    for c in components {
        assert_eq!(producer["components"][c], 1, "{method}: component {c} in {producer}");
    }
    assert_eq!(manifest["records"].as_u64().unwrap() as usize, jsonl(&dir.join("dataset.jsonl")).len());
}

#[test]
fn stages_one_and_two_run_end_to_end_with_consistent_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("results");
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tiny_self_align.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["run", spec.to_str().unwrap(), "--results", r.to_str().unwrap(), "--devices", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seed_ids: HashSet<String> = read(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/dromedary/self_instruct_seed_tasks.jsonl")))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    let types: HashSet<String> = read(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/dromedary/tgrt_seed_questions.jsonl")))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types.len(), 20);

    // Self-Instruct: 3 queries at most (2 + 1), each with 5 distinct seed tasks.
    let dir = stage_dir(&r, "instruct");
    let m = json(&dir.join("metrics.json"));
    let queries = jsonl(&dir.join("outputs.jsonl"));
    let records = jsonl(&dir.join("dataset.jsonl"));
    assert_eq!(count(&m, "queries"), queries.len());
    assert!(queries.len() <= 3);
    if count(&m, "kept") < 4 {
        assert_eq!(queries.len(), 3, "no early stop before 4 tasks were kept");
    }
    let mut pieces = 0;
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    for (i, q) in queries.iter().enumerate() {
        assert_eq!(q["query"], i);
        let shown: Vec<&str> = q["seed_tasks"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert_eq!(shown.len(), 5);
        assert_eq!(shown.iter().collect::<HashSet<_>>().len(), 5);
        assert!(shown.iter().all(|s| seed_ids.contains(*s)));
        assert!(q["sampling_seed"].is_u64());
        // Every "###" of the generation closes one piece (the text after the last is dropped).
        let response = q["response"].as_str().unwrap();
        assert_eq!(q["pieces"].as_array().unwrap().len(), response.matches("###").count());
        for p in q["pieces"].as_array().unwrap() {
            pieces += 1;
            *verdicts.entry(p["verdict"].as_str().unwrap().to_string()).or_default() += 1;
            if let Some(rec) = p["record"].as_u64() {
                assert_eq!(p["verdict"], "kept");
                assert_eq!(records[rec as usize]["instruction"], p["instruction"]);
            }
        }
    }
    assert_eq!(count(&m, "pieces"), pieces);
    let drops =
        ["unparsed", "too_few_words", "too_many_words", "blacklist", "punctuation_start", "non_ascii_start", "rouge_l", "duplicate"];
    let dropped: usize = drops.iter().map(|d| count(&m, &format!("dropped_{d}"))).sum();
    assert_eq!(count(&m, "kept") + dropped, pieces);
    assert_eq!(count(&m, "kept"), records.len());
    for d in drops {
        assert_eq!(verdicts.get(d).copied().unwrap_or(0), count(&m, &format!("dropped_{d}")), "{d}");
    }
    let report = json(&dir.join("filter.json"));
    assert_eq!((report["input"].as_u64(), report["kept"].as_u64()), (Some(pieces as u64), Some(records.len() as u64)));
    assert!(records.iter().all(|x| x["output"] == "" && x["instruction"].as_str().unwrap().split_whitespace().count() > 3));
    check_producer(
        &dir,
        "self_instruct",
        &["prompt:data/templates/dromedary_self_instruct_prompt.txt", "seed_tasks:data/dromedary/self_instruct_seed_tasks.jsonl"],
    );

    // TGRT topics: 20 seed topics, two rounds, every line accounted for, types balanced.
    let dir = stage_dir(&r, "topics");
    let m = json(&dir.join("metrics.json"));
    let queries = jsonl(&dir.join("outputs.jsonl"));
    let topics = jsonl(&dir.join("dataset.jsonl"));
    assert_eq!(count(&m, "queries"), queries.len());
    assert_eq!(queries.iter().filter(|q| q["round"] == 0).count(), 20, "round 0 asks once per seed topic");
    let round1 = queries.iter().filter(|q| q["round"] == 1).count();
    assert!((20..=40).contains(&round1), "at most 2 topics per type carried into round 1: {round1}");
    let mut lines = 0;
    for q in &queries {
        let response = q["response"].as_str().unwrap();
        let n = q["lines"].as_array().unwrap().len();
        assert_eq!(n, response.split('\n').count().min(20));
        lines += n;
        assert!(types.contains(q["question_type"].as_str().unwrap()));
        assert_eq!(q["listed"].as_array().unwrap().len(), 1, "fewer than 10 topics: one listed");
    }
    assert_eq!(count(&m, "lines"), lines);
    let line_drops: usize =
        ["too_long", "empty", "not_capitalized", "ends_with_punctuation"].iter().map(|d| count(&m, &format!("dropped_{d}"))).sum();
    assert_eq!(count(&m, "candidates") + line_drops, lines);
    assert_eq!(count(&m, "seed_topics"), 20);
    let pruned = count(&m, "dropped_duplicate") + count(&m, "dropped_balance") + count(&m, "dropped_over_cap");
    assert_eq!(count(&m, "seed_topics") + count(&m, "candidates"), count(&m, "kept") + pruned);
    assert_eq!(count(&m, "kept"), topics.len());
    let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &topics {
        let topic = t["prompt"].as_str().unwrap();
        assert!(topic.starts_with(|c: char| c.is_ascii_uppercase()) && topic.split_whitespace().count() <= 3, "{topic:?}");
        *per_type.entry(t["category"].as_str().unwrap()).or_default() += 1;
    }
    assert_eq!(per_type.len(), 20);
    assert!(per_type.values().all(|&n| n == count(&m, "kept_per_type")), "balanced: {per_type:?}");
    assert_eq!(jsonl(&dir.join("log.jsonl")).len(), 2, "one log line per round");
    check_producer(
        &dir,
        "tgrt_topics",
        &["prompt:data/templates/dromedary_tgrt_topic_brainstorm_prompt.txt", "seed_questions:data/dromedary/tgrt_seed_questions.jsonl"],
    );

    // TGRT questions: the topics 5 at a time; every line before the last is a question for a
    // hint, or not; one question per (topic, type).
    let dir = stage_dir(&r, "questions");
    let m = json(&dir.join("metrics.json"));
    let queries = jsonl(&dir.join("outputs.jsonl"));
    let questions = jsonl(&dir.join("dataset.jsonl"));
    assert_eq!(count(&m, "topics"), topics.len());
    assert_eq!(count(&m, "queries"), topics.len().div_ceil(5));
    assert_eq!(queries.len(), count(&m, "queries"));
    let mut lines = 0;
    for q in &queries {
        assert_eq!(q["examples"].as_array().unwrap().len(), 5);
        assert!(q["hints"].as_array().unwrap().len() <= 5);
        let n = q["lines"].as_array().unwrap().len();
        assert!(n <= q["response"].as_str().unwrap().trim().matches('\n').count());
        lines += n;
        for l in q["lines"].as_array().unwrap() {
            if let Some(rec) = l["record"].as_u64() {
                assert_eq!(questions[rec as usize]["instruction"], l["instruction"]);
            }
        }
    }
    assert_eq!(count(&m, "lines"), lines);
    assert_eq!(count(&m, "candidates") + count(&m, "dropped_no_hint"), lines);
    assert_eq!(count(&m, "kept") + count(&m, "dropped_duplicate"), count(&m, "candidates"));
    assert_eq!(count(&m, "kept"), questions.len());
    assert!(questions.iter().all(|x| types.contains(x["label"].as_str().unwrap())));
    check_producer(
        &dir,
        "tgrt_questions",
        &["prompt:data/templates/dromedary_tgrt_question_generation_prompt.txt", "seed_questions:data/dromedary/tgrt_seed_questions.jsonl"],
    );
    let stage: toml::Table = read(&dir.join("stage.toml")).parse().unwrap();
    assert_eq!(stage["inputs"]["topics"].as_str(), stage_dir(&r, "topics").file_name().unwrap().to_str());

    // Principle-driven self-alignment: the instructions of the three datasets in order, the first
    // 9 of them, answered in batches of 4; every query gets one verdict; the identity
    // conversations join the kept answers, shuffled.
    let instruct = jsonl(&stage_dir(&r, "instruct").join("dataset.jsonl"));
    let dir = stage_dir(&r, "aligned");
    let m = json(&dir.join("metrics.json"));
    let queries = jsonl(&dir.join("outputs.jsonl"));
    let aligned = jsonl(&dir.join("dataset.jsonl"));
    let sources: Vec<(&str, usize)> = [("@instruct", instruct.len()), ("@questions", questions.len()), ("alpaca", 4)]
        .into_iter()
        .flat_map(|(name, n)| (0..n).map(move |i| (name, i)))
        .collect();
    assert_eq!(count(&m, "available"), sources.len());
    assert_eq!(count(&m, "queries"), sources.len().min(9));
    assert_eq!(queries.len(), count(&m, "queries"));
    let drops = ["no_internal_thought", "no_watson_turn", "too_short", "blacklist", "sorry_start", "empty"];
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    for (i, q) in queries.iter().enumerate() {
        assert_eq!(q["query"], i);
        assert_eq!((q["source"].as_str().unwrap(), q["source_index"].as_u64().unwrap() as usize), sources[i]);
        let seed = q["sampling_seed"].as_u64().unwrap();
        assert_eq!(seed, queries[0]["sampling_seed"].as_u64().unwrap() + (i / 4) as u64, "seed + batch index");
        let verdict = q["verdict"].as_str().unwrap();
        *verdicts.entry(verdict.to_string()).or_default() += 1;
        let response = q["response"].as_str().unwrap();
        let merged = response.strip_prefix(' ').unwrap_or(response);
        assert_eq!(verdict == "no_internal_thought", !merged.starts_with("I am a helpful, ethical, and reliable assistant."), "{q}");
        match q["record"].as_u64() {
            Some(rec) => {
                assert_eq!(verdict, "kept");
                let rec = &aligned[rec as usize];
                assert!(!rec["output"].as_str().unwrap().is_empty() && !rec["output"].as_str().unwrap().contains("Watson"));
            }
            None => assert!(drops.contains(&verdict), "{verdict}"),
        }
    }
    for d in drops {
        assert_eq!(verdicts.get(d).copied().unwrap_or(0), count(&m, &format!("dropped_{d}")), "{d}");
    }
    let kept = count(&m, "kept");
    assert_eq!(verdicts.get("kept").copied().unwrap_or(0), kept);
    assert_eq!(kept + drops.iter().map(|d| count(&m, &format!("dropped_{d}"))).sum::<usize>(), queries.len());
    assert_eq!(count(&m, "dummies"), 910);
    assert_eq!(count(&m, "records"), kept + 910);
    assert_eq!(aligned.len(), kept + 910);
    let report = json(&dir.join("filter.json"));
    assert_eq!((report["input"].as_u64(), report["kept"].as_u64()), (Some(queries.len() as u64), Some(kept as u64)));
    // The identity conversations: every first question is there, renamed, in shuffled order.
    let dummy: Vec<serde_json::Value> =
        serde_json::from_str(&read(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/dromedary/vicuna_dummy_data.json")))).unwrap();
    let mut questions_asked: Vec<&str> = dummy.iter().map(|d| d["conversations"][0]["value"].as_str().unwrap()).collect();
    let in_order: Vec<&str> = aligned.iter().map(|x| x["instruction"].as_str().unwrap()).collect();
    assert_ne!(in_order.iter().filter(|x| questions_asked.contains(x)).copied().collect::<Vec<_>>(), questions_asked);
    let mut dummies_found: Vec<&str> = aligned
        .iter()
        .filter(|x| x["output"].as_str().unwrap().contains("Self-Align team"))
        .map(|x| x["instruction"].as_str().unwrap())
        .collect();
    questions_asked.sort_unstable();
    dummies_found.sort_unstable();
    assert_eq!(dummies_found, questions_asked);
    assert!(aligned.iter().all(|x| x["input"] == "" || kept > 0));
    assert!(aligned.iter().all(|x| !x["output"].as_str().unwrap().contains("Vicuna") && !x["output"].as_str().unwrap().contains("LMSYS")));
    check_producer(
        &dir,
        "principle_align",
        &["prompt:data/templates/dromedary_watson_self_align_prompt.txt", "dummy:data/dromedary/vicuna_dummy_data.json"],
    );
    let stage: toml::Table = read(&dir.join("stage.toml")).parse().unwrap();
    for input in ["instruct", "questions"] {
        assert_eq!(stage["inputs"][input].as_str(), stage_dir(&r, input).file_name().unwrap().to_str(), "{input}");
    }
}
