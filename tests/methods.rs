//! Booster and Vaccine on the tiny fixture model: the combined Booster gradient, the exact
//! restore after the simulated harmful step, and the norm of Vaccine's perturbation.

mod common;

use common::*;
use runner::methods::booster::{BoosterGradients, BoosterRule};
use runner::methods::vaccine::VaccineRule;
use runner::model::{self, add_lora, ForwardOptions, LoadOptions, LoraConfig};
use runner::train::{Example, GradientRule, Gradients, Order, PairBatch, Stream, TrainBatch};

fn lora_model() -> model::LoadedModel {
    let mut lm = model::load(tiny("llama_gqa").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let cfg =
        LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: vec!["q_proj".into(), "v_proj".into()], layers_to_transform: None };
    add_lora(&mut lm.model, &cfg, 3).unwrap();
    // Non-zero B so that every adapter tensor has a gradient.
    for (name, var) in lm.model.trainable_params() {
        if name.contains("lora_B") {
            let t = (var.as_tensor().ones_like().unwrap() * 0.05).unwrap();
            var.set(&t).unwrap();
        }
    }
    lm
}

fn seqs() -> Vec<Vec<u32>> {
    ids2(&read_json(&tiny("llama_gqa").join("reference.json"))["seqs"])
}

fn harmful_examples() -> Vec<Example> {
    seqs().into_iter().map(|s| Example { labels: s.iter().map(|&t| t as i64).collect(), input_ids: s }).collect()
}

fn align_batch() -> TrainBatch {
    TrainBatch::with_prompt_masked(seqs(), &[2, 2])
}

fn values(lm: &model::LoadedModel) -> Vec<Vec<f32>> {
    lm.model.trainable_params().iter().map(|(_, v)| flat(v.as_tensor())).collect()
}

#[test]
fn booster_combines_three_gradients_and_restores_the_weights_exactly() {
    let lm = lora_model();
    let params = lm.model.trainable_params();
    let opts = ForwardOptions::training(None);
    let rule =
        || BoosterRule { harmful: Stream::new(harmful_examples(), 10, Order::Shuffled, 5), lambda: 5.0, alpha: 0.1, perturb_aware: None };
    let before = values(&lm);
    let parts = rule().gradients_parts(&lm.model, &params, &[align_batch()], &opts).unwrap();
    assert_eq!(values(&lm), before, "weights after the restore are bit-identical");
    assert!(parts.harmful.global_norm().unwrap() > 0.0 && parts.harmful_perturbed.global_norm().unwrap() > 0.0);
    // The perturbed point really differs: the two harmful gradients are not equal.
    assert_ne!(flat(&parts.harmful.tensors[1]), flat(&parts.harmful_perturbed.tensors[1]));
    let (_, combined) = rule().gradients(&lm.model, &params, &[align_batch()], &opts).unwrap();
    assert_eq!(values(&lm), before);
    assert_booster_step(&params, &combined, &parts.align, &parts);
}

/// The step Booster takes: `align + 5 * (g_h - g_h')`, per tensor within 1e-6.
fn assert_booster_step(params: &[(String, candle_core::Var)], combined: &Gradients, align: &Gradients, parts: &BoosterGradients) {
    for i in 0..params.len() {
        let expected: Vec<f32> = flat(&align.tensors[i])
            .iter()
            .zip(flat(&parts.harmful.tensors[i]))
            .zip(flat(&parts.harmful_perturbed.tensors[i]))
            .map(|((f, h), hp)| f + 5.0 * (h - hp))
            .collect();
        let diff = max_abs_diff(&flat(&combined.tensors[i]), &expected);
        assert!(diff < 1e-6, "{}: combined gradient differs by {diff}", params[i].0);
    }
}

