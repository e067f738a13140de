//! What a running stage works with: its resolved config and directory, the model it starts from
//! (base + the adapters of its lineage, in the adapter mode the method asks for), the datasets it
//! declared, its step log and progress. `exec` builds a [`StageContext`] and hands it to the
//! method; methods use it and know nothing of scheduling.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::data::{self, DataSpec, Dataset};
use crate::model::{self, LoadOptions, LoadedModel, LoraConfig};
use crate::plan::StageConfig;
use crate::spec::DTypeName;
use crate::store::{self, StageDir};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("{0}")]
    Method(String),
}

/// The named values a stage returns (written to `metrics.json`).
pub type Metrics = std::collections::BTreeMap<String, f64>;

/// What makes up a stage's model, as stage ids (relative, so a results directory can be moved):
/// the full fine-tuning stage whose weights replace the base model's, if any, and the adapters
/// on top, oldest first. Written by train stages as `lineage.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    pub adapters: Vec<String>,
}

/// How a stage wants its model.
pub enum AdapterMode {
    /// Every adapter of the lineage merged (evaluation, generation).
    Merged,
    /// Lineage merged, plus a fresh trainable adapter.
    NewAdapter(LoraConfig),
    /// Lineage merged except the last adapter, which stays trainable (Booster's single LoRA).
    ContinueLast,
    /// Lineage merged, every weight trainable (full fine-tuning).
    Full,
}

/// Set when the stage process is asked to stop at the next safe point (SIGUSR1: Slurm's signal
/// before a time limit). A training loop then saves a step checkpoint and stops; other stages
/// carry on.
pub static STOP_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Minutes between a training stage's step checkpoints unless `RUNNER_CHECKPOINT_MINUTES` says.
const DEFAULT_CHECKPOINT_MINUTES: u64 = 30;

pub struct StageContext {
    pub dir: StageDir,
    /// `results/<experiment>/stages`: where the stages this one reads live.
    pub stages_root: std::path::PathBuf,
    pub config: StageConfig,
    pub device: Device,
}

impl StageContext {
    pub fn from_dir(dir: &Path) -> Result<Self, StageError> {
        let dir = StageDir::new(dir);
        let path = dir.config();
        let text = std::fs::read_to_string(&path).map_err(|e| store::StoreError::io(&path, e))?;
        let config: StageConfig =
            toml::from_str(&text).map_err(|e| store::StoreError::Malformed { path: path.clone(), msg: e.to_string() })?;
        let stages_root = dir.root().parent().map(Path::to_path_buf).unwrap_or_default();
        let device = match std::env::var("RUNNER_DEVICE").as_deref() {
            Ok("cuda") => Device::new_cuda(0).map_err(model::ModelError::from)?,
            _ => Device::Cpu,
        };
        Ok(Self { dir, stages_root, config, device })
    }

