//! Each architecture's HF weight names, mapped onto the decoder's block structure. Linear layers
//! are named by their module path as PEFT sees it, so LoRA targets match transformers'.

use candle_core::{Tensor, Var};

use super::{AttentionProj, Block, CausalLm, Mlp, Norm, PositionEncoding, Residual, LEARNED_POSITION_OFFSET};
use crate::model::config::{Architecture, ModelConfig};
use crate::model::layers::Linear;
use crate::model::weights::Weights;
use crate::model::Result;

/// Collects tensors, turning them into `Var`s when the whole model is trainable.
struct Builder<'a> {
    w: Weights<'a>,
    trainable: bool,
    params: Vec<(String, Var)>,
    /// `(module prefix, stored prefix)` when the checkpoint names tensors other than by module
    /// path (OPT-350m and the larger OPTs store `decoder.*` for `model.decoder.*`).
    stored_prefix: Option<(&'static str, &'static str)>,
    /// Every tensor loaded, under its module path (what `CausalLm::named_weights` saves).
    loaded: Vec<(String, Tensor)>,
}

impl Builder<'_> {
    fn stored_name(&self, name: &str) -> String {
        match self.stored_prefix {
            Some((module, stored)) if name.starts_with(module) => format!("{stored}{}", &name[module.len()..]),
            _ => name.to_string(),
        }
    }
    /// The tensor of module path `name`; as a `Var` registered under that name when trainable.
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.w.get(&self.stored_name(name), shape)?;
        let t = if self.trainable {
            let var = Var::from_tensor(&t)?;
            let t = var.as_tensor().clone();
            self.params.push((name.to_string(), var));
            t
        } else {
            t
        };
        self.loaded.push((name.to_string(), t.clone()));
        Ok(t)
    }
    fn linear(&mut self, module: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let weight = self.tensor(&format!("{module}.weight"), &[out, inp])?;
        let bias = if bias { Some(self.tensor(&format!("{module}.bias"), &[out])?) } else { None };
        Ok(Linear::new(module, weight, bias))
    }
    fn rms(&mut self, module: &str, dim: usize) -> Result<Norm> {
        Ok(Norm::Rms { weight: self.tensor(&format!("{module}.weight"), &[dim])? })
    }
    fn layer_norm(&mut self, module: &str, dim: usize) -> Result<Norm> {
        Ok(Norm::Layer { weight: self.tensor(&format!("{module}.weight"), &[dim])?, bias: self.tensor(&format!("{module}.bias"), &[dim])? })
    }
    /// The output head: its own weight when the checkpoint has one and the config does not tie
    /// it, otherwise the token embedding.
    fn lm_head(&mut self, c: &ModelConfig, embed: &Tensor, name: &str, width: usize) -> Result<Linear> {
        if c.tie_word_embeddings || !self.w.source.contains(&format!("{name}.weight")) {
            Ok(Linear::new(name, embed.clone(), None))
        } else {
            self.linear(name, c.vocab_size, width, false)
        }
    }
}

/// The parts of a model that depend on its architecture.
struct Parts {
    embed: Tensor,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    positions: PositionEncoding,
    blocks: Vec<Block>,
    final_norm: Option<Norm>,
    lm_head: Linear,
}

impl CausalLm {
    /// Builds the model from HF-named weights. `trainable` makes every base tensor a `Var`
    /// (full fine-tuning); otherwise the base is frozen and only adapters can train.
    pub fn load(config: ModelConfig, weights: Weights, trainable: bool) -> Result<Self> {
        let device = weights.device.clone();
        let dtype = weights.dtype;
        let mut b = Builder { w: weights, trainable, params: Vec::new(), stored_prefix: None, loaded: Vec::new() };
        let parts = match config.architecture {
            Architecture::Llama => llama(&mut b, &config)?,
            Architecture::GptNeox => gpt_neox(&mut b, &config)?,
            Architecture::Opt => opt(&mut b, &config)?,
        };
        Ok(Self {
            residual: Residual::of(&config),
            device,
            dtype,
            embed: parts.embed,
            project_in: parts.project_in,
            project_out: parts.project_out,
            positions: parts.positions,
            blocks: parts.blocks,
            final_norm: parts.final_norm,
            lm_head: parts.lm_head,
            full_params: b.params,
            base_weights: b.loaded,
            config,
        })
    }
}

fn rotary(b: &Builder, c: &ModelConfig) -> Result<PositionEncoding> {
    Ok(PositionEncoding::Rotary { inv_freq: Tensor::new(c.inv_freq(), &b.w.device)? })
}

