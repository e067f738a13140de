//! SELF-ALIGN's (Dromedary v1) vanilla Self-Instruct, the text side: the seed tasks, the prompt,
//! the parser of a generation and the filters, as `generate_vanilla_instruction.py` and
//! `merge_self_instruct.py` (IBM/Dromedary @39a2b1c) do them. Pure functions: the
//! `self_instruct` generate method (`methods::self_instruct`) runs the model.
//!
//! ```
//! use runner::data::self_instruct::{parse_generation, seed_tasks, Candidate};
//! assert_eq!(seed_tasks().unwrap().len(), 175);
//! // The model continues after "6. Instruction:"; each example ends at "###", the last is dropped.
//! let parsed = parse_generation(5, " Name a bird.\n6. Input:\n<noinput>\n###\n7. Instruction: cut");
//! assert_eq!(parsed, vec![Some(Candidate { instruction: "Name a bird.".into(), input: String::new() })]);
//! ```

use std::collections::HashSet;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::filter::{is_py_space, word_count, RougePool, SELF_INSTRUCT_BLACKLIST, SELF_INSTRUCT_ROUGE_L_MAX};
use super::{DataError, Row};

/// The meta prompt (Alpaca's `prompt.txt`, numbered 1-9; it ends with "List of 20 tasks:\n").
pub const PROMPT: &str = include_str!("../../data/templates/dromedary_self_instruct_prompt.txt");
/// Where [`PROMPT`] lives in the repository (written into the stage's components).
pub const PROMPT_FILE: &str = "data/templates/dromedary_self_instruct_prompt.txt";
/// The 175 human-written seed tasks of Self-Instruct, as Dromedary ships them.
pub const SEED_TASKS_FILE: &str = "data/dromedary/self_instruct_seed_tasks.jsonl";
const SEED_TASKS: &str = include_str!("../../data/dromedary/self_instruct_seed_tasks.jsonl");

/// Seed tasks per prompt in the official run (`--num_prompt_instructions 5`).
pub const PROMPT_TASKS: usize = 5;

/// A seed task as the prompt shows it: the instruction and its first instance's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeedTask {
    pub id: String,
    pub instruction: String,
    /// Empty for a task without input.
    pub input: String,
}

#[derive(Deserialize)]
struct SeedTaskLine {
    id: String,
    instruction: String,
    instances: Vec<SeedInstance>,
}

#[derive(Deserialize)]
struct SeedInstance {
    input: String,
}

/// Parses seed tasks in Self-Instruct's JSON Lines layout (`id`, `instruction`,
/// `instances[0].input`); errors name `file` and the line.
pub fn parse_seed_tasks(text: &str, file: &Path) -> Result<Vec<SeedTask>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = Row::Line(i + 1);
        let t: SeedTaskLine = serde_json::from_str(line).map_err(|e| DataError::row(file, row, format!("not a seed task: {e}")))?;
        let first = t.instances.into_iter().next().ok_or_else(|| DataError::field(file, row, "instances", "is empty"))?;
        out.push(SeedTask { id: t.id, instruction: t.instruction, input: first.input });
    }
    Ok(out)
}

/// The shipped seed tasks ([`SEED_TASKS_FILE`]).
pub fn seed_tasks() -> Result<Vec<SeedTask>, DataError> {
    parse_seed_tasks(SEED_TASKS, Path::new(SEED_TASKS_FILE))
}

/// The prompt for one query: `meta + "\n"`, then per task `"###\n{i}. Instruction: {instruction}\n{i}.
/// Input:\n{input or <noinput>}\n"` (the instruction's whitespace runs collapsed, stripped, trailing
/// colons removed), then `"###\n{n+1}. Instruction:"`.
pub fn encode_prompt(meta: &str, tasks: &[&SeedTask]) -> String {
    let mut prompt = format!("{meta}\n");
    for (i, t) in tasks.iter().enumerate() {
        let instruction = collapse_whitespace(&t.instruction);
        let instruction = instruction.trim_matches(is_py_space).trim_end_matches(':');
        let input = if t.input.is_empty() { "<noinput>" } else { &t.input };
        prompt.push_str(&format!("###\n{n}. Instruction: {instruction}\n{n}. Input:\n{input}\n", n = i + 1));
    }
    prompt.push_str(&format!("###\n{}. Instruction:", tasks.len() + 1));
    prompt
}

