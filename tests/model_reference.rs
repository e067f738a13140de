//! The model core against transformers + PEFT: fixtures from `scripts/make_reference.py`
//! (tiny random llama with GQA, qwen2 with q/k/v bias and tied embeddings, gpt-neox, OPT pre-LN
//! with a tied head, OPT post-LN with projected word embeddings stored as `decoder.*` like opt-350m).
//! Tolerances: logits max |diff| <= 1e-4 (f32); losses, log-probs and gradient norms within
//! 1e-5 relative; greedy ids identical.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use runner::model::layers::RecordingHook;
use runner::model::{
    self, generate, load_adapter, score_continuations, score_continuations_shared_prefix, ForwardOptions, GenerationConfig, HookPoint,
    LoadOptions, PaddedBatch, Padding,
};
use runner::train::{lm_loss, AdamW, AdamWConfig, Gradients, TrainBatch};
use serde_json::Value;

const MODELS: [&str; 5] = ["llama_gqa", "qwen2_bias_tied", "gpt_neox", "opt_pre_ln", "opt_post_ln"];
const LOGIT_TOL: f32 = 1e-4;
const REL_TOL: f64 = 1e-5;

fn load(name: &str, trainable: bool) -> model::LoadedModel {
    let opts = LoadOptions { trainable, ..Default::default() };
    model::load(tiny(name).to_str().unwrap(), &opts).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn reference(name: &str) -> Value {
    read_json(&tiny(name).join("reference.json"))
}

fn train_batch(r: &Value) -> TrainBatch {
    let tb = &r["train_batch"];
    let mask = ids2(&tb["attention_mask"]);
    let input = ids2(&tb["input_ids"]);
    let labels: Vec<Vec<i64>> =
        tb["labels"].as_array().unwrap().iter().map(|row| row.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()).collect();
    // Drop the right padding: our batches pad themselves.
    let input_ids = input.iter().zip(&mask).map(|(r, m)| r[..m.iter().sum::<u32>() as usize].to_vec()).collect();
    let labels = labels.iter().zip(&mask).map(|(r, m)| r[..m.iter().sum::<u32>() as usize].to_vec()).collect();
    TrainBatch { input_ids, labels }
}

fn logits_of(m: &model::CausalLm, seq: &[u32], opts: &ForwardOptions) -> Vec<f32> {
    let (ids, pos, valid) = row_tensor(seq);
    flat(&m.forward(&ids, &pos, &valid, opts).unwrap())
}

#[test]
fn logits_match_transformers() {
    for name in MODELS {
        let lm = load(name, false);
        let r = reference(name);
        let seq = ids(&r["seqs"][0]);
        let diff = max_abs_diff(&logits_of(&lm.model, &seq, &ForwardOptions::inference()), &floats(&r["logits"]));
        assert!(diff <= LOGIT_TOL, "{name}: logits max |diff| {diff}");
        // The differentiable path computes the same function.
        let diff = max_abs_diff(&logits_of(&lm.model, &seq, &ForwardOptions::training(None)), &floats(&r["logits"]));
        assert!(diff <= LOGIT_TOL, "{name}: training-path logits max |diff| {diff}");
    }
}

#[test]
fn left_padded_batch_matches_transformers_on_real_tokens() {
    for name in MODELS {
        let lm = load(name, false);
        let r = reference(name);
        let seqs = ids2(&r["seqs"]);
        let batch = PaddedBatch::new(&seqs, 0, Padding::Left, &Device::Cpu).unwrap();
        assert_eq!(batch.positions.to_vec2::<u32>().unwrap(), ids2(&r["left_padded"]["position_ids"]), "{name}: positions");
        let logits = lm.model.forward(&batch.ids, &batch.positions, &batch.valid, &ForwardOptions::inference()).unwrap();
        let ours: Vec<Vec<Vec<f32>>> = logits.to_vec3().unwrap();
        let theirs = &r["left_padded"]["logits"];
        let mask = ids2(&r["left_padded"]["attention_mask"]);
        for b in 0..2 {
            for t in 0..mask[b].len() {
                if mask[b][t] == 1 {
                    let diff = max_abs_diff(&ours[b][t], &floats(&theirs[b][t]));
                    assert!(diff <= LOGIT_TOL, "{name}: row {b} position {t}: max |diff| {diff}");
                }
            }
        }
    }
}

#[test]
fn masked_loss_matches_transformers() {
    for name in MODELS {
        let lm = load(name, false);
        let r = reference(name);
        let loss = lm_loss(&lm.model, &train_batch(&r), &ForwardOptions::training(None)).unwrap();
        assert_rel(loss.to_scalar::<f32>().unwrap() as f64, r["loss"].as_f64().unwrap(), REL_TOL, name);
    }
}

#[test]
fn greedy_generation_matches_transformers_single_and_batched() {
    let cfg = GenerationConfig { max_new_tokens: 10, ..Default::default() };
    for name in MODELS {
        let lm = load(name, false);
        let r = reference(name);
        let single = generate(&lm.model, &[ids(&r["greedy"]["prompt_ids"])], &cfg, 0, None).unwrap();
        assert_eq!(single[0].token_ids, ids(&r["greedy"]["new_ids"]), "{name}: single");
        let batched = generate(&lm.model, &ids2(&r["greedy_batch"]["prompts"]), &cfg, 0, None).unwrap();
        let got: Vec<Vec<u32>> = batched.into_iter().map(|g| g.token_ids).collect();
        assert_eq!(got, ids2(&r["greedy_batch"]["new_ids"]), "{name}: left-padded batch");
    }
}

#[test]
fn continuation_scores_match_and_do_not_depend_on_batch_size() {
    for name in MODELS {
        let lm = load(name, false);
        let r = reference(name);
        let items = r["continuations"].as_array().unwrap();
        let requests: Vec<(Vec<u32>, Vec<u32>)> = items.iter().map(|c| (ids(&c["context"]), ids(&c["continuation"]))).collect();
        let one = score_continuations(&lm.model, &requests, 1, 0).unwrap();
        let all = score_continuations(&lm.model, &requests, 4, 0).unwrap();
        for (i, c) in items.iter().enumerate() {
            assert_rel(one[i].logprob, c["logprob"].as_f64().unwrap(), REL_TOL, &format!("{name}: continuation {i}"));
            assert_eq!(one[i].is_greedy, c["is_greedy"].as_bool().unwrap(), "{name}: continuation {i} is_greedy");
            assert_rel(all[i].logprob, one[i].logprob, 1e-6, &format!("{name}: batch size 4 vs 1, item {i}"));
        }
        assert!(items.iter().any(|c| c["is_greedy"].as_bool().unwrap()), "fixture covers a greedy continuation");
        // One-token continuations of one context share a forward row; the scores stay those of
        // scoring each request alone.
        let ctx = ids(&items[0]["context"]);
        let shared: Vec<(Vec<u32>, Vec<u32>)> =
            vec![(ctx.clone(), vec![5]), (ctx.clone(), vec![9]), (ctx.clone(), vec![5, 9]), (ctx.clone(), vec![5])];
        let together = score_continuations(&lm.model, &shared, 4, 0).unwrap();
        for (i, req) in shared.iter().enumerate() {
            let alone = score_continuations(&lm.model, std::slice::from_ref(req), 1, 0).unwrap();
            assert_rel(together[i].logprob, alone[0].logprob, 1e-6, &format!("{name}: shared input, request {i}"));
            assert_eq!((together[i].is_greedy, together[i].num_tokens), (alone[0].is_greedy, alone[0].num_tokens));
        }
    }
}

/// Contexts that share a long prefix (a meta prompt) score the same with the prefix's keys and
/// values computed once and copied into each batch, and so do several continuations of one
/// context (a question's choices) with the context computed once, for every architecture.
#[test]
fn shared_prefix_scores_equal_plain_scores() {
    for name in MODELS {
        let lm = load(name, false);
        let r = reference(name);
        let items = r["continuations"].as_array().unwrap();
        let meta: Vec<u32> = (0..20).map(|i| 3 + (i * 7) % 50).collect();
        let context = |c: &Value| [meta.clone(), ids(&c["context"])].concat();
        let requests: Vec<(Vec<u32>, Vec<u32>)> = items
            .iter()
            .map(|c| (context(c), ids(&c["continuation"])))
            .chain([(meta[..17].to_vec(), vec![5, 9])]) // a context that is all prefix but one token
            // More choices of the first two contexts, one-token ones among them (one shared row).
            .chain(items.iter().take(2).flat_map(|c| [(context(c), vec![7, 3, 8]), (context(c), vec![7]), (context(c), vec![4])]))
            .collect();
        let plain = score_continuations(&lm.model, &requests, 3, 0).unwrap();
        let cached = score_continuations_shared_prefix(&lm.model, &requests, 3, 0).unwrap();
        for (i, (p, c)) in plain.iter().zip(&cached).enumerate() {
            assert_rel(c.logprob, p.logprob, 1e-5, &format!("{name}: shared prefix, request {i}"));
            assert_eq!((c.is_greedy, c.num_tokens), (p.is_greedy, p.num_tokens), "{name}: request {i}");
        }
    }
}

#[test]
fn full_fine_tuning_gradient_and_adamw_step_match_torch() {
    for name in MODELS {
        let lm = load(name, true);
        let r = reference(name);
        let ft = &r["full_ft"];
        let batch = train_batch(&r);
        let params = lm.model.trainable_params();
        let loss = lm_loss(&lm.model, &batch, &ForwardOptions::training(None)).unwrap();
        let grads = Gradients::of(&loss, &params).unwrap();
        assert_rel(grads.global_norm().unwrap(), ft["grad_global_norm"].as_f64().unwrap(), REL_TOL, &format!("{name}: grad norm"));
        for (n, g) in grads.names.iter().zip(&grads.tensors) {
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0, "{name}: parameter {n} received no gradient");
        }
        let betas = floats(&ft["betas"]);
        let cfg = AdamWConfig {
            beta1: betas[0] as f64,
            beta2: betas[1] as f64,
            eps: ft["eps"].as_f64().unwrap(),
            weight_decay: ft["weight_decay"].as_f64().unwrap(),
        };
        let mut opt = AdamW::new(&params, cfg).unwrap();
        opt.step(&params, &grads, ft["lr"].as_f64().unwrap()).unwrap();
        let after = lm_loss(&lm.model, &batch, &ForwardOptions::training(None)).unwrap().to_scalar::<f32>().unwrap();
        assert_rel(after as f64, ft["loss_after_step"].as_f64().unwrap(), REL_TOL, &format!("{name}: loss after AdamW step"));
    }
}

