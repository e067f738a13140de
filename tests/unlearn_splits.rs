//! The unlearning specs keep their evaluation data apart from what the train stage reads: the
//! unseen harmful prompts and the normal prompts (similarity to the original) are trained on by
//! no row of the sweep, and the "unlearned" prompts are the ones the forget stream reaches in its
//! steps (the paper's seen set). Each spec is planned as `runner plan` plans it and every dataset
//! a stage reads is loaded.

use std::collections::BTreeSet;

mod common;

use common::{dataset_prompts as prompts, plan_spec as plan, stage_dataset as load};
use runner::plan::{Plan, PlannedStage};

fn stages<'a>(plan: &'a Plan, name: &str) -> Vec<&'a PlannedStage> {
    plan.stages.iter().filter(|s| s.config.name == name).collect()
}

#[test]
fn the_cpu_spec_evaluates_on_prompts_it_does_not_train_on() {
    let plan = plan("experiments/unlearning_cpu.toml");
    let mut trained = BTreeSet::new();
    let mut forget_order: Option<Vec<String>> = None;
    let mut max_steps_batch = 0;
    for stage in stages(&plan, "train") {
        for name in stage.config.data.keys() {
            trained.extend(prompts(&load(stage, name)));
        }
        if stage.config.method.as_deref() == Some("unlearn") {
            let forget = stage.config.params["data"].as_str().unwrap();
            forget_order = Some(prompts(&load(stage, forget)));
            let p = &stage.config.params;
            max_steps_batch = (p["max_steps"].as_integer().unwrap() * p["batch_size"].as_integer().unwrap()) as usize;
        }
    }
    let eval = stages(&plan, "eval");
    assert!(!eval.is_empty() && !trained.is_empty());
    for stage in eval {
        for name in ["unseen", "unseen_pairs", "normal"] {
            let held_out = prompts(&load(stage, name));
            assert!(!held_out.is_empty());
            let shared: Vec<&String> = held_out.iter().filter(|p| trained.contains(*p)).collect();
            assert!(shared.is_empty(), "`{name}` prompts that a train stage reads: {shared:?}");
        }
        // The unlearned prompts are those the forget stream reaches (file order).
        let reached: BTreeSet<&String> = forget_order.as_ref().unwrap().iter().take(max_steps_batch).collect();
        for name in ["seen", "seen_pairs"] {
            let seen = prompts(&load(stage, name));
            assert!(!seen.is_empty() && seen.iter().all(|p| reached.contains(p)), "every `{name}` prompt is one the forget steps reach");
        }
    }
}
