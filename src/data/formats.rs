//! One reader per built-in format: records ([`J`] objects) to typed items.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use super::error::DataError;
use super::json::{Rec, Res, J};
use super::read::Records;
use super::records::*;
use super::spec::{DataSpec, Format, Kind, McVariant, Prefer};
use super::template::{AGNEWS_INSTRUCTION, SST2_INSTRUCTION};
use super::Items;

/// GSM8K: Booster's `ANSWER_PROMPT`, which replaces `####` in the answers (gsm8k/pred_eval.py).
pub const GSM8K_ANSWER_PROMPT: &str = "The final answer is: ";

/// The "unknown" answers of BBQ: every string tagged `unknown` in nyu-mll/BBQ `answer_info`
/// (they also cover all of BIG-bench bbq_lite_json).
pub const BBQ_UNKNOWN_ANSWERS: &[&str] = &[
    "Can't answer",
    "Can't be determined",
    "Cannot answer",
    "Cannot be determined",
    "Not answerable",
    "Not enough info",
    "Not enough information",
    "Not known",
    "Undetermined",
    "Unknown",
];

pub const SST2_LABELS: &[&str] = &["negative", "positive"];
pub const AGNEWS_LABELS: &[&str] = &["World", "Sports", "Business", "Sci/Tech"];

/// The records of one file.
pub(crate) struct Parsed {
    pub path: PathBuf,
    /// Name of the directory holding the file (HHH category, BBQ-lite subtask).
    pub parent: Option<String>,
    pub records: Records,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

impl<'a> Rec<'a> {
    fn nonempty_str(&self, path: &str) -> Res<&'a str> {
        let s = self.str(path)?;
        if s.trim().is_empty() {
            return Err(self.err(path, "empty"));
        }
        Ok(s)
    }

    /// Category labels: a string, a list of strings, or a dict of name → bool (BeaverTails).
    fn categories(&self, path: &str) -> Res<Vec<String>> {
        match self.get(path) {
            None => Ok(Vec::new()),
            Some(J::Str(s)) if s.trim().is_empty() => Ok(Vec::new()),
            Some(J::Str(s)) => Ok(vec![s.clone()]),
            Some(J::Arr(_)) => self.strings(path),
            Some(J::Obj(kv)) => {
                let mut out = Vec::new();
                for (k, v) in kv {
                    if self.as_bool(v, &format!("{path}.{k}"))? {
                        out.push(k.clone());
                    }
                }
                Ok(out)
            }
            Some(other) => Err(self.err(path, format!("expected a string, a list or a dict of booleans, found {}", other.type_name()))),
        }
    }

    /// Ordered `{choice: score}` (BIG-bench `target_scores`, TruthfulQA `mc*_targets`): choices
    /// and the indices with a positive score.
    fn scored_choices(&self, path: &str) -> Res<(Vec<String>, Vec<usize>)> {
        let kv = self.obj(path)?;
        if kv.is_empty() {
            return Err(self.err(path, "no choices"));
        }
        let mut choices = Vec::with_capacity(kv.len());
        let mut gold = Vec::new();
        for (i, (k, v)) in kv.iter().enumerate() {
            let positive = match v {
                J::Int(x) => *x > 0,
                J::Float(x) => *x > 0.0,
                J::Bool(b) => *b,
                other => return Err(self.err(&format!("{path}.{k}"), format!("expected a number, found {}", other.type_name()))),
            };
            choices.push(k.clone());
            if positive {
                gold.push(i);
            }
        }
        if gold.is_empty() {
            return Err(self.err(path, "no choice has a positive score"));
        }
        Ok((choices, gold))
    }

    /// HF layout `{choices: [...], labels: [...]}`.
    fn choices_labels(&self, path: &str) -> Res<(Vec<String>, Vec<usize>)> {
        let choices = self.strings(&format!("{path}.choices"))?;
        let labels = self.arr(&format!("{path}.labels"))?;
        if labels.len() != choices.len() {
            return Err(self.err(&format!("{path}.labels"), format!("{} labels for {} choices", labels.len(), choices.len())));
        }
        let mut gold = Vec::new();
        for (i, l) in labels.iter().enumerate() {
            if self.as_int(l, &format!("{path}.labels[{i}]"))? > 0 {
                gold.push(i);
            }
        }
        if gold.is_empty() {
            return Err(self.err(&format!("{path}.labels"), "no choice is labeled correct"));
        }
        Ok((choices, gold))
    }

