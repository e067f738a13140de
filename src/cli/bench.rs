//! `runner bench`: throughput of training steps, generation and multiple-choice scoring on one
//! model, the same configurations `scripts/bench_torch.py` runs with PyTorch + transformers.

use candle_core::{DType, Device};
use clap::{Args, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runner::model::{self, add_lora, ForwardOptions, GenerationConfig, LoadOptions, LoraConfig};
use runner::train::{lm_loss, AdamW, AdamWConfig, Gradients, TrainBatch};
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Training steps (forward, backward, AdamW) on random tokens.
    Train(TrainBench),
    /// Greedy batched generation with the KV cache from random prompts.
    Generate(GenerateBench),
    /// Multiple-choice scoring: the log-likelihood of every choice of every question after a
    /// shared few-shot prompt and the question (random tokens, the shapes of a benchmark).
    Score(ScoreBench),
}

#[derive(Args, Debug)]
pub struct Common {
    /// Model directory, .gguf file or hub id.
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Timed repetitions (after one untimed warm-up).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `cuda` needs a build with `--features cuda` (scripts/build_cuda.sh).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: BenchDevice,
    /// Dtype of the base weights (LoRA weights and optimizer state stay f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: BenchDType,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum BenchDevice {
    Cpu,
    Cuda,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum BenchDType {
    F32,
    Bf16,
    F16,
}

impl Common {
    fn load_options(&self, trainable: bool) -> anyhow::Result<LoadOptions> {
        let device = match self.device {
            BenchDevice::Cpu => Device::Cpu,
            BenchDevice::Cuda => Device::new_cuda(0)?,
        };
        let dtype = match self.dtype {
            BenchDType::F32 => DType::F32,
            BenchDType::Bf16 => DType::BF16,
            BenchDType::F16 => DType::F16,
        };
        Ok(LoadOptions { device, dtype, trainable })
    }
}

#[derive(Args, Debug)]
pub struct TrainBench {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// LoRA rank on q_proj and v_proj; 0 trains all weights.
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
}

#[derive(Args, Debug)]
pub struct GenerateBench {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
}

/// The defaults are the shape of TruthfulQA MC1 in lm-eval's 6-shot form on SmolLM2's tokenizer
/// (a 170-token preamble; questions of 16 tokens, choices of 11, 4.2 choices a question).
#[derive(Args, Debug)]
pub struct ScoreBench {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 32)]
    pub questions: usize,
    /// Tokens every context starts with (the few-shot prompt; 0 for none).
    #[arg(long, default_value_t = 170)]
    pub shared_len: usize,
    /// Tokens of each question after the shared prompt.
    #[arg(long, default_value_t = 16)]
    pub question_len: usize,
    #[arg(long, default_value_t = 4)]
    pub choices: usize,
    #[arg(long, default_value_t = 11)]
    pub choice_len: usize,
    /// Score every sequence whole (as lm-eval does), without computing shared tokens once.
    #[arg(long)]
    pub full: bool,
}

fn random_ids(rng: &mut StdRng, vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Train(a) => train(a),
        BenchCommand::Generate(a) => generate(a),
        BenchCommand::Score(a) => score(a),
    }
}

