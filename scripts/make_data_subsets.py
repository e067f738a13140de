#!/usr/bin/env python3
"""Builds the small real data subsets shipped under data/ from the shared data folder.

Usage: python3 scripts/make_data_subsets.py /work/shared/data data

Every output is a verbatim copy of a real file, or the first N records of one (JSON arrays and
BIG-bench tasks are re-serialized with Python's json module; line-based files keep their bytes).
Nothing is generated. data/SOURCES.md documents the provenance and the rows taken.
"""

import json
import os
import shutil
import sys


def copy(src_root, dst_root, src, dst=None):
    dst = dst or src
    os.makedirs(os.path.dirname(os.path.join(dst_root, dst)), exist_ok=True)
    shutil.copyfile(os.path.join(src_root, src), os.path.join(dst_root, dst))


def first_lines(src_root, dst_root, src, dst, n, header=False):
    """Header line (if any) plus the first n data lines, bytes unchanged."""
    with open(os.path.join(src_root, src), "rb") as f:
        lines = f.read().split(b"\n")
    keep = lines[: n + (1 if header else 0)]
    os.makedirs(os.path.dirname(os.path.join(dst_root, dst)), exist_ok=True)
    with open(os.path.join(dst_root, dst), "wb") as f:
        f.write(b"\n".join(keep) + b"\n")


def dump_json(obj, path, ascii_only):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=4, ensure_ascii=ascii_only)
        f.write("\n")


def first_records(src_root, dst_root, src, dst, n):
    raw = open(os.path.join(src_root, src), "rb").read()
    data = json.loads(raw)
    dump_json(data[:n], os.path.join(dst_root, dst), b"\\u" in raw)


def first_examples(src_root, dst_root, src, dst, n):
    """A BIG-bench task.json with only its first n examples (all other keys kept, in order)."""
    raw = open(os.path.join(src_root, src), "rb").read()
    task = json.loads(raw)
    task["examples"] = task["examples"][:n]
    dump_json(task, os.path.join(dst_root, dst), b"\\u" in raw)


def pku_pairs_by_prompt(src_root, dst_root):
    """Train/test subsets of the PKU-SafeRLHF test pairs, disjoint by prompt.

    Unique prompts are numbered in order of first appearance; train takes the first row of each of
    prompts 1..200, test the first row of each of prompts 201..300.
    """
    src = "pku_saferlhf/pku_saferlhf_dpo_safer_vs_unsafe_5135_safety_realignment.json"
    rows = json.load(open(os.path.join(src_root, src), encoding="utf-8"))
    first = {}
    order = []
    for row in rows:
        if row["prompt"] not in first:
            first[row["prompt"]] = row
            order.append(row["prompt"])
    train = [first[p] for p in order[:200]]
    test = [first[p] for p in order[200:300]]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    dump_json(train, os.path.join(dst_root, "pku_saferlhf/pairs_train_200prompts.json"), False)
    dump_json(test, os.path.join(dst_root, "pku_saferlhf/pairs_test_100prompts.json"), False)


def refusal_sft_first_per_prompt(src_root, dst_root, n_prompts):
    """Header plus the first record of each of the first n distinct prompts of the
    alignment-attribution SFT csv (it holds several sampled refusals per prompt), bytes unchanged."""
    import csv
    import io

    src = "refusal_sft/SFT_aligned_llama2-7b-chat-hf_train_short.csv"
    text = open(os.path.join(src_root, src), encoding="utf-8", newline="").read()
    lines = text.split("\n")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    prompt_col = header.index("prompt")
    keep, seen, start = [lines[0]], set(), reader.line_num
    for rec in reader:
        end = reader.line_num  # lines start..end-1 (0-based) hold this record
        if rec[prompt_col] not in seen and len(seen) < n_prompts:
            seen.add(rec[prompt_col])
            keep.extend(lines[start:end])
        start = end
    dst = os.path.join(dst_root, "refusal_sft/refusals_first_per_prompt_200.csv")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(keep) + "\n")


