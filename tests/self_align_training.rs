//! SELF-ALIGN (Dromedary v1) stages 3 and 4 through the binary on the tiny fixture: `engrave`
//! trains at DeepSpeed's log-warmup learning rates on Dromedary's masked training text, and
//! `verbose_clone` writes records whose counts agree with its metrics and dataset.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{read_json as json, read_jsonl as jsonl};
use runner::data::Instruction;
use runner::methods::engrave::{tokenize_example, training_text, MetaPrompt};
use runner::model::TextTokenizer;
use runner::train::{LrSchedule, ScheduleKind, IGNORE_INDEX};

fn stage_dir(results: &Path, name: &str) -> PathBuf {
    let dirs = common::stage_dirs(results, name);
    assert_eq!(dirs.len(), 1, "{name}: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// The learning rates of a stage's step log.
fn logged_lrs(dir: &Path) -> Vec<f64> {
    jsonl(&dir.join("log.jsonl")).iter().map(|s| s["lr"].as_f64().unwrap()).collect()
}

#[test]
fn engraving_and_verbose_cloning_run_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("results");
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tiny_self_align_training.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["run", spec.to_str().unwrap(), "--results", r.to_str().unwrap(), "--devices", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Engraving: 12 examples at batch 2 = 6 steps, log warmup over 4 steps then linear decay.
    let engrave = stage_dir(&r, "engrave");
    let m = json(&engrave.join("metrics.json"));
    assert_eq!(m["train_steps"], 6.0);
    assert_eq!(m["train_examples"], 12.0);
    let schedule = LrSchedule { kind: ScheduleKind::WarmupDecayLog, base_lr: 4e-4, warmup_steps: 4, total_steps: 6 };
    let want: Vec<f64> = (0..6).map(|s| schedule.lr_at(s)).collect();
    assert_eq!(logged_lrs(&engrave), want);
    assert_eq!(want[0], 0.0);
    assert!((want[1] - 4e-4 * 2f64.ln() / 4f64.ln()).abs() < 1e-15 && (want[4] - 4e-4 * 2.0 / 2.0).abs() < 1e-15);
    // The student's schedule spans 3 times its 4 steps: at the last step the decay has gone a
    // tenth of the way ((12 - 3) / (12 - 2)), not half of it ((4 - 3) / (4 - 2)).
    let student = stage_dir(&r, "student");
    let lrs = logged_lrs(&student);
    assert_eq!(lrs.len(), 4);
    assert_eq!((lrs[0], lrs[1], lrs[2]), (0.0, 4e-4, 4e-4));
    assert!((lrs[3] - 4e-4 * 0.9).abs() < 1e-15, "{lrs:?}");

    // Verbose cloning: every query has one record; kept ones name their dataset row.
    let teacher = stage_dir(&r, "teacher");
    let m = json(&teacher.join("metrics.json"));
    let records = jsonl(&teacher.join("outputs.jsonl"));
    let dataset = jsonl(&teacher.join("dataset.jsonl"));
    assert_eq!(records.len(), 8);
    assert_eq!(m["queries"], 8.0);
    assert_eq!(m["kept"].as_f64().unwrap() as usize, dataset.len());
    let dropped: f64 = ["zhiqing", "too_short", "bad_example"].iter().map(|k| m[format!("dropped_{k}")].as_f64().unwrap()).sum();
    assert_eq!(dropped as usize + dataset.len(), records.len());
    let filter = json(&teacher.join("filter.json"));
    assert_eq!(filter["input"], 8);
    let mut rows: Vec<usize> = Vec::new();
    for rec in &records {
        assert!(rec["source"] == "queries" || rec["source"] == "data/dromedary/vicuna_dummy_data.json", "{rec}");
        assert!(rec["response"].is_string());
        match rec["verdict"].as_str().unwrap() {
            "kept" => {
                let row = rec["record"].as_u64().unwrap() as usize;
                assert_eq!(dataset[row]["instruction"], rec["instruction"]);
                rows.push(row);
            }
            other => {
                assert!(["zhiqing", "too_short", "bad_example"].contains(&other), "{other}");
                assert!(rec.get("record").is_none());
            }
        }
        // Batches of 4 sample with the stage seed plus the batch index.
        assert_eq!(rec["sampling_seed"].as_u64().unwrap(), rec["query"].as_u64().unwrap() / 4);
    }
    let identity = records.iter().filter(|r| r["source"] == "data/dromedary/vicuna_dummy_data.json").count();
    assert_eq!(identity, 2);
    rows.sort_unstable();
    assert_eq!(rows, (0..dataset.len()).collect::<Vec<_>>());
}

/// The teacher answers with the engraved model; the student starts again from the base model
/// (`from_base`), and nothing before it is its parent.
#[test]
fn the_student_starts_from_the_base_model() {
    let plan = common::plan_spec("tests/specs/tiny_self_align_training.toml");
    let stage = |name: &str| plan.stages.iter().find(|s| s.config.name == name).unwrap();
    let engrave = stage("engrave");
    assert_eq!(engrave.config.parent, None);
    assert_eq!(stage("teacher").config.parent.as_deref(), Some(engrave.id.as_str()));
    let student = stage("student");
    assert_eq!(student.config.parent, None);
    assert!(!student.depends_on.contains(&engrave.id), "{:?}", student.depends_on);
}

/// finetune.py's masking on a real tokenizer: labels start after `tokenize(prompt.rstrip())`,
/// so the newline after `### Dromedary` is learned; no end-of-sequence token is added.
#[test]
fn the_engraving_text_masks_the_prompt_without_its_final_newline() {
    let tok = TextTokenizer::from_hf_dir(&common::tiny("llama_gqa")).unwrap();
    let item =
        Instruction { instruction: "Name a fruit.".into(), input: String::new(), output: "Apple.\n\n### User\n".into(), label: None };
    let pair = training_text(MetaPrompt::Standard.text(0), &item);
    let e = tokenize_example(&tok, &pair, 4096).unwrap();
    let full = tok.encode(&format!("{}{}", pair.prompt, pair.response), true).unwrap();
    assert_eq!(e.input_ids, full);
    let stripped = tok.encode(pair.prompt.trim_end(), true).unwrap();
    let first = e.labels.iter().position(|&l| l != IGNORE_INDEX).unwrap();
    assert_eq!(first, stripped.len());
    assert!(tok.decode(&full[first..], false).unwrap().starts_with('\n'), "the newline after the header is a target");
    assert!(!e.input_ids.contains(&tok.eos_id().unwrap()));
    // Cut at max_len: the labels follow.
    let cut = tokenize_example(&tok, &pair, first + 2).unwrap();
    assert_eq!(cut.input_ids.len(), first + 2);
    assert_eq!(cut.labels.iter().filter(|&&l| l != IGNORE_INDEX).count(), 2);
}

/// The word-start tokens Dromedary's frequency penalties apply to, on a byte-level BPE
/// tokenizer: pieces beginning with `Ġ` (a space) that are more than the marker.
#[test]
fn word_start_tokens_begin_with_the_space_marker() {
    let tok = TextTokenizer::from_hf_dir(&common::tiny("llama_gqa")).unwrap();
    let all = tok.word_start_ids(0);
    assert!(!all.is_empty());
    for &id in &all {
        let piece = tok.inner.id_to_token(id).unwrap();
        assert!(piece.starts_with('Ġ') || piece.starts_with('▁'), "{piece}");
        assert!(piece.chars().count() > 1, "{piece}");
    }
    let above = tok.word_start_ids(300);
    assert!(above.iter().all(|&id| id > 300) && !above.is_empty() && above.len() < all.len());
}

/// Both shipped specs plan: stages 1 and 2 shared by the four rows, the teacher after the
/// engraving, the student from the base model, and no evaluation item among the training data.
#[test]
fn the_shipped_specs_share_stages_one_and_two_and_train_the_student_from_base() {
    for spec in ["experiments/self_align_cpu.toml", "experiments/self_align.toml"] {
        let plan = common::plan_spec(spec);
        assert_eq!(plan.runs.len(), 4, "{spec}");
        let stages = |name: &str| plan.stages.iter().filter(|s| s.config.name == name).collect::<Vec<_>>();
        for name in ["instruct", "topics", "questions", "align"] {
            let s = stages(name);
            assert_eq!((s.len(), s[0].runs.len()), (1, 4), "{spec}: {name}");
        }
        let engrave = stages("engrave");
        assert_eq!((engrave.len(), engrave[0].runs.len()), (1, 2), "{spec}: engraving shared by two rows");
        let teacher = stages("teacher")[0];
        assert_eq!(teacher.config.parent.as_deref(), Some(engrave[0].id.as_str()));
        let student = stages("student")[0];
        assert_eq!(student.config.parent, None);
        assert!(student.depends_on.contains(&teacher.id));
        assert_eq!(stages("eval").len(), 4, "{spec}: one evaluation per row");
        // Training reads generated data only; the benchmarks are evaluation data.
        for s in plan.stages.iter().filter(|s| s.config.name != "eval") {
            assert!(!s.config.data.contains_key("hhh") && !s.config.data.contains_key("tqa"), "{spec}: {}", s.config.name);
        }
    }
}
