//! Mistake analysis (reconstructed) end to end: the CPU spec keeps its evaluation prompts apart
//! from everything a train or generate stage reads, and the tiny spec's rows run through the
//! binary: induction with the hint, guided analysis written as unguided-analysis data, others'
//! mistakes, Critique-Revise's two rounds, CoH's feedback sequences, the skipped base row, and
//! each method's inference strategy in the eval records.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{
    dataset_prompts as prompts, plan_spec as plan, read_json as json, read_jsonl as jsonl, read_text as read, stage_dataset as load,
};
use runner::data::{self, DataSpec, Items};
use runner::plan::PlannedStage;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_cpu_spec_evaluates_on_prompts_no_stage_learns_from() {
    let plan = plan("experiments/mistake_analysis_cpu.toml");
    // Every dataset a generate or train stage reads (the red-team prompts the mistakes are
    // induced on, the safe answers, the pairs, the Alpaca examples).
    let mut learned = BTreeSet::new();
    for stage in plan.stages.iter().filter(|s| ["induce", "review", "critique", "train"].contains(&s.config.name.as_str())) {
        for name in stage.config.data.keys() {
            learned.extend(prompts(&load(stage, name)));
        }
    }
    assert!(learned.len() >= 16 + 32, "{}", learned.len());
    let evals: Vec<&PlannedStage> = plan.stages.iter().filter(|s| s.config.name.starts_with("eval")).collect();
    assert_eq!(evals.len(), 21 + 9, "7 rows x 3 seeds, and a second harmful rate for the 3 rows with an inference of their own");
    for stage in evals {
        for name in stage.config.data.keys() {
            let held_out = prompts(&load(stage, name));
            assert!(!held_out.is_empty());
            let shared: Vec<&String> = held_out.iter().filter(|p| learned.contains(*p)).collect();
            assert!(shared.is_empty(), "`{name}` prompts that a stage learns from: {shared:?}");
        }
    }
    // The discrimination check has a fixed seed: one stage for every run and seed.
    let checks: Vec<&PlannedStage> = plan.stages.iter().filter(|s| s.config.name == "discriminate").collect();
    assert_eq!(checks.len(), 1);
    assert_eq!((checks[0].config.seed, checks[0].runs.len()), (0, 21));
    // The base row trains nothing: its eval stage starts from the base model.
    let base = plan.runs.iter().filter(|r| r.params["experiment.label"] == "Base (no training)").collect::<Vec<_>>();
    assert_eq!(base.len(), 3);
    for run in base {
        let stages: Vec<&PlannedStage> = run.stages.iter().map(|id| plan.stages.iter().find(|s| &s.id == id).unwrap()).collect();
        assert!(stages.iter().all(|s| s.config.name != "train"));
        assert_eq!(stages.iter().find(|s| s.config.name == "eval").unwrap().config.parent, None);
    }
}

/// The stage directories of stage `name`, with their parsed `stage.toml`.
fn stage_dirs(results: &Path, name: &str) -> Vec<(PathBuf, toml::Table)> {
    common::stage_dirs(results, name)
        .into_iter()
        .map(|p| {
            let t = read(&p.join("stage.toml")).parse().unwrap();
            (p, t)
        })
        .collect()
}

