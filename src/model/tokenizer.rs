//! Text <-> token ids: HF `tokenizer.json` through the `tokenizers` crate, special tokens and
//! chat template from `tokenizer_config.json` / `chat_template.jinja`, or all of it rebuilt from
//! GGUF metadata (see `gguf_tokenizer`).

use serde_json::Value;
use std::path::{Path, PathBuf};

use super::chat::{ChatTemplate, Message};
use super::{ModelError, Result};

pub struct TextTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub path: PathBuf,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub chat_template: Option<String>,
}

impl TextTokenizer {
    /// Reads `tokenizer.json` and, when present, `tokenizer_config.json` and `chat_template.jinja`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer { path: path.clone(), msg: e.to_string() })?;
        let mut me = Self { inner, path, bos_token: None, eos_token: None, pad_token: None, chat_template: None };
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
            let cfg: Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Tokenizer { path: cfg_path.clone(), msg: e.to_string() })?;
            me.bos_token = token_string(cfg.get("bos_token"));
            me.eos_token = token_string(cfg.get("eos_token"));
            me.pad_token = token_string(cfg.get("pad_token"));
            me.chat_template = match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: transformers uses the one named "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            };
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            me.chat_template = Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?);
        }
        Ok(me)
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer { path: self.path.clone(), msg: e.to_string() })
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| ModelError::Tokenizer { path: self.path.clone(), msg: e.to_string() })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids above `above` whose piece begins a word: starts with the word-boundary marker
    /// (SentencePiece's `▁`, byte-level BPE's `Ġ`) and is not only markers at both ends. This is
    /// llama_dromedary's `get_frequency_penalty_set` (`IdToPiece(i).startswith("▁") and not
    /// endswith("▁")`, ids above `frequency_penalty_min_range`) for either tokenizer family.
    pub fn word_start_ids(&self, above: u32) -> std::collections::HashSet<u32> {
        self.inner
            .get_vocab(false)
            .into_iter()
            .filter(|(piece, id)| *id > above && ['▁', 'Ġ'].iter().any(|&m| piece.starts_with(m) && !piece.ends_with(m)))
            .map(|(_, id)| id)
            .collect()
    }

    /// The contents of every special added token (control tokens such as `<|im_end|>`).
    pub fn special_tokens(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.get_added_tokens_decoder().into_values().filter(|t| t.special).map(|t| t.content).collect();
        v.sort();
        v
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_id(t))
    }

    /// The id used to pad batches: the pad token, else eos, else 0 (masked out either way).
    pub fn pad_id(&self) -> u32 {
        self.pad_token.as_deref().and_then(|t| self.token_id(t)).or_else(|| self.eos_id()).unwrap_or(0)
    }

    pub fn template(&self) -> Result<ChatTemplate> {
        let source = self
            .chat_template
            .clone()
            .ok_or_else(|| ModelError::ChatTemplate(format!("{}: the tokenizer has no chat template", self.path.display())))?;
        Ok(ChatTemplate {
            source,
            bos_token: self.bos_token.clone().unwrap_or_default(),
            eos_token: self.eos_token.clone().unwrap_or_default(),
        })
    }

    /// Renders the chat template (as `apply_chat_template(..., tokenize=False)`).
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.template()?.render(messages, add_generation_prompt)
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` (an AddedToken) -> `"<s>"`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}