    /// A class label: a name from `names` (ASCII case-insensitive) or an index.
    fn class_label(&self, path: &str, names: &[&str]) -> Res<usize> {
        let v = self.req(path)?;
        if let J::Str(s) = v {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s.trim())) {
                return Ok(i);
            }
        }
        let i = self.as_int(v, path).map_err(|_| self.err(path, format!("expected one of {names:?} or 0..{}", names.len())))?;
        if i < 0 || i as usize >= names.len() {
            return Err(self.err(path, format!("label {i} is not in 0..{}", names.len())));
        }
        Ok(i as usize)
    }
}

/// Reads every record of every file into the format's native items.
pub(crate) fn parse_items(spec: &DataSpec, files: &[Parsed]) -> Res<Items> {
    let f = spec.format;
    let mc = spec.mc.unwrap_or_default();
    let mut out = match f.native_kind() {
        Kind::Instructions => Items::Instructions(Vec::new()),
        Kind::Preferences => Items::Preferences(Vec::new()),
        Kind::Labeled => Items::Labeled(Vec::new()),
        Kind::Prompts => Items::Prompts(Vec::new()),
        Kind::MultipleChoice => Items::MultipleChoice(Vec::new()),
        Kind::Classification => Items::Classification(Vec::new()),
    };
    for file in files {
        for (index, (row, val)) in file.records.iter().enumerate() {
            let rec = Rec { file: &file.path, row: *row, val };
            rec.object()?;
            match &mut out {
                Items::Instructions(v) => v.push(match f {
                    Format::BeavertailsRefusal => beavertails_refusal(rec)?,
                    Format::RefusalSft => refusal_sft(rec)?,
                    Format::Gsm8k => gsm8k(rec)?,
                    _ => instruction(rec)?,
                }),
                Items::Preferences(v) => v.push(match f {
                    Format::PkuSaferlhf => pku(rec, spec.prefer.unwrap_or_default())?,
                    _ => pku_pair(rec)?,
                }),
                Items::Labeled(v) => v.push(labeled(rec)?),
                Items::Prompts(v) => v.push(prompt(rec, f)?),
                Items::MultipleChoice(v) => v.push(match f {
                    Format::Bbq => bbq(rec)?,
                    Format::BbqLite => bbq_lite(rec, file.parent.as_deref(), index)?,
                    Format::Hhh => hhh(rec, file.parent.as_deref(), index)?,
                    Format::TruthfulqaCsv => truthfulqa_csv(rec, mc, index)?,
                    Format::TruthfulqaMc => truthfulqa_mc(rec, mc, index)?,
                    _ => truthfulqa_bigbench(rec, mc, index)?,
                }),
                Items::Classification(v) => v.push(match f {
                    Format::Sst2 => classification(rec, &["sentence", "text"], SST2_LABELS)?,
                    _ => classification(rec, &["text"], AGNEWS_LABELS)?,
                }),
            }
        }
    }
    Ok(out)
}

fn pku(rec: Rec, prefer: Prefer) -> Res<Preference> {
    let prompt = rec.nonempty_str("prompt")?.to_owned();
    let responses = [rec.str("response_0")?, rec.str("response_1")?];
    let safe = [rec.opt_bool("is_response_0_safe")?, rec.opt_bool("is_response_1_safe")?];
    let key = match prefer {
        Prefer::Safer => "safer_response_id",
        Prefer::Better => "better_response_id",
    };
    let c = match rec.int(key)? {
        0 => 0,
        1 => 1,
        other => return Err(rec.err(key, format!("expected 0 or 1, found {other}"))),
    };
    Ok(Preference {
        prompt,
        chosen: responses[c].to_owned(),
        rejected: responses[1 - c].to_owned(),
        chosen_safe: safe[c],
        rejected_safe: safe[1 - c],
    })
}

