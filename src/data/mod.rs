//! Datasets: readers for the built-in formats, dataset options (`DataSpec`), mixing and splitting,
//! and prompt templates. Knows nothing of models, training or scheduling.
//!
//! ```no_run
//! use runner::data::{load, DataSpec, Format};
//! let spec = DataSpec::new(Format::Hhh, "data/hhh");
//! let hhh = load(&spec, std::path::Path::new(".")).unwrap();
//! for item in hhh.as_multiple_choice().unwrap() {
//!     println!("{} {:?} gold={:?}", item.id, item.category, item.gold);
//! }
//! ```

mod error;
pub mod filter;
mod formats;
mod json;
mod manifest;
mod mix;
mod read;
mod records;
pub mod self_instruct;
mod spec;
mod template;
pub mod tgrt;
pub mod verbose_clone;
pub mod watson;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use error::{DataError, Row};
pub use formats::{AGNEWS_LABELS, BBQ_UNKNOWN_ANSWERS, GSM8K_ANSWER_PROMPT, SST2_LABELS};
pub use manifest::{reader_of, stage_reference, DatasetManifest, Producer, STAGE_KEY};
pub use mix::{booster_attack_mix, mix, mix_counts, mix_parts, shuffle_seeded, split_by_key, MixOptions, MixPart, SeededRng, Take};
pub use records::{Classification, Instruction, LabeledResponse, MultipleChoice, Preference, Prompt};
pub use spec::{DataSpec, Filter, Format, Kind, McVariant, Prefer, RowRange, TemplateRef};
pub use template::{SftPair, Template, AGNEWS_INSTRUCTION, ALPACA_INPUT, ALPACA_NO_INPUT, BUILTIN_TEMPLATES, SST2_INSTRUCTION, UNLEARN_QA};

use formats::Parsed;
use read::FileKind;

/// Bumped when a reader changes what it produces from the same bytes, so cached stages re-run.
const READER_VERSION: &str = "runner-data/1";

/// The items of a dataset, one typed vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "items", rename_all = "kebab-case")]
pub enum Items {
    Instructions(Vec<Instruction>),
    Preferences(Vec<Preference>),
    Labeled(Vec<LabeledResponse>),
    Prompts(Vec<Prompt>),
    MultipleChoice(Vec<MultipleChoice>),
    Classification(Vec<Classification>),
}

macro_rules! on_items {
    ($items:expr, $v:ident => $body:expr) => {
        match $items {
            Items::Instructions($v) => $body,
            Items::Preferences($v) => $body,
            Items::Labeled($v) => $body,
            Items::Prompts($v) => $body,
            Items::MultipleChoice($v) => $body,
            Items::Classification($v) => $body,
        }
    };
}

fn retain_mask<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

fn permute<T>(v: &mut Vec<T>, order: &[usize]) {
    let mut old: Vec<Option<T>> = std::mem::take(v).into_iter().map(Some).collect();
    *v = order.iter().filter_map(|&i| old[i].take()).collect();
}

impl Items {
    pub fn kind(&self) -> Kind {
        match self {
            Items::Instructions(_) => Kind::Instructions,
            Items::Preferences(_) => Kind::Preferences,
            Items::Labeled(_) => Kind::Labeled,
            Items::Prompts(_) => Kind::Prompts,
            Items::MultipleChoice(_) => Kind::MultipleChoice,
            Items::Classification(_) => Kind::Classification,
        }
    }

