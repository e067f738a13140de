//! Training primitives the methods build on: exact perturb/restore (Booster), hidden-state hooks
//! (Vaccine), frozen reference forwards, gradient accumulation, clipping, optimizer state.

mod common;

use candle_core::Tensor;
use common::*;
use runner::model::layers::GradientProbe;
use runner::model::{self, add_lora, ForwardOptions, HookPoint, LoadOptions, LoraConfig};
use runner::train::grads::perturb;
use runner::train::{accumulated_gradients, lm_loss, AdamW, AdamWConfig, Gradients, ParamSnapshot, TrainBatch};
use std::cell::RefCell;

fn lora_model() -> model::LoadedModel {
    let mut lm = model::load(tiny("llama_gqa").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        layers_to_transform: None,
    };
    add_lora(&mut lm.model, &cfg, 7).unwrap();
    // Fresh adapters have B = 0; one step makes them non-trivial.
    let params = lm.model.trainable_params();
    let g = Gradients::of(&lm_loss(&lm.model, &batch(), &ForwardOptions::training(None)).unwrap(), &params).unwrap();
    AdamW::new(&params, AdamWConfig::default()).unwrap().step(&params, &g, 1e-2).unwrap();
    lm
}

fn batch() -> TrainBatch {
    let r = read_json(&tiny("llama_gqa").join("reference.json"));
    TrainBatch::with_prompt_masked(ids2(&r["seqs"]), &[3, 3])
}

fn values(params: &[(String, candle_core::Var)]) -> Vec<Vec<f32>> {
    params.iter().map(|(_, v)| flat(v.as_tensor())).collect()
}

#[test]
fn perturb_and_restore_is_bit_exact_and_booster_gradient_combines() {
    let lm = lora_model();
    let params = lm.model.trainable_params();
    let opts = ForwardOptions::training(None);
    let b = batch();
    let before = values(&params);
    let g_h = Gradients::of(&lm_loss(&lm.model, &b, &opts).unwrap(), &params).unwrap();
    let norm = g_h.global_norm().unwrap() + 1e-7;
    let snapshot = ParamSnapshot::take(&params).unwrap();
    perturb(&params, &g_h, -0.1 / norm).unwrap();
    assert_ne!(values(&params), before, "the perturbation moved the weights");
    let g_h_perturbed = Gradients::of(&lm_loss(&lm.model, &b, &opts).unwrap(), &params).unwrap();
    snapshot.restore(&params).unwrap();
    assert_eq!(values(&params), before, "restore is bit-identical");
    let g_f = Gradients::of(&lm_loss(&lm.model, &b, &opts).unwrap(), &params).unwrap();
    let mut combined = g_f.clone();
    combined.add_scaled(&g_h, 5.0).unwrap();
    combined.add_scaled(&g_h_perturbed, -5.0).unwrap();
    for i in 0..params.len() {
        let expected = (&g_f.tensors[i] + ((&g_h.tensors[i] - &g_h_perturbed.tensors[i]).unwrap() * 5.0).unwrap()).unwrap();
        assert!(max_abs_diff(&flat(&combined.tensors[i]), &flat(&expected)) < 1e-6);
    }
}

#[test]
fn hooks_expose_activation_gradients_and_apply_perturbations() {
    let lm = lora_model();
    let params = lm.model.trainable_params();
    let b = batch();
    let probe = GradientProbe::new(HookPoint::AttentionOutput);
    let loss = lm_loss(&lm.model, &b, &ForwardOptions::training(None).with_hook(&probe)).unwrap();
    let store = loss.backward().unwrap();
    let grads = probe.gradients(&store).unwrap();
    assert_eq!(grads.len(), lm.model.num_layers());
    let norm: f32 = grads.iter().map(|g| g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).sum::<f32>().sqrt();
    assert!(norm > 0.0, "attention outputs received gradients");
    // Vaccine: eps_l = rho * g_l / ||g||_global has norm rho.
    let rho = 2.0;
    let eps: Vec<Tensor> = grads.iter().map(|g| (g * (rho / (norm as f64 + 1e-7))).unwrap().detach()).collect();
    let eps_norm: f32 = eps.iter().map(|e| e.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).sum::<f32>().sqrt();
    assert!((eps_norm - rho as f32).abs() < 1e-4, "perturbation norm {eps_norm}");
    let perturbed = GradientProbe::with_perturbation(HookPoint::AttentionOutput, eps);
    let loss2 = lm_loss(&lm.model, &b, &ForwardOptions::training(None).with_hook(&perturbed)).unwrap();
    assert!(loss2.to_scalar::<f32>().unwrap() > loss.to_scalar::<f32>().unwrap(), "an ascent perturbation raises the loss");
    let g2 = Gradients::of(&loss2, &params).unwrap();
    assert!(g2.global_norm().unwrap() > 0.0);
}

