//! The decoder-only transformer: Llama family (Llama 2/3, Mistral, Qwen2, SmolLM) and GPT-NeoX.

use candle_core::{DType, Device, Tensor, Var, D};

use super::cache::{causal_padding_mask, KvCache};
use super::config::{Architecture, ModelConfig};
use super::layers::{activation, attention, layer_norm, rms_norm, ForwardOptions, HookPoint, Linear, RotaryAngles};
use super::weights::Weights;
use super::Result;

enum Norm {
    Rms { weight: Tensor },
    Layer { weight: Tensor, bias: Tensor },
}

impl Norm {
    fn forward(&self, x: &Tensor, eps: f64, opts: &ForwardOptions) -> candle_core::Result<Tensor> {
        match self {
            Norm::Rms { weight } => rms_norm(x, weight, eps, opts),
            Norm::Layer { weight, bias } => layer_norm(x, weight, bias, eps),
        }
    }
}

enum AttentionProj {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// GPT-NeoX: one projection whose output is `[heads, 3, head_dim]` per token.
    Fused {
        qkv: Linear,
    },
}

enum Mlp {
    Gated { gate: Linear, up: Linear, down: Linear },
    Plain { fc_in: Linear, fc_out: Linear },
}

struct Block {
    norm1: Norm,
    norm2: Norm,
    proj: AttentionProj,
    out: Linear,
    mlp: Mlp,
}

/// A causal language model. Trainable tensors are `Var`s; everything else is a plain tensor.
pub struct CausalLm {
    pub config: ModelConfig,
    pub device: Device,
    pub dtype: DType,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Norm,
    lm_head: Linear,
    inv_freq: Tensor,
    /// Base weights registered as trainable (full fine-tuning); empty for a frozen base.
    full_params: Vec<(String, Var)>,
    /// Every base weight under its HF name, as loaded (merged adapters included): what
    /// [`Self::named_weights`] saves. A tied output head is not listed (it is the embedding).
    base_weights: Vec<(String, Tensor)>,
}

/// Collects tensors, turning them into `Var`s when the whole model is trainable.
struct Builder<'a> {
    w: Weights<'a>,
    trainable: bool,
    params: Vec<(String, Var)>,
    loaded: Vec<(String, Tensor)>,
}

impl Builder<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.w.get(name, shape)?;
        self.register(name, t)
    }
    fn register(&mut self, name: &str, t: Tensor) -> Result<Tensor> {
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
}

