//! The manifest a generate stage writes beside its records (`dataset.json`), so that later stages
//! read the records like any file dataset: `data = "@gen"` or `[data.x] = { stage = "gen", ... }`
//! with the usual options (view, filter, limit, template).

use serde::{Deserialize, Serialize};
use std::path::Path;

use super::{DataError, Format, Items, Kind};

/// The key of a `[data.*]` table that names the generate stage whose records it reads.
pub const STAGE_KEY: &str = "stage";

/// Which stage wrote a generated dataset, so every record can be traced to the model, method and
/// seed that made it (the stage's `stage.toml` has the full config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Producer {
    pub stage: String,
    pub method: String,
    pub method_version: u32,
    pub seed: u64,
    /// The base model (path) and the stages whose adapters or weights it ran with.
    #[serde(default)]
    pub model: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<String>,
    /// The versioned parts the stage used, e.g. the request templates of a review stage
    /// (`request.ma-guided-analysis.reconstructed`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub components: std::collections::BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetManifest {
    /// The kind of record in `dataset.jsonl`.
    pub kind: Kind,
    /// The reader that reads the records back.
    pub format: Format,
    pub records: usize,
    pub producer: Producer,
}

impl DatasetManifest {
    /// The manifest of `items`; kinds no reader reads back (multiple choice, classification) are
    /// refused.
    pub fn new(items: &Items, producer: Producer) -> Result<Self, DataError> {
        let kind = items.kind();
        let format = reader_of(kind)
            .ok_or_else(|| DataError::Spec(format!("a generate stage cannot write {}: no reader reads them back", kind.describe())))?;
        Ok(DatasetManifest { kind, format, records: items.len(), producer })
    }

    pub fn read(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| DataError::file(path, format!("not a dataset manifest: {e}")))
    }

    pub fn write(&self, path: &Path) -> Result<(), DataError> {
        let text = serde_json::to_string_pretty(self).expect("manifest serializes");
        crate::util::write_atomic(path, text.as_bytes()).map_err(|e| DataError::io(path, e))
    }

    /// The `[data.*]` table that reads the records at `records`: the spec's options, without the
    /// stage reference, with this manifest's format and the file's path.
    pub fn spec_table(&self, options: &toml::Table, records: &Path) -> toml::Table {
        let mut table = options.clone();
        table.remove(STAGE_KEY);
        table.insert("format".into(), toml::Value::String(self.format.name().into()));
        table.insert("path".into(), toml::Value::String(records.to_string_lossy().into_owned()));
        table
    }
}

/// The format whose reader reads back [`Items::to_jsonl`] of this kind, if any.
pub fn reader_of(kind: Kind) -> Option<Format> {
    match kind {
        Kind::Instructions => Some(Format::InstructionJson),
        Kind::Preferences => Some(Format::PkuSaferlhfPairs),
        Kind::Labeled => Some(Format::Beavertails),
        Kind::Prompts => Some(Format::Prompts),
        Kind::MultipleChoice | Kind::Classification => None,
    }
}

/// A `[data.*]` table that reads a generate stage's records: the stage's name, and the table to
/// validate its options with (any readable format and a placeholder path).
pub fn stage_reference(table: &toml::Table) -> Option<(&str, toml::Table)> {
    let stage = table.get(STAGE_KEY)?.as_str()?;
    let mut probe = table.clone();
    probe.remove(STAGE_KEY);
    probe.entry("format").or_insert_with(|| toml::Value::String(Format::InstructionJson.name().into()));
    probe.entry("path").or_insert_with(|| toml::Value::String(format!("@{stage}")));
    Some((stage, probe))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load, DataSpec, Instruction, LabeledResponse, Preference, Prompt};

    fn producer() -> Producer {
        Producer {
            stage: "gen-0123".into(),
            method: "respond".into(),
            method_version: 1,
            seed: 3,
            model: "m".into(),
            lineage: vec!["train-01".into()],
            components: [("request.x".to_string(), 1)].into(),
        }
    }

    #[test]
    fn every_generated_kind_reads_back_through_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let sets = [
            Items::Instructions(vec![Instruction {
                instruction: "Say hi".into(),
                input: "".into(),
                output: "hi".into(),
                label: Some("safe".into()),
            }]),
            Items::Preferences(vec![Preference {
                prompt: "p".into(),
                chosen: "c".into(),
                rejected: "r".into(),
                chosen_safe: Some(true),
                rejected_safe: Some(false),
            }]),
            Items::Labeled(vec![LabeledResponse {
                prompt: "p".into(),
                response: "r".into(),
                is_safe: false,
                categories: vec!["violence".into()],
            }]),
            Items::Prompts(vec![Prompt { prompt: "How?".into(), category: Some("c".into()), target: None, context: None, id: None }]),
        ];
        for items in sets {
            let records = dir.path().join("dataset.jsonl");
            crate::data::write_jsonl(&records, &items).unwrap();
            let manifest = DatasetManifest::new(&items, producer()).unwrap();
            manifest.write(&dir.path().join("dataset.json")).unwrap();
            let back = DatasetManifest::read(&dir.path().join("dataset.json")).unwrap();
            assert_eq!(back, manifest);
            let table = back.spec_table(&toml::from_str("stage = \"gen\"").unwrap(), &records);
            let spec: DataSpec = crate::spec::params::parse(&table).unwrap();
            assert_eq!(load(&spec, Path::new("/")).unwrap().items(), &items, "{:?}", items.kind());
        }
    }

    #[test]
    fn kinds_without_a_reader_get_no_manifest() {
        let e = DatasetManifest::new(&Items::MultipleChoice(Vec::new()), producer()).unwrap_err();
        assert!(e.to_string().contains("multiple-choice items"), "{e}");
    }

    #[test]
    fn stage_references_validate_their_options() {
        let t: toml::Table = toml::from_str("stage = \"gen\"\nlimit = 4").unwrap();
        let (stage, probe) = stage_reference(&t).unwrap();
        assert_eq!(stage, "gen");
        assert!(crate::spec::params::parse::<DataSpec>(&probe).is_ok());
        let t: toml::Table = toml::from_str("stage = \"gen\"\nlymit = 4").unwrap();
        let e = crate::spec::params::parse::<DataSpec>(&stage_reference(&t).unwrap().1).unwrap_err();
        assert_eq!((e.key.as_str(), e.suggestion.as_deref()), ("lymit", Some("limit")));
        assert!(stage_reference(&toml::from_str("format = \"alpaca\"\npath = \"a.json\"").unwrap()).is_none());
    }
}
