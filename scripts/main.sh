#!/usr/bin/env bash
# The main job: set up, then run the whole workflow on the embedded default (synthetic data,
# packaged offline LLM) and produce the tables. Extra arguments go to snakemake.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
snakemake --cores all "$@"
