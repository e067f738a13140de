use serde::{Deserialize, Serialize};
use std::path::Path;

use super::{now_unix, read_json, write_json, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Pending,
    Running,
    Done,
    Failed,
    Interrupted,
}

/// `status.json` of a stage. `done` is written last, after every output, so a stage whose
/// status says done is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStatus {
    pub state: StageState,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub log_tail: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub started_at: Option<u64>,
    #[serde(default)]
    pub finished_at: Option<u64>,
}

impl StageStatus {
    pub fn pending() -> Self {
        Self { state: StageState::Pending, reason: None, log_tail: None, pid: None, attempt: 0, started_at: None, finished_at: None }
    }

    /// The status in `dir`, or pending when the stage has never started.
    pub fn read(dir: &Path) -> Result<Self, StoreError> {
        let p = super::StageDir::new(dir).status();
        if !p.exists() {
            return Ok(Self::pending());
        }
        read_json(&p)
    }

    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        write_json(&super::StageDir::new(dir).status(), self)
    }

    /// Running in a process that still exists (e.g. an orphan of a runner that was killed).
    pub fn is_active(&self) -> bool {
        self.state == StageState::Running && self.pid.is_some_and(super::lock::process_alive)
    }

    pub fn is_done(&self) -> bool {
        self.state == StageState::Done
    }

    pub fn running(attempt: u32) -> Self {
        Self { state: StageState::Running, pid: Some(std::process::id()), attempt, started_at: Some(now_unix()), ..Self::pending() }
    }

    pub fn finished(mut self, state: StageState, reason: Option<String>, log_tail: Option<String>) -> Self {
        self.state = state;
        self.reason = reason;
        self.log_tail = log_tail;
        self.finished_at = Some(now_unix());
        self
    }
}
