#!/usr/bin/env python3
"""Reference ROUGE-L values for `runner::data::filter` (rouge_l, RougePool).

Usage:  python scripts/make_rouge_reference.py [--out FILE]
        (default: tests/fixtures/rouge/rouge_l.json in this script's repository; overwritten)

Requirements: Google's `rouge-score` package (PyPI `rouge-score`, tested with 0.1.2), e.g.
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install rouge-score
This script installs nothing and downloads nothing.

What it writes
==============

"version": rouge_score's version.
"pairs": [{"target", "prediction", "fmeasure"}], with
    fmeasure = RougeScorer(["rougeL"], use_stemmer=False).score(target, prediction)["rougeL"].fmeasure
    for fixed hand-written pairs (punctuation, case, unicode, empty strings, repeated words, numbers).
"pool": {"texts", "queries": [{"text", "max_fmeasure"}]} -- the self-instruct similarity check as
    Dromedary's generate_vanilla_instruction.py runs it: every pool text is tokenized once with
    the scorer's tokenizer and max_fmeasure = max over the pool of
    rouge_scorer._score_lcs(query_tokens, pool_tokens).fmeasure.

Floats are written with repr (shortest round-trip), so the Rust side can compare exactly.
"""

import argparse
import json
from importlib.metadata import version
from pathlib import Path

from rouge_score import rouge_scorer

PAIRS = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat on the mat", "the cat is on the mat"),
    ("The Cat sat ON the mat.", "the cat, sat on: the MAT!"),
    ("a b c d e f g", "g f e d c b a"),
    ("a b c d e f g", "a c e g"),
    ("", "something here"),
    ("something here", ""),
    ("", ""),
    ("!!! ??? ...", "hello world"),
    ("hello world", "...,;;"),
    ("the the the the", "the"),
    ("the the the the", "the the cat the the"),
    ("1 2 3 4 5", "1 2 3 5 4"),
    ("In 2023, 7.5% of 1,000 people", "in 2023 75 of 1000 people"),
    ("café au lait", "cafe au lait"),
    ("naïve résumé", "naive resume"),
    ("İstanbul is big", "istanbul is big"),
    ("\u212a-means clustering", "k means clustering"),
    ("日本語のテキスト", "日本語のテキスト"),
    ("emoji 😀 test", "emoji test"),
    ("don't stop", "don t stop"),
    ("snake_case and kebab-case", "snake case and kebab case"),
    ("tabs\tand\nnewlines  and   spaces", "tabs and newlines and spaces"),
    ("Write a poem about the sea.", "Write a short poem about the ocean."),
    ("Give three tips for staying healthy.", "Give me three tips for staying healthy and fit."),
    ("Generate a list of 5 adjectives that describe a cat.", "Generate a list of five adjectives to describe a dog."),
    ("Explain why the sky is blue.", "Describe how to bake bread at home."),
    ("x", "x x x x x x x x x x"),
    ("a b a b a b", "b a b a b a"),
    ("Hello World.", "hello world"),
    ("ABC123def", "abc123DEF"),
    ("one two three four five six seven eight nine ten", "two four six eight ten"),
]

POOL = [
    "Hello World.",
    "Give three tips for staying healthy.",
    "What are the three primary colors?",
    "Describe the structure of an atom.",
    "How can we reduce air pollution?",
    "Write a short story about a robot who learns to paint.",
]

QUERIES = [
    "Give three tips for staying healthy.",
    "Give me three tips for staying healthy and happy.",
    "What are the three secondary colors?",
    "Explain how photosynthesis works in plants.",
    "Write a story about a robot that learns to paint portraits.",
    "!!!",
    "hello, world",
]


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=root / "tests" / "fixtures" / "rouge" / "rouge_l.json")
    args = ap.parse_args()

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = [
        {"target": t, "prediction": p, "fmeasure": scorer.score(t, p)["rougeL"].fmeasure}
        for t, p in PAIRS
    ]
    pool_tokens = [scorer._tokenizer.tokenize(t) for t in POOL]
    queries = []
    for q in QUERIES:
        q_tokens = scorer._tokenizer.tokenize(q)
        best = max(rouge_scorer._score_lcs(q_tokens, p).fmeasure for p in pool_tokens)
        queries.append({"text": q, "max_fmeasure": best})

    out = {
        "source": "scripts/make_rouge_reference.py (Google rouge_score, rougeL, use_stemmer=False)",
        "version": version("rouge-score"),
        "pairs": pairs,
        "pool": {"texts": POOL, "queries": queries},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(pairs)} pairs, {len(queries)} pool queries")


if __name__ == "__main__":
    main()
