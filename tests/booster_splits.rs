//! The Booster specs keep their data splits apart, as the official scripts do: the attack's data
//! shares no row and no example (prompt with its answer) with the data the alignment stage (the
//! defense) trains on, and no prompt of the evaluation is trained on. Each spec is planned as
//! `runner plan` plans it; every dataset a stage reads is loaded and intersected. A file that is
//! not on this machine (the full-size spec's inputs) is compared by the row ranges the spec reads
//! of it. (BeaverTails repeats prompts with other answers: one prompt of the shipped 200 rows is in
//! both halves, with a different answer in each, as the official row split allows too.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use runner::data::{self, DataSpec, Items};
use runner::plan::{Plan, PlannedStage};

fn plan(spec: &str) -> Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(spec);
    let loaded = runner::spec::load(&path, &[]).unwrap_or_else(|e| panic!("{spec}: {e}"));
    runner::plan::build_lenient(&loaded, &runner::methods::Registry::new(&path)).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

/// What a stage reads of one dataset: the file, the source rows (`None`: all of a file that is
/// not here), and when the file is here its prompts (instruction and input) and its examples
/// (prompt and answer).
#[derive(Debug)]
struct Read {
    dataset: String,
    file: PathBuf,
    rows: Option<BTreeSet<usize>>,
    prompts: Option<BTreeSet<String>>,
    examples: Option<BTreeSet<String>>,
}

fn prompts_and_examples(items: &Items) -> (BTreeSet<String>, BTreeSet<String>) {
    let pairs: Vec<(String, String)> = match items {
        Items::Instructions(v) => v.iter().map(|i| (format!("{}\n{}", i.instruction, i.input), i.output.clone())).collect(),
        Items::Prompts(v) => v.iter().map(|p| (p.prompt.clone(), String::new())).collect(),
        Items::Labeled(v) => v.iter().map(|l| (l.prompt.clone(), l.response.clone())).collect(),
        other => panic!("no prompts in {:?}", other.kind()),
    };
    (pairs.iter().map(|(p, _)| p.clone()).collect(), pairs.iter().map(|(p, a)| format!("{p}\n{a}")).collect())
}

