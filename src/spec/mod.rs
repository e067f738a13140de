//! Experiment specs: schema, layering (spec file with `include` < `RUNNER_*` environment <
//! `--set`), validation with located errors, and sweep expansion into runs.
//!
//! Sub-tables that belong to other modules (`[data.*]`, `[report]`, stage parameters) are kept
//! as TOML here and validated by their owners before any compute starts.

mod error;
pub mod params;
pub mod path;
pub mod slurm;
pub mod source;
pub mod sweep;

pub use error::{closest, Origin, SpecError};
pub use params::ParamError;
pub use slurm::SlurmSpec;
pub use source::Sources;
pub use sweep::{expand, RunSpec};

use figment::providers::Serialized;
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Table;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub experiment: ExperimentSpec,
    pub model: ModelSpec,
    #[serde(default)]
    pub data: BTreeMap<String, Table>,
    pub stage: Vec<StageSpec>,
    #[serde(default)]
    pub sweep: SweepSpec,
    #[serde(default)]
    pub report: Table,
    /// Resources of the Slurm backend's jobs (ignored by the local backend).
    #[serde(default)]
    pub slurm: SlurmSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    pub name: String,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    #[serde(default)]
    pub description: String,
    /// A name for the run, swept (`"experiment.label" = ["Base", "SFT"]`) to name table rows
    /// whose parameters differ in ways a row label cannot show (e.g. a whole `mix`). It is not
    /// part of any stage's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeName {
    #[default]
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A model directory, a `.gguf` file, or a hub id in the local HF cache.
    pub path: String,
    #[serde(default)]
    pub dtype: DTypeName,
    #[serde(default)]
    pub lora: Option<LoraSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f32,
    pub targets: Vec<String>,
    /// Only these layer indices get adapters (PEFT's `layers_to_transform`).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Train,
    Generate,
    Eval,
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StageKind::Train => "train",
            StageKind::Generate => "generate",
            StageKind::Eval => "eval",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    pub id: String,
    pub kind: StageKind,
    #[serde(default)]
    pub method: Option<String>,
    /// Leave the stage out of the run (swept, e.g. a "no training" baseline row): the next stage
    /// starts from the model before it, and no later stage may read its records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip: bool,
    /// A fixed seed instead of the run's: a stage meant to be the same for every seed (a check of
    /// the base model) is then one stage shared by all of them, computed once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Start from the spec's model instead of the model the earlier train stages made (verbose
    /// cloning's student learns the teacher's answers on a new adapter of the base model, while
    /// the teacher is the engraved model). Later stages continue from this stage's model.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_base: bool,
    /// Slurm resources of this stage: keys of `[slurm]` that replace the spec table's
    /// ([`SlurmSpec::for_stage`]). Not part of the stage's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<Table>,
    /// Everything else: the method's (or metric list's) parameters, validated by its owner.
    #[serde(flatten)]
    pub params: Table,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// Groups of keys that vary together (equal-length lists).
    #[serde(default)]
    pub zip: Vec<BTreeMap<String, Vec<toml::Value>>>,
    /// Keys crossed as a grid.
    #[serde(flatten)]
    pub grid: BTreeMap<String, Vec<toml::Value>>,
}

/// A spec after layering: the merged document, its typed form, and where values came from.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub path: PathBuf,
    pub document: Table,
    pub spec: Spec,
    pub sources: Sources,
    /// Overridden keys and where the override came from.
    pub overrides: Vec<(String, Origin)>,
}

/// Sections an environment variable may address (`RUNNER_MODEL__PATH` -> `model.path`); other
/// `RUNNER_*` variables (e.g. `RUNNER_CACHE`) are not configuration.
const ENV_SECTIONS: [&str; 7] = ["experiment", "model", "data", "stage", "sweep", "report", "slurm"];

/// Loads a spec with the process environment.
pub fn load(path: &Path, sets: &[String]) -> Result<LoadedSpec, SpecError> {
    load_with_env(path, sets, std::env::vars())
}

