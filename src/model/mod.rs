//! The model core: configuration, weight loading (safetensors, sharded, GGUF), tokenizer and
//! chat templates, the decoder with LoRA, sequence-classification heads, KV-cached generation
//! and continuation scoring.

pub mod attention_softmax;
pub mod batch;
pub mod cache;
pub mod chat;
pub mod classify;
pub mod config;
mod cpu_op;
pub mod decoder;
mod error;
pub mod few_rows;
pub mod frozen;
pub mod generate;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod hub;
pub mod layers;
pub mod lora;
pub mod rms_norm;
pub mod rotary;
pub(crate) mod row_sum;
pub mod score;
pub(crate) mod softmax;
pub mod swiglu;
pub mod tokenizer;
pub(crate) mod vector_exp;
pub mod weights;

pub use batch::{PaddedBatch, Padding};
pub use chat::{ChatTemplate, Message};
pub use classify::{load_classifier, ClassifierHead, HeadConfig, Pooling, ProblemType, SequenceClassifier};
pub use config::{Architecture, ModelConfig};
pub use decoder::CausalLm;
pub use error::{ModelError, Result};
pub use generate::{generate, Generated, GenerationConfig, NgramFrequencyPenalty};
pub use layers::{Adapters, DropoutRng, ForwardOptions, HiddenHook, HookPoint};
pub use lora::{add_lora, load_adapter, save_adapter, LoraConfig};
pub use score::{score_continuations, score_continuations_shared_prefix, ContinuationScore};
pub use tokenizer::TextTokenizer;

use candle_core::{DType, Device};
use hub::ModelLocation;
pub use weights::save_safetensors;
use weights::{SafetensorsSource, WeightSource, Weights};

/// How to place a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Compute dtype of the base weights (LoRA weights are always f32).
    pub dtype: DType,
    /// Make every base weight trainable (full fine-tuning).
    pub trainable: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: DType::F32, trainable: false }
    }
}

/// A model with its tokenizer, and where it came from.
pub struct LoadedModel {
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    pub location: ModelLocation,
}

/// Loads a model from a directory, a `.gguf` file or a hub id in the local HF cache.
pub fn load(reference: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    load_from(reference, None, opts)
}

/// Loads a model's configuration and tokenizer from `reference` and its weights from the
/// safetensors checkpoint `weights` (HF names; a full fine-tuning stage's output), which must
/// hold every tensor the configuration asks for.
pub fn load_with_weights(reference: &str, weights: &std::path::Path, opts: &LoadOptions) -> Result<LoadedModel> {
    load_from(reference, Some(weights), opts)
}

fn load_from(reference: &str, weights: Option<&std::path::Path>, opts: &LoadOptions) -> Result<LoadedModel> {
    let location = hub::resolve(reference)?;
    let replaced = weights.map(SafetensorsSource::open).transpose()?;
    let (model, tokenizer) = match &location {
        ModelLocation::HfDir(dir) => {
            let config = ModelConfig::from_file(&dir.join("config.json"))?;
            let tokenizer = TextTokenizer::from_hf_dir(dir)?;
            let model = match &replaced {
                Some(source) => load_weights(config, source, opts)?,
                None => load_weights(config, &SafetensorsSource::open(&hub::weight_file(dir)?)?, opts)?,
            };
            (model, tokenizer)
        }
        ModelLocation::Gguf(path) => {
            let gguf = gguf::GgufFile::open(path)?;
            let config = gguf.config()?;
            let tokenizer = gguf_tokenizer::tokenizer_from_gguf(&gguf)?;
            let model = match &replaced {
                Some(source) => load_weights(config, source, opts)?,
                None => load_weights(config, &gguf, opts)?,
            };
            (model, tokenizer)
        }
    };
    tracing::info!(model = reference, weights = ?weights, layers = model.num_layers(), dtype = ?opts.dtype, "model loaded");
    Ok(LoadedModel { model, tokenizer, location })
}

fn load_weights(config: ModelConfig, source: &dyn WeightSource, opts: &LoadOptions) -> Result<CausalLm> {
    CausalLm::load(config, Weights { source, device: opts.device.clone(), dtype: opts.dtype }, opts.trainable)
}
