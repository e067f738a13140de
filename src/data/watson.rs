//! SELF-ALIGN's (Dromedary v1) Principle-Driven Self-Alignment, the text side: the Watson prompt
//! (16 principles and 5 in-context exemplars), the per-query prompt, the merge step's filters of a
//! generation and the 910 Vicuna identity ("dummy") conversations it adds, as
//! `generate_self_align_response.py` and `merge_and_fileter_self_align_with_dummy.py`
//! (IBM/Dromedary @39a2b1c) do them. Pure functions: the `principle_align` generate method
//! (`methods::principle_align`) runs the model.
//!
//! ```
//! use runner::data::watson::{filter_generation, Dropped};
//! let raw = "I am a helpful, ethical, and reliable assistant. The user asks for a color.\n\n\
//!            Watson: Blue is a calm color. It is my pick";
//! // The last (maybe cut) word goes, and Watson is renamed.
//! assert_eq!(filter_generation(raw), Ok("Blue is a calm color. It is my".to_string()));
//! assert_eq!(filter_generation("Watson: Blue."), Err(Dropped::NoInternalThought));
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::filter::is_py_space;
use super::{DataError, Instruction, Row};

/// The Watson prompt, verbatim (it ends with `"User:"`, the query's instruction follows).
pub const PROMPT: &str = include_str!("../../data/templates/dromedary_watson_self_align_prompt.txt");
/// Where [`PROMPT`] lives in the repository (written into the stage's components).
pub const PROMPT_FILE: &str = "data/templates/dromedary_watson_self_align_prompt.txt";
/// The 910 identity conversations of Vicuna (FastChat's `dummy.json`) as Dromedary ships them.
pub const DUMMY_FILE: &str = "data/dromedary/vicuna_dummy_data.json";
const DUMMY: &str = include_str!("../../data/dromedary/vicuna_dummy_data.json");

/// The internal thought every exemplar starts with; a generation without it is dropped.
pub const INTERNAL_THOUGHT: &str = "I am a helpful, ethical, and reliable assistant.";
/// The model's turn after its internal thoughts; the response is what follows.
pub const WATSON_TURN: &str = "\n\nWatson:";
/// The user's next turn: the response is cut there and ends with [`STOP_MARK`] instead.
pub const USER_TURN: &str = "\n\nUser:";
/// What a response cut at the user's turn ends with (it teaches the engraved model to stop).
pub const STOP_MARK: &str = "\n\n### User\n";
/// A response cut at the user's turn is dropped when shorter than this (in characters, with
/// [`STOP_MARK`]).
pub const MIN_CUT_CHARS: usize = 160;
/// Dropped when the response contains one of these (echoes of the exemplars).
pub const BLACKLIST: [&str; 12] = [
    "User:",
    "Good job! Clear context",
    "Watson (auto reply):",
    "Could you please provide more details or context so I can try to assist you better?",
    "president",
    "President",
    "Zhiqing",
    "1, 1, 4",
    "weather",
    "or by watching the news or checking your local",
    "alpaca",
    "Alpaca",
];
/// Dropped when the response starts with one of these.
pub const SORRY_STARTS: [&str; 2] = ["I'm sorry", "I am sorry"];
/// Rewritten to "Here" at the start of a response (no false recitation from Wikipedia).
pub const WIKIPEDIA_START: &str = "According to my knowledge from Wikipedia, here";
/// The word whose token the generation is biased against (`logit_bias={id("Sorry"): -100}`).
pub const SORRY: &str = "Sorry";

/// Python's `str.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// The prompt of one query: the meta prompt (stripped), a space, the instruction, a blank line,
/// the input and a blank line when there is one, then `"Watson (internal thoughts):"`
/// (`generate_prompt`; the instruction and input go in as they are).
pub fn query_prompt(meta: &str, instruction: &str, input: &str) -> String {
    let meta = py_strip(meta);
    if input.is_empty() {
        format!("{meta} {instruction}\n\nWatson (internal thoughts):")
    } else {
        format!("{meta} {instruction}\n\n{input}\n\nWatson (internal thoughts):")
    }
}

/// The generation as the merge step reads it. LLaMA's SentencePiece decode drops the space that
/// starts the first generated piece (`"▁I"` decodes to `"I"`), so the official outputs start
/// with the internal thought itself; a byte-level BPE decodes `" I"` with its space. One leading
/// space is removed, as that decode does; anything else stays.
pub fn as_merged(generation: &str) -> &str {
    generation.strip_prefix(' ').unwrap_or(generation)
}

