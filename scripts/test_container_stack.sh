#!/usr/bin/env bash
# The container leg: a named subset of the suite on the NeMo 25.02 container's stack as PyPI has it
# (Python 3.12, torch 2.6.0, megatron-core 0.11.0, NeMo 2.2.1, NeMo-Aligner 0.7.0:
# requirements/constraints-container.txt), beside the CPU stack that `pytest tests` runs on.
#
#   bash scripts/setup_env.sh --stack container && bash scripts/test_container_stack.sh
#
# CONTAINER_TESTS below is the one list of what this leg runs. What it cannot prove — NVIDIA's own
# torch build, Transformer Engine, apex, NCCL, BF16 on a GPU — only the real container on a GPU can.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-container}"
cd "$ROOT" || exit 2
if [ ! -x "$VENV/bin/python" ]; then
  echo "test_container_stack.sh: error: no environment at $VENV; run: bash scripts/setup_env.sh --stack container" >&2
  exit 2
fi

CONTAINER_TESTS=(
  tests/test_core_baseline.py tests/test_core_config.py tests/test_core_isolation.py tests/test_core_losses.py
  tests/test_core_queue.py tests/test_core_solver.py tests/test_batch_reference.py  # the maths
  tests/test_configs.py                                    # every preset composes and validates
  tests/test_aligner_parts.py                              # version adapters by probe, resharding, CP parts
  tests/test_distributed_invariance.py                     # megatron-core layouts = one process
  tests/test_product_invariance.py                         # the product path at every layout, the TP2×PP2 kill
  tests/test_fault_recovery.py                             # kill -9 in a save, NaN stop, SIGUSR1, lock
  tests/test_reference_precompute.py tests/test_reference_check.py  # precomputed reference, step-0 check
  tests/test_hf_parity.py                                  # HF ↔ .nemo against transformers
  tests/test_data_order.py                                 # the global data order a resume at another layout keeps
  "tests/test_aligner_training.py::test_stop_and_resume_is_bit_exact"  # the demo preset: trains, stops, resumes
  "tests/test_aligner_training.py::test_trains_and_loss_decreases[gamma_simpo]"  # the demo's loss
)

"$VENV/bin/python" -c 'import sys, torch; print(f"container leg: Python {sys.version.split()[0]}, torch {torch.__version__}")'
"$VENV/bin/python" -m pytest -p no:cacheprovider "${CONTAINER_TESTS[@]}" "$@"
