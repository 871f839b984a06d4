"""``nemo-gammapo`` — the command-line tools, one subcommand per module.

    nemo-gammapo train ...    check a run, then start it with torchrun (nemo_gammapo.aligner.cli)
    nemo-gammapo precompute-reference ...  reference log-probs once (nemo_gammapo.aligner.precompute)
    nemo-gammapo data ...     preference data: convert, validate, inject label noise (nemo_gammapo.data)
    nemo-gammapo launch ...   start / follow a run through NeMo-Run (local, SLURM) (nemo_gammapo.launch.nemo_run_launch)
    nemo-gammapo plan ...     parallel-layout memory planner (nemo_gammapo.launch.planner)
    nemo-gammapo plots ...    margin / γ figures from a run (nemo_gammapo.viz)
    nemo-gammapo bench ...    benchmarks (nemo_gammapo.bench)
    nemo-gammapo generate ... responses to a prompt file, as AlpacaEval model outputs (nemo_gammapo.evaluate.generate)

Each subcommand lives in its own module exposing ``main(argv: list[str] | None) -> int``;
modules are imported only when their subcommand runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "train": ("nemo_gammapo.aligner.cli", "check a training run, then start its workers with torchrun"),
    "precompute-reference": (
        "nemo_gammapo.aligner.precompute",
        "the reference policy's log-probs for every pair, once (model.dpo.reference=precomputed)",
    ),
    "convert": ("nemo_gammapo.convert.cli", "Hugging Face checkpoints <-> .nemo (hf-to-nemo, nemo-to-hf)"),
    "data": ("nemo_gammapo.data.cli", "preference data tools (convert, validate, stats, flip)"),
    "launch": ("nemo_gammapo.launch.nemo_run_launch", "start a run with NeMo-Run (local, SLURM); its status and logs"),
    "plan": ("nemo_gammapo.launch.planner", "estimate per-GPU memory of TP/PP/DP layouts"),
    "plots": ("nemo_gammapo.viz.cli", "margin / γ figures from a training run"),
    "bench": ("nemo_gammapo.bench.cli", "benchmarks (solver, training step, memory)"),
    "generate": (
        "nemo_gammapo.evaluate.generate",
        "responses of a HF or .nemo model to a prompt file, as AlpacaEval model outputs",
    ),
}


def usage() -> str:
    lines = ["usage: nemo-gammapo <command> [args...]", "", "commands:"]
    width = max(map(len, SUBCOMMANDS)) + 2
    lines += [f"  {name:<{width}}{help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"nemo-gammapo: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            print(f"nemo-gammapo: command {name!r} is not available in this version", file=sys.stderr)
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
