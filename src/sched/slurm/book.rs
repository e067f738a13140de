//! `results/<experiment>/slurm/jobs.json`: every array the runner submitted, with the stage of
//! each task. A runner started again after the last one died reads it to re-attach to the tasks
//! Slurm still holds instead of submitting them twice.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::queue::{QueueSnapshot, TaskRef};
use crate::store::{self, StoreError};

/// One `sbatch --array` call: task `i` runs `stages[i]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub wave: usize,
    pub job_id: u64,
    pub stages: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobBook {
    pub submissions: Vec<Submission>,
}

impl JobBook {
    pub fn path(slurm_dir: &Path) -> PathBuf {
        slurm_dir.join("jobs.json")
    }

    /// The book in `slurm_dir`, or an empty one when nothing was submitted yet.
    pub fn read(slurm_dir: &Path) -> Result<Self, StoreError> {
        let p = Self::path(slurm_dir);
        if !p.exists() {
            return Ok(Self::default());
        }
        store::read_json(&p)
    }

    /// Records a submission (written at once: the runner may die right after `sbatch`).
    pub fn record(&mut self, slurm_dir: &Path, submission: Submission) -> Result<(), StoreError> {
        self.submissions.push(submission);
        store::write_json(&Self::path(slurm_dir), self)
    }

    /// The number the next wave gets.
    pub fn next_wave(&self) -> usize {
        self.submissions.iter().map(|s| s.wave + 1).max().unwrap_or(0)
    }

    /// The tasks to re-attach to: for each stage that is not `done`, its latest task, when
    /// Slurm still holds it (queued, running or requeued). A stage whose latest task ended
    /// without finishing it is left out and submitted again.
    pub fn attachable(&self, queue: &QueueSnapshot, is_done: impl Fn(&str) -> bool) -> BTreeMap<String, TaskRef> {
        let mut latest: BTreeMap<&str, TaskRef> = BTreeMap::new();
        for s in &self.submissions {
            for (i, stage) in s.stages.iter().enumerate() {
                latest.insert(stage, TaskRef { job: s.job_id, task: i as u32 });
            }
        }
        latest
            .into_iter()
            .filter(|(stage, t)| !is_done(stage) && queue.task(*t).is_some_and(|info| info.state.is_active()))
            .map(|(stage, t)| (stage.to_string(), t))
            .collect()
    }

    /// Every job id that may still hold tasks of `stages`.
    pub fn jobs_of<'a>(&self, tasks: impl IntoIterator<Item = &'a TaskRef>) -> Vec<u64> {
        let mut jobs: Vec<u64> = tasks.into_iter().map(|t| t.job).collect();
        jobs.sort_unstable();
        jobs.dedup();
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/slurm").join(name)).unwrap()
    }

    #[test]
    fn reattaches_to_queued_and_running_tasks_only() {
        // The queue recorded while array job 1 (`0-3%2`) had tasks 0 and 1 running and 2-3
        // pending; the runner had died after submitting it (wave 1) and an earlier array 9.
        let queue = QueueSnapshot::from_squeue_json(&fixture("squeue_array_running.json")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut book = JobBook::default();
        book.record(dir.path(), Submission { wave: 0, job_id: 9, stages: vec!["align".into(), "attack-a".into()] }).unwrap();
        let stages = ["attack-a", "attack-b", "attack-c", "attack-d"].map(String::from).to_vec();
        book.record(dir.path(), Submission { wave: 1, job_id: 1, stages }).unwrap();
        let book = JobBook::read(dir.path()).unwrap();
        assert_eq!(book.next_wave(), 2);
        let attach = book.attachable(&queue, |s| s == "attack-b");
        let expected: BTreeMap<String, TaskRef> = [("attack-a", 0), ("attack-c", 2), ("attack-d", 3)]
            .iter()
            .map(|(s, i)| (s.to_string(), TaskRef { job: 1, task: *i }))
            .collect();
        // attack-a's latest task is 1_0 (not 9_1); attack-b is done; align's job is gone.
        assert_eq!(attach, expected);

        // Once the array has ended, nothing is attached: failed stages are submitted again.
        let ended = QueueSnapshot::from_squeue_json(&fixture("squeue_array_done.json")).unwrap();
        assert!(book.attachable(&ended, |_| false).is_empty());
        assert_eq!(book.jobs_of(attach.values()), vec![1]);
    }

    #[test]
    fn an_empty_results_dir_has_an_empty_book() {
        let dir = tempfile::tempdir().unwrap();
        let book = JobBook::read(dir.path()).unwrap();
        assert_eq!(book.next_wave(), 0);
        assert!(book.attachable(&QueueSnapshot::default(), |_| false).is_empty());
    }
}