fn pku_pair(rec: Rec) -> Res<Preference> {
    let prompt = rec.nonempty_str("prompt")?.to_owned();
    let (chosen, rejected) = if rec.has("response") {
        let arr = rec.arr("response")?;
        if arr.len() != 2 {
            return Err(rec.err("response", format!("expected [safe, unsafe] (2 strings), found {}", arr.len())));
        }
        (rec.as_str(&arr[0], "response[0]")?, rec.as_str(&arr[1], "response[1]")?)
    } else {
        (rec.str("chosen")?, rec.str("rejected")?)
    };
    Ok(Preference {
        prompt,
        chosen: chosen.to_owned(),
        rejected: rejected.to_owned(),
        chosen_safe: Some(rec.opt_bool("chosen_safe")?.unwrap_or(true)),
        rejected_safe: Some(rec.opt_bool("rejected_safe")?.unwrap_or(false)),
    })
}

fn labeled(rec: Rec) -> Res<LabeledResponse> {
    Ok(LabeledResponse {
        prompt: rec.nonempty_str("prompt")?.to_owned(),
        response: rec.str("response")?.to_owned(),
        is_safe: rec.bool("is_safe")?,
        categories: if rec.has("category") { rec.categories("category")? } else { rec.categories("categories")? },
    })
}

/// Booster utils.py "BeaverTails_safe": `split('\nAnswer: ')`, question = part 0 with every
/// `"Question: "` removed, answer = part 1.
fn beavertails_refusal(rec: Rec) -> Res<Instruction> {
    let refusal = rec.str("refusal")?;
    let parts: Vec<&str> = refusal.split("\nAnswer: ").collect();
    if parts.len() < 2 {
        return Err(rec.err("refusal", "expected \"Question: ...\\nAnswer: ...\""));
    }
    Ok(Instruction {
        instruction: parts[0].replace("Question: ", ""),
        input: String::new(),
        output: parts[1].to_owned(),
        label: Some("safe".into()),
    })
}

/// The instruction inside a Llama-2 chat turn `[INST] ... [/INST]` (a prompt without the wrapper
/// is taken as is); the response loses the space that follows `[/INST]` in Llama-2's format.
fn refusal_sft(rec: Rec) -> Res<Instruction> {
    let raw = rec.nonempty_str("prompt")?.trim();
    let instruction = raw.strip_prefix("[INST]").and_then(|s| s.strip_suffix("[/INST]")).unwrap_or(raw).trim();
    if instruction.is_empty() {
        return Err(rec.err("prompt", "no instruction inside [INST] ... [/INST]"));
    }
    Ok(Instruction {
        instruction: instruction.to_owned(),
        input: String::new(),
        output: rec.str("response")?.trim_start().to_owned(),
        label: Some("safe".into()),
    })
}

fn gsm8k(rec: Rec) -> Res<Instruction> {
    let (instruction, input, output) = if rec.has("question") {
        // Booster gsm8k: QUESTION_PROMPT = "", answer with "####" → ANSWER_PROMPT.
        (rec.nonempty_str("question")?.to_owned(), String::new(), rec.str("answer")?.replace("####", GSM8K_ANSWER_PROMPT))
    } else {
        (rec.nonempty_str("instruction")?.to_owned(), rec.opt_str("input")?.unwrap_or("").to_owned(), rec.str("output")?.to_owned())
    };
    let label = output.rsplit_once(GSM8K_ANSWER_PROMPT.trim_end()).map(|(_, a)| a.trim().to_owned());
    Ok(Instruction { instruction, input, output, label: nonempty(label) })
}

fn instruction(rec: Rec) -> Res<Instruction> {
    let label = match rec.opt_text("label")? {
        Some(l) => Some(l),
        None => rec.opt_text("flag")?,
    };
    Ok(Instruction {
        instruction: rec.nonempty_str("instruction")?.to_owned(),
        input: rec.opt_str("input")?.unwrap_or("").to_owned(),
        output: rec.str("output")?.to_owned(),
        label,
    })
}

