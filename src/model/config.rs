//! Architecture configuration, read from HF `config.json` (transformers 4.x and 5.x layouts)
//! or from GGUF metadata.

use serde_json::Value;
use std::path::Path;

use super::ModelError;

/// Which decoder block layout the weights follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Architecture {
    /// Llama 2/3, Mistral, Qwen2, SmolLM: pre-norm RMSNorm, SwiGLU MLP, rotary on all dims.
    Llama,
    /// GPT-NeoX / Pythia: LayerNorm, fused QKV, GELU MLP, partial rotary, optional parallel residual.
    GptNeox,
    /// OPT (facebook/opt-*): learned positions (offset 2), LayerNorm before or after each
    /// sublayer, ReLU MLP, biases everywhere, optional projection of the word embeddings.
    Opt,
}

/// Llama-3 style rotary frequency rescaling (`rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    pub model_type: String,
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    /// Width of the token embeddings and of the final hidden state the output heads read:
    /// `hidden_size` except OPT-350m, which projects in and out of the blocks.
    pub word_embed_proj_dim: usize,
    /// Each block normalizes before its sublayers (pre-LN); false: after each residual add (OPT-350m).
    pub do_layer_norm_before: bool,
    /// A norm follows the last block (absent in post-LN OPT).
    pub final_norm: bool,
    pub norm_eps: f64,
    pub rope_theta: f64,
    /// Fraction of each head's dimensions that are rotated (1.0 for Llama, 0 for OPT).
    pub partial_rotary_factor: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2, or `attention_bias` on Llama).
    pub attention_bias: bool,
    /// o_proj / MLP carry biases (GPT-NeoX).
    pub mlp_bias: bool,
    pub use_parallel_residual: bool,
    pub hidden_act: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            key: String::new(),
            msg: format!("not valid JSON: {e}"),
        })?;
        Self::from_json(&json).map_err(|(key, msg)| ModelError::Config { path: path.to_path_buf(), key, msg })
    }

    /// Parses a transformers `config.json`. Errors are `(key, message)`.
    pub fn from_json(json: &Value) -> Result<Self, (String, String)> {
        let obj = json.as_object().ok_or_else(|| (String::new(), "expected a JSON object".to_string()))?;
        let model_type =
            obj.get("model_type").and_then(Value::as_str).ok_or_else(|| ("model_type".to_string(), "missing".to_string()))?.to_string();
        let architecture = match model_type.as_str() {
            "llama" | "mistral" | "qwen2" | "smollm" | "smollm2" => Architecture::Llama,
            "gpt_neox" => Architecture::GptNeox,
            "opt" => Architecture::Opt,
            other => {
                return Err((
                    "model_type".into(),
                    format!("unsupported model_type {other:?} (supported: llama, mistral, qwen2, gpt_neox, opt)"),
                ))
            }
        };
        let is_opt = architecture == Architecture::Opt;
        let usize_key = |k: &str| -> Result<usize, (String, String)> {
            obj.get(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| (k.to_string(), "missing or not a non-negative integer".to_string()))
        };
        let opt_usize = |k: &str| obj.get(k).and_then(Value::as_u64).map(|v| v as usize);
        let opt_f64 = |k: &str| obj.get(k).and_then(Value::as_f64);
        let opt_bool = |k: &str| obj.get(k).and_then(Value::as_bool);

        let hidden_size = usize_key("hidden_size")?;
        let num_attention_heads = usize_key("num_attention_heads")?;
        let num_key_value_heads = opt_usize("num_key_value_heads").unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err((
                "num_key_value_heads".into(),
                format!("{num_key_value_heads} key/value heads do not divide {num_attention_heads} attention heads"),
            ));
        }
        let head_dim = match obj.get("head_dim") {
            Some(Value::Number(n)) => n.as_u64().map(|v| v as usize).ok_or(("head_dim".to_string(), "not an integer".to_string()))?,
            _ => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(("hidden_size".into(), "not divisible by num_attention_heads".into()));
                }
                hidden_size / num_attention_heads
            }
        };

        // transformers 5.x moved rope settings into `rope_parameters`; 4.x has top-level keys.
        let rope_params = obj.get("rope_parameters").and_then(Value::as_object);
        let rope_scaling_obj = rope_params.or_else(|| obj.get("rope_scaling").and_then(Value::as_object));
        let rope_theta = rope_params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or_else(|| opt_f64("rope_theta"))
            .or_else(|| opt_f64("rotary_emb_base"))
            .unwrap_or(10000.0);
        let partial_rotary_factor = rope_params
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(Value::as_f64)
            .or_else(|| opt_f64("partial_rotary_factor"))
            .or_else(|| opt_f64("rotary_pct"))
            .unwrap_or(if architecture == Architecture::GptNeox { 0.25 } else { 1.0 });
        let rope_scaling = match rope_scaling_obj {
            Some(s) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let f =
                            |k: &str| s.get(k).and_then(Value::as_f64).ok_or_else(|| (format!("rope_scaling.{k}"), "missing".to_string()));
                        Some(Llama3RopeScaling {
                            factor: f("factor")?,
                            low_freq_factor: f("low_freq_factor")?,
                            high_freq_factor: f("high_freq_factor")?,
                            original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
                        })
                    }
                    other => {
                        return Err((
                            "rope_scaling.rope_type".into(),
                            format!("unsupported rope scaling {other:?} (supported: default, llama3)"),
                        ))
                    }
                }
            }
            None => None,
        };

        // OPT's LayerNorms use torch's default eps (1e-5); its config has no key for it.
        let norm_eps = opt_f64("rms_norm_eps").or_else(|| opt_f64("layer_norm_eps")).unwrap_or(1e-5);
        let ids = |k: &str| -> Vec<u32> {
            match obj.get(k) {
                Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
                _ => vec![],
            }
        };
        let is_neox = architecture == Architecture::GptNeox;
        let opt = if is_opt { Some(OptKeys::read(obj, hidden_size)?) } else { None };
        // OPTConfig's defaults for ids its 4.x config.json files may leave out.
        let id_or = |k: &str, opt_default: u32| if is_opt && !obj.contains_key(k) { vec![opt_default] } else { ids(k) };
        Ok(ModelConfig {
            vocab_size: usize_key("vocab_size")?,
            hidden_size,
            intermediate_size: usize_key(if is_opt { "ffn_dim" } else { "intermediate_size" })?,
            num_hidden_layers: usize_key("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: opt_usize("max_position_embeddings").unwrap_or(if is_opt { 2048 } else { 4096 }),
            word_embed_proj_dim: opt.as_ref().map_or(hidden_size, |o| o.word_embed_proj_dim),
            do_layer_norm_before: opt.as_ref().is_none_or(|o| o.do_layer_norm_before),
            final_norm: opt.as_ref().is_none_or(|o| o.final_norm),
            norm_eps,
            rope_theta,
            // OPT rotates nothing: it adds learned absolute positions to the embeddings.
            partial_rotary_factor: if is_opt { 0.0 } else { partial_rotary_factor },
            rope_scaling: if is_opt { None } else { rope_scaling },
            // OPT ties its output head unless told otherwise (4.x files leave the key out).
            tie_word_embeddings: opt_bool("tie_word_embeddings").unwrap_or(is_opt),
            attention_bias: opt
                .as_ref()
                .map_or(is_neox || model_type == "qwen2" || opt_bool("attention_bias").unwrap_or(false), |o| o.enable_bias),
            mlp_bias: opt.as_ref().map_or(is_neox || opt_bool("mlp_bias").unwrap_or(false), |o| o.enable_bias),
            use_parallel_residual: is_neox && opt_bool("use_parallel_residual").unwrap_or(true),
            hidden_act: obj
                .get(if is_opt { "activation_function" } else { "hidden_act" })
                .and_then(Value::as_str)
                .unwrap_or(match architecture {
                    Architecture::GptNeox => "gelu",
                    Architecture::Opt => "relu",
                    Architecture::Llama => "silu",
                })
                .to_string(),
            bos_token_id: id_or("bos_token_id", 2).first().copied(),
            eos_token_ids: id_or("eos_token_id", 2),
            pad_token_id: id_or("pad_token_id", 1).first().copied(),
            model_type,
            architecture,
        })
    }

    pub fn rotary_dim(&self) -> usize {
        ((self.head_dim as f64) * self.partial_rotary_factor) as usize
    }

    /// Inverse frequencies of the rotary embedding, with Llama-3 rescaling when configured.
    pub fn inv_freq(&self) -> Vec<f32> {
        let dim = self.rotary_dim();
        let mut freqs: Vec<f64> = (0..dim / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / dim as f64)).collect();
        if let Some(s) = &self.rope_scaling {
            let old = s.original_max_position_embeddings as f64;
            let low_wavelen = old / s.low_freq_factor;
            let high_wavelen = old / s.high_freq_factor;
            for f in freqs.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        freqs.into_iter().map(|f| f as f32).collect()
    }
}

