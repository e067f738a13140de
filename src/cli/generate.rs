use anyhow::Context;
use clap::Args;
use runner::eval::generation::{GenOptions, Generator};
use runner::model::chat::{ChatFormat, Conversation, NamedTemplate};
use runner::model::{self, LoadOptions};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model directory, .gguf file, or hub id (looked up in the local HF cache).
    #[arg(long)]
    pub model: String,
    /// Prompts; each is generated in one batch.
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long, conflicts_with = "template")]
    pub chat: bool,
    /// Wrap each prompt as a user message in a chat template shipped with runner: alpaca,
    /// vicuna_v1.1, llama2_chat, dromedary, dromedary_verbose.
    #[arg(long)]
    pub template: Option<String>,
    /// Optional system message (with --chat or --template).
    #[arg(long)]
    pub system: Option<String>,
    /// Start of the answer that the model continues (appended to the prompt as it is; the
    /// printed response is the text after it).
    #[arg(long)]
    pub prefill: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Optional LoRA adapter directory (PEFT format).
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.top_p) || args.top_p == 0.0 {
        anyhow::bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if args.temperature < 0.0 {
        anyhow::bail!("--temperature must be >= 0, got {}", args.temperature);
    }
    let named = match &args.template {
        Some(name) => Some(
            NamedTemplate::from_name(name)
                .with_context(|| format!("--template {name:?} is not a shipped chat template ({})", NamedTemplate::names()))?,
        ),
        None => None,
    };
    if args.system.is_some() && !args.chat && named.is_none() {
        anyhow::bail!("--system needs --chat or --template");
    }
    let mut lm = model::load(&args.model, &LoadOptions::default())?;
    if let Some(dir) = &args.adapter {
        model::load_adapter(&mut lm.model, dir).with_context(|| format!("loading adapter {}", dir.display()))?;
    }
    let tok = &lm.tokenizer;
    let format = match named {
        Some(t) => {
            ChatFormat::Template(t.template(tok.bos_token.as_deref().unwrap_or_default(), tok.eos_token.as_deref().unwrap_or_default()))
        }
        None if args.chat => ChatFormat::Template(tok.template()?),
        None => ChatFormat::Plain,
    };
    let conversations: Vec<Conversation> = args
        .prompts
        .iter()
        .map(|p| {
            let c = Conversation::user(p).with_prefill(args.prefill.as_deref());
            match &args.system {
                Some(s) => c.with_system(s),
                None => c,
            }
        })
        .collect();
    // All prompts in one batch. The model's chat template writes its own special tokens; the
    // shipped templates leave the first BOS to the tokenizer.
    let options = GenOptions {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        add_special_tokens: named.is_some(),
        trim: false,
        ..GenOptions::greedy(args.max_new_tokens, args.prompts.len())
    };
    let responses = Generator::new(&lm, format, options).generate(&conversations)?;
    for (p, r) in args.prompts.iter().zip(responses) {
        println!("### {p}\n{}\n", r.text);
    }
    Ok(())
}
