//! Stage parameters: the shared optimizer block, the tables of method options, and the traits a
//! method's parameter struct implements. Unknown keys and wrong types are [`ParamError`]s naming
//! the key and the closest valid one (across the optimizer block and the method's own keys).
//!
//! A train stage's table holds three kinds of keys:
//! - the optimizer block ([`OptimizerParams`]: lr, schedule, batch, ...), shared by every train
//!   method;
//! - the method's own parameters (e.g. [`super::sft::TrainParams`]: data, mix, ...);
//! - option tables named after methods (`booster = { harmful = "...", lambda = 5 }`), each used
//!   only when the stage runs that method, so one spec can sweep `stage.X.method` over methods
//!   with different parameters.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use toml::Table;

use crate::plan::ParamError;
use crate::spec::closest;
pub use crate::spec::params::{check_range, field_names, parse};
use crate::train::{ScheduleKind, TrainerConfig};

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
    /// Versions of the stage's parts (an eval stage's metrics), part of the stage's identity.
    fn components(&self) -> BTreeMap<String, u32> {
        BTreeMap::new()
    }
}

/// Checks of values and combinations that serde's types do not express.
pub trait Validate {
    fn validate(&self, method: &str) -> Result<(), ParamError>;
}

/// How a method's parameters are read from the stage's table.
pub trait StageParams: Sized {
    fn from_table(table: &Table) -> Result<Self, ParamError>;
}

/// Implements [`StageParams`] for a struct that is the whole stage table (generate and eval
/// methods, which take no optimizer block).
#[macro_export]
macro_rules! whole_table_params {
    ($t:ty) => {
        impl $crate::methods::params::StageParams for $t {
            fn from_table(table: &toml::Table) -> Result<Self, $crate::plan::ParamError> {
                $crate::methods::params::parse(table)
            }
        }
    };
}

/// The optimizer block of every train stage (transformers' Trainer arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerParams {
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "one")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleKind,
    /// Share of the steps spent warming up, in [0, 1].
    #[serde(default)]
    pub warmup_ratio: f64,
    /// A fixed number of warmup steps (DeepSpeed's `warmup_num_steps`), instead of `warmup_ratio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<usize>,
    /// The schedule spans this many times the run's steps: Dromedary's DeepSpeed
    /// `total_num_steps` is the steps times the number of processes (48 GPUs), so its linear
    /// decay ends near the full learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_steps_multiplier: Option<usize>,
    #[serde(default)]
    pub weight_decay: f64,
    /// Global-norm clipping (transformers' default 1.0); 0 disables it.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// Stop after this many optimizer steps (overrides epochs when smaller).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Sequences are cut to this many tokens.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
}

fn default_lr() -> f64 {
    1e-4
}
fn one() -> usize {
    1
}
fn default_batch() -> usize {
    4
}
fn default_schedule() -> ScheduleKind {
    ScheduleKind::Constant
}
fn default_clip() -> f64 {
    1.0
}
fn default_max_len() -> usize {
    256
}

impl Default for OptimizerParams {
    fn default() -> Self {
        parse(&Table::new()).expect("every optimizer key has a default")
    }
}

impl OptimizerParams {
    pub fn validate(&self) -> Result<(), ParamError> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(ParamError::new("lr", format!("{} is not a positive finite number", self.lr)));
        }
        for (key, v) in [("epochs", self.epochs), ("batch_size", self.batch_size), ("grad_accum", self.grad_accum)] {
            if v == 0 {
                return Err(ParamError::new(key, "must be at least 1"));
            }
        }
        check_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)?;
        if self.warmup_steps.is_some() && self.warmup_ratio > 0.0 {
            return Err(ParamError::new("warmup_steps", "give either `warmup_steps` or `warmup_ratio`, not both"));
        }
        check_range("weight_decay", self.weight_decay, 0.0, f64::INFINITY)?;
        check_range("max_grad_norm", self.max_grad_norm, 0.0, f64::INFINITY)?;
        if self.schedule_steps_multiplier == Some(0) {
            return Err(ParamError::new("schedule_steps_multiplier", "must be at least 1"));
        }
        if self.max_steps == Some(0) {
            return Err(ParamError::new("max_steps", "must be at least 1"));
        }
        if self.max_len < 2 {
            return Err(ParamError::new("max_len", "must be at least 2"));
        }
        Ok(())
    }

    pub fn trainer(&self, seed: u64) -> TrainerConfig {
        TrainerConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            schedule: self.schedule,
            warmup_ratio: self.warmup_ratio,
            warmup_steps: self.warmup_steps,
            schedule_steps_multiplier: self.schedule_steps_multiplier,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            max_steps: self.max_steps,
            seed,
        }
    }
}

/// Parses and validates a method's parameters from TOML text, as the planner does (unit tests).
#[cfg(test)]
pub fn checked<P: DeserializeOwned + Validate>(text: &str, method: &str) -> Result<P, ParamError> {
    let table: Table = toml::from_str(text).map_err(|e| ParamError::new("toml", e.to_string()))?;
    let p: P = parse(&table)?;
    p.validate(method)?;
    Ok(p)
}

/// A method's option table (`booster = { ... }`), named after the method.
pub trait MethodOptions: DeserializeOwned + StageInputs + Validate {
    /// The table's key (the method's name); empty for [`NoOptions`].
    const KEY: &'static str;
}

/// For methods without an option table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

