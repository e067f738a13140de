//! The decoder-only transformer: Llama family (Llama 2/3, Mistral, Qwen2, SmolLM), GPT-NeoX and
//! OPT. The block structure and forward live here; `load` maps each architecture's HF weight
//! names onto it.

mod load;

use candle_core::{DType, Device, Tensor, Var, D};

use super::cache::{causal_padding_mask, KvCache};
use super::config::ModelConfig;
use super::layers::{activation, attention, layer_norm, rms_norm, ForwardOptions, HookPoint, Linear, RotaryAngles};
use super::swiglu::silu_mul;
use super::{ModelError, Result};

/// OPT's position table starts two rows in (a fairseq leftover: rows 0 and 1 were reserved for
/// padding), so position `p` reads row `p + 2`.
const LEARNED_POSITION_OFFSET: usize = 2;

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

/// How a block wires its two sublayers around the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Residual {
    /// `h = x + attn(norm1(x))`, then `h + mlp(norm2(h))` (Llama, OPT-125m/1.3b).
    PreNorm,
    /// `x + attn(norm1(x)) + mlp(norm2(x))` (GPT-NeoX with `use_parallel_residual`).
    Parallel,
    /// `h = norm1(x + attn(x))`, then `norm2(h + mlp(h))` (OPT-350m).
    PostNorm,
}

impl Residual {
    fn of(c: &ModelConfig) -> Self {
        if c.use_parallel_residual {
            Residual::Parallel
        } else if c.do_layer_norm_before {
            Residual::PreNorm
        } else {
            Residual::PostNorm
        }
    }
}

/// How token positions enter the model.
enum PositionEncoding {
    /// Rotary embeddings on q and k; inverse frequencies `[rot/2]`.
    Rotary { inv_freq: Tensor },
    /// OPT: a learned table `[max_positions + 2, H]` added to the token embeddings.
    Learned { table: Tensor },
}

struct Block {
    norm1: Norm,
    norm2: Norm,
    proj: AttentionProj,
    out: Linear,
    mlp: Mlp,
}

/// What one forward shares between its blocks.
struct BlockInputs<'a> {
    rotary: Option<RotaryAngles>,
    mask: Tensor,
    opts: &'a ForwardOptions<'a>,
}

impl Block {
    /// Self-attention on `inp` `[B, T, H]` (already normed for pre-norm blocks), up to the
    /// output projection and the attention hook; appends keys and values to `cache`.
    fn attend(
        &self,
        c: &ModelConfig,
        i: usize,
        inp: &Tensor,
        shared: &BlockInputs,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let (bsz, t, _) = inp.dims3()?;
        let opts = shared.opts;
        let (q, k, v) = match &self.proj {
            AttentionProj::Separate { q, k, v } => {
                let heads = |y: Tensor, n: usize| y.reshape((bsz, t, n, c.head_dim))?.transpose(1, 2)?.contiguous();
                (
                    heads(q.forward(inp, opts)?, c.num_attention_heads)?,
                    heads(k.forward(inp, opts)?, c.num_key_value_heads)?,
                    heads(v.forward(inp, opts)?, c.num_key_value_heads)?,
                )
            }
            AttentionProj::Fused { qkv } => {
                let y = qkv.forward(inp, opts)?.reshape((bsz, t, c.num_attention_heads, 3 * c.head_dim))?;
                let part = |j: usize| y.narrow(D::Minus1, j * c.head_dim, c.head_dim)?.transpose(1, 2)?.contiguous();
                (part(0)?, part(1)?, part(2)?)
            }
        };
        let (q, k) = match &shared.rotary {
            Some(rot) => (rot.apply(&q, opts)?, rot.apply(&k, opts)?),
            None => (q, k),
        };
        let (k, v) = match cache {
            Some(cache) => cache.append(i, k, v)?,
            None => (k, v),
        };
        // OPT scales q by head_dim^-0.5 before the product, `attention` the scores after it: the
        // same numbers, as every OPT size has head_dim 64 and 1/8 is exact.
        let attn = attention(&q, &k, &v, &shared.mask, opts)?;
        let attn = attn.transpose(1, 2)?.reshape((bsz, t, c.num_attention_heads * c.head_dim))?;
        let attn = self.out.forward(&attn, opts)?;
        opts.apply_hook(HookPoint::AttentionOutput, i, attn)
    }

