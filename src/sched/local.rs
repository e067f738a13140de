use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::DeviceSlot;
use crate::plan::{Plan, PlannedStage};
use crate::store::{tail, ResultsDir, StageState, StageStatus, StoreError};

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub devices: Vec<DeviceSlot>,
    pub jobs_per_device: usize,
    pub fail_fast: bool,
    /// The `runner` executable that runs `exec STAGE_DIR`.
    pub exe: PathBuf,
}

/// What happened to each stage of the plan in this invocation.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub executed: Vec<String>,
    pub reused: Vec<String>,
    pub failed: BTreeMap<String, String>,
    pub interrupted: bool,
}

/// Observer of the schedule (the progress view).
pub trait Progress {
    /// `place`: the device slot (local) or the Slurm task.
    fn started(&self, stage: &str, place: &str);
    fn finished(&self, stage: &str, state: StageState);
    fn tick(&self, done: usize, running: usize, failed: usize, pending: usize);
}

struct Running {
    child: Child,
    slot: usize,
    attempt: u32,
}

/// Runs every stage of `plan` that is not done yet.
pub fn run_local(plan: &Plan, results: &ResultsDir, opts: &LocalOptions, progress: &dyn Progress) -> Result<Outcome, StoreError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| StoreError::io(&results.root, e))?;
    }
    let slots: Vec<DeviceSlot> = opts.devices.iter().flat_map(|d| std::iter::repeat_n(d.clone(), opts.jobs_per_device.max(1))).collect();
    let mut free: Vec<bool> = vec![true; slots.len()];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_slots = slots.iter().filter(|s| matches!(s, DeviceSlot::Cpu)).count();
    let cpu_threads = threads_per_cpu_job(cores, cpu_slots, std::env::var_os("RAYON_NUM_THREADS").is_some());
    let mut outcome = Outcome::default();
    let mut done: HashSet<String> = HashSet::new();
    let mut failed: HashSet<String> = HashSet::new();
    let mut pending: Vec<String> = Vec::new();
    for s in &plan.stages {
        if results.stage_status(&s.id)?.is_done() {
            done.insert(s.id.clone());
            outcome.reused.push(s.id.clone());
        } else {
            pending.push(s.id.clone());
        }
    }
    let by_id: HashMap<&str, &PlannedStage> = plan.stages.iter().map(|s| (s.id.as_str(), s)).collect();
    let deps = |id: &str| by_id.get(id).map_or(&[][..], |s| s.depends_on.as_slice());
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    // On-disk states of pending stages: an orphaned process of a killed runner may still run one
    // or finish it. Re-read once a second, not on every tick.
    let mut on_disk: HashMap<String, StageStatus> = HashMap::new();
    let mut last_scan: Option<Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            interrupt(&mut running, results)?;
            outcome.interrupted = true;
            break;
        }
        // Stages whose dependencies failed cannot run.
        let mut blocked = Vec::new();
        for id in &pending {
            if let Some(dep) = deps(id).iter().find(|d| failed.contains(*d)) {
                blocked.push((id.clone(), dep.clone()));
            }
        }
        for (id, dep) in blocked {
            pending.retain(|p| p != &id);
            let reason = format!("not run: stage {dep} failed");
            let status = StageStatus::pending().finished(StageState::Failed, Some(reason.clone()), None);
            let dir = results.stage_dir(&id);
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
            status.write(&dir)?;
            failed.insert(id.clone());
            outcome.failed.insert(id.clone(), reason);
            progress.finished(&id, StageState::Failed);
        }
        if last_scan.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            on_disk = pending.iter().filter_map(|id| results.stage_status(id).ok().map(|st| (id.clone(), st))).collect();
            last_scan = Some(Instant::now());
        }
        let is_active = |id: &str| on_disk.get(id).is_some_and(StageStatus::is_active);
        // Orphans that finished meanwhile.
        let adopted: Vec<String> =
            pending.iter().filter(|id| on_disk.get(id.as_str()).is_some_and(StageStatus::is_done)).cloned().collect();
        for id in adopted {
            pending.retain(|p| p != &id);
            done.insert(id.clone());
            outcome.reused.push(id.clone());
            progress.finished(&id, StageState::Done);
        }
        // Start ready stages on free slots.
        while let Some(slot) = free.iter().position(|f| *f) {
            if opts.fail_fast && !failed.is_empty() {
                break;
            }
            // A stage still running in an orphaned process (its runner was killed) is waited for.
            let ready = |id: &String| deps(id).iter().all(|d| done.contains(d)) && !is_active(id);
            let Some(pos) = pending.iter().position(ready) else {
                break;
            };
            let id = pending.remove(pos);
            let dir = results.stage_dir(&id);
            let previous = StageStatus::read(&dir)?;
            let attempt = previous.attempt + 1;
            let child = spawn(&opts.exe, &dir, &slots[slot], attempt, cpu_threads)?;
            free[slot] = false;
            progress.started(&id, &slots[slot].to_string());
            running.insert(id, Running { child, slot, attempt });
        }
        // Reap finished children.
        let mut finished = Vec::new();
        for (id, r) in running.iter_mut() {
            if let Some(exit) = r.child.try_wait().map_err(|e| StoreError::io(&results.stage_dir(id), e))? {
                finished.push((id.clone(), exit));
            }
        }
        for (id, exit) in finished {
            let r = running.remove(&id).expect("reaped stage was running");
            free[r.slot] = true;
            let dir = results.stage_dir(&id);
            let status = StageStatus::read(&dir)?;
            if exit.success() && status.is_done() {
                done.insert(id.clone());
                outcome.executed.push(id.clone());
                progress.finished(&id, StageState::Done);
                continue;
            }
            let reason = match (&status.state, status.reason.clone()) {
                (StageState::Failed, Some(reason)) => reason,
                _ => describe_exit(&exit),
            };
            let log_tail = tail(&crate::store::StageDir::new(&dir).stderr(), 20);
            let mut st = status;
            st.attempt = r.attempt;
            st.finished(StageState::Failed, Some(reason.clone()), Some(log_tail)).write(&dir)?;
            failed.insert(id.clone());
            outcome.failed.insert(id.clone(), reason);
            progress.finished(&id, StageState::Failed);
        }
        progress.tick(done.len(), running.len(), failed.len(), pending.len());
        let stuck = running.is_empty() && (pending.is_empty() || (opts.fail_fast && !failed.is_empty()));
        if stuck {
            break;
        }
        let waiting_on_orphan = pending.iter().any(|id| is_active(id));
        if running.is_empty()
            && !waiting_on_orphan
            && !pending.iter().any(|id| deps(id).iter().all(|d| done.contains(d) || failed.contains(d)))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(outcome)
}

