"""Label-noise robustness study on CPU: SimPO, γ-SimPO, rSimPO, β-SimPO × flip rates × seeds.

    .venv/bin/python scripts/robustness_study.py --out docs/study --figure docs/figures/robustness.png
    .venv/bin/python scripts/robustness_study.py --smoke --out /tmp/smoke   # CI-sized (2 × 2 × 1, 16 steps)

Writes ``results.csv`` (one row per run), ``summary.csv``, ``table.md``, ``config.json`` (grid,
hyperparameters, versions) and the figure. All runs share this process (one CPU thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nemo_gammapo.study.figure import robustness_figure  # noqa: E402
from nemo_gammapo.study.grid import SMOKE, Grid, run_grid, write_outputs  # noqa: E402


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "megatron-core", "numpy", "pandas", "matplotlib"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for results.csv, summary.csv, table.md")
    p.add_argument("--figure", type=Path, default=None, help="figure path (default <out>/robustness.png)")
    p.add_argument("--smoke", action="store_true", help="the CI grid: 2 methods × 2 rates × 1 seed, 16 steps")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    p.add_argument("--steps", type=int, default=None, help="override the training steps per run")
    p.add_argument("--train", type=Path, default=REPO / "data/demo/train.jsonl")
    p.add_argument("--validation", type=Path, default=REPO / "data/demo/validation.jsonl")
    args = p.parse_args(argv)

    grid = SMOKE if args.smoke else Grid()
    if args.seeds is not None:
        grid = dataclasses.replace(grid, seeds=tuple(args.seeds))
    if args.steps is not None:
        grid = dataclasses.replace(grid, config=dataclasses.replace(grid.config, steps=args.steps))
    start = time.perf_counter()
    total = len(grid.runs())

    def progress(row: dict) -> None:
        done = progress.count = getattr(progress, "count", 0) + 1
        print(
            f"[{done}/{total}] {row['method']:<12} flip {row['flip_rate']:.0%} seed {row['seed']}: "
            f"held-out acc {row['heldout_accuracy']:.3f}  margin {row['heldout_margin_mean']:+.3f}  "
            f"({row['wall_s']:.1f} s)",
            flush=True,
        )

    results = run_grid(grid, args.train, args.validation, progress)
    wall = time.perf_counter() - start
    paths = write_outputs(results, args.out)
    figure = robustness_figure(
        results,
        args.figure or args.out / "robustness.png",
        f"Label-flip robustness, tiny GPT on the parity task ({len(grid.seeds)} seed(s), {grid.config.steps} steps)",
    )
    meta = {
        "command": "python scripts/robustness_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "grid": {"methods": list(grid.methods), "flip_rates": list(grid.flip_rates), "seeds": list(grid.seeds)},
        "config": grid.config.to_dict(),
        "versions": versions(),
        "wall_seconds": round(wall, 1),
    }
    (args.out / "config.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(paths["table"].read_text(encoding="utf-8"))
    print(f"{total} runs in {wall:.0f} s; wrote {', '.join(str(x) for x in [*paths.values(), figure])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
