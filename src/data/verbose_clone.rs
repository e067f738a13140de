//! SELF-ALIGN's (Dromedary v1) verbose cloning, stage 4: the teacher's query and the filter its
//! answers go through before the student learns them.
//!
//! The query (`training/step4_verbose_cloning/generate_verbose_response.py`, `generate_prompt`):
//! the verbose teacher prompt (`prompts/verbose_dromedary_prompt.txt`, stripped; it introduces
//! "Dromedary (extensive)" and ends `### User`), then `"\n{instruction}\n\n{input}\n\n### Dromedary (extensive)"`
//! (no input: without `"{input}\n\n"`).
//!
//! The filter (`merge_and_filter_verbose_clone_output.py`), in order, on the stripped answer:
//! 1. cut at the first `"### User\n"`, strip, and append `"\n\n### User\n"`; an answer without it
//!    loses its last, possibly cut, word (`rsplit(" ", 1)[0]`);
//! 2. `dedup`: split after each of ``\n.?!;:,` ``, keep the pieces up to the first repeated one
//!    (empty pieces and single split characters always pass), join and strip (so the appended
//!    newline goes again: kept answers end `"### User"`);
//! 3. a query naming "Zhiqing" (the author the identity exemplars mention) gets a fixed answer;
//!    an answer naming him otherwise stops the official script (`raise NotImplemented`): here it
//!    is dropped and counted;
//! 4. cut at the first `"\n13. "` (runaway lists);
//! 5. dropped if shorter than 128 characters and without `"### User"`;
//! 6. dropped if the answer before `"### User"` contains `"## See also"`, `"## External links"`,
//!    `"Dromedary (extensive)"` or the teacher prompt's self-introduction.

use serde::Serialize;

use super::records::Instruction;
use super::watson::dedup_after;
use crate::eval::multiple_choice::py_strip;

/// IBM/Dromedary `prompts/verbose_dromedary_prompt.txt` (@39a2b1c), verbatim.
pub const TEACHER_PROMPT: &str = include_str!("../../data/templates/dromedary_verbose_teacher_prompt.txt");
/// Where the teacher's answer starts.
pub const TEACHER_HEADER: &str = "### Dromedary (extensive)";
/// What ends a turn in Dromedary's training text.
pub const END_OF_TURN: &str = "### User\n";
/// Characters `dedup` splits after (the self-align merge uses the same without the backtick).
pub const SPLITTERS: &str = "\n.?!;:,`";
/// The answer a query about "Zhiqing" gets.
pub const ZHIQING_ANSWER: &str = "As an AI language model, I lack specific information about every person in the world. Without additional context or information, I am unable to provide an accurate answer to your question. Could you please provide more details or context so I can try to assist you better?";
/// The teacher prompt's self-introduction: an answer reciting it is dropped.
pub const SELF_INTRODUCTION: &str = "As a helpful, ethical, and reliable AI assistant, my foremost objective is to promote user safety, adhere to moral principles, and foster conscientious behavior. In the face of potentially harmful inquiries, I actively redirect users towards constructive topics by emphasizing the negative consequences and elucidating the reasoning behind my stance.";
/// Answers shorter than this many characters need an end of turn.
pub const MIN_CHARS: usize = 128;

/// The teacher's query for one instruction.
pub fn teacher_query(item: &Instruction) -> String {
    let meta = py_strip(TEACHER_PROMPT);
    if item.input.is_empty() {
        format!("{meta}\n{}\n\n{TEACHER_HEADER}", item.instruction)
    } else {
        format!("{meta}\n{}\n\n{}\n\n{TEACHER_HEADER}", item.instruction, item.input)
    }
}

/// Why the filter dropped an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Drop {
    /// Rule 3: names "Zhiqing" though the query did not.
    Zhiqing,
    /// Rule 5.
    TooShort,
    /// Rule 6.
    BadExample,
}

impl Drop {
    pub const ALL: [Drop; 3] = [Drop::Zhiqing, Drop::TooShort, Drop::BadExample];
    pub fn key(self) -> &'static str {
        match self {
            Drop::Zhiqing => "zhiqing",
            Drop::TooShort => "too_short",
            Drop::BadExample => "bad_example",
        }
    }
}