#[test]
fn booster_with_vaccine_takes_the_perturbed_alignment_gradient() {
    // perturb_aware (Booster + Vaccine): g = vaccine(g_f) + lambda * (g_h - g_h'), and the step's
    // loss is the perturbed alignment loss.
    let lm = lora_model();
    let params = lm.model.trainable_params();
    let opts = ForwardOptions::training(None);
    let harmful = || Stream::new(harmful_examples(), 10, Order::Shuffled, 5);
    let mut aware = BoosterRule { harmful: harmful(), lambda: 5.0, alpha: 0.1, perturb_aware: Some(VaccineRule { rho: 2.0 }) };
    let before = values(&lm);
    let parts = aware.gradients_parts(&lm.model, &params, &[align_batch()], &opts).unwrap();
    assert_eq!(values(&lm), before, "weights after the restore are bit-identical");
    let (vaccine_loss, vaccine) = VaccineRule { rho: 2.0 }.gradients(&lm.model, &params, &[align_batch()], &opts).unwrap();
    assert!((parts.align_loss - vaccine_loss).abs() < 1e-6, "{} vs {vaccine_loss}", parts.align_loss);
    let plain = BoosterRule { harmful: harmful(), lambda: 5.0, alpha: 0.1, perturb_aware: None }
        .gradients_parts(&lm.model, &params, &[align_batch()], &opts)
        .unwrap();
    assert!(parts.align_loss > plain.align_loss, "the perturbation raises the alignment loss");
    for i in 0..params.len() {
        let diff = max_abs_diff(&flat(&parts.align.tensors[i]), &flat(&vaccine.tensors[i]));
        assert!(diff < 1e-6, "{}: alignment gradient differs from Vaccine's by {diff}", params[i].0);
        // The harmful part does not depend on the alignment gradient.
        let diff = max_abs_diff(&flat(&parts.harmful_perturbed.tensors[i]), &flat(&plain.harmful_perturbed.tensors[i]));
        assert!(diff < 1e-6, "{}: perturbed harmful gradient differs by {diff}", params[i].0);
    }
    assert_ne!(flat(&parts.align.tensors[1]), flat(&plain.align.tensors[1]));
    let (loss, combined) = BoosterRule { harmful: harmful(), lambda: 5.0, alpha: 0.1, perturb_aware: Some(VaccineRule { rho: 2.0 }) }
        .gradients(&lm.model, &params, &[align_batch()], &opts)
        .unwrap();
    assert!((loss - vaccine_loss).abs() < 1e-6);
    assert_booster_step(&params, &combined, &vaccine, &parts);
}

#[test]
fn booster_harmful_loader_cycles_through_every_example() {
    let mut loader = Stream::new(harmful_examples(), 1, Order::Shuffled, 9);
    let mut seen: Vec<Vec<u32>> = (0..4).map(|_| loader.next_batch().input_ids[0].clone()).collect();
    seen.sort();
    let mut expected = seqs();
    expected.extend(seqs());
    expected.sort();
    assert_eq!(seen, expected, "two passes see every example twice");
}

#[test]
fn vaccine_perturbation_has_norm_rho_and_changes_the_gradient() {
    let lm = lora_model();
    let params = lm.model.trainable_params();
    let opts = ForwardOptions::training(None);
    let rule = VaccineRule { rho: 2.0 };
    let eps = rule.perturbation(&lm.model, &align_batch(), &opts).unwrap();
    assert_eq!(eps.len(), lm.model.num_layers());
    let norm: f32 = eps.iter().map(|e| e.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).sum::<f32>().sqrt();
    assert!((norm - 2.0).abs() < 1e-4, "perturbation norm {norm}");
    let (loss, g) = VaccineRule { rho: 2.0 }.gradients(&lm.model, &params, &[align_batch()], &opts).unwrap();
    let (plain_loss, plain) = runner::train::PlainSft.gradients(&lm.model, &params, &[align_batch()], &opts).unwrap();
    assert!(loss > plain_loss, "the adversarial perturbation raises the loss");
    assert_ne!(flat(&g.tensors[0]), flat(&plain.tensors[0]));
}

