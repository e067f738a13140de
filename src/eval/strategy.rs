//! Inference strategies: how a generation metric turns its conversations into final responses.
//! A strategy gets the conversations and a handle to the one generation routine, and may
//! generate several rounds (e.g. answer, then a follow-up turn that asks the model to check its
//! answer); it returns, per conversation, the final response and every turn before it.
//!
//! | `strategy` | rounds |
//! |---|---|
//! | `{ kind = "plain" }` (default) | one generation per conversation |
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

/// `strategy = { kind = "..." }` of a generation metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StrategySpec {
    /// A struct variant, so that unknown keys beside `kind` are errors.
    Plain {},
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

    pub fn build(&self) -> Box<dyn Strategy> {
        match self {
            Self::Plain {} => Box::new(Plain),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
