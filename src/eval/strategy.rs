//! Inference strategies: how a generation metric turns its conversations into final responses.
//! A strategy gets the conversations and a handle to the one generation routine, and may
//! generate several rounds (e.g. answer, then a follow-up turn that asks the model to check its
//! answer); it returns, per conversation, the final response and every turn before it.
//!
//! | `strategy` | rounds |
//! |---|---|
//! | `{ kind = "plain" }` (default) | one generation per conversation |
//! | `{ kind = "hint", suffix = "...", system = "...", prefill = "..." }` | one generation, with text added to what the model is asked |
//!
//! Adding a strategy: a type implementing [`Strategy`], a variant of [`StrategySpec`] with its
//! options, and its arm in [`StrategySpec::build`].

use serde::{Deserialize, Serialize};

use super::generation::{Generator, Response};
use crate::model::chat::Conversation;
use crate::model::Result;

/// What a strategy generates through.
pub trait Generate {
    /// The prompt text of a conversation, as the model will see it.
    fn render(&self, conversation: &Conversation) -> Result<String>;
    /// One response per conversation, in order.
    fn generate(&self, conversations: &[Conversation]) -> Result<Vec<Response>>;
}

impl Generate for Generator<'_> {
    fn render(&self, conversation: &Conversation) -> Result<String> {
        Generator::render(self, conversation)
    }
    fn generate(&self, conversations: &[Conversation]) -> Result<Vec<Response>> {
        Generator::generate(self, conversations)
    }
}

/// One earlier round of a multi-round strategy, as written to the per-sample records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Turn {
    /// The rendered prompt of the round (prefill included).
    pub prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill: Option<String>,
    /// The text generated in the round (without the prefill).
    pub response: String,
}

impl From<&Response> for Turn {
    fn from(r: &Response) -> Self {
        Self { prompt: r.prompt.clone(), prefill: r.prefill.clone(), response: r.text.clone() }
    }
}

/// The result of a strategy for one conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The response that the metric scores.
    pub response: Response,
    /// The rounds before it, in order (empty for one-round strategies).
    pub turns: Vec<Turn>,
}

pub trait Strategy {
    fn name(&self) -> &str;
    /// One outcome per conversation, in order.
    fn run(&self, conversations: &[Conversation], generator: &dyn Generate) -> Result<Vec<Outcome>>;
}

/// One generation per conversation.
pub struct Plain;

impl Strategy for Plain {
    fn name(&self) -> &str {
        "plain"
    }
    fn run(&self, conversations: &[Conversation], generator: &dyn Generate) -> Result<Vec<Outcome>> {
        Ok(generator.generate(conversations)?.into_iter().map(|response| Outcome { response, turns: Vec::new() }).collect())
    }
}

/// One generation per conversation, with text added to what the model is asked: a suffix to the
/// last user message (mistake analysis's guided response generation and its induction hint), a
/// system message, appended to the conversation's own if it has one (a Self-reminder), and an
/// assistant prefill the answer continues (Chain of Hindsight's "A good answer:"); `stop` cuts the
/// response where that text starts (Chain of Hindsight's "A bad answer:"). The suffix
/// goes after the user message, so it needs a chat format (`prompt_format = "chat"` or a named
/// one): with `"template"` the whole rendered template is the user message.
pub struct Hint {
    pub suffix: Option<String>,
    pub system: Option<String>,
    pub prefill: Option<String>,
    pub stop: Option<String>,
}

impl Hint {
    /// The conversation as the model is asked it.
    pub fn apply(&self, conversation: &Conversation) -> Conversation {
        let mut c = conversation.clone();
        if let Some(suffix) = &self.suffix {
            if let Some(user) = c.messages.iter_mut().rev().find(|m| m.role == "user") {
                user.content.push_str(suffix);
            }
        }
        if let Some(system) = &self.system {
            match c.messages.iter_mut().find(|m| m.role == "system") {
                Some(own) => own.content.push_str(system),
                None => c = c.with_system(system),
            }
        }
        if let Some(prefill) = &self.prefill {
            c.prefill = Some(format!("{}{prefill}", c.prefill.unwrap_or_default()));
        }
        c
    }
}

impl Strategy for Hint {
    fn name(&self) -> &str {
        "hint"
    }
    fn run(&self, conversations: &[Conversation], generator: &dyn Generate) -> Result<Vec<Outcome>> {
        let hinted: Vec<Conversation> = conversations.iter().map(|c| self.apply(c)).collect();
        let mut outcomes = Plain.run(&hinted, generator)?;
        if let Some(stop) = self.stop.as_deref().filter(|s| !s.is_empty()) {
            for o in &mut outcomes {
                if let Some(i) = o.response.text.find(stop) {
                    o.response.text.truncate(i);
                    let kept = o.response.text.trim_end().len();
                    o.response.text.truncate(kept);
                }
            }
        }
        Ok(outcomes)
    }
}

/// `strategy = { kind = "..." }` of a generation metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StrategySpec {
    /// A struct variant, so that unknown keys beside `kind` are errors.
    Plain {},
    /// See [`Hint`]; at least one of the three.
    Hint {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        suffix: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefill: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop: Option<String>,
    },
}

impl Default for StrategySpec {
    fn default() -> Self {
        Self::Plain {}
    }
}

impl StrategySpec {
    pub fn is_plain(&self) -> bool {
        matches!(self, Self::Plain {})
    }

