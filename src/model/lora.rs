//! LoRA adapters as PEFT defines them: configuration, attachment by target module names,
//! and save/load in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`).

use candle_core::{DType, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

use super::decoder::CausalLm;
use super::layers::LoraAdapter;
use super::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    #[serde(rename = "lora_alpha")]
    pub alpha: f64,
    #[serde(rename = "lora_dropout", default)]
    pub dropout: f32,
    /// Module names as PEFT matches them: a name equals the module path or is its last segments.
    pub target_modules: Vec<String>,
    /// Restrict adapters to these layer indices (PEFT's `layers_to_transform`); `None` = all.
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    fn targets(&self, module: &str) -> bool {
        let name_ok = self.target_modules.iter().any(|t| module == t || module.ends_with(&format!(".{t}")));
        let layer_ok = match &self.layers_to_transform {
            None => true,
            Some(layers) => layer_index(module).is_some_and(|i| layers.contains(&i)),
        };
        name_ok && layer_ok
    }

    /// PEFT's adapter_config.json.
    pub fn to_peft_json(&self, base_model: &str) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "layers_to_transform": self.layers_to_transform,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
        })
    }
}

fn layer_index(module: &str) -> Option<usize> {
    let mut parts = module.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

/// Adds fresh adapters as PEFT initialises them: A ~ kaiming_uniform(a=sqrt(5)), i.e.
/// U(-1/sqrt(in), 1/sqrt(in)); B = 0, so the model's output is unchanged.
pub fn add_lora(model: &mut CausalLm, config: &LoraConfig, seed: u64) -> Result<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let device = model.device.clone();
    let mut count = 0;
    for lin in model.linears_mut() {
        if !config.targets(&lin.name) {
            continue;
        }
        let (inp, out) = (lin.in_features(), lin.out_features());
        let bound = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..config.r * inp).map(|_| rng.random_range(-bound..bound)).collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, inp), &device)?)?;
        let b = Var::from_tensor(&Tensor::zeros((out, config.r), DType::F32, &device)?)?;
        lin.lora = Some(LoraAdapter::new(a, b, config.scale(), config.dropout));
        count += 1;
    }
    if count == 0 {
        return Err(ModelError::Input(format!("LoRA target_modules {:?} match no linear layer of the model", config.target_modules)));
    }
    Ok(count)
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` as PEFT's `save_pretrained` does.
pub fn save_adapter(model: &CausalLm, config: &LoraConfig, base_model: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tensors: HashMap<String, Tensor> = model.lora_params().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
    if tensors.is_empty() {
        return Err(ModelError::Input("the model has no LoRA adapter to save".into()));
    }
    let weights = dir.join("adapter_model.safetensors");
    let tmp = dir.join(".adapter_model.safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, &weights).map_err(|e| ModelError::io(&weights, e))?;
    let cfg_path = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&config.to_peft_json(base_model)).expect("json value serializes");
    crate::util::write_atomic(&cfg_path, text.as_bytes()).map_err(|e| ModelError::io(&cfg_path, e))?;
    Ok(())
}

/// Loads a PEFT LoRA adapter onto the model (trainable, f32). Keys may carry PEFT's adapter
/// name (`.lora_A.default.weight`) or not.
pub fn load_adapter(model: &mut CausalLm, dir: &Path) -> Result<LoraConfig> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Config { path: cfg_path.clone(), key: String::new(), msg: e.to_string() })?;
    let peft_type = json.get("peft_type").and_then(|v| v.as_str()).unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(ModelError::Config {
            path: cfg_path,
            key: "peft_type".into(),
            msg: format!("{peft_type:?} is not supported (only LORA)"),
        });
    }
    for (key, unsupported) in [("use_dora", true), ("use_rslora", true), ("fan_in_fan_out", true)] {
        if json.get(key).and_then(|v| v.as_bool()) == Some(unsupported) {
            return Err(ModelError::Config { path: cfg_path, key: key.into(), msg: "not supported".into() });
        }
    }
    let mut config: LoraConfig = serde_json::from_value(json.clone()).map_err(|e| ModelError::Config {
        path: cfg_path.clone(),
        key: String::new(),
        msg: e.to_string(),
    })?;
    // PEFT allows `target_modules` as a single string (a regex); accept the plain-name case.
    if let Some(s) = json.get("target_modules").and_then(|v| v.as_str()) {
        config.target_modules = vec![s.to_string()];
    }
    let weights_path = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&weights_path, &model.device)
        .map_err(|e| ModelError::CorruptFile { path: weights_path.clone(), msg: e.to_string() })?;
    let tensors: HashMap<String, Tensor> =
        tensors.into_iter().map(|(k, v)| (k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."), v)).collect();
    let scale = config.scale();
    let mut used = 0;
    for lin in model.linears_mut() {
        let a_key = format!("base_model.model.{}.lora_A.weight", lin.name);
        let b_key = format!("base_model.model.{}.lora_B.weight", lin.name);
        let (Some(a), Some(b)) = (tensors.get(&a_key), tensors.get(&b_key)) else {
            continue;
        };
        let (inp, out) = (lin.in_features(), lin.out_features());
        for (key, t, want) in [(&a_key, a, [config.r, inp]), (&b_key, b, [out, config.r])] {
            if t.dims() != want {
                return Err(ModelError::ShapeMismatch {
                    path: weights_path.clone(),
                    tensor: key.clone(),
                    expected: want.to_vec(),
                    found: t.dims().to_vec(),
                });
            }
        }
        lin.lora = Some(LoraAdapter::new(
            Var::from_tensor(&a.to_dtype(DType::F32)?)?,
            Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            scale,
            config.dropout,
        ));
        used += 2;
    }
    if used != tensors.len() {
        let mut unused: Vec<&String> = tensors.keys().filter(|k| !model.lora_params().iter().any(|(n, _)| n == *k)).collect();
        unused.sort();
        return Err(ModelError::Config {
            path: weights_path,
            key: unused.first().map(|s| s.to_string()).unwrap_or_default(),
            msg: format!("{} adapter tensor(s) match no module of the model", unused.len()),
        });
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_matching_follows_peft_suffix_rule() {
        let c = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: vec!["q_proj".into()], layers_to_transform: Some(vec![1]) };
        assert!(c.targets("model.layers.1.self_attn.q_proj"));
        assert!(!c.targets("model.layers.0.self_attn.q_proj"));
        assert!(!c.targets("model.layers.1.self_attn.qq_proj"));
        assert_eq!(layer_index("gpt_neox.layers.12.attention.dense"), Some(12));
    }
}