/// The keys only OPT's config has (same names in the transformers 4.x and 5.x layouts).
struct OptKeys {
    word_embed_proj_dim: usize,
    do_layer_norm_before: bool,
    final_norm: bool,
    enable_bias: bool,
}

impl OptKeys {
    fn read(obj: &serde_json::Map<String, Value>, hidden_size: usize) -> Result<Self, (String, String)> {
        let flag = |k: &str, default: bool| match obj.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err((k.to_string(), format!("expected true or false, found {other}"))),
        };
        if !flag("layer_norm_elementwise_affine", true)? {
            return Err(("layer_norm_elementwise_affine".into(), "LayerNorms without weight and bias are not supported".into()));
        }
        let word_embed_proj_dim = match obj.get("word_embed_proj_dim") {
            None | Some(Value::Null) => hidden_size,
            Some(v) => {
                v.as_u64().map(|v| v as usize).ok_or(("word_embed_proj_dim".to_string(), "not a non-negative integer".to_string()))?
            }
        };
        let do_layer_norm_before = flag("do_layer_norm_before", true)?;
        // `_remove_final_layer_norm` marks checkpoints fine-tuned before transformers 4.20.1.
        let final_norm = do_layer_norm_before && !flag("_remove_final_layer_norm", false)?;
        Ok(Self { word_embed_proj_dim, do_layer_norm_before, final_norm, enable_bias: flag("enable_bias", true)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama_v4() -> Value {
        json!({"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "rope_theta": 500000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true,
               "eos_token_id": [1, 2]})
    }

    #[test]
    fn reads_transformers_4_layout() {
        let c = ModelConfig::from_json(&llama_v4()).unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 500000.0);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert!(!c.attention_bias);
    }

    #[test]
    fn reads_transformers_5_layout_and_explicit_head_dim() {
        let mut v = llama_v4();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": 1e6}));
        o.insert("head_dim".into(), json!(32));
        let c = ModelConfig::from_json(&v).unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.head_dim, 32);
        assert_eq!(c.rope_scaling, None);
    }

