//! Sequence-classification heads, as transformers' `*ForSequenceClassification` defines them:
//! `score.weight` `[num_labels, hidden]` (no bias) applied to the final hidden state of one
//! token per sequence. Loaded from HF checkpoints (e.g. beaver-dam-7b) or trained by the runner
//! (the `classifier` train method).

use candle_core::{DType, Tensor};
use serde_json::Value;
use std::path::Path;

use super::batch::{PaddedBatch, Padding};
use super::decoder::CausalLm;
use super::hub::{self, ModelLocation};
use super::layers::ForwardOptions;
use super::tokenizer::TextTokenizer;
use super::weights::{SafetensorsSource, Weights};
use super::{LoadOptions, ModelConfig, ModelError, Result};

/// How logits become probabilities (`config.problem_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    /// Softmax over the labels (`single_label_classification`, and the default).
    SingleLabel,
    /// An independent sigmoid per label (`multi_label_classification`).
    MultiLabel,
}

/// Which token's hidden state the head reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// transformers: the rightmost token whose id is not `pad_token_id` (works for left and
    /// right padding; a real token equal to the pad id, e.g. a trailing eos when pad = eos, is
    /// skipped too). Batches are padded with this id.
    LastNonPad(u32),
    /// The last real (non-padding) token of each row. Used when the config has no
    /// `pad_token_id` (transformers then takes the last position and refuses batches > 1,
    /// which is the same for an unpadded row) and by heads the runner trains.
    LastValid,
}

/// Head configuration read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadConfig {
    /// Label names in output order (`id2label`, else `LABEL_i`).
    pub labels: Vec<String>,
    pub problem_type: ProblemType,
    pub pooling: Pooling,
}

impl HeadConfig {
    /// Reads `num_labels` (else the size of `id2label`, else 2 as transformers), `id2label`,
    /// `problem_type` and `pad_token_id`. Errors are `(key, message)`.
    pub fn from_json(json: &Value) -> std::result::Result<Self, (String, String)> {
        let obj = json.as_object().ok_or_else(|| (String::new(), "expected a JSON object".to_string()))?;
        let id2label = match obj.get("id2label") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => return Err(("id2label".into(), "must be an object {\"0\": \"name\", ...}".into())),
        };
        let num_labels = match obj.get("num_labels") {
            Some(v) => v.as_u64().ok_or_else(|| ("num_labels".to_string(), "must be a positive integer".to_string()))? as usize,
            None => id2label.map_or(2, |m| m.len()),
        };
        if num_labels == 0 {
            return Err(("num_labels".into(), "must be at least 1".into()));
        }
        let mut labels: Vec<String> = (0..num_labels).map(|i| format!("LABEL_{i}")).collect();
        if let Some(m) = id2label {
            if m.len() != num_labels {
                return Err(("id2label".into(), format!("has {} entries but num_labels is {num_labels}", m.len())));
            }
            for (k, v) in m {
                let i: usize = k.parse().map_err(|_| ("id2label".to_string(), format!("key {k:?} is not a label index")))?;
                let name = v.as_str().ok_or_else(|| (format!("id2label.{k}"), "must be a string".to_string()))?;
                *labels
                    .get_mut(i)
                    .ok_or_else(|| ("id2label".to_string(), format!("index {i} is out of range (num_labels {num_labels})")))? =
                    name.to_string();
            }
        }
        let problem_type = match obj.get("problem_type").and_then(Value::as_str) {
            Some("multi_label_classification") => ProblemType::MultiLabel,
            Some("single_label_classification") | None => ProblemType::SingleLabel,
            Some(other) => {
                return Err((
                    "problem_type".into(),
                    format!("{other:?} is not supported (multi_label_classification or single_label_classification)"),
                ))
            }
        };
        let pooling = match obj.get("pad_token_id").and_then(Value::as_u64) {
            Some(p) => Pooling::LastNonPad(p as u32),
            None => Pooling::LastValid,
        };
        Ok(Self { labels, problem_type, pooling })
    }
}