fn read(stage: &PlannedStage, name: &str) -> Read {
    let table = &stage.config.data[name];
    let spec: DataSpec = toml::Value::Table(table.clone()).try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join(&spec.path);
    match data::load(&spec, root) {
        Ok(d) => {
            let (prompts, examples) = prompts_and_examples(d.items());
            let rows = Some(d.source_rows().iter().copied().collect());
            Read { dataset: name.into(), file, rows, prompts: Some(prompts), examples: Some(examples) }
        }
        Err(_) if !file.exists() => {
            let rows = spec.rows.map(|r| (r.start..r.end.unwrap_or_else(|| panic!("{name}: open row range on a missing file"))).collect());
            Read { dataset: name.into(), file, rows, prompts: None, examples: None }
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

/// The datasets of a stage's `mix` (the attack's data), or all datasets it reads.
fn mix_datasets(stage: &PlannedStage) -> Vec<String> {
    let mix = stage.config.params.get("mix").and_then(|m| m.as_array()).cloned().unwrap_or_default();
    mix.iter().map(|part| part["data"].as_str().unwrap().to_string()).collect()
}

fn all_datasets(stage: &PlannedStage) -> Vec<String> {
    stage.config.data.keys().cloned().collect()
}

/// What two reads must not share: whole examples (training data against training data) or
/// prompts (evaluation against training).
#[derive(Clone, Copy)]
enum Unit {
    Examples,
    Prompts,
}

/// Panics if the two reads share a row of the same file, or an example or prompt.
fn assert_disjoint(spec: &str, what: &str, a: &Read, b: &Read, unit: Unit) {
    if a.file == b.file {
        match (&a.rows, &b.rows) {
            (Some(x), Some(y)) => {
                let shared: Vec<_> = x.intersection(y).take(5).collect();
                assert!(
                    shared.is_empty(),
                    "{spec}: {what}: `{}` and `{}` both read rows {shared:?} of {}",
                    a.dataset,
                    b.dataset,
                    a.file.display()
                );
            }
            _ => panic!("{spec}: {what}: `{}` and `{}` both read all of {}", a.dataset, b.dataset, a.file.display()),
        }
    }
    let (x, y) = match unit {
        Unit::Examples => (&a.examples, &b.examples),
        Unit::Prompts => (&a.prompts, &b.prompts),
    };
    if let (Some(x), Some(y)) = (x, y) {
        let shared: Vec<_> = x.intersection(y).take(3).collect();
        assert!(shared.is_empty(), "{spec}: {what}: `{}` and `{}` share {shared:?}", a.dataset, b.dataset);
    }
}

fn check_spec(spec: &str) -> usize {
    let plan = plan(spec);
    let mut checked = 0;
    for run in &plan.runs {
        let stages: Vec<&PlannedStage> = run.stages.iter().map(|id| plan.stage(id).unwrap()).collect();
        let by_name = |n: &str| *stages.iter().find(|s| s.config.name == n).unwrap_or_else(|| panic!("{spec}: no stage {n}"));
        let (align, attack, eval) = (by_name("align"), by_name("attack"), by_name("eval"));
        // Each dataset a stage reads is loaded once: the attack's mix is a part of what it reads.
        let attack_reads: Vec<Read> = all_datasets(attack).iter().map(|n| read(attack, n)).collect();
        let mix = mix_datasets(attack);
        let attack_data: Vec<&Read> = attack_reads.iter().filter(|r| mix.contains(&r.dataset)).collect();
        assert!(!attack_data.is_empty(), "{spec}: the attack reads a mix");
        let defense: Vec<Read> = all_datasets(align).iter().map(|n| read(align, n)).collect();
        let trained: Vec<&Read> = attack_reads.iter().chain(&defense).collect();
        for a in &attack_data {
            for d in &defense {
                assert_disjoint(spec, "attack vs alignment data", a, d, Unit::Examples);
                checked += 1;
            }
        }
        for n in all_datasets(eval) {
            let e = read(eval, &n);
            for t in &trained {
                assert_disjoint(spec, "evaluation vs training data", &e, t, Unit::Prompts);
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn booster_cpu_spec_keeps_attack_defense_and_test_data_apart() {
    assert!(check_spec("experiments/booster_cpu.toml") > 0);
}

#[test]
fn quickstart_keeps_attack_defense_and_test_data_apart() {
    assert!(check_spec("experiments/quickstart.toml") > 0);
}

#[test]
fn full_size_booster_spec_reads_disjoint_row_ranges() {
    assert!(check_spec("experiments/booster.toml") > 0);
}

#[test]
fn an_overlapping_split_is_caught() {
    // The check itself: the same file and rows read by the attack and the defense.
    let plan = plan("experiments/quickstart.toml");
    let align = plan.stages.iter().find(|s| s.config.name == "align" && s.config.data.len() > 1).expect("a Booster alignment stage");
    let attack = plan.stages.iter().find(|s| s.config.name == "attack").unwrap();
    let regularizer =
        align.config.data.keys().find(|k| align.config.data[*k].get("format").and_then(|f| f.as_str()) == Some("beavertails")).unwrap();
    let mut overlapping = read(align, regularizer);
    let harmful = mix_datasets(attack).into_iter().find(|n| n.starts_with("harmful")).unwrap();
    let attack_read = read(attack, &harmful);
    let first_row = *attack_read.rows.as_ref().unwrap().iter().next().unwrap();
    overlapping.rows.as_mut().unwrap().insert(first_row);
    let caught = std::panic::catch_unwind(|| assert_disjoint("quickstart", "test", &overlapping, &attack_read, Unit::Examples));
    assert!(caught.is_err(), "a shared row is reported");
    // And a prompt the evaluation shares with training data, in another file.
    let eval = plan.stages.iter().find(|s| s.config.name == "eval").unwrap();
    let mut test = read(eval, "harmful_test");
    let trained_prompt = attack_read.prompts.as_ref().unwrap().iter().next().unwrap().clone();
    test.prompts.as_mut().unwrap().insert(trained_prompt);
    let caught = std::panic::catch_unwind(|| assert_disjoint("quickstart", "test", &test, &attack_read, Unit::Prompts));
    assert!(caught.is_err(), "a shared prompt is reported");
}
