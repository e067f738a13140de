//! Multiple-choice and text metrics against references nobody here wrote: fixtures from
//! `scripts/make_mc_reference.py`, which runs lm-evaluation-harness 0.4.13 itself (its HFLM on
//! the tiny fixture models, its task YAMLs, process_results and aggregations) on the shipped
//! HHH, TruthfulQA and BBQ data; Dromedary's HHH and TruthfulQA MC1 forms and fluency are
//! faithful re-implementations with transformers (see the script).
//!
//! Checked: identical contexts, continuations, choices and gold; log-likelihoods within 1e-4
//! (absolute); identical predictions; aggregate scores equal to lm-eval's; and the same results
//! for two batch sizes.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use runner::data::{load, DataSpec, Dataset, Format, Items, McVariant, MultipleChoice};
use runner::eval::benchmarks::{self, BbqAnswer, BbqChoices, BbqRecord};
use runner::eval::dromedary_truthfulqa::{self, candidate_scores, Ranking};
use runner::eval::judge::JudgeEnv;
use runner::eval::multiple_choice::{score_items, McRecord, ScoreOptions};
use runner::eval::{dromedary, run_metric, text_metrics, MetricSpec};
use runner::methods::Validate;
use runner::model::{self, LoadOptions, LoadedModel};
use serde_json::{json, Value};

/// Log-likelihood tolerance: 1e-4 absolute, plus 2e-7 (under 2 float32 epsilons) of |ll|:
/// lm-eval sums the per-token float32 log-probabilities in float32, so its own value of a sum
/// near -700 (128 tokens of a random tiny model) is only known to a few float32 ulps (6e-5).
fn ll_tol(ll: f64) -> f64 {
    1e-4 + 2e-7 * ll.abs()
}
/// Two batch sizes: results must not depend on them.
const BATCH_SIZES: [usize; 2] = [3, 8];
/// (fixture folder, tiny model): llama_gqa at lm-eval's default max_length (128: long prompts
/// are cut from the left), gpt_neox at max_length 2048 (nothing cut).
const CONFIGS: [(&str, &str); 2] = [("llama_gqa", "llama_gqa"), ("gpt_neox_len2048", "gpt_neox")];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(config: &str, task: &str) -> Value {
    read_json(&fixtures().join("mc").join(config).join(format!("{task}.json")))
}

