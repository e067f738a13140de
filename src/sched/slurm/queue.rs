//! What Slurm says about the runner's array tasks: `squeue --json` (one call per poll) and
//! `scontrol show job -o` (for a task squeue no longer lists), parsed into [`TaskInfo`], and the
//! Slurm job states mapped onto what the runner does with a stage.

use serde::Deserialize;
use std::collections::HashMap;

/// One array task: `<array job id>_<task index>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskRef {
    pub job: u64,
    pub task: u32,
}

impl std::fmt::Display for TaskRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.job, self.task)
    }
}

/// Slurm's job states (`JOB_STATE` names), grouped as the runner needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Running,
    /// Running, or finishing its epilog; requeued, suspended, configuring: still Slurm's.
    OtherActive(String),
    Completed,
    Failed,
    OutOfMemory,
    Timeout,
    NodeFail,
    Cancelled,
    Preempted,
    /// Any other final state (BOOT_FAIL, DEADLINE, ...).
    OtherEnded(String),
}

impl JobState {
    pub fn parse(name: &str) -> Self {
        // `scontrol` may add flags after a '+' (e.g. `CANCELLED+`); squeue gives the base state.
        let base = name.split('+').next().unwrap_or(name).trim().to_ascii_uppercase();
        match base.as_str() {
            "PENDING" => JobState::Pending,
            "RUNNING" => JobState::Running,
            "COMPLETED" => JobState::Completed,
            "FAILED" => JobState::Failed,
            "OUT_OF_MEMORY" => JobState::OutOfMemory,
            "TIMEOUT" => JobState::Timeout,
            "NODE_FAIL" => JobState::NodeFail,
            "CANCELLED" => JobState::Cancelled,
            "PREEMPTED" => JobState::Preempted,
            "CONFIGURING" | "COMPLETING" | "REQUEUED" | "REQUEUE_FED" | "REQUEUE_HOLD" | "RESIZING" | "SUSPENDED" | "STAGE_OUT"
            | "SIGNALING" | "RESV_DEL_HOLD" | "SPECIAL_EXIT" | "STOPPED" => JobState::OtherActive(base),
            _ => JobState::OtherEnded(base),
        }
    }

    /// Whether Slurm still holds the task (queued, running, requeued): the runner waits.
    pub fn is_active(&self) -> bool {
        matches!(self, JobState::Pending | JobState::Running | JobState::OtherActive(_))
    }
}

/// A task as Slurm reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    pub state: JobState,
    /// Slurm's reason (why pending, or why it ended), `None` when Slurm says "None".
    pub reason: Option<String>,
    /// The batch script's exit status, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    /// How often Slurm requeued it (preemption, node failure, `scontrol requeue`).
    pub restarts: u32,
}

impl TaskInfo {
    /// Why a task that Slurm no longer holds did not leave its stage done: the line `runner
    /// status` shows.
    pub fn failure(&self, task: TaskRef) -> String {
        let what = match &self.state {
            JobState::Timeout => "reached its time limit (TIMEOUT; raise slurm.time)".to_string(),
            JobState::OutOfMemory => "ran out of memory (OUT_OF_MEMORY; raise slurm.mem)".to_string(),
            JobState::NodeFail => "lost its node (NODE_FAIL)".to_string(),
            JobState::Cancelled => "was cancelled (CANCELLED)".to_string(),
            JobState::Preempted => "was preempted and not requeued (PREEMPTED)".to_string(),
            JobState::Failed => match (self.exit_code, self.signal) {
                (_, Some(sig)) if sig > 0 => format!("was killed by signal {sig} (FAILED)"),
                (Some(code), _) => format!("exited with status {code} (FAILED)"),
                _ => "failed (FAILED)".to_string(),
            },
            JobState::Completed => "exited with status 0 without recording a result (COMPLETED)".to_string(),
            JobState::OtherEnded(s) => format!("ended ({s})"),
            active => format!("is still {active:?}"),
        };
        let reason = self.reason.as_deref().map(|r| format!(", reason {r}")).unwrap_or_default();
        format!("Slurm job {task} {what}{reason}")
    }

