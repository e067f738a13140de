//! The spec's `[slurm]` table: the resources each stage's Slurm job asks for
//! (`runner run --backend slurm`). Every key is optional; `--set slurm.time=2:00:00` overrides
//! one from the command line, as any other key. A stage's own `slurm = { ... }` table replaces
//! keys of it for that stage ([`SlurmSpec::for_stage`]).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    /// `--partition`.
    #[serde(default)]
    pub partition: Option<String>,
    /// `--account`.
    #[serde(default)]
    pub account: Option<String>,
    /// `--qos`.
    #[serde(default)]
    pub qos: Option<String>,
    /// GPUs per stage (`--gres=gpu:N`); 0 runs stages on the CPU.
    #[serde(default)]
    pub gpus: u32,
    /// CPUs per stage (`--cpus-per-task`).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory per stage (`--mem`): a number with an optional K, M, G or T suffix.
    #[serde(default)]
    pub mem: Option<String>,
    /// Time limit per stage (`--time`): minutes (a number, or text), MM:SS, HH:MM:SS, D-HH,
    /// D-HH:MM or D-HH:MM:SS.
    #[serde(default, deserialize_with = "minutes_or_text")]
    pub time: Option<String>,
    /// At most this many stages of one wave run at once (the array's `%N`).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Seconds before the time limit at which Slurm warns a stage (`--signal=B:USR1@N`; default
    /// 300, 0 sends nothing): a training stage then saves a step checkpoint, stops and requeues
    /// its task, which resumes from the checkpoint. Slurm may send it up to a minute early.
    #[serde(default)]
    pub signal_before: Option<u32>,
    /// Extra `#SBATCH` options, written as given (e.g. `"--constraint=a100"`).
    #[serde(default)]
    pub sbatch: Vec<String>,
}

/// [`SlurmSpec::signal_before`] when the spec does not set it.
pub const DEFAULT_SIGNAL_BEFORE_SECS: u32 = 300;

/// `time = 90` is 90 minutes, as `--time=90`.
fn minutes_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Time {
        Minutes(u64),
        Text(String),
    }
    Ok(Option::<Time>::deserialize(d)?.map(|t| match t {
        Time::Minutes(m) => m.to_string(),
        Time::Text(s) => s,
    }))
}

/// The keys of `[slurm]` (and of a stage's `slurm` table).
pub const KEYS: [&str; 10] = ["partition", "account", "qos", "gpus", "cpus", "mem", "time", "max_parallel", "signal_before", "sbatch"];

impl SlurmSpec {
    /// This table with a stage's `slurm = { ... }` keys in place of its own, validated.
    /// `Err((key, message, closest valid key))` names the offending key inside the stage's table.
    pub fn for_stage(&self, stage: &toml::Table) -> Result<SlurmSpec, (String, String, Option<String>)> {
        if let Some(key) = stage.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err((key.clone(), "unknown key".into(), crate::spec::closest(key, KEYS.iter().copied())));
        }
        let mut table = toml::Table::try_from(self).map_err(|e| (String::new(), e.to_string(), None))?;
        table.extend(stage.clone());
        let parse = |t: toml::Table| -> Result<SlurmSpec, toml::de::Error> { toml::Value::Table(t).try_into() };
        let merged = parse(table).map_err(|e| {
            // serde's message does not name the key: the stage's key that fails on its own does.
            let alone = |(k, v): (&String, &toml::Value)| parse(toml::Table::from_iter([(k.clone(), v.clone())])).is_err();
            let key = stage.iter().find(|kv| alone(*kv)).map(|(k, _)| k.clone()).unwrap_or_default();
            (key, e.message().to_string(), None)
        })?;
        merged.validate().map_err(|(key, msg)| (key, msg, None))?;
        Ok(merged)
    }

    /// Seconds before the time limit that the stop signal comes (0: none).
    pub fn signal_before_secs(&self) -> u32 {
        self.signal_before.unwrap_or(DEFAULT_SIGNAL_BEFORE_SECS)
    }

    /// Checks the values Slurm would reject only after the job is queued. `Err((key, message))`
    /// names the offending key inside `[slurm]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((key.to_string(), msg));
        for (key, value) in [("partition", &self.partition), ("account", &self.account), ("qos", &self.qos)] {
            if let Some(v) = value {
                if v.is_empty() || v.contains(char::is_whitespace) {
                    return err(key, format!("{v:?} is not a Slurm name (non-empty, no spaces)"));
                }
            }
        }
        if self.cpus == Some(0) {
            return err("cpus", "must be at least 1".into());
        }
        if self.max_parallel == Some(0) {
            return err("max_parallel", "must be at least 1".into());
        }
        if let Some(mem) = &self.mem {
            if !is_memory(mem) {
                return err("mem", format!("{mem:?} is not a Slurm memory size (e.g. 16G, 4000M, 512)"));
            }
        }
        if let Some(time) = &self.time {
            if !is_time_limit(time) {
                return err("time", format!("{time:?} is not a Slurm time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)"));
            }
        }
        for (i, line) in self.sbatch.iter().enumerate() {
            if !line.starts_with('-') || line.contains(['\n', '\r']) {
                return err(&format!("sbatch[{i}]"), format!("{line:?} is not one sbatch option (one line starting with '-')"));
            }
        }
        Ok(())
    }
}