fn base_weights(m: &model::CausalLm) -> Vec<Vec<f32>> {
    m.linears().iter().map(|l| flat(&l.weight)).collect()
}

#[test]
fn peft_adapter_loads_and_lora_training_matches_peft() {
    for name in MODELS {
        let mut lm = load(name, false);
        let r = reference(name);
        let lr = &r["lora"];
        let cfg = load_adapter(&mut lm.model, &tiny(name).join("adapter_peft")).unwrap();
        assert_eq!(cfg.r, lr["config"]["r"].as_u64().unwrap() as usize);
        let seq = ids(&r["seqs"][0]);
        let diff = max_abs_diff(&logits_of(&lm.model, &seq, &ForwardOptions::inference()), &floats(&lr["logits"]));
        assert!(diff <= LOGIT_TOL, "{name}: LoRA logits max |diff| {diff}");

        let batch = train_batch(&r);
        let params = lm.model.trainable_params();
        assert!(params.iter().all(|(n, _)| n.contains("lora_")), "{name}: only LoRA tensors train");
        let before = base_weights(&lm.model);
        let loss = lm_loss(&lm.model, &batch, &ForwardOptions::training(None)).unwrap();
        assert_rel(loss.to_scalar::<f32>().unwrap() as f64, lr["loss"].as_f64().unwrap(), REL_TOL, &format!("{name}: LoRA loss"));
        let grads = Gradients::of(&loss, &params).unwrap();
        assert_rel(grads.global_norm().unwrap(), lr["grad_global_norm"].as_f64().unwrap(), REL_TOL, &format!("{name}: LoRA grad norm"));
        for (n, g) in grads.names.iter().zip(&grads.tensors) {
            assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{name}: {n} received no gradient");
        }
        let cfg = AdamWConfig { weight_decay: lr["weight_decay"].as_f64().unwrap(), ..Default::default() };
        let mut opt = AdamW::new(&params, cfg).unwrap();
        opt.step(&params, &grads, lr["lr"].as_f64().unwrap()).unwrap();
        let after = lm_loss(&lm.model, &batch, &ForwardOptions::training(None)).unwrap().to_scalar::<f32>().unwrap();
        assert_rel(after as f64, lr["loss_after_step"].as_f64().unwrap(), REL_TOL, &format!("{name}: LoRA loss after step"));
        assert_eq!(base_weights(&lm.model), before, "{name}: LoRA-only training changed base weights");
    }
}