/// A classification head on top of a [`CausalLm`]'s final hidden states:
/// `logits = weight · (h - center)`.
pub struct ClassifierHead {
    /// `[num_labels, hidden]`; the tensor of a `Var` when the head is trained.
    pub weight: Tensor,
    /// `[hidden]` f32, subtracted from the pooled state before the head (heads the runner
    /// trains: final hidden states share a large common component that makes a plain linear
    /// head ill-conditioned); `None` for transformers' heads.
    pub center: Option<Tensor>,
    pub config: HeadConfig,
}

impl ClassifierHead {
    pub fn num_labels(&self) -> usize {
        self.config.labels.len()
    }

    /// The position the head reads in each row of a padded batch.
    pub fn pooled_positions(&self, padded_ids: &[Vec<u32>], valid: &[Vec<bool>]) -> Vec<usize> {
        padded_ids
            .iter()
            .zip(valid)
            .map(|(ids, valid)| match self.config.pooling {
                // `argmax(arange * non_pad)`: the rightmost non-pad index, 0 when every id is pad.
                Pooling::LastNonPad(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
                Pooling::LastValid => valid.iter().rposition(|&v| v).unwrap_or(0),
            })
            .collect()
    }

    /// Pooled logits `[B, num_labels]` in f32 for token sequences, padded here (with the pooling
    /// pad id, else `fallback_pad`); the result does not depend on the side. Differentiable when
    /// `opts.differentiable`.
    pub fn logits(
        &self,
        model: &CausalLm,
        seqs: &[Vec<u32>],
        fallback_pad: u32,
        padding: Padding,
        opts: &ForwardOptions,
    ) -> Result<Tensor> {
        let pad = match self.config.pooling {
            Pooling::LastNonPad(p) => p,
            Pooling::LastValid => fallback_pad,
        };
        let batch = PaddedBatch::new(seqs, pad, padding, &model.device)?;
        let padded: Vec<Vec<u32>> = batch.ids.to_vec2()?;
        let hidden = model.forward_hidden(&batch.ids, &batch.positions, &batch.valid, None, opts)?;
        self.score(&hidden, &padded, &batch.valid)
    }

    /// Pooled logits `[B, num_labels]` (f32) from final hidden states `[B, T, H]` of a padded
    /// batch (`padded_ids`, `valid`: its ids and padding mask).
    pub fn score(&self, hidden: &Tensor, padded_ids: &[Vec<u32>], valid: &[Vec<bool>]) -> Result<Tensor> {
        let mut pooled = self.pool(hidden, padded_ids, valid)?;
        if let Some(c) = &self.center {
            pooled = pooled.broadcast_sub(c)?;
        }
        let w = self.weight.to_dtype(DType::F32)?;
        Ok(pooled.matmul(&w.t()?)?)
    }

    /// The pooled hidden states `[B, H]` (f32) the head reads.
    pub fn pool(&self, hidden: &Tensor, padded_ids: &[Vec<u32>], valid: &[Vec<bool>]) -> Result<Tensor> {
        let width = hidden.dim(1)?;
        let rows: Vec<u32> =
            self.pooled_positions(padded_ids, valid).into_iter().enumerate().map(|(b, t)| (b * width + t) as u32).collect();
        let pooled = hidden.flatten_to(1)?.index_select(&Tensor::new(rows.as_slice(), hidden.device())?, 0)?;
        Ok(pooled.to_dtype(DType::F32)?)
    }

    /// Per-label probabilities: sigmoid (multi-label) or softmax (single-label) of `logits`.
    pub fn probabilities(&self, logits: &Tensor) -> Result<Vec<Vec<f32>>> {
        let logits = logits.to_dtype(DType::F32)?;
        let p = match self.config.problem_type {
            ProblemType::MultiLabel => candle_nn::ops::sigmoid(&logits)?,
            ProblemType::SingleLabel => candle_nn::ops::softmax_last_dim(&logits.contiguous()?)?,
        };
        Ok(p.to_vec2()?)
    }
}

/// A decoder with a sequence-classification head and its tokenizer.
pub struct SequenceClassifier {
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    pub head: ClassifierHead,
}

impl SequenceClassifier {
    /// Logits `[B, num_labels]` (f32, inference) for token sequences, `batch_size` at a time.
    pub fn logits(&self, seqs: &[Vec<u32>], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(batch_size.max(1)) {
            let l = self.head.logits(&self.model, chunk, self.tokenizer.pad_id(), Padding::Right, &ForwardOptions::inference())?;
            out.extend(l.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// Probabilities per label for token sequences.
    pub fn probabilities(&self, seqs: &[Vec<u32>], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(batch_size.max(1)) {
            let l = self.head.logits(&self.model, chunk, self.tokenizer.pad_id(), Padding::Right, &ForwardOptions::inference())?;
            out.extend(self.head.probabilities(&l)?);
        }
        Ok(out)
    }
}

/// Loads an HF sequence-classification checkpoint (`*ForSequenceClassification`: a directory
/// or hub id with `config.json`, safetensors weights holding `score.weight`, `tokenizer.json`).
pub fn load_classifier(reference: &str, opts: &LoadOptions) -> Result<SequenceClassifier> {
    let dir = match hub::resolve(reference)? {
        ModelLocation::HfDir(dir) => dir,
        ModelLocation::Gguf(path) => {
            return Err(ModelError::Input(format!(
                "{}: a GGUF file holds no sequence-classification head; use the HF checkpoint (config.json + safetensors)",
                path.display()
            )))
        }
    };
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: cfg_path.clone(),
        key: String::new(),
        msg: format!("not valid JSON: {e}"),
    })?;
    let config = ModelConfig::from_json(&json).map_err(|(key, msg)| ModelError::Config { path: cfg_path.clone(), key, msg })?;
    let head_config = HeadConfig::from_json(&json).map_err(|(key, msg)| ModelError::Config { path: cfg_path.clone(), key, msg })?;
    let hidden = config.word_embed_proj_dim;
    let source = SafetensorsSource::open(&hub::weight_file(&dir)?)?;
    let weights = Weights { source: &source, device: opts.device.clone(), dtype: opts.dtype };
    let weight = weights.get("score.weight", &[head_config.labels.len(), hidden]).map_err(|e| match e {
        ModelError::MissingTensor { path, tensor } => ModelError::Input(format!(
            "{}: no `{tensor}`: not a sequence-classification checkpoint (transformers' *ForSequenceClassification saves its head as score.weight)",
            path.display()
        )),
        other => other,
    })?;
    let model = CausalLm::load(config, weights, opts.trainable)?;
    let tokenizer = TextTokenizer::from_hf_dir(&dir)?;
    tracing::info!(model = reference, labels = head_config.labels.len(), "classifier loaded");
    Ok(SequenceClassifier { model, tokenizer, head: ClassifierHead { weight, center: None, config: head_config } })
}

/// Loads a head saved by [`save_head`]: `score.weight` and, if present, `score.center` (f32).
pub fn load_head(path: &Path, num_labels: usize, hidden: usize, device: &candle_core::Device) -> Result<(Tensor, Option<Tensor>)> {
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| ModelError::CorruptFile { path: path.to_path_buf(), msg: e.to_string() })?;
    let get = |name: &str, shape: &[usize]| -> Result<Option<Tensor>> {
        let Some(t) = tensors.get(name) else { return Ok(None) };
        if t.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: name.into(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(Some(t.to_dtype(DType::F32)?))
    };
    let w = get("score.weight", &[num_labels, hidden])?
        .ok_or_else(|| ModelError::MissingTensor { path: path.to_path_buf(), tensor: "score.weight".into() })?;
    Ok((w, get("score.center", &[hidden])?))
}

/// Writes the head as `score.weight` (transformers' name), and its center as `score.center`, in
/// a safetensors file.
pub fn save_head(weight: &Tensor, center: Option<&Tensor>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let mut map = std::collections::HashMap::from([("score.weight".to_string(), weight.to_dtype(DType::F32)?)]);
    if let Some(c) = center {
        map.insert("score.center".to_string(), c.to_dtype(DType::F32)?);
    }
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn head_config_follows_transformers() {
        let c = HeadConfig::from_json(
            &json!({"id2label": {"1": "b", "0": "a", "2": "c"}, "problem_type": "multi_label_classification", "pad_token_id": 5}),
        )
        .unwrap();
        assert_eq!(c.labels, vec!["a", "b", "c"]);
        assert_eq!(c.problem_type, ProblemType::MultiLabel);
        assert_eq!(c.pooling, Pooling::LastNonPad(5));
        let d = HeadConfig::from_json(&json!({})).unwrap();
        assert_eq!(d.labels, vec!["LABEL_0", "LABEL_1"]);
        assert_eq!(d.problem_type, ProblemType::SingleLabel);
        assert_eq!(d.pooling, Pooling::LastValid);
        let e = HeadConfig::from_json(&json!({"num_labels": 3, "id2label": {"0": "a"}})).unwrap_err();
        assert_eq!(e.0, "id2label");
        assert_eq!(HeadConfig::from_json(&json!({"problem_type": "regression"})).unwrap_err().0, "problem_type");
    }

    #[test]
    fn pooling_takes_rightmost_non_pad_or_last_valid() {
        let head = ClassifierHead {
            weight: Tensor::zeros((2, 4), DType::F32, &candle_core::Device::Cpu).unwrap(),
            center: None,
            config: HeadConfig {
                labels: vec!["a".into(), "b".into()],
                problem_type: ProblemType::SingleLabel,
                pooling: Pooling::LastNonPad(0),
            },
        };
        let ids = vec![vec![0, 0, 5, 6], vec![5, 6, 0, 0], vec![5, 0, 7, 0], vec![0, 0, 0, 0]];
        let valid = vec![vec![false, false, true, true], vec![true, true, false, false], vec![true; 4], vec![true; 4]];
        assert_eq!(head.pooled_positions(&ids, &valid), vec![3, 1, 2, 0]);
        let head = ClassifierHead { config: HeadConfig { pooling: Pooling::LastValid, ..head.config }, ..head };
        assert_eq!(head.pooled_positions(&ids, &valid), vec![3, 1, 3, 3]);
    }

    #[test]
    fn centered_head_scores_weight_times_centered_state() {
        let dev = candle_core::Device::Cpu;
        let head = ClassifierHead {
            weight: Tensor::new(&[[1f32, 0.0], [0.0, 2.0]], &dev).unwrap(),
            center: Some(Tensor::new(&[1f32, 1.0], &dev).unwrap()),
            config: HeadConfig {
                labels: vec!["a".into(), "b".into()],
                problem_type: ProblemType::SingleLabel,
                pooling: Pooling::LastValid,
            },
        };
        // hidden [1, 2, 2]: the head reads position 1 = [3, 5] -> W([3,5] - [1,1]) = [2, 8].
        let hidden = Tensor::new(&[[[9f32, 9.0], [3.0, 5.0]]], &dev).unwrap();
        let logits = head.score(&hidden, &[vec![7, 8]], &[vec![true, true]]).unwrap();
        assert_eq!(logits.to_vec2::<f32>().unwrap(), vec![vec![2.0, 8.0]]);
        let p = head.probabilities(&logits).unwrap();
        assert!((p[0][1] - 1.0 / (1.0 + (-6f32).exp())).abs() < 1e-6);
        let dir = tempfile::tempdir().unwrap();
        save_head(&head.weight, head.center.as_ref(), &dir.path().join("h.safetensors")).unwrap();
        let (w, c) = load_head(&dir.path().join("h.safetensors"), 2, 2, &dev).unwrap();
        assert_eq!(w.to_vec2::<f32>().unwrap(), head.weight.to_vec2::<f32>().unwrap());
        assert_eq!(c.unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 1.0]);
        assert!(load_head(&dir.path().join("h.safetensors"), 3, 2, &dev).unwrap_err().to_string().contains("score.weight"));
    }
}
