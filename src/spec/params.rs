//! Typed, validated parameters from the spec's free-form tables (stage parameters, `[data.*]`):
//! unknown keys and wrong types become [`ParamError`]s naming the key and the closest valid one.

use figment::providers::Serialized;
use figment::Figment;
use serde::de::{self, DeserializeOwned, Visitor};
use toml::Table;

use super::closest;

/// A parameter that failed validation: its key within the table, what is wrong, and the closest
/// valid key for a typo.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    pub key: String,
    pub msg: String,
    pub suggestion: Option<String>,
}

impl ParamError {
    pub fn new(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Self { key: key.into(), msg: msg.into(), suggestion: None }
    }

    /// The same error for a table nested under `prefix` (e.g. `booster`).
    pub fn under(mut self, prefix: &str) -> Self {
        self.key = if self.key.is_empty() { prefix.to_string() } else { format!("{prefix}.{}", self.key) };
        self
    }
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key `{}`: {}", self.key, self.msg)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

/// Deserializes `T` from a table. With `#[serde(deny_unknown_fields)]` on `T`, an unknown key is
/// an error that names the closest valid key.
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

/// The field names of a struct deserialized with serde's derive (without `flatten`), read from
/// what the derived code passes to `deserialize_struct`.
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit unit_struct
            newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

/// A number that must be finite and lie in `[lo, hi]`.
pub fn check_range(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), ParamError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        let range = if hi.is_infinite() { format!("at least {lo}") } else { format!("in [{lo}, {hi}]") };
        Err(ParamError::new(key, format!("{v} is out of range (must be a finite number {range})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Probe {
        alpha: f64,
        #[serde(default)]
        beta: Option<u32>,
    }

    #[test]
    fn field_names_and_typo_suggestions() {
        assert_eq!(field_names::<Probe>(), &["alpha", "beta"]);
        let t: Table = toml::from_str("alpha = 1.0\nbeat = 2").unwrap();
        let e = parse::<Probe>(&t).unwrap_err();
        assert_eq!((e.key.as_str(), e.suggestion.as_deref()), ("beat", Some("beta")));
        let t: Table = toml::from_str("alpha = \"x\"").unwrap();
        assert_eq!(parse::<Probe>(&t).unwrap_err().key, "alpha");
        assert!(check_range("lr", f64::NAN, 0.0, f64::INFINITY).is_err());
        assert!(check_range("wd", -0.1, 0.0, f64::INFINITY).is_err());
        assert!(check_range("wd", 0.1, 0.0, f64::INFINITY).is_ok());
    }
}
