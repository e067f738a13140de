//! Sequence classification as a training objective (the `classifier` train method's loss).
//!
//! An example is a token sequence with one class. The class is stored in `Example::labels` at
//! the last position (where the head reads the hidden state) and `IGNORE_INDEX` elsewhere, so the
//! trainer's shuffling, batching, accumulation weights (one target per example), clipping,
//! schedule and AdamW apply unchanged; [`ClassificationLoss`] reads the classes back.
//!
//! When only upper layers train (LoRA on a few top layers, the usual judge set-up), the blocks
//! below them compute the same hidden states at every step: [`FrozenPrefix`] computes them
//! once per distinct example (inference kernels) and the steps run only the trainable top.

use candle_core::{Tensor, Var};
use std::collections::HashMap;

use super::loss::{cross_entropy, TrainBatch, IGNORE_INDEX};
use super::trainer::{Example, GradientRule};
use super::Gradients;
use crate::model::{CausalLm, ClassifierHead, ForwardOptions, ModelError, PaddedBatch, Padding, Result};

/// A classification example: `class` at the last position, `IGNORE_INDEX` elsewhere.
pub fn classification_example(input_ids: Vec<u32>, class: usize) -> Result<Example> {
    if input_ids.len() < 2 {
        return Err(ModelError::Input(format!("a classification example needs at least 2 tokens, got {}", input_ids.len())));
    }
    let mut labels = vec![IGNORE_INDEX; input_ids.len()];
    *labels.last_mut().expect("non-empty") = class as i64;
    Ok(Example { input_ids, labels })
}

/// The class of each row of a batch built from [`classification_example`]s.
pub fn batch_classes(batch: &TrainBatch) -> Result<Vec<u32>> {
    batch
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| match l.last() {
            Some(&c) if c >= 0 && l[..l.len() - 1].iter().all(|&x| x == IGNORE_INDEX) => Ok(c as u32),
            _ => Err(ModelError::Input(format!("row {i} is not a classification example (one class at the last position)"))),
        })
        .collect()
}

/// The lowest block with a trainable tensor: `Some(0)` when base weights train, `None` when
/// nothing in the blocks trains.
pub fn first_trainable_layer(model: &CausalLm) -> Option<usize> {
    if !model.full_params().is_empty() {
        return Some(0);
    }
    model
        .linears()
        .into_iter()
        .filter(|l| l.lora.is_some())
        .filter_map(|l| {
            let mut parts = l.name.split('.');
            parts.by_ref().find(|p| *p == "layers")?;
            parts.next()?.parse::<usize>().ok()
        })
        .min()
}

/// The residual stream entering block `layer`, computed once per distinct token sequence with
/// inference kernels. Valid only while no block below `layer` holds a trainable tensor (checked
/// by [`FrozenPrefix::compute`]) and no hook applies there (the trainer sets none).
pub struct FrozenPrefix {
    pub layer: usize,
    states: HashMap<Vec<u32>, Tensor>,
}

impl FrozenPrefix {
    /// Runs blocks `0..layer` on every sequence, `batch_size` at a time (right padding).
    pub fn compute(model: &CausalLm, seqs: &[Vec<u32>], layer: usize, batch_size: usize) -> Result<Self> {
        if first_trainable_layer(model).is_some_and(|first| first < layer) || layer > model.num_layers() {
            return Err(ModelError::Input(format!("blocks below layer {layer} are not frozen; cannot cache them")));
        }
        let mut distinct: Vec<&Vec<u32>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in seqs {
            if seen.insert(s) {
                distinct.push(s);
            }
        }
        let opts = ForwardOptions::inference();
        let mut states = HashMap::with_capacity(distinct.len());
        for chunk in distinct.chunks(batch_size.max(1)) {
            let owned: Vec<Vec<u32>> = chunk.iter().map(|s| (*s).clone()).collect();
            let batch = PaddedBatch::new(&owned, 0, Padding::Right, &model.device)?;
            let x = model.embed(&batch.ids, &batch.positions, &opts)?;
            let x = model.forward_blocks(x, &batch.positions, &batch.valid, 0..layer, None, &opts)?;
            for (b, s) in owned.into_iter().enumerate() {
                let row = x.get(b)?.narrow(0, 0, s.len())?.contiguous()?;
                states.insert(s, row);
            }
        }
        Ok(Self { layer, states })
    }

    /// Final hidden states `[B, T, H]` of a right-padded batch of cached sequences: the cached
    /// prefix, then blocks `layer..` and the output stage (`CausalLm::output_hidden`) with `opts`.
    pub fn hidden(&self, model: &CausalLm, seqs: &[Vec<u32>], opts: &ForwardOptions) -> Result<(Tensor, PaddedBatch)> {
        let batch = PaddedBatch::new(seqs, 0, Padding::Right, &model.device)?;
        let width = batch.ids.dim(1)?;
        let mut rows = Vec::with_capacity(seqs.len());
        for s in seqs {
            let st = self.states.get(s).ok_or_else(|| ModelError::Input("a sequence without a cached prefix".into()))?;
            let pad = width - s.len();
            rows.push(if pad == 0 { st.clone() } else { st.pad_with_zeros(0, 0, pad)? });
        }
        let x = Tensor::stack(&rows, 0)?;
        let x = model.forward_blocks(x, &batch.positions, &batch.valid, self.layer..model.num_layers(), None, opts)?;
        Ok((model.output_hidden(&x, opts)?, batch))
    }
}

