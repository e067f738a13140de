//! Named weight sources: a safetensors file, a sharded safetensors checkpoint, or a GGUF file.
//! Every source answers in HF tensor names, so the decoder knows nothing of file formats.

use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::gguf::GgufFile;
use super::{ModelError, Result};

pub trait WeightSource {
    /// The file that errors should name.
    fn path(&self) -> &Path;
    fn contains(&self, name: &str) -> bool;
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Loads a tensor in its stored dtype (GGUF: dequantized to f32).
    fn load_raw(&self, name: &str, device: &Device) -> Result<Tensor>;
}

/// Typed access with the checks and error messages every loader wants.
pub struct Weights<'a> {
    pub source: &'a dyn WeightSource,
    pub device: Device,
    pub dtype: DType,
}

impl Weights<'_> {
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let found = self
            .source
            .shape(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.source.path().to_path_buf(), tensor: name.to_string() })?;
        if found != expected {
            return Err(ModelError::ShapeMismatch {
                path: self.source.path().to_path_buf(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        Ok(self.source.load_raw(name, &self.device)?.to_dtype(self.dtype)?)
    }

    pub fn get_opt(&self, name: &str, expected: &[usize]) -> Result<Option<Tensor>> {
        if self.source.contains(name) {
            self.get(name, expected).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// One or more memory-mapped safetensors files.
pub struct SafetensorsSource {
    path: PathBuf,
    inner: candle_core::safetensors::MmapedSafetensors,
    names: HashSet<String>,
}

impl SafetensorsSource {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub fn open(path: &Path) -> Result<Self> {
        let files: Vec<PathBuf> = if path.extension().is_some_and(|e| e == "json") { shard_files(path)? } else { vec![path.to_path_buf()] };
        for f in &files {
            if !f.exists() {
                return Err(ModelError::NotFound(format!("{} (listed by {})", f.display(), path.display())));
            }
        }
        // SAFETY: the files are opened read-only; modifying a checkpoint while it is being loaded
        // is outside what any loader can defend against.
        let inner = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
            .map_err(|e| ModelError::CorruptFile { path: path.to_path_buf(), msg: e.to_string() })?;
        let names = inner.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Self { path: path.to_path_buf(), inner, names })
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::CorruptFile { path: index.to_path_buf(), msg: e.to_string() })?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Config {
        path: index.to_path_buf(),
        key: "weight_map".into(),
        msg: "missing or not an object".into(),
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeMap<&str, ()> = map.values().filter_map(|v| v.as_str()).map(|f| (f, ())).collect();
    Ok(files.keys().map(|f| dir.join(f)).collect())
}

impl WeightSource for SafetensorsSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.get(name).ok().map(|v| v.shape().to_vec())
    }
    fn load_raw(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.inner.load(name, device).map_err(|e| ModelError::CorruptFile { path: self.path.clone(), msg: format!("tensor `{name}`: {e}") })
    }
}

impl WeightSource for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn contains(&self, name: &str) -> bool {
        self.hf_to_gguf(name).is_some()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.hf_to_gguf(name).and_then(|g| self.tensor_shape(&g))
    }
    fn load_raw(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.load_hf(name, device)
    }
}

/// Tensors already in memory under their HF names (a model rebuilt from its own weights, e.g.
/// made trainable after its lineage's adapters were merged).
pub struct TensorSource {
    path: PathBuf,
    tensors: std::collections::HashMap<String, Tensor>,
}

impl TensorSource {
    pub fn new(named: &[(String, Tensor)]) -> Self {
        Self { path: PathBuf::from("<weights in memory>"), tensors: named.iter().cloned().collect() }
    }
}

impl WeightSource for TensorSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.dims().to_vec())
    }
    fn load_raw(&self, name: &str, device: &Device) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), tensor: name.to_string() })?;
        Ok(t.to_device(device)?)
    }
}

/// Writes `named` as one safetensors file (HF layout: the names as given), atomically.
pub fn save_safetensors(named: &[(String, Tensor)], path: &Path) -> Result<()> {
    let map: std::collections::HashMap<String, Tensor> = named.iter().cloned().collect();
    let tmp = path.with_extension("safetensors.partial");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    }
    candle_core::safetensors::save(&map, &tmp).map_err(|e| ModelError::CorruptFile { path: tmp.clone(), msg: e.to_string() })?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}
