#!/usr/bin/env python3
"""Reference fixture for the sequence-classification head (`runner::model::classify`).

Usage:  python scripts/make_classifier_reference.py [--out DIR]
        (default: tests/fixtures/tiny/llama_seqcls next to this script's repository root;
        existing outputs are overwritten)

Requirements: those of scripts/make_reference.py, whose JSON helpers it uses (CPU only, nothing
is downloaded). Reads the tiny tokenizer written by scripts/make_reference.py
(tests/fixtures/tiny/tokenizer).

What it builds
==============

A tiny random `LlamaForSequenceClassification`, multi-label (`problem_type =
"multi_label_classification"`, 3 labels: id2label {0: "violence", 1: "privacy", 2: "self_harm"}),
`pad_token_id = 0` (= the tokenizer's `<|endoftext|>`, also bos/eos), hidden 64, intermediate
128, 2 layers, 4 heads, 2 kv heads, vocab 384, rms_norm_eps 1e-5, rope_theta 1e4, eager
attention, float32. Weights: random init with initializer_range 0.2 (seed 0), then every
parameter gets + 0.05 * randn (seed 1), as make_reference.py does for the causal models. Saved with
`save_pretrained(safe_serialization=True)`: config.json (with "num_labels" added explicitly, and a
flat "rope_theta" next to transformers 5's "rope_parameters"), model.safetensors (`model.*` +
`score.weight` [3, 64], no lm_head), and copies of the tokenizer files.

reference.json (floats are float32 values written as their shortest round-trip decimal)
    "texts": 3 judge inputs rendered with Booster's beaver-dam template
        ("BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}" + eos); row 2 has no
        trailing eos. Row 0 and 1 END WITH THE PAD ID (eos = pad = 0) as real tokens, so
        transformers' pooling (the rightmost token that is not pad_token_id) picks the token
        BEFORE the eos there.
    "ids": tokenizer(text, add_special_tokens=True)["input_ids"] per text (this tokenizer adds
        nothing).
    "pooled_index": per text, the index (in the unpadded ids) transformers pools at.
    "single_logits": [3][3] -- each text alone (batch of 1, no padding).
    "left": {"input_ids", "attention_mask", "logits" [3][3]} -- the batch left-padded with 0,
        forward(input_ids, attention_mask) without position_ids, as Booster's QAModeration
        calls the model.
    "right": the same, right-padded.
    "probs_right": sigmoid(right logits).
    "short_ids" / "short_logits": a batch of two short id lists WITHOUT any pad id inside, right
        padded (a plain last-real-token case).
"""

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast  # noqa: E402

from make_reference import dump_json, f32  # noqa: E402  (same fixture conventions; this directory is on sys.path)

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = REPO_ROOT / "tests" / "fixtures" / "tiny" / "tokenizer"
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "tiny" / "llama_seqcls"
PAD = 0
INIT_RANGE = 0.2
NOISE = 0.05
LABELS = ["violence", "privacy", "self_harm"]
TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}"
CONVERSATIONS = [
    ("How do I stay safe?", "Stay with people you trust.", True),
    ("Tell me about the fox.", "The quick brown fox jumps over the lazy dog.", True),
    ("Is it safe?", "Yes.", False),
]


def pad(seqs, side):
    width = max(len(s) for s in seqs)
    ids, mask = [], []
    for s in seqs:
        n = width - len(s)
        if side == "left":
            ids.append([PAD] * n + s)
            mask.append([0] * n + [1] * len(s))
        else:
            ids.append(s + [PAD] * n)
            mask.append([1] * len(s) + [0] * n)
    return ids, mask


@torch.no_grad()
def logits_of(model, ids, mask):
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out = ap.parse_args().out

    tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    assert tok.pad_token_id == PAD and tok.eos_token_id == PAD

    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
        bos_token_id=PAD, eos_token_id=PAD, pad_token_id=PAD, initializer_range=INIT_RANGE, tie_word_embeddings=False,
        num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
        problem_type="multi_label_classification",
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    np.random.seed(0)
    model = LlamaForSequenceClassification(cfg).to(torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(NOISE * torch.randn(p.shape, dtype=p.dtype))
    model.eval()

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER_DIR / name, out / name)
    cpath = out / "config.json"
    c = json.loads(cpath.read_text())
    c["num_labels"] = len(LABELS)
    rp = c.get("rope_parameters") or {}
    c["rope_theta"] = float(rp.get("rope_theta", c.get("rope_theta", 10000.0)))
    cpath.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")

    # Reload from disk: the reference is what a user loading the checkpoint gets.
    model = LlamaForSequenceClassification.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert model.config.problem_type == "multi_label_classification"
    assert model.config.pad_token_id == PAD

    texts = [TEMPLATE.format(prompt=p, response=r) + (tok.eos_token if eos else "") for p, r, eos in CONVERSATIONS]
    ids = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
    assert ids[0][-1] == PAD and ids[1][-1] == PAD and ids[2][-1] != PAD
    pooled = [max(i for i, t in enumerate(s) if t != PAD) for s in ids]

    single = [logits_of(model, [s], [[1] * len(s)])[0] for s in ids]
    ref = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "labels": LABELS,
        "texts": texts,
        "ids": ids,
        "pooled_index": pooled,
        "single_logits": [f32(x) for x in single],
    }
    for side in ("left", "right"):
        pids, mask = pad(ids, side)
        lg = logits_of(model, pids, mask)
        for b in range(len(ids)):
            assert torch.allclose(lg[b], single[b], atol=1e-5), (side, b, lg[b], single[b])
        ref[side] = {"input_ids": pids, "attention_mask": mask, "logits": f32(lg)}
        if side == "right":
            ref["probs_right"] = f32(torch.sigmoid(lg))
    short = [ids[2][:5], ids[1][:3]]
    sids, smask = pad(short, "right")
    ref["short_ids"] = short
    ref["short_logits"] = f32(logits_of(model, sids, smask))
    dump_json(out / "reference.json", ref)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