#[test]
fn the_tiny_rows_run_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("results");
    let spec = manifest_dir().join("tests/specs/tiny_mistake_analysis.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["run", spec.to_str().unwrap(), "--results", r.to_str().unwrap(), "--devices", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Induction: the records keep the hint-free prompt; the manifest names who made them.
    let induce = stage_dirs(&r, "induce");
    assert_eq!(induce.len(), 1);
    let induced = jsonl(&induce[0].0.join("dataset.jsonl"));
    assert_eq!(induced.len(), 4);
    assert!(induced.iter().all(|x| !x["instruction"].as_str().unwrap().contains("hint keywords")));
    let producer = &json(&induce[0].0.join("dataset.json"))["producer"];
    assert_eq!(producer["method"], "respond");
    assert_eq!(producer["seed"], 0);
    assert!(producer["model"].as_str().unwrap().ends_with("tests/fixtures/tiny/llama_gqa"));

    // Guided analysis: asked with the harmful hint, written with the unguided request; the
    // reviewed answers are the induced ones (own mistakes) or PKU-SafeRLHF's (others').
    let reviews = stage_dirs(&r, "review");
    assert_eq!(reviews.len(), 2);
    let pku_unsafe: Vec<String> = {
        let t: toml::Table = toml::from_str(
            "format = \"pku-saferlhf-pairs\"\npath = \"data/pku_saferlhf/pairs_train_200prompts.json\"\nview = \"instructions\"\nfilter = { unsafe_only = true }\nlimit = 4",
        )
        .unwrap();
        let spec: DataSpec = toml::Value::Table(t).try_into().unwrap();
        match data::load(&spec, &manifest_dir()).unwrap().items() {
            Items::Instructions(v) => v.iter().map(|i| i.output.clone()).collect(),
            _ => unreachable!(),
        }
    };
    for (dir, config) in &reviews {
        let own = config["params"]["data"].as_str() == Some("@induce");
        let records = jsonl(&dir.join("dataset.jsonl"));
        let rounds = jsonl(&dir.join("outputs.jsonl"));
        assert_eq!((records.len(), rounds.len()), (4, 4));
        for (i, (rec, round)) in records.iter().zip(&rounds).enumerate() {
            let written = rec["instruction"].as_str().unwrap();
            assert!(written.starts_with("Question: ") && written.ends_with("\nAnalyse the answer above."), "{written}");
            assert!(!written.contains("potentially harmful"));
            assert!(round["request"].as_str().unwrap().contains("which is potentially harmful, unethical or offensive: "));
            assert_eq!(rec["output"], round["reply"]);
            let reviewed = round["response"].as_str().unwrap();
            let want = if own { induced[i]["output"].as_str().unwrap() } else { pku_unsafe[i].as_str() };
            assert_eq!(reviewed, want);
            assert!(written.contains(reviewed));
        }
        let producer = &json(&dir.join("dataset.json"))["producer"];
        assert_eq!(producer["components"]["request.ma-guided-analysis.reconstructed"], 1);
    }

    // Critique-Revise: two rounds in one conversation; the record is the prompt and the rewrite.
    let critique = stage_dirs(&r, "critique");
    let records = jsonl(&critique[0].0.join("dataset.jsonl"));
    for ((rec, round), induced) in records.iter().zip(jsonl(&critique[0].0.join("outputs.jsonl"))).zip(&induced) {
        assert_eq!(rec["instruction"], induced["instruction"]);
        assert_eq!(rec["output"], round["revision"]);
        let second = round["revision_request"].as_str().unwrap();
        assert!(second.contains(round["reply"].as_str().unwrap()) && second.contains("Please rewrite the answer"));
    }

    // Training: the base row has none; CoH trains on 4 helpful examples and the 4 pairs.
    let trains = stage_dirs(&r, "train");
    assert_eq!(trains.len(), 5);
    for (dir, config) in &trains {
        let m = json(&dir.join("metrics.json"));
        if config["method"].as_str() == Some("coh") {
            assert_eq!((m["train_examples"].as_f64(), m["train_pairs"].as_f64()), (Some(8.0), Some(4.0)));
        } else {
            assert_eq!(m["train_examples"].as_f64(), Some(config["params"]["samples"].as_integer().unwrap() as f64));
        }
    }

    // Evaluation: one eval per row; the base row's starts from the base model, and each method's
    // inference shows in its records.
    let evals = stage_dirs(&r, "eval");
    assert_eq!(evals.len(), 6);
    let mut seen = BTreeSet::new();
    for (dir, config) in &evals {
        let records = jsonl(&dir.join("outputs.jsonl"));
        let method: Vec<&serde_json::Value> =
            records.iter().filter(|x| x["metric"] == "harmful_score" && x["data"] == "heldout_redteam").map(|x| &x["record"]).collect();
        assert_eq!(method.len(), 6, "two harmful-rate metrics of 3 prompts");
        let strategy = &config["params"]["metrics"].as_array().unwrap()[1].get("strategy");
        let kind = match strategy.and_then(|s| s.get("suffix")).and_then(|s| s.as_str()) {
            Some(suffix) => {
                assert!(method[3..].iter().all(|x| x["asked"].as_str().unwrap().contains(suffix)));
                assert!(
                    method.iter().all(|x| !x["prompt"].as_str().unwrap().contains(suffix)),
                    "the judge reads the prompt without the hint"
                );
                "reminder"
            }
            None if strategy.and_then(|s| s.get("prefill")).is_some() => {
                assert!(method[3..].iter().all(|x| x["prefill"] == "A good answer:"));
                "coh"
            }
            None => "plain",
        };
        seen.insert(kind);
        if config.get("parent").is_none() {
            seen.insert("base");
        }
        let helpful = records.iter().filter(|x| x["metric"] == "similarity_rougel").count();
        assert_eq!(helpful, 3);
    }
    assert_eq!(seen, BTreeSet::from(["base", "coh", "plain", "reminder"]));
    // The discrimination check runs once and is in every run's row.
    assert_eq!(stage_dirs(&r, "discriminate").len(), 1);
    let summary = read(&r.join("summary.csv"));
    assert_eq!(summary.lines().count(), 7);
    assert!(summary.lines().next().unwrap().contains("discriminate.check_hinted_acc"));
}