fn is_memory(s: &str) -> bool {
    let digits = s.strip_suffix(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Slurm's `--time` forms.
fn is_time_limit(s: &str) -> bool {
    let number = |p: &str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
    let (days, rest) = match s.split_once('-') {
        Some((d, rest)) => (Some(d), rest),
        None => (None, s),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    if !parts.iter().all(|p| number(p)) || days.is_some_and(|d| !number(d)) {
        return false;
    }
    (1..=3).contains(&parts.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_table_replaces_keys_and_is_checked_like_the_spec_table() {
        let spec = SlurmSpec { partition: Some("gpu".into()), gpus: 1, time: Some("4:00:00".into()), ..Default::default() };
        let stage: toml::Table = toml::from_str("time = 30\ngpus = 0\nmem = \"64G\"").unwrap();
        let merged = spec.for_stage(&stage).unwrap();
        assert_eq!(
            merged,
            SlurmSpec { partition: Some("gpu".into()), gpus: 0, time: Some("30".into()), mem: Some("64G".into()), ..Default::default() }
        );
        assert_eq!(spec.for_stage(&toml::Table::new()).unwrap(), spec, "no keys: the spec's table");
        let (key, msg, suggestion) = spec.for_stage(&toml::from_str("tme = 30").unwrap()).unwrap_err();
        assert_eq!((key.as_str(), msg.as_str(), suggestion.as_deref()), ("tme", "unknown key", Some("time")));
        let (key, msg, _) = spec.for_stage(&toml::from_str("time = \"1h\"").unwrap()).unwrap_err();
        assert!(key == "time" && msg.contains("not a Slurm time limit"), "{key}: {msg}");
        let (key, msg, _) = spec.for_stage(&toml::from_str("gpus = \"two\"").unwrap()).unwrap_err();
        assert_eq!(key, "gpus", "{msg}");
    }

    #[test]
    fn keys_lists_every_field() {
        let full = SlurmSpec {
            partition: Some("p".into()),
            account: Some("a".into()),
            qos: Some("q".into()),
            gpus: 1,
            cpus: Some(1),
            mem: Some("1G".into()),
            time: Some("1".into()),
            max_parallel: Some(1),
            signal_before: Some(1),
            sbatch: vec!["--x".into()],
        };
        let table = toml::Table::try_from(&full).unwrap();
        let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut expected = KEYS.to_vec();
        keys.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }

    #[test]
    fn values_slurm_would_reject_are_named() {
        assert!(SlurmSpec::default().validate().is_ok());
        let ok = SlurmSpec {
            partition: Some("gpu".into()),
            mem: Some("16G".into()),
            time: Some("1-12:00:00".into()),
            sbatch: vec!["--constraint=a100".into()],
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for (spec, key) in [
            (SlurmSpec { mem: Some("16 GB".into()), ..Default::default() }, "mem"),
            (SlurmSpec { time: Some("1h".into()), ..Default::default() }, "time"),
            (SlurmSpec { time: Some("1:2:3:4".into()), ..Default::default() }, "time"),
            (SlurmSpec { cpus: Some(0), ..Default::default() }, "cpus"),
            (SlurmSpec { max_parallel: Some(0), ..Default::default() }, "max_parallel"),
            (SlurmSpec { partition: Some("a b".into()), ..Default::default() }, "partition"),
            (SlurmSpec { sbatch: vec!["ok".into()], ..Default::default() }, "sbatch[0]"),
            (SlurmSpec { sbatch: vec!["--x\n#SBATCH --y".into()], ..Default::default() }, "sbatch[0]"),
        ] {
            assert_eq!(spec.validate().unwrap_err().0, key, "{spec:?}");
        }
        for t in ["10", "0:30", "01:00:00", "2-0", "2-12:30", "2-12:30:00"] {
            assert!(is_time_limit(t), "{t}");
        }
    }
}