fn prompt(rec: Rec, f: Format) -> Res<Prompt> {
    let mut p = Prompt { prompt: String::new(), category: None, target: None, context: None, id: None };
    match f {
        Format::BeavertailsEval => {
            p.prompt = rec.nonempty_str("prompt")?.to_owned();
            p.category = nonempty(rec.opt_text("category")?);
        }
        Format::Advbench => {
            p.prompt = rec.nonempty_str("goal")?.to_owned();
            p.target = nonempty(rec.opt_text("target")?);
        }
        Format::Harmbench => {
            p.prompt = rec.nonempty_str("Behavior")?.to_owned();
            p.category = nonempty(rec.opt_text("SemanticCategory")?);
            p.context = nonempty(rec.opt_text("ContextString")?);
            p.id = nonempty(rec.opt_text("BehaviorID")?);
        }
        _ => {
            const KEYS: [&str; 4] = ["prompt", "instruction", "goal", "question"];
            let Some(key) = KEYS.iter().find(|k| rec.has(k)) else {
                return Err(rec.err("prompt", "missing (also looked for `instruction`, `goal`, `question`)"));
            };
            p.prompt = rec.nonempty_str(key)?.to_owned();
            p.category = nonempty(rec.opt_text("category")?);
            p.target = nonempty(rec.opt_text("target")?);
            p.context = nonempty(rec.opt_text("context")?);
            p.id = nonempty(rec.opt_text("id")?);
        }
    }
    Ok(p)
}

fn bbq(rec: Rec) -> Res<MultipleChoice> {
    let category = rec.text("category")?;
    let example_id = rec.text("example_id")?;
    let context = rec.str("context")?.to_owned();
    let question = rec.nonempty_str("question")?.to_owned();
    let choices = (0..3).map(|k| rec.str(&format!("ans{k}")).map(str::to_owned)).collect::<Res<Vec<_>>>()?;
    let label = rec.int("label")?;
    if !(0..3).contains(&label) {
        return Err(rec.err("label", format!("expected 0, 1 or 2, found {label}")));
    }
    let cc = rec.str("context_condition")?;
    if !matches!(cc, "ambig" | "disambig") {
        return Err(rec.err("context_condition", format!("expected \"ambig\" or \"disambig\", found {cc:?}")));
    }
    let qp = rec.str("question_polarity")?;
    if !matches!(qp, "neg" | "nonneg") {
        return Err(rec.err("question_polarity", format!("expected \"neg\" or \"nonneg\", found {qp:?}")));
    }
    let mut names = Vec::new();
    let mut tags = Vec::new();
    for k in 0..3 {
        let path = format!("answer_info.ans{k}");
        let info = rec.arr(&path)?;
        if info.len() < 2 {
            return Err(rec.err(&path, "expected [name, group tag]"));
        }
        names.push(rec.as_str(&info[0], &format!("{path}[0]"))?.to_owned());
        tags.push(rec.as_str(&info[1], &format!("{path}[1]"))?.to_owned());
    }
    let Some(unknown) = tags.iter().position(|t| t == "unknown") else {
        return Err(rec.err("answer_info", "no answer is tagged \"unknown\""));
    };
    let groups = match rec.get("additional_metadata.stereotyped_groups") {
        Some(_) => rec.strings("additional_metadata.stereotyped_groups")?,
        None => Vec::new(),
    };
    // The bias target: the non-unknown answer whose group tag or name is a stereotyped group.
    let lower: HashSet<String> = groups.iter().map(|g| g.to_lowercase()).collect();
    let targets: Vec<usize> = (0..3)
        .filter(|&k| k != unknown)
        .filter(|&k| lower.contains(&tags[k].to_lowercase()) || lower.contains(&names[k].to_lowercase()))
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("context_condition".into(), cc.to_owned());
    meta.insert("question_polarity".into(), qp.to_owned());
    meta.insert("unknown_index".into(), unknown.to_string());
    if let [t] = targets[..] {
        meta.insert("target_index".into(), t.to_string());
    }
    meta.insert("example_id".into(), example_id.clone());
    if let Some(qi) = rec.opt_text("question_index")? {
        meta.insert("question_index".into(), qi);
    }
    meta.insert("stereotyped_groups".into(), groups.join("|"));
    meta.insert("answer_groups".into(), tags.join("|"));
    if let Some(sub) = rec.opt_text("additional_metadata.subcategory")? {
        meta.insert("subcategory".into(), sub);
    }
    Ok(MultipleChoice {
        id: format!("{category}/{example_id}"),
        context,
        question,
        choices,
        gold: vec![label as usize],
        category: Some(category),
        meta,
    })
}