impl MethodOptions for NoOptions {
    const KEY: &'static str = "";
}
impl StageInputs for NoOptions {
    fn datasets(&self) -> Vec<&str> {
        Vec::new()
    }
}
impl Validate for NoOptions {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        Ok(())
    }
}

/// A train stage's parameters: the optimizer block, the method's own keys `P`, and its option
/// table `O`.
#[derive(Debug, Clone, PartialEq)]
pub struct Trained<P, O = NoOptions> {
    pub optim: OptimizerParams,
    pub params: P,
    pub options: O,
}

impl<P: DeserializeOwned, O: MethodOptions> StageParams for Trained<P, O> {
    fn from_table(table: &Table) -> Result<Self, ParamError> {
        let optimizer_keys = field_names::<OptimizerParams>();
        let method_names: Vec<&str> = super::METHODS.iter().map(|m| m.name()).collect();
        let mut optim_table = Table::new();
        let mut own = Table::new();
        let mut options = None;
        for (k, v) in table {
            if optimizer_keys.contains(&k.as_str()) {
                optim_table.insert(k.clone(), v.clone());
            } else if !O::KEY.is_empty() && k == O::KEY {
                let t = v.as_table().ok_or_else(|| ParamError::new(k.as_str(), format!("must be a table: `{k} = {{ ... }}`")))?;
                options = Some(t.clone());
            } else if method_names.contains(&k.as_str()) && v.is_table() {
                // Another method's options: used when a sweep runs that method here.
            } else {
                own.insert(k.clone(), v.clone());
            }
        }
        let optim = parse::<OptimizerParams>(&optim_table)?;
        let params = parse::<P>(&own).map_err(|mut e| {
            if e.msg.starts_with("unknown key") {
                let mut valid: Vec<&str> = field_names::<P>().to_vec();
                valid.extend(optimizer_keys);
                if !O::KEY.is_empty() {
                    valid.push(O::KEY);
                }
                e.suggestion = closest(&e.key, valid.iter().copied());
                e.msg = format!("unknown key (valid: {})", valid.join(", "));
            }
            e
        })?;
        let options = parse::<O>(&options.unwrap_or_default()).map_err(|e| {
            let key = O::KEY;
            if e.msg == "missing" {
                ParamError::new(format!("{key}.{}", e.key), format!("the {key} method needs `{key} = {{ {} = ... }}`", e.key))
            } else {
                e.under(key)
            }
        })?;
        Ok(Trained { optim, params, options })
    }
}

impl<P: Validate, O: Validate> Validate for Trained<P, O> {
    fn validate(&self, method: &str) -> Result<(), ParamError> {
        self.optim.validate()?;
        self.params.validate(method)?;
        self.options.validate(method)
    }
}

impl<P: StageInputs, O: StageInputs> StageInputs for Trained<P, O> {
    fn datasets(&self) -> Vec<&str> {
        let mut v = self.params.datasets();
        v.extend(self.options.datasets());
        v
    }
    fn stages(&self) -> Vec<&str> {
        let mut v = self.params.stages();
        v.extend(self.options.stages());
        v
    }
    fn models(&self) -> Vec<(String, &str)> {
        let mut v = self.params.models();
        v.extend(self.options.models());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::super::sft::TrainParams;
    use super::*;

    fn table(text: &str) -> Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn typos_in_any_part_name_the_closest_key() {
        let e = Trained::<TrainParams>::from_table(&table("data = \"x\"\nlrr = 1e-4")).unwrap_err();
        assert_eq!((e.key.as_str(), e.suggestion.as_deref()), ("lrr", Some("lr")));
        let e = Trained::<TrainParams>::from_table(&table("dat = \"x\"")).unwrap_err();
        assert_eq!(e.suggestion.as_deref(), Some("data"));
        let e = Trained::<TrainParams, super::super::booster::BoosterParams>::from_table(&table(
            "data = \"x\"\nbooster = { harmful = \"h\", lamda = 5 }",
        ))
        .unwrap_err();
        assert_eq!((e.key.as_str(), e.suggestion.as_deref()), ("booster.lamda", Some("lambda")));
        let e = Trained::<TrainParams, super::super::booster::BoosterParams>::from_table(&table("data = \"x\"")).unwrap_err();
        assert_eq!(e.key, "booster.harmful");
        assert!(Trained::<TrainParams>::from_table(&table("data = \"x\"\nlimit = \"abc\"")).is_err());
    }

    #[test]
    fn other_methods_option_tables_are_kept_for_sweeps() {
        let t = table("data = \"x\"\nbooster = { harmful = \"h\" }\nvaccine = { rho = 3 }\nlr = 2e-4");
        let p = Trained::<TrainParams>::from_table(&t).unwrap();
        assert_eq!((p.optim.lr, p.params.data.as_deref()), (2e-4, Some("x")));
        assert_eq!(p.datasets(), vec!["x"]);
    }

    #[test]
    fn out_of_range_optimizer_values_are_refused() {
        for (text, key) in [
            ("warmup_ratio = -0.1", "warmup_ratio"),
            ("weight_decay = -1.0", "weight_decay"),
            ("lr = nan", "lr"),
            ("lr = 0.0", "lr"),
            ("batch_size = 0", "batch_size"),
            ("max_grad_norm = inf", "max_grad_norm"),
        ] {
            let p = Trained::<TrainParams>::from_table(&table(&format!("data = \"x\"\n{text}"))).unwrap();
            assert_eq!(p.validate("sft").unwrap_err().key, key, "{text}");
        }
    }
}
