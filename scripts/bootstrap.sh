#!/usr/bin/env bash
# Set up (or reuse) ./.venv with everything recbole-semprune needs, CPU torch first.
# Usage: bash scripts/bootstrap.sh         (VENV=path to use another location)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# The pinned CPU wheel first: an unpinned `torch` requirement would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -c "import recbole_semprune, recbole, torch; print('recbole-semprune', recbole_semprune.__version__, '| recbole', recbole.__version__, '| torch', torch.__version__)"