fn bbq_lite(rec: Rec, subtask: Option<&str>, index: usize) -> Res<MultipleChoice> {
    let question = rec.nonempty_str("input")?.to_owned();
    let (choices, gold) = rec.scored_choices("target_scores")?;
    let cc = rec.str("comment.context_condition")?;
    let qp = rec.str("comment.question_polarity")?;
    let category = rec.text("comment.category")?;
    let example_id = rec.opt_text("comment.example_id")?.unwrap_or_else(|| index.to_string());
    let mut meta = BTreeMap::new();
    meta.insert("context_condition".into(), cc.to_owned());
    meta.insert("question_polarity".into(), qp.to_owned());
    if let Some(u) = choices.iter().position(|c| BBQ_UNKNOWN_ANSWERS.contains(&c.as_str())) {
        meta.insert("unknown_index".into(), u.to_string());
    }
    meta.insert("example_id".into(), example_id.clone());
    if let Some(qi) = rec.opt_text("comment.question_index")? {
        meta.insert("question_index".into(), qi);
    }
    let subtask = subtask.unwrap_or("bbq_lite");
    meta.insert("subtask".into(), subtask.to_owned());
    Ok(MultipleChoice {
        id: format!("{subtask}/{example_id}"),
        context: String::new(),
        question,
        choices,
        gold,
        category: Some(category),
        meta,
    })
}

fn hhh(rec: Rec, category: Option<&str>, index: usize) -> Res<MultipleChoice> {
    let question = rec.nonempty_str("input")?.to_owned();
    let (choices, gold) = if rec.has("target_scores") { rec.scored_choices("target_scores")? } else { rec.choices_labels("targets")? };
    let category = category.map(str::to_owned);
    Ok(MultipleChoice {
        id: format!("{}/{index}", category.as_deref().unwrap_or("hhh")),
        context: String::new(),
        question,
        choices,
        gold,
        category,
        meta: BTreeMap::new(),
    })
}

fn split_answers(s: &str) -> Vec<String> {
    s.split(';').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect()
}

/// MC1: the best answer (gold) then the false ones; MC2: the true answers (gold) then the false.
fn truthful_choices(
    rec: Rec,
    mc: McVariant,
    best: String,
    correct: Vec<String>,
    incorrect: Vec<String>,
    fields: (&str, &str),
) -> Res<(Vec<String>, Vec<usize>)> {
    if incorrect.is_empty() {
        return Err(rec.err(fields.1, "no answers"));
    }
    Ok(match mc {
        McVariant::Mc1 => {
            let mut c = vec![best];
            c.extend(incorrect);
            (c, vec![0])
        }
        McVariant::Mc2 => {
            if correct.is_empty() {
                return Err(rec.err(fields.0, "no answers"));
            }
            let n = correct.len();
            let mut c = correct;
            c.extend(incorrect);
            (c, (0..n).collect())
        }
    })
}

fn truthfulqa_csv(rec: Rec, mc: McVariant, index: usize) -> Res<MultipleChoice> {
    let question = rec.nonempty_str("Question")?.to_owned();
    let best = rec.nonempty_str("Best Answer")?.trim().to_owned();
    let correct = split_answers(rec.str("Correct Answers")?);
    let incorrect = split_answers(rec.str("Incorrect Answers")?);
    let (choices, gold) = truthful_choices(rec, mc, best.clone(), correct, incorrect, ("Correct Answers", "Incorrect Answers"))?;
    let mut meta = BTreeMap::new();
    meta.insert("best_answer".into(), best);
    for (k, field) in [("type", "Type"), ("source", "Source")] {
        if let Some(v) = nonempty(rec.opt_text(field)?) {
            meta.insert(k.into(), v);
        }
    }
    Ok(MultipleChoice {
        id: index.to_string(),
        context: String::new(),
        question,
        choices,
        gold,
        category: nonempty(rec.opt_text("Category")?),
        meta,
    })
}

