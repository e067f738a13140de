"""Reference values for RepNoise's loss on the tiny llama fixture, computed with transformers.

Writes tests/fixtures/tiny/repnoise_reference.json, which tests/methods.rs compares with
`RepNoiseRule::loss` and `repnoise::mmd`:

- `loss`: CE_harmless - alpha * log(mean lens CE + 1) with beta = 0 (the MMD term draws Gaussian
  noise, so it is checked on its own). The harmful CE terms are runner's documented variant of
  the official loop (METHODS.md 1.6, src/methods/repnoise.rs): the final logits, the logit lens
  of the embedding output and of every layer's output (final norm, then lm_head): L + 2 terms.
  `official_double_norm_loss` is the official loop's value for the record (it applies the final
  norm twice to the last hidden state); the test does not use it.
- `mmd`: the DAN-style maximum mean discrepancy (5 Gaussian kernels, multiplier 2, bandwidth
  from the mean pairwise squared distance) on two fixed small matrices.

Run: python scripts/make_repnoise_reference.py   (needs torch, transformers)
"""

import json
import math
import pathlib

import torch
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny" / "llama_gqa"
OUT = ROOT / "tests" / "fixtures" / "tiny" / "repnoise_reference.json"
ALPHA = 0.1


def masked_ce(logits, labels):
    """Mean next-token cross-entropy over positions whose label is not -100 (HF's shift)."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100
    )


def mmd(x, y, kernel_mul=2.0, kernel_num=5):
    total = torch.cat([x, y], dim=0).double()
    m = total.size(0)
    dist = ((total.unsqueeze(0) - total.unsqueeze(1)) ** 2).sum(2)
    bandwidth = dist.sum() / (m * m - m) / kernel_mul ** (kernel_num // 2)
    k = sum(torch.exp(-dist / (bandwidth * kernel_mul**i)) for i in range(kernel_num))
    n = x.size(0)
    return (k[:n, :n] + k[n:, n:] - k[:n, n:] - k[n:, :n]).mean().item()


def main():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY, torch_dtype=torch.float32).eval()
    seqs = json.loads((TINY / "reference.json").read_text())["seqs"]
    # The same two-token prompt with a safe and with a harmful continuation.
    safe = seqs[0]
    harmful = safe[:2] + seqs[1][2:]
    safe_labels = [-100, -100] + safe[2:]
    # Harmful labels: the tokens that differ from the safe sequence at the same position.
    harmful_labels = [t if i >= len(safe) or safe[i] != t else -100 for i, t in enumerate(harmful)]

    with torch.no_grad():
        s = torch.tensor([safe])
        harmless_ce = masked_ce(model(s).logits, torch.tensor([safe_labels])).item()
        h = torch.tensor([harmful])
        out = model(h, output_hidden_states=True)
        hl = torch.tensor([harmful_labels])
        lens = lambda hidden: model.lm_head(model.model.norm(hidden))
        final = masked_ce(out.logits, hl).item()
        hidden = out.hidden_states  # embedding output, layers 1..L-1, norm(layer L)
        inner = [masked_ce(lens(x), hl).item() for x in hidden[:-1]]
        # runner: the lens of the last layer's output is norm(output) -> lm_head: the final logits.
        terms = [final] + inner + [final]
        official_terms = [final] + inner + [masked_ce(lens(hidden[-1]), hl).item()]
    harmful_ce = sum(terms) / len(terms) + 1.0
    loss = harmless_ce - ALPHA * math.log(harmful_ce)
    official = harmless_ce - ALPHA * math.log(sum(official_terms) / len(official_terms) + 1.0)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, generator=g)
    y = torch.randn(3, 8, generator=g) * 0.5 + 0.2

    result = {
        "source": "scripts/make_repnoise_reference.py (torch %s)" % torch.__version__,
        "harmless_ids": safe,
        "harmless_labels": safe_labels,
        "harmful_ids": harmful,
        "alpha": ALPHA,
        "beta": 0.0,
        "harmless_ce": harmless_ce,
        "lens_terms": terms,
        "loss": loss,
        "official_double_norm_loss": official,
        "mmd_x": x.tolist(),
        "mmd_y": y.tolist(),
        "mmd": mmd(x, y),
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT}: loss {loss:.6f}, mmd {result['mmd']:.6f}")


if __name__ == "__main__":
    main()
