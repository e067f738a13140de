//! `runner run --backend slurm` through a real Slurm: the single-node cluster that
//! `scripts/slurm_local.sh start` runs on this machine (`.ci/run` starts it). Each test prints
//! "skipped: <reason>" and returns where no cluster answers.
//!
//! The tests share the cluster's CPUs, so they run one at a time (`CLUSTER`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

mod common;

use common::{read_text as read, stage_dirs, stage_status as status};

static CLUSTER: Mutex<()> = Mutex::new(());

fn runner() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env("RUNNER_SLURM_POLL_SECS", "0.5");
    c
}

fn spec() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tiny_sweep.toml").to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> Output {
    let out = runner().args(args).output().unwrap();
    eprintln!("runner {args:?}\nstdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn slurm_run(results: &Path, extra: &[&str]) -> Output {
    let spec = spec();
    let mut args = vec!["run", spec.as_str(), "--backend", "slurm", "--results", results.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

/// Why the Slurm tests cannot run here, if they cannot: no `sinfo`, or no node that takes jobs.
fn cluster_missing() -> Option<String> {
    let out = match Command::new("sinfo").args(["-h", "-N", "-o", "%t"]).output() {
        Ok(out) => out,
        Err(e) => return Some(format!("no Slurm client here (sinfo: {e}); start one with scripts/slurm_local.sh start")),
    };
    let states = String::from_utf8_lossy(&out.stdout).to_string();
    let usable = states.lines().any(|s| ["idle", "mix", "alloc", "comp"].contains(&s.trim().trim_end_matches('*')));
    if !out.status.success() || !usable {
        return Some(format!(
            "no Slurm node takes jobs (sinfo: {:?} {:?}); start one with scripts/slurm_local.sh start",
            states.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    None
}

/// Holds the cluster for one test, or says why the test is skipped.
fn cluster() -> Option<std::sync::MutexGuard<'static, ()>> {
    if let Some(reason) = cluster_missing() {
        println!("skipped: {reason}");
        eprintln!("skipped: {reason}");
        return None;
    }
    Some(CLUSTER.lock().unwrap_or_else(|e| e.into_inner()))
}

fn jobs(results: &Path) -> serde_json::Value {
    serde_json::from_str(&read(&results.join("slurm/jobs.json"))).unwrap()
}

/// The tiny sweep's summary from the local backend (computed once).
fn local_summary() -> &'static str {
    static SUMMARY: OnceLock<String> = OnceLock::new();
    SUMMARY.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path().join("local");
        let spec = spec();
        let out = run(&["run", &spec, "--results", r.to_str().unwrap(), "--devices", "cpu"]);
        assert!(out.status.success());
        read(&r.join("summary.csv"))
    })
}

/// Whether Slurm still holds any task of the arrays in `results/slurm/jobs.json`.
fn tasks_in_queue(results: &Path) -> Vec<String> {
    let ids: Vec<String> = jobs(results)["submissions"].as_array().unwrap().iter().map(|s| s["job_id"].to_string()).collect();
    let out = Command::new("squeue").args(["-h", "-r", "-o", "%i %T", "-j", &ids.join(",")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| ["PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED"].iter().any(|s| l.ends_with(s)))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_sweep_on_slurm_gives_the_local_numbers() {
    let Some(_cluster) = cluster() else { return };
    let reference = local_summary();
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    // The eval stages ask for a time limit of their own: not part of their identity.
    let out = slurm_run(&r, &["--set", "slurm.max_parallel=2", "--set", "stage.eval.slurm.time=10"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("9 stages run, 0 reused, 0 failed; 4 of 4 runs done"));
    assert_eq!(read(&r.join("summary.csv")), reference, "the same numbers as the local backend");
    for sub in jobs(&r)["submissions"].as_array().unwrap() {
        let evals = sub["stages"].as_array().unwrap().iter().all(|s| s.as_str().unwrap().starts_with("eval-"));
        let script = read(&r.join(format!("slurm/wave-{}.sbatch", sub["wave"])));
        assert_eq!(script.contains("#SBATCH --time=10\n"), evals, "{script}");
    }
    // One array per wave: the shared alignment stage, then its four attacks; the evals follow
    // their attacks as those finish.
    let subs = jobs(&r)["submissions"].as_array().unwrap().clone();
    assert_eq!(subs[0]["stages"].as_array().unwrap().len(), 1);
    assert_eq!(subs[1]["stages"].as_array().unwrap().len(), 4);
    let stages: usize = subs.iter().map(|s| s["stages"].as_array().unwrap().len()).sum();
    assert_eq!(stages, 9, "every stage submitted once");
    let wave1 = read(&r.join("slurm/wave-1.sbatch"));
    assert!(wave1.contains("#SBATCH --array=0-3%2\n"), "{wave1}");
    assert!(wave1.contains(&format!("exec '{}' exec", env!("CARGO_BIN_EXE_runner"))), "{wave1}");
    for d in stage_dirs(&r, "attack") {
        assert_eq!(status(&d)["attempt"], 1);
        assert!(d.join("stderr.log").exists(), "the stage's log is in its directory");
    }
    // A second run reuses everything and submits nothing.
    let out = slurm_run(&r, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 stages run, 9 reused"));
    assert_eq!(jobs(&r)["submissions"].as_array().unwrap().len(), subs.len());
}

#[test]
fn a_failing_task_fails_only_its_runs() {
    let Some(_cluster) = cluster() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    // With max_len = 2 no response token survives truncation: that attack fails at run time.
    let out = slurm_run(
        &r,
        &[
            "--set",
            "sweep.\"stage.attack.max_len\"=[128, 2]",
            "--set",
            "sweep.\"stage.attack.max_steps\"=[20]",
            "--set",
            "sweep.\"stage.attack.lr\"=[1e-3]",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "a failed run makes the exit status 1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 of 2 runs done"));
    let st = run(&["status", r.to_str().unwrap()]);
    let st = String::from_utf8_lossy(&st.stdout);
    // The stage's own error, then how its Slurm task ended.
    assert!(st.contains("raise max_len") && st.contains("exited with status 1 (FAILED)"), "{st}");
    assert!(st.contains("not run: stage attack-"), "the eval after the failed stage: {st}");
    let failed: Vec<PathBuf> = stage_dirs(&r, "attack").into_iter().filter(|d| status(d)["state"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert!(status(&failed[0])["log_tail"].as_str().unwrap().contains("max_len"), "the stage's stderr tail is kept");
}

#[test]
fn a_task_past_its_time_limit_is_stopped_and_reported() {
    let Some(_cluster) = cluster() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    // One attack that would train for hours, under a one-minute limit (Slurm's smallest).
    let started = Instant::now();
    let out = slurm_run(
        &r,
        &[
            "--set",
            "slurm.time=1",
            // No warning before the limit: the stage runs into it.
            "--set",
            "slurm.signal_before=0",
            "--set",
            "sweep.\"stage.attack.max_steps\"=[1000000]",
            "--set",
            "sweep.\"stage.attack.lr\"=[1e-3]",
            "--set",
            "stage.attack.epochs=1000000",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(240), "stopped near its limit: {:?}", started.elapsed());
    let attack = &stage_dirs(&r, "attack")[0];
    let st = status(attack);
    assert_eq!(st["state"], "failed", "{st}");
    assert!(st["reason"].as_str().unwrap().contains("reached its time limit (TIMEOUT; raise slurm.time)"), "{st}");
    // Slurm's own account of the kill is in the log tail.
    assert!(st["log_tail"].as_str().unwrap().contains("DUE TO TIME LIMIT"), "{st}");
    assert!(tasks_in_queue(&r).is_empty());
}

/// Waits until at least one attack stage is done and a later stage runs, then sends SIGINT.
fn interrupt_mid_sweep(r: &Path, child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let attack_done = r.join("stages").exists() && stage_dirs(r, "attack").iter().any(|d| status_is(d, "done"));
        let running =
            r.join("stages").exists() && std::fs::read_dir(r.join("stages")).unwrap().any(|e| status_is(&e.unwrap().path(), "running"));
        if (attack_done && running) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait().unwrap()
}

fn status_is(dir: &Path, state: &str) -> bool {
    std::fs::read_to_string(dir.join("status.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|s| s["state"] == state)
}

#[test]
fn ctrl_c_cancels_the_jobs_and_a_rerun_resumes_with_the_same_numbers() {
    let Some(_cluster) = cluster() else { return };
    let reference = local_summary();
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    let spec = spec();
    let mut child = runner()
        .args(["run", &spec, "--backend", "slurm", "--results", r.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let exit = interrupt_mid_sweep(&r, &mut child);
    // Stages never submitted have no status yet.
    let states: Vec<String> = std::fs::read_dir(r.join("stages"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("status.json")).ok())
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap()["state"].as_str().unwrap().to_string())
        .collect();
    if states.iter().all(|s| s == "done") {
        assert_eq!(exit.code(), Some(0), "everything finished before the signal");
        return;
    }
    assert_eq!(exit.code(), Some(130), "{states:?}");
    assert!(states.iter().any(|s| s == "interrupted"), "{states:?}");
    assert!(!states.iter().any(|s| s == "running" || s == "failed"), "{states:?}");
    assert!(tasks_in_queue(&r).is_empty(), "the runner cancelled its tasks: {:?}", tasks_in_queue(&r));
    let st = String::from_utf8_lossy(&run(&["status", r.to_str().unwrap()]).stdout).to_string();
    assert!(st.contains("interrupted (Ctrl-C)"), "{st}");

    let done_before: Vec<(PathBuf, serde_json::Value)> = std::fs::read_dir(r.join("stages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| status_is(d, "done"))
        .map(|d| (d.clone(), status(&d)))
        .collect();
    let out = slurm_run(&r, &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{} reused", done_before.len())));
    for (dir, before) in done_before {
        assert_eq!(status(&dir), before, "{} was recomputed", dir.display());
    }
    assert_eq!(read(&r.join("summary.csv")), reference, "resumed results equal the local backend's");
}

#[test]
fn a_rerun_after_the_runner_died_reattaches_instead_of_submitting_again() {
    let Some(_cluster) = cluster() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    let spec = spec();
    // The first wave starts 20 s after submission: the runner is killed while it is queued.
    let mut child = runner()
        .args(["run", &spec, "--backend", "slurm", "--results", r.to_str().unwrap(), "--set", "slurm.sbatch=[\"--begin=now+20\"]"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !r.join("slurm/queue.json").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // While it waits, `runner status` shows why the task is not running yet.
    let st = String::from_utf8_lossy(&run(&["status", r.to_str().unwrap()]).stdout).to_string();
    let job = jobs(&r)["submissions"][0]["job_id"].clone();
    // (Slurm gives the reason, BeginTime, once its scheduler has looked at the job.)
    assert!(st.contains(&format!("Slurm job {job}_0: PENDING")), "{st}");
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let first = jobs(&r)["submissions"][0].clone();
    assert_eq!(tasks_in_queue(&r).len(), 1, "the queued task outlives its runner");

    // Without the delay now: the later waves start at once.
    let out = slurm_run(&r, &[]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("on Slurm job {}_0 (re-attached)", first["job_id"])), "{err}");
    let subs = jobs(&r)["submissions"].as_array().unwrap().clone();
    assert_eq!(subs[0], first);
    let align = first["stages"][0].as_str().unwrap();
    assert_eq!(subs.iter().filter(|s| s["stages"].as_array().unwrap().iter().any(|x| x == align)).count(), 1, "submitted once");
    assert_eq!(status(&r.join("stages").join(align))["attempt"], 1, "and ran once");
    assert_eq!(read(&r.join("summary.csv")).lines().count(), 5);
}

#[test]
fn fail_fast_cancels_the_other_tasks() {
    let Some(_cluster) = cluster() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    // Two attacks in one array: one fails at once (max_len 2), the other trains for a while.
    let out = slurm_run(
        &r,
        &[
            "--fail-fast",
            "--set",
            "sweep.\"stage.attack.max_len\"=[128, 2]",
            "--set",
            "sweep.\"stage.attack.max_steps\"=[400]",
            "--set",
            "sweep.\"stage.attack.lr\"=[1e-3]",
            "--set",
            "stage.attack.epochs=100",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(tasks_in_queue(&r).is_empty(), "nothing left in the queue");
    let states: Vec<serde_json::Value> = stage_dirs(&r, "attack").iter().map(|d| status(d)).collect();
    assert_eq!(states.iter().filter(|s| s["state"] == "failed").count(), 1, "{states:?}");
    let other = states.iter().find(|s| s["state"] != "failed").unwrap();
    // Unless it won the race and finished first, the long attack was cancelled, resumable.
    if other["state"] != "done" {
        assert_eq!(other["state"], "interrupted", "{other}");
        assert!(other["reason"].as_str().unwrap().contains("cancelled by --fail-fast after stage attack-"), "{other}");
    }
    assert!(stage_dirs(&r, "eval").iter().all(|d| !status_is(d, "done") && !status_is(d, "running")), "no eval ran");
}

/// The `done` count of a running stage's `progress.json` (0 before it has one).
fn steps_done(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("progress.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|p| p["done"].as_u64())
        .unwrap_or(0)
}

#[test]
fn the_warning_before_the_time_limit_checkpoints_requeues_and_resumes() {
    let Some(_cluster) = cluster() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r");
    let spec = spec();
    // One attack long enough to be warned mid-way.
    let sets = ["sweep.\"stage.attack.max_steps\"=[600]", "sweep.\"stage.attack.lr\"=[1e-3]", "stage.attack.epochs=1000"];
    let with_sets = |args: &mut Vec<String>| {
        for s in sets {
            args.extend(["--set".to_string(), s.to_string()]);
        }
    };
    let mut args: Vec<String> = ["run", &spec, "--backend", "slurm", "--results", r.to_str().unwrap()].map(String::from).to_vec();
    with_sets(&mut args);
    let mut child = runner().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Slurm's warning (`--signal=B:USR1@N` sends it N seconds before the limit), sent now by
    // hand, as `scancel --signal=USR1 --batch` does, once the attack has taken 50 steps.
    let deadline = Instant::now() + Duration::from_secs(240);
    let attack = loop {
        let attack = r.join("stages").exists().then(|| stage_dirs(&r, "attack")).and_then(|d| d.into_iter().next());
        if let Some(a) = attack.filter(|a| steps_done(a) >= 50) {
            break a;
        }
        assert!(Instant::now() < deadline, "the attack did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let id = attack.file_name().unwrap().to_string_lossy().to_string();
    let sub = jobs(&r)["submissions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stages"].as_array().unwrap().iter().any(|x| x == &id))
        .cloned()
        .unwrap();
    let index = sub["stages"].as_array().unwrap().iter().position(|x| x == &id).unwrap();
    let task = format!("{}_{index}", sub["job_id"]);
    let sent = Command::new("scancel").args(["--signal=USR1", "--batch", &task]).output().unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");

    // The first attempt stopped at a step checkpoint and requeued its task; the second resumed.
    let st = status(&attack);
    assert_eq!((st["state"].as_str(), st["attempt"].as_u64()), (Some("done"), Some(2)), "{st}");
    let log = read(&attack.join("stderr.log"));
    assert!(log.contains("resumed from the step checkpoint"), "{log}");
    assert!(!attack.join("checkpoint").exists(), "a finished stage keeps no checkpoint");
    let steps: Vec<u64> = read(&attack.join("log.jsonl"))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (0..600).collect::<Vec<u64>>(), "the step log is whole");

    // The same numbers as the uninterrupted run on the local backend.
    let local = tmp.path().join("local");
    let mut args: Vec<String> = ["run", &spec, "--results", local.to_str().unwrap(), "--devices", "cpu"].map(String::from).to_vec();
    with_sets(&mut args);
    assert!(runner().args(&args).output().unwrap().status.success());
    assert_eq!(read(&r.join("summary.csv")), read(&local.join("summary.csv")));
    assert_eq!(read(&attack.join("log.jsonl")), read(&stage_dirs(&local, "attack")[0].join("log.jsonl")));
}
