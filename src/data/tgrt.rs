//! SELF-ALIGN's (Dromedary v1) Topic-Guided Red-Teaming (TGRT) Self-Instruct, the text side: the
//! 20 adversarial question types with their seed questions, the topic brainstorm (prompt, parser,
//! topic filters, the per-type dedup and balancing of each growth round), and the question
//! generation (prompt from (type, topic) hints, parser, the merge step's one question per
//! (topic, type)), as `generate_tgrt_topic.py`, `deduplicate_tgrt_topic.py`,
//! `generate_tgrt_question.py` and `merge_tgrt_question.py` (IBM/Dromedary @39a2b1c) do them.
//! Pure functions: the `tgrt_topics` and `tgrt_questions` generate methods run the model.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::filter::{is_py_space, word_count};
use super::{DataError, Row, SeededRng};

/// The topic brainstorm meta prompt (one `{}`: the question type).
pub const TOPIC_PROMPT: &str = include_str!("../../data/templates/dromedary_tgrt_topic_brainstorm_prompt.txt");
pub const TOPIC_PROMPT_FILE: &str = "data/templates/dromedary_tgrt_topic_brainstorm_prompt.txt";
/// The question generation meta prompt (two `{}`: the hints, then the examples).
pub const QUESTION_PROMPT: &str = include_str!("../../data/templates/dromedary_tgrt_question_generation_prompt.txt");
pub const QUESTION_PROMPT_FILE: &str = "data/templates/dromedary_tgrt_question_generation_prompt.txt";
/// One seed question per adversarial type, with its topic.
pub const SEED_QUESTIONS_FILE: &str = "data/dromedary/tgrt_seed_questions.jsonl";
const SEED_QUESTIONS: &str = include_str!("../../data/dromedary/tgrt_seed_questions.jsonl");

/// Lines of a brainstorm output that are read (`result.split("\n")[:20]`).
pub const TOPIC_LINES: usize = 20;

/// A seed question of one adversarial type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedQuestion {
    pub topic: String,
    pub question_type: String,
    pub question: String,
}

/// Parses seed questions (JSON Lines: `topic`, `question_type`, `question`); errors name `file`
/// and the line.
pub fn parse_seed_questions(text: &str, file: &Path) -> Result<Vec<SeedQuestion>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: SeedQuestion =
            serde_json::from_str(line).map_err(|e| DataError::row(file, Row::Line(i + 1), format!("not a seed question: {e}")))?;
        out.push(q);
    }
    Ok(out)
}

/// The shipped seed questions ([`SEED_QUESTIONS_FILE`]): 20 types, one question each.
pub fn seed_questions() -> Result<Vec<SeedQuestion>, DataError> {
    parse_seed_questions(SEED_QUESTIONS, Path::new(SEED_QUESTIONS_FILE))
}

/// Python's `str.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

// ---------------------------------------------------------------------------------------------
// Topic brainstorm

/// The brainstorm prompt for a type: the meta prompt (stripped) with the type in its `{}`, a
/// blank line, then the topics so far as `"{i}. {topic}\n"`.
pub fn topic_prompt(meta: &str, question_type: &str, topics: &[String]) -> String {
    let mut prompt = py_strip(meta).replacen("{}", py_strip(question_type), 1) + "\n\n";
    for (i, t) in topics.iter().enumerate() {
        prompt.push_str(&format!("{}. {t}\n", i + 1));
    }
    prompt
}

/// Why a brainstormed line is not a topic (the official checks, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicDrop {
    /// More than three words.
    TooLong,
    /// Nothing but whitespace.
    Empty,
    /// The first character is not an ASCII capital letter.
    NotCapitalized,
    /// The last character is ASCII punctuation.
    EndsWithPunctuation,
}

impl TopicDrop {
    pub const ALL: [TopicDrop; 4] = [TopicDrop::TooLong, TopicDrop::Empty, TopicDrop::NotCapitalized, TopicDrop::EndsWithPunctuation];

    pub fn key(self) -> &'static str {
        match self {
            TopicDrop::TooLong => "too_long",
            TopicDrop::Empty => "empty",
            TopicDrop::NotCapitalized => "not_capitalized",
            TopicDrop::EndsWithPunctuation => "ends_with_punctuation",
        }
    }
}