#[test]
fn reference_forward_without_adapters_is_the_base_model() {
    let lm = lora_model();
    let base = model::load(tiny("llama_gqa").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let b = batch();
    let frozen = lm_loss(&lm.model, &b, &ForwardOptions::training(None).without_adapters()).unwrap();
    let base_loss = lm_loss(&base.model, &b, &ForwardOptions::training(None)).unwrap();
    assert_eq!(frozen.to_scalar::<f32>().unwrap(), base_loss.to_scalar::<f32>().unwrap());
    // And it records no gradient for the adapters.
    let g = Gradients::of(&frozen, &lm.model.trainable_params()).unwrap();
    assert_eq!(g.global_norm().unwrap(), 0.0);
}

#[test]
fn accumulation_over_micro_batches_equals_one_batch() {
    let lm = lora_model();
    let params = lm.model.trainable_params();
    let opts = ForwardOptions::training(None);
    let b = batch();
    let whole = Gradients::of(&lm_loss(&lm.model, &b, &opts).unwrap(), &params).unwrap();
    let halves: Vec<TrainBatch> =
        (0..2).map(|i| TrainBatch { input_ids: vec![b.input_ids[i].clone()], labels: vec![b.labels[i].clone()] }).collect();
    let (_, acc) = accumulated_gradients(&lm.model, &params, &halves, &opts).unwrap();
    for (a, w) in acc.tensors.iter().zip(&whole.tensors) {
        assert!(max_abs_diff(&flat(a), &flat(w)) < 1e-5);
    }
}

#[test]
fn clipping_scales_to_the_max_norm_like_torch() {
    let lm = lora_model();
    let params = lm.model.trainable_params();
    let mut g = Gradients::of(&lm_loss(&lm.model, &batch(), &ForwardOptions::training(None)).unwrap(), &params).unwrap();
    let before = g.global_norm().unwrap();
    assert!(before > 0.5);
    let reported = g.clip_global_norm(0.5).unwrap();
    assert_eq!(reported, before);
    assert!((g.global_norm().unwrap() - 0.5 * before / (before + 1e-6)).abs() < 1e-5);
    let mut g2 = g.clone();
    g2.clip_global_norm(1e6).unwrap();
    assert_eq!(flat(&g2.tensors[0]), flat(&g.tensors[0]), "no clipping under the max norm");
}

#[test]
fn optimizer_state_round_trips_and_resumes_identically() {
    let run = |resume_at: Option<usize>| -> Vec<Vec<f32>> {
        let lm = lora_model();
        let params = lm.model.trainable_params();
        let opts = ForwardOptions::training(None);
        let mut opt = AdamW::new(&params, AdamWConfig { weight_decay: 0.01, ..Default::default() }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for step in 0..3 {
            if Some(step) == resume_at {
                opt.save(&dir.path().join("opt.safetensors")).unwrap();
                opt = AdamW::new(&params, AdamWConfig { weight_decay: 0.01, ..Default::default() }).unwrap();
                opt.load(&dir.path().join("opt.safetensors")).unwrap();
            }
            let g = Gradients::of(&lm_loss(&lm.model, &batch(), &opts).unwrap(), &params).unwrap();
            opt.step(&params, &g, 1e-3).unwrap();
        }
        values(&params)
    };
    assert_eq!(run(None), run(Some(2)));
}

#[test]
fn lora_dropout_is_seeded() {
    use rand::SeedableRng;
    let mut lm = model::load(tiny("llama_gqa").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.5, target_modules: vec!["q_proj".into()], layers_to_transform: None };
    add_lora(&mut lm.model, &cfg, 1).unwrap();
    let loss_with = |seed: u64| {
        let rng = RefCell::new(runner::model::DropoutRng::seed_from_u64(seed));
        let params = lm.model.trainable_params();
        let g = Gradients::of(&lm_loss(&lm.model, &batch(), &ForwardOptions::training(Some(&rng))).unwrap(), &params).unwrap();
        g.tensors.iter().flat_map(flat).collect::<Vec<f32>>()
    };
    assert_eq!(loss_with(3), loss_with(3));
    assert_ne!(loss_with(3), loss_with(4));
}

/// Logits of every position of `b` under `opts`, flattened.
fn all_logits(lm: &model::LoadedModel, b: &TrainBatch, opts: &ForwardOptions) -> Vec<f32> {
    let t = runner::train::reference::token_logits(&lm.model, b, opts).unwrap();
    flat(&t.logits)
}

#[test]
fn the_reference_forward_is_the_model_before_the_stage() {
    let b = batch();
    let opts = ForwardOptions::training(None);
    // A continued adapter (Booster's single LoRA): the reference keeps its loaded values.
    let mut lm = lora_model();
    lm.model.freeze_reference().unwrap();
    let before = all_logits(&lm, &b, &opts);
    let params = lm.model.trainable_params();
    let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
    for _ in 0..2 {
        let g = Gradients::of(&lm_loss(&lm.model, &b, &opts).unwrap(), &params).unwrap();
        opt.step(&params, &g, 1e-2).unwrap();
    }
    let after = all_logits(&lm, &b, &opts);
    assert!(max_abs_diff(&after, &before) > 1e-3, "training moved the model");
    let reference = runner::train::reference::reference_token_logits(&lm.model, &b, &opts).unwrap();
    assert!(max_abs_diff(&flat(&reference.logits), &before) < 1e-6, "the reference is the model before training");
    // And it takes no gradient.
    let lp = reference.sequence_logprobs().unwrap().sum_all().unwrap();
    assert_eq!(Gradients::of(&lp, &params).unwrap().global_norm().unwrap(), 0.0);
    // A fresh adapter is not part of the reference: it is the model it was added to.
    let base = model::load(tiny("llama_gqa").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let fresh = lora_model();
    let r = runner::train::reference::reference_token_logits(&fresh.model, &b, &opts).unwrap();
    assert!(max_abs_diff(&flat(&r.logits), &all_logits(&base, &b, &opts)) < 1e-6);
}

#[test]
fn sequence_log_probabilities_sum_the_masked_token_losses() {
    let lm = lora_model();
    let b = batch();
    let opts = ForwardOptions::training(None);
    let t = runner::train::reference::token_logits(&lm.model, &b, &opts).unwrap();
    let per_seq: Vec<f32> = t.sequence_logprobs().unwrap().to_vec1().unwrap();
    assert_eq!(per_seq.len(), 2);
    for (i, lp) in per_seq.iter().enumerate() {
        let one = TrainBatch { input_ids: vec![b.input_ids[i].clone()], labels: vec![b.labels[i].clone()] };
        let n = one.num_targets() as f32;
        let mean_nll = lm_loss(&lm.model, &one, &opts).unwrap().to_scalar::<f32>().unwrap();
        assert!((-lp / n - mean_nll).abs() < 1e-5, "sequence {i}: {} vs {mean_nll}", -lp / n);
    }
}

#[test]
fn the_trainer_steps_through_pairs_and_several_streams() {
    use runner::model::Result as ModelResult;
    use runner::train::{
        train_on, EpochBatches, Example, GradientRule, Order, PairBatch, ResponsePair, Stream, StreamSteps, TrainerConfig,
    };
    let b = batch();
    let ex = |i: usize| Example { input_ids: b.input_ids[i].clone(), labels: b.labels[i].clone() };
    /// A rule that sees pairs: preferred loss minus rejected loss (a contrastive toy objective).
    struct Contrast(usize);
    impl GradientRule<PairBatch> for Contrast {
        fn gradients(
            &mut self,
            model: &runner::model::CausalLm,
            params: &[(String, candle_core::Var)],
            micro: &[PairBatch],
            opts: &ForwardOptions,
        ) -> ModelResult<(f64, Gradients)> {
            self.0 += micro.len();
            runner::train::accumulate(
                params,
                micro,
                |_| 1,
                |mb| Ok((lm_loss(model, &mb.preferred, opts)? - lm_loss(model, &mb.rejected, opts)?)?),
            )
        }
    }
    let lm = lora_model();
    let pairs: Vec<ResponsePair> = (0..4).map(|i| ResponsePair { preferred: ex(i % 2), rejected: ex(1 - i % 2) }).collect();
    let cfg = TrainerConfig { epochs: 2, batch_size: 2, lr: 1e-3, ..Default::default() };
    let mut rule = Contrast(0);
    let summary =
        train_on(&lm.model, lm.model.trainable_params(), &mut EpochBatches::new(&pairs, &cfg), &cfg, &mut rule, &mut |_| {}).unwrap();
    assert_eq!((summary.steps, rule.0), (4, 4));

    /// A rule that sees one batch per stream: forget (ascent) and retain (descent).
    struct ForgetRetain(Vec<usize>);
    impl GradientRule<Vec<TrainBatch>> for ForgetRetain {
        fn gradients(
            &mut self,
            model: &runner::model::CausalLm,
            params: &[(String, candle_core::Var)],
            micro: &[Vec<TrainBatch>],
            opts: &ForwardOptions,
        ) -> ModelResult<(f64, Gradients)> {
            self.0.push(micro[0][0].input_ids.len());
            runner::train::accumulate(params, micro, |_| 1, |mb| Ok((lm_loss(model, &mb[1], opts)? - lm_loss(model, &mb[0], opts)?)?))
        }
    }
    let lm = lora_model();
    let before = values(&lm.model.trainable_params());
    let forget = Stream::new(vec![ex(0)], 1, Order::Sequential, 0);
    let retain = Stream::new(vec![ex(0), ex(1)], 2, Order::Shuffled, 0);
    let mut rule = ForgetRetain(Vec::new());
    let cfg = TrainerConfig { lr: 1e-3, ..Default::default() };
    let summary =
        train_on(&lm.model, lm.model.trainable_params(), &mut StreamSteps::new(vec![forget, retain], 3), &cfg, &mut rule, &mut |_| {})
            .unwrap();
    assert_eq!((summary.steps, rule.0), (3, vec![1, 1, 1]));
    assert_ne!(values(&lm.model.trainable_params()), before);
}

/// Trains `rule` for its whole schedule from a fresh adapter (with dropout), optionally asked to
/// stop after step `stop_after`; returns the outcome, the step log and the final parameters.
fn checkpointed_run(
    dir: &std::path::Path,
    stop_after: Option<usize>,
    rule: &mut dyn runner::train::GradientRule,
) -> (Result<runner::train::TrainSummary, String>, Vec<runner::train::StepLog>, Vec<Vec<f32>>) {
    use runner::train::{train_checkpointed, Checkpointing, EpochBatches, Example, TrainerConfig};
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut lm = model::load(tiny("llama_gqa").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let lora =
        LoraConfig { r: 4, alpha: 8.0, dropout: 0.2, target_modules: vec!["q_proj".into(), "v_proj".into()], layers_to_transform: None };
    add_lora(&mut lm.model, &lora, 3).unwrap();
    let b = batch();
    let examples: Vec<Example> =
        (0..6).map(|i| Example { input_ids: b.input_ids[i % 2].clone(), labels: b.labels[i % 2].clone() }).collect();
    // Two epochs of 3 steps, a warmup, clipping and weight decay: every piece of state matters.
    let cfg = TrainerConfig {
        epochs: 2,
        batch_size: 2,
        lr: 1e-2,
        warmup_ratio: 0.3,
        weight_decay: 0.01,
        schedule: runner::train::ScheduleKind::Linear,
        seed: 5,
        ..Default::default()
    };
    let stop = AtomicBool::new(false);
    let ckpt = Checkpointing { dir: dir.to_path_buf(), every: None, stop: &stop };
    let mut logs = Vec::new();
    let result = train_checkpointed(
        &lm.model,
        lm.model.trainable_params(),
        &mut EpochBatches::new(&examples, &cfg),
        &cfg,
        rule,
        &mut |s| {
            logs.push(s.clone());
            if Some(s.step + 1) == stop_after {
                stop.store(true, Ordering::SeqCst);
            }
        },
        &ckpt,
    );
    (result.map_err(|e| e.to_string()), logs, values(&lm.model.trainable_params()))
}

#[test]
fn a_run_stopped_at_a_step_checkpoint_resumes_to_the_uninterrupted_result() {
    use runner::methods::booster::BoosterRule;
    use runner::train::{Example, Order, PlainSft, Stream};
    let b = batch();
    let harmful = || {
        let items: Vec<Example> =
            (0..3).map(|i| Example { input_ids: b.input_ids[i % 2].clone(), labels: b.labels[i % 2].clone() }).collect();
        BoosterRule { harmful: Stream::new(items, 1, Order::Shuffled, 9), lambda: 5.0, alpha: 0.1, perturb_aware: None }
    };
    type MakeRule<'a> = &'a dyn Fn() -> Box<dyn runner::train::GradientRule>;
    let sft: MakeRule = &|| -> Box<dyn runner::train::GradientRule> { Box::new(PlainSft) };
    let booster: MakeRule = &|| -> Box<dyn runner::train::GradientRule> { Box::new(harmful()) };
    let rules = [("sft", sft), ("booster", booster)];
    for (name, make) in rules {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("checkpoint");
        let (whole, whole_logs, whole_params) = checkpointed_run(&dir, None, make().as_mut());
        assert_eq!(whole.unwrap().steps, 6, "{name}");
        assert!(!dir.exists(), "{name}: a finished run leaves no checkpoint");

        let (stopped, logs, _) = checkpointed_run(&dir, Some(2), make().as_mut());
        let err = stopped.unwrap_err();
        assert!(err.contains("stopped on request after step 2 of 6"), "{name}: {err}");
        assert_eq!(logs.len(), 2);
        assert!(dir.join("state.json").exists() && dir.join("params.safetensors").exists(), "{name}");

        // A fresh model and rule (a new process): resumed at step 2, the result is the
        // uninterrupted one bit for bit, and the step log is whole.
        let (resumed, resumed_logs, resumed_params) = checkpointed_run(&dir, None, make().as_mut());
        let resumed = resumed.unwrap();
        assert_eq!(resumed_logs, whole_logs, "{name}");
        assert_eq!(resumed_params, whole_params, "{name}");
        assert_eq!(resumed.steps, 6);
        assert!(!dir.exists(), "{name}");
    }
}

#[test]
fn a_checkpoint_of_other_settings_is_not_resumed() {
    use runner::train::PlainSft;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checkpoint");
    let (_, _, _) = checkpointed_run(&dir, Some(2), &mut PlainSft);
    // Another training's checkpoint in the same place: a different fingerprint.
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let mut other = state.clone();
    other["fingerprint"] = "0000".into();
    std::fs::write(dir.join("state.json"), other.to_string()).unwrap();
    let (whole, logs, _) = checkpointed_run(&dir, None, &mut PlainSft);
    assert_eq!(whole.unwrap().steps, 6);
    assert_eq!(logs.first().map(|l| l.step), Some(0), "started from step 0");
}
