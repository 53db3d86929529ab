#!/usr/bin/env bash
# Create/refresh the project's virtual environment at .venv/ (idempotent, fast when up to date).
# torch is pinned to the local CPU wheel first: an unpinned torch would pull GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${EDGECOMPILE_EXTRAS:-build,tvm,openvino,hf,dev}   # every extra installable here ([tensorrt] is not)
stamp=.venv/.edgecompile-installed
want=$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -c1-16)-$EXTRAS
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (extras: $EXTRAS) ..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade "pip>=23" "setuptools>=68" wheel 2>&1 | grep -v "is ignored" >&2 || true
.venv/bin/python -m pip install -q -c scripts/constraints.txt "torch==2.13.0" 2>&1 | grep -v "is ignored" >&2 || true
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[$EXTRAS]" 2>&1 | grep -v "is ignored" >&2 || true
.venv/bin/python -c "import edgecompile, torch, onnxruntime" || { echo "error: .venv setup failed" >&2; exit 1; }
echo "$want" > "$stamp"