/// Python's `re.sub(r"\s+", " ", text)`.
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if is_py_space(c) {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out
}

/// One generated task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub instruction: String,
    /// Empty where the model wrote `<noinput>`.
    pub input: String,
}

/// The examples of one generation after a prompt of `prompt_tasks` seed tasks: the text, with
/// `"{prompt_tasks+1}. Instruction:"` in front, is split at every `###` and the last piece is
/// dropped (it may be cut off by the length limit). Each piece `i` (numbered from
/// `prompt_tasks + 1`) must split into exactly two parts at `{i}\.\s+(Instruction|Input):`, else
/// it is `None` (unparsed). As the official regex, the number is not anchored: `16. Input:`
/// also matches for 6.
pub fn parse_generation(prompt_tasks: usize, response: &str) -> Vec<Option<Candidate>> {
    let text = format!("{}. Instruction:{response}", prompt_tasks + 1);
    let pieces: Vec<&str> = text.split("###").collect();
    let kept = &pieces[..pieces.len() - 1];
    kept.iter().enumerate().map(|(i, piece)| parse_piece(prompt_tasks + 1 + i, piece)).collect()
}

fn parse_piece(index: usize, piece: &str) -> Option<Candidate> {
    // Python's `\s` also matches the separators U+001C..U+001F, which Rust's does not.
    let re = Regex::new(&format!(r"{index}\.[\s\x1c-\x1f]+(?:Instruction|Input):")).expect("valid pattern");
    let marks: Vec<regex::Match> = re.find_iter(piece).collect();
    if marks.len() != 2 {
        return None;
    }
    let instruction = piece[marks[0].end()..marks[1].start()].trim_matches(is_py_space).to_string();
    let input = piece[marks[1].end()..].trim_matches(is_py_space);
    let input = if input.to_lowercase() == "<noinput>" { String::new() } else { input.to_string() };
    Some(Candidate { instruction, input })
}

/// What became of a piece of a generation: kept, or the first filter that dropped it, in the
/// official order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Kept,
    /// Not two numbered `Instruction:`/`Input:` fields.
    Unparsed,
    /// 3 words or fewer.
    TooFewWords,
    /// More than 150 words.
    TooManyWords,
    /// A blacklisted word or phrase in the instruction or the input.
    Blacklist,
    /// The instruction starts with ASCII punctuation.
    PunctuationStart,
    /// The instruction starts with a non-ASCII character.
    NonAsciiStart,
    /// ROUGE-L F above 0.7 with a seed task or an earlier kept instruction.
    RougeL,
    /// Same normalized text as an earlier kept instruction (the merge step).
    Duplicate,
}

impl Verdict {
    /// Every way to drop a piece, in the order they are tried.
    pub const DROPS: [Verdict; 8] = [
        Verdict::Unparsed,
        Verdict::TooFewWords,
        Verdict::TooManyWords,
        Verdict::Blacklist,
        Verdict::PunctuationStart,
        Verdict::NonAsciiStart,
        Verdict::RougeL,
        Verdict::Duplicate,
    ];

    /// The name in metrics (`dropped_<key>`) and records.
    pub fn key(self) -> &'static str {
        match self {
            Verdict::Kept => "kept",
            Verdict::Unparsed => "unparsed",
            Verdict::TooFewWords => "too_few_words",
            Verdict::TooManyWords => "too_many_words",
            Verdict::Blacklist => "blacklist",
            Verdict::PunctuationStart => "punctuation_start",
            Verdict::NonAsciiStart => "non_ascii_start",
            Verdict::RougeL => "rouge_l",
            Verdict::Duplicate => "duplicate",
        }
    }
}

/// The first of the per-text filters of `post_process_gpt3_response` that drops a task, in its
/// order: word count (more than 3, at most 150, Python's `split()`), the blacklist (whole words,
/// any case) in the instruction and then the input, a first character in ASCII punctuation or
/// outside ASCII.
pub fn text_verdict(c: &Candidate, blacklist: &Regex) -> Option<Verdict> {
    let words = word_count(&c.instruction);
    let first = c.instruction.chars().next();
    if words <= 3 {
        Some(Verdict::TooFewWords)
    } else if words > 150 {
        Some(Verdict::TooManyWords)
    } else if blacklist.is_match(&c.instruction) || blacklist.is_match(&c.input) {
        Some(Verdict::Blacklist)
    } else if first.is_some_and(|ch| ch.is_ascii_punctuation()) {
        Some(Verdict::PunctuationStart)
    } else if first.is_some_and(|ch| !ch.is_ascii()) {
        Some(Verdict::NonAsciiStart)
    } else {
        None
    }
}