    /// `PENDING (Resources)`: the queue state `runner status` shows while Slurm holds the task.
    pub fn queue_line(&self) -> String {
        let name = match &self.state {
            JobState::Pending => "PENDING".to_string(),
            JobState::Running => "RUNNING".to_string(),
            JobState::OtherActive(s) | JobState::OtherEnded(s) => s.clone(),
            other => format!("{other:?}").to_ascii_uppercase(),
        };
        let restarts = if self.restarts > 0 { format!(", requeued {}x", self.restarts) } else { String::new() };
        match &self.reason {
            Some(r) => format!("{name} ({r}{restarts})"),
            None if !restarts.is_empty() => format!("{name} ({})", &restarts[2..]),
            None => name,
        }
    }
}

/// The tasks of one `squeue --json` call.
#[derive(Debug, Clone, Default)]
pub struct QueueSnapshot {
    tasks: HashMap<TaskRef, TaskInfo>,
    /// Pending tasks that squeue folds into one record (`array_task_string`, e.g. `2-3%2`).
    folded: Vec<(u64, Vec<u32>, TaskInfo)>,
}

#[derive(Deserialize)]
struct SqueueJson {
    #[serde(default)]
    errors: Vec<serde_json::Value>,
    jobs: Vec<SqueueJob>,
}

#[derive(Deserialize)]
struct SqueueJob {
    #[serde(default)]
    array_job_id: u64,
    #[serde(default)]
    array_task_id: Option<u32>,
    #[serde(default)]
    array_task_string: String,
    job_state: String,
    #[serde(default)]
    state_reason: Option<String>,
    /// The wait status: exit code << 8, or the signal.
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    restart_cnt: u32,
}

fn reason(r: Option<&str>) -> Option<String> {
    r.map(str::trim).filter(|r| !r.is_empty() && *r != "None" && *r != "(null)").map(str::to_string)
}

impl QueueSnapshot {
    /// Parses `squeue --json` (Slurm 22.05's OpenAPI v0.0.38 form). Jobs that are not array
    /// tasks are ignored: the runner submits only arrays.
    pub fn from_squeue_json(text: &str) -> Result<Self, String> {
        let parsed: SqueueJson = serde_json::from_str(text).map_err(|e| format!("squeue --json: {e}"))?;
        if let Some(e) = parsed.errors.first() {
            return Err(format!("squeue --json reported an error: {e}"));
        }
        let mut snap = QueueSnapshot::default();
        for j in parsed.jobs {
            if j.array_job_id == 0 {
                continue;
            }
            let (exit_code, signal) = match j.exit_code {
                Some(status) if !JobState::parse(&j.job_state).is_active() => {
                    let status = status as i32;
                    if status & 0x7f != 0 {
                        (None, Some(status & 0x7f))
                    } else {
                        (Some((status >> 8) & 0xff), None)
                    }
                }
                _ => (None, None),
            };
            let info = TaskInfo {
                state: JobState::parse(&j.job_state),
                reason: reason(j.state_reason.as_deref()),
                exit_code,
                signal,
                restarts: j.restart_cnt,
            };
            match j.array_task_id {
                Some(task) => {
                    snap.tasks.insert(TaskRef { job: j.array_job_id, task }, info);
                }
                None => {
                    let ids = parse_task_list(&j.array_task_string).ok_or_else(|| {
                        format!("squeue --json: job {}: array tasks {:?} are not a task list", j.array_job_id, j.array_task_string)
                    })?;
                    snap.folded.push((j.array_job_id, ids, info));
                }
            }
        }
        Ok(snap)
    }

    pub fn task(&self, t: TaskRef) -> Option<&TaskInfo> {
        self.tasks.get(&t).or_else(|| self.folded.iter().find(|(job, ids, _)| *job == t.job && ids.contains(&t.task)).map(|(_, _, i)| i))
    }

    /// Adds what `scontrol` said about one task (for tasks squeue did not list).
    pub fn insert(&mut self, t: TaskRef, info: TaskInfo) {
        self.tasks.insert(t, info);
    }
}