def main():
    src, dst = sys.argv[1], sys.argv[2]
    # BeaverTails
    copy(src, dst, "beavertails/BeaverTails-Evaluation_700.json")
    copy(src, dst, "beavertails/beavertails_30k_train_unsafe_first200.json")
    copy(src, dst, "beavertails/LICENSE_align-anything_Apache-2.0")
    # PKU-SafeRLHF
    copy(src, dst, "pku_saferlhf/pku_saferlhf_sample32_align_anything.json")
    pku_pairs_by_prompt(src, dst)
    # SST-2
    first_lines(src, dst, "sst2/sst2_train_alps.tsv", "sst2/sst2_train_first1000.tsv", 1000, header=True)
    copy(src, dst, "sst2/sst2_glue_dev_872.tsv")
    first_records(src, dst, "sst2/sst2_validation_instruct.json", "sst2/sst2_validation_instruct_first100.json", 100)
    copy(src, dst, "sst2/LICENSE_alps_MIT")
    # AG News
    first_lines(src, dst, "ag_news/ag_news_train_subset_10000_alps_dev.tsv", "ag_news/ag_news_train_first500.tsv", 500)
    first_records(src, dst, "ag_news/ag_news_test_instruct.json", "ag_news/ag_news_test_instruct_first500.json", 500)
    copy(src, dst, "ag_news/LICENSE_alps_MIT")
    # GSM8K
    first_records(src, dst, "gsm8k/gsm8k_test_instruct.json", "gsm8k/gsm8k_test_instruct_first200.json", 200)
    # Alpaca
    copy(src, dst, "alpaca/alpaca_data_first200.json")
    copy(src, dst, "alpaca/DATA_LICENSE")
    # HHH (BIG-bench hhh_alignment), whole
    for sub in ["task.json", "harmless/task.json", "helpful/task.json", "honest/task.json", "other/task.json"]:
        copy(src, dst, "bigbench/hhh_alignment/" + sub, "hhh/" + sub)
    # TruthfulQA
    first_lines(src, dst, "truthfulqa/TruthfulQA.csv", "truthfulqa/TruthfulQA_first200.csv", 200, header=True)
    first_examples(src, dst, "bigbench/truthful_qa/task_mc.json", "truthfulqa/bigbench_task_mc_first100.json", 100)
    first_examples(src, dst, "bigbench/truthful_qa/questions.json", "truthfulqa/bigbench_questions_first100.json", 100)
    # BBQ (original jsonl)
    for cat in ["Age", "Nationality", "Religion"]:
        first_lines(src, dst, f"bbq/{cat}.jsonl", f"bbq/{cat}_first100.jsonl", 100)
    copy(src, dst, "bbq/LICENSE")
    # BBQ-lite (BIG-bench bbq_lite_json)
    copy(src, dst, "bigbench/bbq_lite_json/task.json", "bbq_lite/task.json")
    for sub in ["age_ambig", "age_disambig", "gender_identity_ambig", "gender_identity_disambig"]:
        first_examples(src, dst, f"bigbench/bbq_lite_json/{sub}/task.json", f"bbq_lite/{sub}/task.json", 50)
    # AdvBench, HarmBench
    copy(src, dst, "advbench/harmful_behaviors.csv")
    copy(src, dst, "harmbench/harmbench_behaviors_text_val.csv")
    copy(src, dst, "harmbench/LICENSE.txt")
    # Harmful prompts with Llama-2-7b-chat refusals (alignment data of the quickstart)
    refusal_sft_first_per_prompt(src, dst, 200)
    copy(src, dst, "refusal_sft/LICENSE")
    # A real pre-built Booster/Vaccine-style fine-tune mix (first 200 of 1000 rows)
    first_records(src, dst, "harmful_finetune_mix/sst2_train_merged_n1000_p0.05.json",
                  "harmful_finetune_mix/sst2_train_merged_n1000_p0.05_first200.json", 200)
    # SELF-ALIGN (Dromedary v1) stage 1: the 175 self-instruct seed tasks and the 20 TGRT seed questions
    copy(src, dst, "dromedary/self_instruct_seed_tasks.jsonl")
    copy(src, dst, "dromedary/tgrt_self_instruct_seed_questions.jsonl", "dromedary/tgrt_seed_questions.jsonl")
    copy(src, dst, "dromedary/DATA_LICENSE")
    # SELF-ALIGN stage 2: the 910 Vicuna identity conversations the merge step adds
    copy(src, dst, "dromedary/vicuna_dummy_data.json")


if __name__ == "__main__":
    main()