    #[test]
    fn neox_partial_rotary_both_layouts() {
        let v4 = json!({"model_type": "gpt_neox", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 256,
                        "num_hidden_layers": 1, "num_attention_heads": 4, "rotary_pct": 0.25, "rotary_emb_base": 10000,
                        "use_parallel_residual": false});
        let c = ModelConfig::from_json(&v4).unwrap();
        assert_eq!(c.rotary_dim(), 4);
        assert!(!c.use_parallel_residual);
        assert!(c.attention_bias && c.mlp_bias);
        let v5 = json!({"model_type": "gpt_neox", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 256,
                        "num_hidden_layers": 1, "num_attention_heads": 4,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}});
        assert_eq!(ModelConfig::from_json(&v5).unwrap().rotary_dim(), 8);
    }

    /// facebook/opt-350m's config.json as transformers 4.20 wrote it (no `tie_word_embeddings`,
    /// `enable_bias`, `layer_norm_elementwise_affine` or `_remove_final_layer_norm`).
    fn opt_350m_v4() -> Value {
        json!({"_name_or_path": "facebook/opt-350m", "activation_dropout": 0.0, "activation_function": "relu",
               "architectures": ["OPTForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 2,
               "do_layer_norm_before": false, "dropout": 0.1, "eos_token_id": 2, "ffn_dim": 4096, "hidden_size": 1024,
               "init_std": 0.02, "layerdrop": 0.0, "max_position_embeddings": 2048, "model_type": "opt",
               "num_attention_heads": 16, "num_hidden_layers": 24, "pad_token_id": 1, "prefix": "</s>",
               "torch_dtype": "float16", "transformers_version": "4.20.0.dev0", "use_cache": true, "vocab_size": 50272,
               "word_embed_proj_dim": 512})
    }

    /// The same model as transformers 5.x saves its config: every OPT key explicit, `dtype`.
    fn opt_350m_v5() -> Value {
        json!({"_remove_final_layer_norm": false, "activation_function": "relu", "architectures": ["OPTForCausalLM"],
               "attention_dropout": 0.0, "bos_token_id": 2, "do_layer_norm_before": false, "dropout": 0.1,
               "dtype": "float16", "enable_bias": true, "eos_token_id": 2, "ffn_dim": 4096, "hidden_size": 1024,
               "init_std": 0.02, "layer_norm_elementwise_affine": true, "layerdrop": 0.0, "max_position_embeddings": 2048,
               "model_type": "opt", "num_attention_heads": 16, "num_hidden_layers": 24, "pad_token_id": 1,
               "tie_word_embeddings": true, "transformers_version": "5.24.0", "use_cache": true, "vocab_size": 50272,
               "word_embed_proj_dim": 512})
    }

    #[test]
    fn opt_transformers_4_and_5_layouts_agree() {
        let v4 = ModelConfig::from_json(&opt_350m_v4()).unwrap();
        assert_eq!(v4, ModelConfig::from_json(&opt_350m_v5()).unwrap());
        assert_eq!(v4.architecture, Architecture::Opt);
        assert_eq!((v4.hidden_size, v4.word_embed_proj_dim, v4.intermediate_size, v4.head_dim), (1024, 512, 4096, 64));
        assert!(!v4.do_layer_norm_before && !v4.final_norm, "post-LN OPT has no final norm");
        assert!(v4.tie_word_embeddings && v4.attention_bias && v4.mlp_bias);
        assert_eq!((v4.hidden_act.as_str(), v4.norm_eps, v4.rotary_dim()), ("relu", 1e-5, 0));
        assert_eq!((v4.bos_token_id, v4.eos_token_ids.clone(), v4.pad_token_id), (Some(2), vec![2], Some(1)));
    }

    #[test]
    fn opt_defaults_and_unsupported_keys() {
        // opt-125m / 1.3b style: pre-LN with a final norm, no projection; OPTConfig's defaults fill gaps.
        let mut v = opt_350m_v4();
        let o = v.as_object_mut().unwrap();
        for k in ["word_embed_proj_dim", "do_layer_norm_before", "bos_token_id", "eos_token_id", "pad_token_id"] {
            o.remove(k);
        }
        let c = ModelConfig::from_json(&v).unwrap();
        assert!(c.do_layer_norm_before && c.final_norm);
        assert_eq!(c.word_embed_proj_dim, c.hidden_size);
        assert_eq!((c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id), (Some(2), vec![2], Some(1)));
        v.as_object_mut().unwrap().insert("_remove_final_layer_norm".into(), json!(true));
        assert!(!ModelConfig::from_json(&v).unwrap().final_norm);
        v.as_object_mut().unwrap().insert("enable_bias".into(), json!(false));
        let c = ModelConfig::from_json(&v).unwrap();
        assert!(!c.attention_bias && !c.mlp_bias);
        v.as_object_mut().unwrap().insert("layer_norm_elementwise_affine".into(), json!(false));
        assert_eq!(ModelConfig::from_json(&v).unwrap_err().0, "layer_norm_elementwise_affine");
        v.as_object_mut().unwrap().insert("layer_norm_elementwise_affine".into(), json!(true));
        v.as_object_mut().unwrap().insert("do_layer_norm_before".into(), json!("yes"));
        assert_eq!(ModelConfig::from_json(&v).unwrap_err().0, "do_layer_norm_before");
    }

    #[test]
    fn llama3_scaling_changes_only_low_frequencies() {
        let mut v = llama_v4();
        v.as_object_mut().unwrap().insert(
            "rope_scaling".into(),
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}),
        );
        let scaled = ModelConfig::from_json(&v).unwrap().inv_freq();
        let plain = ModelConfig::from_json(&llama_v4()).unwrap().inv_freq();
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[7] - plain[7] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn errors_name_the_key() {
        let mut v = llama_v4();
        v.as_object_mut().unwrap().insert("model_type".into(), json!("bert"));
        let (key, msg) = ModelConfig::from_json(&v).unwrap_err();
        assert_eq!(key, "model_type");
        assert!(msg.contains("bert"));
        let mut v = llama_v4();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert_eq!(ModelConfig::from_json(&v).unwrap_err().0, "hidden_size");
    }
}
