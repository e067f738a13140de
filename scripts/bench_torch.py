#!/usr/bin/env python3
"""PyTorch + transformers side of the `runner bench` throughput benchmark (CPU, float32).

Usage:
  python scripts/bench_torch.py train    --model M [--batch 4] [--seq-len 128] [--lora-r 8]
                                         [--repeats 5] [--seed 0] [--threads N] [--attn eager|sdpa]
  python scripts/bench_torch.py generate --model M [--batch 4] [--prompt-len 32] [--new-tokens 64]
                                         [--repeats 5] [--seed 0] [--threads N] [--attn eager|sdpa]
  python scripts/bench_torch.py score    --model M [--batch 4] [--questions 32] [--shared-len 170]
                                         [--question-len 16] [--choices 4] [--choice-len 11] [--full]
                                         [--repeats 5] [--seed 0] [--threads N] [--attn eager|sdpa]
  python scripts/bench_torch.py make-small-llama --out DIR

M is a Hugging Face model directory (config.json + safetensors) or a .gguf file (loaded with
transformers' `gguf_file=`, which dequantizes every tensor to float32). Defaults are the same as
`runner bench`'s.

Semantics mirror `runner bench` (src/cli/bench.rs):

train     B sequences of T uniformly random token ids in [0, vocab_size) (torch.Generator seeded
          with --seed; the ids differ from the Rust ones, the shapes do not).
          --lora-r R > 0: peft LoRA r=R, lora_alpha=2R, lora_dropout=0, bias "none", on q_proj and
          v_proj (peft's default init: A kaiming-uniform, B zero); only the LoRA weights train.
          --lora-r 0: full fine-tuning, every parameter trains.
          One step = forward (model.train(), use_cache=False) + causal-LM cross-entropy over all
          tokens (labels = input ids, shifted inside transformers, mean over the B*(T-1)
          predictions; nothing masked since the "prompt" length is 0) + backward + AdamW step
          (lr 1e-5, betas (0.9, 0.999), eps 1e-8, weight_decay 0; torch.optim.AdamW defaults
          otherwise) + zero_grad(set_to_none=True).
          One untimed warm-up step, then --repeats timed steps. tokens/s = B*T*repeats / time.
generate  B random prompts of P ids each (same length, so no padding; attention mask all ones),
          greedy (do_sample=False, no logits processors), KV cache (model.generate with the
          default DynamicCache), no eos stopping (eos_token_id=None): exactly K new tokens per row
          (checked). One untimed warm-up run, then --repeats timed runs.
          new tokens/s = B*K*repeats / time.

Runtime: torch.set_num_threads(--threads, default os.cpu_count()), float32, CPU,
attn_implementation "eager" (default) or "sdpa" (--attn). Timing uses time.perf_counter around
the timed loop only (model loading, LoRA wrapping and the warm-up are not timed).

Output: one line, the same fields as the Rust line followed by the torch settings, e.g.
  bench train (torch): model=M batch=4 seq_len=128 lora_r=8 steps=3 time=1.234s step=0.411s tokens/s=1245.3 threads=2 attn=eager
  bench generate (torch): model=M batch=4 prompt_len=32 new_tokens=32 repeats=3 time=0.987s new tokens/s=389.1 threads=2 attn=eager
  bench score (torch): model=M batch=4 questions=32 shared_len=170 question_len=16 choices=4 choice_len=11 full=False repeats=5 time=...s run=...s choices/s=... threads=2 attn=eager

score     Multiple-choice scoring, the shapes of a benchmark on random ids: Q questions, each a
          context of S shared tokens (a few-shot prompt, the same for every question) and L tokens
          of its own, with C choices of N tokens each; the score of a choice is the sum of its
          tokens' log-probabilities (log_softmax in float32, inference_mode).
          Default (as `runner bench score`): the shared prompt runs once (DynamicCache), each
          question's context once on a copy of that cache (copy.deepcopy) up to its last token,
          the cache is repeated for the C choices (batch_repeat_interleave), and one batch of C
          rows ([last context token] + choice[:-1]) reads the choices' log-probabilities.
          --full (as lm-eval's HFLM): every sequence context + choice[:-1] whole, in batches of B
          (equal lengths, so no padding), logits only at the choice positions (logits_to_keep).
          One untimed warm-up run, then --repeats timed runs. choices/s = Q*C / (time per run).

make-small-llama --out DIR
  Saves a randomly initialised LlamaForCausalLM (seed 0, float32, safetensors): hidden 256,
  intermediate 688, 4 layers, 8 attention heads (head_dim 32), 4 key/value heads, vocab 32000,
  max_position_embeddings 2048, rms_norm_eps 1e-5, rope_theta 1e4, untied lm_head,
  bos = eos = pad = 0. config.json also gets a top-level "rope_theta" besides transformers 5's
  "rope_parameters". tokenizer.json + tokenizer_config.json are copied from
  tests/fixtures/tiny/tokenizer (vocab 384, NOT compatible with the 32000-row embedding; they are
  only there because the Rust loader requires a tokenizer file -- the benchmark uses random ids and
  never decodes).
"""

