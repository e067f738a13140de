//! The Slurm backend: the plan's stages run as Slurm array tasks, each `runner exec STAGE_DIR`
//! on the shared filesystem.
//!
//! Waves are submitted as they become ready (one `sbatch --array` for every stage whose
//! dependencies are done), not chained up front with `--dependency=afterok`: an array's
//! dependency waits for every task of the array it names, so one failed stage would hold back
//! the stages of every other run behind it (Slurm would mark them `DependencyNeverSatisfied`),
//! and the plan's shared stages do not map onto `aftercorr`'s task-to-task pairing. The runner
//! polls anyway, so it submits the next stages as soon as their inputs are done.
//!
//! The stage directories stay the source of truth: a stage is done when its `status.json` says
//! so, whatever Slurm says. Slurm's state decides what happened to a stage that is not done:
//! still queued or running (also requeued after preemption or node failure), or ended
//! (failed, out of memory, time limit, node failure, cancelled) with the reason recorded in
//! the stage's status. Every submission is recorded in `slurm/jobs.json` before anything else,
//! so a runner started after the last one died re-attaches to the tasks Slurm still holds.

mod book;
mod commands;
pub mod queue;
mod script;

pub use book::{JobBook, Submission};
pub use queue::{JobState, QueueSnapshot, TaskInfo, TaskRef};
pub use script::{sbatch_script, ScriptTask, Wave};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Outcome, Progress};
use crate::plan::{Plan, PlannedStage};
use crate::spec::SlurmSpec;
use crate::store::{self, ResultsDir, StageState, StageStatus, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{command}: {msg}")]
    Command { command: String, msg: String },
}

#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// What each stage's task asks Slurm for (the spec's `[slurm]` table).
    pub resources: SlurmSpec,
    /// What the stages with their own `slurm` table ask for instead, by the spec's stage id.
    pub stage_resources: BTreeMap<String, SlurmSpec>,
    /// Cancel every queued and running task after the first failure.
    pub fail_fast: bool,
    /// The `runner` executable the tasks run (`exec STAGE_DIR`).
    pub exe: PathBuf,
    /// How often the queue is read.
    pub poll: Duration,
}

impl SlurmOptions {
    /// The resources of the spec's stage `name`.
    pub fn resources_for(&self, name: &str) -> &SlurmSpec {
        self.stage_resources.get(name).unwrap_or(&self.resources)
    }
}

/// `stages` grouped by the resources their tasks ask for, groups in order of first appearance:
/// one array each (an array asks for one set of resources).
fn by_resources<'a>(stages: &[String], resources_of: impl Fn(&str) -> &'a SlurmSpec) -> Vec<(&'a SlurmSpec, Vec<String>)> {
    let mut groups: Vec<(&SlurmSpec, Vec<String>)> = Vec::new();
    for id in stages {
        let res = resources_of(id);
        match groups.iter_mut().find(|(r, _)| *r == res) {
            Some((_, ids)) => ids.push(id.clone()),
            None => groups.push((res, vec![id.clone()])),
        }
    }
    groups
}

/// `results/<experiment>/slurm/`: the sbatch scripts, the tasks' Slurm logs, `jobs.json` and
/// `queue.json`.
pub fn slurm_dir(results: &ResultsDir) -> PathBuf {
    results.root.join("slurm")
}

/// `slurm/queue.json`: the last queue state the runner saw for each stage it waits on (shown by
/// `runner status`).
pub fn queue_path(results: &ResultsDir) -> PathBuf {
    slurm_dir(results).join("queue.json")
}

/// Waiting longer than this after `scancel` for tasks to stop (Slurm's default KillWait is 30 s).
const CANCEL_WAIT: Duration = Duration::from_secs(40);
/// Consecutive failed `squeue` calls tolerated (a busy controller times out now and then).
const SQUEUE_RETRIES: u32 = 5;

