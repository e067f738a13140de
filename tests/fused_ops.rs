//! The fused CPU ops (attention softmax, rotary, SwiGLU, frozen products) compute the same bits as
//! the elementary candle ops they replace, on whole models: the loss, every trainable gradient
//! and the inference logits are compared bit for bit with `ForwardOptions::elementary()`, for
//! each tiny architecture (LoRA with dropout, and full fine-tuning) and for SmolLM2-135M.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use rand::{Rng, SeedableRng};
use runner::model::{self, add_lora, DropoutRng, ForwardOptions, LoadOptions, LoraConfig};
use runner::train::{lm_loss, Gradients, TrainBatch};
use std::cell::RefCell;

/// Random token rows (the first 3 tokens of each masked as prompt), the second row shorter so
/// that padding and the mask are exercised.
fn batch(vocab: usize, len: usize, seed: u64) -> TrainBatch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let seqs: Vec<Vec<u32>> = [len, len - 3].iter().map(|&n| (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()).collect();
    TrainBatch::with_prompt_masked(seqs, &[3, 3])
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The loss and the gradients of every trainable tensor, fused and elementary, bit for bit.
fn assert_same_training_step(lm: &model::LoadedModel, b: &TrainBatch, what: &str) {
    let params = lm.model.trainable_params();
    assert!(!params.is_empty(), "{what}: nothing to train");
    let run = |elementary: bool| {
        let rng = RefCell::new(DropoutRng::seed_from_u64(11));
        let opts = ForwardOptions::training(Some(&rng));
        let opts = if elementary { opts.elementary() } else { opts };
        let loss = lm_loss(&lm.model, b, &opts).unwrap();
        let grads = Gradients::of(&loss, &params).unwrap();
        let grads: Vec<Vec<u32>> = grads.tensors.iter().map(|t| bits(&flat(t))).collect();
        (loss.to_scalar::<f32>().unwrap().to_bits(), grads)
    };
    let (fused, elementary) = (run(false), run(true));
    assert_eq!(fused.0, elementary.0, "{what}: loss");
    for ((name, _), (a, e)) in params.iter().zip(fused.1.iter().zip(&elementary.1)) {
        assert!(a == e, "{what}: gradient of {name}");
    }
}

/// Inference logits (the generation and scoring path), fused and elementary, bit for bit.
fn assert_same_logits(lm: &model::LoadedModel, b: &TrainBatch, what: &str) {
    let ids = &b.input_ids[0];
    let n = ids.len();
    let input = Tensor::from_vec(ids.clone(), (1, n), &Device::Cpu).unwrap();
    let pos = Tensor::from_vec((0..n as u32).collect::<Vec<_>>(), (1, n), &Device::Cpu).unwrap();
    let valid = vec![vec![true; n]];
    let logits = |opts: ForwardOptions| bits(&flat(&lm.model.forward(&input, &pos, &valid, &opts).unwrap()));
    assert!(logits(ForwardOptions::inference()) == logits(ForwardOptions::inference().elementary()), "{what}: logits");
}

fn lora(lm: &mut model::LoadedModel, targets: &[&str]) {
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
        layers_to_transform: None,
    };
    add_lora(&mut lm.model, &cfg, 5).unwrap();
}

#[test]
fn tiny_models_train_and_infer_the_same_bits_fused_and_elementary() {
    // Llama with grouped-query attention (SwiGLU, full rotary), GPT-NeoX (partial rotary, GELU),
    // Qwen2 (biases, tied embeddings), OPT (no rotary, ReLU).
    for (name, targets) in [
        ("llama_gqa", vec!["q_proj", "v_proj", "down_proj"]),
        ("gpt_neox", vec!["query_key_value"]),
        ("qwen2_bias_tied", vec!["q_proj", "v_proj", "gate_proj"]),
        ("opt_pre_ln", vec!["q_proj", "v_proj"]),
    ] {
        let path = tiny(name);
        let full = model::load(path.to_str().unwrap(), &LoadOptions { trainable: true, ..Default::default() }).unwrap();
        let b = batch(full.model.config.vocab_size.min(300), 12, 3);
        assert_same_training_step(&full, &b, &format!("{name}, full fine-tuning"));
        assert_same_logits(&full, &b, name);
        let mut adapted = model::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
        lora(&mut adapted, &targets);
        assert_same_training_step(&adapted, &b, &format!("{name}, LoRA"));
    }
}

#[test]
fn smollm2_trains_and_infers_the_same_bits_fused_and_elementary() {
    let Some(path) = smollm2_gguf() else { return };
    let mut lm = model::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    lora(&mut lm, &["q_proj", "v_proj"]);
    let b = batch(lm.model.config.vocab_size, 40, 9);
    assert_same_training_step(&lm, &b, "SmolLM2-135M, LoRA");
    assert_same_logits(&lm, &b, "SmolLM2-135M");
}