import argparse
import json
import os
import pathlib
import shutil
import sys
import time
import warnings

import torch

# peft/transformers deprecation chatter (e.g. is_gradient_checkpointing) is not useful here.
warnings.filterwarnings("ignore", category=FutureWarning)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "tiny" / "tokenizer"


def setup_threads(threads):
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return torch.get_num_threads()


def load_model(model: str, attn: str):
    from transformers import AutoModelForCausalLM

    p = pathlib.Path(model).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        m = AutoModelForCausalLM.from_pretrained(
            str(p.parent), gguf_file=p.name, dtype=torch.float32, attn_implementation=attn
        )
    else:
        m = AutoModelForCausalLM.from_pretrained(
            str(p) if p.exists() else model, dtype=torch.float32, attn_implementation=attn
        )
    return m.to(torch.float32)


def random_ids(vocab: int, batch: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, n), generator=g, dtype=torch.long)


def cmd_train(a) -> int:
    threads = setup_threads(a.threads)
    torch.manual_seed(a.seed)
    model = load_model(a.model, a.attn)
    vocab = model.config.vocab_size
    if a.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, bias="none",
            target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, cfg)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ids = random_ids(vocab, a.batch, a.seq_len, a.seed)
    mask = torch.ones_like(ids)

    def step() -> float:
        out = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    loss0 = step()
    t0 = time.perf_counter()
    for _ in range(a.repeats):
        step()
    secs = time.perf_counter() - t0
    tokens = a.batch * a.seq_len * a.repeats
    print(f"bench train (torch): model={a.model} batch={a.batch} seq_len={a.seq_len} lora_r={a.lora_r} "
          f"steps={a.repeats} time={secs:.3f}s step={secs / a.repeats:.3f}s tokens/s={tokens / secs:.1f} "
          f"threads={threads} attn={a.attn}")
    n_train = sum(p.numel() for p in params)
    print(f"  (trainable params {n_train}, warm-up loss {loss0:.4f}, torch {torch.__version__})", file=sys.stderr)
    return 0


def cmd_generate(a) -> int:
    from transformers import GenerationConfig

    threads = setup_threads(a.threads)
    torch.manual_seed(a.seed)
    model = load_model(a.model, a.attn)
    model.eval()
    ids = random_ids(model.config.vocab_size, a.batch, a.prompt_len, a.seed)
    mask = torch.ones_like(ids)
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    gcfg = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=a.new_tokens, eos_token_id=None,
        pad_token_id=pad, use_cache=True,
        # clear sampling defaults so no logits processors/warpers are added
        temperature=None, top_p=None, top_k=None,
    )

    def run():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gcfg)
        assert out.shape == (a.batch, a.prompt_len + a.new_tokens), tuple(out.shape)
        return out

    run()
    t0 = time.perf_counter()
    for _ in range(a.repeats):
        run()
    secs = time.perf_counter() - t0
    tokens = a.batch * a.new_tokens * a.repeats
    print(f"bench generate (torch): model={a.model} batch={a.batch} prompt_len={a.prompt_len} "
          f"new_tokens={a.new_tokens} repeats={a.repeats} time={secs:.3f}s new tokens/s={tokens / secs:.1f} "
          f"threads={threads} attn={a.attn}")
    return 0