/// Threads for each CPU stage when several share the CPU (`--jobs-per-device N` on `cpu`): the
/// cores split evenly, so that N stages do not each start a pool as large as the machine and
/// contend for it. `None` leaves the default (all cores), also when the user set
/// `RAYON_NUM_THREADS` themselves.
pub fn threads_per_cpu_job(cores: usize, cpu_slots: usize, user_set: bool) -> Option<usize> {
    (cpu_slots > 1 && !user_set).then(|| (cores / cpu_slots).max(1))
}

fn spawn(exe: &Path, dir: &Path, slot: &DeviceSlot, attempt: u32, cpu_threads: Option<usize>) -> Result<Child, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let stderr_path = crate::store::StageDir::new(dir).stderr();
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| StoreError::io(&stderr_path, e))?;
    let mut cmd = Command::new(exe);
    cmd.arg("exec").arg(dir).env("RUNNER_ATTEMPT", attempt.to_string()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
    match slot {
        DeviceSlot::Cpu => {
            if let Some(n) = cpu_threads {
                cmd.env("RAYON_NUM_THREADS", n.to_string());
            }
            cmd.env("CUDA_VISIBLE_DEVICES", "").env("RUNNER_DEVICE", "cpu")
        }
        DeviceSlot::Cuda(i) => cmd.env("CUDA_VISIBLE_DEVICES", i).env("RUNNER_DEVICE", "cuda"),
    };
    // A child of its own process group does not receive the terminal's Ctrl-C directly; the
    // scheduler forwards the stop so it can record the interruption.
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    stop_with_parent(&mut cmd);
    cmd.spawn().map_err(|e| StoreError::io(exe, e))
}

/// A stage must not outlive a runner killed with SIGKILL (which cannot forward the stop): the
/// kernel sends the child SIGTERM when the runner dies, and the stage records itself as
/// interrupted (`stage_signals`). The signal follows the thread that spawned the child, so
/// `run_local` must not be called from a thread that ends before the sweep does.
#[cfg(target_os = "linux")]
fn stop_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid; the error is built from a raw OS code without allocating).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The runner may have died between fork and prctl: then nobody would signal us.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

fn describe_exit(exit: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (exit.code(), exit.signal()) {
        (_, Some(9)) => "crashed: killed by signal 9 (SIGKILL; out of memory?)".into(),
        (_, Some(sig)) => format!("crashed: killed by signal {sig}"),
        (Some(code), _) => format!("exited with status {code} without recording a result"),
        _ => "exited abnormally".into(),
    }
}

fn interrupt(running: &mut BTreeMap<String, Running>, results: &ResultsDir) -> Result<(), StoreError> {
    for r in running.values() {
        unsafe { libc::kill(r.child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, r) in running.iter_mut() {
        while r.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = r.child.kill();
                let _ = r.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = results.stage_dir(id);
        let status = StageStatus::read(&dir)?;
        if !status.is_done() {
            status.finished(StageState::Interrupted, Some("interrupted (Ctrl-C); rerun to resume".into()), None).write(&dir)?;
        }
    }
    running.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::threads_per_cpu_job;

    #[test]
    fn cpu_jobs_share_the_cores() {
        assert_eq!(threads_per_cpu_job(2, 1, false), None, "one job keeps every core");
        assert_eq!(threads_per_cpu_job(2, 2, false), Some(1));
        assert_eq!(threads_per_cpu_job(16, 3, false), Some(5));
        assert_eq!(threads_per_cpu_job(2, 4, false), Some(1), "never zero");
        assert_eq!(threads_per_cpu_job(2, 2, true), None, "the user's RAYON_NUM_THREADS wins");
    }
}