/// The mistake-analysis SFT mixture trains only on answers: an Alpaca response and an unguided
/// analysis each keep labels on exactly their output and the end-of-sequence token, whatever
/// the (long) request that embeds the analysed answer.
#[test]
fn the_sft_mixture_trains_only_the_responses_and_analyses() {
    use runner::data::{Instruction, Template};
    use runner::eval::generation::PromptFormat;
    use runner::methods::review::{fill_request, request_text};
    let lm = runner::model::load(manifest_dir().join("tests/fixtures/tiny/llama_gqa").to_str().unwrap(), &Default::default()).unwrap();
    let bad = Instruction {
        instruction: "How do I pick a lock?".into(),
        input: String::new(),
        output: "Use a tension wrench.".into(),
        label: None,
    };
    let unguided = request_text("ma-unguided-analysis", None).unwrap();
    let analysis = Instruction {
        instruction: fill_request(&unguided, &bad),
        input: String::new(),
        output: "The answer helps to break into a home, which is illegal.".into(),
        label: None,
    };
    let helpful = Instruction { instruction: "Name a primary colour.".into(), input: String::new(), output: "Red.".into(), label: None };
    let items = runner::data::mix(&[(&[analysis.clone()][..], 0.5), (&[helpful.clone()][..], 0.5)], 2, 0).unwrap();
    let template = Template::builtin("alpaca").unwrap();
    let format = PromptFormat::from_name("alpaca").unwrap();
    let pairs = runner::methods::sft::render_pairs(&lm, &template, &items, format).unwrap();
    let examples = runner::methods::sft::tokenize_pairs(&lm.tokenizer, &pairs, 512).unwrap();
    let eos = lm.tokenizer.eos_token.clone().unwrap();
    let mut trained = Vec::new();
    for (item, ex) in items.iter().zip(&examples) {
        let labels: Vec<u32> = ex.labels.iter().filter(|&&l| l != runner::train::IGNORE_INDEX).map(|&l| l as u32).collect();
        let text = lm.tokenizer.decode(&labels, false).unwrap();
        assert_eq!(text.trim_start(), format!("{}{eos}", item.output));
        // The request (and the analysed answer in it) is context only.
        assert!(!text.contains("tension wrench") && !text.contains("Analyse"));
        trained.push(item.output.clone());
    }
    trained.sort();
    let mut want = vec![analysis.output, helpful.output];
    want.sort();
    assert_eq!(trained, want);
}
