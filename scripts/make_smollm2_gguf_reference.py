#!/usr/bin/env python3
"""GGUF dequantization and scoring-precision reference for SmolLM2-135M-Instruct (Q4_1).

Usage:  python scripts/make_smollm2_gguf_reference.py [--gguf PATH] [--out FILE]

    --gguf  default: $RUNNER_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
            ($RUNNER_CACHE defaults to ~/.cache/runner; `scripts/fetch_model.sh` fetches it)
    --out   default: tests/fixtures/smollm2/gguf_dequant_reference.json

Requirements: torch, transformers (>= 5, GGUF support), gguf, accelerate. CPU only, nothing
downloaded. Read by tests/smollm2.rs; the findings are written up in docs/gguf.md.

What it records
===============
The model is loaded as transformers loads any GGUF file:
    AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32,
                                         attn_implementation="eager")
(gguf-py dequantizes each tensor to float32, transformers un-permutes attn_q / attn_k.)

config: the architecture values transformers derived from the GGUF metadata.

tensors: for every tensor of the state dict except the tied lm_head, its ggml type in the file,
    its shape, and sha256 of its float32 values as little-endian bytes in row-major order (the
    HF layout). Equal digests mean bit-identical dequantized weights.

scoring: a few (context, continuation) pairs built from data/hhh (for each of the harmless,
    helpful and honest task files, the example whose best target is longest: context = its
    `input`, continuation = " " + that target). Token ids as lm-eval's HFLM._encode_pair makes
    them: context_ids = tok(context), continuation_ids = tok(context + continuation)[len(context_ids):],
    with add_special_tokens=False (this tokenizer adds no BOS). The model input is
    (context_ids + continuation_ids)[:-1]; the log-likelihood is the sum over continuation tokens of
    log_softmax(logits)[token], three ways:
      ll_float64          the model cast to float64 (weights: the same dequantized values) and a
                          float64 log_softmax. transformers computes the rotary angles in float32
                          even then (position * inv_freq, then cos/sin), so this is float64
                          arithmetic everywhere except those angles, which both float32 paths
                          (transformers and runner) compute the same way.
      ll_float32_exact_softmax   float32 model, log_softmax of its float32 logits in float64:
                          the float32 forward's own error, without the log_softmax's.
      ll_float32_torch    float32 model and torch's float32 log_softmax, as lm-eval scores.
    torch's CPU log_softmax accumulates sum(exp(x - max)) in float32 vector lanes (8 on AVX2),
    each lane a sequential sum over vocab/8 terms: terms below half an ulp of the lane's running
    sum are lost, so the sum comes out low and every token's log-probability high.

Output JSON
===========
{"source": {"file", "sha256", "size_bytes"}, "transformers_version", "torch_version",
 "gguf_version", "config": {...}, "tensors": {hf_name: {"ggml_type", "shape", "sha256_f32_le"}},
 "scoring": [{"id", "context", "continuation", "context_ids", "continuation_ids",
              "ll_float64", "ll_float32_exact_softmax", "ll_float32_torch"}]}
"""

import argparse
import copy
import hashlib
import json
import os
import pathlib
import re
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CATEGORIES = ["harmless", "helpful", "honest"]