    /// Checks values the types do not express: (key, message).
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        match self {
            Self::Plain {} => Ok(()),
            Self::Hint { suffix, system, prefill, .. } => {
                if [suffix, system, prefill].iter().all(|t| t.as_deref().unwrap_or_default().is_empty()) {
                    return Err(("suffix".into(), "a hint needs a non-empty `suffix`, `system` or `prefill`".into()));
                }
                Ok(())
            }
        }
    }

    pub fn build(&self) -> Box<dyn Strategy> {
        match self {
            Self::Plain {} => Box::new(Plain),
            Self::Hint { suffix, system, prefill, stop } => {
                Box::new(Hint { suffix: suffix.clone(), system: system.clone(), prefill: prefill.clone(), stop: stop.clone() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::chat::Message;
    use crate::model::generate::FinishReason;
    use std::cell::RefCell;

    /// Answers with the number of messages of each conversation and records what it was asked.
    struct Counting {
        asked: RefCell<Vec<Vec<Conversation>>>,
    }

    impl Generate for Counting {
        fn render(&self, c: &Conversation) -> Result<String> {
            Ok(c.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("|"))
        }
        fn generate(&self, cs: &[Conversation]) -> Result<Vec<Response>> {
            self.asked.borrow_mut().push(cs.to_vec());
            cs.iter()
                .map(|c| {
                    Ok(Response {
                        prompt: self.render(c)?,
                        prefill: c.prefill.clone(),
                        text: c.messages.len().to_string(),
                        token_ids: vec![],
                        finish: FinishReason::Length,
                    })
                })
                .collect()
        }
    }

    #[test]
    fn plain_generates_once_and_has_no_turns() {
        let g = Counting { asked: RefCell::new(Vec::new()) };
        let cs = [Conversation::user("a"), Conversation::user("b").with_system("s")];
        let out = StrategySpec::default().build().run(&cs, &g).unwrap();
        assert_eq!(g.asked.borrow().len(), 1);
        assert_eq!(out.iter().map(|o| o.response.text.as_str()).collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(out[1].response.prompt, "s|b");
        assert!(out.iter().all(|o| o.turns.is_empty()));
    }

    #[test]
    fn hint_adds_its_texts_to_what_the_model_is_asked() {
        let g = Counting { asked: RefCell::new(Vec::new()) };
        let spec: StrategySpec =
            toml::from_str("kind = \"hint\"\nsuffix = \" (harmless)\"\nsystem = \" Be safe.\"\nprefill = \"A good answer:\"").unwrap();
        spec.check().unwrap();
        let cs = [Conversation::user("q1"), Conversation::user("q2").with_system("Own.").with_prefill(Some("P "))];
        let out = spec.build().run(&cs, &g).unwrap();
        let asked = &g.asked.borrow()[0];
        assert_eq!(asked[0].messages, [Message::new("system", " Be safe."), Message::new("user", "q1 (harmless)")]);
        assert_eq!(asked[0].prefill.as_deref(), Some("A good answer:"));
        assert_eq!(asked[1].messages, [Message::new("system", "Own. Be safe."), Message::new("user", "q2 (harmless)")]);
        assert_eq!(asked[1].prefill.as_deref(), Some("P A good answer:"));
        // The conversations the metric built are left as they were; the response shows the hinted prompt.
        assert_eq!(cs[0].messages.len(), 1);
        assert_eq!(out[0].response.prompt, " Be safe.|q1 (harmless)");
        assert!(out.iter().all(|o| o.turns.is_empty()));
        // Only the user's last message gets the suffix.
        let mut c = Conversation::user("a");
        c.push("assistant", "b");
        c.push("user", "c");
        let h = Hint { suffix: Some("!".into()), system: None, prefill: None, stop: None }.apply(&c);
        assert_eq!(h.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["a", "b", "c!"]);
    }

    #[test]
    fn hint_cuts_the_response_at_its_stop_text() {
        // Counting answers with the message count: "1" for one message; a stop text in it cuts it.
        let g = Counting { asked: RefCell::new(Vec::new()) };
        let spec: StrategySpec = toml::from_str("kind = \"hint\"\nprefill = \"A good answer:\"\nstop = \"1\"").unwrap();
        assert_eq!(spec.build().run(&[Conversation::user("q")], &g).unwrap()[0].response.text, "");
        let spec: StrategySpec = toml::from_str("kind = \"hint\"\nprefill = \"A good answer:\"\nstop = \"bad\"").unwrap();
        assert_eq!(spec.build().run(&[Conversation::user("q")], &g).unwrap()[0].response.text, "1");
    }

    #[test]
    fn an_empty_hint_is_refused() {
        let spec: StrategySpec = toml::from_str("kind = \"hint\"\nsuffix = \"\"").unwrap();
        assert_eq!(spec.check().unwrap_err().0, "suffix");
        assert!(toml::from_str::<StrategySpec>("kind = \"hint\"\nsufix = \"x\"").is_err());
    }

    #[test]
    fn specs_parse_with_plain_as_default() {
        #[derive(Deserialize)]
        struct M {
            #[serde(default)]
            strategy: StrategySpec,
        }
        assert!(toml::from_str::<M>("").unwrap().strategy.is_plain());
        assert!(toml::from_str::<M>("strategy = { kind = \"plain\" }").unwrap().strategy.is_plain());
        assert!(toml::from_str::<M>("strategy = { kind = \"cac\" }").is_err());
        assert!(toml::from_str::<M>("strategy = { kind = \"plain\", rounds = 2 }").is_err());
        assert_eq!(serde_json::to_string(&StrategySpec::Plain {}).unwrap(), r#"{"kind":"plain"}"#);
    }
}