    /// The MLP on `inp`, up to the MLP hook.
    fn feed_forward(&self, c: &ModelConfig, i: usize, inp: &Tensor, opts: &ForwardOptions) -> candle_core::Result<Tensor> {
        let y = match &self.mlp {
            Mlp::Gated { gate, up, down } => {
                let g = gate.forward(inp, opts)?;
                let u = up.forward(inp, opts)?;
                let h = match c.hidden_act.as_str() {
                    "silu" | "swish" if !opts.elementary => silu_mul(&g, &u)?,
                    act => (activation(act, &g)? * u)?,
                };
                down.forward(&h, opts)?
            }
            Mlp::Plain { fc_in, fc_out } => fc_out.forward(&activation(&c.hidden_act, &fc_in.forward(inp, opts)?)?, opts)?,
        };
        opts.apply_hook(HookPoint::MlpOutput, i, y)
    }
}

/// A causal language model. Trainable tensors are `Var`s; everything else is a plain tensor.
pub struct CausalLm {
    pub config: ModelConfig,
    pub device: Device,
    pub dtype: DType,
    embed: Tensor,
    /// OPT-350m: from the word-embedding width to the blocks' width, and back after them.
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    positions: PositionEncoding,
    blocks: Vec<Block>,
    residual: Residual,
    final_norm: Option<Norm>,
    lm_head: Linear,
    /// Base weights registered as trainable (full fine-tuning); empty for a frozen base.
    full_params: Vec<(String, Var)>,
    /// Every base weight under its HF name, as loaded (merged adapters included): what
    /// [`Self::named_weights`] saves. A tied output head is not listed (it is the embedding).
    base_weights: Vec<(String, Tensor)>,
}