/// The key of `merge_self_instruct.py`'s dedup: every character outside `[a-zA-Z0-9]` becomes a
/// space (runs are not collapsed), then lowercase. (`data::filter::dedup_key` is a coarser key
/// for the generic `filter` method.)
pub fn merge_key(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { ' ' }).collect()
}

/// The instructions so far, against which each new task is judged: the ROUGE-L pool (seed tasks
/// and every task that passed ROUGE-L, as the generation script keeps it) and the merge step's
/// set of normalized kept instructions.
pub struct InstructionPool {
    blacklist: Regex,
    rouge: RougePool,
    merged: HashSet<String>,
}

impl InstructionPool {
    /// A pool holding the seed instructions (ROUGE-L only: the merge step does not see them).
    pub fn new(seeds: &[SeedTask]) -> Self {
        let blacklist = super::filter::phrase_regex(&SELF_INSTRUCT_BLACKLIST).expect("the blacklist compiles");
        InstructionPool { blacklist, rouge: RougePool::from_texts(seeds.iter().map(|t| t.instruction.as_str())), merged: HashSet::new() }
    }

    /// Judges a parsed piece; a task past the ROUGE-L filter joins the ROUGE-L pool (even if the
    /// merge step then drops it, as in the official two scripts), a kept one the merge set.
    pub fn judge(&mut self, piece: Option<&Candidate>) -> Verdict {
        let Some(c) = piece else { return Verdict::Unparsed };
        if let Some(v) = text_verdict(c, &self.blacklist) {
            return v;
        }
        if self.rouge.exceeds(&c.instruction, SELF_INSTRUCT_ROUGE_L_MAX) {
            return Verdict::RougeL;
        }
        self.rouge.push(&c.instruction);
        if !self.merged.insert(merge_key(&c.instruction)) {
            return Verdict::Duplicate;
        }
        Verdict::Kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(instruction: &str, input: &str) -> Candidate {
        Candidate { instruction: instruction.into(), input: input.into() }
    }

    fn seeds() -> Vec<SeedTask> {
        seed_tasks().unwrap()
    }

    #[test]
    fn the_seed_tasks_load() {
        let s = seeds();
        assert_eq!(s.len(), 175);
        assert_eq!(s[0].id, "seed_task_0");
        assert_eq!(s[0].input, "");
        assert_eq!(s[1].input, "Night : Day :: Right : Left");
        let ids: HashSet<&str> = s.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids.len(), 175);
        let e = parse_seed_tasks("{\"id\": \"a\", \"instruction\": \"x\", \"instances\": []}\n", Path::new("s.jsonl")).unwrap_err();
        assert_eq!(e.to_string(), "s.jsonl: line 1: field `instances`: is empty");
        let e = parse_seed_tasks("\n{\"id\": 1}\n", Path::new("s.jsonl")).unwrap_err();
        assert!(e.to_string().starts_with("s.jsonl: line 2: not a seed task"), "{e}");
    }

