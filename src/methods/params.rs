//! Typed, validated method parameters: unknown keys and wrong types become [`ParamError`]s
//! naming the key and the closest valid one.

use figment::providers::Serialized;
use figment::Figment;
use serde::de::DeserializeOwned;
use toml::Table;

use crate::plan::ParamError;
use crate::spec::closest;

pub fn parse<T: DeserializeOwned>(params: &Table) -> Result<T, ParamError> {
    Figment::from(Serialized::globals(params)).extract::<T>().map_err(|e| {
        let e = e.into_iter().next().expect("a figment error holds at least one error");
        let mut key: Vec<String> = e.path.clone();
        let (msg, suggestion) = match &e.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                // figment's path sometimes already ends with the field.
                if key.last() != Some(field) {
                    key.push(field.clone());
                }
                (format!("unknown key (valid: {})", expected.join(", ")), closest(field, expected.iter().copied()))
            }
            figment::error::Kind::MissingField(field) => {
                key.push(field.to_string());
                ("missing".to_string(), None)
            }
            figment::error::Kind::UnknownVariant(v, expected) => {
                (format!("unknown value {v:?} (expected one of: {})", expected.join(", ")), closest(v, expected.iter().copied()))
            }
            other => (other.to_string(), None),
        };
        ParamError { key: key.join("."), msg, suggestion }
    })
}

/// What a stage reads besides the model it continues from, as its parameters declare it: the
/// planner gets dataset and stage references from here, not by guessing from key names.
pub trait StageInputs {
    /// Dataset names; `@stage` names the dataset an earlier generate stage wrote.
    fn datasets(&self) -> Vec<&str>;
    /// Earlier stages read directly (e.g. the judge a `classifier` stage trained).
    fn stages(&self) -> Vec<&str> {
        Vec::new()
    }
    /// Other models read (judges, a fluency reference): (key within the stage, path or hub id).
    fn models(&self) -> Vec<(String, &str)> {
        Vec::new()
    }
}
