//! Conversations and chat templates. Templates are rendered with minijinja the way transformers
//! renders them with jinja2 (`trim_blocks`, `lstrip_blocks`, Python string methods,
//! `raise_exception`): the model's own template, or a named one shipped in `data/templates/chat/`
//! (Alpaca, Vicuna v1.1, Llama-2 chat, Dromedary; provenance in `data/SOURCES.md`).

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use super::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// What a model is asked: system, user and assistant turns, and optionally the start of the
/// assistant's next turn (`prefill`, e.g. `"The answer is"`) that the model continues. The prefill
/// is part of the prompt: it is appended verbatim after the rendered turns (include the separator
/// the format puts before an answer, e.g. a leading space after Vicuna's `ASSISTANT:`), and the
/// generated response is the text after it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<String>,
}

impl Conversation {
    /// One user turn.
    pub fn user(content: &str) -> Self {
        Self { messages: vec![Message::new("user", content)], prefill: None }
    }

    /// Puts a system message first.
    pub fn with_system(mut self, content: &str) -> Self {
        self.messages.insert(0, Message::new("system", content));
        self
    }

    pub fn with_prefill(mut self, prefill: Option<&str>) -> Self {
        self.prefill = prefill.map(str::to_string);
        self
    }

    /// Appends a turn.
    pub fn push(&mut self, role: &str, content: &str) {
        self.messages.push(Message::new(role, content));
    }
}

/// The chat templates shipped with runner (`data/templates/chat/<name>.jinja`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NamedTemplate {
    /// Stanford Alpaca's no-input prompt (`### Instruction:` / `### Response:`).
    Alpaca,
    /// FastChat's `vicuna_v1.1` (`USER: ... ASSISTANT: ...</s>`).
    VicunaV1_1,
    /// Meta's Llama-2 chat format (`[INST] <<SYS>>...`).
    Llama2Chat,
    /// Dromedary's `### User` / `### Dromedary` turns after a meta prompt.
    Dromedary,
    /// Dromedary's verbose-cloning teacher: `### Dromedary (extensive)`.
    DromedaryVerbose,
}

impl NamedTemplate {
    pub const ALL: [NamedTemplate; 5] = [Self::Alpaca, Self::VicunaV1_1, Self::Llama2Chat, Self::Dromedary, Self::DromedaryVerbose];

    /// The name used in specs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Alpaca => "alpaca",
            Self::VicunaV1_1 => "vicuna_v1.1",
            Self::Llama2Chat => "llama2_chat",
            Self::Dromedary => "dromedary",
            Self::DromedaryVerbose => "dromedary_verbose",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The known names, for error messages.
    pub fn names() -> String {
        Self::ALL.map(|t| format!("{:?}", t.name())).join(", ")
    }

    pub fn source(self) -> &'static str {
        match self {
            Self::Alpaca => include_str!("../../data/templates/chat/alpaca.jinja"),
            Self::VicunaV1_1 => include_str!("../../data/templates/chat/vicuna_v1.1.jinja"),
            Self::Llama2Chat => include_str!("../../data/templates/chat/llama2_chat.jinja"),
            Self::Dromedary => include_str!("../../data/templates/chat/dromedary.jinja"),
            Self::DromedaryVerbose => include_str!("../../data/templates/chat/dromedary_verbose.jinja"),
        }
    }

    /// The template with a tokenizer's special tokens (Llama-2 chat writes them between turns).
    /// None of these templates writes the first BOS: encode with the tokenizer's special tokens.
    pub fn template(self, bos_token: &str, eos_token: &str) -> ChatTemplate {
        ChatTemplate { source: self.source().to_string(), bos_token: bos_token.into(), eos_token: eos_token.into() }
    }
}

/// How a conversation becomes prompt text.
#[derive(Debug, Clone)]
pub enum ChatFormat {
    /// The message contents concatenated as they are (e.g. a prompt already rendered by a
    /// dataset's text template), then the prefill.
    Plain,
    /// A chat template with the generation prompt added, then the prefill.
    Template(ChatTemplate),
}

impl ChatFormat {
    pub fn render(&self, conversation: &Conversation) -> Result<String> {
        let mut text = match self {
            Self::Plain => conversation.messages.iter().map(|m| m.content.as_str()).collect(),
            Self::Template(t) => t.render(&conversation.messages, true)?,
        };
        text.push_str(conversation.prefill.as_deref().unwrap_or_default());
        Ok(text)
    }
}

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", &self.source).map_err(|e| ModelError::ChatTemplate(describe(&e)))?;
        let tmpl = env.get_template("chat").map_err(|e| ModelError::ChatTemplate(describe(&e)))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| ModelError::ChatTemplate(describe(&e)))
    }
}