/// The filter that dropped a generation, in the order the merge step applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dropped {
    /// Does not start with [`INTERNAL_THOUGHT`] (filter 1).
    NoInternalThought,
    /// Has no [`WATSON_TURN`]: only internal thoughts (filter 2).
    NoWatsonTurn,
    /// Cut at the user's turn and then shorter than [`MIN_CUT_CHARS`] (filter 4).
    TooShort,
    /// Contains a [`BLACKLIST`] string (filter 5).
    Blacklist,
    /// Starts with one of [`SORRY_STARTS`] (filter 6).
    SorryStart,
    /// Nothing left (filter 6).
    Empty,
}

impl Dropped {
    /// Every drop, in filter order.
    pub const ALL: [Dropped; 6] =
        [Dropped::NoInternalThought, Dropped::NoWatsonTurn, Dropped::TooShort, Dropped::Blacklist, Dropped::SorryStart, Dropped::Empty];

    /// The name in metrics (`dropped_<key>`), filter reports and `outputs.jsonl`.
    pub fn key(self) -> &'static str {
        match self {
            Dropped::NoInternalThought => "no_internal_thought",
            Dropped::NoWatsonTurn => "no_watson_turn",
            Dropped::TooShort => "too_short",
            Dropped::Blacklist => "blacklist",
            Dropped::SorryStart => "sorry_start",
            Dropped::Empty => "empty",
        }
    }
}

/// The merge step's `dedup`: the text split after every `\n . ? ! ; : ,`, cut before the first
/// piece seen already (empty pieces and single splitters may repeat), stripped.
pub fn dedup(text: &str) -> String {
    dedup_after(text, "\n.?!;:,")
}

/// `dedup` with its own split characters (verbose cloning's merge adds the backtick).
pub fn dedup_after(text: &str, splitters: &str) -> String {
    let mut pieces: Vec<&str> = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if splitters.contains(c) {
            let end = i + c.len_utf8();
            pieces.push(&text[start..end]);
            start = end;
        }
    }
    pieces.push(&text[start..]);
    let mut kept: Vec<&str> = Vec::new();
    for piece in pieces {
        // `piece in '\n.?!;:,'` is Python's substring test: true for "" and one splitter.
        if kept.contains(&piece) && !splitters.contains(piece) {
            break;
        }
        kept.push(piece);
    }
    py_strip(&kept.concat()).to_string()
}

/// The merge step's filters of one generation (as [`as_merged`] gives it), in order:
/// 1. it starts with [`INTERNAL_THOUGHT`];
/// 2. it contains [`WATSON_TURN`]; the response is the text after it, stripped;
/// 3. [`dedup`];
/// 4. with a [`USER_TURN`], the response is cut there (stripped) and ends with [`STOP_MARK`],
///    dropped when shorter than [`MIN_CUT_CHARS`]; without one, its last word (after the last
///    space: the token limit may have cut it) is removed;
/// 5. no [`BLACKLIST`] string;
/// 6. no [`SORRY_STARTS`] start, not empty;
/// 7. "Watson" becomes "Dromedary";
/// 8. a [`WIKIPEDIA_START`] start becomes "Here".
///
/// Returns the cleaned response, or the filter that dropped it.
pub fn filter_generation(generation: &str) -> Result<String, Dropped> {
    if !generation.starts_with(INTERNAL_THOUGHT) {
        return Err(Dropped::NoInternalThought);
    }
    let (_, reply) = generation.split_once(WATSON_TURN).ok_or(Dropped::NoWatsonTurn)?;
    let reply = dedup(py_strip(reply));
    let reply = match reply.split_once(USER_TURN) {
        Some((before, _)) => {
            let cut = format!("{}{STOP_MARK}", py_strip(before));
            if cut.chars().count() < MIN_CUT_CHARS {
                return Err(Dropped::TooShort);
            }
            cut
        }
        None => match reply.rsplit_once(' ') {
            Some((before, _)) => before.to_string(),
            None => reply,
        },
    };
    if BLACKLIST.iter().any(|w| reply.contains(w)) {
        return Err(Dropped::Blacklist);
    }
    if SORRY_STARTS.iter().any(|s| reply.starts_with(s)) {
        return Err(Dropped::SorryStart);
    }
    if reply.is_empty() {
        return Err(Dropped::Empty);
    }
    let reply = reply.replace("Watson", "Dromedary");
    Ok(match reply.strip_prefix(WIKIPEDIA_START) {
        Some(rest) => format!("Here{rest}"),
        None => reply,
    })
}

