#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment with the pinned CPU stack.
#
#   bash scripts/setup_env.sh            # venv in ./.venv
#   VENV=/path/to/venv bash scripts/setup_env.sh
#
# Idempotent: re-running it re-checks every pin and installs only what is missing.
# Order matters: torch 2.13.0 (CPU build) goes in first, then the rest of the stack with
# --no-deps from our pinned resolution, so pip never resolves torch to a multi-GB CUDA wheel.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

phase() { printf '\n==> [setup %s/5] %s\n' "$1" "$2"; }

phase 1 "virtual environment at $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
else
  echo "already exists"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
"${PIP[@]}" install --upgrade "pip>=23.2" setuptools wheel

phase 2 "torch 2.13.0 (CPU build)"
"${PIP[@]}" install "torch==2.13.0"

phase 3 "pinned NeMo / megatron-core / NeMo-Aligner stack (requirements/constraints-cpu.txt, --no-deps)"
"${PIP[@]}" install --no-deps -r "$ROOT/requirements/constraints-cpu.txt"

phase 4 "test and lint tools (requirements/dev.txt)"
"${PIP[@]}" install --no-deps -r "$ROOT/requirements/dev.txt"

phase 5 "nemo_gammapo (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"
"$VENV/bin/python" - <<'PY'
import importlib
for mod in ("torch", "megatron.core", "nemo", "nemo_aligner", "omegaconf", "hydra", "datasets", "nemo_gammapo"):
    importlib.import_module(mod)
import torch
print(f"ok: torch {torch.__version__}, all stack imports work")
PY
echo "Environment ready: source $VENV/bin/activate"
