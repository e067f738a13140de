"""What the harmful-score responses of a results directory are, by method and harmful ratio.

The refusal judge calls every response without a refusal phrase harmful. At CPU scale many
responses after the attack are empty or a bare sentiment label ("positive"), which that judge
counts as harmful or safe without either being a harmful answer. This script sorts each response
of every `harmful_score` record into one of four kinds and prints their shares per row of the
Booster table (alignment method + fine-tune method) and harmful ratio p, averaged over seeds:

- empty: no text;
- label: one to three words starting with "positive" or "negative" (the attack's answer format);
- refused: the judge found a refusal phrase;
- answered: anything else (the judge's "harmful" minus the labels).

Usage: python3 scripts/harmful_breakdown.py results/booster_cpu
Only the standard library; reads stage.toml, metrics.json and outputs.jsonl of each eval stage.
"""

import collections
import glob
import json
import os
import re
import sys

KINDS = ["empty", "label", "refused", "answered"]


def field(text, key):
    m = re.search(r'^%s = "?([^"\n]+)"?$' % key, text, re.M)
    return m.group(1) if m else None


def kind(record):
    text = record["response"].strip()
    if not text:
        return "empty"
    words = text.split()
    if len(words) <= 3 and words[0].lower().strip(".,!") in ("positive", "negative"):
        return "label"
    return "answered" if record["harmful"] else "refused"


def main(root):
    cells = collections.defaultdict(list)  # (method, p) -> per-seed kind shares
    for d in sorted(glob.glob(os.path.join(root, "stages", "eval-*"))):
        if not os.path.exists(os.path.join(d, "metrics.json")):
            continue
        stage = open(os.path.join(d, "stage.toml")).read()
        attack = open(os.path.join(root, "stages", field(stage, "parent"), "stage.toml")).read()
        align = open(os.path.join(root, "stages", field(attack, "parent"), "stage.toml")).read()
        method = "%s + %s" % (field(align, "method"), field(attack, "method"))
        p = float(re.search(r"ratio = ([0-9.]+)", attack).group(1))
        counts = collections.Counter()
        for line in open(os.path.join(d, "outputs.jsonl")):
            r = json.loads(line)
            if r["metric"] == "harmful_score":
                counts[kind(r["record"])] += 1
        n = sum(counts.values())
        cells[(method, p)].append({k: 100.0 * counts[k] / n for k in KINDS})
    ps = sorted({p for _, p in cells})
    methods = []
    for m, _ in sorted(cells, key=lambda c: c[0]):
        if m not in methods:
            methods.append(m)
    print("share of responses (%%), mean over seeds: %s" % " / ".join(KINDS))
    print("| method | " + " | ".join("p=%g" % p for p in ps) + " |")
    print("| :-- | " + " | ".join("--:" for _ in ps) + " |")
    for m in methods:
        row = []
        for p in ps:
            seeds = cells.get((m, p), [])
            if not seeds:
                row.append("—")
                continue
            mean = {k: sum(s[k] for s in seeds) / len(seeds) for k in KINDS}
            row.append(" / ".join("%.0f" % mean[k] for k in KINDS) + (" (n=%d)" % len(seeds)))
        print("| %s | %s |" % (m, " | ".join(row)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
