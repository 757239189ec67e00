#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv.
# torch and torchvision come first, pinned to the wheels that import together on
# this kind of machine; then the project itself with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.mae-tracker-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    .venv/bin/python -m pip install -q -e ".[test]"
    touch "$stamp"
fi
echo "environment ready: $(pwd)/.venv"
