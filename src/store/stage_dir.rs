//! The files of one stage directory, by name. Every reader and writer of a stage's files goes
//! through these paths, so the layout is written down once.

use std::path::{Path, PathBuf};

/// `results/<experiment>/stages/<stage-id>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageDir {
    root: PathBuf,
}

impl StageDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The stage id (the directory's name).
    pub fn id(&self) -> String {
        self.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The resolved stage configuration (`plan::StageConfig` as TOML).
    pub fn config(&self) -> PathBuf {
        self.root.join("stage.toml")
    }
    /// `StageStatus`; `done` is written last.
    pub fn status(&self) -> PathBuf {
        self.root.join("status.json")
    }
    /// Per-step training records, one JSON object a line.
    pub fn log(&self) -> PathBuf {
        self.root.join("log.jsonl")
    }
    /// The stage process's stderr (its tracing log).
    pub fn stderr(&self) -> PathBuf {
        self.root.join("stderr.log")
    }
    /// The stage's named values (`BTreeMap<String, f64>`).
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.json")
    }
    /// Per-sample records of an eval stage.
    pub fn outputs(&self) -> PathBuf {
        self.root.join("outputs.jsonl")
    }
    /// The records a generate stage wrote.
    pub fn dataset(&self) -> PathBuf {
        self.root.join("dataset.jsonl")
    }
    /// What [`StageDir::dataset`] holds (`DatasetManifest`).
    pub fn manifest(&self) -> PathBuf {
        self.root.join("dataset.json")
    }
    /// What a filter step dropped, by rule.
    pub fn filter_report(&self) -> PathBuf {
        self.root.join("filter.json")
    }
    /// A train stage's LoRA adapter (PEFT layout).
    pub fn adapter(&self) -> PathBuf {
        self.root.join("adapter")
    }
    /// A full fine-tuning stage's weights (HF safetensors layout).
    pub fn weights(&self) -> PathBuf {
        self.root.join("weights").join("model.safetensors")
    }
    /// The adapters that make this stage's model (`stage::Lineage`).
    pub fn lineage(&self) -> PathBuf {
        self.root.join("lineage.json")
    }
    /// A trained judge's score head.
    pub fn score_head(&self) -> PathBuf {
        self.root.join("score.safetensors")
    }
    /// A training stage's last step checkpoint (kept across attempts, removed when it finishes).
    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint")
    }
    /// Live progress of a running stage.
    pub fn progress(&self) -> PathBuf {
        self.root.join("progress.json")
    }

    /// Outputs an interrupted attempt may have left: not trusted by the next attempt.
    pub fn attempt_outputs(&self) -> [PathBuf; 6] {
        [self.metrics(), self.outputs(), self.log(), self.lineage(), self.dataset(), self.manifest()]
    }
}
