"""Reference learning rates of DeepSpeed's WarmupDecayLR (log warmup, its default) for
`runner`'s `schedule = "warmup_decay_log"` (src/train/schedule.rs).

For every case, the learning rate DeepSpeed sets for `last_batch_iteration = i`, i = 0..total+1:
`runner` runs optimizer step i at that value. Cases: Dromedary's principle engraving (lr 4e-4,
100 warmup steps, 337 steps: 258,878 pairs + 910 identity conversations at batch 768), a short
run whose warmup is cut off, and DeepSpeed's floor of 2 warmup steps.

    pip install deepspeed    # CPU-only is enough: only the scheduler is used
    python scripts/make_schedule_reference.py   # writes tests/fixtures/schedule/deepspeed_warmup_decay.json
"""

import json
from pathlib import Path

import deepspeed
import torch
from deepspeed.runtime.lr_schedules import WarmupDecayLR

CASES = [
    {"name": "dromedary_engraving", "lr": 4e-4, "warmup_steps": 100, "total_steps": 337},
    {"name": "warmup_longer_than_run", "lr": 1e-3, "warmup_steps": 30, "total_steps": 20},
    {"name": "warmup_floor", "lr": 1.0, "warmup_steps": 1, "total_steps": 6},
]


def lrs(case):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=case["lr"])
    sched = WarmupDecayLR(
        opt,
        total_num_steps=case["total_steps"],
        warmup_min_lr=0.0,
        warmup_max_lr=case["lr"],
        warmup_num_steps=case["warmup_steps"],
    )
    out = []
    for i in range(case["total_steps"] + 2):
        sched.step(i)
        out.append(opt.param_groups[0]["lr"])
    return out


def main():
    cases = [{**c, "lrs": lrs(c)} for c in CASES]
    path = Path(__file__).resolve().parent.parent / "tests/fixtures/schedule/deepspeed_warmup_decay.json"
    path.write_text(json.dumps({"deepspeed": deepspeed.__version__, "cases": cases}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