    /// Step checkpoints for this stage's training loop: in its `checkpoint/`, every
    /// `RUNNER_CHECKPOINT_MINUTES` minutes (default 30; 0 saves only when asked to stop), and
    /// one when [`STOP_REQUESTED`] is set.
    pub fn checkpointing(&self) -> Result<crate::train::Checkpointing<'static>, StageError> {
        let minutes = match std::env::var("RUNNER_CHECKPOINT_MINUTES") {
            Ok(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| StageError::Method(format!("RUNNER_CHECKPOINT_MINUTES={v:?} is not a whole number of minutes")))?,
            Err(_) => DEFAULT_CHECKPOINT_MINUTES,
        };
        Ok(crate::train::Checkpointing {
            dir: self.dir.checkpoint(),
            every: (minutes > 0).then(|| std::time::Duration::from_secs(minutes * 60)),
            stop: &STOP_REQUESTED,
        })
    }

    /// The directory of another stage of the same results tree.
    pub fn stage_dir(&self, stage_id: &str) -> StageDir {
        StageDir::new(self.stages_root.join(stage_id))
    }

    /// The directory of the earlier stage this stage's spec calls `name` (`@name`, a judge's
    /// `stage = "name"`, `[data.x] = { stage = "name" }`).
    pub fn input_dir(&self, name: &str) -> Result<StageDir, StageError> {
        let id = self
            .config
            .inputs
            .get(name)
            .ok_or_else(|| StageError::Method(format!("stage {} reads stage `{name}`, which its config lacks", self.config.name)))?;
        Ok(self.stage_dir(id))
    }

    /// The lineage this stage starts from (its parent's).
    pub fn parent_lineage(&self) -> Result<Lineage, StageError> {
        match &self.config.parent {
            None => Ok(Lineage::default()),
            Some(p) => {
                let path = self.stage_dir(p).lineage();
                Ok(if path.exists() { store::read_json(&path)? } else { Lineage::default() })
            }
        }
    }

    pub fn dtype(&self) -> DType {
        match self.config.model.dtype {
            DTypeName::F32 => DType::F32,
            DTypeName::Bf16 => DType::BF16,
            DTypeName::F16 => DType::F16,
        }
    }

    /// Loads the base model and applies the lineage as `mode` asks. The model as it is now (the
    /// merged lineage, and a continued adapter at its loaded values, but not a fresh adapter) is
    /// what `ForwardOptions::reference()` computes while the stage trains.
    ///
    /// Under `Full` there is no reference inside the model: [`Self::load_reference`] loads it.
    pub fn load_model(&self, mode: AdapterMode) -> Result<LoadedModel, StageError> {
        let opts = LoadOptions { device: self.device.clone(), dtype: self.dtype(), trainable: false };
        let lineage = self.parent_lineage()?;
        let mut lm = match &lineage.weights {
            Some(stage) => model::load_with_weights(&self.config.model.path, &self.stage_dir(stage).weights(), &opts)?,
            None => model::load(&self.config.model.path, &opts)?,
        };
        let (merge, keep) = match mode {
            AdapterMode::ContinueLast if !lineage.adapters.is_empty() => {
                let (last, rest) = lineage.adapters.split_last().expect("non-empty lineage");
                (rest.to_vec(), Some(last.clone()))
            }
            _ => (lineage.adapters.clone(), None),
        };
        for stage in &merge {
            model::load_adapter(&mut lm.model, &self.stage_dir(stage).adapter())?;
            lm.model.merge_adapters()?;
        }
        match (mode, keep) {
            (_, Some(last)) => {
                model::load_adapter(&mut lm.model, &self.stage_dir(&last).adapter())?;
                lm.model.freeze_reference()?;
            }
            (AdapterMode::NewAdapter(cfg), None) => {
                model::add_lora(&mut lm.model, &cfg, self.config.seed)?;
            }
            (AdapterMode::ContinueLast, None) => {
                return Err(StageError::Method("this stage continues the previous adapter, but no earlier train stage made one".into()));
            }
            (AdapterMode::Full, None) => {
                lm.model = lm.model.to_trainable()?;
            }
            (AdapterMode::Merged, None) => {}
        }
        Ok(lm)
    }

    /// The model before this stage, frozen, as a model of its own (full fine-tuning's reference
    /// for KL and DPO; with adapters, `ForwardOptions::reference()` on the trained model is the
    /// same model without a second copy of the base).
    pub fn load_reference(&self) -> Result<LoadedModel, StageError> {
        self.load_model(AdapterMode::Merged)
    }

    /// Saves every weight of a fully fine-tuned model (HF safetensors layout) and the lineage that
    /// starts from it: later stages load these weights instead of the base model's.
    pub fn save_full_weights(&self, lm: &LoadedModel) -> Result<(), StageError> {
        model::save_safetensors(lm.model.named_weights(), &self.dir.weights())?;
        store::write_json(&self.dir.lineage(), &Lineage { weights: Some(self.dir.id()), adapters: Vec::new() })?;
        Ok(())
    }

    /// Saves this stage's adapter and its lineage (parent's + this one).
    pub fn save_adapter(&self, lm: &LoadedModel, cfg: &LoraConfig, continued: bool) -> Result<(), StageError> {
        model::save_adapter(&lm.model, cfg, &self.config.model.path, &self.dir.adapter())?;
        let mut lineage = self.parent_lineage()?;
        if continued {
            lineage.adapters.pop();
        }
        lineage.adapters.push(self.dir.id());
        store::write_json(&self.dir.lineage(), &lineage)?;
        Ok(())
    }

    /// Records that this stage passes its parent's model through unchanged.
    pub fn pass_lineage_through(&self) -> Result<(), StageError> {
        store::write_json(&self.dir.lineage(), &self.parent_lineage()?)?;
        Ok(())
    }

    /// Appends one JSON line to the stage's `log.jsonl` (per-step metrics).
    pub fn log_jsonl<T: Serialize>(&self, record: &T) -> Result<(), StageError> {
        use std::io::Write;
        let path = self.dir.log();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| store::StoreError::io(&path, e))?;
        let line = serde_json::to_string(record).map_err(|e| StageError::Method(e.to_string()))?;
        writeln!(f, "{line}").map_err(|e| store::StoreError::io(&path, e))?;
        Ok(())
    }

    /// A dataset the stage declared: a `[data.NAME]` table (paths made absolute by the planner),
    /// or `@stage`, the dataset an earlier generate stage wrote.
    pub fn dataset(&self, name: &str) -> Result<Dataset, StageError> {
        if let Some(stage) = name.strip_prefix('@') {
            return self.generated_dataset(name, stage, &toml::Table::new());
        }
        let table = self
            .config
            .data
            .get(name)
            .ok_or_else(|| StageError::Method(format!("stage {} reads dataset `{name}`, which its config lacks", self.config.name)))?;
        if let Some(toml::Value::String(stage)) = table.get(data::STAGE_KEY) {
            return self.generated_dataset(name, stage, table);
        }
        let spec = crate::spec::params::parse::<DataSpec>(table).map_err(|e| StageError::Method(format!("data.{name}: {e}")))?;
        Ok(data::load_named(name, &spec, Path::new("/"))?)
    }

    /// The dataset a generate stage wrote, read with the options of `table` (view, filter, limit,
    /// template, ...) in the format its manifest names.
    fn generated_dataset(&self, name: &str, stage: &str, table: &toml::Table) -> Result<Dataset, StageError> {
        let dir = self.input_dir(stage)?;
        let manifest = data::DatasetManifest::read(&dir.manifest())?;
        let table = manifest.spec_table(table, &dir.dataset());
        let spec = crate::spec::params::parse::<DataSpec>(&table).map_err(|e| StageError::Method(format!("data.{name}: {e}")))?;
        Ok(data::load_named(name, &spec, Path::new("/"))?)
    }

    /// Writes a generate stage's records with their manifest (the manifest last: a stage whose
    /// manifest exists wrote its whole dataset).
    pub fn write_dataset(&self, items: &data::Items) -> Result<(), StageError> {
        let lineage = self.parent_lineage()?;
        let producer = data::Producer {
            stage: self.dir.id(),
            method: self.config.method.clone().unwrap_or_default(),
            method_version: self.config.method_version,
            seed: self.config.seed,
            model: self.config.model.path.clone(),
            lineage: lineage.weights.into_iter().chain(lineage.adapters).collect(),
            components: self.config.components.clone(),
        };
        let manifest = data::DatasetManifest::new(items, producer)?;
        data::write_jsonl(&self.dir.dataset(), items)?;
        manifest.write(&self.dir.manifest())?;
        Ok(())
    }

    /// Progress of the stage's `total` units (`unit`: "step", "prompt", ...): a bar on a
    /// terminal, plain lines in logs, and `progress.json` for the runner.
    pub fn progress(&self, total: u64, unit: &str) -> store::StepProgress {
        store::StepProgress::new(self.dir.root(), &self.config.name, total, unit)
    }
}