#[test]
fn adapter_save_reload_and_merge_give_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let mut lm = load(name, false);
        let cfg = load_adapter(&mut lm.model, &tiny(name).join("adapter_peft")).unwrap();
        let seq = ids(&reference(name)["seqs"][0]);
        let opts = ForwardOptions::inference();
        let original = logits_of(&lm.model, &seq, &opts);
        let out = dir.path().join(name);
        model::save_adapter(&lm.model, &cfg, name, &out).unwrap();
        let mut again = load(name, false);
        load_adapter(&mut again.model, &out).unwrap();
        assert_eq!(logits_of(&again.model, &seq, &opts), original, "{name}: reloaded adapter");
        // Disabling adapters gives the base model back.
        let base = load(name, false);
        assert_eq!(logits_of(&again.model, &seq, &opts.without_adapters()), logits_of(&base.model, &seq, &opts));
        again.model.merge_adapters().unwrap();
        let diff = max_abs_diff(&logits_of(&again.model, &seq, &opts), &original);
        assert!(diff <= LOGIT_TOL, "{name}: merged logits max |diff| {diff}");
    }
}

#[test]
fn lens_on_the_last_layer_output_gives_the_models_logits() {
    for name in MODELS {
        let lm = load(name, false);
        let seq = ids(&reference(name)["seqs"][0]);
        let (input, pos, valid) = row_tensor(&seq);
        let record = RecordingHook::new(&[HookPoint::LayerOutput]);
        let opts = ForwardOptions::inference();
        let logits = flat(&lm.model.forward(&input, &pos, &valid, &opts.with_hook(&record)).unwrap());
        let layers = record.at(HookPoint::LayerOutput);
        assert_eq!(layers.len(), lm.model.num_layers(), "{name}: one layer output per block");
        let lens = flat(&lm.model.lens_logits(layers.last().unwrap(), &opts).unwrap());
        assert_eq!(lens, logits, "{name}: the output stage after the last block is the model's");
    }
}