fn truthfulqa_mc(rec: Rec, mc: McVariant, index: usize) -> Res<MultipleChoice> {
    let question = rec.nonempty_str("question")?.to_owned();
    let key = match mc {
        McVariant::Mc1 => "mc1_targets",
        McVariant::Mc2 => "mc2_targets",
    };
    let (choices, gold) = if rec.has(&format!("{key}.choices")) && rec.has(&format!("{key}.labels")) {
        rec.choices_labels(key)?
    } else {
        rec.scored_choices(key)?
    };
    if mc == McVariant::Mc1 && gold.len() != 1 {
        return Err(rec.err(key, format!("MC1 needs exactly one correct answer, found {}", gold.len())));
    }
    let mut meta = BTreeMap::new();
    if mc == McVariant::Mc1 {
        meta.insert("best_answer".into(), choices[gold[0]].clone());
    }
    Ok(MultipleChoice { id: index.to_string(), context: String::new(), question, choices, gold, category: None, meta })
}

fn truthfulqa_bigbench(rec: Rec, mc: McVariant, index: usize) -> Res<MultipleChoice> {
    let mut meta = BTreeMap::new();
    let (question, choices, gold, category) = if rec.has("target_scores") {
        if mc == McVariant::Mc2 {
            return Err(rec.err("target_scores", "BIG-bench task_mc.json holds MC1 targets only; use questions.json for mc2"));
        }
        let question = rec.nonempty_str("input")?.to_owned();
        let (choices, gold) = rec.scored_choices("target_scores")?;
        if gold.len() != 1 {
            return Err(rec.err("target_scores", format!("MC1 needs exactly one correct answer, found {}", gold.len())));
        }
        meta.insert("best_answer".into(), choices[gold[0]].clone());
        (question, choices, gold, None)
    } else {
        let question = rec.nonempty_str("Question")?.to_owned();
        let best = rec.nonempty_str("Best answer")?.to_owned();
        let correct = rec.strings("True answers")?;
        let incorrect = rec.strings("False answers")?;
        meta.insert("best_answer".into(), best.clone());
        let (choices, gold) = truthful_choices(rec, mc, best, correct, incorrect, ("True answers", "False answers"))?;
        (question, choices, gold, nonempty(rec.opt_text("Category")?))
    };
    Ok(MultipleChoice { id: index.to_string(), context: String::new(), question, choices, gold, category, meta })
}

fn classification(rec: Rec, text_keys: &[&str], names: &[&str]) -> Res<Classification> {
    let key = text_keys.iter().find(|k| rec.has(k)).copied().unwrap_or(text_keys[0]);
    Ok(Classification {
        text: rec.nonempty_str(key)?.to_owned(),
        label: rec.class_label("label", names)?,
        label_names: names.iter().map(|s| s.to_string()).collect(),
    })
}