    /// The prompt for seed tasks 0 (no input), 4 (a trailing colon, an input over lines), 125 (a
    /// double space), 1 and 8, written out by hand from `encode_prompt` of the official script.
    #[test]
    fn the_prompt_renders_byte_for_byte() {
        let s = seeds();
        let chosen: Vec<&SeedTask> = [0, 4, 125, 1, 8].iter().map(|&i| &s[i]).collect();
        let got = encode_prompt(PROMPT, &chosen);
        let mut want = String::from(PROMPT);
        assert!(want.ends_with("List of 20 tasks:\n"));
        want.push_str("\n###\n1. Instruction: Is there anything I can eat for a breakfast that doesn't include eggs, yet includes protein, and has roughly 700-1000 calories?\n1. Input:\n<noinput>\n");
        want.push_str("###\n2. Instruction: Generate an appropriate subjective title for the following email\n2. Input:\n");
        want.push_str(&s[4].input);
        assert!(s[4].input.starts_with("Hi [person name],\n\nI'm writin"));
        want.push('\n');
        want.push_str("###\n3. Instruction: Given two cocktail ingredients, write a recipe for a cocktail that uses them. You may add more ingredients.\n3. Input:\n");
        want.push_str(&s[125].input);
        want.push('\n');
        want.push_str("###\n4. Instruction: What is the relation between the given pairs?\n4. Input:\nNight : Day :: Right : Left\n");
        want.push_str("###\n5. Instruction: Generate a haiku using the following word\n5. Input:\nsummer\n");
        want.push_str("###\n6. Instruction:");
        assert_eq!(got, want);
        // Whitespace runs (any kind) collapse; every trailing colon goes, after stripping.
        let t = SeedTask { id: "x".into(), instruction: " Do\tthis \n now::  ".into(), input: "  keep  ".into() };
        assert_eq!(encode_prompt("M", &[&t]), "M\n###\n1. Instruction: Do this now\n1. Input:\n  keep  \n###\n2. Instruction:");
    }

    #[test]
    fn the_parser_splits_numbered_examples_and_drops_the_last() {
        let out = " Give three tips for staying healthy.\n6. Input:\n<noinput>\n###\n\
                   7. Instruction: Rewrite the sentence in passive voice.\n7. Input:\nThe cat chased the mouse.\n###\n\
                   8. Instruction: Summarize the article.\n8. Input:\n<NoInput>\n###\n\
                   9. Instruction: This one is cut off by the len";
        let parsed = parse_generation(5, out);
        assert_eq!(
            parsed,
            vec![
                Some(cand("Give three tips for staying healthy.", "")),
                Some(cand("Rewrite the sentence in passive voice.", "The cat chased the mouse.")),
                Some(cand("Summarize the article.", "")),
            ]
        );
        // Without any "###" the one piece is the last one: nothing is parsed.
        assert!(parse_generation(5, " Name a bird.\n6. Input:\n<noinput>\n").is_empty());
        // A complete last example is dropped all the same.
        assert_eq!(parse_generation(5, " A b c d.\n6. Input:\nx\n###\n7. Instruction: E f g h.\n7. Input:\ny\n###").len(), 2);
    }

    #[test]
    fn pieces_without_the_expected_numbering_are_unparsed() {
        let out = " First task here please.\n6. Input:\n<noinput>\n###\n\
                   Instruction: no number\nInput: none\n###\n\
                   9. Instruction: wrong number\n9. Input:\nx\n###\n\
                   9. Instruction: one field only\n###\n\
                   10. Instruction: again\n10. Instruction: twice\n###\n\
                   11.Instruction: no space\n11. Input:\nx\n###\n";
        let parsed = parse_generation(5, out);
        assert_eq!(parsed.len(), 6);
        assert_eq!(parsed[0], Some(cand("First task here please.", "")));
        assert_eq!(parsed[1], None, "no numbers");
        assert_eq!(parsed[2], None, "9 where 8 was expected");
        assert_eq!(parsed[3], None, "9 as expected, but one field");
        // Two matches of either label make five parts: the official parser takes them as is.
        assert_eq!(parsed[4], Some(cand("again", "twice")));
        assert_eq!(parsed[5], None, "`\\s+` needs a space after the dot");
        // The number is not anchored: "16." matches the pattern for 6, leaving its "1" behind.
        assert_eq!(parse_generation(5, " A.\n16. Input:\nx\n###"), vec![Some(cand("A.\n1", "x"))]);
    }

    fn blacklist() -> Regex {
        super::super::filter::phrase_regex(&SELF_INSTRUCT_BLACKLIST).unwrap()
    }

