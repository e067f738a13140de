"""Reference values for the `unlearn` and `dpo` losses on the tiny llama fixture, computed with
PyTorch + transformers, independently of runner.

Writes tests/fixtures/tiny/unlearn_reference.json, which tests/unlearning.rs compares with
`unlearn::answer_loss`, `unlearn::retain_divergence`, `dpo::dpo_loss` and their gradients.

The trained model is the fixture with its final norm weight scaled by (1 + 0.5 sin(i)), so that it
differs from the reference model (the fixture as stored); gradients are taken with respect to that
norm weight.

- `answer_loss`: llm_unlearn's `get_answer_loss` as its code computes it (right padding with a pad
  id the sequences do not use, labels -100 on padding, CE per position with reduction none, the
  position weights from `start_loc` on, zero on padding, normalized by their sum, the last weight
  dropped, the mean over samples), for the answer start and for the official mismatch bug
  (`start_loc = 2`).
- `kl` / `cross_entropy`: the forward KL and the official cross-entropy form between the original
  and the trained model, per position, averaged over the positions that predict a supervised
  token (runner's documented variant: no padding positions), for answer positions and for every
  position.
- `dpo`: TRL's sigmoid DPO loss on one pair (sum of response-token log-probabilities).

Run: python scripts/make_unlearn_reference.py   (needs torch, transformers)
"""

import json
import math
import pathlib

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny" / "llama_gqa"
OUT = ROOT / "tests" / "fixtures" / "tiny" / "unlearn_reference.json"
PAD = 3  # not used by the sequences below
BETA = 0.1


def load():
    return AutoModelForCausalLM.from_pretrained(TINY, torch_dtype=torch.float32).eval()


def perturbed():
    model = load()
    w = model.model.norm.weight
    scale = torch.tensor([1 + 0.5 * math.sin(i) for i in range(w.numel())])
    with torch.no_grad():
        w.mul_(scale)
    return model


def padded(seqs):
    width = max(map(len, seqs))
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, mask


def official_answer_loss(model, seqs, start_locs):
    """llm_unlearn utils.get_answer_loss('gd'), reproduced line by line."""
    ids, mask = padded(seqs)
    labels = ids.clone()
    labels[ids == PAD] = -100
    logits = model(ids, attention_mask=mask).logits
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    losses = []
    for b in range(len(seqs)):
        position_loss = F.cross_entropy(shift_logits[b], shift_labels[b], reduction="none")
        weight = torch.zeros(ids.shape[1])
        weight[start_locs[b]:] = 1
        weight[ids[b] == PAD] = 0
        if weight.sum() > 0:
            weight = weight / weight.sum()
        losses.append((weight[:-1] * position_loss).sum())
    return torch.stack(losses).mean()


def divergence(model, orig, seqs, first_positions, kind):
    """Per-position divergence at positions t in [first, len - 2] of each sequence, pooled mean."""
    ids, mask = padded(seqs)
    with torch.no_grad():
        p_logits = orig(ids, attention_mask=mask).logits
    q_logits = model(ids, attention_mask=mask).logits
    terms = []
    for b, s in enumerate(seqs):
        for t in range(first_positions[b], len(s) - 1):
            log_p = F.log_softmax(p_logits[b, t], -1)
            log_q = F.log_softmax(q_logits[b, t], -1)
            p = log_p.exp()
            terms.append((p * (log_p - log_q)).sum() if kind == "kl" else -(p * log_q).sum())
    return torch.stack(terms).mean()


def response_logp(model, prompt, response):
    ids = torch.tensor([prompt + response])
    logits = model(ids).logits[0, :-1]
    lp = F.log_softmax(logits, -1).gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)
    return lp[len(prompt) - 1:].sum()


def grad_of(loss, model):
    (g,) = torch.autograd.grad(loss, [model.model.norm.weight])
    return g.tolist()


def main():
    seqs = json.loads((TINY / "reference.json").read_text())["seqs"]
    assert all(PAD not in s for s in seqs)
    orig = load()
    model = perturbed()
    # Prompt lengths 3 and 2: runner supervises tokens from there; start_loc is one less.
    prompt_lens = [3, 2]
    answer = official_answer_loss(model, seqs, [n - 1 for n in prompt_lens])
    official = official_answer_loss(model, seqs, [2, 2])
    kl = divergence(model, orig, seqs, [n - 1 for n in prompt_lens], "kl")
    ce_all = divergence(model, orig, seqs, [0, 0], "ce")
    total = -0.5 * answer + 1.0 * official + 1.0 * kl

    prompt = seqs[0][:2]
    chosen, rejected = seqs[0][2:], seqs[1][2:]
    pc, pr = response_logp(model, prompt, chosen), response_logp(model, prompt, rejected)
    with torch.no_grad():
        rc, rr = response_logp(orig, prompt, chosen), response_logp(orig, prompt, rejected)
    dpo = -F.logsigmoid(BETA * ((pc - rc) - (pr - rr)))

    result = {
        "source": "scripts/make_unlearn_reference.py (torch %s)" % torch.__version__,
        "seqs": seqs,
        "prompt_lens": prompt_lens,
        "norm_scale": "1 + 0.5 sin(i)",
        "answer_loss": answer.item(),
        "official_mismatch_loss": official.item(),
        "kl_answer": kl.item(),
        "cross_entropy_all": ce_all.item(),
        "total": total.item(),
        "total_norm_grad": grad_of(total, model),
        "dpo_prompt": prompt,
        "dpo_chosen": chosen,
        "dpo_rejected": rejected,
        "dpo_beta": BETA,
        "dpo_loss": dpo.item(),
        "dpo_norm_grad": grad_of(dpo, model),
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT}: answer {answer.item():.6f}, kl {kl.item():.6f}, dpo {dpo.item():.6f}")


if __name__ == "__main__":
    main()
