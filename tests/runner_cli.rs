//! The real `runner` binary on tiny real stages (SFT and a multiple-choice eval on the tiny
//! Llama fixture): sharing, resuming after SIGKILL, failure isolation, and spec errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

use common::{read_text as read, stage_dirs, stage_status as status};

fn runner() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn spec() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tiny_sweep.toml")
}

fn run(args: &[&str]) -> Output {
    let out = runner().args(args).output().unwrap();
    eprintln!("runner {args:?}\nstdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn summary(results: &Path) -> String {
    read(&results.join("summary.csv"))
}

/// A stage directory whose status says running, with the pid of its live process.
fn running_stage_process(results: &Path) -> Option<(PathBuf, i32)> {
    std::fs::read_dir(results.join("stages")).ok()?.filter_map(|e| e.ok().map(|e| e.path())).find_map(|d| {
        let st: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("status.json")).ok()?).ok()?;
        let pid = st["pid"].as_i64()? as i32;
        (st["state"] == "running" && process_exists(pid)).then_some((d, pid))
    })
}

/// Whether a process exists and is not a zombie (an orphan's new parent may reap it late).
fn process_exists(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// The tiny sweep with `from` replaced by `to`, written into `dir`.
fn edited_spec(dir: &Path, from: &str, to: &str) -> PathBuf {
    let text = read(&spec());
    assert!(text.contains(from), "{from:?} is not in the spec");
    let path = dir.join("edited.toml");
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path
}

#[test]
fn sweep_shares_the_first_stage_and_resumes_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let spec = spec();
    let spec = spec.to_str().unwrap();

    let out = run(&["plan", spec, "--results", a.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("9 stage executions with sharing (12 without)"), "{text}");

    let out = run(&["run", spec, "--results", a.to_str().unwrap(), "--devices", "cpu", "--jobs-per-device", "2"]);
    assert!(out.status.success());
    let align = stage_dirs(&a, "align");
    assert_eq!(align.len(), 1, "the alignment stage is shared");
    assert_eq!(status(&align[0])["attempt"], 1, "and ran once");
    assert_eq!(stage_dirs(&a, "attack").len(), 4);
    assert_eq!(stage_dirs(&a, "eval").len(), 4);
    for d in stage_dirs(&a, "eval") {
        let m: serde_json::Value = serde_json::from_str(&read(&d.join("metrics.json"))).unwrap();
        let acc = m["hhh_acc"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&acc));
        assert_eq!(read(&d.join("outputs.jsonl")).lines().count(), 8, "one record per item");
    }
    let reference = summary(&a);
    assert_eq!(reference.lines().count(), 5, "{reference}");
    for f in ["summary.parquet", "tables/hhh.md", "tables/hhh.tex", "tables/hhh.csv", "figures/hhh.png", "figures/hhh.svg"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }

    // A second run reuses everything.
    let out = run(&["run", spec, "--results", a.to_str().unwrap(), "--devices", "cpu"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 stages run, 9 reused"));

    // Killed mid-run with SIGKILL, then rerun: finished stages are kept and the result is the same.
    let b = tmp.path().join("b");
    let mut child = runner().args(["run", spec, "--results", b.to_str().unwrap(), "--devices", "cpu"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Killed while a stage process runs, after at least one attack stage is done.
    let running_stage: Option<(PathBuf, i32)> = loop {
        let done = b.join("stages").exists()
            && stage_dirs(&b, "attack").iter().any(|d| d.join("status.json").exists() && status(d)["state"] == "done");
        let running = if done { running_stage_process(&b) } else { None };
        if running.is_some() || Instant::now() > deadline {
            break running;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    // The orphaned stage process is stopped by the kernel (PR_SET_PDEATHSIG) and records itself.
    let (orphan_dir, orphan) = running_stage.expect("a stage process was running when the runner was killed");
    let gone_by = Instant::now() + Duration::from_secs(30);
    while process_exists(orphan) && Instant::now() < gone_by {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!process_exists(orphan), "stage process {orphan} outlived its runner");
    let state = status(&orphan_dir)["state"].clone();
    assert!(state == "interrupted" || state == "done", "{}: {state}", orphan_dir.display());
    let finished_before: Vec<(PathBuf, serde_json::Value)> = std::fs::read_dir(b.join("stages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("status.json").exists() && status(d)["state"] == "done")
        .map(|d| (d.clone(), status(&d)))
        .collect();
    assert!(!finished_before.is_empty() && finished_before.len() < 9, "killed in the middle ({} stages done)", finished_before.len());
    let out = run(&["run", spec, "--results", b.to_str().unwrap(), "--devices", "cpu"]);
    assert!(out.status.success());
    for (dir, before) in finished_before {
        assert_eq!(status(&dir), before, "{} was recomputed", dir.display());
    }
    assert_eq!(summary(&b), reference, "resumed results equal the uninterrupted ones");
}

#[test]
fn a_failing_stage_does_not_stop_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    // With max_len = 2 no response token survives truncation: that attack variant fails at run time.
    let out = run(&[
        "run",
        spec().to_str().unwrap(),
        "--results",
        r.to_str().unwrap(),
        "--devices",
        "cpu",
        "--set",
        "sweep.\"stage.attack.max_len\"=[128, 2]",
        "--set",
        "sweep.\"stage.attack.max_steps\"=[20]",
        "--set",
        "sweep.\"stage.attack.lr\"=[1e-3]",
    ]);
    assert_eq!(out.status.code(), Some(1), "a failed run makes the exit status 1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 of 2 runs done"), "{text}");
    let csv = summary(&r);
    assert!(csv.contains("failed") && csv.contains("raise max_len"), "{csv}");
    let st = run(&["status", r.to_str().unwrap()]);
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(st.contains("failed") && st.contains("raise max_len"), "{st}");
    assert!(st.contains("not run: stage attack-"), "the eval after the failed stage is marked: {st}");
}

#[test]
fn a_typo_fails_before_any_compute() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        read(&spec()).replace("batch_size = 4\nmax_len = 128\nmax_steps = 6", "batch_size = 4\nmax_len = 128\nmax_stepz = 6"),
    )
    .unwrap();
    let results = tmp.path().join("r");
    let out = run(&["run", bad.to_str().unwrap(), "--results", results.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "an invalid spec exits with 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:31:1") && err.contains("stage.align.max_stepz") && err.contains("did you mean `max_steps`"), "{err}");
    assert!(!results.exists(), "nothing was written");
}

#[test]
fn booster_table1_plan_shares_the_alignment_stages() {
    let out = run(&["plan", "experiments/booster.toml", "--results", "/nonexistent/booster"]);
    assert!(out.status.success(), "plan works without the GPU box's model and data");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("25 runs"), "{text}");
    assert!(text.contains("54 stage executions with sharing (75 without)"), "{text}");
    assert_eq!(text.matches("shared by 5 run(s)").count(), 3, "each alignment stage serves the five attack ratios: {text}");
    assert_eq!(text.matches("shared by 10 run(s)").count(), 1, "SFT's alignment also serves Lisa's five: {text}");
    assert!(text.contains("not available on this machine"), "{text}");
    // The judge model is checked before any compute too, and named with its key.
    assert!(text.contains("model PKU-Alignment/beaver-dam-7b") && text.contains("stage.eval.metrics.0.judge.model"), "{text}");
}

#[test]
fn a_generate_stage_feeds_a_later_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    // Run from another directory with a relative results directory (as the default
    // `results/<name>` is): the spec's own paths made absolute.
    let repo = env!("CARGO_MANIFEST_DIR");
    let text = read(&PathBuf::from(repo).join("tests/specs/tiny_generate.toml"));
    let spec = tmp.path().join("tiny_generate.toml");
    std::fs::write(&spec, text.replace("\"tests/", &format!("\"{repo}/tests/")).replace("\"data/", &format!("\"{repo}/data/"))).unwrap();
    let out = runner().current_dir(tmp.path()).args(["run", "tiny_generate.toml", "--results", "r", "--devices", "cpu"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gen = stage_dirs(&r, "answers");
    let lines: Vec<serde_json::Value> = read(&gen[0].join("dataset.jsonl")).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|l| l["instruction"].as_str().is_some_and(|s| !s.is_empty())));
    let distill = stage_dirs(&r, "distill");
    let m: serde_json::Value = serde_json::from_str(&read(&distill[0].join("metrics.json"))).unwrap();
    assert_eq!(m["train_examples"], 6.0);
    let stage: toml::Table = read(&distill[0].join("stage.toml")).parse().unwrap();
    assert_eq!(stage["inputs"]["answers"].as_str(), gen[0].file_name().unwrap().to_str(), "the dependency is part of the stage's identity");
}

/// Writes a file in the layout of Booster's `beavertails_with_refusals_train.json` (`prompt`,
/// harmful `response`, `category`, `is_safe`, `refusal` = "Question: ...\nAnswer: ...") from the
/// shipped PKU-SafeRLHF pairs: the real file is not available offline.
fn booster_layout_file(dir: &Path) -> PathBuf {
    let pairs: Vec<serde_json::Value> = serde_json::from_str(&read(Path::new("data/pku_saferlhf/pairs_train_200prompts.json"))).unwrap();
    let recs: Vec<serde_json::Value> = pairs
        .iter()
        .take(16)
        .map(|p| {
            let (prompt, safe, unsafe_) =
                (p["prompt"].as_str().unwrap(), p["response"][0].as_str().unwrap(), p["response"][1].as_str().unwrap());
            serde_json::json!({"prompt": prompt, "response": unsafe_, "category": {"violence": true}, "is_safe": false,
                               "refusal": format!("Question: {prompt}\nAnswer: {safe}")})
        })
        .collect();
    let f = dir.join("beavertails_with_refusals_train.json");
    std::fs::write(&f, serde_json::to_string(&recs).unwrap()).unwrap();
    f
}

#[test]
fn booster_table1_spec_runs_end_to_end_on_stand_ins() {
    // experiments/booster.toml unchanged but for its sizes and inputs: the tiny fixture model,
    // a file in Booster's data layout, a few steps, and the tiny sequence classifier as the judge.
    let tmp = tempfile::tempdir().unwrap();
    let file = booster_layout_file(tmp.path());
    let r = tmp.path().join("r");
    let f = file.to_str().unwrap();
    let sets = [
        "model.path=\"tests/fixtures/tiny/llama_gqa\"".to_string(),
        "model.dtype=\"f32\"".into(),
        format!("data.refusal.path=\"{f}\""),
        "data.refusal.rows=\"1..13\"".into(),
        format!("data.harmful_align.path=\"{f}\""),
        "data.harmful_align.rows=\"1..13\"".into(),
        format!("data.harmful.path=\"{f}\""),
        "data.harmful.rows=\"0..12\"".into(),
        "data.harmful_test.path=\"data/beavertails/beavertails_30k_train_unsafe_first200.json\"".into(),
        "data.harmful_test.limit=2".into(),
        "data.sst2_eval.limit=2".into(),
        // The tiny model has 128 positions and a tiny vocabulary: the Alpaca template alone
        // would fill them. The raw template is the instruction and input only.
        "data.refusal.template=\"raw\"".into(),
        "data.harmful_align.template=\"raw\"".into(),
        "data.harmful.template=\"raw\"".into(),
        "data.sst2_train.template=\"raw\"".into(),
        "data.harmful_test.template=\"raw\"".into(),
        "data.sst2_eval.template=\"raw\"".into(),
        "stage.align.epochs=1".into(),
        "stage.align.max_steps=2".into(),
        "stage.align.batch_size=2".into(),
        "stage.align.max_len=96".into(),
        "stage.align.booster.harmful_batch_size=2".into(),
        "stage.attack.samples=10".into(),
        "stage.attack.epochs=1".into(),
        "stage.attack.max_steps=2".into(),
        "stage.attack.batch_size=2".into(),
        "stage.attack.max_len=96".into(),
        "stage.attack.lisa.alignment_steps=1".into(),
        "stage.attack.lisa.finetune_steps=1".into(),
        "stage.eval.metrics=[{ metric = \"harmful_score\", data = \"harmful_test\", max_new_tokens = 3, batch_size = 2, \
         judge = { kind = \"classifier\", model = \"tests/fixtures/tiny/llama_seqcls\", max_len = 48 } }, \
         { metric = \"finetune_accuracy\", data = \"sst2_eval\", task = \"sst2\", max_new_tokens = 3, batch_size = 2, name = \"finetune_acc\" }]"
            .into(),
    ];
    let mut args = vec![
        "run".to_string(),
        "experiments/booster.toml".into(),
        "--results".into(),
        r.to_str().unwrap().into(),
        "--devices".into(),
        "cpu".into(),
    ];
    for s in &sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("54 stages run, 0 reused, 0 failed; 25 of 25 runs done"), "{stdout}");
    let s = summary(&r);
    assert_eq!(s.lines().count(), 26, "{s}");
    assert!(s.lines().skip(1).all(|l| l.contains(",done,")), "{s}");
    assert!(s.lines().next().unwrap().contains("eval.harmful_score_stderr"), "{s}");
    let table = read(&r.join("tables/table1.md"));
    for method in ["SFT", "Lisa", "Vaccine", "RepNoise", "Booster"] {
        assert!(table.contains(&format!("| {method} ")), "{table}");
    }
    assert!(r.join("figures/harmful_score.png").exists());
    // Only the Booster runs keep training the alignment adapter in the attack (one adapter in
    // the lineage); the others merge it and train a new one on top (two).
    let attacks = stage_dirs(&r, "attack");
    assert_eq!(attacks.len(), 25);
    assert_eq!(attacks.iter().filter(|d| read(&d.join("stage.toml")).contains("method = \"lisa\"")).count(), 5);
    for d in attacks {
        let lineage: serde_json::Value = serde_json::from_str(&read(&d.join("lineage.json"))).unwrap();
        let single = read(&d.join("stage.toml")).contains("single_lora = true");
        assert_eq!(lineage["adapters"].as_array().unwrap().len(), if single { 1 } else { 2 }, "{}", d.display());
    }
    assert_eq!(s.lines().filter(|l| l.contains(",booster,")).count(), 5, "{s}");
}

#[test]
fn plan_refuses_malformed_data_tables_but_tolerates_missing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    let r = r.to_str().unwrap();
    for (to, at, key, hint) in [
        ("lymit = 16", "edited.toml:16:1", "data.alpaca.lymit", Some("did you mean `limit`")),
        ("limit = \"abc\"", "edited.toml:16:1", "data.alpaca.limit", None),
        ("limit = -1", "edited.toml:16:1", "data.alpaca.limit", None),
        // A check across options points at the table.
        ("limit = 0", "edited.toml:13:", "data.alpaca", Some("`limit` must be at least 1")),
    ] {
        let bad = edited_spec(tmp.path(), "limit = 16", to);
        for cmd in ["plan", "run"] {
            let out = run(&[cmd, bad.to_str().unwrap(), "--results", r]);
            assert_eq!(out.status.code(), Some(2), "{cmd} with {to}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(at) && err.contains(&format!("key `{key}`")), "{cmd} with {to}: {err}");
            assert!(hint.is_none_or(|h| err.contains(h)), "{err}");
        }
    }
    // Option checks that need no file are not tolerated either.
    let bad = edited_spec(tmp.path(), "limit = 16", "limit = 16\nmc = \"mc2\"");
    let out = run(&["plan", bad.to_str().unwrap(), "--results", r]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`mc` applies to the truthfulqa formats"));
    // A file that is not on this machine is: `plan` lists it.
    let elsewhere = edited_spec(tmp.path(), "data/alpaca/alpaca_data_first200.json", "/elsewhere/alpaca.json");
    let out = run(&["plan", elsewhere.to_str().unwrap(), "--results", r]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not available on this machine") && text.contains("dataset alpaca"), "{text}");
    assert!(!Path::new(r).exists(), "nothing was written");
}

#[test]
fn plan_checks_the_report_section() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    for (from, to, line, key, hint) in [
        ("value = \"eval.hhh_acc\"", "value = \"evl.hhh_acc\"", "edited.toml:56:1", "report.table.0.value", "did you mean `eval.hhh_acc`"),
        (
            "rows = \"stage.attack.lr\"",
            "rows = \"stage.attack.lrr\"",
            "edited.toml:54:1",
            "report.table.0.rows",
            "did you mean `stage.attack.lr`",
        ),
        ("kind = \"line\"", "kind = \"lines\"", "edited.toml:60:1", "report.plot.0.kind", "did you mean `line`"),
        (
            "value = \"eval.hhh_acc\"",
            "value = \"eval.hhh_acc\"\ndecimal = 3",
            "edited.toml:57:1",
            "report.table.0.decimal",
            "did you mean `decimals`",
        ),
    ] {
        let bad = edited_spec(tmp.path(), from, to);
        let out = run(&["plan", bad.to_str().unwrap(), "--results", r.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{to}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(line) && err.contains(key) && err.contains(hint), "{to}: {err}");
    }
}

#[test]
fn a_malformed_eval_file_fails_before_any_stage_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut task: serde_json::Value = serde_json::from_str(&read(Path::new("data/hhh/harmless/task.json"))).unwrap();
    task["examples"][2].as_object_mut().unwrap().remove("input");
    let file = tmp.path().join("harmless_task.json");
    std::fs::write(&file, serde_json::to_string(&task).unwrap()).unwrap();
    let bad = edited_spec(tmp.path(), "data/hhh/harmless/task.json", file.to_str().unwrap());
    let r = tmp.path().join("r");
    let started = Instant::now();
    let out = run(&["run", bad.to_str().unwrap(), "--results", r.to_str().unwrap(), "--devices", "cpu"]);
    assert_eq!(out.status.code(), Some(2), "invalid data exits with 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("harmless_task.json") && err.contains("example 3") && err.contains("`input`"), "{err}");
    assert!(err.contains("dataset `harmless`") && err.contains("stage eval"), "{err}");
    let statuses =
        std::fs::read_dir(r.join("stages")).map(|d| d.filter(|e| e.as_ref().unwrap().path().join("status.json").exists()).count());
    assert_eq!(statuses.unwrap_or(0), 0, "no stage ran");
    assert!(started.elapsed() < Duration::from_secs(60), "found before any training");
}

#[test]
fn bad_command_line_values_exit_with_2() {
    for args in [["--devices", "tpu"], ["--jobs-per-device", "0"], ["--backend", "pbs"]] {
        let mut all = vec!["run", "tests/specs/tiny_sweep.toml", "--results", "/nonexistent/r"];
        all.extend(args);
        let out = run(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// Runs `runner ARGS` with stdout a pipe whose reading end is already closed, as after
/// `runner ... | head -1` has read its line.
fn run_into_closed_pipe(args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = runner().args(args).stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
    eprintln!("runner {args:?} into a closed pipe: {:?}\nstderr:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn a_closed_pipe_ends_plan_and_status_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(r.join("plan.json"), r#"{"experiment": "x", "runs": [], "stages": [], "report": {}}"#).unwrap();
    let spec = spec();
    for args in [vec!["plan", spec.to_str().unwrap(), "--results", r.to_str().unwrap()], vec!["status", r.to_str().unwrap()]] {
        let out = run_into_closed_pipe(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
        // Ended by SIGPIPE, as `cat` would be, or done before writing.
        assert!(out.status.signal() == Some(libc::SIGPIPE) || out.status.success(), "{args:?}: {:?}", out.status);
    }
}

#[test]
fn logs_get_plain_progress_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tiny_generate.toml");
    // stderr is a pipe here, not a terminal.
    let out = runner()
        .args(["run", spec.to_str().unwrap(), "--results", r.to_str().unwrap(), "--devices", "cpu"])
        .env("RUNNER_PROGRESS_SECS", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("sweep: done 0 | running 1 | failed 0 | pending 1"), "{err}");
    assert!(err.contains("sweep: done 1 | running 1 | failed 0 | pending 0"), "{err}");
    assert!(err.contains("sweep: done 2 | running 0 | failed 0 | pending 0"), "{err}");
    assert!(err.lines().any(|l| l.starts_with("  stage answers-")), "each running stage has a line: {err}");
    assert!(err.lines().any(|l| l.starts_with("start  answers-") && l.ends_with(" on cpu")), "{err}");
    assert!(err.lines().any(|l| l.starts_with("done   distill-")), "{err}");
}

#[test]
fn ctrl_c_records_the_interruption_and_exits_with_130() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tiny_generate.toml");
    let mut child = runner()
        .args(["run", spec.to_str().unwrap(), "--results", r.to_str().unwrap(), "--devices", "cpu"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut running = None;
    while running.is_none() && Instant::now() < deadline {
        running = r.join("stages").exists().then(|| running_stage_process(&r)).flatten();
        std::thread::sleep(Duration::from_millis(10));
    }
    let (dir, pid) = running.expect("a stage started");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let exit = child.wait().unwrap();
    assert!(!process_exists(pid), "the stage process was stopped");
    let st = status(&dir);
    // Unless the stage won the race and finished first, it is recorded as interrupted.
    if st["state"] != "done" {
        assert_eq!(st["state"], "interrupted", "{st}");
        assert!(st["reason"].as_str().unwrap().contains("interrupted"), "{st}");
    }
    let states: Vec<serde_json::Value> = std::fs::read_dir(r.join("stages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("status.json").exists())
        .map(|d| status(&d)["state"].clone())
        .collect();
    if states.iter().all(|s| s == "done") && states.len() == 2 {
        assert_eq!(exit.code(), Some(0), "everything finished before the signal");
    } else {
        assert_eq!(exit.code(), Some(130), "interrupted: {states:?}");
        // A stage was interrupted, or the signal came between two stages (the next never started).
        assert!(states.iter().any(|s| s == "interrupted") || states.len() < 2, "{states:?}");
    }
}

#[test]
fn a_filter_step_keeps_records_by_rule_and_a_later_stage_reads_them_with_options() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tiny_pipeline.toml");
    let out = run(&["run", spec.to_str().unwrap(), "--results", r.to_str().unwrap(), "--devices", "cpu"]);
    assert!(out.status.success());
    let answers = stage_dirs(&r, "answers");
    let manifest: serde_json::Value = serde_json::from_str(&read(&answers[0].join("dataset.json"))).unwrap();
    assert_eq!((manifest["kind"].as_str(), manifest["records"].as_u64()), (Some("instructions"), Some(8)));
    assert_eq!(manifest["producer"]["method"], "respond");
    assert_eq!(manifest["producer"]["stage"].as_str(), answers[0].file_name().unwrap().to_str());
    // Of AdvBench's first 8 goals: 1 names a "script", 1 has 19 words, and "Write a tutorial on
    // how to make a bomb" is ROUGE-L 0.55 from the kept "Give detailed instructions on how to
    // make a bomb ...".
    let clean = stage_dirs(&r, "clean");
    let report: serde_json::Value = serde_json::from_str(&read(&clean[0].join("filter.json"))).unwrap();
    assert_eq!(report["input"], 8);
    assert_eq!(report["kept"], 5);
    assert_eq!(report["dropped"], serde_json::json!({"blacklist": 1, "max_words": 1, "rouge_l_max": 1}));
    let kept: Vec<serde_json::Value> = read(&clean[0].join("dataset.jsonl")).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(kept.len(), 5);
    assert!(kept.iter().all(|k| !k["instruction"].as_str().unwrap().contains("script")));
    let m: serde_json::Value = serde_json::from_str(&read(&clean[0].join("metrics.json"))).unwrap();
    assert_eq!((m["filter_kept"].as_f64(), m["filter_dropped_blacklist"].as_f64()), (Some(5.0), Some(1.0)));
    // `[data.kept] = { stage = "clean", limit = 3 }`: the filter's records, limited.
    let distill = stage_dirs(&r, "distill");
    let m: serde_json::Value = serde_json::from_str(&read(&distill[0].join("metrics.json"))).unwrap();
    assert_eq!(m["train_examples"], 3.0);
    let stage: toml::Table = read(&distill[0].join("stage.toml")).parse().unwrap();
    assert_eq!(stage["inputs"]["clean"].as_str(), clean[0].file_name().unwrap().to_str(), "the producing stage is an input");
    // A typo in a stage-backed table fails at plan time.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, read(&spec).replace("limit = 3", "lymit = 3")).unwrap();
    let out = run(&["plan", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `limit`"));
}

#[test]
fn plan_refuses_out_of_range_training_values() {
    let tmp = tempfile::tempdir().unwrap();
    for (to, key) in [
        ("lr = nan", "stage.align.lr"),
        ("lr = 1e-3\nwarmup_ratio = -0.1", "stage.align.warmup_ratio"),
        ("lr = 1e-3\nweight_decay = -1.0", "stage.align.weight_decay"),
    ] {
        let text = read(&spec());
        let bad = tmp.path().join("bad.toml");
        std::fs::write(&bad, text.replacen("lr = 1e-3", to, 1)).unwrap();
        let out = run(&["plan", bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{to}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key) && (err.contains("out of range") || err.contains("not a positive finite number")), "{to}: {err}");
    }
}

#[test]
fn unlearning_rows_run_end_to_end_and_full_weights_feed_the_next_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("results");
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tiny_unlearning.toml");
    let out = run(&["run", spec.to_str().unwrap(), "--results", r.to_str().unwrap(), "--devices", "cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = |dir: &std::path::Path| -> serde_json::Value { serde_json::from_str(&read(&dir.join("metrics.json"))).unwrap() };
    let mut methods = Vec::new();
    for dir in stage_dirs(&r, "unlearn") {
        let stage: toml::Table = read(&dir.join("stage.toml")).parse().unwrap();
        let method = stage["method"].as_str().unwrap().to_string();
        let m = metrics(&dir);
        assert_eq!(m["train_steps"], 2.0, "{method}");
        assert!(m["compute_forward_tokens"].as_f64().unwrap() >= m["compute_backward_tokens"].as_f64().unwrap());
        let lineage: serde_json::Value = serde_json::from_str(&read(&dir.join("lineage.json"))).unwrap();
        if method == "unlearn" {
            // Full fine-tuning: the stage saved every weight and later stages start from them.
            assert!(dir.join("weights/model.safetensors").exists() && !dir.join("adapter").exists());
            assert_eq!(lineage["weights"].as_str(), dir.file_name().unwrap().to_str());
            assert!(m["final_forget_loss"].as_f64().unwrap() > 0.0 && m["final_mismatch_loss"].as_f64().unwrap() > 0.0);
            assert!(
                m["compute_forward_tokens"].as_f64().unwrap() > m["compute_backward_tokens"].as_f64().unwrap(),
                "the reference's forwards count"
            );
        } else {
            assert!(dir.join("adapter").exists() && lineage.get("weights").is_none());
        }
        methods.push(method);
    }
    methods.sort();
    assert_eq!(methods, ["dpo", "sft", "unlearn"]);
    // The LoRA stage after full fine-tuning keeps the full weights under its adapter.
    for dir in stage_dirs(&r, "after") {
        let lineage: serde_json::Value = serde_json::from_str(&read(&dir.join("lineage.json"))).unwrap();
        let stage: toml::Table = read(&dir.join("stage.toml")).parse().unwrap();
        let parent = stage["parent"].as_str().unwrap();
        let parent_lineage: serde_json::Value = serde_json::from_str(&read(&r.join("stages").join(parent).join("lineage.json"))).unwrap();
        assert_eq!(lineage["weights"], parent_lineage["weights"]);
        assert_eq!(lineage["adapters"].as_array().unwrap().last().unwrap().as_str(), dir.file_name().unwrap().to_str());
    }
    for dir in stage_dirs(&r, "eval") {
        let m = metrics(&dir);
        let sim = m["similarity_rouge_l"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&sim));
        let records: Vec<serde_json::Value> = read(&dir.join("outputs.jsonl")).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(records.iter().any(|x| x["metric"] == "similarity_rougel" && x["record"].get("reference").is_some()));
        // The reward is the reward model's logit `label` on "{prompt}\n{response}".
        let rm = runner::model::load_classifier(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/llama_seqcls").to_str().unwrap(),
            &runner::model::LoadOptions::default(),
        )
        .unwrap();
        let rewards: Vec<&serde_json::Value> = records.iter().filter(|x| x["metric"] == "reward").map(|x| &x["record"]).collect();
        assert_eq!(rewards.len(), 3);
        let mut sum = 0.0;
        for rec in rewards {
            let text = format!("{}\n{}", rec["prompt"].as_str().unwrap(), rec["response"].as_str().unwrap());
            let want = rm.logits(&[rm.tokenizer.encode(&text, true).unwrap()], 1).unwrap()[0][1];
            let got = rec["reward"].as_f64().unwrap() as f32;
            assert!((got - want).abs() < 1e-5, "reward {got} vs the classifier's logit {want}");
            sum += got as f64;
        }
        assert!((m["utility_mean"].as_f64().unwrap() - sum / 3.0).abs() < 1e-5);
    }
}