/// `0-3%2`, `1,4-6`, `0-9:3`: the task ids of a folded array record (the `%N` throttle is
/// ignored).
pub fn parse_task_list(s: &str) -> Option<Vec<u32>> {
    let list = s.split('%').next()?;
    let mut ids = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (range, step) = match part.split_once(':') {
            Some((r, step)) => (r, step.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (part, 1),
        };
        match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?);
                ids.extend((a..=b).step_by(step as usize));
            }
            None => ids.push(range.parse().ok()?),
        }
    }
    (!ids.is_empty()).then_some(ids)
}

/// Parses one line of `scontrol show job -o <job>_<task>`.
pub fn parse_scontrol_line(line: &str) -> Option<(TaskRef, TaskInfo)> {
    let field = |name: &str| line.split_whitespace().find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')));
    let job = field("ArrayJobId")?.parse().ok()?;
    let task = field("ArrayTaskId")?.parse().ok()?;
    let state = JobState::parse(field("JobState")?);
    let (exit_code, signal) = match field("ExitCode").and_then(|e| e.split_once(':')) {
        Some((code, sig)) if !state.is_active() => {
            let sig = sig.parse::<i32>().ok().filter(|s| *s > 0);
            (if sig.is_some() { None } else { code.parse().ok() }, sig)
        }
        _ => (None, None),
    };
    let restarts = field("Restarts").and_then(|r| r.parse().ok()).unwrap_or(0);
    Some((TaskRef { job, task }, TaskInfo { state, reason: reason(field("Reason")), exit_code, signal, restarts }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/slurm").join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// A recorded queue whose plain jobs (array_job_id 0) are read as task 0 of an array with
    /// their job id: those states were recorded on plain jobs, the runner only submits arrays.
    fn plain_jobs_as_arrays(text: &str) -> QueueSnapshot {
        let mut json: serde_json::Value = serde_json::from_str(text).unwrap();
        for j in json["jobs"].as_array_mut().unwrap() {
            if j["array_job_id"] == 0 {
                j["array_job_id"] = j["job_id"].clone();
                j["array_task_id"] = serde_json::json!(0);
            }
        }
        QueueSnapshot::from_squeue_json(&json.to_string()).unwrap()
    }

    fn t(job: u64, task: u32) -> TaskRef {
        TaskRef { job, task }
    }

    #[test]
    fn running_array_with_folded_pending_tasks() {
        // Recorded from the local cluster: `--array=0-3%2`, tasks 0 and 1 running.
        let snap = QueueSnapshot::from_squeue_json(&fixture("squeue_array_running.json")).unwrap();
        assert_eq!(snap.task(t(1, 0)).unwrap().state, JobState::Running);
        let pending = snap.task(t(1, 3)).unwrap();
        assert_eq!(pending.state, JobState::Pending);
        assert_eq!(pending.queue_line(), "PENDING (JobArrayTaskLimit)");
        assert!(snap.task(t(1, 4)).is_none(), "not a task of the array");
        assert!(snap.task(t(2, 0)).is_none(), "another job");
    }

    #[test]
    fn finished_array_maps_exit_codes() {
        // Task 2 exited with status 3, the others with 0.
        let snap = QueueSnapshot::from_squeue_json(&fixture("squeue_array_done.json")).unwrap();
        let failed = snap.task(t(1, 2)).unwrap();
        assert_eq!(failed.state, JobState::Failed);
        assert_eq!(failed.exit_code, Some(3));
        assert!(!failed.state.is_active());
        assert_eq!(failed.failure(t(1, 2)), "Slurm job 1_2 exited with status 3 (FAILED), reason NonZeroExitCode");
        let ok = snap.task(t(1, 3)).unwrap();
        assert_eq!((ok.state.clone(), ok.exit_code), (JobState::Completed, Some(0)));
    }

    #[test]
    fn requeued_task_is_pending_again_and_counts_restarts() {
        // A running job put back by `scontrol requeue` (what preemption and node failure do
        // with --requeue).
        let snap = plain_jobs_as_arrays(&fixture("squeue_requeued.json"));
        assert_eq!(snap.task(t(7, 0)).unwrap().queue_line(), "PENDING (BeginTime, requeued 1x)");
        let scontrol = fixture("scontrol_requeued.txt").replace("JobId=7 ", "JobId=7 ArrayJobId=7 ArrayTaskId=0 ");
        let (_, info) = parse_scontrol_line(&scontrol).unwrap();
        assert_eq!(info.state, JobState::Pending);
        assert_eq!(info.restarts, 1);
        assert!(info.state.is_active());
        assert_eq!(info.queue_line(), "PENDING (BeginTime, requeued 1x)");
    }

    #[test]
    fn scontrol_lines_of_finished_and_cancelled_tasks() {
        let line = fixture("scontrol_array_done.txt");
        let parsed: Vec<(TaskRef, TaskInfo)> = line.lines().filter_map(parse_scontrol_line).collect();
        assert_eq!(parsed.len(), 4);
        let failed = parsed.iter().find(|(r, _)| *r == t(1, 2)).unwrap();
        assert_eq!((failed.1.state.clone(), failed.1.exit_code), (JobState::Failed, Some(3)));
        let cancelled = fixture("scontrol_cancelled.txt").replace("JobId=6 ", "JobId=6 ArrayJobId=6 ArrayTaskId=0 ");
        let (r, info) = parse_scontrol_line(&cancelled).unwrap();
        assert_eq!(r, t(6, 0));
        assert_eq!(info.state, JobState::Cancelled);
        assert_eq!(info.failure(r), "Slurm job 6_0 was cancelled (CANCELLED)");
    }

    #[test]
    fn timeout_and_cancel_as_recorded() {
        // Jobs 5 (`--time=1`, killed at its limit) and 6 (`scancel`), plain jobs recorded on the
        // local cluster, read here as task 0 of arrays 5 and 6.
        let snap = plain_jobs_as_arrays(&fixture("squeue_timeout_cancelled.json"));
        let timeout = snap.task(t(5, 0)).unwrap();
        assert_eq!(timeout.state, JobState::Timeout);
        assert_eq!(timeout.failure(t(5, 0)), "Slurm job 5_0 reached its time limit (TIMEOUT; raise slurm.time), reason TimeLimit");
        let cancelled = snap.task(t(6, 0)).unwrap();
        assert_eq!((cancelled.state.clone(), cancelled.exit_code), (JobState::Cancelled, Some(143)), "stopped by SIGTERM");
        let (r, info) =
            parse_scontrol_line(&fixture("scontrol_timeout.txt").replace("JobId=5 ", "JobId=5 ArrayJobId=5 ArrayTaskId=0 ")).unwrap();
        assert_eq!((r, info), (t(5, 0), timeout.clone()));
    }

    #[test]
    fn every_slurm_state_maps() {
        for (name, active) in [
            ("PENDING", true),
            ("RUNNING", true),
            ("REQUEUED", true),
            ("COMPLETING", true),
            ("SUSPENDED", true),
            ("COMPLETED", false),
            ("FAILED", false),
            ("OUT_OF_MEMORY", false),
            ("TIMEOUT", false),
            ("NODE_FAIL", false),
            ("CANCELLED", false),
            ("CANCELLED+", false),
            ("PREEMPTED", false),
            ("BOOT_FAIL", false),
        ] {
            assert_eq!(JobState::parse(name).is_active(), active, "{name}");
        }
        let info = |state| TaskInfo { state, reason: None, exit_code: None, signal: None, restarts: 0 };
        assert!(info(JobState::parse("OUT_OF_MEMORY")).failure(t(5, 1)).contains("out of memory"));
        assert!(info(JobState::parse("TIMEOUT")).failure(t(5, 1)).contains("time limit"));
        assert!(info(JobState::parse("NODE_FAIL")).failure(t(5, 1)).contains("node"));
        assert!(info(JobState::parse("PREEMPTED")).failure(t(5, 1)).contains("preempted"));
    }

    #[test]
    fn task_lists() {
        assert_eq!(parse_task_list("2-3%2"), Some(vec![2, 3]));
        assert_eq!(parse_task_list("0,4-6"), Some(vec![0, 4, 5, 6]));
        assert_eq!(parse_task_list("0-6:3"), Some(vec![0, 3, 6]));
        assert_eq!(parse_task_list(""), None);
        assert_eq!(parse_task_list("x"), None);
    }
}
