//! The results directory: layout, stage status, atomic writes, and the lock that keeps two
//! runners from writing one directory.
//!
//! ```text
//! results/<experiment>/
//!   spec.toml  plan.json  .lock
//!   stages/<stage-id>/  see [`StageDir`]: stage.toml status.json progress.json log.jsonl stderr.log
//!                       adapter/ lineage.json outputs.jsonl dataset.jsonl dataset.json metrics.json
//!   runs/<run-id>/      run.toml result.json
//!   summary.parquet summary.csv tables/ figures/
//!   index.html page/records/  the results page (`report::page`)
//! ```

mod lock;
pub mod progress;
mod stage_dir;
mod status;

pub use lock::{Lock, LockError};
pub use progress::{ProgressSnapshot, StepProgress};
pub use stage_dir::StageDir;
pub use status::{StageState, StageStatus};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Malformed { path: PathBuf, msg: String },
    #[error(transparent)]
    Lock(#[from] LockError),
}

impl StoreError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io { path: path.to_path_buf(), source }
    }
}

#[derive(Debug, Clone)]
pub struct ResultsDir {
    pub root: PathBuf,
}

impl ResultsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn stage_dir(&self, stage_id: &str) -> PathBuf {
        self.root.join("stages").join(stage_id)
    }
    /// The typed view of a stage's directory.
    pub fn stage(&self, stage_id: &str) -> StageDir {
        StageDir::new(self.stage_dir(stage_id))
    }
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(run_id)
    }
    pub fn plan_path(&self) -> PathBuf {
        self.root.join("plan.json")
    }
    pub fn create(&self) -> Result<(), StoreError> {
        for d in [self.root.join("stages"), self.root.join("runs")] {
            std::fs::create_dir_all(&d).map_err(|e| StoreError::io(&d, e))?;
        }
        Ok(())
    }
    pub fn lock(&self) -> Result<Lock, StoreError> {
        Ok(Lock::acquire(&self.root.join(".lock"))?)
    }
    pub fn stage_status(&self, stage_id: &str) -> Result<StageStatus, StoreError> {
        StageStatus::read(&self.stage_dir(stage_id))
    }
}

/// Writes bytes atomically (temporary name, then rename).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::util::write_atomic(path, bytes).map_err(|e| StoreError::io(path, e))
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| StoreError::Malformed { path: path.into(), msg: e.to_string() })?;
    write_file(path, text.as_bytes())
}

/// Writes one JSON object per line, atomically.
pub fn write_jsonl<T: serde::Serialize>(path: &Path, values: &[T]) -> Result<(), StoreError> {
    let mut text = String::new();
    for v in values {
        text.push_str(&serde_json::to_string(v).map_err(|e| StoreError::Malformed { path: path.into(), msg: e.to_string() })?);
        text.push('\n');
    }
    write_file(path, text.as_bytes())
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| StoreError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Malformed { path: path.into(), msg: e.to_string() })
}

/// The last `n` lines of a text file (for failure reports), or "" when it is absent.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
