//! The Slurm client commands the backend calls: `sbatch`, `squeue --json`, `scontrol show job`,
//! `scancel`.

use std::path::Path;
use std::process::Command;

use super::queue::{parse_scontrol_line, QueueSnapshot, TaskInfo, TaskRef};
use super::SlurmError;

fn run(cmd: &mut Command) -> Result<String, SlurmError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound { " (are the Slurm client commands on PATH?)" } else { "" };
        SlurmError::Command { command: shown.clone(), msg: format!("{e}{hint}") }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(SlurmError::Command { command: shown, msg: format!("{}: {stderr}", out.status) });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Submits `script` and returns the array's job id.
pub fn sbatch(script: &Path) -> Result<u64, SlurmError> {
    let out = run(Command::new("sbatch").arg("--parsable").arg(script))?;
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let id = out.trim().split(';').next().unwrap_or("");
    id.parse().map_err(|_| SlurmError::Command {
        command: format!("sbatch --parsable {}", script.display()),
        msg: format!("unexpected output {out:?}"),
    })
}

/// The whole queue, in one call.
pub fn squeue() -> Result<QueueSnapshot, SlurmError> {
    let text = run(Command::new("squeue").arg("--json"))?;
    QueueSnapshot::from_squeue_json(&text).map_err(|msg| SlurmError::Command { command: "squeue --json".into(), msg })
}

/// One task squeue did not list; `None` when Slurm has forgotten it too.
pub fn scontrol_task(task: TaskRef) -> Option<TaskInfo> {
    let text = run(Command::new("scontrol").args(["show", "job", "-o", &task.to_string()])).ok()?;
    text.lines().filter_map(parse_scontrol_line).find(|(t, _)| *t == task).map(|(_, info)| info)
}

/// Cancels whole arrays (every task the runner still has in them).
pub fn scancel(jobs: &[u64]) -> Result<(), SlurmError> {
    if jobs.is_empty() {
        return Ok(());
    }
    run(Command::new("scancel").args(jobs.iter().map(u64::to_string))).map(|_| ())
}