/// The template's own message for `raise_exception`, minijinja's description otherwise.
fn describe(e: &Error) -> String {
    match e.detail() {
        Some(d) if e.kind() == ErrorKind::InvalidOperation => d.to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = ChatTemplate {
            source: "{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('roles must alternate') }}{% endif %}[{{ m.content.strip() }}]{% endfor %}".into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        };
        assert_eq!(t.render(&[Message::new("user", "  hi \n")], false).unwrap(), "[hi]");
        let err = t.render(&[Message::new("bad", "x")], false).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    /// System, user, assistant, user, and a prefill.
    fn two_turns(system: &str, prefill: &str) -> Conversation {
        let mut c = Conversation::user("Hi!").with_system(system).with_prefill(Some(prefill));
        c.push("assistant", "Hello.");
        c.push("user", "What is 2+2?");
        c
    }

    fn render(t: NamedTemplate, c: &Conversation) -> String {
        ChatFormat::Template(t.template("<s>", "</s>")).render(c).unwrap()
    }

    #[test]
    fn named_templates_render_two_turns() {
        use NamedTemplate::*;
        let cases = [
            (
                Alpaca,
                "The answer is",
                "Be brief.\n\n### Instruction:\nHi!\n\n### Response:\nHello.\n\n### Instruction:\nWhat is 2+2?\n\n### Response:\nThe answer is",
            ),
            (VicunaV1_1, " The answer is", "Be brief. USER: Hi! ASSISTANT: Hello.</s>USER: What is 2+2? ASSISTANT: The answer is"),
            (
                Llama2Chat,
                " The answer is",
                "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] What is 2+2? [/INST] The answer is",
            ),
            (
                Dromedary,
                "The answer is",
                "Be brief.\n\n### User\nHi!\n\n### Dromedary\nHello.\n\n### User\nWhat is 2+2?\n\n### Dromedary\nThe answer is",
            ),
            (
                DromedaryVerbose,
                "\nThe answer is",
                "Be brief.\n\n### User\nHi!\n\n### Dromedary (extensive)\nHello.\n\n### User\nWhat is 2+2?\n\n### Dromedary (extensive)\nThe answer is",
            ),
        ];
        for (t, prefill, expected) in cases {
            assert_eq!(render(t, &two_turns("Be brief.", prefill)), expected, "{}", t.name());
            assert_eq!(NamedTemplate::from_name(t.name()), Some(t));
        }
        assert_eq!(NamedTemplate::from_name("vicuna"), None);
    }

    #[test]
    fn named_templates_match_their_sources_for_one_turn() {
        use NamedTemplate::*;
        let one = Conversation::user("Hi!");
        // Booster's Alpaca prompt, byte for byte.
        let booster = include_str!("../../data/templates/alpaca_no_input.txt").replace("{instruction}", "Hi!");
        assert_eq!(render(Alpaca, &one), booster);
        let vicuna = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: Hi! ASSISTANT:";
        assert_eq!(render(VicunaV1_1, &one), vicuna);
        assert_eq!(render(Llama2Chat, &one), "[INST] Hi! [/INST]");
        // Dromedary's inference prompt: f"{meta_prompt}\n{instruction}\n\n### Dromedary\n" with the
        // meta prompt file (which ends with "### User") read and stripped.
        let meta = include_str!("../../data/templates/dromedary_verbose_prompt.txt");
        let official = format!("{}\nHi!\n\n### Dromedary\n", meta.trim());
        assert_eq!(render(Dromedary, &one.clone().with_system(meta)), official);
        assert_eq!(render(Dromedary, &one), "### User\nHi!\n\n### Dromedary\n");
        let teacher = format!("{}\nHi!\n\n### Dromedary (extensive)", meta.trim());
        assert_eq!(render(DromedaryVerbose, &one.clone().with_system(meta)), teacher);
    }

    #[test]
    fn named_templates_reject_turns_out_of_order() {
        for t in NamedTemplate::ALL {
            let mut c = Conversation::user("a");
            c.push("user", "b");
            let err = ChatFormat::Template(t.template("<s>", "</s>")).render(&c).unwrap_err().to_string();
            assert!(err.contains(t.name()) && err.contains("alternate"), "{}: {err}", t.name());
        }
    }

    #[test]
    fn plain_format_concatenates_and_appends_the_prefill() {
        let mut c = Conversation::user("Q: 1+1?\nA:").with_prefill(Some(" The answer is"));
        assert_eq!(ChatFormat::Plain.render(&c).unwrap(), "Q: 1+1?\nA: The answer is");
        c.prefill = None;
        c.push("assistant", " 2");
        assert_eq!(ChatFormat::Plain.render(&c).unwrap(), "Q: 1+1?\nA: 2");
    }
}