/// The topics in a brainstorm output: its first 20 lines, each with the text before the first
/// `". "` removed (a line without one is taken whole), then checked: at most three words, not
/// blank, an ASCII capital first, no ASCII punctuation last. The topic is not stripped (a
/// leading space fails the capital check; a trailing space stays).
pub fn parse_topics(output: &str) -> Vec<Result<String, TopicDrop>> {
    output.split('\n').take(TOPIC_LINES).map(topic_of_line).collect()
}

fn topic_of_line(line: &str) -> Result<String, TopicDrop> {
    let topic = line.split_once(". ").map_or(line, |(_, rest)| rest);
    if word_count(topic) > 3 {
        Err(TopicDrop::TooLong)
    } else if py_strip(topic).is_empty() {
        Err(TopicDrop::Empty)
    } else if !topic.starts_with(|c: char| c.is_ascii_uppercase()) {
        Err(TopicDrop::NotCapitalized)
    } else if topic.ends_with(|c: char| c.is_ascii_punctuation()) {
        Err(TopicDrop::EndsWithPunctuation)
    } else {
        Ok(topic.to_string())
    }
}

/// What one pruning pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Same topic as an earlier one of the type, ignoring case.
    pub duplicates: usize,
    /// Cut so that every type has as many topics as the type with the fewest.
    pub balance: usize,
}

/// The topics of every type, types in order of first appearance (the growth rounds' files).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TopicPool {
    types: Vec<(String, Vec<String>)>,
}

/// One brainstorm query: a type and the topics its prompt lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicQuery {
    pub question_type: String,
    pub topics: Vec<String>,
}

impl TopicPool {
    /// The seed topics, one per type.
    pub fn from_seeds(seeds: &[SeedQuestion]) -> Self {
        let mut pool = Self::default();
        for s in seeds {
            pool.add(&s.question_type, &s.topic);
        }
        pool
    }

    /// Appends a topic to its type (a new type goes last).
    pub fn add(&mut self, question_type: &str, topic: &str) {
        match self.types.iter_mut().find(|(t, _)| t == question_type) {
            Some((_, topics)) => topics.push(topic.to_string()),
            None => self.types.push((question_type.to_string(), vec![topic.to_string()])),
        }
    }

    pub fn types(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.types.iter().map(|(t, v)| (t.as_str(), v.as_slice()))
    }

