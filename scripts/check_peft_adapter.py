"""Checks that adapters written by runner load in PEFT unchanged and give runner's logits.

For each tiny fixture model, loads tests/fixtures/tiny/<model>/adapter_runner/ (written by
`RUNNER_UPDATE_FIXTURES=1 cargo test --release --test peft_compat`) with
`peft.PeftModel.from_pretrained` on top of the transformers model, and compares the logits of
the recorded sequence with the ones runner recorded (runner_logits.json). Tolerance: 1e-4 max
absolute difference (float32). Exit status 1 on any mismatch.

    python scripts/check_peft_adapter.py
"""
import json
import pathlib
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny"
TOL = 1e-4


def check(name: str) -> bool:
    base = AutoModelForCausalLM.from_pretrained(ROOT / name, torch_dtype=torch.float32, attn_implementation="eager")
    adapter = ROOT / name / "adapter_runner"
    model = PeftModel.from_pretrained(base, adapter).eval()
    rec = json.loads((adapter / "runner_logits.json").read_text())
    with torch.no_grad():
        logits = model(torch.tensor([rec["seq"]])).logits[0].flatten()
    diff = (logits - torch.tensor(rec["logits"])).abs().max().item()
    ok = diff <= TOL
    print(f"{name}: PEFT loaded runner's adapter; max |logit diff| = {diff:.3e} -> {'PASS' if ok else 'FAIL'}")
    return ok


if __name__ == "__main__":
    results = [check(n) for n in ("llama_gqa", "gpt_neox", "opt_pre_ln", "opt_post_ln")]
    sys.exit(0 if all(results) else 1)