/// Mean cross-entropy of the head's pooled logits against the batch's classes.
pub fn classification_loss(
    model: &CausalLm,
    head: &ClassifierHead,
    batch: &TrainBatch,
    pad_id: u32,
    opts: &ForwardOptions,
) -> Result<Tensor> {
    classification_loss_with(model, head, batch, pad_id, None, opts)
}

fn check_classes(head: &ClassifierHead, batch: &TrainBatch) -> Result<Vec<u32>> {
    let classes = batch_classes(batch)?;
    if let Some(c) = classes.iter().find(|&&c| c as usize >= head.num_labels()) {
        return Err(ModelError::Input(format!("class {c} is outside the head's {} labels", head.num_labels())));
    }
    Ok(classes)
}

/// Pooled logits of a batch, through the cached prefix when there is one.
pub fn classification_logits(
    model: &CausalLm,
    head: &ClassifierHead,
    seqs: &[Vec<u32>],
    pad_id: u32,
    prefix: Option<&FrozenPrefix>,
    opts: &ForwardOptions,
) -> Result<Tensor> {
    match prefix {
        Some(p) => {
            let (hidden, batch) = p.hidden(model, seqs, opts)?;
            let ids: Vec<Vec<u32>> = batch.ids.to_vec2()?;
            head.score(&hidden, &ids, &batch.valid)
        }
        None => head.logits(model, seqs, pad_id, Padding::Right, opts),
    }
}

/// The pooled (f32) final hidden states `[B, H]` the head reads, without gradient.
pub fn pooled_states(
    model: &CausalLm,
    head: &ClassifierHead,
    seqs: &[Vec<u32>],
    pad_id: u32,
    prefix: Option<&FrozenPrefix>,
) -> Result<Tensor> {
    let opts = ForwardOptions::inference();
    let (hidden, batch) = match prefix {
        Some(p) => p.hidden(model, seqs, &opts)?,
        None => {
            let batch = PaddedBatch::new(seqs, pad_id, Padding::Right, &model.device)?;
            (model.forward_hidden(&batch.ids, &batch.positions, &batch.valid, None, &opts)?, batch)
        }
    };
    let ids: Vec<Vec<u32>> = batch.ids.to_vec2()?;
    Ok(head.pool(&hidden, &ids, &batch.valid)?.detach())
}

fn classification_loss_with(
    model: &CausalLm,
    head: &ClassifierHead,
    batch: &TrainBatch,
    pad_id: u32,
    prefix: Option<&FrozenPrefix>,
    opts: &ForwardOptions,
) -> Result<Tensor> {
    let classes = check_classes(head, batch)?;
    let logits = classification_logits(model, head, &batch.input_ids, pad_id, prefix, opts)?;
    Ok(cross_entropy(&logits, &Tensor::new(classes.as_slice(), &model.device)?)?)
}

/// Gradient rule of the `classifier` method: the classification loss of each micro-batch,
/// weighted by its share of the examples (equal to one big batch). The head's weight must be
/// one of the trained parameters (see `train::train_params`).
pub struct ClassificationLoss {
    pub head: ClassifierHead,
    pub pad_id: u32,
    /// Cached frozen blocks (see [`FrozenPrefix`]); `None` runs the whole model.
    pub prefix: Option<FrozenPrefix>,
}

impl ClassificationLoss {
    /// A fresh trainable f32 head `[num_labels, hidden]`, initialised as transformers does
    /// (normal, std `init_std`), from a seeded generator.
    pub fn new_head(num_labels: usize, hidden: usize, init_std: f64, seed: u64, device: &candle_core::Device) -> Result<Var> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Box-Muller: two uniforms -> one standard normal.
        let w: Vec<f32> = (0..num_labels * hidden)
            .map(|_| {
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * init_std) as f32
            })
            .collect();
        Ok(Var::from_tensor(&Tensor::from_vec(w, (num_labels, hidden), device)?)?)
    }
}

impl GradientRule for ClassificationLoss {
    fn gradients(
        &mut self,
        model: &CausalLm,
        params: &[(String, Var)],
        micro_batches: &[TrainBatch],
        opts: &ForwardOptions,
    ) -> Result<(f64, Gradients)> {
        // Weighted by examples: the loss is a mean over sequences.
        super::accumulate(
            params,
            micro_batches,
            |mb| mb.input_ids.len(),
            |mb| classification_loss_with(model, &self.head, mb, self.pad_id, self.prefix.as_ref(), opts),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_trip_through_labels() {
        let a = classification_example(vec![1, 2, 3], 1).unwrap();
        assert_eq!(a.labels, vec![-100, -100, 1]);
        let b = classification_example(vec![4, 5], 0).unwrap();
        let batch = TrainBatch { input_ids: vec![a.input_ids, b.input_ids], labels: vec![a.labels, b.labels] };
        assert_eq!(batch.num_targets(), 2, "one target per example for the trainer's weights");
        assert_eq!(batch_classes(&batch).unwrap(), vec![1, 0]);
        assert!(classification_example(vec![1], 0).is_err());
        let lm = TrainBatch { input_ids: vec![vec![1, 2, 3]], labels: vec![vec![-100, 2, 3]] };
        assert!(batch_classes(&lm).is_err());
    }
}