fn llama(b: &mut Builder, c: &ModelConfig) -> Result<Parts> {
    let (h, v, inter) = (c.hidden_size, c.vocab_size, c.intermediate_size);
    let (q_dim, kv_dim) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let embed = b.tensor("model.embed_tokens.weight", &[v, h])?;
    let mut blocks = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        blocks.push(Block {
            norm1: b.rms(&format!("{p}.input_layernorm"), h)?,
            norm2: b.rms(&format!("{p}.post_attention_layernorm"), h)?,
            proj: AttentionProj::Separate {
                q: b.linear(&format!("{p}.self_attn.q_proj"), q_dim, h, c.attention_bias)?,
                k: b.linear(&format!("{p}.self_attn.k_proj"), kv_dim, h, c.attention_bias)?,
                v: b.linear(&format!("{p}.self_attn.v_proj"), kv_dim, h, c.attention_bias)?,
            },
            out: b.linear(&format!("{p}.self_attn.o_proj"), h, q_dim, false)?,
            mlp: Mlp::Gated {
                gate: b.linear(&format!("{p}.mlp.gate_proj"), inter, h, c.mlp_bias)?,
                up: b.linear(&format!("{p}.mlp.up_proj"), inter, h, c.mlp_bias)?,
                down: b.linear(&format!("{p}.mlp.down_proj"), h, inter, c.mlp_bias)?,
            },
        });
    }
    let final_norm = Some(b.rms("model.norm", h)?);
    let lm_head = b.lm_head(c, &embed, "lm_head", h)?;
    Ok(Parts { positions: rotary(b, c)?, embed, project_in: None, project_out: None, blocks, final_norm, lm_head })
}

fn gpt_neox(b: &mut Builder, c: &ModelConfig) -> Result<Parts> {
    let (h, v, inter) = (c.hidden_size, c.vocab_size, c.intermediate_size);
    let q_dim = c.num_attention_heads * c.head_dim;
    let embed = b.tensor("gpt_neox.embed_in.weight", &[v, h])?;
    let mut blocks = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("gpt_neox.layers.{i}");
        blocks.push(Block {
            norm1: b.layer_norm(&format!("{p}.input_layernorm"), h)?,
            norm2: b.layer_norm(&format!("{p}.post_attention_layernorm"), h)?,
            proj: AttentionProj::Fused { qkv: b.linear(&format!("{p}.attention.query_key_value"), 3 * q_dim, h, true)? },
            out: b.linear(&format!("{p}.attention.dense"), h, q_dim, true)?,
            mlp: Mlp::Plain {
                fc_in: b.linear(&format!("{p}.mlp.dense_h_to_4h"), inter, h, true)?,
                fc_out: b.linear(&format!("{p}.mlp.dense_4h_to_h"), h, inter, true)?,
            },
        });
    }
    let final_norm = Some(b.layer_norm("gpt_neox.final_layer_norm", h)?);
    // GPT-NeoX's head is untied unless the config ties it.
    let lm_head = if c.tie_word_embeddings { Linear::new("embed_out", embed.clone(), None) } else { b.linear("embed_out", v, h, false)? };
    Ok(Parts { positions: rotary(b, c)?, embed, project_in: None, project_out: None, blocks, final_norm, lm_head })
}

fn opt(b: &mut Builder, c: &ModelConfig) -> Result<Parts> {
    let (h, e, v, inter) = (c.hidden_size, c.word_embed_proj_dim, c.vocab_size, c.intermediate_size);
    let source = b.w.source;
    if !source.contains("model.decoder.embed_tokens.weight") && source.contains("decoder.embed_tokens.weight") {
        b.stored_prefix = Some(("model.decoder.", "decoder."));
    }
    let embed = b.tensor("model.decoder.embed_tokens.weight", &[v, e])?;
    let table = b.tensor("model.decoder.embed_positions.weight", &[c.max_position_embeddings + LEARNED_POSITION_OFFSET, h])?;
    let (project_in, project_out) = if e != h {
        (Some(b.linear("model.decoder.project_in", h, e, false)?), Some(b.linear("model.decoder.project_out", e, h, false)?))
    } else {
        (None, None)
    };
    let mut blocks = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.decoder.layers.{i}");
        blocks.push(Block {
            norm1: b.layer_norm(&format!("{p}.self_attn_layer_norm"), h)?,
            // The block's MLP norm; OPT calls it `final_layer_norm` inside each layer.
            norm2: b.layer_norm(&format!("{p}.final_layer_norm"), h)?,
            proj: AttentionProj::Separate {
                q: b.linear(&format!("{p}.self_attn.q_proj"), h, h, c.attention_bias)?,
                k: b.linear(&format!("{p}.self_attn.k_proj"), h, h, c.attention_bias)?,
                v: b.linear(&format!("{p}.self_attn.v_proj"), h, h, c.attention_bias)?,
            },
            out: b.linear(&format!("{p}.self_attn.out_proj"), h, h, c.attention_bias)?,
            mlp: Mlp::Plain {
                fc_in: b.linear(&format!("{p}.fc1"), inter, h, c.mlp_bias)?,
                fc_out: b.linear(&format!("{p}.fc2"), h, inter, c.mlp_bias)?,
            },
        });
    }
    let final_norm = if c.final_norm { Some(b.layer_norm("model.decoder.final_layer_norm", h)?) } else { None };
    let lm_head = b.lm_head(c, &embed, "lm_head", e)?;
    Ok(Parts { positions: PositionEncoding::Learned { table }, embed, project_in, project_out, blocks, final_norm, lm_head })
}