impl CausalLm {
    /// Builds the model from HF-named weights. `trainable` makes every base tensor a `Var`
    /// (full fine-tuning); otherwise the base is frozen and only adapters can train.
    pub fn load(config: ModelConfig, weights: Weights, trainable: bool) -> Result<Self> {
        let device = weights.device.clone();
        let dtype = weights.dtype;
        let mut b = Builder { w: weights, trainable, params: Vec::new(), loaded: Vec::new() };
        let c = &config;
        let (h, v, inter) = (c.hidden_size, c.vocab_size, c.intermediate_size);
        let (q_dim, kv_dim) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        let (embed, blocks, final_norm, lm_head) = match c.architecture {
            Architecture::Llama => {
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
                let final_norm = b.rms("model.norm", h)?;
                let lm_head = if c.tie_word_embeddings || !b.w.source.contains("lm_head.weight") {
                    Linear::new("lm_head", embed.clone(), None)
                } else {
                    b.linear("lm_head", v, h, false)?
                };
                (embed, blocks, final_norm, lm_head)
            }
            Architecture::GptNeox => {
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
                let final_norm = b.layer_norm("gpt_neox.final_layer_norm", h)?;
                let lm_head =
                    if c.tie_word_embeddings { Linear::new("embed_out", embed.clone(), None) } else { b.linear("embed_out", v, h, false)? };
                (embed, blocks, final_norm, lm_head)
            }
        };
        let inv_freq = Tensor::new(config.inv_freq(), &device)?;
        Ok(Self { config, device, dtype, embed, blocks, final_norm, lm_head, inv_freq, full_params: b.params, base_weights: b.loaded })
    }

    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    /// Final hidden states `[B, T, H]` (after the last norm).
    ///
    /// `input_ids`, `positions`: `[B, T]` u32. `valid[b][t]` is false on padding. With a cache,
    /// keys/values are appended and the mask also covers the cached tokens.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        valid: &[Vec<bool>],
        mut cache: Option<&mut KvCache>,
        opts: &ForwardOptions,
    ) -> Result<Tensor> {
        let x = self.embed(input_ids)?;
        let x = self.forward_blocks(x, positions, valid, 0..self.blocks.len(), cache.as_deref_mut(), opts)?;
        if let Some(cache) = cache {
            for (row, v) in cache.valid.iter_mut().zip(valid) {
                row.extend_from_slice(v);
            }
        }
        self.final_norm(&x, opts)
    }

    /// Token embeddings `[B, T, H]` for ids `[B, T]`.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (bsz, t) = input_ids.dims2()?;
        Ok(self.embed.index_select(&input_ids.flatten_all()?, 0)?.reshape((bsz, t, self.config.hidden_size))?)
    }

    /// Runs the blocks `layers` on the residual stream `x` `[B, T, H]` entering the first of
    /// them (no final norm). With a cache, keys/values of these layers are appended; the caller
    /// extends `cache.valid` once all layers ran (as [`Self::forward_hidden`] does).
    pub fn forward_blocks(
        &self,
        mut x: Tensor,
        positions: &Tensor,
        valid: &[Vec<bool>],
        layers: std::ops::Range<usize>,
        mut cache: Option<&mut KvCache>,
        opts: &ForwardOptions,
    ) -> Result<Tensor> {
        let (bsz, t) = positions.dims2()?;
        let c = &self.config;
        let mask = match cache.as_deref() {
            Some(cache) => causal_padding_mask(&cache.valid, valid, &self.device)?,
            None => causal_padding_mask(&vec![Vec::new(); bsz], valid, &self.device)?,
        };
        let rot = RotaryAngles::new(positions, &self.inv_freq, self.dtype)?;
        let eps = c.norm_eps;
        for (i, block) in self.blocks.iter().enumerate().skip(layers.start).take(layers.len()) {
            let normed = block.norm1.forward(&x, eps, opts)?;
            let (q, k, v) = match &block.proj {
                AttentionProj::Separate { q, k, v } => {
                    let heads = |y: Tensor, n: usize| y.reshape((bsz, t, n, c.head_dim))?.transpose(1, 2)?.contiguous();
                    (
                        heads(q.forward(&normed, opts)?, c.num_attention_heads)?,
                        heads(k.forward(&normed, opts)?, c.num_key_value_heads)?,
                        heads(v.forward(&normed, opts)?, c.num_key_value_heads)?,
                    )
                }
                AttentionProj::Fused { qkv } => {
                    let y = qkv.forward(&normed, opts)?.reshape((bsz, t, c.num_attention_heads, 3 * c.head_dim))?;
                    let part = |j: usize| y.narrow(D::Minus1, j * c.head_dim, c.head_dim)?.transpose(1, 2)?.contiguous();
                    (part(0)?, part(1)?, part(2)?)
                }
            };
            let q = rot.apply(&q)?;
            let k = rot.apply(&k)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(cache) => cache.append(i, k, v)?,
                None => (k, v),
            };
            let attn = attention(&q, &k, &v, &mask, opts)?;
            let attn = attn.transpose(1, 2)?.reshape((bsz, t, c.num_attention_heads * c.head_dim))?;
            let attn = block.out.forward(&attn, opts)?;
            let attn = opts.apply_hook(HookPoint::AttentionOutput, i, attn)?;
            let mlp = |inp: &Tensor| -> candle_core::Result<Tensor> {
                let y = match &block.mlp {
                    Mlp::Gated { gate, up, down } => {
                        let g = activation(&c.hidden_act, &gate.forward(inp, opts)?)?;
                        down.forward(&(g * up.forward(inp, opts)?)?, opts)?
                    }
                    Mlp::Plain { fc_in, fc_out } => fc_out.forward(&activation(&c.hidden_act, &fc_in.forward(inp, opts)?)?, opts)?,
                };
                opts.apply_hook(HookPoint::MlpOutput, i, y)
            };
            x = if c.use_parallel_residual {
                let m = mlp(&block.norm2.forward(&x, eps, opts)?)?;
                ((x + attn)? + m)?
            } else {
                let h = (x + attn)?;
                let m = mlp(&block.norm2.forward(&h, eps, opts)?)?;
                (h + m)?
            };
            x = opts.apply_hook(HookPoint::LayerOutput, i, x)?;
        }
        Ok(x)
    }

    /// The final norm applied to the residual stream.
    pub fn final_norm(&self, x: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        Ok(self.final_norm.forward(x, self.config.norm_eps, opts)?)
    }

    /// Logit lens: the final norm and the output head applied to an intermediate residual stream.
    pub fn lens_logits(&self, hidden: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        let normed = self.final_norm.forward(hidden, self.config.norm_eps, opts)?;
        self.logits(&normed, opts)
    }

    /// Logits in f32 for hidden states of any leading shape.
    pub fn logits(&self, hidden: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden, opts)?.to_dtype(DType::F32)?)
    }

    /// Convenience: logits `[B, T, V]` for a batch without cache.
    pub fn forward(&self, input_ids: &Tensor, positions: &Tensor, valid: &[Vec<bool>], opts: &ForwardOptions) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, positions, valid, None, opts)?;
        self.logits(&h, opts)
    }

    /// Every linear layer, in module order (the lm_head last).
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for b in self.blocks.iter_mut() {
            match &mut b.proj {
                AttentionProj::Separate { q, k, v } => out.extend([q, k, v]),
                AttentionProj::Fused { qkv } => out.push(qkv),
            }
            out.push(&mut b.out);
            match &mut b.mlp {
                Mlp::Gated { gate, up, down } => out.extend([gate, up, down]),
                Mlp::Plain { fc_in, fc_out } => out.extend([fc_in, fc_out]),
            }
        }
        out.push(&mut self.lm_head);
        out
    }

    pub fn linears(&self) -> Vec<&Linear> {
        let mut out = Vec::new();
        for b in &self.blocks {
            match &b.proj {
                AttentionProj::Separate { q, k, v } => out.extend([q, k, v]),
                AttentionProj::Fused { qkv } => out.push(qkv),
            }
            out.push(&b.out);
            match &b.mlp {
                Mlp::Gated { gate, up, down } => out.extend([gate, up, down]),
                Mlp::Plain { fc_in, fc_out } => out.extend([fc_in, fc_out]),
            }
        }
        out.push(&self.lm_head);
        out
    }

    /// Base weights registered for full fine-tuning (empty when the base is frozen).
    pub fn full_params(&self) -> &[(String, Var)] {
        &self.full_params
    }

    /// LoRA parameters under PEFT's key names (`base_model.model.<module>.lora_A.weight`).
    pub fn lora_params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for l in self.linears() {
            if let Some(lora) = &l.lora {
                out.push((format!("base_model.model.{}.lora_A.weight", l.name), lora.a.clone()));
                out.push((format!("base_model.model.{}.lora_B.weight", l.name), lora.b.clone()));
            }
        }
        out
    }

    /// What an optimizer should update: LoRA parameters if any, plus base weights when trainable.
    pub fn trainable_params(&self) -> Vec<(String, Var)> {
        let mut out = self.full_params.clone();
        out.extend(self.lora_params());
        out
    }

    /// Makes the adapters' current values the reference model's (`Adapters::Reference`): a copy of
    /// each adapter's A and B, not of the base weights.
    pub fn freeze_reference(&mut self) -> Result<()> {
        for l in self.linears_mut() {
            if let Some(lora) = &mut l.lora {
                lora.reference = Some((lora.a.as_tensor().detach().copy()?, lora.b.as_tensor().detach().copy()?));
            }
        }
        Ok(())
    }

    /// Folds every adapter into its base weight (inference speed; PEFT's `merge_and_unload`).
    pub fn merge_adapters(&mut self) -> Result<()> {
        let mut merged = Vec::new();
        for l in self.linears_mut() {
            if l.lora.is_some() {
                l.merge_lora()?;
                merged.push((format!("{}.weight", l.name), l.weight.clone()));
            }
        }
        for (name, weight) in merged {
            match self.base_weights.iter_mut().find(|(n, _)| *n == name) {
                Some(entry) => entry.1 = weight,
                // An adapter on a tied head unties it.
                None => self.base_weights.push((name, weight)),
            }
        }
        Ok(())
    }

    /// Every base weight under its HF name (adapters merged so far included; unmerged adapters
    /// not): the model's checkpoint in HF safetensors layout.
    pub fn named_weights(&self) -> &[(String, Tensor)] {
        &self.base_weights
    }

    /// The same model with every base weight trainable (full fine-tuning), built from the
    /// current weights (merged adapters included). Unmerged adapters are refused: they would be
    /// lost.
    pub fn to_trainable(&self) -> Result<CausalLm> {
        if self.linears().iter().any(|l| l.lora.is_some()) {
            return Err(super::ModelError::Input("merge or drop the LoRA adapters before making every weight trainable".into()));
        }
        let source = super::weights::TensorSource::new(&self.base_weights);
        CausalLm::load(self.config.clone(), Weights { source: &source, device: self.device.clone(), dtype: self.dtype }, true)
    }
}