pub fn load_with_env(path: &Path, sets: &[String], env: impl IntoIterator<Item = (String, String)>) -> Result<LoadedSpec, SpecError> {
    let mut sources = Sources::default();
    let mut document = source::read_with_includes(path, &mut sources, 0)?;
    let mut overrides = Vec::new();
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    env.sort();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("RUNNER_") else {
            continue;
        };
        let key = rest.split("__").map(str::to_lowercase).collect::<Vec<_>>().join(".");
        if !ENV_SECTIONS.iter().any(|s| key.starts_with(&format!("{s}."))) {
            continue;
        }
        let origin = Origin::Env(var.clone());
        path::set(&mut document, &key, path::parse_value(&value)).map_err(|msg| SpecError::Invalid {
            origin: origin.clone(),
            key: key.clone(),
            msg,
            suggestion: None,
        })?;
        overrides.push((key, origin));
    }
    for arg in sets {
        let origin = Origin::Set(arg.clone());
        let (key, value) = arg.split_once('=').ok_or_else(|| SpecError::Invalid {
            origin: origin.clone(),
            key: arg.clone(),
            msg: "expected key=value".into(),
            suggestion: None,
        })?;
        let key = key.trim().to_string();
        path::set(&mut document, &key, path::parse_value(value.trim())).map_err(|msg| SpecError::Invalid {
            origin: origin.clone(),
            key: key.clone(),
            msg,
            suggestion: None,
        })?;
        overrides.push((key, origin));
    }
    let spec = typed(&document, &sources, &overrides)?;
    validate_structure(&spec, &document, &sources)?;
    Ok(LoadedSpec { path: path.to_path_buf(), document, spec, sources, overrides })
}

/// Deserializes the merged document, mapping serde errors to located messages.
pub fn typed(document: &Table, sources: &Sources, overrides: &[(String, Origin)]) -> Result<Spec, SpecError> {
    Figment::from(Serialized::globals(document)).extract::<Spec>().map_err(|e| {
        let e = e.into_iter().next().expect("a figment error holds at least one error");
        let mut key_path = e.path.clone();
        let (msg, suggestion) = match &e.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                key_path.push(field.clone());
                ("unknown key".to_string(), closest(field, expected.iter().copied()))
            }
            figment::error::Kind::MissingField(field) => {
                key_path.push(field.to_string());
                ("missing".to_string(), None)
            }
            figment::error::Kind::UnknownVariant(v, expected) => {
                (format!("unknown value {v:?} (expected one of: {})", expected.join(", ")), closest(v, expected.iter().copied()))
            }
            other => (other.to_string(), None),
        };
        let key = path::to_id_path(document, &key_path);
        let origin = overrides.iter().rev().find(|(k, _)| *k == key).map(|(_, o)| o.clone()).unwrap_or_else(|| sources.locate(&key_path));
        SpecError::Invalid { origin, key, msg, suggestion }
    })
}

/// A relative or `~/` path made absolute: taken from the current directory when it exists there,
/// else from the spec file's directory. `None` when it is absolute already or found in neither
/// (then it may be a hub id).
pub fn resolve_path(p: &str, spec_dir: &Path) -> Option<String> {
    // `~/...` is the home directory, as a shell would expand it.
    if let (Some(rest), Some(home)) = (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        return Some(Path::new(&home).join(rest).to_string_lossy().into_owned());
    }
    let path = Path::new(p);
    if path.is_absolute() {
        return None;
    }
    let cwd = std::env::current_dir().ok()?.join(path);
    let candidate = if cwd.exists() { cwd } else { spec_dir.join(path) };
    candidate.exists().then(|| candidate.canonicalize().unwrap_or(candidate).to_string_lossy().into_owned())
}

/// Makes the relative file paths of `model.path` and every `data.*.path` absolute
/// ([`resolve_path`]). Other models a stage reads (judges) are resolved by the planner, from
/// what the stage's method declares.
pub fn resolve_paths(spec: &mut Spec, spec_dir: &Path) {
    if let Some(abs) = resolve_path(&spec.model.path, spec_dir) {
        spec.model.path = abs;
    }
    for table in spec.data.values_mut() {
        if let Some(toml::Value::String(p)) = table.get("path") {
            // A path found nowhere stays relative to the current directory; loading will say so.
            let abs = resolve_path(p, spec_dir)
                .unwrap_or_else(|| std::env::current_dir().unwrap_or_default().join(p).to_string_lossy().into_owned());
            table.insert("path".into(), toml::Value::String(abs));
        }
    }
}