def default_gguf() -> pathlib.Path:
    cache = os.environ.get("RUNNER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "runner")
    return pathlib.Path(cache) / "models" / FILE_NAME


def file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tensor_sha256(t: torch.Tensor) -> str:
    a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4", copy=False))
    return hashlib.sha256(a.tobytes()).hexdigest()


def ggml_types(gguf_path: pathlib.Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    return {t.name: t.tensor_type.name for t in reader.tensors}


def hf_to_gguf_name(hf: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if hf in fixed:
        return fixed[hf]
    short = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    }
    layer, rest = hf.removeprefix("model.layers.").split(".", 1)
    module, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{short[module]}.{suffix}"


def scoring_pairs() -> list:
    pairs = []
    for cat in CATEGORIES:
        task = json.loads((REPO_ROOT / "data" / "hhh" / cat / "task.json").read_text(encoding="utf-8"))
        best = None
        for i, ex in enumerate(task["examples"]):
            top = max(ex["target_scores"].values())
            target = next(k for k, v in ex["target_scores"].items() if v == top)
            if best is None or len(target) > len(best[2]):
                best = (i, ex["input"], target)
        i, context, target = best
        pairs.append({"id": f"{cat}/{i}", "context": context, "continuation": " " + target})
    return pairs


def loglik(model, ctx: list, cont: list, float64_softmax: bool) -> float:
    inp = torch.tensor([(ctx + cont)[:-1]])
    logits = model(input_ids=inp, use_cache=False).logits[0, len(ctx) - 1:]
    if float64_softmax:
        logits = logits.double()
    lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(cont)[:, None])[:, 0]
    return float(lp.double().sum())


def compact(text: str) -> str:
    """Puts number arrays, and then short flat objects, on one line (the fixture stays small)."""
    text = re.sub(r"\[[-0-9.eE,\s]*\]", lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text)

    def flat_object(m: re.Match) -> str:
        one_line = re.sub(r"\n\s*", " ", m.group(0))
        return one_line if len(one_line) < 160 else m.group(0)

    return re.sub(r"\{[^{}\[\]]*(?:\[[^\[\]\n]*\][^{}\[\]]*)*\}", flat_object, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", type=pathlib.Path, default=default_gguf())
    ap.add_argument("--out", type=pathlib.Path,
                    default=REPO_ROOT / "tests" / "fixtures" / "smollm2" / "gguf_dequant_reference.json")
    args = ap.parse_args()
    gguf_path: pathlib.Path = args.gguf.expanduser().resolve()
    if not gguf_path.is_file():
        print(f"error: {gguf_path} not found (run scripts/fetch_model.sh)", file=sys.stderr)
        return 1

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    d, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    model64 = copy.deepcopy(model).double()
    c = model.config

    types = ggml_types(gguf_path)
    tensors = {}
    for hf, t in model.state_dict().items():
        if hf == "lm_head.weight":
            assert c.tie_word_embeddings, "the GGUF has no output.weight, so lm_head must be tied"
            continue
        g = hf_to_gguf_name(hf)
        tensors[hf] = {"ggml_type": types[g], "shape": list(t.shape), "sha256_f32_le": tensor_sha256(t)}

    scoring = []
    with torch.no_grad():
        for p in scoring_pairs():
            ctx = tok(p["context"], add_special_tokens=False).input_ids
            whole = tok(p["context"] + p["continuation"], add_special_tokens=False).input_ids
            assert whole[:len(ctx)] == ctx, p["id"]
            cont = whole[len(ctx):]
            row = dict(p, context_ids=ctx, continuation_ids=cont,
                       ll_float64=loglik(model64, ctx, cont, True),
                       ll_float32_exact_softmax=loglik(model, ctx, cont, True),
                       ll_float32_torch=loglik(model, ctx, cont, False))
            print(f"{p['id']}: {len(cont)} tokens, float64 {row['ll_float64']:.6f}, "
                  f"float32 forward {row['ll_float32_exact_softmax'] - row['ll_float64']:+.2e}, "
                  f"torch float32 {row['ll_float32_torch'] - row['ll_float64']:+.2e}", file=sys.stderr)
            scoring.append(row)

    import gguf
    from importlib.metadata import version

    rope = getattr(c, "rope_parameters", None) or {}
    doc = {
        "source": {"file": name, "sha256": file_sha256(gguf_path), "size_bytes": gguf_path.stat().st_size},
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "gguf_version": version("gguf"),
        "config": {
            "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
            "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": rope.get("rope_theta", getattr(c, "rope_theta", None)),
            "tie_word_embeddings": c.tie_word_embeddings, "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
        },
        "tensors": tensors,
        "scoring": scoring,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = compact(json.dumps(doc, indent=1, ensure_ascii=False)) + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.encode())} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