    /// All topics.
    pub fn len(&self) -> usize {
        self.types.iter().map(|(_, v)| v.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each type's topics deduplicated ignoring case (the first spelling stays), then every type
    /// cut to the smallest type's count, as each growth round and `deduplicate_tgrt_topic.py`
    /// start.
    pub fn dedup_and_balance(&mut self) -> Pruned {
        let mut pruned = Pruned::default();
        for (_, topics) in &mut self.types {
            let mut seen = HashSet::new();
            let before = topics.len();
            topics.retain(|t| seen.insert(t.to_lowercase()));
            pruned.duplicates += before - topics.len();
        }
        let min = self.types.iter().map(|(_, v)| v.len()).min().unwrap_or(0);
        for (_, topics) in &mut self.types {
            pruned.balance += topics.len() - min;
            topics.truncate(min);
        }
        pruned
    }

    /// Cuts every type to its first `max` topics (runner's bound on a round's queries; the
    /// official rounds have none); returns how many went.
    pub fn cap(&mut self, max: usize) -> usize {
        let mut cut = 0;
        for (_, topics) in &mut self.types {
            cut += topics.len().saturating_sub(max);
            topics.truncate(max);
        }
        cut
    }

    /// A growth round's queries: one per topic of each type. A type with fewer than
    /// `2 * examples` topics asks with each topic alone; otherwise, once per topic, its list is
    /// shuffled in place and the first `examples` topics are listed (so the pool keeps the last
    /// shuffled order, as the official round writes it).
    pub fn round_queries(&mut self, examples: usize, rng: &mut SeededRng) -> Vec<TopicQuery> {
        let mut out = Vec::new();
        for (question_type, topics) in &mut self.types {
            if topics.len() < examples * 2 {
                out.extend(topics.iter().map(|t| TopicQuery { question_type: question_type.clone(), topics: vec![t.clone()] }));
            } else {
                for _ in 0..topics.len() {
                    rng.shuffle(topics);
                    out.push(TopicQuery { question_type: question_type.clone(), topics: topics[..examples].to_vec() });
                }
            }
        }
        out
    }

    /// Every (type, topic), type by type.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.types.iter().flat_map(|(t, v)| v.iter().map(move |x| (t.clone(), x.clone()))).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Question generation

/// A type as the hints name it: "Questions" becomes "Instructions".
pub fn instruction_type(question_type: &str) -> String {
    question_type.replace("Questions", "Instructions")
}

/// A (type, topic) to write a question for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hint {
    pub question_type: String,
    pub topic: String,
}

/// The question prompt and the hint lines a generated line must start with. The hints are the
/// examples' (type, topic) followed by `hints`, as `"{i}. type: {type}, topic: {topic}"` with
/// [`instruction_type`]; the examples are the first of them with `", instruction: {question}"`.
/// The meta prompt (stripped) takes `"\n"` + the hint lines and `"\n"` + the example lines in its
/// two `{}`, and the prompt ends with a newline.
pub fn question_prompt(meta: &str, examples: &[&SeedQuestion], hints: &[Hint]) -> (String, Vec<String>) {
    let all: Vec<(&str, &str)> = examples
        .iter()
        .map(|e| (e.question_type.as_str(), e.topic.as_str()))
        .chain(hints.iter().map(|h| (h.question_type.as_str(), h.topic.as_str())))
        .collect();
    let prefixes: Vec<String> =
        all.iter().enumerate().map(|(i, (ty, topic))| format!("{}. type: {}, topic: {topic}", i + 1, instruction_type(ty))).collect();
    let example_lines: Vec<String> = prefixes.iter().zip(examples).map(|(p, e)| format!("{p}, instruction: {}", e.question)).collect();
    let filled = [format!("\n{}", prefixes.join("\n")), format!("\n{}", example_lines.join("\n"))];
    let mut prompt = String::new();
    for (i, part) in py_strip(meta).split("{}").enumerate() {
        if i > 0 {
            prompt.push_str(filled.get(i - 1).map_or("{}", String::as_str));
        }
        prompt.push_str(part);
    }
    prompt.push('\n');
    (prompt, prefixes)
}

/// A line of a question generation that starts with a hint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GeneratedQuestion {
    /// Index into the prompt's hint lines.
    pub hint: usize,
    /// The text after the last `"instruction: "` (the whole line if there is none), stripped.
    pub instruction: String,
}

/// The questions in an output: the stripped output's lines except the last (it may be cut off),
/// each stripped; blank lines are skipped; a line is a question if it starts with one of
/// `prefixes` (the first that matches), else `None`.
pub fn parse_questions(output: &str, prefixes: &[String]) -> Vec<Option<GeneratedQuestion>> {
    let lines: Vec<&str> = py_strip(output).split('\n').collect();
    lines[..lines.len() - 1]
        .iter()
        .map(|l| py_strip(l))
        .filter(|l| !l.is_empty())
        .map(|line| {
            prefixes.iter().position(|p| line.starts_with(p.as_str())).map(|hint| GeneratedQuestion {
                hint,
                instruction: py_strip(line.rsplit("instruction: ").next().unwrap_or(line)).to_string(),
            })
        })
        .collect()
}

/// The (topic, type) the merge step keeps one question for, read back from a hint line as the
/// official script does: the text after the last `"topic: "`, and the text after the last
/// `"type: "` up to its first comma (the type as the hint spells it), both stripped.
pub fn hint_key(prefix: &str) -> (String, String) {
    let topic = py_strip(prefix.rsplit("topic: ").next().unwrap_or(prefix)).to_string();
    let after_type = prefix.rsplit("type: ").next().unwrap_or(prefix);
    let question_type = py_strip(after_type.split(',').next().unwrap_or(after_type)).to_string();
    (topic, question_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_types_one_seed_question_each() {
        let seeds = seed_questions().unwrap();
        assert_eq!(seeds.len(), 20);
        let types: HashSet<&str> = seeds.iter().map(|s| s.question_type.as_str()).collect();
        assert_eq!(types.len(), 20);
        assert_eq!(seeds[0].topic, "Wedding");
        assert_eq!(seeds[19].question, "Who will win the presidential election in 2028?");
        let e = parse_seed_questions("{\"topic\": \"x\"}\n", Path::new("q.jsonl")).unwrap_err();
        assert!(e.to_string().starts_with("q.jsonl: line 1: not a seed question"), "{e}");
    }

    #[test]
    fn the_topic_prompt_renders_byte_for_byte() {
        assert_eq!(TOPIC_PROMPT.matches("{}").count(), 1);
        let got = topic_prompt(TOPIC_PROMPT, " Questions that require cultural context ", &["Wedding".into(), "Funeral Rites".into()]);
        let want = "You are asked to come up with a set of 10 diverse topics for a specific question type.\n\n\
Here are the requirements:\n\n\
1. Try not to repeat the words for each topic to maximize diversity.\n\
2. Each topic should contain up to three words.\n\
3. Each topic should be a noun phrase, its first word should be capitalized.\n\
4. The topics should be closely related to the given question type: Questions that require cultural context.\n\n\
List of 10 topics:\n\n1. Wedding\n2. Funeral Rites\n";
        assert_eq!(got, want);
    }

    #[test]
    fn topic_lines_are_parsed_and_filtered_as_the_official_script() {
        let lines = [
            ("Honeymoon", Ok("Honeymoon")),          // no numbering: the line itself
            ("7. Tea Ceremony", Ok("Tea Ceremony")), //
            ("8. Traditional dance of the region", Err(TopicDrop::TooLong)),
            ("9. ", Err(TopicDrop::Empty)), // nothing after the number
            ("", Err(TopicDrop::Empty)),    // a blank line
            ("10. lowercase topic", Err(TopicDrop::NotCapitalized)),
            ("11. Greetings!", Err(TopicDrop::EndsWithPunctuation)),
            ("12.Dowry", Err(TopicDrop::NotCapitalized)),        // no ". ": starts with a digit
            ("13. Gift Giving ", Ok("Gift Giving ")),            // not stripped
            (" 14. Leading Space", Ok("Leading Space")),         // the text before ". " goes
            ("15.  Two Spaces", Err(TopicDrop::NotCapitalized)), // " Two Spaces"
            ("16. Mr. Smith", Ok("Mr. Smith")),                  // only the first ". " splits
            ("17. Ça Va", Err(TopicDrop::NotCapitalized)),       // "Ç" is no ASCII capital
            ("18. The Rock 'n' Roll", Err(TopicDrop::TooLong)),  // four words
        ];
        let out: Vec<&str> = lines.iter().map(|(l, _)| *l).collect();
        let want: Vec<Result<String, TopicDrop>> = lines.iter().map(|(_, w)| w.map(str::to_string)).collect();
        assert_eq!(parse_topics(&out.join("\n")), want);
    }

    #[test]
    fn only_the_first_twenty_lines_count() {
        let out: String = (1..=25).map(|i| format!("{i}. Topic {}\n", char::from(b'A' + i as u8))).collect();
        let got = parse_topics(&out);
        assert_eq!(got.len(), 20);
        assert!(got.iter().all(Result::is_ok));
    }

    fn pool(entries: &[(&str, &str)]) -> TopicPool {
        let mut p = TopicPool::default();
        for (t, x) in entries {
            p.add(t, x);
        }
        p
    }

    #[test]
    fn dedup_ignores_case_and_balance_cuts_to_the_smallest_type() {
        let mut p = pool(&[("A", "Rain"), ("B", "Sun"), ("A", "rain"), ("A", "Snow"), ("B", "Moon"), ("A", "Hail"), ("B", "SUN")]);
        let pruned = p.dedup_and_balance();
        assert_eq!(pruned, Pruned { duplicates: 2, balance: 1 });
        assert_eq!(
            p.pairs(),
            vec![("A".into(), "Rain".into()), ("A".into(), "Snow".into()), ("B".into(), "Sun".into()), ("B".into(), "Moon".into())]
        );
        assert_eq!(p.cap(1), 2);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn round_queries_list_one_topic_until_a_type_has_ten() {
        let seeds = seed_questions().unwrap();
        let mut p = TopicPool::from_seeds(&seeds);
        let mut rng = SeededRng::new(3);
        let q = p.round_queries(5, &mut rng);
        assert_eq!(q.len(), 20);
        assert_eq!(q[0], TopicQuery { question_type: seeds[0].question_type.clone(), topics: vec!["Wedding".into()] });
        // Ten topics: ten queries of five topics each, drawn from the type's (reshuffled) list.
        let mut p = pool(&(0..10).map(|i| ("T", ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"][i])).collect::<Vec<_>>());
        let before: HashSet<String> = p.pairs().into_iter().map(|(_, t)| t).collect();
        let q = p.round_queries(5, &mut rng);
        assert_eq!(q.len(), 10);
        assert!(q.iter().all(|x| x.topics.len() == 5 && x.topics.iter().all(|t| before.contains(t))));
        let distinct: HashSet<&Vec<String>> = q.iter().map(|x| &x.topics).collect();
        assert!(distinct.len() > 1, "shuffled per query");
        let after: HashSet<String> = p.pairs().into_iter().map(|(_, t)| t).collect();
        assert_eq!(before, after);
        // Nine topics: one query per topic, each alone.
        let mut p = pool(&(0..9).map(|i| ("T", ["A", "B", "C", "D", "E", "F", "G", "H", "I"][i])).collect::<Vec<_>>());
        assert!(p.round_queries(5, &mut rng).iter().all(|x| x.topics.len() == 1));
    }

    fn seed(ty: &str, topic: &str, q: &str) -> SeedQuestion {
        SeedQuestion { topic: topic.into(), question_type: ty.into(), question: q.into() }
    }

    #[test]
    fn the_question_prompt_renders_byte_for_byte() {
        assert_eq!(QUESTION_PROMPT.matches("{}").count(), 2);
        let a = seed("Questions that require cultural context", "Wedding", "How should I celebrate weddings?");
        let b = seed("Questions that require scientific knowledge", "Water", "What is the chemical formula of water?");
        let hints = [Hint { question_type: "Questions that require legal expertise".into(), topic: "Tax {}".into() }];
        let (prompt, prefixes) = question_prompt(QUESTION_PROMPT, &[&a, &b], &hints);
        let want = "You are asked to come up with a set of 20 diverse instructions that a machine learning model can't answer, or will answer with the wrong facts.\n\n\
Here are the requirements:\n\n\
1. Try not to repeat the words for each topic to maximize diversity.\n\
2. The language used for the instruction also should be diverse. For example, you should combine questions with imperative instructions.\n\
3. The type of instructions should be diverse. The list should include diverse types of tasks like open-ended generation, classification, editing, etc.\n\
4. The instructions should be in English.\n\
5. Each instruction should be short and concise, as a single sentence. Either an imperative sentence or a question is permitted.\n\
6. I will give you instruction types and hints to help you brainstorm the instructions.\n\n\
20 Hints:\n\n\
1. type: Instructions that require cultural context, topic: Wedding\n\
2. type: Instructions that require scientific knowledge, topic: Water\n\
3. type: Instructions that require legal expertise, topic: Tax {}\n\n\
20 Instructions:\n\n\
1. type: Instructions that require cultural context, topic: Wedding, instruction: How should I celebrate weddings?\n\
2. type: Instructions that require scientific knowledge, topic: Water, instruction: What is the chemical formula of water?\n";
        assert_eq!(prompt, want);
        assert_eq!(prefixes.len(), 3);
        assert_eq!(prefixes[2], "3. type: Instructions that require legal expertise, topic: Tax {}");
    }

    #[test]
    fn generated_lines_are_matched_to_hints() {
        let prefixes = vec![
            "1. type: Instructions that require cultural context, topic: Wedding".to_string(),
            "2. type: Instructions that require legal expertise, topic: Tax".to_string(),
            "3. type: Instructions that require personal context, topic: Diet".to_string(),
        ];
        let out = "  3. type: Instructions that require personal context, topic: Diet, instruction: What should I eat tonight?\n\
                   \n\
                   2. type: Instructions that require legal expertise, topic: Taxes, instruction: Is this legal?\n\
                   4. type: Instructions that require legal expertise, topic: Tax, instruction: Unknown hint number\n\
                   Just some text\n\
                     1. type: Instructions that require cultural context, topic: Wedding  \n\
                   1. type: Instructions that require cultural context, topic: Wedding, instruction: Cut off at the len";
        let got = parse_questions(out, &prefixes);
        let q = |hint: usize, i: &str| Some(GeneratedQuestion { hint, instruction: i.into() });
        assert_eq!(
            got,
            vec![
                q(2, "What should I eat tonight?"),
                // "Tax" is a prefix of "Taxes": the official startswith takes it.
                q(1, "Is this legal?"),
                None,
                None,
                // No "instruction: ": the whole (stripped) line is the instruction.
                q(0, "1. type: Instructions that require cultural context, topic: Wedding"),
            ]
        );
        // One line only: it is the last and is dropped.
        assert!(parse_questions(&format!("{}, instruction: Why?", prefixes[0]), &prefixes).is_empty());
        assert!(parse_questions("", &prefixes).is_empty());
    }

    #[test]
    fn hint_keys_read_topic_and_type_back() {
        let (topic, ty) = hint_key("6. type: Instructions that require legal expertise, topic: Paris, France");
        assert_eq!((topic.as_str(), ty.as_str()), ("Paris, France", "Instructions that require legal expertise"));
        assert_eq!(instruction_type("Questions that require Questions"), "Instructions that require Instructions");
    }
}
