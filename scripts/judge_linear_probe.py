#!/usr/bin/env python3
"""Linear probe on frozen SmolLM2-135M-Instruct features for the judge comparison (docs/judges.md).

Embeds every PKU-SafeRLHF pair response of data/pku_saferlhf/pairs_{train_200,test_100}prompts.json
with Booster's beaver-dam template + eos (as the `classifier` train method does), takes the final
hidden state of the last token, standardizes the features on the training split and fits an
L2-regularized logistic regression (plain numpy gradient descent), reporting train and test
accuracy; it also prints the norm of the mean feature against the norm of centred features.

Usage:  python scripts/judge_linear_probe.py [GGUF]   (default ~/.cache/runner/models/SmolLM2-135M-Instruct.Q4_1.gguf)
Needs torch, transformers, gguf, numpy. About 20 minutes on 2 CPU cores.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
gguf = Path(sys.argv[1] if len(sys.argv) > 1 else Path.home() / ".cache/runner/models/SmolLM2-135M-Instruct.Q4_1.gguf")
TEMPLATE = "BEGINNING OF CONVERSATION: USER: {p} ASSISTANT:{r}"

tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()


def features(path):
    X, y = [], []
    for rec in json.loads(path.read_text()):
        for label, response in ((0, rec["response"][0]), (1, rec["response"][1])):  # [safe, unsafe]
            ids = tok(TEMPLATE.format(p=rec["prompt"], r=response) + tok.eos_token)["input_ids"][:256]
            with torch.no_grad():
                h = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
            X.append(h.numpy())
            y.append(label)
    return np.stack(X), np.array(y)


Xtr, ytr = features(ROOT / "data/pku_saferlhf/pairs_train_200prompts.json")
Xte, yte = features(ROOT / "data/pku_saferlhf/pairs_test_100prompts.json")
print(f"mean feature norm {np.linalg.norm(Xtr.mean(0)):.1f}, mean norm of centred features "
      f"{np.linalg.norm(Xtr - Xtr.mean(0), axis=1).mean():.1f}")
mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
A, B = (Xtr - mu) / sd, (Xte - mu) / sd
for lam in (1e-3, 1e-2, 1e-1):
    w, b = np.zeros(A.shape[1]), 0.0
    for _ in range(3000):
        p = 1 / (1 + np.exp(-(A @ w + b)))
        w -= 0.1 * (A.T @ (p - ytr) / len(ytr) + lam * w)
        b -= 0.1 * (p - ytr).mean()
    acc = lambda X, y: ((X @ w + b > 0) == y).mean()
    print(f"lambda {lam}: train {acc(A, ytr):.3f}  test {acc(B, yte):.3f}  (n = {len(ytr)} / {len(yte)})")
