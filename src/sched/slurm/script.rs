//! The sbatch script of one wave: an array with one task per stage, each task running
//! `runner exec STAGE_DIR`. The text depends only on its inputs (no dates, no host names), so
//! the same wave of the same plan gives the same file.

use std::path::{Path, PathBuf};

use crate::spec::SlurmSpec;

/// One array task: the stage directory (absolute) and the attempt it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptTask {
    pub stage_dir: PathBuf,
    pub attempt: u32,
}

/// What one wave's script needs besides the resources.
#[derive(Debug, Clone)]
pub struct Wave<'a> {
    pub experiment: &'a str,
    pub number: usize,
    /// The results directory's `slurm/` folder (absolute): the tasks' Slurm logs go there.
    pub slurm_dir: &'a Path,
    /// The directory the stages run in (the runner's working directory).
    pub workdir: &'a Path,
    /// The `runner` executable (absolute).
    pub exe: &'a Path,
    pub tasks: &'a [ScriptTask],
}

/// Single-quotes a word for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A job name Slurm shows in `squeue`: `runner-<experiment>-w<n>`.
fn job_name(experiment: &str, wave: usize) -> String {
    let clean: String = experiment.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("runner-{clean}-w{wave}")
}

pub fn sbatch_script(wave: &Wave, res: &SlurmSpec) -> String {
    let n = wave.tasks.len();
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line("#!/bin/bash".into());
    line(format!("# runner: experiment {}, wave {}: {n} stage(s), one array task each.", wave.experiment, wave.number));
    line(format!("#SBATCH --job-name={}", job_name(wave.experiment, wave.number)));
    let throttle = res.max_parallel.map(|m| format!("%{m}")).unwrap_or_default();
    line(format!("#SBATCH --array=0-{}{throttle}", n.saturating_sub(1)));
    line(format!("#SBATCH --output={}/wave-{}_%a.out", wave.slurm_dir.display(), wave.number));
    line(format!("#SBATCH --chdir={}", wave.workdir.display()));
    // Node failure and preemption put the task back in the queue rather than failing it.
    line("#SBATCH --requeue".into());
    let options = [("partition", &res.partition), ("account", &res.account), ("qos", &res.qos), ("mem", &res.mem), ("time", &res.time)];
    for (name, value) in options {
        if let Some(v) = value {
            line(format!("#SBATCH --{name}={v}"));
        }
    }
    if let Some(c) = res.cpus {
        line(format!("#SBATCH --cpus-per-task={c}"));
    }
    if res.gpus > 0 {
        line(format!("#SBATCH --gres=gpu:{}", res.gpus));
    }
    // A warning before the time limit: a training stage checkpoints, stops and requeues itself.
    let signal = res.signal_before_secs();
    if signal > 0 {
        line(format!("#SBATCH --signal=B:USR1@{signal}"));
    }
    for extra in &res.sbatch {
        line(format!("#SBATCH {extra}"));
    }
    line("set -euo pipefail".into());
    line("stages=(".into());
    for t in wave.tasks {
        line(format!("  {}", quote(&t.stage_dir.to_string_lossy())));
    }
    line(")".into());
    let attempts: Vec<String> = wave.tasks.iter().map(|t| t.attempt.to_string()).collect();
    line(format!("attempts=({})", attempts.join(" ")));
    line("dir=\"${stages[$SLURM_ARRAY_TASK_ID]}\"".into());
    line("# A task Slurm requeued is the stage's next attempt.".into());
    line("export RUNNER_ATTEMPT=$(( ${attempts[$SLURM_ARRAY_TASK_ID]} + ${SLURM_RESTART_COUNT:-0} ))".into());
    if res.gpus > 0 {
        line("export RUNNER_DEVICE=cuda".into());
    } else {
        line("export RUNNER_DEVICE=cpu CUDA_VISIBLE_DEVICES=".into());
    }
    line("# The stage's threads: the CPUs Slurm gave this task, not the whole node.".into());
    line("export RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}\"".into());
    line(format!("exec {} exec \"$dir\" 2>\"$dir/stderr.log\"", quote(&wave.exe.to_string_lossy())));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_snapshot() {
        let tasks = vec![
            ScriptTask { stage_dir: "/r/tiny-sweep/stages/attack-1f2e".into(), attempt: 1 },
            ScriptTask { stage_dir: "/r/tiny-sweep/stages/attack-9a0b".into(), attempt: 2 },
            ScriptTask { stage_dir: "/r/tiny-sweep/stages/it's".into(), attempt: 1 },
        ];
        let wave = Wave {
            experiment: "tiny sweep",
            number: 1,
            slurm_dir: Path::new("/r/tiny-sweep/slurm"),
            workdir: Path::new("/home/u/proj"),
            exe: Path::new("/opt/runner/bin/runner"),
            tasks: &tasks,
        };
        let res = SlurmSpec {
            partition: Some("gpu".into()),
            account: Some("safety".into()),
            qos: Some("normal".into()),
            gpus: 1,
            cpus: Some(8),
            mem: Some("32G".into()),
            time: Some("4:00:00".into()),
            max_parallel: Some(2),
            signal_before: Some(600),
            sbatch: vec!["--constraint=a100".into()],
        };
        let expected = r#"#!/bin/bash
# runner: experiment tiny sweep, wave 1: 3 stage(s), one array task each.
#SBATCH --job-name=runner-tiny_sweep-w1
#SBATCH --array=0-2%2
#SBATCH --output=/r/tiny-sweep/slurm/wave-1_%a.out
#SBATCH --chdir=/home/u/proj
#SBATCH --requeue
#SBATCH --partition=gpu
#SBATCH --account=safety
#SBATCH --qos=normal
#SBATCH --mem=32G
#SBATCH --time=4:00:00
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --signal=B:USR1@600
#SBATCH --constraint=a100
set -euo pipefail
stages=(
  '/r/tiny-sweep/stages/attack-1f2e'
  '/r/tiny-sweep/stages/attack-9a0b'
  '/r/tiny-sweep/stages/it'\''s'
)
attempts=(1 2 1)
dir="${stages[$SLURM_ARRAY_TASK_ID]}"
# A task Slurm requeued is the stage's next attempt.
export RUNNER_ATTEMPT=$(( ${attempts[$SLURM_ARRAY_TASK_ID]} + ${SLURM_RESTART_COUNT:-0} ))
export RUNNER_DEVICE=cuda
# The stage's threads: the CPUs Slurm gave this task, not the whole node.
export RAYON_NUM_THREADS="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}"
exec '/opt/runner/bin/runner' exec "$dir" 2>"$dir/stderr.log"
"#;
        assert_eq!(sbatch_script(&wave, &res), expected);
        // Without resources: only what every wave needs, and the CPU device.
        let plain = sbatch_script(&wave, &SlurmSpec::default());
        assert!(plain.contains("#SBATCH --array=0-2\n"), "{plain}");
        assert!(!plain.contains("--partition") && !plain.contains("--gres") && !plain.contains("--time"), "{plain}");
        assert!(plain.contains("export RUNNER_DEVICE=cpu CUDA_VISIBLE_DEVICES=\n"), "{plain}");
        assert!(plain.contains("#SBATCH --signal=B:USR1@300\n"), "the default warning: {plain}");
        let silent = sbatch_script(&wave, &SlurmSpec { signal_before: Some(0), ..Default::default() });
        assert!(!silent.contains("--signal"), "{silent}");
    }

    #[test]
    fn the_script_runs_each_task_on_its_stage() {
        // Runs the generated script with bash, as Slurm would, for each task index, with a
        // stand-in executable that prints its arguments and environment.
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("fake-runner");
        std::fs::write(&exe, "#!/bin/sh\necho \"$1 $2 attempt=$RUNNER_ATTEMPT device=$RUNNER_DEVICE threads=$RAYON_NUM_THREADS\"\n")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let stages: Vec<PathBuf> = ["a", "b"].iter().map(|s| dir.path().join(s)).collect();
        for s in &stages {
            std::fs::create_dir_all(s).unwrap();
        }
        let tasks: Vec<ScriptTask> = stages.iter().zip([1, 3]).map(|(s, a)| ScriptTask { stage_dir: s.clone(), attempt: a }).collect();
        let wave = Wave { experiment: "x", number: 0, slurm_dir: dir.path(), workdir: dir.path(), exe: &exe, tasks: &tasks };
        let script = dir.path().join("w.sbatch");
        std::fs::write(&script, sbatch_script(&wave, &SlurmSpec::default())).unwrap();
        let run = |task: &str, restarts: &str| {
            let out = std::process::Command::new("bash")
                .arg(&script)
                .env("SLURM_ARRAY_TASK_ID", task)
                .env("SLURM_RESTART_COUNT", restarts)
                .env("SLURM_CPUS_ON_NODE", "3")
                .env_remove("SLURM_CPUS_PER_TASK")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(run("0", "0"), format!("exec {} attempt=1 device=cpu threads=3\n", stages[0].display()));
        assert_eq!(run("1", "2"), format!("exec {} attempt=5 device=cpu threads=3\n", stages[1].display()), "requeued twice");
    }
}