/// Checks that need the whole spec: unique stage ids, a first stage, seeds.
fn validate_structure(spec: &Spec, document: &Table, sources: &Sources) -> Result<(), SpecError> {
    let err = |path: Vec<String>, msg: String| SpecError::Invalid {
        origin: sources.locate(&path),
        key: path::to_id_path(document, &path),
        msg,
        suggestion: None,
    };
    if spec.stage.is_empty() {
        return Err(err(vec!["stage".into()], "the spec defines no [[stage]]".into()));
    }
    if spec.experiment.seeds.is_empty() {
        return Err(err(vec!["experiment".into(), "seeds".into()], "needs at least one seed".into()));
    }
    if let Err((key, msg)) = spec.slurm.validate() {
        return Err(err(vec!["slurm".into(), key], msg));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, s) in spec.stage.iter().enumerate() {
        if s.id.is_empty() || s.id.contains(['.', '/', ' ']) {
            return Err(err(
                vec!["stage".into(), i.to_string(), "id".into()],
                format!("{:?} is not a valid stage id (no dots, slashes or spaces)", s.id),
            ));
        }
        if !seen.insert(s.id.clone()) {
            return Err(err(vec!["stage".into(), i.to_string(), "id".into()], format!("stage id `{}` is used twice", s.id)));
        }
        if let Some(table) = &s.slurm {
            if let Err((key, msg, suggestion)) = spec.slurm.for_stage(table) {
                let mut e = err(vec!["stage".into(), i.to_string(), "slurm".into(), key], msg);
                if let SpecError::Invalid { suggestion: s, .. } = &mut e {
                    *s = suggestion;
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

impl Spec {
    /// The Slurm resources of each stage that has its own `slurm` table, by stage id.
    pub fn stage_resources(&self) -> BTreeMap<String, SlurmSpec> {
        self.stage.iter().filter_map(|s| Some((s.id.clone(), self.slurm.for_stage(s.slurm.as_ref()?).ok()?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("spec.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    const BASE: &str =
        "[experiment]\nname = \"x\"\n\n[model]\npath = \"m\"\n\n[[stage]]\nid = \"align\"\nkind = \"train\"\nmethod = \"sft\"\n";

    #[test]
    fn unknown_key_names_file_line_and_closest_key() {
        let (_d, p) = write(&BASE.replace("path = \"m\"", "path = \"m\"\ndtyp = \"bf16\""));
        let err = load_with_env(&p, &[], Vec::new()).unwrap_err().to_string();
        assert!(err.contains("spec.toml:6:1"), "{err}");
        assert!(err.contains("model.dtyp") && err.contains("did you mean `dtype`"), "{err}");
    }

    #[test]
    fn wrong_type_and_bad_variant_are_located() {
        let (_d, p) = write(&BASE.replace("kind = \"train\"", "kind = \"trian\""));
        let err = load_with_env(&p, &[], Vec::new()).unwrap_err().to_string();
        assert!(err.contains("stage.align.kind") && err.contains("did you mean `train`"), "{err}");
        let (_d, p) = write(&BASE.replace("name = \"x\"", "name = \"x\"\nseeds = \"one\""));
        let err = load_with_env(&p, &[], Vec::new()).unwrap_err().to_string();
        assert!(err.contains("experiment.seeds") && err.contains(":3:1"), "{err}");
    }

    #[test]
    fn layers_apply_in_order_env_then_set() {
        let (_d, p) = write(BASE);
        let env = vec![("RUNNER_MODEL__PATH".to_string(), "from-env".to_string()), ("RUNNER_CACHE".to_string(), "/ignored".to_string())];
        let l = load_with_env(&p, &[], env.clone()).unwrap();
        assert_eq!(l.spec.model.path, "from-env");
        let l = load_with_env(&p, &["model.path=from-set".into(), "stage.align.lr=0.5".into()], env).unwrap();
        assert_eq!(l.spec.model.path, "from-set");
        assert_eq!(l.spec.stage[0].params["lr"].as_float(), Some(0.5));
        let err = load_with_env(&p, &["model.dtype=f64".into()], Vec::new()).unwrap_err().to_string();
        assert!(err.contains("--set model.dtype=f64"), "{err}");
    }

    #[test]
    fn slurm_table_errors_are_located_with_the_closest_key() {
        let (_d, p) = write(&format!("{BASE}\n[slurm]\npartition = \"gpu\"\nmem = \"16G\"\n"));
        let l = load_with_env(&p, &["slurm.time=2:00:00".into()], Vec::new()).unwrap();
        assert_eq!(l.spec.slurm.partition.as_deref(), Some("gpu"));
        assert_eq!(l.spec.slurm.time.as_deref(), Some("2:00:00"));
        let l = load_with_env(&p, &["slurm.time=90".into()], Vec::new()).unwrap();
        assert_eq!(l.spec.slurm.time.as_deref(), Some("90"), "a number is minutes");
        let (_d, p) = write(&format!("{BASE}\n[slurm]\npartion = \"gpu\"\n"));
        let err = load_with_env(&p, &[], Vec::new()).unwrap_err().to_string();
        assert!(err.contains("spec.toml:13:1") && err.contains("slurm.partion") && err.contains("did you mean `partition`"), "{err}");
        let (_d, p) = write(&format!("{BASE}\n[slurm]\ntime = \"2h\"\n"));
        let err = load_with_env(&p, &[], Vec::new()).unwrap_err().to_string();
        assert!(err.contains("spec.toml:13:1") && err.contains("slurm.time") && err.contains("not a Slurm time limit"), "{err}");
    }

    #[test]
    fn from_base_is_a_stage_key_not_a_method_parameter() {
        let (_d, p) = write(&format!("{BASE}from_base = true\n"));
        let l = load_with_env(&p, &[], Vec::new()).unwrap();
        assert!(l.spec.stage[0].from_base && !l.spec.stage[0].params.contains_key("from_base"));
        let (_d, p) = write(&format!("{BASE}from_base = \"yes\"\n"));
        assert!(load_with_env(&p, &[], Vec::new()).is_err());
    }

    #[test]
    fn a_stage_seed_is_its_own_key_and_must_be_a_natural_number() {
        let (_d, p) = write(&format!("{BASE}seed = 7\n"));
        let l = load_with_env(&p, &[], Vec::new()).unwrap();
        assert_eq!(l.spec.stage[0].seed, Some(7));
        assert!(!l.spec.stage[0].params.contains_key("seed"), "not a method parameter");

        let (_d, p) = write(&format!("{BASE}seed = -1\n"));
        let err = load_with_env(&p, &[], Vec::new()).unwrap_err().to_string();
        assert!(err.contains("stage.align") && err.contains(":11:1"), "{err}");
    }

    #[test]
    fn a_stage_slurm_table_is_checked_and_located() {
        let (_d, p) = write(&format!("{BASE}slurm = {{ time = 30, gpus = 2 }}\n\n[slurm]\npartition = \"gpu\"\n"));
        let l = load_with_env(&p, &[], Vec::new()).unwrap();
        let res = l.spec.stage_resources();
        assert_eq!((res["align"].partition.as_deref(), res["align"].time.as_deref(), res["align"].gpus), (Some("gpu"), Some("30"), 2));
        assert!(!l.spec.stage[0].params.contains_key("slurm"), "not a method parameter (nor the stage's identity)");
        let (_d, p) = write(&format!("{BASE}slurm = {{ tme = 30 }}\n"));
        let err = load_with_env(&p, &[], Vec::new()).unwrap_err().to_string();
        assert!(err.contains("stage.align.slurm.tme") && err.contains("did you mean `time`"), "{err}");
        let (_d, p) = write(BASE);
        let err = load_with_env(&p, &["stage.align.slurm.mem=\"lots\"".into()], Vec::new()).unwrap_err().to_string();
        assert!(err.contains("stage.align.slurm.mem") && err.contains("not a Slurm memory size"), "{err}");
    }

    #[test]
    fn duplicate_stage_ids_are_rejected() {
        let (_d, p) = write(&format!("{BASE}\n[[stage]]\nid = \"align\"\nkind = \"eval\"\n"));
        let err = load_with_env(&p, &[], Vec::new()).unwrap_err().to_string();
        assert!(err.contains("used twice") && err.contains(":13:1"), "{err}");
    }
}
