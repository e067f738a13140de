//! Conversations, prefill and the one generation routine on the tiny fixture model: the routine
//! gives what the model-level loop gives (greedy and sampled, batch by batch), a prefill is part
//! of the prompt, and a strategy's later rounds see its earlier answers.

mod common;

use common::tiny;
use runner::data::{Instruction, Template};
use runner::eval::generation::{
    finetune_accuracy, generate_responses, harmful_score, GenOptions, GenerationSetup, Generator, PromptFormat, Task,
};
use runner::eval::judge::{RefusalJudge, RefusalMatch};
use runner::eval::strategy::{Generate, Outcome, Strategy, Turn};
use runner::eval::MetricSpec;
use runner::model::chat::{ChatFormat, Conversation, NamedTemplate};
use runner::model::{self, GenerationConfig, LoadOptions, LoadedModel, Result};

fn lm() -> LoadedModel {
    model::load(tiny("llama_gqa").to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// Today's loop of the generation metrics and the respond stage, written out against the model API.
fn model_level(lm: &LoadedModel, prompts: &[String], batch: usize, temperature: f64, seed: u64) -> Vec<(String, Vec<u32>)> {
    let tok = &lm.tokenizer;
    let mut stop: Vec<u32> = tok.eos_id().into_iter().collect();
    stop.extend(lm.model.config.eos_token_ids.iter().copied());
    let decode = |ids: &[u32]| tok.decode(ids, true).unwrap_or_default();
    let mut out = Vec::new();
    for (i, chunk) in prompts.chunks(batch).enumerate() {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| tok.encode(p, true).unwrap()).collect();
        let cfg =
            GenerationConfig { max_new_tokens: 8, temperature, seed: seed + i as u64, stop_token_ids: stop.clone(), ..Default::default() };
        for g in model::generate(&lm.model, &ids, &cfg, tok.pad_id(), Some(&decode)).unwrap() {
            out.push((g.text.unwrap().trim().to_string(), g.token_ids));
        }
    }
    out
}

#[test]
fn the_routine_gives_what_the_model_level_loop_gives() {
    let lm = lm();
    let prompts: Vec<String> = ["hello there", "a b c", "the cat sat on"].map(String::from).to_vec();
    for (temperature, seed) in [(0.0, 0), (0.9, 5)] {
        let opts = GenOptions { temperature, seed, ..GenOptions::greedy(8, 2) };
        let ours: Vec<(String, Vec<u32>)> =
            generate_responses(&lm, &prompts, &opts, None).unwrap().into_iter().map(|r| (r.text, r.token_ids)).collect();
        assert_eq!(ours, model_level(&lm, &prompts, 2, temperature, seed), "temperature {temperature}");
        assert!(ours.iter().any(|(t, _)| !t.is_empty()), "the fixture generates text");
    }
    // Sampling: another batch seed gives other tokens (the seeds matter).
    let a = generate_responses(&lm, &prompts, &GenOptions { temperature: 0.9, seed: 5, ..GenOptions::greedy(8, 3) }, None).unwrap();
    let b = generate_responses(&lm, &prompts, &GenOptions { temperature: 0.9, seed: 6, ..GenOptions::greedy(8, 3) }, None).unwrap();
    assert_ne!(a.iter().map(|r| &r.token_ids).collect::<Vec<_>>(), b.iter().map(|r| &r.token_ids).collect::<Vec<_>>());
}

#[test]
fn a_prefill_is_part_of_the_prompt_and_not_of_the_response() {
    let lm = lm();
    let vicuna = NamedTemplate::VicunaV1_1.template("<|endoftext|>", "<|endoftext|>");
    let gen = Generator::new(&lm, ChatFormat::Template(vicuna), GenOptions { trim: false, ..GenOptions::greedy(6, 4) });
    let asked = Conversation::user("What is 2+2?").with_system("Be brief.");
    let with = asked.clone().with_prefill(Some(" The answer is"));
    let r = gen.generate(std::slice::from_ref(&with)).unwrap().remove(0);
    assert_eq!(r.prompt, "Be brief. USER: What is 2+2? ASSISTANT: The answer is");
    assert_eq!(r.prompt, format!("{} The answer is", gen.render(&asked).unwrap()));
    assert_eq!(r.prefill.as_deref(), Some(" The answer is"));
    assert_eq!(r.with_prefill(), format!(" The answer is{}", r.text));
    // The model continued the prompt with the prefill: the same tokens as the plain prompt text.
    let direct = generate_responses(&lm, std::slice::from_ref(&r.prompt), &gen.options, None).unwrap().remove(0);
    assert_eq!((direct.text, direct.token_ids), (r.text.clone(), r.token_ids.clone()));
    let without = gen.generate(&[asked]).unwrap().remove(0);
    assert_ne!(without.token_ids, r.token_ids, "the prefill changes what follows");
}

/// Answer, then ask "Are you sure?" and keep the second answer.
struct AreYouSure;

impl Strategy for AreYouSure {
    fn name(&self) -> &str {
        "are_you_sure"
    }
    fn run(&self, conversations: &[Conversation], generator: &dyn Generate) -> Result<Vec<Outcome>> {
        let first = generator.generate(conversations)?;
        let second: Vec<Conversation> = conversations
            .iter()
            .zip(&first)
            .map(|(c, r)| {
                let mut c = Conversation { prefill: None, ..c.clone() };
                c.push("assistant", &r.with_prefill());
                c.push("user", "Are you sure?");
                c
            })
            .collect();
        let answers = generator.generate(&second)?;
        Ok(answers.into_iter().zip(&first).map(|(response, r)| Outcome { response, turns: vec![Turn::from(r)] }).collect())
    }
}

fn items() -> Vec<Instruction> {
    ["Is the sky blue?", "Name a color.", "Count to three."]
        .map(|q| Instruction { instruction: q.into(), input: String::new(), output: "positive".into(), label: None })
        .to_vec()
}

/// The keys of a record's JSON, sorted.
fn keys<T: serde::Serialize>(record: &T) -> Vec<String> {
    let mut k: Vec<String> = serde_json::to_value(record).unwrap().as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn a_two_round_strategy_sees_its_first_answer() {
    let lm = lm();
    let template = Template::builtin("alpaca").unwrap();
    let setup = GenerationSetup {
        format: PromptFormat::Named(NamedTemplate::VicunaV1_1),
        system: None,
        prefill: None,
        options: GenOptions::greedy(6, 2),
        strategy: Box::new(AreYouSure),
    };
    let (_, records) = finetune_accuracy(&lm, &items(), &template, &setup, Task::Sst2).unwrap();
    for (r, item) in records.iter().zip(items()) {
        assert_eq!(r.turns.len(), 1);
        let first = &r.turns[0];
        assert!(!first.response.is_empty(), "the fixture answers: {first:?}");
        assert_eq!(first.prompt, format!("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: {} ASSISTANT:", item.instruction));
        // The second round's conversation holds the first answer, then the follow-up.
        assert_eq!(r.prompt, format!("{} {}</s>USER: Are you sure? ASSISTANT:", first.prompt, first.response));
        let json = serde_json::to_value(r).unwrap();
        assert_eq!(json["turns"][0]["response"], first.response.as_str());
    }

    // The plain strategy writes today's records: no turns, no prefill.
    let plain = GenerationSetup::plain(PromptFormat::Named(NamedTemplate::VicunaV1_1), 6, 2);
    let (_, records) = finetune_accuracy(&lm, &items(), &template, &plain, Task::Sst2).unwrap();
    assert_eq!(keys(&records[0]), ["correct", "gold", "prompt", "response"]);
    let judge = RefusalJudge { phrases: vec!["I cannot".into()], mode: RefusalMatch::Substring };
    let (_, records) = harmful_score(&lm, &items(), &template, &plain, &judge).unwrap();
    assert_eq!(keys(&records[0]), ["harmful", "incoherent", "prompt", "reason", "response", "score"]);
}

#[test]
fn generate_cli_takes_a_named_template_and_a_prefill() {
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(["generate", "--model", tiny("llama_gqa").to_str().unwrap(), "--prompt", "hi", "--max-new-tokens", "4"])
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = run(&["--template", "dromedary", "--system", "Be brief.", "--prefill", "Sure"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("### hi\n"));
    let bad = run(&["--template", "vicuna"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("\"vicuna\"") && err.contains("\"vicuna_v1.1\""), "{err}");
    let lone = run(&["--system", "x"]);
    assert!(String::from_utf8_lossy(&lone.stderr).contains("--system needs --chat or --template"));
}

#[test]
fn metric_specs_take_prefill_and_strategy_without_changing_old_configs() {
    let spec = |extra: &str| {
        toml::from_str::<MetricSpec>(&format!("metric = \"harmful_score\"\ndata = \"d\"\njudge = {{ kind = \"refusal\" }}\n{extra}"))
    };
    let old = spec("").unwrap();
    // What a stage's identity is hashed from stays as it was for specs without the new keys.
    let json = serde_json::to_value(&old).unwrap();
    assert!(json.get("prefill").is_none() && json.get("strategy").is_none(), "{json}");
    assert_eq!(json["prompt_format"], "template");
    let new = spec("prefill = \"Sure,\"\nprompt_format = \"llama2_chat\"\nstrategy = { kind = \"plain\" }").unwrap();
    assert!(new.check().is_ok());
    assert!(matches!(&new, MetricSpec::HarmfulScore(o) if o.prompt_format == PromptFormat::Named(NamedTemplate::Llama2Chat)));
    assert_eq!(serde_json::to_value(&new).unwrap()["prefill"], "Sure,");
    assert!(spec("strategy = { kind = \"self_check\" }").is_err());
    // A prefill is no option of a log-likelihood metric.
    assert!(toml::from_str::<MetricSpec>("metric = \"hhh\"\ndata = \"d\"\nprefill = \"x\"").is_err());
}

/// The shipped Llama-2 chat template against transformers' rendering of the HF template
/// (tests/fixtures/smollm2/llama2_chat_reference.json): the same text after the first BOS, which
/// ours leaves to the tokenizer.
#[test]
fn llama2_chat_matches_transformers_after_the_first_bos() {
    let r = common::read_json(&common::fixtures().join("smollm2/llama2_chat_reference.json"));
    let (bos, eos) = (r["bos_token"].as_str().unwrap(), r["eos_token"].as_str().unwrap());
    let format = ChatFormat::Template(NamedTemplate::Llama2Chat.template(bos, eos));
    let conversation = |v: &serde_json::Value| Conversation { messages: serde_json::from_value(v.clone()).unwrap(), prefill: None };
    let mut compared = 0;
    for case in r["cases"].as_array().unwrap() {
        let expected = case["add_generation_prompt_true"].as_str().unwrap();
        let ours = format.render(&conversation(&case["messages"])).unwrap();
        match expected.strip_prefix(bos) {
            Some(rest) => {
                assert_eq!(ours, rest, "{}", case["name"]);
                compared += 1;
            }
            None => assert_eq!(ours, expected, "{}", case["name"]),
        }
    }
    assert!(compared >= 8, "{compared} cases compared");
    for case in r["errors"].as_array().unwrap() {
        let result = format.render(&conversation(&case["messages"]));
        // transformers drops a system message after the first turn; ours refuses it.
        let raises = case["raises"].as_bool().unwrap() || case["name"] == "system_user_system";
        assert_eq!(result.is_err(), raises, "{}", case["name"]);
    }
}

#[test]
fn alpaca_prompts_stop_at_the_next_response_marker() {
    // The Booster repo keeps `output.split("### Response:")[1]`: the text up to a second marker.
    let lm = lm();
    let alpaca = Template::builtin("alpaca").unwrap();
    let stops = |format: PromptFormat| GenerationSetup::plain(format, 4, 2).prepare(&lm, &alpaca, &items()).unwrap().1.options.stop_strings;
    assert_eq!(stops(PromptFormat::Template), vec!["### Response:".to_string()]);
    assert_eq!(stops(PromptFormat::Named(NamedTemplate::Alpaca)), vec!["### Response:".to_string()]);
    assert!(stops(PromptFormat::Named(NamedTemplate::VicunaV1_1)).is_empty());
}