/// Vicuna's maker and name in an identity answer become SELF-ALIGN's (`convert_dummy_data`:
/// the longer LMSYS phrase first, then the bare one, then the name).
pub fn rename_vicuna(answer: &str) -> String {
    const TEAM: &str = "the Self-Align team, a joint effort between CMU and IBM";
    answer
        .replace("the Large Model Systems Organization (LMSYS)", TEAM)
        .replace("Large Model Systems Organization (LMSYS)", TEAM)
        .replace("Vicuna", "Dromedary")
}

#[derive(Deserialize)]
struct DummyRecord {
    conversations: Vec<DummyTurn>,
}

#[derive(Deserialize)]
struct DummyTurn {
    from: String,
    value: String,
}

/// Parses identity conversations (a JSON array of `{"id", "conversations": [{"from", "value"},
/// ...]}`): each gives its first human turn as the instruction and the first answer, renamed
/// ([`rename_vicuna`]), as the output; later turns are not used. Errors name `file` and the record.
pub fn parse_dummy(text: &str, file: &Path) -> Result<Vec<Instruction>, DataError> {
    let records: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| DataError::file(file, format!("not a JSON array of conversations: {e}")))?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let row = Row::Record(i + 1);
            let r: DummyRecord = serde_json::from_value(v).map_err(|e| DataError::row(file, row, format!("not a conversation: {e}")))?;
            let turn = |k: usize, from: &str| match r.conversations.get(k) {
                Some(t) if t.from == from => Ok(t.value.clone()),
                Some(t) => Err(DataError::field(file, row, "conversations", format!("turn {} is from {:?}, not {from:?}", k + 1, t.from))),
                None => Err(DataError::field(file, row, "conversations", format!("has no turn {} (from {from:?})", k + 1))),
            };
            Ok(Instruction { instruction: turn(0, "human")?, input: String::new(), output: rename_vicuna(&turn(1, "gpt")?), label: None })
        })
        .collect()
}

/// The shipped identity conversations ([`DUMMY_FILE`]) as the merge step adds them.
pub fn dummy_conversations() -> Result<Vec<Instruction>, DataError> {
    parse_dummy(DUMMY, Path::new(DUMMY_FILE))
}