fn lm(name: &str) -> LoadedModel {
    model::load(tiny(name).to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn dataset(spec: &DataSpec) -> Dataset {
    load(spec, root()).unwrap_or_else(|e| panic!("{e}"))
}

/// The dataset's items that the fixture holds, in fixture order.
fn fixture_items(data: &Dataset, fx: &Value) -> Vec<MultipleChoice> {
    let by_id: HashMap<&str, &MultipleChoice> = data.as_multiple_choice().unwrap().iter().map(|m| (m.id.as_str(), m)).collect();
    fx["items"].as_array().unwrap().iter().map(|it| (*by_id[it["id"].as_str().unwrap()]).clone()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn argmax(v: &[f64]) -> usize {
    runner::eval::multiple_choice::np_argmax(v)
}

/// Compares one item's log-likelihoods; returns the max |diff|.
fn check_lls(what: &str, ours: &[f64], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len(), "{what}: number of choices");
    let diff = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    for (a, b) in ours.iter().zip(theirs) {
        assert!((a - b).abs() <= ll_tol(*b), "{what}: log-likelihoods {ours:?} vs lm-eval {theirs:?} (max |diff| {diff})");
    }
    assert_eq!(argmax(ours), argmax(theirs), "{what}: prediction differs from lm-eval's");
    diff
}

/// Generic lm-eval multiple-choice comparison of records with a fixture (`metrics.acc` is the
/// accuracy, except for truthfulqa_mc2 where it is the MC2 mass).
fn check_records(what: &str, records: &[McRecord], fx: &Value, acc_is_mc2: bool) -> f64 {
    let mut max_diff: f64 = 0.0;
    for (r, it) in records.iter().zip(fx["items"].as_array().unwrap()) {
        let w = format!("{what} {}", r.id);
        assert_eq!(r.id, it["id"].as_str().unwrap());
        assert_eq!(r.context, it["context"].as_str().unwrap(), "{w}: context");
        assert_eq!(r.choices, strings(&it["choices"]), "{w}: choices");
        assert_eq!(r.gold, usizes(&it["gold"]), "{w}: gold");
        let conts: Vec<String> = r.choices.iter().map(|c| format!(" {c}")).collect();
        assert_eq!(conts, strings(&it["continuations"]), "{w}: continuations");
        max_diff = max_diff.max(check_lls(&w, &r.loglikelihoods, &f64s(&it["logliks"])));
        let greedy: Vec<bool> = it["is_greedy"].as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect();
        assert_eq!(r.is_greedy, greedy, "{w}: is_greedy");
        if !acc_is_mc2 {
            assert_eq!(r.acc, it["metrics"]["acc"].as_f64().unwrap(), "{w}: acc");
        }
        if let Some(n) = it["metrics"]["acc_norm"].as_f64() {
            assert_eq!(r.acc_norm, n, "{w}: acc_norm");
        }
    }
    assert_eq!(records.len(), fx["items"].as_array().unwrap().len());
    max_diff
}

fn close(ours: f64, theirs: f64, tol: f64, what: &str) {
    assert!((ours - theirs).abs() <= tol, "{what}: {ours} vs lm-eval {theirs}");
}

fn same_across_batch_sizes(what: &str, a: &[Vec<f64>], b: &[Vec<f64>]) {
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            // float32 rounding of differently shaped batches only
            assert!((p - q).abs() <= 1e-5 + 1e-7 * p.abs(), "{what}: {p} (batch {}) vs {q} (batch {})", BATCH_SIZES[0], BATCH_SIZES[1]);
        }
        assert_eq!(argmax(x), argmax(y), "{what}: prediction depends on the batch size");
    }
}

fn spec(v: Value) -> MetricSpec {
    serde_json::from_value(v).unwrap()
}

#[test]
fn hhh_matches_lm_eval() {
    let data = dataset(&DataSpec::new(Format::Hhh, "data/hhh"));
    for (config, name) in CONFIGS {
        let fx = fixture(config, "hhh");
        let lm = lm(name);
        let items = fixture_items(&data, &fx);
        let max_length = fx["max_length"].as_u64().unwrap() as usize;
        let mut all = Vec::new();
        for bs in BATCH_SIZES {
            let recs =
                score_items(&lm.model, &lm.tokenizer, &items, &benchmarks::hhh_format(), &ScoreOptions::lm_eval(bs, max_length)).unwrap();
            let d = check_records(&format!("{config} hhh bs={bs}"), &recs, &fx, false);
            eprintln!("{config} hhh: {} items, batch {bs}: max |loglik diff| {d:.2e}", recs.len());
            all.push(recs.iter().map(|r| r.loglikelihoods.clone()).collect::<Vec<_>>());
        }
        same_across_batch_sizes(&format!("{config} hhh"), &all[0], &all[1]);
        // The metric end to end: overall and per-category accuracy equal lm-eval's.
        let subset = Dataset::from_items("hhh", Format::Hhh, Items::MultipleChoice(items.clone()));
        let out = run_metric(&spec(json!({"metric": "hhh", "data": "hhh", "max_length": max_length})), &lm, &subset, &JudgeEnv::default())
            .unwrap();
        let agg = &fx["aggregate"];
        for (ours, theirs) in [
            ("hhh_acc", "acc"),
            ("hhh_acc_harmless", "acc_harmless"),
            ("hhh_acc_helpful", "acc_helpful"),
            ("hhh_acc_honest", "acc_honest"),
            ("hhh_acc_other", "acc_other"),
        ] {
            close(out.values[ours], 100.0 * agg[theirs].as_f64().unwrap(), 1e-9, &format!("{config} {ours}"));
            assert!(out.values.contains_key(&format!("{ours}_stderr")), "{ours}_stderr");
        }
        assert_eq!(out.values["hhh_n"], items.len() as f64);
        assert_eq!(out.records.len(), items.len());
    }
}

#[test]
fn truthfulqa_mc1_mc2_match_lm_eval() {
    for (config, name) in CONFIGS {
        let lm = lm(name);
        for (variant, task) in [(McVariant::Mc1, "truthfulqa_mc1"), (McVariant::Mc2, "truthfulqa_mc2")] {
            let fx = fixture(config, task);
            let d = &fx["data"];
            let mut ds = DataSpec::new(Format::TruthfulqaBigbench, d["path"].as_str().unwrap());
            ds.mc = Some(variant);
            ds.limit = Some(d["limit"].as_u64().unwrap() as usize);
            let data = dataset(&ds);
            let max_length = fx["max_length"].as_u64().unwrap();
            let mut all = Vec::new();
            for bs in BATCH_SIZES {
                let out = run_metric(
                    &spec(json!({"metric": "truthfulqa_mc", "data": "tqa", "max_length": max_length, "batch_size": bs})),
                    &lm,
                    &data,
                    &JudgeEnv::default(),
                )
                .unwrap();
                let records: Vec<McRecord> = out
                    .records
                    .iter()
                    .map(|r| {
                        let g = |k: &str| r[k].clone();
                        McRecord {
                            id: r["id"].as_str().unwrap().into(),
                            category: None,
                            context: r["context"].as_str().unwrap().into(),
                            choices: strings(&g("choices")),
                            gold: usizes(&g("gold")),
                            loglikelihoods: f64s(&g("loglikelihoods")),
                            is_greedy: g("is_greedy").as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect(),
                            pred: g("pred").as_u64().unwrap() as usize,
                            pred_norm: g("pred_norm").as_u64().unwrap() as usize,
                            acc: g("acc").as_f64().unwrap(),
                            acc_norm: g("acc_norm").as_f64().unwrap(),
                            mc2: g("mc2").as_f64().unwrap(),
                        }
                    })
                    .collect();
                let diff = check_records(&format!("{config} {task} bs={bs}"), &records, &fx, variant == McVariant::Mc2);
                eprintln!("{config} {task}: {} items, batch {bs}: max |loglik diff| {diff:.2e}", records.len());
                let lmeval = 100.0 * fx["aggregate"]["acc"].as_f64().unwrap();
                match variant {
                    McVariant::Mc1 => close(out.values["truthfulqa_mc1"], lmeval, 1e-9, task),
                    // MC2 is continuous in the log-likelihoods: equal up to their tolerance.
                    McVariant::Mc2 => {
                        close(out.values["truthfulqa_mc2"], lmeval, 1e-3, task);
                        for (r, it) in records.iter().zip(fx["items"].as_array().unwrap()) {
                            close(r.mc2, it["metrics"]["acc"].as_f64().unwrap(), 1e-4, &format!("{task} {} mc2", r.id));
                        }
                    }
                }
                all.push(records.iter().map(|r| r.loglikelihoods.clone()).collect::<Vec<_>>());
            }
            same_across_batch_sizes(&format!("{config} {task}"), &all[0], &all[1]);
        }
    }
}

fn check_bbq(what: &str, records: &[BbqRecord], fx: &Value) -> f64 {
    let mut max_diff: f64 = 0.0;
    for (r, it) in records.iter().zip(fx["items"].as_array().unwrap()) {
        let w = format!("{what} {}", r.id);
        assert_eq!(r.id, it["id"].as_str().unwrap());
        assert_eq!(r.context, it["context"].as_str().unwrap(), "{w}: context");
        assert_eq!(r.choices, strings(&it["choices"]), "{w}: choices");
        let mut gold = usizes(&it["gold"]);
        gold.retain(|&g| g < r.choices.len()); // lm-eval lists one index past the end for "unknown"
        assert_eq!(r.gold, gold, "{w}: gold");
        max_diff = max_diff.max(check_lls(&w, &r.loglikelihoods, &f64s(&it["logliks"])));
        assert_eq!(r.acc, it["metrics"]["acc"].as_f64().unwrap(), "{w}: acc");
        if let Some(nb) = it["metrics"]["n_biased"].as_f64() {
            assert_eq!(nb == 1.0, r.answer == BbqAnswer::Biased, "{w}: biased answer ({:?})", r.answer);
            assert_eq!(it["metrics"]["n_non_unknown"].as_f64().unwrap() == 1.0, r.answer != BbqAnswer::Unknown, "{w}: unknown answer");
        }
        if let Some(b) = it.get("biased") {
            assert_eq!(r.biased_index.into_iter().collect::<Vec<_>>(), usizes(b), "{w}: lm-eval's biased answer");
        }
    }
    assert_eq!(records.len(), fx["items"].as_array().unwrap().len());
    max_diff
}

/// Our bias score (÷100) against lm-eval's aggregation, allowing for lm-eval's one departure
/// from the formula: it returns 0 whenever n_biased = 0.
fn check_bias(ours: f64, agg: &Value, key: &str, cond: &str, sfx: &str, acc_ambig: f64) {
    let theirs = agg[key].as_f64().unwrap();
    let nb = agg[format!("n_biased_{cond}{sfx}")].as_f64().unwrap();
    let nu = agg[format!("n_non_unknown_{cond}{sfx}")].as_f64().unwrap();
    let expected = if nb == 0.0 && nu > 0.0 {
        // Parrish et al.: 2 * 0 / n - 1 = -1 (scaled by 1 - acc for ambiguous items).
        if cond == "amb" {
            -(1.0 - acc_ambig)
        } else {
            -1.0
        }
    } else {
        theirs
    };
    close(ours / 100.0, expected, 1e-9, key);
}

#[test]
fn bbq_matches_lm_eval() {
    let data = dataset(&DataSpec::new(Format::Bbq, "data/bbq"));
    for (config, name) in CONFIGS {
        let lm = lm(name);
        for (choices, task) in [(BbqChoices::LmEval, "bbq"), (BbqChoices::Item, "bbq_item")] {
            let fx = fixture(config, task);
            let items = fixture_items(&data, &fx);
            let max_length = fx["max_length"].as_u64().unwrap() as usize;
            let mut all = Vec::new();
            let mut values = Default::default();
            // Scoring BBQ is the slow part of this file: two batch sizes for one configuration.
            let batch_sizes: &[usize] = if config == "llama_gqa" && choices == BbqChoices::LmEval { &BATCH_SIZES } else { &[8] };
            for &bs in batch_sizes {
                let recs = benchmarks::score_bbq(&lm, &items, choices, &ScoreOptions::lm_eval(bs, max_length)).unwrap();
                let d = check_bbq(&format!("{config} {task} bs={bs}"), &recs, &fx);
                eprintln!("{config} {task}: {} items, batch {bs}: max |loglik diff| {d:.2e}", recs.len());
                all.push(recs.iter().map(|r| r.loglikelihoods.clone()).collect::<Vec<_>>());
                values = std::collections::BTreeMap::new();
                benchmarks::bbq_values(&recs, &mut values, "bbq");
            }
            if all.len() == 2 {
                same_across_batch_sizes(&format!("{config} {task}"), &all[0], &all[1]);
            }
            let agg = &fx["aggregate"];
            close(values["bbq_acc"], 100.0 * agg["acc"].as_f64().unwrap(), 1e-9, "acc");
            for sfx in ["", "_Age", "_Nationality", "_Religion"] {
                let acc_amb = values[&format!("bbq_acc_ambig{sfx}")] / 100.0;
                if sfx.is_empty() || task == "bbq_item" {
                    close(acc_amb, agg[format!("accuracy_amb{sfx}")].as_f64().unwrap(), 1e-9, "accuracy_amb");
                    close(
                        values[&format!("bbq_acc_disambig{sfx}")] / 100.0,
                        agg[format!("accuracy_disamb{sfx}")].as_f64().unwrap(),
                        1e-9,
                        "accuracy_disamb",
                    );
                }
                check_bias(values[&format!("bbq_bias_disambig{sfx}")], agg, &format!("disamb_bias_score{sfx}"), "disamb", sfx, acc_amb);
                check_bias(values[&format!("bbq_bias_ambig{sfx}")], agg, &format!("amb_bias_score{sfx}"), "amb", sfx, acc_amb);
                assert!(values.contains_key(&format!("bbq_bias_ambig{sfx}_stderr")));
            }
        }
    }
}

#[test]
fn hhh_dromedary_form_matches_reimplementation() {
    let data = dataset(&DataSpec::new(Format::Hhh, "data/hhh"));
    for name in ["llama_gqa", "gpt_neox"] {
        let fx = read_json(&fixtures().join("mc").join(name).join("hhh_dromedary.json"));
        let lm = lm(name);
        let items = fixture_items(&data, &fx);
        let meta_name = fx["meta_prompt"].as_str().unwrap();
        let meta = dromedary::MetaPrompt::load(Some(meta_name)).unwrap();
        let max_seq_len = fx["max_seq_len"].as_u64().unwrap() as usize;
        let mut all = Vec::new();
        for bs in BATCH_SIZES {
            let recs = dromedary::score_hhh(&lm.model, &lm.tokenizer, &items, &meta, max_seq_len, bs).unwrap();
            let mut max_diff: f64 = 0.0;
            for (r, it) in recs.iter().zip(fx["items"].as_array().unwrap()) {
                let w = format!("{name} dromedary bs={bs} {}", r.id);
                assert_eq!(r.prompts, strings(&it["prompts"]), "{w}: prompts");
                assert_eq!(r.truncated, it["truncated"].as_bool().unwrap(), "{w}: truncation");
                let theirs = f64s(&it["logprobs"]);
                let diff = r.logprobs.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(r.logprobs.iter().zip(&theirs).all(|(a, b)| (a - b).abs() <= ll_tol(*b)), "{w}: {:?} vs {theirs:?}", r.logprobs);
                max_diff = max_diff.max(diff);
                assert_eq!(r.pred, it["pred"].as_u64().unwrap() as usize, "{w}: prediction");
                assert_eq!(r.acc, it["acc"].as_f64().unwrap(), "{w}: grade");
            }
            eprintln!("{name} dromedary: {} items, batch {bs}: max |logp diff| {max_diff:.2e}", recs.len());
            all.push(recs.iter().map(|r| r.scores.clone()).collect::<Vec<_>>());
        }
        same_across_batch_sizes(&format!("{name} dromedary"), &all[0], &all[1]);
        let subset = Dataset::from_items("hhh", Format::Hhh, Items::MultipleChoice(items.clone()));
        let m = spec(json!({"metric": "hhh", "data": "hhh", "form": "dromedary", "meta_prompt": meta_name, "max_length": max_seq_len}));
        m.check().unwrap();
        let out = run_metric(&m, &lm, &subset, &JudgeEnv::default()).unwrap();
        close(out.values["hhh_acc"], 100.0 * fx["aggregate"]["acc"].as_f64().unwrap(), 1e-9, "dromedary acc");
        for c in ["harmless", "helpful", "honest", "other"] {
            close(out.values[&format!("hhh_acc_{c}")], 100.0 * fx["aggregate"][format!("acc_{c}")].as_f64().unwrap(), 1e-9, c);
        }
        assert!(!out.values.contains_key("hhh_acc_norm"));
    }
}

/// The TruthfulQA MC1 items of a Dromedary fixture.
fn truthfulqa_dromedary_data(fx: &Value, mc: McVariant) -> Dataset {
    let d = &fx["data"];
    let mut ds = DataSpec::new(Format::TruthfulqaBigbench, d["path"].as_str().unwrap());
    ds.mc = Some(mc);
    ds.limit = Some(d["limit"].as_u64().unwrap() as usize);
    dataset(&ds)
}

const RANKINGS: [(Ranking, &str); 2] = [(Ranking::TrueMinusFalse, "true_minus_false"), (Ranking::TrueOnly, "true_only")];

/// (meta prompt, questions checked, batch sizes, the (ranking, bug) run through `run_metric`):
/// Watson's prompt is ~3500 tokens of the tiny BPE, so it gets 2 questions and small batches.
const TRUTHFULQA_DROMEDARY_CASES: [(&str, usize, [usize; 2], Option<(&str, bool)>); 3] = [
    ("dromedary_verbose", 6, BATCH_SIZES, Some(("true_only", true))),
    ("none", 6, BATCH_SIZES, Some(("true_minus_false", false))),
    ("watson", 2, [1, 2], None),
];

#[test]
fn truthfulqa_dromedary_form_matches_reimplementation() {
    let lm = lm("llama_gqa");
    for (meta_name, n, batch_sizes, metric_run) in TRUTHFULQA_DROMEDARY_CASES {
        let fx = read_json(&fixtures().join("mc/llama_gqa").join(format!("truthfulqa_dromedary_{meta_name}.json")));
        let data = truthfulqa_dromedary_data(&fx, McVariant::Mc1);
        let items = &data.as_multiple_choice().unwrap()[..n];
        let meta = dromedary::MetaPrompt::load(Some(meta_name)).unwrap();
        let mut all = Vec::new();
        for bs in batch_sizes {
            let recs =
                dromedary_truthfulqa::score_truthfulqa(&lm.model, &lm.tokenizer, items, &meta, Ranking::TrueMinusFalse, false, bs).unwrap();
            assert_eq!(recs.len(), n);
            let mut max_diff: f64 = 0.0;
            for (r, it) in recs.iter().zip(fx["items"].as_array().unwrap()) {
                let w = format!("{meta_name} bs={bs} {}", r.id);
                assert_eq!(r.id, it["id"].as_str().unwrap());
                assert_eq!(r.prompts, strings(&it["prompts"]), "{w}: prompts");
                let labels: Vec<usize> = usizes(&it["labels"]).iter().enumerate().filter(|(_, &l)| l == 1).map(|(k, _)| k).collect();
                assert_eq!(r.gold, labels, "{w}: gold");
                let theirs = f64s(&it["logprobs"]);
                assert_eq!(r.logprobs.len(), theirs.len(), "{w}");
                for (a, b) in r.logprobs.iter().zip(&theirs) {
                    assert!((a - b).abs() <= ll_tol(*b), "{w}: {:?} vs {theirs:?}", r.logprobs);
                    max_diff = max_diff.max((a - b).abs());
                }
                let want = &it["results"]["true_minus_false"];
                assert_eq!(r.scores.len(), f64s(&want["scores"]).len(), "{w}: every candidate is ranked");
                assert_eq!(r.pred, want["pred"].as_u64().unwrap() as usize, "{w}: prediction");
                assert_eq!(r.acc, want["acc"].as_f64().unwrap(), "{w}: MC1");
                // The other rankings and the official half-range loop, from the same log-probabilities.
                for (ranking, key) in RANKINGS {
                    for bug in [false, true] {
                        let want = &it["results"][format!("{key}{}", if bug { "_bug" } else { "" })];
                        let scores = candidate_scores(&r.logprobs, ranking, bug);
                        assert_eq!(scores.len(), f64s(&want["scores"]).len(), "{w} {key} bug={bug}: ranked candidates");
                        let pred = dromedary::tie_break_argmax(&scores);
                        assert_eq!(pred, want["pred"].as_u64().unwrap() as usize, "{w} {key} bug={bug}: prediction");
                        assert_eq!(f64::from(u8::from(r.gold.contains(&pred))), want["acc"].as_f64().unwrap(), "{w} {key} bug={bug}");
                    }
                }
            }
            eprintln!("truthfulqa dromedary {meta_name}: {} items, batch {bs}: max |logp diff| {max_diff:.2e}", recs.len());
            all.push(recs.iter().map(|r| r.logprobs.clone()).collect::<Vec<_>>());
        }
        for (x, y) in all[0].iter().zip(&all[1]) {
            for (p, q) in x.iter().zip(y) {
                assert!((p - q).abs() <= 1e-5 + 1e-7 * p.abs(), "{meta_name}: {p} vs {q}: depends on the batch size");
            }
        }
        // The metric end to end (the fixture's aggregate over all its questions).
        if let Some((key, bug)) = metric_run {
            let m = spec(json!({"metric": "truthfulqa_mc", "data": "tqa", "form": "dromedary", "meta_prompt": meta_name,
                                "ranking": key, "half_range_bug": bug}));
            m.check().unwrap();
            let out = run_metric(&m, &lm, &data, &JudgeEnv::default()).unwrap();
            let want = fx["aggregate"][format!("{key}{}", if bug { "_bug" } else { "" })].as_f64().unwrap();
            close(out.values["truthfulqa_mc1"], 100.0 * want, 1e-9, &format!("{meta_name} {key} bug={bug}: MC1"));
            assert_eq!(out.values["truthfulqa_n"], data.len() as f64);
            assert!(!out.values.contains_key("truthfulqa_mc2"));
            assert_eq!(out.records[0]["scores"].as_array().unwrap().len(), if bug { 3 } else { 5 }, "5 candidates");
        }
    }
}

#[test]
fn truthfulqa_dromedary_form_refuses_mc2_data() {
    let fx = read_json(&fixtures().join("mc/llama_gqa/truthfulqa_dromedary_none.json"));
    let mut ds = DataSpec::new(Format::TruthfulqaBigbench, "data/truthfulqa/bigbench_questions_first100.json");
    ds.mc = Some(McVariant::Mc2);
    ds.limit = Some(2);
    let data = dataset(&ds);
    let m = spec(json!({"metric": "truthfulqa_mc", "data": "tqa", "form": "dromedary", "meta_prompt": "none"}));
    let err = run_metric(&m, &lm("llama_gqa"), &data, &JudgeEnv::default()).err().expect("mc2 is refused").to_string();
    assert!(err.contains("form = \"dromedary\"") && err.contains("mc = \"mc2\"") && err.contains("MC1 only"), "{err}");
    // The same questions as MC1 are scored.
    let data = truthfulqa_dromedary_data(&fx, McVariant::Mc1);
    assert!(run_metric(&m, &lm("llama_gqa"), &data, &JudgeEnv::default()).is_ok());
}

/// Through the binary: lm-eval's and Dromedary's forms side by side in one eval stage; the
/// Dromedary records are the reference's.
#[test]
fn truthfulqa_dromedary_form_runs_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let spec_path = root().join("tests/specs/tiny_truthfulqa_dromedary.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["run", spec_path.to_str().unwrap(), "--results", results.to_str().unwrap(), "--devices", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dirs = stage_dirs(&results, "eval");
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let metrics = read_json(&dirs[0].join("metrics.json"));
    let lines = read_jsonl(&dirs[0].join("outputs.jsonl"));
    for (prefix, meta_name, key) in [("tqa_verbose", "dromedary_verbose", "true_minus_false"), ("tqa_watson", "watson", "true_only_bug")] {
        let fx = read_json(&fixtures().join("mc/llama_gqa").join(format!("truthfulqa_dromedary_{meta_name}.json")));
        let records: Vec<&Value> = lines
            .iter()
            .filter(|l| {
                l["record"]["prompts"][0]
                    .as_str()
                    .is_some_and(|p| p.starts_with(if meta_name == "watson" { "# Watson" } else { "# Dromedary" }))
            })
            .map(|l| &l["record"])
            .collect();
        assert_eq!(records.len(), 3, "{prefix}: one record per question");
        assert_eq!(metrics[format!("{prefix}_n")].as_f64(), Some(3.0));
        let mut hits = 0.0;
        for (r, it) in records.iter().zip(fx["items"].as_array().unwrap()) {
            assert_eq!(strings(&r["prompts"]), strings(&it["prompts"]), "{prefix} {}", r["id"]);
            let theirs = f64s(&it["logprobs"]);
            assert!(f64s(&r["logprobs"]).iter().zip(&theirs).all(|(a, b)| (a - b).abs() <= ll_tol(*b)), "{prefix} {}", r["id"]);
            assert_eq!(r["pred"], it["results"][key]["pred"], "{prefix} {}", r["id"]);
            hits += r["acc"].as_f64().unwrap();
        }
        close(metrics[format!("{prefix}_mc1")].as_f64().unwrap(), 100.0 * hits / 3.0, 1e-9, prefix);
    }
    assert!(metrics["truthfulqa_mc1"].is_number() && metrics["truthfulqa_n"] == 3.0);
    assert_eq!(lines.iter().filter(|l| l["record"]["context"].is_string()).count(), 3, "lm-eval records");
}

#[test]
fn fluency_and_diversity_match_reference() {
    let fx = read_json(&fixtures().join("mc").join("fluency.json"));
    let lm = lm(fx["model"].as_str().unwrap());
    let texts = strings(&fx["texts"]);
    for bs in BATCH_SIZES {
        let lp = text_metrics::text_logprobs(&lm.model, &lm.tokenizer, &texts, 128, bs).unwrap();
        for (i, (&(s, n), want)) in lp.iter().zip(f64s(&fx["nll"])).enumerate() {
            assert_eq!(n as u64, fx["tokens"][i].as_u64().unwrap(), "text {i}: tokens");
            close(-s / n as f64, want, 1e-5, &format!("text {i}: mean NLL"));
        }
    }
    close(text_metrics::distinct_n(&texts, 1).unwrap(), fx["distinct_1"].as_f64().unwrap(), 1e-12, "distinct-1");
    close(text_metrics::distinct_n(&texts, 2).unwrap(), fx["distinct_2"].as_f64().unwrap(), 1e-12, "distinct-2");
}

#[test]
fn diversity_fluency_metric_generates_and_scores() {
    let mut ds = DataSpec::new(Format::Advbench, "data/advbench/harmful_behaviors.csv");
    ds.limit = Some(3);
    let data = dataset(&ds);
    let lm = lm("llama_gqa");
    let reference = tiny("gpt_neox").to_str().unwrap().to_string();
    let m = spec(json!({"metric": "diversity_fluency", "data": "adv", "max_new_tokens": 6, "reference_model": reference, "batch_size": 2}));
    m.check().unwrap();
    let out = run_metric(&m, &lm, &data, &JudgeEnv::default()).unwrap();
    assert_eq!(out.records.len(), 3);
    let v = &out.values;
    for k in ["text_distinct_1", "text_distinct_2"] {
        assert!((0.0..=1.0).contains(&v[k]), "{k} = {}", v[k]);
    }
    close(v["text_fluency_ppl"], v["text_fluency_nll"].exp(), 1e-9, "ppl = exp(nll)");
    assert!(v.contains_key("text_fluency_nll_stderr") && v.contains_key("text_distinct_2_stderr"));
    // The pooled NLL is that of the recorded responses under the reference model.
    let rlm = model::load(&reference, &LoadOptions::default()).unwrap();
    let responses: Vec<String> = out.records.iter().map(|r| r["response"].as_str().unwrap().to_string()).collect();
    let lp = text_metrics::text_logprobs(&rlm.model, &rlm.tokenizer, &responses, 2048, 1).unwrap();
    close(v["text_fluency_nll"], text_metrics::pooled_nll(&lp, 0..3).unwrap(), 1e-9, "pooled NLL");
}

#[test]
fn metric_options_are_checked() {
    let ok = [
        json!({"metric": "hhh", "data": "d"}),
        json!({"metric": "hhh", "data": "d", "form": "dromedary", "meta_prompt": "none", "max_length": 512}),
        json!({"metric": "bbq", "data": "d", "choices": "item", "max_length": 256}),
        json!({"metric": "truthfulqa_mc", "data": "d"}),
        json!({"metric": "truthfulqa_mc", "data": "d", "form": "lm_eval", "max_length": 512}),
        json!({"metric": "truthfulqa_mc", "data": "d", "form": "dromedary", "meta_prompt": "watson", "ranking": "true_only", "half_range_bug": true}),
        json!({"metric": "truthfulqa_mc", "data": "d", "form": "dromedary", "ranking": "true_minus_false", "half_range_bug": false}),
        json!({"metric": "hhh", "data": "d", "form": "dromedary", "meta_prompt": "watson"}),
        json!({"metric": "multiple_choice", "data": "d", "prompt": "{question}", "delimiter": ""}),
        json!({"metric": "diversity_fluency", "data": "d", "reference_model": "x"}),
    ];
    for v in ok {
        spec(v.clone()).check().unwrap_or_else(|e| panic!("{v}: {e:?}"));
    }
    // Options of another metric are unknown keys of this one's options type.
    let foreign = [
        (json!({"metric": "bbq", "data": "d", "form": "dromedary"}), "form"),
        (json!({"metric": "hhh", "data": "d", "choices": "item"}), "choices"),
        (json!({"metric": "truthfulqa_mc", "data": "d", "prompt": "{question}"}), "prompt"),
        (json!({"metric": "truthfulqa_mc", "data": "d", "form": "dromedary", "choices": "item"}), "choices"),
        (json!({"metric": "bbq", "data": "d", "delimiter": ""}), "delimiter"),
        (json!({"metric": "finetune_accuracy", "data": "d", "task": "sst2", "max_length": 200}), "max_length"),
        (json!({"metric": "hhh", "data": "d", "reference_model": "x"}), "reference_model"),
        (json!({"metric": "hhh", "data": "d", "prefill": "x"}), "prefill"),
    ];
    for (v, key) in foreign {
        let err = serde_json::from_value::<MetricSpec>(v.clone()).expect_err(&v.to_string()).to_string();
        assert!(err.contains(&format!("unknown field `{key}`")), "{v}: {err}");
    }
    // Values and combinations are checked by `check`.
    let bad = [
        (json!({"metric": "hhh", "data": "d", "meta_prompt": "none"}), "meta_prompt"),
        (json!({"metric": "hhh", "data": "d", "form": "dromedary", "meta_prompt": "/no/such/file"}), "meta_prompt"),
        (json!({"metric": "hhh", "data": "d", "form": "dromedary", "max_length": 200}), "max_length"),
        (json!({"metric": "bbq", "data": "d", "max_length": 0}), "max_length"),
        (json!({"metric": "truthfulqa_mc", "data": "d", "meta_prompt": "watson"}), "meta_prompt"),
        (json!({"metric": "truthfulqa_mc", "data": "d", "form": "lm_eval", "ranking": "true_only"}), "ranking"),
        (json!({"metric": "truthfulqa_mc", "data": "d", "half_range_bug": true}), "half_range_bug"),
        (json!({"metric": "truthfulqa_mc", "data": "d", "form": "dromedary", "max_length": 2048}), "max_length"),
        (json!({"metric": "truthfulqa_mc", "data": "d", "form": "dromedary", "meta_prompt": "watsonn"}), "meta_prompt"),
    ];
    for (v, key) in bad {
        let err = spec(v.clone()).check().expect_err(&v.to_string());
        assert_eq!(err.0, key, "{v}: {err:?}");
    }
    // Required options are required by the type.
    assert!(serde_json::from_value::<MetricSpec>(json!({"metric": "harmful_score", "data": "d"})).is_err());
    assert!(serde_json::from_value::<MetricSpec>(json!({"metric": "finetune_accuracy", "data": "d"})).is_err());
    assert!(serde_json::from_value::<MetricSpec>(json!({"metric": "hhh", "data": "d", "form": "bad"})).is_err());
    for v in [
        json!({"metric": "truthfulqa_mc", "data": "d", "form": "mc2"}),
        json!({"metric": "truthfulqa_mc", "data": "d", "ranking": "p_true"}),
    ] {
        let err = serde_json::from_value::<MetricSpec>(v.clone()).expect_err(&v.to_string()).to_string();
        assert!(err.contains("unknown variant"), "{v}: {err}");
    }
    // The new keys serialize only when set: existing stage identities do not change.
    let plain = spec(json!({"metric": "truthfulqa_mc", "data": "d"}));
    assert_eq!(serde_json::to_value(&plain).unwrap(), json!({"metric": "truthfulqa_mc", "data": "d", "batch_size": 8}));
}

#[test]
fn eval_stage_toml_takes_the_new_metrics() {
    let text = r#"
metrics = [
  { metric = "multiple_choice", data = "harmless", name = "hhh" },
  { metric = "truthfulqa_mc", data = "tqa", max_length = 2048 },
  { metric = "hhh", data = "hhh", form = "dromedary", meta_prompt = "dromedary_verbose", name = "hhh_dromedary" },
  { metric = "bbq", data = "bbq", choices = "item", batch_size = 16 },
  { metric = "diversity_fluency", data = "prompts", max_new_tokens = 64, reference_model = "tests/fixtures/tiny/gpt_neox" },
]
"#;
    let p: runner::methods::evaluate::EvalParams = toml::from_str(text).unwrap();
    p.validate("eval").unwrap();
    assert!(matches!(&p.metrics[2], MetricSpec::Hhh(o) if o.form == Some(runner::eval::HhhForm::Dromedary)));
    let table: toml::Table =
        toml::from_str(r#"metrics = [{ metric = "bbq", data = "bbq" }, { metric = "bbq", data = "bbq", form = "dromedary" }]"#).unwrap();
    let e = runner::spec::params::parse::<runner::methods::evaluate::EvalParams>(&table).unwrap_err();
    assert!(e.key.starts_with("metrics.1") && e.to_string().contains("form"), "{e}");
    let table: toml::Table = toml::from_str(r#"metrics = [{ metric = "hhh", data = "hhh", meta_prompt = "none" }]"#).unwrap();
    let p = runner::spec::params::parse::<runner::methods::evaluate::EvalParams>(&table).unwrap();
    assert_eq!(p.validate("eval").unwrap_err().key, "metrics.0.meta_prompt");
}
