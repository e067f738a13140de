#!/usr/bin/env python3
"""Generate tiny, deterministic reference fixtures for the Rust `runner` tests.

Usage:  python scripts/make_reference.py [--out DIR] [--only MODEL ...]
        (default DIR: tests/fixtures/tiny next to this script's repository root; existing outputs
        are overwritten). --only remakes just the named <model>/ directories (and their
        reference.json), reading the tokenizer already in DIR/tokenizer and writing the package
        versions to <model>/versions.json instead of DIR/versions.json; nothing else is touched.

Requirements: torch, transformers, peft, tokenizers, safetensors, gguf, numpy (CPU only; no network,
nothing is downloaded from the Hugging Face hub -- every model is randomly initialised here).

Everything runs on CPU in float32 with fixed seeds, `torch.use_deterministic_algorithms(True)` and
`torch.set_num_threads(1)`. Re-running with the same package versions on the same kind of CPU
gives byte-identical files (float results may differ in the last bits on other CPUs / versions,
so Rust tests should compare floats with a tolerance).

Output files (all paths relative to the output dir)
===================================================

versions.json
    {"python", "torch", "transformers", "peft", "tokenizers", "safetensors", "gguf", "numpy"}:
    version strings of the packages that produced the fixtures.

tokenizer/tokenizer.json, tokenizer/tokenizer_config.json
    Byte-level BPE (HF `tokenizers`): ByteLevel pre-tokenizer (add_prefix_space=False, GPT-2 regex),
    ByteLevel decoder, no normalizer; the post-processor written by transformers is a
    TemplateProcessing that adds nothing ("single": [A]), i.e. no special tokens are added,
    vocab_size 384 = 3 special + 256 byte symbols + 125 merges, trained on the CORPUS string below.
    Special tokens: id 0 `<|endoftext|>` (bos = eos = pad), id 1 `<|im_start|>`, id 2 `<|im_end|>`.
    tokenizer_config.json is written by transformers.PreTrainedTokenizerFast.save_pretrained and
    contains "bos_token", "eos_token", "pad_token" (all "<|endoftext|>") and "chat_template"
    (ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, plus
    `<|im_start|>assistant\\n` when add_generation_prompt). The template is put inside
    tokenizer_config.json (not in a separate chat_template.jinja); "tokenizer_class" is set to
    "PreTrainedTokenizerFast" so that older transformers versions can load it too. It also holds
    "backend": "tokenizers" and the usual huge "model_max_length" (1e30, does not fit in a u64).

<model>/ for model in {llama_gqa, qwen2_bias_tied, gpt_neox, opt_pre_ln, opt_post_ln}
    config.json, generation_config.json, model.safetensors  -- `save_pretrained(safe_serialization=True)`,
        float32, single file. All use vocab_size 384, bos = eos = pad = 0, attn_implementation "eager";
        max_position_embeddings 128 (64 for the OPT models).
        * llama_gqa: LlamaForCausalLM, hidden 64, intermediate 128, 2 layers, 4 heads (head_dim 16),
          2 kv heads (GQA), rms_norm_eps 1e-5, rope_theta 1e4, untied lm_head.
        * qwen2_bias_tied: Qwen2ForCausalLM, same sizes, q/k/v biases, rope_theta 1e6,
          tie_word_embeddings=True (no lm_head.weight tensor in the safetensors file; the lm head is
          model.embed_tokens.weight).
        * gpt_neox: GPTNeoXForCausalLM, hidden 64, intermediate 256, 2 layers, 4 heads,
          rotary_pct 0.25 (rotary dims 4 of head_dim 16, rotate_half / non-interleaved),
          rope base 1e4, use_parallel_residual=True, hidden_act "gelu" (exact erf gelu),
          layer_norm_eps 1e-5, untied embed_out, fused query_key_value with biases.
        * opt_pre_ln: OPTForCausalLM like opt-125m/1.3b: hidden 32, ffn_dim 64, 2 layers, 4 heads
          (head_dim 8), do_layer_norm_before=True (with the decoder's final_layer_norm), ReLU,
          enable_bias, word_embed_proj_dim = hidden, tied lm_head (no lm_head.weight in the file),
          dropout = attention_dropout = layerdrop = 0, learned positions (64 + 2 rows, offset 2).
          Tensors named model.decoder.* (as opt-125m/1.3b store them).
        * opt_post_ln: OPTForCausalLM like opt-350m: hidden 32, ffn_dim 64, 2 layers, 2 heads
          (head_dim 16), do_layer_norm_before=False (no decoder final_layer_norm),
          word_embed_proj_dim 16 (project_in [32, 16] / project_out [16, 32], no bias), tied
          lm_head, dropout 0. Tensors renamed to decoder.* after saving (as opt-350m stores them);
          the script asserts transformers loads that file back to the same weights.
    <model>/versions.json -- only in directories made with --only (the OPT models): the package
        versions that made that directory (DIR/versions.json is for the rest).
        transformers >= 5 writes RoPE settings only inside "rope_parameters"
        ({"rope_theta", "rope_type", ["partial_rotary_factor"]}). For loaders that expect the older
        flat layout this script ALSO writes top-level "rope_theta" (all models) and
        "rotary_pct" + "rotary_emb_base" (gpt_neox) into config.json; both layouts agree.
        Weights: random init with initializer_range 0.2 (seed 0), then EVERY parameter (incl. biases,
        norm weights, the zero padding row of the embedding) gets + 0.05 * randn (seed 1).
    tokenizer.json, tokenizer_config.json  -- copies of tokenizer/.
    adapter_peft/adapter_config.json, adapter_peft/adapter_model.safetensors
        The LoRA adapter used for "lora" below, saved by peft BEFORE the training step.
        r=4, lora_alpha=8 (scale alpha/r = 2), dropout 0, bias "none", targets q_proj,v_proj
        (llama, qwen2, opt_pre_ln), query_key_value,dense_4h_to_h (gpt_neox) or
        q_proj,v_proj,fc2,project_in,project_out (opt_post_ln); random A and B (B non-zero).
        Tensor names: base_model.model.<module path>.lora_A.weight [r, in] / .lora_B.weight [out, r].
        "base_model_name_or_path" is rewritten to the model directory name (e.g. "llama_gqa").
    reference.json  -- see below.

llama_gqa_sharded_bf16/
    The llama_gqa weights cast to bfloat16 and saved with a small max_shard_size:
    model.safetensors.index.json + model-0000k-of-0000n.safetensors (n >= 2), config.json
    (with "dtype": "bfloat16"), generation_config.json, tokenizer.json, tokenizer_config.json.
    No reference.json (compare against llama_gqa with a bf16-sized tolerance).

llama_gqa.gguf
    The llama_gqa model in llama.cpp GGUF layout (written with gguf.GGUFWriter, arch "llama"):
    token_embd.weight, blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight as
    Q8_0 (gguf.quants.quantize), blk.N.{attn_norm,ffn_norm}.weight, output_norm.weight as F32,
    output.weight as Q8_0. attn_q / attn_k rows are permuted like llama.cpp's convert_hf_to_gguf.py:
    w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols) with
    n_head = 4 for q and n_head = num_key_value_heads = 2 for k.
    Metadata: general.architecture "llama", general.name "tiny-llama-gqa", general.file_type 7
    (MOSTLY_Q8_0), general.quantization_version 2, llama.{vocab_size, context_length,
    embedding_length, block_count, feed_forward_length, attention.head_count,
    attention.head_count_kv, rope.freq_base, attention.layer_norm_rms_epsilon,
    rope.dimension_count (= head_dim 16)}, tokenizer.ggml.{model "gpt2", pre "gpt2" (the plain
    GPT-2 split regex, which is what the ByteLevel pre-tokenizer uses; "smollm" would split digits),
    tokens, token_type (1 normal, 3 control for the 3 specials), merges ("a b" strings),
    bos_token_id 0, eos_token_id 0, padding_token_id 0, add_bos_token false, add_eos_token false},
    tokenizer.chat_template.

llama_gqa_gguf_reference.json
    {"seq": seqs[0] (9 ids), "logits": [9][384] float32 logits of the model loaded back with
     transformers AutoModelForCausalLM.from_pretrained(<out>, gguf_file="llama_gqa.gguf")
     (transformers dequantizes Q8_0 and un-permutes q/k),
     "greedy": {"prompt_ids": seqs[1], "max_new_tokens": 10, "new_ids": 10 greedy ids}}.
    The script also dequantizes the file itself (gguf.quants.dequantize + inverse permutation) and
    asserts that the transformers-loaded weights are identical to that.

<model>/reference.json fields (ids are ints; every computed float is a float32 value written as
the SHORTEST decimal that round-trips to that float32 (<= 9 significant digits), so parsing it as
f32 -- or as f64 and casting to f32 -- gives back the exact float32). V = 384.
Hyper-parameters (lr, betas, ...) are written as plain decimals.
    "seq_texts": [text0, text1] -- the sentences that were tokenized into seqs (for tokenizer tests).
    "seqs": [[9 ids], [6 ids]] -- tokenizer(text, add_special_tokens=False) of seq_texts.
    "logits": [9][V] -- logits of a forward on seqs[0] alone (batch dim dropped).
    "left_padded": {
        "input_ids": [2][9] -- seqs left-padded with 0 to length 9,
        "attention_mask": [2][9] -- 1 for real tokens, 0 for pads,
        "position_ids": [2][9] -- max(cumsum(attention_mask) - 1, 0) (pads get 0). For OPT the
            script asserts that leaving position_ids out (transformers then derives
            cumsum(mask) * mask - 1 itself, pads -1) gives the same logits on real tokens.
        "logits": [2][9][V] -- forward(input_ids, attention_mask, position_ids), eager attention.
            Rows at pad positions (attention_mask 0) are NOT meaningful (a fully masked query row;
            transformers uses finfo.min, not -inf) -- compare only positions with mask 1.}
    "train_batch": {
        "input_ids": [2][9] -- seqs RIGHT-padded with 0 to length 9,
        "attention_mask": [2][9],
        "labels": [2][9] -- copy of input_ids with the first 3 tokens of each row (prompt) and all
            pad positions set to -100.}
    "loss": float -- model(input_ids, attention_mask, labels).loss: mean cross-entropy over all
        non-ignored (-100) SHIFTED targets of the batch (logits[:, :-1] predict labels[:, 1:]);
        here 6 + 3 = 9 target tokens.
    "greedy": {"prompt_ids": seqs[1], "max_new_tokens": 10, "new_ids": [10 ids]} -- model.generate,
        do_sample=False, no eos (never stops early, no min-length masking), pad 0. The script
        asserts this equals a plain argmax loop over full (uncached) forwards.
    "greedy_batch": {"prompts": [seqs[0][:5], seqs[1]], "max_new_tokens": 10,
        "new_ids": [[10 ids], [10 ids]]} -- batched generate with LEFT padding to length 6 (pad 0,
        attention_mask built by hand; generate derives position_ids from the mask). The script
        asserts each row equals the unbatched greedy result of that prompt.
    "continuations": 4 x {"context": ids, "continuation": ids, "logprob": float, "is_greedy": bool}
        from ONE unpadded forward of context + continuation: logprob = sum over continuation tokens
        c_i at position p_i of log_softmax(logits[p_i - 1])[c_i]; is_greedy = every c_i is the
        argmax of logits[p_i - 1]. Items 0 and 3 use greedy tokens (is_greedy true).
    "full_ft": {
        "grad_global_norm": float -- L2 norm over the gradients of ALL parameters of "loss" (before
            any clipping; torch.nn.utils.get_total_norm). Each parameter counts once: for
            qwen2_bias_tied the tied embedding / lm-head weight is ONE parameter whose gradient is
            the sum of both uses.
        "lr": 1e-3, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8,
        "loss_after_step": float -- loss on train_batch after ONE torch.optim.AdamW step
            (decoupled weight decay applied to every parameter, incl. biases and norms; no clipping,
            no amsgrad, step 1 bias correction).}
    "lora": {
        "config": {"r": 4, "alpha": 8, "targets": [...]},
        "logits": [9][V] -- logits of base + adapter (adapter_peft/, unmerged) on seqs[0],
        "loss": float -- on train_batch,
        "grad_global_norm": float -- L2 norm over LoRA A/B gradients only,
        "lr": 1e-2, "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8,
        "loss_after_step": float -- after one AdamW step on the LoRA parameters only (base frozen),
        "merged_logits_maxdiff": float -- max |logits(merge_and_unload) - logits(unmerged)| on
            seqs[0] (a float32 rounding-level sanity number, not a target).}

JSON layout (reference files): one top-level key per line, values compact (no spaces).
The same float format is used in llama_gqa_gguf_reference.json.
"""

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import gguf  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    GenerationConfig,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "tiny"