    pub fn len(&self) -> usize {
        on_items!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn retain_mask(&mut self, keep: &[bool]) {
        on_items!(self, v => retain_mask(v, keep))
    }

    fn permute(&mut self, order: &[usize]) {
        on_items!(self, v => permute(v, order))
    }

    fn slice(&mut self, start: usize, end: usize) {
        on_items!(self, v => {
            v.truncate(end);
            v.drain(..start.min(v.len()));
        })
    }

    fn truncate(&mut self, n: usize) {
        on_items!(self, v => v.truncate(n))
    }

    /// Keeps the items at `indices` (in the order given).
    pub fn select(&mut self, indices: &[usize]) {
        self.permute(indices)
    }

    /// One text field of every item, by name (`instruction`, `input`, `output` of instructions;
    /// `prompt`, `chosen`, `rejected` of preference pairs; `prompt`, `response` of labeled
    /// responses; `prompt` of prompts), for filters over generated data.
    pub fn texts(&self, field: &str) -> Result<Vec<&str>, DataError> {
        let fields: &[&str] = match self {
            Items::Instructions(_) => &["instruction", "input", "output"],
            Items::Preferences(_) => &["prompt", "chosen", "rejected"],
            Items::Labeled(_) => &["prompt", "response"],
            Items::Prompts(_) => &["prompt"],
            Items::MultipleChoice(_) | Items::Classification(_) => &[],
        };
        if !fields.contains(&field) {
            return Err(DataError::Spec(format!(
                "{} have no text field `{field}` (fields: {})",
                self.kind().describe(),
                if fields.is_empty() { "none".to_string() } else { fields.join(", ") }
            )));
        }
        Ok(match self {
            Items::Instructions(v) => v
                .iter()
                .map(|x| match field {
                    "instruction" => x.instruction.as_str(),
                    "input" => x.input.as_str(),
                    _ => x.output.as_str(),
                })
                .collect(),
            Items::Preferences(v) => v
                .iter()
                .map(|x| match field {
                    "prompt" => x.prompt.as_str(),
                    "chosen" => x.chosen.as_str(),
                    _ => x.rejected.as_str(),
                })
                .collect(),
            Items::Labeled(v) => v.iter().map(|x| if field == "prompt" { x.prompt.as_str() } else { x.response.as_str() }).collect(),
            Items::Prompts(v) => v.iter().map(|x| x.prompt.as_str()).collect(),
            Items::MultipleChoice(_) | Items::Classification(_) => Vec::new(),
        })
    }

    /// One JSON object per line, in the field layout of the record types. Instructions,
    /// preference pairs, labeled responses and prompts read back with formats
    /// `instruction-json`, `pku-saferlhf-pairs`, `beavertails` and `prompts`.
    pub fn to_jsonl(&self) -> String {
        fn lines<T: Serialize>(v: &[T]) -> String {
            v.iter().map(|x| serde_json::to_string(x).expect("records serialize") + "\n").collect()
        }
        on_items!(self, v => lines(v))
    }
}

/// A loaded dataset: typed items plus where they came from.
#[derive(Debug, Clone)]
pub struct Dataset {
    name: String,
    format: Format,
    path: PathBuf,
    identity: String,
    template: Template,
    items: Items,
    rows: Vec<usize>,
    mc: Option<McVariant>,
}

impl Dataset {
    /// An in-memory dataset (e.g. produced by a generate stage); its identity hashes the items.
    pub fn from_items(name: &str, format: Format, items: Items) -> Dataset {
        let mut h = Sha256::new();
        chunk(&mut h, READER_VERSION.as_bytes());
        chunk(&mut h, serde_json::to_string(&items).expect("records serialize").as_bytes());
        let rows = (0..items.len()).collect();
        Dataset {
            name: name.to_string(),
            format,
            path: PathBuf::new(),
            identity: hex(&h.finalize()),
            template: Template::builtin("alpaca").expect("built-in"),
            items,
            rows,
            mc: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The TruthfulQA variant the items were read as (`mc`, default `mc1`); `None` for other
    /// formats.
    pub fn mc_variant(&self) -> Option<McVariant> {
        self.mc
    }

    /// The file or directory read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// sha256 (hex) over the reader version, the resolved options, the template and the bytes of
    /// every file read: equal identities mean equal items.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn kind(&self) -> Kind {
        self.items.kind()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn items(&self) -> &Items {
        &self.items
    }

    pub fn into_items(self) -> Items {
        self.items
    }

    /// For each item, the 0-based index of the record it came from (records of all files in
    /// path order), for per-sample outputs.
    pub fn source_rows(&self) -> &[usize] {
        &self.rows
    }

    /// The prompt template (the spec's, else `alpaca`).
    pub fn template(&self) -> &Template {
        &self.template
    }

    fn kind_error(&self, wanted: Kind) -> DataError {
        DataError::Kind {
            name: self.name.clone(),
            format: self.format.name().to_string(),
            holds: self.kind().describe(),
            wanted: wanted.describe(),
        }
    }

    pub fn as_instructions(&self) -> Result<&[Instruction], DataError> {
        match &self.items {
            Items::Instructions(v) => Ok(v),
            _ => Err(self.kind_error(Kind::Instructions)),
        }
    }

    pub fn as_preferences(&self) -> Result<&[Preference], DataError> {
        match &self.items {
            Items::Preferences(v) => Ok(v),
            _ => Err(self.kind_error(Kind::Preferences)),
        }
    }

    pub fn as_labeled(&self) -> Result<&[LabeledResponse], DataError> {
        match &self.items {
            Items::Labeled(v) => Ok(v),
            _ => Err(self.kind_error(Kind::Labeled)),
        }
    }

    pub fn as_prompts(&self) -> Result<&[Prompt], DataError> {
        match &self.items {
            Items::Prompts(v) => Ok(v),
            _ => Err(self.kind_error(Kind::Prompts)),
        }
    }

    pub fn as_multiple_choice(&self) -> Result<&[MultipleChoice], DataError> {
        match &self.items {
            Items::MultipleChoice(v) => Ok(v),
            _ => Err(self.kind_error(Kind::MultipleChoice)),
        }
    }

    pub fn as_classification(&self) -> Result<&[Classification], DataError> {
        match &self.items {
            Items::Classification(v) => Ok(v),
            _ => Err(self.kind_error(Kind::Classification)),
        }
    }

    /// Instructions rendered with the template: (prompt, response) pairs for SFT.
    pub fn sft_pairs(&self) -> Result<Vec<SftPair>, DataError> {
        self.as_instructions()?.iter().map(|x| self.template.render(x)).collect()
    }
}

struct SourceFile {
    path: PathBuf,
    rel: String,
    bytes: Vec<u8>,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let ft = entry.file_type().map_err(|e| DataError::io(&path, e))?;
        if ft.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn kinds_list(kinds: &[FileKind]) -> String {
    kinds.iter().map(|k| format!(".{}", k.ext())).collect::<Vec<_>>().join(", ")
}

fn source_files(spec: &DataSpec, base_dir: &Path) -> Result<(Vec<SourceFile>, bool), DataError> {
    let root = base_dir.join(&spec.path);
    let meta = std::fs::metadata(&root).map_err(|e| DataError::io(&root, e))?;
    let kinds = spec.format.file_kinds();
    let is_dir = meta.is_dir();
    let paths = if is_dir {
        let mut all = Vec::new();
        walk(&root, &mut all)?;
        all.sort();
        all.retain(|p| FileKind::of(p).is_some_and(|k| kinds.contains(&k)));
        if let Some(split) = &spec.split {
            all.retain(|p| {
                let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                stem == *split || stem.starts_with(&format!("{split}-")) || stem.starts_with(&format!("{split}_"))
            });
        }
        if all.is_empty() {
            let which = spec.split.as_ref().map(|s| format!(" for split `{s}`")).unwrap_or_default();
            return Err(DataError::file(&root, format!("no {} files{which} for format {}", kinds_list(kinds), spec.format)));
        }
        all
    } else {
        if spec.split.is_some() {
            return Err(DataError::Spec(format!("`split` needs `path` to be a directory; {} is a file", root.display())));
        }
        if !FileKind::of(&root).is_some_and(|k| kinds.contains(&k)) {
            return Err(DataError::file(&root, format!("format {} reads {} files", spec.format, kinds_list(kinds))));
        }
        vec![root.clone()]
    };
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let rel = if is_dir {
            path.strip_prefix(&root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/")
        } else {
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        };
        files.push(SourceFile { path, rel, bytes });
    }
    Ok((files, is_dir))
}

fn resolve_template(t: Option<&TemplateRef>, base_dir: &Path) -> Result<Template, DataError> {
    match t {
        None => Ok(Template::builtin("alpaca").expect("built-in")),
        Some(TemplateRef::Named(name)) => {
            if let Some(t) = Template::builtin(name) {
                return Ok(t);
            }
            let p = base_dir.join(name);
            if p.is_file() {
                Template::from_files(&p, None)
            } else {
                Err(DataError::Template {
                    name: name.clone(),
                    msg: format!("neither a built-in template ({}) nor a file ({})", BUILTIN_TEMPLATES.join(", "), p.display()),
                })
            }
        }
        Some(TemplateRef::Pair { input, no_input }) => Template::from_files(&base_dir.join(input), Some(&base_dir.join(no_input))),
    }
}

fn chunk(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The options with defaults filled in, so that equal meanings hash equally.
fn resolved_options(spec: &DataSpec) -> DataSpec {
    let mut s = spec.clone();
    s.path = PathBuf::new();
    s.template = None;
    s.view = Some(spec.kind());
    if spec.format.is_truthfulqa() {
        s.mc = Some(spec.mc.unwrap_or_default());
    }
    if spec.format == Format::PkuSaferlhf {
        s.prefer = Some(spec.prefer.unwrap_or_default());
    }
    s
}

fn identity_of(spec: &DataSpec, files: &[SourceFile], template: &Template) -> String {
    let mut h = Sha256::new();
    chunk(&mut h, READER_VERSION.as_bytes());
    chunk(&mut h, serde_json::to_string(&resolved_options(spec)).expect("spec serializes").as_bytes());
    let (a, b) = template.texts();
    chunk(&mut h, a.as_bytes());
    chunk(&mut h, b.unwrap_or("").as_bytes());
    h.update((files.len() as u64).to_le_bytes());
    for f in files {
        chunk(&mut h, f.rel.as_bytes());
        chunk(&mut h, &f.bytes);
    }
    hex(&h.finalize())
}

impl DataSpec {
    /// The identity [`load`] would give, without parsing: sha256 over the reader version, the
    /// resolved options, the template text and the bytes of every file read. `base_dir` is the
    /// directory relative paths are taken from (the spec file's).
    pub fn identity(&self, base_dir: &Path) -> Result<String, DataError> {
        self.validate()?;
        let (files, _) = source_files(self, base_dir)?;
        let template = resolve_template(self.template.as_ref(), base_dir)?;
        Ok(identity_of(self, &files, &template))
    }
}

fn filter_mask(items: &Items, f: &Filter) -> Vec<bool> {
    let in_list = |x: &str, list: &Option<Vec<String>>| match list {
        None => true,
        Some(l) => l.iter().any(|y| y.eq_ignore_ascii_case(x)),
    };
    let opt_in_list = |x: Option<&str>, list: &Option<Vec<String>>| match (x, list) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(x), l) => in_list(x, l),
    };
    let safety = |safe: Option<bool>| (!f.unsafe_only || safe == Some(false)) && (!f.safe_only || safe == Some(true));
    match items {
        Items::Instructions(v) => v
            .iter()
            .map(|x| {
                let l = x.label.as_deref();
                let safe = match l {
                    Some("safe") => Some(true),
                    Some("unsafe") => Some(false),
                    _ => None,
                };
                safety(safe) && opt_in_list(l, &f.label)
            })
            .collect(),
        Items::Preferences(v) => v
            .iter()
            .map(|p| {
                (!f.unsafe_only || p.chosen_safe == Some(false) || p.rejected_safe == Some(false))
                    && (!f.safe_only || (p.chosen_safe == Some(true) && p.rejected_safe == Some(true)))
            })
            .collect(),
        Items::Labeled(v) => v
            .iter()
            .map(|x| safety(Some(x.is_safe)) && (f.category.is_none() || x.categories.iter().any(|c| in_list(c, &f.category))))
            .collect(),
        Items::Prompts(v) => v.iter().map(|x| opt_in_list(x.category.as_deref(), &f.category)).collect(),
        Items::MultipleChoice(v) => v
            .iter()
            .map(|x| {
                let meta_ok = |key: &str, want: &Option<String>| match want {
                    None => true,
                    Some(w) => x.meta.get(key).is_some_and(|m| m.eq_ignore_ascii_case(w)),
                };
                opt_in_list(x.category.as_deref(), &f.category)
                    && meta_ok("context_condition", &f.context_condition)
                    && meta_ok("question_polarity", &f.question_polarity)
            })
            .collect(),
        Items::Classification(v) => v.iter().map(|x| in_list(x.label_name(), &f.label)).collect(),
    }
}

/// Loads a dataset. Relative paths in `spec` are taken from `base_dir`. Errors name the file,
/// row and field of any malformed record; every record is validated, also those outside `rows`.
pub fn load(spec: &DataSpec, base_dir: &Path) -> Result<Dataset, DataError> {
    spec.validate()?;
    let (files, is_dir) = source_files(spec, base_dir)?;
    let template = resolve_template(spec.template.as_ref(), base_dir)?;
    let identity = identity_of(spec, &files, &template);
    let mut parsed = Vec::with_capacity(files.len());
    for f in &files {
        let kind = FileKind::of(&f.path).expect("filtered by kind");
        let columns: Option<&[&str]> = match (spec.format, kind) {
            (Format::Agnews, FileKind::Tsv) => Some(&["text", "label"]),
            (Format::Sst2, FileKind::Tsv) => Some(&["sentence", "label"]),
            _ => None,
        };
        match read::parse(&f.path, &f.bytes, kind, columns)? {
            Some(records) => parsed.push(Parsed {
                path: f.path.clone(),
                parent: f.path.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
                records,
            }),
            None if is_dir => {}
            None => {
                return Err(DataError::file(
                    &f.path,
                    "a JSON object without `examples`: expected a JSON array of records or a BIG-bench task",
                ))
            }
        }
    }
    let mut items = formats::parse_items(spec, &parsed)?;
    let n = items.len();
    let (start, end) = match spec.rows {
        None => (0, n),
        Some(r) => {
            let end = r.end.unwrap_or(n);
            if end > n || r.start > n {
                return Err(DataError::Spec(format!("rows {r}: {} holds only {n} records", base_dir.join(&spec.path).display())));
            }
            (r.start, end)
        }
    };
    items.slice(start, end);
    let mut rows: Vec<usize> = (start..end).collect();
    let filter_first = spec.filter_kind() != spec.kind();
    let apply_filter = |items: &mut Items, rows: &mut Vec<usize>| {
        if !spec.filter.is_empty() {
            let keep = filter_mask(items, &spec.filter);
            items.retain_mask(&keep);
            retain_mask(rows, &keep);
        }
    };
    if filter_first {
        apply_filter(&mut items, &mut rows);
    }
    let (mut items, mut rows) = formats::convert(items, rows, spec.format, spec.kind())?;
    if !filter_first {
        apply_filter(&mut items, &mut rows);
    }
    if let Some(seed) = spec.shuffle_seed {
        let mut order: Vec<usize> = (0..items.len()).collect();
        shuffle_seeded(&mut order, seed);
        items.permute(&order);
        rows = order.iter().map(|&i| rows[i]).collect();
    }
    if let Some(limit) = spec.limit {
        items.truncate(limit);
        rows.truncate(limit);
    }
    let name = spec.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mc = spec.format.is_truthfulqa().then(|| spec.mc.unwrap_or_default());
    Ok(Dataset { name, format: spec.format, path: base_dir.join(&spec.path), identity, template, items, rows, mc })
}

/// [`load`], naming the dataset (as `[data.NAME]` does) for error messages.
pub fn load_named(name: &str, spec: &DataSpec, base_dir: &Path) -> Result<Dataset, DataError> {
    Ok(load(spec, base_dir)?.with_name(name))
}

/// Writes items as JSON Lines (see [`Items::to_jsonl`]), atomically.
pub fn write_jsonl(path: &Path, items: &Items) -> Result<(), DataError> {
    crate::util::write_atomic(path, items.to_jsonl().as_bytes()).map_err(|e| DataError::io(path, e))
}