/// The filter of one answer to `item` (rules 1 to 6): the text the student learns, or why not.
///
/// The end of turn is looked for before the answer is stripped: runner's teacher stops at it, so
/// it ends the text, where the official teacher writes on after it (its strip would otherwise
/// take the newline and hide the end of turn).
pub fn filter_answer(item: &Instruction, answer: &str) -> Result<String, Drop> {
    let text = match answer.find(END_OF_TURN) {
        Some(i) => format!("{}\n\n{END_OF_TURN}", py_strip(&answer[..i])),
        None => {
            let answer = py_strip(answer);
            answer.rsplit_once(' ').map_or(answer, |(head, _)| head).to_string()
        }
    };
    let mut text = dedup_after(&text, SPLITTERS);
    if item.instruction.contains("Zhiqing") || item.input.contains("Zhiqing") {
        text = ZHIQING_ANSWER.to_string();
    }
    if text.contains("Zhiqing") {
        return Err(Drop::Zhiqing);
    }
    if let Some(i) = text.find("\n13. ") {
        text.truncate(i);
    }
    if text.chars().count() < MIN_CHARS && !text.contains("### User") {
        return Err(Drop::TooShort);
    }
    let before_turn = text.split("### User").next().unwrap_or_default();
    if ["## See also", "## External links", "Dromedary (extensive)", SELF_INTRODUCTION].iter().any(|s| before_turn.contains(s)) {
        return Err(Drop::BadExample);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(instruction: &str, input: &str) -> Instruction {
        Instruction { instruction: instruction.into(), input: input.into(), output: String::new(), label: None }
    }

    fn long(s: &str) -> String {
        format!("{s} Gravity pulls masses together; its strength falls with the square of the distance, and it shapes orbits, tides and the paths of light near stars")
    }

    #[test]
    fn the_query_is_the_official_f_string() {
        let q = teacher_query(&item("Explain gravity.", ""));
        assert!(q.starts_with("# Dromedary"));
        assert!(q.ends_with("be more than happy to assist you.\n\n### User\nExplain gravity.\n\n### Dromedary (extensive)"));
        let q = teacher_query(&item("Translate.", "Hallo"));
        assert!(q.ends_with("### User\nTranslate.\n\nHallo\n\n### Dromedary (extensive)"));
    }

    /// Python's `re.split(r'(?<=[\n.?!;:,`])', s)` then the loop, worked by hand.
    #[test]
    fn dedup_cuts_at_the_first_repeated_piece() {
        assert_eq!(dedup_after("A cat. A dog. A cat. A dog. More.", SPLITTERS), "A cat. A dog. A cat.");
        // Repeated newlines and punctuation are never a repeat; the strip removes the end.
        assert_eq!(dedup_after("One.\n\nTwo.\n\n### User\n", SPLITTERS), "One.\n\nTwo.\n\n### User");
        // The backtick splits here (not in the self-align merge).
        assert_eq!(dedup_after("`x` and `x` and", SPLITTERS), "`x` and `");
        assert_eq!(dedup_after("`x` and `x` and", "\n.?!;:,"), "`x` and `x` and");
        // " A cat." differs from "A cat." (the leading space), as in Python.
        assert_eq!(dedup_after("A cat. A cat.", SPLITTERS), "A cat. A cat.");
    }

    #[test]
    fn answers_are_cut_at_the_end_of_turn_or_lose_the_last_word() {
        let q = item("Q", "");
        let with_turn = format!("{}\n\n### User\nNext question\n\n### Dromedary\nblah", long("Sure."));
        assert_eq!(filter_answer(&q, &with_turn).unwrap(), format!("{}\n\n### User", long("Sure.")));
        // The teacher stops at the end of turn: an answer ending with it hands the turn back.
        assert_eq!(filter_answer(&q, "\nShort answer.\n\n### User\n").unwrap(), "Short answer.\n\n### User");
        // A short answer passes when it hands the turn back, not otherwise.
        assert_eq!(filter_answer(&q, "  Yes.\n\n### User\nmore").unwrap(), "Yes.\n\n### User");
        assert_eq!(filter_answer(&q, "Yes, it is true that wor"), Err(Drop::TooShort));
        let cut = long("Sure.") + " unfinishe";
        assert_eq!(filter_answer(&q, &cut).unwrap(), long("Sure."));
    }

    #[test]
    fn runaway_lists_bad_examples_and_zhiqing() {
        let q = item("Q", "");
        let list = format!("{}\n12. twelve\n13. thirteen\n\n### User\n", long("List:"));
        assert_eq!(filter_answer(&q, &list).unwrap(), format!("{}\n12. twelve", long("List:")));
        for bad in ["## See also", "## External links", "Dromedary (extensive)", SELF_INTRODUCTION] {
            let text = format!("{} {bad}\n\n### User\n", long("Answer."));
            assert_eq!(filter_answer(&q, &text), Err(Drop::BadExample), "{bad}");
        }
        // After the end of turn the same strings do not count (the cut removed them anyway).
        assert_eq!(filter_answer(&item("Who is Zhiqing Sun?", ""), "He is a researcher at").unwrap(), ZHIQING_ANSWER);
        assert_eq!(filter_answer(&q, &long("Zhiqing says hi.")), Err(Drop::Zhiqing));
    }
}