CORPUS = """The quick brown fox jumps over the lazy dog. The dog was not amused, but the fox
did not care at all. It ran across the field and into the forest, where the trees were tall
and the air was cool and quiet.

A careful assistant answers questions honestly and helpfully. When a user asks for something
harmful, the assistant politely refuses and explains why. When the request is safe, the
assistant gives a clear and useful answer. Safety is not the same as silence: a good answer
is both safe and helpful.

Language models read text as a sequence of tokens. Each token is a small piece of a word,
a whole word, or a piece of punctuation. The model predicts the next token from the tokens
that came before it, one step at a time. Training changes the weights of the model so that
the right token becomes more likely.

Researchers test models with many prompts. They measure how often the model refuses, how
often it complies, and whether the answers are correct. They compare the results before and
after fine tuning, and they write careful notes about what they find.
"""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 384
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SEQ_TEXTS = ["The user asks the assistant.", "The model is safe."]
SEQ_LENS = [9, 6]
PAD = 0
PROMPT_LEN = 3
MAX_NEW = 10
INIT_RANGE = 0.2
NOISE = 0.05

LORA_TARGETS = {
    "llama_gqa": ["q_proj", "v_proj"],
    "qwen2_bias_tied": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value", "dense_4h_to_h"],
    "opt_pre_ln": ["q_proj", "v_proj"],
    "opt_post_ln": ["q_proj", "v_proj", "fc2", "project_in", "project_out"],
}
MODELS = ("llama_gqa", "qwen2_bias_tied", "gpt_neox", "opt_pre_ln", "opt_post_ln")
TIED = ("qwen2_bias_tied", "opt_pre_ln", "opt_post_ln")
# opt_post_ln is stored as opt-350m is: `decoder.*` instead of `model.decoder.*`.
STORED_PREFIX = {"opt_post_ln": ("model.decoder.", "decoder.")}