struct Schedule<'a> {
    results: ResultsDir,
    slurm_dir: PathBuf,
    workdir: PathBuf,
    opts: &'a SlurmOptions,
    experiment: &'a str,
    book: JobBook,
    progress: &'a dyn Progress,
    /// Stages submitted and not finished: their latest task.
    tracked: BTreeMap<String, TaskRef>,
}

/// Runs every stage of `plan` that is not done yet on Slurm.
pub fn run_slurm(plan: &Plan, results: &ResultsDir, opts: &SlurmOptions, progress: &dyn Progress) -> Result<Outcome, SlurmError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| StoreError::io(&results.root, e))?;
    }
    // The tasks run elsewhere: every path they see is absolute.
    let root = std::path::absolute(&results.root).map_err(|e| StoreError::io(&results.root, e))?;
    let results = ResultsDir::new(root);
    let slurm_dir = slurm_dir(&results);
    std::fs::create_dir_all(&slurm_dir).map_err(|e| StoreError::io(&slurm_dir, e))?;
    let workdir = std::env::current_dir().map_err(|e| StoreError::io(Path::new("."), e))?;
    let book = JobBook::read(&slurm_dir)?;
    let mut s = Schedule { results, slurm_dir, workdir, opts, experiment: &plan.experiment, book, progress, tracked: BTreeMap::new() };

    let mut outcome = Outcome::default();
    let mut done: HashSet<String> = HashSet::new();
    let mut failed: HashSet<String> = HashSet::new();
    let mut pending: Vec<String> = Vec::new();
    for st in &plan.stages {
        if s.results.stage_status(&st.id)?.is_done() {
            done.insert(st.id.clone());
            outcome.reused.push(st.id.clone());
        } else {
            pending.push(st.id.clone());
        }
    }
    let by_id: HashMap<&str, &PlannedStage> = plan.stages.iter().map(|st| (st.id.as_str(), st)).collect();
    let deps = |id: &str| by_id.get(id).map_or(&[][..], |st| st.depends_on.as_slice());

    // A runner that died left its tasks in the queue: wait for them rather than submit again.
    if !s.book.submissions.is_empty() {
        let queue = commands::squeue()?;
        for (stage, task) in s.book.attachable(&queue, |id| done.contains(id)) {
            if let Some(pos) = pending.iter().position(|p| *p == stage) {
                pending.remove(pos);
                progress.started(&stage, &format!("Slurm job {task} (re-attached)"));
                s.tracked.insert(stage, task);
            }
        }
    }

    let mut squeue_failures = 0;
    loop {
        if stop.load(Ordering::SeqCst) {
            s.cancel("interrupted (Ctrl-C): the runner cancelled its Slurm jobs; rerun to resume")?;
            outcome.interrupted = true;
            break;
        }
        // Stages whose dependencies failed cannot run.
        let blocked: Vec<(String, String)> =
            pending.iter().filter_map(|id| deps(id).iter().find(|d| failed.contains(*d)).map(|d| (id.clone(), d.clone()))).collect();
        for (id, dep) in blocked {
            pending.retain(|p| p != &id);
            let reason = format!("not run: stage {dep} failed");
            let dir = s.results.stage_dir(&id);
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
            StageStatus::read(&dir)?.finished(StageState::Failed, Some(reason.clone()), None).write(&dir)?;
            failed.insert(id.clone());
            outcome.failed.insert(id.clone(), reason);
            progress.finished(&id, StageState::Failed);
        }
        if !(opts.fail_fast && !failed.is_empty()) {
            let ready: Vec<String> = pending.iter().filter(|id| deps(id).iter().all(|d| done.contains(d))).cloned().collect();
            if !ready.is_empty() {
                pending.retain(|p| !ready.contains(p));
                let name = |id: &str| by_id.get(id).map_or("", |st| st.config.name.as_str());
                for (resources, stages) in by_resources(&ready, |id| opts.resources_for(name(id))) {
                    s.submit(&stages, resources)?;
                }
            }
        }
        if !s.tracked.is_empty() {
            let queue = match commands::squeue() {
                Ok(q) => {
                    squeue_failures = 0;
                    q
                }
                Err(e) if squeue_failures < SQUEUE_RETRIES => {
                    squeue_failures += 1;
                    tracing::warn!(error = %e, "reading the Slurm queue failed; retrying");
                    s.sleep(&stop);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for (stage, end) in s.poll(&queue)? {
                match end {
                    End::Done => {
                        done.insert(stage.clone());
                        outcome.executed.push(stage.clone());
                        progress.finished(&stage, StageState::Done);
                    }
                    End::Failed(reason) => {
                        failed.insert(stage.clone());
                        outcome.failed.insert(stage.clone(), reason);
                        progress.finished(&stage, StageState::Failed);
                    }
                    End::Cancelled => {
                        outcome.interrupted = true;
                        progress.finished(&stage, StageState::Interrupted);
                    }
                }
            }
            if opts.fail_fast && !failed.is_empty() && !s.tracked.is_empty() {
                let first = failed.iter().min().cloned().unwrap_or_default();
                s.cancel(&format!("cancelled by --fail-fast after stage {first} failed; rerun to resume"))?;
            }
        }
        progress.tick(done.len(), s.tracked.len(), failed.len(), pending.len());
        let runnable = pending.iter().any(|id| deps(id).iter().all(|d| done.contains(d) || failed.contains(d)));
        if s.tracked.is_empty() && (!runnable || (opts.fail_fast && !failed.is_empty())) {
            break;
        }
        s.sleep(&stop);
    }
    let _ = std::fs::remove_file(queue_path(&s.results));
    Ok(outcome)
}

/// How a tracked stage ended.
enum End {
    Done,
    Failed(String),
    /// Cancelled outside the runner (`scancel`): interrupted, resumable.
    Cancelled,
}

impl Schedule<'_> {
    fn sleep(&self, stop: &AtomicBool) {
        let until = Instant::now() + self.opts.poll;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One array for `stages`: the script in `slurm/wave-<n>.sbatch`, then `sbatch`.
    fn submit(&mut self, stages: &[String], resources: &SlurmSpec) -> Result<(), SlurmError> {
        let wave = self.book.next_wave();
        let mut tasks = Vec::new();
        for id in stages {
            let dir = self.results.stage_dir(id);
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
            let previous = StageStatus::read(&dir)?;
            tasks.push(ScriptTask { stage_dir: dir.clone(), attempt: previous.attempt + 1 });
            let queued =
                StageStatus { attempt: previous.attempt, reason: Some(format!("queued on Slurm (wave {wave})")), ..StageStatus::pending() };
            queued.write(&dir)?;
        }
        let text = sbatch_script(
            &Wave {
                experiment: self.experiment,
                number: wave,
                slurm_dir: &self.slurm_dir,
                workdir: &self.workdir,
                exe: &self.opts.exe,
                tasks: &tasks,
            },
            resources,
        );
        let path = self.slurm_dir.join(format!("wave-{wave}.sbatch"));
        store::write_file(&path, text.as_bytes())?;
        let job = commands::sbatch(&path)?;
        self.book.record(&self.slurm_dir, Submission { wave, job_id: job, stages: stages.to_vec() })?;
        for (i, id) in stages.iter().enumerate() {
            let task = TaskRef { job, task: i as u32 };
            self.progress.started(id, &format!("Slurm job {task}"));
            self.tracked.insert(id.clone(), task);
        }
        Ok(())
    }

    /// The tracked stages that ended since the last poll, each recorded in its status.
    fn poll(&mut self, queue: &QueueSnapshot) -> Result<Vec<(String, End)>, SlurmError> {
        let mut ended = Vec::new();
        let mut lines = BTreeMap::new();
        for (stage, &task) in &self.tracked {
            // Read after the queue: a task Slurm reports ended has written its last status.
            let dir = self.results.stage_dir(stage);
            let status = StageStatus::read(&dir)?;
            if status.is_done() {
                ended.push((stage.clone(), End::Done));
                continue;
            }
            let info = queue.task(task).cloned().or_else(|| commands::scontrol_task(task));
            let slurm_reason = match info {
                Some(info) if info.state.is_active() => {
                    lines.insert(stage.clone(), format!("Slurm job {task}: {}", info.queue_line()));
                    continue;
                }
                Some(info) if info.state == JobState::Cancelled => {
                    let reason = format!("{}; rerun to resume", info.failure(task));
                    status.finished(StageState::Interrupted, Some(reason), None).write(&dir)?;
                    ended.push((stage.clone(), End::Cancelled));
                    continue;
                }
                Some(info) => info.failure(task),
                None => format!("Slurm job {task} is gone from the queue (Slurm no longer knows it)"),
            };
            // The stage's own error says most; Slurm's state says how the task ended.
            let reason = match (&status.state, &status.reason) {
                (StageState::Failed, Some(own)) => format!("{own} [{slurm_reason}]"),
                _ => slurm_reason,
            };
            let log_tail = self.log_tail(stage, task);
            status.finished(StageState::Failed, Some(reason.clone()), Some(log_tail)).write(&dir)?;
            ended.push((stage.clone(), End::Failed(reason)));
        }
        for (stage, _) in &ended {
            self.tracked.remove(stage);
        }
        store::write_json(&queue_path(&self.results), &lines)?;
        Ok(ended)
    }

    /// The stage's stderr and the task's Slurm log (where Slurm writes why it killed a task).
    fn log_tail(&self, stage: &str, task: TaskRef) -> String {
        let stderr = store::tail(&self.results.stage(stage).stderr(), 20);
        let wave = self.book.submissions.iter().find(|s| s.job_id == task.job).map(|s| s.wave);
        let slurm_log = wave.map(|w| store::tail(&self.slurm_dir.join(format!("wave-{w}_{}.out", task.task)), 5)).unwrap_or_default();
        [stderr, slurm_log].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join("\n")
    }

    /// Cancels every tracked task, waits for Slurm to stop them (each stage records its own
    /// interruption on SIGTERM), and marks the stages that are not done interrupted.
    fn cancel(&mut self, reason: &str) -> Result<(), SlurmError> {
        let tasks: Vec<TaskRef> = self.tracked.values().copied().collect();
        commands::scancel(&self.book.jobs_of(&tasks))?;
        let deadline = Instant::now() + CANCEL_WAIT;
        while Instant::now() < deadline {
            let queue = commands::squeue()?;
            if !tasks.iter().any(|t| queue.task(*t).is_some_and(|i| i.state.is_active())) {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        for (stage, task) in std::mem::take(&mut self.tracked) {
            let dir = self.results.stage_dir(&stage);
            let status = StageStatus::read(&dir)?;
            if status.is_done() {
                continue;
            }
            status.finished(StageState::Interrupted, Some(format!("{reason} (Slurm job {task})")), None).write(&dir)?;
            self.progress.finished(&stage, StageState::Interrupted);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_with_their_own_resources_go_in_arrays_of_their_own() {
        let opts = SlurmOptions {
            resources: SlurmSpec { gpus: 1, ..Default::default() },
            stage_resources: BTreeMap::from([("eval".to_string(), SlurmSpec { gpus: 0, ..Default::default() })]),
            fail_fast: false,
            exe: PathBuf::from("runner"),
            poll: Duration::from_secs(1),
        };
        let ready: Vec<String> = ["attack-1", "eval-1", "attack-2", "eval-2"].map(String::from).to_vec();
        let name = |id: &str| id.split('-').next().unwrap().to_string();
        let groups = by_resources(&ready, |id| opts.resources_for(&name(id)));
        let got: Vec<(u32, Vec<&str>)> = groups.iter().map(|(r, ids)| (r.gpus, ids.iter().map(String::as_str).collect())).collect();
        assert_eq!(got, vec![(1, vec!["attack-1", "attack-2"]), (0, vec!["eval-1", "eval-2"])]);
    }
}
