//! Unlearning and DPO on the tiny fixture model: every loss term and the gradients against
//! tests/fixtures/tiny/unlearn_reference.json (scripts/make_unlearn_reference.py, PyTorch +
//! transformers), the frozen reference forward, LoRA-only training leaving the base untouched,
//! and full fine-tuning's saved weights reloading to the same logits.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use runner::methods::dpo::dpo_loss;
use runner::methods::unlearn::{answer_loss, retain_divergence, Divergence, QaExample, UnlearnRule};
use runner::model::{self, add_lora, CausalLm, ForwardOptions, LoadOptions, LoraConfig};
use runner::train::{self, Example, Gradients, Order, PairBatch, Stream, StreamSteps, TrainBatch, TrainerConfig};
use std::cell::Cell;

fn base() -> model::LoadedModel {
    model::load(tiny("llama_gqa").to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// The fixture with every weight trainable and the final norm scaled by 1 + 0.5 sin(i), as the
/// reference script's trained model.
fn perturbed() -> model::LoadedModel {
    let lm = model::load(tiny("llama_gqa").to_str().unwrap(), &LoadOptions { trainable: true, ..Default::default() }).unwrap();
    let (_, norm) = lm.model.trainable_params().into_iter().find(|(n, _)| n == "model.norm.weight").unwrap();
    let n = norm.as_tensor().elem_count();
    let scale = Tensor::from_vec((0..n).map(|i| 1.0 + 0.5 * (i as f32).sin()).collect::<Vec<_>>(), n, &Device::Cpu).unwrap();
    norm.set(&(norm.as_tensor() * scale).unwrap()).unwrap();
    lm
}

fn norm_param(m: &CausalLm) -> Vec<(String, candle_core::Var)> {
    m.trainable_params().into_iter().filter(|(n, _)| n == "model.norm.weight").collect()
}

fn masked(seqs: &[Vec<u32>], from: &[usize]) -> TrainBatch {
    TrainBatch::with_prompt_masked(seqs.to_vec(), from)
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

#[test]
fn unlearning_terms_and_their_gradient_equal_the_torch_reference() {
    // Tolerances: 1e-5 relative on losses, 1e-4 absolute on gradients (f32 reductions).
    let r = read_json(&tiny("unlearn_reference.json"));
    let seqs = ids2(&r["seqs"]);
    let prompt_lens: Vec<usize> = r["prompt_lens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let trained = perturbed();
    let orig = base();
    let opts = ForwardOptions::training(None);

    let answer = answer_loss(&trained.model, &masked(&seqs, &prompt_lens), &opts).unwrap();
    assert_rel(scalar(&answer), r["answer_loss"].as_f64().unwrap(), 1e-5, "answer loss");
    // The official mismatch loss starts at position 2: labels from token 3 on.
    let official = answer_loss(&trained.model, &masked(&seqs, &[3, 3]), &opts).unwrap();
    assert_rel(scalar(&official), r["official_mismatch_loss"].as_f64().unwrap(), 1e-5, "official mismatch loss");
    let kl = retain_divergence(&trained.model, &orig.model, &masked(&seqs, &prompt_lens), Divergence::Kl, &opts).unwrap();
    assert_rel(scalar(&kl), r["kl_answer"].as_f64().unwrap(), 1e-5, "KL over answer positions");
    let ce = retain_divergence(&trained.model, &orig.model, &masked(&seqs, &[1, 1]), Divergence::CrossEntropy, &opts).unwrap();
    assert_rel(scalar(&ce), r["cross_entropy_all"].as_f64().unwrap(), 1e-5, "cross-entropy form over every position");
    // Against itself the KL vanishes, the cross-entropy form does not (it is the entropy).
    let self_kl = retain_divergence(&orig.model, &orig.model, &masked(&seqs, &prompt_lens), Divergence::Kl, &opts).unwrap();
    assert!(scalar(&self_kl).abs() < 1e-6);

    let total = ((answer.neg().unwrap() * 0.5).unwrap() + official).unwrap();
    let total = (total + kl).unwrap();
    assert_rel(scalar(&total), r["total"].as_f64().unwrap(), 1e-5, "weighted total");
    let params = norm_param(&trained.model);
    let g = Gradients::of(&total, &params).unwrap();
    let diff = max_abs_diff(&flat(&g.tensors[0]), &floats(&r["total_norm_grad"]));
    assert!(diff < 1e-4, "gradient of the unlearning loss differs from torch by {diff}");
}

#[test]
fn dpo_loss_and_gradient_equal_trl_formula() {
    let r = read_json(&tiny("unlearn_reference.json"));
    let (prompt, chosen, rejected) = (ids(&r["dpo_prompt"]), ids(&r["dpo_chosen"]), ids(&r["dpo_rejected"]));
    let side = |resp: &[u32]| TrainBatch::with_prompt_masked(vec![[prompt.clone(), resp.to_vec()].concat()], &[prompt.len()]);
    let batch = PairBatch { preferred: side(&chosen), rejected: side(&rejected) };
    let trained = perturbed();
    let orig = base();
    let opts = ForwardOptions::training(None);
    let (loss, c, rj) = dpo_loss(&trained.model, &orig.model, &batch, r["dpo_beta"].as_f64().unwrap(), &opts).unwrap();
    assert_rel(scalar(&loss), r["dpo_loss"].as_f64().unwrap(), 1e-5, "DPO loss");
    // The loss is -log sigmoid of the reward difference.
    let z = (c[0] - rj[0]) as f64;
    assert_rel(scalar(&loss), (1.0 + (-z).exp()).ln(), 1e-5, "loss from the rewards");
    let g = Gradients::of(&loss, &norm_param(&trained.model)).unwrap();
    let diff = max_abs_diff(&flat(&g.tensors[0]), &floats(&r["dpo_norm_grad"]));
    assert!(diff < 1e-5, "DPO gradient differs from torch by {diff}");
    // Policy = reference: every reward is 0 and the loss is log 2.
    let (same, _, _) = dpo_loss(&orig.model, &orig.model, &batch, 0.1, &opts).unwrap();
    assert!((scalar(&same) - 2f64.ln()).abs() < 1e-6);
}

fn lora_model() -> model::LoadedModel {
    let mut lm = base();
    let cfg =
        LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: vec!["q_proj".into(), "v_proj".into()], layers_to_transform: None };
    add_lora(&mut lm.model, &cfg, 3).unwrap();
    for (name, var) in lm.model.trainable_params() {
        if name.contains("lora_B") {
            var.set(&(var.as_tensor().ones_like().unwrap() * 0.05).unwrap()).unwrap();
        }
    }
    lm
}

fn logits(m: &CausalLm, seq: &[u32], opts: &ForwardOptions) -> Vec<f32> {
    let (ids, pos, valid) = row_tensor(seq);
    flat(&m.forward(&ids, &pos, &valid, opts).unwrap())
}

#[test]
fn the_reference_forward_is_the_model_before_the_stage() {
    let seqs = ids2(&read_json(&tiny("unlearn_reference.json"))["seqs"]);
    let opts = ForwardOptions::training(None);
    let plain = logits(&base().model, &seqs[0], &opts);
    let lm = lora_model();
    let with_adapter = logits(&lm.model, &seqs[0], &opts);
    assert!(max_abs_diff(&with_adapter, &plain) > 1e-3, "the new adapter changes the model");
    let reference = logits(&lm.model, &seqs[0], &opts.reference());
    assert!(max_abs_diff(&reference, &plain) < 1e-6, "the reference leaves the new adapter out");
}

fn qa(seq: &[u32], prompt: usize) -> QaExample {
    QaExample {
        example: Example {
            input_ids: seq.to_vec(),
            labels: seq.iter().enumerate().map(|(i, &t)| if i < prompt { -100 } else { t as i64 }).collect(),
        },
        prompt: format!("prompt {prompt}"),
    }
}

fn run_unlearning(lm: &model::LoadedModel, reference: Option<&CausalLm>, steps: usize) -> Vec<f64> {
    let seqs = ids2(&read_json(&tiny("unlearn_reference.json"))["seqs"]);
    let forget = Stream::new(vec![qa(&seqs[0], 3), qa(&seqs[1], 2)], 1, Order::Sequential, 0);
    let retain = Stream::new(vec![qa(&seqs[1], 2), qa(&seqs[0], 2)], 2, Order::Shuffled, 1);
    let mut source = StreamSteps::new(vec![forget, retain], steps);
    // The mismatch sequences: the forget sequence's first three tokens, then the drawn "answer".
    let mut rule = UnlearnRule {
        forget_weight: 0.5,
        mismatch_weight: 1.0,
        retain_weight: 1.0,
        divergence: Divergence::Kl,
        mismatch_answers: 2,
        pool: vec!["7 8".into(), "9 10 11".into(), "12".into()],
        build: Box::new(|_prompt: &str, answer: &str| {
            let tail: Vec<u32> = answer.split(' ').map(|t| t.parse::<u32>().unwrap() + 100).collect();
            Ok(qa(&[vec![285, 360, 278], tail].concat(), 3))
        }),
        reference,
        rng: rand::SeedableRng::seed_from_u64(5),
        forward_tokens: Cell::new(0),
        backward_tokens: Cell::new(0),
        last_terms: Cell::new([0.0; 3]),
    };
    let cfg = TrainerConfig { lr: 1e-2, max_grad_norm: None, ..Default::default() };
    let mut losses = Vec::new();
    train::train_on(&lm.model, lm.model.trainable_params(), &mut source, &cfg, &mut rule, &mut |s| losses.push(s.loss)).unwrap();
    let [fgt, rdn, nor] = rule.last_terms.get();
    assert!(fgt > 0.0 && rdn > 0.0 && nor > 0.0, "every term is computed: {fgt} {rdn} {nor}");
    assert!(rule.backward_tokens.get() > 0 && rule.forward_tokens.get() > rule.backward_tokens.get());
    losses
}

#[test]
fn lora_unlearning_leaves_the_base_weights_bit_identical() {
    let lm = lora_model();
    let before: Vec<Vec<f32>> = lm.model.named_weights().iter().map(|(_, t)| flat(t)).collect();
    let lora_before: Vec<Vec<f32>> = lm.model.trainable_params().iter().map(|(_, v)| flat(v.as_tensor())).collect();
    let losses = run_unlearning(&lm, None, 3);
    assert_eq!(losses.len(), 3);
    let after: Vec<Vec<f32>> = lm.model.named_weights().iter().map(|(_, t)| flat(t)).collect();
    assert_eq!(before, after, "base weights unchanged");
    let lora_after: Vec<Vec<f32>> = lm.model.trainable_params().iter().map(|(_, v)| flat(v.as_tensor())).collect();
    assert_ne!(lora_before, lora_after, "the adapter trained");
}

#[test]
fn full_unlearning_trains_every_weight_against_a_separate_reference() {
    let lm = model::load(tiny("llama_gqa").to_str().unwrap(), &LoadOptions { trainable: true, ..Default::default() }).unwrap();
    let orig = base();
    let before: Vec<Vec<f32>> = lm.model.named_weights().iter().map(|(_, t)| flat(t)).collect();
    run_unlearning(&lm, Some(&orig.model), 2);
    let after: Vec<Vec<f32>> = lm.model.named_weights().iter().map(|(_, t)| flat(t)).collect();
    assert!(before.iter().zip(&after).all(|(b, a)| b != a), "every base weight moved");
    let orig_now: Vec<Vec<f32>> = orig.model.named_weights().iter().map(|(_, t)| flat(t)).collect();
    assert_eq!(before, orig_now, "the reference stayed frozen");
}

#[test]
fn full_fine_tuning_weights_reload_to_identical_logits() {
    let trained = perturbed();
    // A merged adapter is part of the saved weights too.
    let mut merged = lora_model();
    merged.model.merge_adapters().unwrap();
    let seq = ids2(&read_json(&tiny("unlearn_reference.json"))["seqs"])[0].clone();
    let dir = tempfile::tempdir().unwrap();
    for (i, lm) in [&trained, &merged].into_iter().enumerate() {
        let file = dir.path().join(format!("w{i}/model.safetensors"));
        model::save_safetensors(lm.model.named_weights(), &file).unwrap();
        let reloaded = model::load_with_weights(tiny("llama_gqa").to_str().unwrap(), &file, &LoadOptions::default()).unwrap();
        let opts = ForwardOptions::inference();
        assert_eq!(logits(&lm.model, &seq, &opts), logits(&reloaded.model, &seq, &opts), "model {i}");
        assert!(max_abs_diff(&logits(&reloaded.model, &seq, &opts), &logits(&base().model, &seq, &opts)) > 1e-3);
    }
    // Made trainable after the merge, the model computes the same logits and trains every weight.
    let full = merged.model.to_trainable().unwrap();
    assert_eq!(full.trainable_params().len(), full.named_weights().len());
    let opts = ForwardOptions::inference();
    assert_eq!(logits(&full, &seq, &opts), logits(&merged.model, &seq, &opts));
    assert_eq!(flat(&full.named_weights()[0].1).len(), flat(&merged.model.named_weights()[0].1).len());
}