#[test]
fn repnoise_loss_combines_its_three_terms_and_reaches_every_adapter() {
    use runner::methods::repnoise::RepNoiseRule;
    let lm = lora_model();
    let params = lm.model.trainable_params();
    let opts = ForwardOptions::training(None);
    let s = seqs();
    // The same two-token prompt with a "safe" and a "harmful" continuation.
    let safe =
        Example { input_ids: s[0].clone(), labels: s[0].iter().enumerate().map(|(i, &t)| if i < 2 { -100 } else { t as i64 }).collect() };
    let mut bad_ids = s[0][..2].to_vec();
    bad_ids.extend_from_slice(&s[1][2..]);
    let bad = Example { labels: bad_ids.iter().map(|&t| t as i64).collect(), input_ids: bad_ids };
    let batch = TrainBatch { input_ids: vec![safe.input_ids.clone()], labels: vec![safe.labels.clone()] };
    let plain = runner::train::lm_loss(&lm.model, &batch, &opts).unwrap().to_scalar::<f32>().unwrap();
    let harmful = vec![bad.input_ids.clone()];
    let mut only_ce = RepNoiseRule::new(0.0, 0.0, 1);
    let l0 = only_ce.loss(&lm.model, &batch, &harmful, &opts).unwrap().to_scalar::<f32>().unwrap();
    assert!((l0 - plain).abs() < 1e-5, "with alpha = beta = 0 it is the harmless loss");
    let mut rule = RepNoiseRule::new(0.1, 0.001, 1);
    let l = rule.loss(&lm.model, &batch, &harmful, &opts).unwrap().to_scalar::<f32>().unwrap();
    assert!(l.is_finite() && l < l0, "the -alpha*log(harmful CE + 1) term lowers the loss: {l} vs {l0}");
    let pair = PairBatch { preferred: batch, rejected: TrainBatch { input_ids: harmful, labels: vec![bad.labels.clone()] } };
    let (_, g) = rule.gradients(&lm.model, &params, &[pair], &opts).unwrap();
    for (n, t) in g.names.iter().zip(&g.tensors) {
        assert!(t.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{n} has no gradient");
    }
}

/// Harmful examples that share no prompt with the alignment batch (the sequences reversed).
fn unpaired_harmful() -> Vec<Example> {
    seqs()
        .into_iter()
        .map(|mut s| {
            s.reverse();
            Example { labels: s.iter().map(|&t| t as i64).collect(), input_ids: s }
        })
        .collect()
}

#[test]
fn repnoise_independent_mode_draws_a_fresh_harmful_batch_per_micro_batch() {
    use runner::methods::repnoise::RepNoiseRule;
    let lm = lora_model();
    let params = lm.model.trainable_params();
    let opts = ForwardOptions::training(None);
    let batch = align_batch();
    let mut rule = RepNoiseRule::independent(unpaired_harmful(), 2, 0.1, 0.001, 4);
    let (loss, g) = rule.gradients(&lm.model, &params, &[batch.clone(), batch.clone()], &opts).unwrap();
    assert!(loss.is_finite() && g.global_norm().unwrap() > 0.0);
    // One micro-batch: the loss of the batch its stream drew, computed directly.
    let (first, _) =
        RepNoiseRule::independent(unpaired_harmful(), 2, 0.1, 0.001, 4).gradients(&lm.model, &params, &[batch.clone()], &opts).unwrap();
    let mut same_stream = RepNoiseRule::independent(unpaired_harmful(), 2, 0.1, 0.001, 4);
    let drawn = same_stream.harmful.as_mut().unwrap().next_batch().input_ids;
    let direct = RepNoiseRule::new(0.1, 0.001, 4).loss(&lm.model, &batch, &drawn, &opts).unwrap().to_scalar::<f32>().unwrap();
    assert!((first as f32 - direct).abs() < 1e-5, "{first} vs {direct}");
}

#[test]
fn repnoise_loss_and_mmd_equal_the_torch_reference() {
    // tests/fixtures/tiny/repnoise_reference.json, from scripts/make_repnoise_reference.py
    // (transformers on the same fixture model). Tolerance: 1e-5 relative (f32 sums).
    use runner::methods::repnoise::{mmd, RepNoiseRule};
    let r = read_json(&tiny("repnoise_reference.json"));
    let lm = model::load(tiny("llama_gqa").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let opts = ForwardOptions::training(None);
    let harmless = TrainBatch {
        input_ids: vec![ids(&r["harmless_ids"])],
        labels: vec![r["harmless_labels"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()],
    };
    let harmful = vec![ids(&r["harmful_ids"])];
    let alpha = r["alpha"].as_f64().unwrap();
    let mut rule = RepNoiseRule::new(alpha, r["beta"].as_f64().unwrap(), 1);
    let loss = rule.loss(&lm.model, &harmless, &harmful, &opts).unwrap().to_scalar::<f32>().unwrap() as f64;
    let expected = r["loss"].as_f64().unwrap();
    assert!((loss - expected).abs() <= 1e-5 * expected.abs().max(1.0), "RepNoise loss {loss} vs torch {expected}");
    // The alpha term really enters: without it the loss is the harmless CE alone.
    let plain = RepNoiseRule::new(0.0, 0.0, 1).loss(&lm.model, &harmless, &harmful, &opts).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((plain - r["harmless_ce"].as_f64().unwrap()).abs() < 1e-5 && (plain - loss).abs() > 1e-3);

    let matrix = |v: &serde_json::Value| {
        let rows: Vec<Vec<f32>> = v.as_array().unwrap().iter().map(floats).collect();
        let (n, d) = (rows.len(), rows[0].len());
        candle_core::Tensor::from_vec(rows.concat(), (n, d), &candle_core::Device::Cpu).unwrap()
    };
    let got = mmd(&matrix(&r["mmd_x"]), &matrix(&r["mmd_y"])).unwrap().to_scalar::<f32>().unwrap() as f64;
    let want = r["mmd"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-5 * want.abs().max(1e-3), "MMD {got} vs torch {want}");
}