def cmd_score(a) -> int:
    import copy

    from transformers import DynamicCache

    threads = setup_threads(a.threads)
    torch.manual_seed(a.seed)
    model = load_model(a.model, a.attn)
    model.eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(a.seed)
    shared = torch.randint(0, vocab, (a.shared_len,), generator=g, dtype=torch.long)
    questions = [
        (torch.randint(0, vocab, (a.question_len,), generator=g, dtype=torch.long),
         torch.randint(0, vocab, (a.choices, a.choice_len), generator=g, dtype=torch.long))
        for _ in range(a.questions)
    ]
    n = a.choice_len

    def choice_logprobs(logits, targets):
        lp = torch.log_softmax(logits.float(), dim=-1)
        return lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1)

    def run_full() -> float:
        seqs = torch.stack([torch.cat([shared, q, c]) for q, cs in questions for c in cs])
        total = 0.0
        for i in range(0, seqs.shape[0], a.batch):
            b = seqs[i:i + a.batch]
            logits = model(input_ids=b[:, :-1], use_cache=False, logits_to_keep=n).logits
            total += float(choice_logprobs(logits, b[:, -n:]).sum())
        return total

    def run_cached() -> float:
        prefix = DynamicCache()
        if a.shared_len > 0:
            model(input_ids=shared[None], past_key_values=prefix, use_cache=True, logits_to_keep=1)
        total = 0.0
        for q, cs in questions:
            cache = copy.deepcopy(prefix)
            if a.question_len > 1:
                model(input_ids=q[None, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(a.choices)
            rows = torch.cat([q[-1:].expand(a.choices, 1), cs[:, :-1]], dim=1)
            logits = model(input_ids=rows, past_key_values=cache, use_cache=True).logits
            total += float(choice_logprobs(logits, cs).sum())
        return total

    run = run_full if a.full else run_cached
    with torch.inference_mode():
        total = run()
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            run()
        secs = time.perf_counter() - t0
    per_run = secs / a.repeats
    print(f"bench score (torch): model={a.model} batch={a.batch} questions={a.questions} shared_len={a.shared_len} "
          f"question_len={a.question_len} choices={a.choices} choice_len={a.choice_len} full={a.full} "
          f"repeats={a.repeats} time={secs:.3f}s run={per_run:.3f}s choices/s={a.questions * a.choices / per_run:.1f} "
          f"threads={threads} attn={a.attn}")
    print(f"  (sum of the log-likelihoods {total:.4f}, torch {torch.__version__})", file=sys.stderr)
    return 0


def cmd_make_small_llama(a) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, hidden_act="silu",
        attention_bias=False, mlp_bias=False,
    )
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)

    # Also write the flat rope_theta key next to transformers 5's rope_parameters.
    cpath = out / "config.json"
    c = json.loads(cpath.read_text())
    rp = c.get("rope_parameters") or {}
    c["rope_theta"] = float(rp.get("rope_theta", c.get("rope_theta", 10000.0)))
    cpath.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")

    tok = json.loads((TINY_TOKENIZER / "tokenizer.json").read_text())
    tok_vocab = len(tok["model"]["vocab"]) + sum(
        1 for t in tok.get("added_tokens", []) if t["content"] not in tok["model"]["vocab"])
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TINY_TOKENIZER / f, out / f)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: LlamaForCausalLM {n} params; tokenizer copied from {TINY_TOKENIZER} "
          f"(vocab {tok_vocab} vs model vocab {cfg.vocab_size}: ids >= {tok_vocab} cannot be decoded; "
          f"fine for random-id benchmarks)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description="PyTorch side of `runner bench` (CPU, float32).")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--model", required=True, help="HF model directory or .gguf file")
        p.add_argument("--batch", type=int, default=4)
        p.add_argument("--repeats", type=int, default=5, help="timed repetitions after one warm-up")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=0, help="torch threads (0 = os.cpu_count())")
        p.add_argument("--attn", choices=["eager", "sdpa"], default="eager")

    t = sub.add_parser("train", help="training steps on random tokens")
    common(t)
    t.add_argument("--seq-len", type=int, default=128)
    t.add_argument("--lora-r", type=int, default=8, help="LoRA rank on q_proj,v_proj; 0 = full fine-tuning")
    g = sub.add_parser("generate", help="greedy KV-cache generation from random prompts")
    common(g)
    g.add_argument("--prompt-len", type=int, default=32)
    g.add_argument("--new-tokens", type=int, default=64)
    sc = sub.add_parser("score", help="multiple-choice scoring after a shared few-shot prompt")
    common(sc)
    sc.add_argument("--questions", type=int, default=32)
    sc.add_argument("--shared-len", type=int, default=170)
    sc.add_argument("--question-len", type=int, default=16)
    sc.add_argument("--choices", type=int, default=4)
    sc.add_argument("--choice-len", type=int, default=11)
    sc.add_argument("--full", action="store_true", help="every sequence whole, as lm-eval")
    s = sub.add_parser("make-small-llama", help="save a random small Llama for benchmarking")
    s.add_argument("--out", required=True)

    a = ap.parse_args()
    if a.cmd == "train":
        return cmd_train(a)
    if a.cmd == "generate":
        return cmd_generate(a)
    if a.cmd == "score":
        return cmd_score(a)
    return cmd_make_small_llama(a)


if __name__ == "__main__":
    sys.exit(main())
