//! Step checkpoints of a training loop: the trainable parameters, the optimizer's moments, the
//! step reached, the dropout generator's position, the per-step log and the gradient rule's own
//! state. A loop resumed from one continues as the uninterrupted loop would have, bit for bit:
//! the batch source is replayed up to the step (batches are cheap; no gradient is recomputed).

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::optim::AdamW;
use super::trainer::{StepLog, TrainerConfig};
use crate::model::{ModelError, Result};

/// Where and when a training loop saves step checkpoints.
pub struct Checkpointing<'a> {
    /// The checkpoint's directory (a stage's `checkpoint/`).
    pub dir: PathBuf,
    /// Wall-clock time between checkpoints; `None` saves only when asked to stop.
    pub every: Option<Duration>,
    /// Set (by a signal) to ask the loop to save a checkpoint after its current step and stop.
    pub stop: &'a AtomicBool,
}

/// `state.json`: everything but the tensors. Written last, so its presence marks a complete
/// checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    /// What the checkpoint belongs to (steps, trainer settings, parameter names and shapes); a
    /// checkpoint of anything else is not used.
    pub fingerprint: String,
    /// The log of every step done (one entry per optimizer step: its length is the step to
    /// resume at; floats as bit patterns, see [`exact_logs`]).
    #[serde(with = "exact_logs")]
    pub logs: Vec<StepLog>,
    /// The dropout generator's word position (a u128, as text).
    pub dropout_word_pos: String,
    /// The gradient rule's own state ([`super::GradientRule::state`]).
    pub rule: serde_json::Value,
}

/// serde_json reads some floats back one unit in the last place off (without its
/// `float_roundtrip` feature), so the step log is stored with its floats as bit patterns: a
/// resumed run reports exactly the numbers the first attempt logged.
mod exact_logs {
    use super::StepLog;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Stored {
        step: usize,
        epoch: usize,
        loss_bits: u64,
        grad_norm_bits: u64,
        lr_bits: u64,
        tokens: usize,
    }

    pub fn serialize<S: Serializer>(logs: &[StepLog], s: S) -> Result<S::Ok, S::Error> {
        let stored: Vec<Stored> = logs
            .iter()
            .map(|l| Stored {
                step: l.step,
                epoch: l.epoch,
                loss_bits: l.loss.to_bits(),
                grad_norm_bits: l.grad_norm.to_bits(),
                lr_bits: l.lr.to_bits(),
                tokens: l.tokens,
            })
            .collect();
        stored.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<StepLog>, D::Error> {
        let stored = Vec::<Stored>::deserialize(d)?;
        Ok(stored
            .into_iter()
            .map(|l| StepLog {
                step: l.step,
                epoch: l.epoch,
                loss: f64::from_bits(l.loss_bits),
                grad_norm: f64::from_bits(l.grad_norm_bits),
                lr: f64::from_bits(l.lr_bits),
                tokens: l.tokens,
            })
            .collect())
    }
}

const PARAMS: &str = "params.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

/// Identifies the training a checkpoint belongs to.
pub fn fingerprint(params: &[(String, Var)], total_steps: usize, cfg: &TrainerConfig) -> String {
    let mut text = format!("steps={total_steps};{}", serde_json::to_string(cfg).expect("trainer config serializes"));
    for (name, var) in params {
        text.push_str(&format!(";{name}:{:?}:{:?}", var.dims(), var.dtype()));
    }
    Sha256::digest(text.as_bytes()).iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn staging(dir: &Path) -> PathBuf {
    dir.with_extension("new")
}

/// Saves a checkpoint into `dir`, replacing the previous one only once the new one is complete.
pub fn save(dir: &Path, params: &[(String, Var)], opt: &AdamW, state: &SavedState) -> Result<()> {
    let new = staging(dir);
    let io = |p: &Path, e| ModelError::io(p, e);
    if new.exists() {
        std::fs::remove_dir_all(&new).map_err(|e| io(&new, e))?;
    }
    std::fs::create_dir_all(&new).map_err(|e| io(&new, e))?;
    let tensors: HashMap<String, Tensor> = params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    candle_core::safetensors::save(&tensors, new.join(PARAMS))?;
    opt.save(&new.join(OPTIMIZER))?;
    let json = serde_json::to_vec(state).map_err(|e| ModelError::Input(format!("checkpoint state: {e}")))?;
    std::fs::write(new.join(STATE), json).map_err(|e| io(&new.join(STATE), e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&new, dir).map_err(|e| io(dir, e))
}

/// A complete checkpoint in `dir` (or in its staging directory, if a save was cut between
/// removing the old one and renaming the new one) whose fingerprint matches.
pub fn find(dir: &Path, fingerprint: &str) -> Result<Option<(PathBuf, SavedState)>> {
    for at in [dir.to_path_buf(), staging(dir)] {
        let path = at.join(STATE);
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let state: SavedState =
            serde_json::from_slice(&bytes).map_err(|e| ModelError::CorruptFile { path: path.clone(), msg: e.to_string() })?;
        if state.fingerprint != fingerprint {
            tracing::warn!(checkpoint = %at.display(), "a step checkpoint of other training settings is ignored");
            return Ok(None);
        }
        return Ok(Some((at, state)));
    }
    Ok(None)
}

/// Sets `params` and the optimizer to a checkpoint's.
pub fn restore(at: &Path, params: &[(String, Var)], opt: &mut AdamW) -> Result<()> {
    let path = at.join(PARAMS);
    let device = params.first().map_or(candle_core::Device::Cpu, |(_, v)| v.device().clone());
    let saved =
        candle_core::safetensors::load(&path, &device).map_err(|e| ModelError::CorruptFile { path: path.clone(), msg: e.to_string() })?;
    for (name, var) in params {
        let t = saved.get(name).ok_or_else(|| ModelError::MissingTensor { path: path.clone(), tensor: name.clone() })?;
        if t.dims() != var.dims() {
            return Err(ModelError::ShapeMismatch { path, tensor: name.clone(), expected: var.dims().to_vec(), found: t.dims().to_vec() });
        }
        var.set(t)?;
    }
    opt.load(&at.join(OPTIMIZER))
}

/// Removes a checkpoint once its training has finished.
pub fn remove(dir: &Path) -> Result<()> {
    for at in [dir.to_path_buf(), staging(dir)] {
        if at.exists() {
            std::fs::remove_dir_all(&at).map_err(|e| ModelError::io(&at, e))?;
        }
    }
    Ok(())
}