#[test]
fn opt_positions_past_the_learned_table_are_an_error() {
    let lm = load("opt_pre_ln", false);
    let max = lm.model.config.max_position_embeddings;
    assert_eq!(max, 64);
    let row = |positions: Vec<u32>| {
        let n = positions.len();
        let input = Tensor::from_vec(vec![5u32; n], (1, n), &Device::Cpu).unwrap();
        let pos = Tensor::from_vec(positions, (1, n), &Device::Cpu).unwrap();
        lm.model.forward(&input, &pos, &[vec![true; n]], &ForwardOptions::inference())
    };
    assert!(row(vec![max as u32 - 2, max as u32 - 1]).is_ok(), "the last learned position is usable");
    let err = row(vec![max as u32 - 1, max as u32]).unwrap_err().to_string();
    assert!(err.contains(&format!("position {max}")) && err.contains("max_position_embeddings"), "{err}");
}

#[test]
fn sharded_bf16_checkpoint_loads_close_to_f32() {
    let r = reference("llama_gqa");
    let seq = ids(&r["seqs"][0]);
    let lm = model::load(tiny("llama_gqa_sharded_bf16").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let ours = logits_of(&lm.model, &seq, &ForwardOptions::inference());
    let theirs = floats(&r["logits"]);
    let scale = theirs.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = max_abs_diff(&ours, &theirs);
    // bf16 keeps 8 bits of mantissa: weights are off by up to 0.4%, logits by a few percent of their range.
    assert!(diff <= 0.05 * scale, "bf16 shards: max |diff| {diff} against a logit scale of {scale}");
    let bf16 =
        model::load(tiny("llama_gqa_sharded_bf16").to_str().unwrap(), &LoadOptions { dtype: DType::BF16, ..Default::default() }).unwrap();
    assert_eq!(bf16.model.dtype, DType::BF16);
}

#[test]
fn gguf_weights_dequantize_and_unpermute_like_transformers() {
    let r = read_json(&tiny("llama_gqa_gguf_reference.json"));
    let lm = model::load(tiny("llama_gqa.gguf").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let diff = max_abs_diff(&logits_of(&lm.model, &ids(&r["seq"]), &ForwardOptions::inference()), &floats(&r["logits"]));
    assert!(diff <= LOGIT_TOL, "GGUF logits max |diff| {diff}");
    let cfg = GenerationConfig { max_new_tokens: 10, ..Default::default() };
    let g = generate(&lm.model, &[ids(&r["greedy"]["prompt_ids"])], &cfg, 0, None).unwrap();
    assert_eq!(g[0].token_ids, ids(&r["greedy"]["new_ids"]));
}

#[test]
fn tiny_tokenizer_reproduces_fixture_ids() {
    let lm = load("llama_gqa", false);
    let r = reference("llama_gqa");
    for (text, expected) in r["seq_texts"].as_array().unwrap().iter().zip(ids2(&r["seqs"])) {
        let got = lm.tokenizer.encode(text.as_str().unwrap(), false).unwrap();
        assert_eq!(&got[..expected.len().min(got.len())], &expected[..], "{text}");
    }
}

#[test]
fn inputs_must_be_valid() {
    let lm = load("llama_gqa", false);
    let err = score_continuations(&lm.model, &[(vec![], vec![1])], 1, 0).unwrap_err().to_string();
    assert!(err.contains("empty context"), "{err}");
    let bad = TrainBatch { input_ids: vec![vec![1, 2]], labels: vec![vec![-100, -100]] };
    assert!(lm_loss(&lm.model, &bad, &ForwardOptions::training(None)).is_err());
    let _ = Tensor::zeros(1, DType::F32, &Device::Cpu);
}
