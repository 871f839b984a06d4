#!/usr/bin/env bash
# Create (or refresh) a virtual environment with one of the project's pinned stacks.
#
#   bash scripts/setup_env.sh                    # CPU stack: Python 3.11, torch 2.13.0 (CPU build) → ./.venv
#   bash scripts/setup_env.sh --stack container  # the NeMo 25.02 container's stack as on PyPI: Python 3.12,
#                                                # torch 2.6.0 → ./.venv-container (requirements/constraints-container.txt)
#   VENV=/path/to/venv bash scripts/setup_env.sh
#
# Idempotent: re-running it re-checks every pin and installs only what is missing.
# Order matters: torch goes in first (with its own dependencies), then the rest of the stack with
# --no-deps from the pinned resolution, so pip never resolves torch to another (multi-GB) build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK=cpu
if [ "${1:-}" = "--stack" ]; then
  STACK="${2:-}"
elif [ -n "${1:-}" ]; then
  echo "setup_env.sh: error: unknown argument '$1' (usage: setup_env.sh [--stack cpu|container])" >&2
  exit 2
fi
case "$STACK" in
  cpu)
    VENV="${VENV:-$ROOT/.venv}"; TORCH="torch==2.13.0"; TORCH_NOTE="CPU build"
    PINS="$ROOT/requirements/constraints-cpu.txt"
    PYTHON="${PYTHON:-python3.11}"
    command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
    ;;
  container)
    VENV="${VENV:-$ROOT/.venv-container}"; TORCH="torch==2.6.0"; TORCH_NOTE="PyPI's CUDA build, runs on CPU; ~3.3 GB"
    PINS="$ROOT/requirements/constraints-container.txt"
    if [ -z "${PYTHON:-}" ]; then  # the first Python 3.12 that runs: on PATH (a pyenv shim may not), then pyenv's
      PYTHON=""
      for candidate in "$(command -v python3.12 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python; do
        if [ -z "$PYTHON" ] && [ -x "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
          PYTHON="$candidate"
        fi
      done
    fi
    if [ -z "$PYTHON" ] || ! "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "setup_env.sh: error: --stack container needs Python 3.12 (python3.12 on PATH, a pyenv 3.12, or PYTHON=...); none found" >&2
      exit 2
    fi
    ;;
  *)
    echo "setup_env.sh: error: --stack must be cpu or container (got '$STACK')" >&2
    exit 2
    ;;
esac

phase() { printf '\n==> [setup %s/5] %s\n' "$1" "$2"; }

phase 1 "virtual environment at $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
else
  echo "already exists"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
"${PIP[@]}" install --upgrade "pip>=23.2" setuptools wheel

phase 2 "$TORCH ($TORCH_NOTE)"
"${PIP[@]}" install "$TORCH"

phase 3 "pinned NeMo / megatron-core / NeMo-Aligner stack (${PINS#"$ROOT"/}, --no-deps)"
"${PIP[@]}" install --no-deps -r "$PINS"

phase 4 "test and lint tools (requirements/dev.txt)"
"${PIP[@]}" install --no-deps -r "$ROOT/requirements/dev.txt"

phase 5 "nemo_gammapo (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"
"$VENV/bin/python" - <<'PY'
import importlib
for mod in ("torch", "megatron.core", "nemo", "nemo_aligner", "omegaconf", "hydra", "datasets", "nemo_gammapo"):
    importlib.import_module(mod)
import torch
import sys
print(f"ok: Python {sys.version.split()[0]}, torch {torch.__version__}, all stack imports work")
PY
echo "Environment ready: source $VENV/bin/activate"