/// The identity questions without answers (the instructions of [`dummy_conversations`]).
pub fn dummy_questions() -> Result<Vec<Instruction>, DataError> {
    let mut v = dummy_conversations()?;
    v.iter_mut().for_each(|x| x.output.clear());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generation that passes the first two filters, with `reply` after the Watson turn.
    fn gen(reply: &str) -> String {
        format!("{INTERNAL_THOUGHT} The user asks something. I should follow rules 2 (informative).{WATSON_TURN}{reply}")
    }

    #[test]
    fn prompt_is_the_official_bytes() {
        assert_eq!(PROMPT.len(), 6627);
        assert!(PROMPT.starts_with("# Watson\n\n## General Rules\n"));
        assert!(PROMPT.ends_with("the response helpful.\n\nUser:"));
        // 5 exemplars, one with a follow-up question: 6 internal thoughts, each with the sentence.
        assert_eq!(PROMPT.matches("Watson (internal thoughts): I am a helpful, ethical, and reliable assistant.").count(), 6);
        assert_eq!(PROMPT.matches("User: Good job! Clear context").count(), 5);
        let meta = "# Watson\n...\n\nUser:\n";
        assert_eq!(query_prompt(meta, "Name a fruit.", ""), "# Watson\n...\n\nUser: Name a fruit.\n\nWatson (internal thoughts):");
        assert_eq!(
            query_prompt(meta, "Translate to French.", "Good morning"),
            "# Watson\n...\n\nUser: Translate to French.\n\nGood morning\n\nWatson (internal thoughts):"
        );
        let p = query_prompt(PROMPT, " x ", "");
        assert!(p.starts_with(PROMPT) && p.ends_with("User:  x \n\nWatson (internal thoughts):"), "instruction as it is");
    }

    #[test]
    fn the_merge_sees_the_generation_without_its_first_space() {
        assert_eq!(as_merged(" I am"), "I am");
        assert_eq!(as_merged("  I am"), " I am");
        assert_eq!(as_merged("\nI am"), "\nI am");
        assert_eq!(filter_generation(&gen(" Hi there friend")), Ok("Hi there".into()));
        assert_eq!(filter_generation(&format!(" {}", gen(" Hi there friend"))), Err(Dropped::NoInternalThought));
    }

    #[test]
    fn filter_one_and_two_need_the_thought_and_the_watson_turn() {
        assert_eq!(filter_generation("The user asks.\n\nWatson: Hi there."), Err(Dropped::NoInternalThought));
        assert_eq!(
            filter_generation(&format!("i am a helpful, ethical, and reliable assistant.{WATSON_TURN} a b")),
            Err(Dropped::NoInternalThought)
        );
        assert_eq!(filter_generation(&format!("{INTERNAL_THOUGHT} I should follow rule 2. Watson: Hi there.")), Err(Dropped::NoWatsonTurn));
        assert_eq!(filter_generation(&format!("{INTERNAL_THOUGHT}\nWatson: Hi there.")), Err(Dropped::NoWatsonTurn));
        // Only the first Watson turn splits; the rest is part of the response (and renamed).
        assert_eq!(filter_generation(&gen(" Ask Watson: he knows. end")), Ok("Ask Dromedary: he knows.".into()));
    }

    #[test]
    fn dedup_cuts_at_the_first_repeated_piece() {
        assert_eq!(dedup("Yes. Yes. No. Yes. Maybe"), "Yes. Yes. No.");
        // Pieces keep their leading space: " A cat." differs from "A cat.".
        assert_eq!(dedup("A cat. A dog. A cat. A bird."), "A cat. A dog. A cat. A bird.");
        assert_eq!(dedup("A cat. A cat. A cat."), "A cat. A cat.");
        assert_eq!(dedup("One, two, one, two, three"), "One, two, one,");
        // Repeated single splitters and blank lines stay.
        assert_eq!(dedup("Wait...\n\nYes!\n\nNo"), "Wait...\n\nYes!\n\nNo");
        assert_eq!(dedup("  Hi: there\n"), "Hi: there");
        assert_eq!(dedup("No splitter"), "No splitter");
        assert_eq!(dedup(""), "");
        let reply = " Step one: mix.\nStep two: bake.\nStep one: mix.\nStep three: eat. x";
        assert_eq!(filter_generation(&gen(reply)), Ok("Step one: mix.\nStep two:".into()));
    }

    #[test]
    fn a_user_turn_cuts_and_the_160_rule_applies_to_the_cut_only() {
        let long = "Sure. The sun is a star, and the moon is not. Both light the night sky of the earth in turn; \
                    some nights only one of them is there, and on a few nights neither is, so it is dark.";
        let kept = filter_generation(&gen(&format!(" {long}\n\nUser: Good. And more")));
        assert_eq!(kept, Ok(format!("{long}{STOP_MARK}")));
        // The same reply without a user turn loses its last word.
        assert_eq!(filter_generation(&gen(&format!(" {long} More"))), Ok(long.to_string()));
        // dedup runs first: a repeated sentence cuts the reply short of the user turn.
        let looped = format!(" Sure.{}", " The sun is a star in the sky, many words long".repeat(3));
        assert_eq!(
            filter_generation(&gen(&format!("{looped}\n\nUser: Good."))),
            Ok("Sure. The sun is a star in the sky, many words long The sun is a star in the".into())
        );
        // 159 characters with the stop mark: dropped; 160: kept.
        let body = |n: usize| "x".repeat(n - STOP_MARK.len());
        assert_eq!(filter_generation(&gen(&format!(" {}\n\nUser: next", body(159)))), Err(Dropped::TooShort));
        assert_eq!(filter_generation(&gen(&format!(" {}\n\nUser: next", body(160)))), Ok(format!("{}{STOP_MARK}", body(160))));
        // Characters, not bytes.
        assert_eq!(
            filter_generation(&gen(&format!(" {}\n\nUser:", "é".repeat(160 - STOP_MARK.len())))).map(|s| s.chars().count()),
            Ok(160)
        );
        // Without a user turn a short reply is kept, less its last word.
        assert_eq!(filter_generation(&gen(" Yes it is")), Ok("Yes it".into()));
        assert_eq!(filter_generation(&gen(" Yes")), Ok("Yes".into()), "no space: nothing to remove");
        // A single newline before "User:" is no user turn, and the blacklist then drops it.
        assert_eq!(filter_generation(&gen(" Fine.\nUser: more words")), Err(Dropped::Blacklist));
    }

    #[test]
    fn blacklist_and_sorry_starts_drop() {
        for w in BLACKLIST {
            assert_eq!(filter_generation(&gen(&format!(" Text with {w} inside it. end"))), Err(Dropped::Blacklist), "{w}");
        }
        // Case-sensitive substrings, anywhere in the reply.
        assert_eq!(filter_generation(&gen(" It is the weatherman. end")), Err(Dropped::Blacklist));
        assert_eq!(filter_generation(&gen(" The Weather is fine. end")), Ok("The Weather is fine.".into()));
        assert_eq!(filter_generation(&gen(" I'm sorry, but I cannot. end")), Err(Dropped::SorryStart));
        assert_eq!(filter_generation(&gen(" I am sorry to hear that. end")), Err(Dropped::SorryStart));
        assert_eq!(filter_generation(&gen(" Sorry, I cannot. end")), Ok("Sorry, I cannot.".into()), "only the two starts");
        assert_eq!(filter_generation(&gen(" So I'm sorry. end")), Ok("So I'm sorry.".into()));
        assert_eq!(filter_generation(&gen("   ")), Err(Dropped::Empty));
        assert_eq!(filter_generation(&gen("")), Err(Dropped::Empty));
    }

    #[test]
    fn renames_and_rewrites_the_wikipedia_start() {
        assert_eq!(
            filter_generation(&gen(" As Watson, I think Watson is fine. end")),
            Ok("As Dromedary, I think Dromedary is fine.".into())
        );
        let wiki = " According to my knowledge from Wikipedia, here is what I know: cats purr. end";
        assert_eq!(filter_generation(&gen(wiki)), Ok("Here is what I know: cats purr.".into()));
        let inside = " Well. According to my knowledge from Wikipedia, here it is. end";
        assert_eq!(filter_generation(&gen(inside)), Ok("Well. According to my knowledge from Wikipedia, here it is.".into()));
    }

    #[test]
    fn dummy_conversations_are_renamed() {
        let d = dummy_conversations().unwrap();
        assert_eq!(d.len(), 910);
        assert_eq!(d[0].instruction, "Who are you?");
        assert_eq!(
            d[0].output,
            "I am Dromedary, a language model trained by researchers from the Self-Align team, a joint effort between CMU and IBM."
        );
        assert!(d.iter().all(|x| x.input.is_empty() && !x.output.is_empty() && x.label.is_none()));
        assert!(d.iter().all(|x| !x.output.contains("Vicuna") && !x.output.contains("LMSYS")));
        // In the file 45 answers name Vicuna and all 910 name LMSYS (none with "the" before it).
        assert_eq!(d.iter().filter(|x| x.output.contains("Dromedary")).count(), 45);
        assert!(d.iter().all(|x| x.output.contains("the Self-Align team, a joint effort between CMU and IBM")));
        let q = dummy_questions().unwrap();
        assert_eq!(q.len(), 910);
        assert!(q.iter().zip(&d).all(|(q, d)| q.instruction == d.instruction && q.output.is_empty()));
    }

    #[test]
    fn renaming_replaces_the_longer_phrase_first() {
        assert_eq!(
            rename_vicuna("Vicuna, by the Large Model Systems Organization (LMSYS); Large Model Systems Organization (LMSYS) too."),
            "Dromedary, by the Self-Align team, a joint effort between CMU and IBM; the Self-Align team, a joint effort between CMU and IBM too."
        );
    }

    #[test]
    fn bad_dummy_files_name_the_record() {
        let f = Path::new("dummy.json");
        let e = parse_dummy(r#"[{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}, {"conversations": [{"from": "gpt", "value": "a"}]}]"#, f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dummy.json") && e.contains('2') && e.contains("conversations") && e.contains("human"), "{e}");
        let e = parse_dummy(r#"[{"conversations": [{"from": "human", "value": "a"}]}]"#, f).unwrap_err().to_string();
        assert!(e.contains("no turn 2"), "{e}");
        assert!(parse_dummy("{}", f).unwrap_err().to_string().contains("dummy.json"));
    }
}