impl CausalLm {
    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    /// Final hidden states `[B, T, E]`: what the output head reads (see [`Self::output_hidden`]).
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
        let x = self.embed(input_ids, positions, opts)?;
        let x = self.forward_blocks(x, positions, valid, 0..self.blocks.len(), cache.as_deref_mut(), opts)?;
        if let Some(cache) = cache {
            for (row, v) in cache.valid.iter_mut().zip(valid) {
                row.extend_from_slice(v);
            }
        }
        self.output_hidden(&x, opts)
    }

    /// The residual stream entering the first block `[B, T, H]` for ids and positions `[B, T]`
    /// (transformers' `hidden_states[0]`): token embeddings, then OPT's `project_in` and learned
    /// positions.
    pub fn embed(&self, input_ids: &Tensor, positions: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        let (bsz, t) = input_ids.dims2()?;
        let tokens = self.embed.index_select(&input_ids.flatten_all()?, 0)?.reshape((bsz, t, self.config.word_embed_proj_dim))?;
        self.embed_vectors(tokens, positions, opts)
    }

    /// The token embedding table `[V, E]`, one row per token id.
    pub fn token_embeddings(&self) -> &Tensor {
        &self.embed
    }

    /// As [`Self::embed`], from token embedding vectors `[B, T, E]` instead of ids: rows of
    /// [`Self::token_embeddings`] or any mixture of them (GCG's one-hot gradient differentiates
    /// through `one_hot @ table`).
    pub fn embed_vectors(&self, tokens: Tensor, positions: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        let (bsz, t, _) = tokens.dims3()?;
        let x = match &self.project_in {
            Some(p) => p.forward(&tokens, opts)?,
            None => tokens,
        };
        match &self.positions {
            PositionEncoding::Rotary { .. } => Ok(x),
            PositionEncoding::Learned { table } => {
                let rows = self.learned_position_rows(positions)?;
                let pos = table.index_select(&rows.flatten_all()?, 0)?.reshape((bsz, t, self.config.hidden_size))?;
                Ok((x + pos)?)
            }
        }
    }

    /// Rows of the learned position table for `positions`, which must lie inside it.
    fn learned_position_rows(&self, positions: &Tensor) -> Result<Tensor> {
        let max = self.config.max_position_embeddings;
        let last = positions.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if last >= max {
            return Err(ModelError::Input(format!(
                "position {last} is past the {max} positions this {} model learned (max_position_embeddings): shorten the input or the generation",
                self.config.model_type
            )));
        }
        Ok(positions.broadcast_add(&Tensor::new(LEARNED_POSITION_OFFSET as u32, positions.device())?)?)
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
        let bsz = positions.dim(0)?;
        let c = &self.config;
        let mask = match cache.as_deref() {
            Some(cache) => causal_padding_mask(&cache.valid, valid, &self.device)?,
            None => causal_padding_mask(&vec![Vec::new(); bsz], valid, &self.device)?,
        };
        let rotary = match &self.positions {
            PositionEncoding::Rotary { inv_freq } => Some(RotaryAngles::new(positions, inv_freq, self.dtype)?),
            PositionEncoding::Learned { .. } => None,
        };
        let shared = BlockInputs { rotary, mask, opts };
        let eps = c.norm_eps;
        for (i, block) in self.blocks.iter().enumerate().skip(layers.start).take(layers.len()) {
            let layer_cache = cache.as_deref_mut();
            x = match self.residual {
                Residual::PreNorm => {
                    let attn = block.attend(c, i, &block.norm1.forward(&x, eps, opts)?, &shared, layer_cache)?;
                    let h = (x + attn)?;
                    let m = block.feed_forward(c, i, &block.norm2.forward(&h, eps, opts)?, opts)?;
                    (h + m)?
                }
                Residual::Parallel => {
                    let attn = block.attend(c, i, &block.norm1.forward(&x, eps, opts)?, &shared, layer_cache)?;
                    let m = block.feed_forward(c, i, &block.norm2.forward(&x, eps, opts)?, opts)?;
                    ((x + attn)? + m)?
                }
                Residual::PostNorm => {
                    let attn = block.attend(c, i, &x, &shared, layer_cache)?;
                    let h = block.norm1.forward(&(x + attn)?, eps, opts)?;
                    let m = block.feed_forward(c, i, &h, opts)?;
                    block.norm2.forward(&(h + m)?, eps, opts)?
                }
            };
            x = opts.apply_hook(HookPoint::LayerOutput, i, x)?;
        }
        Ok(x)
    }

    /// What the output heads read, from the residual stream after the blocks: the final norm
    /// (absent in post-LN OPT), then OPT's `project_out` to the word-embedding width.
    pub fn output_hidden(&self, x: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        let x = match &self.final_norm {
            Some(norm) => norm.forward(x, self.config.norm_eps, opts)?,
            None => x.clone(),
        };
        Ok(match &self.project_out {
            Some(p) => p.forward(&x, opts)?,
            None => x,
        })
    }

    /// Logit lens: the output stage and the output head applied to an intermediate residual stream.
    pub fn lens_logits(&self, hidden: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        let out = self.output_hidden(hidden, opts)?;
        self.logits(&out, opts)
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

    /// Every linear layer, in forward order (the lm_head last).
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out: Vec<&mut Linear> = self.project_in.iter_mut().collect();
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
        out.extend(self.project_out.iter_mut());
        out.push(&mut self.lm_head);
        out
    }

    pub fn linears(&self) -> Vec<&Linear> {
        let mut out: Vec<&Linear> = self.project_in.iter().collect();
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
        out.extend(self.project_out.iter());
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
        CausalLm::load(
            self.config.clone(),
            super::weights::Weights { source: &source, device: self.device.clone(), dtype: self.dtype },
            true,
        )
    }
}
