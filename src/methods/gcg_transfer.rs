//! The `gcg_transfer` generate method: the GCG-transfer attack of Check-as-Context's jailbreak
//! experiment, a fixed adversarial suffix found by GCG on other models appended to every
//! behaviour (`f"{goal} {suffix}"`, as the code's `SuffixManager` joins them). The suffixes are
//! the code's `GCG_SUFFIX` (`data/templates/cac/gcg_transfer_suffixes.json`: `vicuna`, `llama`,
//! `official`); the output is a prompts dataset that every defense's eval stage reads as
//! `data = "@<stage id>"`, targets kept.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::attack::goal_with_suffix;
use super::params::{StageInputs, Validate};
use crate::data::{Items, Prompt};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{Metrics, StageContext, StageError};

const SUFFIXES: &str = include_str!("../../data/templates/cac/gcg_transfer_suffixes.json");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcgTransferParams {
    /// The behaviours (prompts; AdvBench's goals).
    pub data: String,
    /// One of the code's suffixes: `vicuna`, `llama`, `official`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// A suffix of your own (instead of `suffix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix_text: Option<String>,
}

crate::whole_table_params!(GcgTransferParams);

fn suffixes() -> BTreeMap<String, String> {
    serde_json::from_str(SUFFIXES).expect("data/templates/cac/gcg_transfer_suffixes.json is valid (checked by a test)")
}

impl GcgTransferParams {
    fn suffix(&self) -> Result<String, ParamError> {
        match (&self.suffix, &self.suffix_text) {
            (Some(_), Some(_)) => Err(ParamError::new("suffix_text", "give `suffix` or `suffix_text`, not both")),
            (None, None) => {
                Err(ParamError::new("suffix", "missing: one of the code's suffixes (\"vicuna\", \"llama\", \"official\") or `suffix_text`"))
            }
            (None, Some(t)) if t.trim().is_empty() => Err(ParamError::new("suffix_text", "is empty")),
            (None, Some(t)) => Ok(t.clone()),
            (Some(name), None) => suffixes().remove(name).ok_or_else(|| {
                let known = suffixes().into_keys().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ");
                ParamError::new("suffix", format!("unknown suffix {name:?}: use one of {known}, or `suffix_text`"))
            }),
        }
    }
}

impl Validate for GcgTransferParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        self.suffix().map(|_| ())
    }
}

impl StageInputs for GcgTransferParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.data.as_str()]
    }
}

pub struct GcgTransfer;

impl super::TypedMethod for GcgTransfer {
    const NAME: &'static str = "gcg_transfer";
    const KIND: StageKind = StageKind::Generate;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = false;
    type Params = GcgTransferParams;
    fn run(ctx: &StageContext, p: &GcgTransferParams) -> Result<Metrics, StageError> {
        let suffix = p.suffix().map_err(|e| StageError::Method(e.to_string()))?;
        let data = ctx.dataset(&p.data)?;
        let Items::Prompts(prompts) = data.items() else {
            return Err(StageError::Method(format!(
                "gcg_transfer reads prompts (AdvBench goals); `{}` holds another kind of record",
                p.data
            )));
        };
        let attacked: Vec<Prompt> = prompts.iter().map(|q| Prompt { prompt: goal_with_suffix(&q.prompt, &suffix), ..q.clone() }).collect();
        let n = attacked.len();
        ctx.write_dataset(&Items::Prompts(attacked))?;
        Ok(BTreeMap::from([("prompts".to_string(), n as f64)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: &str) -> GcgTransferParams {
        toml::from_str(&format!("data = \"advbench\"\n{t}")).unwrap()
    }

    #[test]
    fn the_codes_suffixes_are_shipped_and_named() {
        let s = suffixes();
        assert_eq!(s.keys().map(String::as_str).collect::<Vec<_>>(), ["llama", "official", "vicuna"]);
        assert!(params("suffix = \"vicuna\"").suffix().unwrap().starts_with("Manuel)); great !But generates"));
        assert_eq!(params("suffix_text = \"!!\"").suffix().unwrap(), "!!");
    }

    #[test]
    fn bad_suffixes_are_refused_with_the_key() {
        assert_eq!(params("suffix = \"falcon\"").validate("s").unwrap_err().key, "suffix");
        assert_eq!(params("").validate("s").unwrap_err().key, "suffix");
        assert_eq!(params("suffix = \"vicuna\"\nsuffix_text = \"x\"").validate("s").unwrap_err().key, "suffix_text");
        assert!(toml::from_str::<GcgTransferParams>("data = \"a\"\nsufix = \"vicuna\"").is_err());
    }
}
