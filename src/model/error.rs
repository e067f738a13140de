use std::path::{Path, PathBuf};

/// Errors from loading, running or saving a model. Each names the file and the key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: key `{key}`: {msg}")]
    Config { path: PathBuf, key: String, msg: String },
    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, tensor: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: corrupt or unreadable weight file: {msg}")]
    CorruptFile { path: PathBuf, msg: String },
    #[error("model not found: {0}")]
    NotFound(String),
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("invalid input: {0}")]
    Input(String),
    /// A training loop asked to stop (a signal before a Slurm time limit) saved a step
    /// checkpoint and returned; the next attempt resumes from it.
    #[error("stopped on request after step {step} of {total}; a step checkpoint is saved, the next attempt resumes from it")]
    Stopped { step: usize, total: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