    #[test]
    fn text_filters_in_the_official_order() {
        let b = blacklist();
        let v = |i: &str, input: &str| text_verdict(&cand(i, input), &b);
        assert_eq!(v("Write a poem.", ""), Some(Verdict::TooFewWords));
        assert_eq!(v("Write a short poem.", ""), None);
        let long = "word ".repeat(151);
        assert_eq!(v(&long, ""), Some(Verdict::TooManyWords));
        assert_eq!(v(&long[..long.len() - 5], ""), None, "150 words are fine");
        // Whole words, any case, in the instruction or the input; not inside other words.
        assert_eq!(v("Describe this IMAGE in detail.", ""), Some(Verdict::Blacklist));
        assert_eq!(v("Describe the imagery of the poem.", ""), None);
        assert_eq!(v("Explain how mapping functions work.", ""), None);
        assert_eq!(v("Summarize the following text please.", "A map of the town."), Some(Verdict::Blacklist));
        assert_eq!(v("Tell me how to go to the station.", ""), Some(Verdict::Blacklist));
        assert_eq!(v("Explain why people undergo total change.", ""), None, "\"go to\" inside other words");
        assert_eq!(v("Name the files in the folder.", ""), Some(Verdict::Blacklist));
        assert_eq!(v("Name the profiles in the folder.", ""), None);
        // The word count comes first, then the blacklist, then the start.
        assert_eq!(v("Draw a cat.", ""), Some(Verdict::TooFewWords));
        assert_eq!(v("\"Draw\" a cat please.", ""), Some(Verdict::Blacklist));
        assert_eq!(v("\"Quote\" a cat please.", ""), Some(Verdict::PunctuationStart));
        assert_eq!(v("- List three colors here.", ""), Some(Verdict::PunctuationStart));
        assert_eq!(v("Écris un poème sur la mer.", ""), Some(Verdict::NonAsciiStart));
        assert_eq!(v("¿Qué hora es ahora?", ""), Some(Verdict::NonAsciiStart));
        assert_eq!(v("1. List the planets in order.", ""), None, "digits are no punctuation");
    }

    #[test]
    fn the_pool_drops_near_duplicates_and_normalized_duplicates() {
        let s = seeds();
        let mut pool = InstructionPool::new(&s);
        // A near-copy of a seed task (seed 0's instruction with one word changed).
        let near = "Is there anything I can eat for a breakfast that doesn't include eggs, yet includes protein, and has roughly 500-1000 calories?";
        assert_eq!(pool.judge(Some(&cand(near, ""))), Verdict::RougeL);
        let a = cand("Suggest a name for a bakery that sells bagels.", "");
        assert_eq!(pool.judge(Some(&a)), Verdict::Kept);
        // F = 0.8 with the kept one: dropped by ROUGE-L before the merge step sees it.
        assert_eq!(pool.judge(Some(&cand("Suggest a good name for a bakery that sells bagels.", ""))), Verdict::RougeL);
        assert_eq!(pool.judge(Some(&cand("Suggest a name for a bakery that sells bagels!", ""))), Verdict::RougeL);
        assert_eq!(pool.judge(None), Verdict::Unparsed);
        assert_eq!(pool.judge(Some(&cand("Write a haiku about the sea.", ""))), Verdict::Kept);
    }

    #[test]
    fn the_merge_step_catches_what_rouge_l_does_not() {
        // The Kelvin sign lowercases to "k" for ROUGE (one token "catskand") but is a space in the
        // merge key: F = 0.67 with the first, the same merge key.
        let a = cand("Write about cats and dogs", "");
        let b = cand("Write about cats\u{212a}and dogs", "");
        assert!(crate::data::filter::rouge_l(&b.instruction, &a.instruction) <= 0.7);
        assert_eq!(merge_key(&a.instruction), merge_key(&b.instruction));
        let mut pool = InstructionPool::new(&[]);
        assert_eq!(pool.judge(Some(&a)), Verdict::Kept);
        assert_eq!(pool.judge(Some(&b)), Verdict::Duplicate);
        // The dropped one had passed ROUGE-L, so it joined the ROUGE-L pool (two scripts: the
        // generation keeps it, the merge drops it): its twin now fails ROUGE-L.
        assert_eq!(pool.judge(Some(&b)), Verdict::RougeL);
    }

    #[test]
    fn merge_keys_follow_the_official_normalization() {
        assert_eq!(merge_key("Hello, World!"), "hello  world ");
        assert_eq!(merge_key("hello  world "), merge_key("Hello, World!"));
        assert_ne!(merge_key("Hello world"), merge_key("Hello, world"), "runs are not collapsed");
        assert_eq!(merge_key("Ça va"), " a va");
    }
}