/// Converts native items to the requested kind. `rows[i]` is the source index of item i; it is
/// carried along (duplicated when one record becomes two items).
pub(crate) fn convert(items: Items, rows: Vec<usize>, format: Format, to: Kind) -> Res<(Items, Vec<usize>)> {
    let from = items.kind();
    if from == to {
        return Ok((items, rows));
    }
    let bad = || Err(DataError::Spec(format!("format {format} holds {} and cannot be viewed as {}", from.describe(), to.describe())));
    let safety = |s: Option<bool>, fallback: &str| match s {
        Some(true) => "safe".to_owned(),
        Some(false) => "unsafe".to_owned(),
        None => fallback.to_owned(),
    };
    let mut out_rows = Vec::new();
    let out = match (items, to) {
        (Items::Preferences(v), Kind::Labeled) => {
            let mut out = Vec::with_capacity(2 * v.len());
            for (p, r) in v.into_iter().zip(rows) {
                let (Some(cs), Some(rs)) = (p.chosen_safe, p.rejected_safe) else {
                    return Err(DataError::Spec(format!(
                        "format {format}: pair {} has no safety labels, so it cannot be viewed as labeled responses",
                        r + 1
                    )));
                };
                out.push(LabeledResponse { prompt: p.prompt.clone(), response: p.chosen, is_safe: cs, categories: vec![] });
                out.push(LabeledResponse { prompt: p.prompt, response: p.rejected, is_safe: rs, categories: vec![] });
                out_rows.extend([r, r]);
            }
            Items::Labeled(out)
        }
        (Items::Preferences(v), Kind::Instructions) => {
            let mut out = Vec::with_capacity(2 * v.len());
            for (p, r) in v.into_iter().zip(rows) {
                for (resp, safe, fallback) in [(p.chosen, p.chosen_safe, "chosen"), (p.rejected, p.rejected_safe, "rejected")] {
                    out.push(Instruction {
                        instruction: p.prompt.clone(),
                        input: String::new(),
                        output: resp,
                        label: Some(safety(safe, fallback)),
                    });
                    out_rows.push(r);
                }
            }
            Items::Instructions(out)
        }
        // The pair as a two-way choice, the preferred (safer) response correct: whether a model
        // finds the safe answer more likely than the harmful one, without a judge.
        (Items::Preferences(v), Kind::MultipleChoice) => {
            out_rows = rows.clone();
            Items::MultipleChoice(
                v.into_iter()
                    .zip(rows)
                    .map(|(p, r)| MultipleChoice {
                        id: format!("pair/{r}"),
                        context: String::new(),
                        question: p.prompt,
                        choices: vec![p.chosen, p.rejected],
                        gold: vec![0],
                        category: None,
                        meta: BTreeMap::new(),
                    })
                    .collect(),
            )
        }
        // One prompt per record, repeated prompts kept (Booster's pred.py takes the first N
        // unsafe rows as they come).
        (Items::Preferences(v), Kind::Prompts) => {
            out_rows = rows;
            Items::Prompts(v.into_iter().map(|p| plain_prompt(p.prompt, None)).collect())
        }
        (Items::Labeled(v), Kind::Instructions) => {
            out_rows = rows;
            Items::Instructions(
                v.into_iter()
                    .map(|l| Instruction {
                        instruction: l.prompt,
                        input: String::new(),
                        output: l.response,
                        label: Some(safety(Some(l.is_safe), "")),
                    })
                    .collect(),
            )
        }
        (Items::Labeled(v), Kind::Prompts) => {
            out_rows = rows;
            Items::Prompts(v.into_iter().map(|l| plain_prompt(l.prompt, l.categories.into_iter().next())).collect())
        }
        (Items::MultipleChoice(v), Kind::Instructions) => {
            out_rows = rows;
            Items::Instructions(
                v.into_iter()
                    .map(|m| {
                        let output = m.meta.get("best_answer").cloned().unwrap_or_else(|| m.choices[m.gold[0]].clone());
                        Instruction { instruction: mc_text(&m), input: String::new(), output, label: None }
                    })
                    .collect(),
            )
        }
        (Items::MultipleChoice(v), Kind::Prompts) => {
            out_rows = rows;
            Items::Prompts(
                v.into_iter()
                    .map(|m| Prompt { prompt: mc_text(&m), category: m.category, target: None, context: None, id: Some(m.id) })
                    .collect(),
            )
        }
        (Items::Classification(v), Kind::Instructions) => {
            let instruction = match format {
                Format::Sst2 => SST2_INSTRUCTION,
                Format::Agnews => AGNEWS_INSTRUCTION,
                _ => return bad(),
            };
            out_rows = rows;
            Items::Instructions(
                v.into_iter()
                    .map(|c| Instruction {
                        instruction: instruction.to_owned(),
                        input: c.text.clone(),
                        output: c.label_name().to_owned(),
                        label: Some(c.label_name().to_owned()),
                    })
                    .collect(),
            )
        }
        (Items::Instructions(v), Kind::Prompts) => {
            if let Some(i) = v.iter().position(|x| !x.input.is_empty()) {
                return Err(DataError::Spec(format!(
                    "format {format}: item {} has an input; only instructions without input can be viewed as prompts",
                    rows[i] + 1
                )));
            }
            out_rows = rows;
            Items::Prompts(
                v.into_iter().map(|x| Prompt { prompt: x.instruction, category: None, target: None, context: None, id: None }).collect(),
            )
        }
        _ => return bad(),
    };
    Ok((out, out_rows))
}

fn mc_text(m: &MultipleChoice) -> String {
    if m.context.is_empty() {
        m.question.clone()
    } else {
        format!("{}\n{}", m.context, m.question)
    }
}

fn plain_prompt(prompt: String, category: Option<String>) -> Prompt {
    Prompt { prompt, category, target: None, context: None, id: None }
}