fn train(a: TrainBench) -> anyhow::Result<()> {
    let c = &a.common;
    let mut lm = model::load(&c.model, &c.load_options(a.lora_r == 0)?)?;
    if a.lora_r > 0 {
        let cfg = LoraConfig {
            r: a.lora_r,
            alpha: 2.0 * a.lora_r as f64,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            layers_to_transform: None,
        };
        add_lora(&mut lm.model, &cfg, c.seed)?;
    }
    let m = &lm.model;
    let params = m.trainable_params();
    let mut opt = AdamW::new(&params, AdamWConfig::default())?;
    let mut rng = StdRng::seed_from_u64(c.seed);
    let seqs: Vec<Vec<u32>> = (0..c.batch).map(|_| random_ids(&mut rng, m.config.vocab_size, a.seq_len)).collect();
    let batch = TrainBatch::with_prompt_masked(seqs, &vec![0; c.batch]);
    let opts = ForwardOptions::training(None);
    // One step: its loss, the time it took, and (when asked, not timed) the gradients' norm.
    let mut step = |with_norm: bool| -> anyhow::Result<(f32, f64, Option<f64>)> {
        let start = Instant::now();
        let loss = lm_loss(m, &batch, &opts)?;
        let grads = Gradients::of(&loss, &params)?;
        let mut secs = start.elapsed().as_secs_f64();
        let norm = if with_norm { Some(grads.global_norm()?) } else { None };
        let resume = Instant::now();
        opt.step(&params, &grads, 1e-5)?;
        let loss = loss.to_scalar::<f32>()?;
        secs += resume.elapsed().as_secs_f64();
        Ok((loss, secs, norm))
    };
    step(false)?;
    let (mut secs, mut last) = (0.0, (0.0, None));
    for i in 0..c.repeats {
        let (loss, took, norm) = step(i + 1 == c.repeats)?;
        secs += took;
        last = (loss, norm);
    }
    let tokens = (c.batch * a.seq_len * c.repeats) as f64;
    // The last step's loss and gradient norm, printed exactly, tell whether two builds compute
    // the same steps.
    println!(
        "bench train: model={} device={:?} dtype={:?} batch={} seq_len={} lora_r={} steps={} time={:.3}s step={:.3}s tokens/s={:.1} last_loss={:?} last_grad_norm={:?}",
        c.model,
        c.device,
        c.dtype,
        c.batch,
        a.seq_len,
        a.lora_r,
        c.repeats,
        secs,
        secs / c.repeats as f64,
        tokens / secs,
        last.0,
        last.1.unwrap_or(f64::NAN)
    );
    Ok(())
}

fn generate(a: GenerateBench) -> anyhow::Result<()> {
    let c = &a.common;
    let lm = model::load(&c.model, &c.load_options(false)?)?;
    let m = &lm.model;
    let mut rng = StdRng::seed_from_u64(c.seed);
    let prompts: Vec<Vec<u32>> = (0..c.batch).map(|_| random_ids(&mut rng, m.config.vocab_size, a.prompt_len)).collect();
    let cfg = GenerationConfig { max_new_tokens: a.new_tokens, ..Default::default() };
    model::generate(m, &prompts, &cfg, 0, None)?;
    let start = Instant::now();
    for _ in 0..c.repeats {
        model::generate(m, &prompts, &cfg, 0, None)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let tokens = (c.batch * a.new_tokens * c.repeats) as f64;
    println!(
        "bench generate: model={} device={:?} dtype={:?} batch={} prompt_len={} new_tokens={} repeats={} time={:.3}s new tokens/s={:.1}",
        c.model,
        c.device,
        c.dtype,
        c.batch,
        a.prompt_len,
        a.new_tokens,
        c.repeats,
        secs,
        tokens / secs
    );
    Ok(())
}

fn score(a: ScoreBench) -> anyhow::Result<()> {
    let c = &a.common;
    let lm = model::load(&c.model, &c.load_options(false)?)?;
    let m = &lm.model;
    let mut rng = StdRng::seed_from_u64(c.seed);
    let vocab = m.config.vocab_size;
    let shared = random_ids(&mut rng, vocab, a.shared_len);
    let mut requests = Vec::new();
    for _ in 0..a.questions {
        let context = [shared.clone(), random_ids(&mut rng, vocab, a.question_len)].concat();
        for _ in 0..a.choices {
            requests.push((context.clone(), random_ids(&mut rng, vocab, a.choice_len)));
        }
    }
    let run = || -> anyhow::Result<f64> {
        let scores = if a.full {
            model::score_continuations(m, &requests, c.batch, 0)?
        } else {
            model::score_continuations_shared_prefix(m, &requests, c.batch, 0)?
        };
        Ok(scores.iter().map(|s| s.logprob).sum())
    };
    let total = run()?;
    let start = Instant::now();
    for _ in 0..c.repeats {
        run()?;
    }
    let secs = start.elapsed().as_secs_f64();
    let per_run = secs / c.repeats as f64;
    println!(
        "bench score: model={} device={:?} dtype={:?} batch={} questions={} shared_len={} question_len={} choices={} choice_len={} full={} repeats={} time={:.3}s run={:.3}s choices/s={:.1}",
        c.model,
        c.device,
        c.dtype,
        c.batch,
        a.questions,
        a.shared_len,
        a.question_len,
        a.choices,
        a.choice_len,
        a.full,
        c.repeats,
        secs,
        per_run,
        requests.len() as f64 / per_run
    );
    eprintln!("  (sum of the log-likelihoods {total:.4})");
    Ok(())
}