# ----------------------------------------------------------------------------- helpers


def dump_json(path: Path, obj: dict) -> None:
    """One top-level key per line, compact values; floats via Python repr (exact)."""

    def check(v):
        if isinstance(v, float):
            assert math.isfinite(v), f"non-finite float in {path}"
        elif isinstance(v, (list, tuple)):
            for x in v:
                check(x)
        elif isinstance(v, dict):
            for x in v.values():
                check(x)

    check(obj)
    lines = [f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'), allow_nan=False)}" for k, v in obj.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def _short(v: np.float32) -> float:
    """The Python float whose repr is the shortest decimal that round-trips to float32 `v`."""
    r = float(str(v))
    assert np.float32(r) == v or (np.isnan(v) and np.isnan(r)), (v, r)
    return r


def f32(x):
    """float32 tensor / scalar -> nested Python floats, written as shortest float32 decimals."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to(torch.float32).cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 0:
        return _short(arr[()])
    flat = [_short(v) for v in arr.reshape(-1)]

    def nest(i, shape):
        if len(shape) == 1:
            return flat[i:i + shape[0]]
        step = int(np.prod(shape[1:]))
        return [nest(i + k * step, shape[1:]) for k in range(shape[0])]

    return nest(0, arr.shape)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


# ----------------------------------------------------------------------------- tokenizer


def build_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS], trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[0],
        chat_template=CHAT_TEMPLATE,
    )
    tdir = out / "tokenizer"
    if tdir.exists():
        shutil.rmtree(tdir)
    tdir.mkdir(parents=True)
    fast.save_pretrained(str(tdir), save_jinja_files=False)
    # Normalise the saved config: chat template inside tokenizer_config.json, portable class name.
    cfg_path = tdir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["bos_token"] = cfg["eos_token"] = cfg["pad_token"] = SPECIAL_TOKENS[0]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for extra in ("chat_template.jinja", "special_tokens_map.json"):
        if (tdir / extra).exists():
            (tdir / extra).unlink()
    assert sorted(p.name for p in tdir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"], list(tdir.iterdir())

    # Reload and sanity check.
    re = PreTrainedTokenizerFast.from_pretrained(str(tdir))
    assert re.pad_token_id == 0 and re.eos_token_id == 0 and re.bos_token_id == 0
    ids = re("hello", add_special_tokens=True)["input_ids"]
    assert 0 not in ids, "tokenizer must not add special tokens"
    chat = re.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", repr(chat)
    return re


def copy_tokenizer(out: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(out / "tokenizer" / name, dst / name)


# ----------------------------------------------------------------------------- models


def make_config(name: str):
    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        bos_token_id=PAD,
        eos_token_id=PAD,
        pad_token_id=PAD,
        initializer_range=INIT_RANGE,
    )
    if name == "llama_gqa":
        cfg = LlamaConfig(
            intermediate_size=128, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=False, **common,
        )
    elif name == "qwen2_bias_tied":
        cfg = Qwen2Config(
            intermediate_size=128, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=1000000.0,
            tie_word_embeddings=True, use_sliding_window=False, **common,
        )
    elif name == "gpt_neox":
        cfg = GPTNeoXConfig(
            intermediate_size=256, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
            hidden_act="gelu", layer_norm_eps=1e-5, tie_word_embeddings=False, **common,
        )
    elif name in ("opt_pre_ln", "opt_post_ln"):
        pre = name == "opt_pre_ln"
        cfg = OPTConfig(
            vocab_size=VOCAB_SIZE, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4 if pre else 2,
            max_position_embeddings=64, do_layer_norm_before=pre, word_embed_proj_dim=32 if pre else 16,
            activation_function="relu", enable_bias=True, dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
            init_std=INIT_RANGE, tie_word_embeddings=True, bos_token_id=PAD, eos_token_id=PAD, pad_token_id=PAD,
        )
    else:
        raise ValueError(name)
    cfg._attn_implementation = "eager"
    return cfg


MODEL_CLS = {
    "llama_gqa": LlamaForCausalLM,
    "qwen2_bias_tied": Qwen2ForCausalLM,
    "gpt_neox": GPTNeoXForCausalLM,
    "opt_pre_ln": OPTForCausalLM,
    "opt_post_ln": OPTForCausalLM,
}


def build_model(name: str):
    cfg = make_config(name)
    seed_all(0)
    model = MODEL_CLS[name](cfg)
    model.to(torch.float32)
    seed_all(1)
    with torch.no_grad():
        for _, p in model.named_parameters():  # tied weights appear once
            p.add_(NOISE * torch.randn(p.shape, dtype=p.dtype))
    for pname, p in model.named_parameters():
        assert p.std() > 1e-3, f"{name}: parameter {pname} is (near) constant"
    if name in TIED:
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    model.eval()
    return model


def patch_config_json(path: Path, name: str) -> None:
    """Add flat legacy RoPE keys next to transformers-5 "rope_parameters" (OPT has no RoPE)."""
    cfg = json.loads(path.read_text())
    if cfg["model_type"] == "opt":
        assert "rope_parameters" not in cfg and "rope_theta" not in cfg
        return
    rp = cfg.get("rope_parameters") or {}
    theta = rp.get("rope_theta", cfg.get("rope_theta"))
    assert theta is not None
    cfg["rope_theta"] = float(theta)
    if name == "gpt_neox":
        cfg["rotary_pct"] = float(rp.get("partial_rotary_factor", cfg.get("rotary_pct")))
        cfg["rotary_emb_base"] = float(theta)
        assert cfg["rotary_pct"] == 0.25
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def save_model(model, name: str, mdir: Path, out: Path, **kw) -> None:
    if mdir.exists():
        shutil.rmtree(mdir)
    mdir.mkdir(parents=True)
    model.save_pretrained(str(mdir), safe_serialization=True, **kw)
    patch_config_json(mdir / "config.json", name)
    if name in STORED_PREFIX:
        rename_stored_tensors(model, mdir, *STORED_PREFIX[name])
    copy_tokenizer(out, mdir)


def rename_stored_tensors(model, mdir: Path, module_prefix: str, stored_prefix: str) -> None:
    """Rewrite model.safetensors with `stored_prefix` for `module_prefix`, and check transformers
    loads the renamed file back to the same weights."""
    from safetensors.torch import load_file, save_file

    path = mdir / "model.safetensors"
    sd = load_file(str(path))
    assert all(k.startswith(module_prefix) or k == "lm_head.weight" for k in sd), sorted(sd)
    save_file({stored_prefix + k[len(module_prefix):]: v for k, v in sd.items()}, str(path), metadata={"format": "pt"})
    reloaded = load_model(mdir).state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(reloaded[k], v.to(torch.float32)), k


def load_model(mdir: Path):
    model = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


# ----------------------------------------------------------------------------- references


def no_eos_generation_config() -> GenerationConfig:
    return GenerationConfig(do_sample=False, bos_token_id=PAD, pad_token_id=PAD, eos_token_id=None)


@torch.no_grad()
def forward_logits(model, ids):
    return model(torch.tensor([ids])).logits[0]


@torch.no_grad()
def manual_greedy(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(forward_logits(model, ids)[-1].argmax()))
    return ids[len(prompt):]


@torch.no_grad()
def generate_batch(model, prompts, n):
    L = max(len(p) for p in prompts)
    input_ids = torch.tensor([[PAD] * (L - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        generation_config=no_eos_generation_config(),
        max_new_tokens=n,
        min_new_tokens=n,
    )
    assert out.shape == (len(prompts), L + n), out.shape
    return out[:, L:].tolist()


def train_batch(seqs):
    L = max(len(s) for s in seqs)
    input_ids = [list(s) + [PAD] * (L - len(s)) for s in seqs]
    mask = [[1] * len(s) + [0] * (L - len(s)) for s in seqs]
    labels = [[-100 if (j < PROMPT_LEN or mask[i][j] == 0) else input_ids[i][j] for j in range(L)] for i in range(len(seqs))]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batch_tensors(tb):
    return {k: torch.tensor(v) for k, v in tb.items()}


def loss_on(model, tb):
    return model(**batch_tensors(tb)).loss


def continuation(model, ctx, cont):
    ids = list(ctx) + list(cont)
    logits = forward_logits(model, ids)
    lp = torch.log_softmax(logits, dim=-1)
    total = torch.zeros((), dtype=torch.float32)
    greedy = True
    for i, c in enumerate(cont):
        pos = len(ctx) + i
        total = total + lp[pos - 1, c]
        greedy = greedy and int(logits[pos - 1].argmax()) == c
    return {"context": list(ctx), "continuation": list(cont), "logprob": f32(total), "is_greedy": bool(greedy)}


def adamw_step(model, params, tb, lr, wd):
    model.train()
    for p in params:
        p.grad = None
    loss = loss_on(model, tb)
    loss.backward()
    grads = [p.grad for p in params if p.grad is not None]
    gnorm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd, foreach=False)
    opt.step()
    model.eval()
    with torch.no_grad():
        after = loss_on(model, tb)
    return f32(loss), f32(gnorm), f32(after)


def make_reference(name: str, mdir: Path, tok, seqs):
    ref = {"seq_texts": SEQ_TEXTS, "seqs": seqs}
    model = load_model(mdir)
    V = model.config.vocab_size

    # plain logits
    logits = forward_logits(model, seqs[0])
    assert logits.shape == (9, V)
    ref["logits"] = f32(logits)

    # left padded batch
    L = 9
    lp_ids = torch.tensor([[PAD] * (L - len(s)) + s for s in seqs])
    lp_mask = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs])
    lp_pos = (lp_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        lp_logits = model(input_ids=lp_ids, attention_mask=lp_mask, position_ids=lp_pos).logits
    if model.config.model_type == "opt":
        # OPT derives positions from the mask when given none: the same rows for real tokens.
        with torch.no_grad():
            derived = model(input_ids=lp_ids, attention_mask=lp_mask).logits
        real = lp_mask.bool()
        assert torch.equal(derived[real], lp_logits[real]), (name, (derived[real] - lp_logits[real]).abs().max())
    # sanity: real positions agree with unpadded forwards
    for b, s in enumerate(seqs):
        single = forward_logits(model, s)
        d = (lp_logits[b, L - len(s):] - single).abs().max().item()
        assert d < 1e-4, (name, b, d)
    ref["left_padded"] = {
        "input_ids": lp_ids.tolist(),
        "attention_mask": lp_mask.tolist(),
        "position_ids": lp_pos.tolist(),
        "logits": f32(lp_logits),
    }

    # train batch + loss
    tb = train_batch(seqs)
    ref["train_batch"] = tb
    with torch.no_grad():
        loss = loss_on(model, tb)
    # sanity: manual shifted mean CE
    with torch.no_grad():
        t = batch_tensors(tb)
        lg = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
        manual = torch.nn.functional.cross_entropy(lg[:, :-1].reshape(-1, V), t["labels"][:, 1:].reshape(-1), ignore_index=-100)
    assert abs(manual.item() - loss.item()) < 1e-5
    ref["loss"] = f32(loss)

    # greedy
    g = generate_batch(model, [seqs[1]], MAX_NEW)[0]
    assert g == manual_greedy(model, seqs[1], MAX_NEW), (name, "generate != argmax loop")
    ref["greedy"] = {"prompt_ids": seqs[1], "max_new_tokens": MAX_NEW, "new_ids": g}
    prompts = [seqs[0][:5], seqs[1]]
    gb = generate_batch(model, prompts, MAX_NEW)
    for p, row in zip(prompts, gb):
        assert row == manual_greedy(model, p, MAX_NEW), (name, "batched generate != unbatched")
    ref["greedy_batch"] = {"prompts": prompts, "max_new_tokens": MAX_NEW, "new_ids": gb}

    # continuations
    conts = [
        continuation(model, seqs[1], g[:4]),
        continuation(model, seqs[0][:4], seqs[0][4:]),
        continuation(model, seqs[1][:2], seqs[1][2:]),
        continuation(model, prompts[0], gb[0][:3]),
    ]
    assert conts[0]["is_greedy"] and conts[3]["is_greedy"]
    ref["continuations"] = conts

    # full fine-tuning step
    ft_model = load_model(mdir)
    params = [p for _, p in ft_model.named_parameters()]
    for p in params:
        p.requires_grad_(True)
    l0, gn, l1 = adamw_step(ft_model, params, tb, lr=1e-3, wd=0.01)
    assert abs(l0 - ref["loss"]) < 1e-5
    ref["full_ft"] = {
        "grad_global_norm": gn, "lr": 1e-3, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8,
        "loss_after_step": l1,
    }
    del ft_model

    # LoRA
    ref["lora"] = make_lora(name, mdir, seqs, tb)
    return ref


def make_lora(name, mdir, seqs, tb):
    targets = LORA_TARGETS[name]
    base = load_model(mdir)
    matched = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets]
    lcfg = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, bias="none",
        task_type="CAUSAL_LM", init_lora_weights=False,
    )
    seed_all(2)
    pm = get_peft_model(base, lcfg)
    lora_params = [(n, p) for n, p in pm.named_parameters() if "lora_" in n]
    assert len(matched) >= len(targets) and len(lora_params) == 2 * len(matched), [n for n, _ in lora_params]
    seed_all(3)
    with torch.no_grad():
        for n, p in lora_params:
            if "lora_B" in n and p.abs().max() == 0:
                p.copy_(0.1 * torch.randn(p.shape))
    for n, p in lora_params:
        assert p.abs().max() > 0, n
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(n for n, _ in lora_params), trainable

    adir = mdir / "adapter_peft"
    if adir.exists():
        shutil.rmtree(adir)
    pm.save_pretrained(str(adir), safe_serialization=True)
    for extra in ("README.md",):
        if (adir / extra).exists():
            (adir / extra).unlink()
    acfg_path = adir / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text())
    acfg["base_model_name_or_path"] = name
    # peft stores target_modules from a set -> order depends on PYTHONHASHSEED; make it stable.
    acfg["target_modules"] = sorted(acfg["target_modules"])
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")

    # reload adapter from disk so the reference matches exactly what was saved
    del pm, base
    base = load_model(mdir)
    pm = PeftModel.from_pretrained(base, str(adir), is_trainable=True)
    pm.eval()
    lora_params = [p for n, p in pm.named_parameters() if "lora_" in n]
    assert all(p.requires_grad for p in lora_params)

    lo = forward_logits(pm, seqs[0])
    merged = copy.deepcopy(pm).merge_and_unload()
    mlo = forward_logits(merged, seqs[0])
    maxdiff = f32((mlo - lo).abs().max())
    assert maxdiff < 1e-4, maxdiff
    del merged
    base_logits = forward_logits(load_model(mdir), seqs[0])
    assert (lo - base_logits).abs().max() > 1e-3, "LoRA adapter is a no-op"

    l0, gn, l1 = adamw_step(pm, lora_params, tb, lr=1e-2, wd=0.0)
    return {
        "config": {"r": 4, "alpha": 8, "targets": targets},
        "logits": f32(lo),
        "loss": l0,
        "grad_global_norm": gn,
        "lr": 1e-2,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "loss_after_step": l1,
        "merged_logits_maxdiff": maxdiff,
    }


# ----------------------------------------------------------------------------- GGUF


def permute_llama(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_llama(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensor_map(cfg):
    m = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    for i in range(cfg.num_hidden_layers):
        hp, gp = f"model.layers.{i}.", f"blk.{i}."
        m.update({
            hp + "self_attn.q_proj.weight": gp + "attn_q.weight",
            hp + "self_attn.k_proj.weight": gp + "attn_k.weight",
            hp + "self_attn.v_proj.weight": gp + "attn_v.weight",
            hp + "self_attn.o_proj.weight": gp + "attn_output.weight",
            hp + "mlp.gate_proj.weight": gp + "ffn_gate.weight",
            hp + "mlp.up_proj.weight": gp + "ffn_up.weight",
            hp + "mlp.down_proj.weight": gp + "ffn_down.weight",
            hp + "input_layernorm.weight": gp + "attn_norm.weight",
            hp + "post_attention_layernorm.weight": gp + "ffn_norm.weight",
        })
    return m


def write_gguf(model, tok_dir: Path, path: Path):
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    tj = json.loads((tok_dir / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    id_to_tok = {i: t for t, i in vocab.items()}
    for at in tj.get("added_tokens", []):
        id_to_tok[at["id"]] = at["content"]
    tokens = [id_to_tok[i] for i in range(cfg.vocab_size)]
    special_ids = {at["id"] for at in tj.get("added_tokens", []) if at.get("special")}
    assert special_ids == {0, 1, 2}, special_ids
    token_types = [int(gguf.TokenType.CONTROL) if i in special_ids else int(gguf.TokenType.NORMAL) for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    chat_template = json.loads((tok_dir / "tokenizer_config.json").read_text())["chat_template"]

    if path.exists():
        path.unlink()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-gqa")
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(PAD)
    w.add_eos_token_id(PAD)
    w.add_pad_token_id(PAD)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(chat_template)

    sd = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    name_map = gguf_tensor_map(cfg)
    assert set(sd) == set(name_map), set(sd) ^ set(name_map)
    expected = {}  # gguf name -> dequantized, un-permuted HF-layout tensor (for the self-check)
    for hf_name, g_name in name_map.items():
        t = sd[hf_name]
        if g_name.endswith("attn_q.weight"):
            t = permute_llama(t, cfg.num_attention_heads)
        elif g_name.endswith("attn_k.weight"):
            t = permute_llama(t, cfg.num_key_value_heads)
        t = np.ascontiguousarray(t, dtype=np.float32)
        if t.ndim == 2:
            q = gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(g_name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            deq = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(g_name, t)
            deq = t
        if g_name.endswith("attn_q.weight"):
            deq = unpermute_llama(deq, cfg.num_attention_heads)
        elif g_name.endswith("attn_k.weight"):
            deq = unpermute_llama(deq, cfg.num_key_value_heads)
        expected[hf_name] = deq
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def make_gguf_reference(out: Path, llama_dir: Path, seqs):
    model = load_model(llama_dir)
    gpath = out / "llama_gqa.gguf"
    expected = write_gguf(model, out / "tokenizer", gpath)

    # self-check of the file with the gguf reader
    reader = gguf.GGUFReader(str(gpath))
    names = {t.name: t for t in reader.tensors}
    for hf_name, g_name in gguf_tensor_map(model.config).items():
        t = names[g_name]
        want = gguf.GGMLQuantizationType.Q8_0 if expected[hf_name].ndim == 2 else gguf.GGMLQuantizationType.F32
        assert t.tensor_type == want, (g_name, t.tensor_type)

    gm = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=gpath.name, dtype=torch.float32, attn_implementation="eager")
    gm.eval()
    gsd = gm.state_dict()
    for hf_name, deq in expected.items():
        got = gsd[hf_name].to(torch.float32).numpy()
        assert got.shape == deq.shape, (hf_name, got.shape, deq.shape)
        assert np.array_equal(got, deq), (hf_name, np.abs(got - deq).max())
    c = gm.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.hidden_size, c.intermediate_size) == (4, 2, 64, 128)
    assert c.rope_parameters["rope_theta"] == 10000.0 and abs(c.rms_norm_eps - 1e-5) < 1e-12
    assert not c.tie_word_embeddings

    logits = forward_logits(gm, seqs[0])
    # sanity: close to (but not equal to) the float32 model
    d = (logits - forward_logits(model, seqs[0])).abs().max().item()
    assert 0 < d < 0.5, d
    g = manual_greedy(gm, seqs[1], MAX_NEW)
    gen = generate_batch(gm, [seqs[1]], MAX_NEW)[0]
    assert gen == g
    dump_json(out / "llama_gqa_gguf_reference.json", {
        "seq": seqs[0],
        "logits": f32(logits),
        "greedy": {"prompt_ids": seqs[1], "max_new_tokens": MAX_NEW, "new_ids": g},
    })


# ----------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="+", choices=MODELS, help="remake only these model directories")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
        "numpy": np.__version__,
    }
    if args.only:
        tok = PreTrainedTokenizerFast.from_pretrained(str(out / "tokenizer"))
    else:
        (out / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
        tok = build_tokenizer(out)
    seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in SEQ_TEXTS]
    assert [len(s) for s in seqs] == SEQ_LENS, [len(s) for s in seqs]
    assert all(0 not in s for s in seqs)
    for t, s in zip(SEQ_TEXTS, seqs):
        assert tok.decode(s) == t

    for name in args.only or MODELS:
        model = build_model(name)
        mdir = out / name
        save_model(model, name, mdir, out)
        if args.only:
            (mdir / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
        if name == "llama_gqa":
            bdir = out / "llama_gqa_sharded_bf16"
            save_model(copy.deepcopy(model).to(torch.bfloat16), name, bdir, out, max_shard_size="100KB")
            shards = sorted(p.name for p in bdir.glob("model-*.safetensors"))
            assert len(shards) >= 2 and (bdir / "model.safetensors.index.json").exists(), shards
        del model
        ref = make_reference(name, mdir, tok, seqs)
        dump_json(mdir / "reference.json", ref)
        print(f"{name}: loss={ref['loss']:.6f} greedy={ref['greedy']['new_ids']} "
              f"ft_after={ref['full_ft']['loss_after_step']:.6f} lora_after={ref['lora']['loss_after_step']:.6f}")

    if not args.only:
        make_gguf_reference(out, out / "llama_gqa", seqs)

    total = 0
    for p in sorted(out.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    sys.exit(main())
