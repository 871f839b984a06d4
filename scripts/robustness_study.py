"""Label-noise robustness study on CPU: SimPO and DPO families × flip rates × seeds on a graded synthetic task.

    .venv/bin/python scripts/robustness_study.py --out docs/study --figure docs/figures/robustness.png --workers 2
    .venv/bin/python scripts/robustness_study.py --smoke --out /tmp/smoke   # CI-sized (5 × 2 × 2, 16 steps)

First a tuning stage chooses rSimPO's and rDPO's ε (candidates × tuning seeds at 20 % flips,
scored on the tuning seeds' own held-out pairs; :mod:`nemo_gammapo.study.tuning`), then the grid
runs. Writes ``results.csv`` (one row per run), ``curves.csv``, ``mechanism.csv``,
``tuning_runs.csv``, the derived ``summary.csv``, ``detection.csv``, ``mechanism_summary.csv``,
``tuning.csv``, ``tables.md``, ``config.json`` (grid, hyperparameters, versions, chosen ε, wall
times) and the figures (``robustness*.png`` beside ``--figure``). One progress line per finished
run, with an ETA. ``--reuse`` trains only the runs missing from ``--out``'s raw CSVs (and tuned-ε
runs whose ε changed); runs are bit-repeatable per (method, flip rate, seed), so the merged
outputs equal a full run's.
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

import pandas as pd  # noqa: E402

from nemo_gammapo.study.figure import write_figures  # noqa: E402
from nemo_gammapo.study.grid import SMOKE, Grid, GridResults, run_grid  # noqa: E402
from nemo_gammapo.study.report import rederive, write_outputs  # noqa: E402


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "megatron-core", "numpy", "pandas", "scipy", "matplotlib"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the CSVs, tables.md and config.json")
    p.add_argument("--figure", type=Path, default=None, help="main figure path (default <out>/robustness.png)")
    p.add_argument(
        "--smoke", action="store_true", help="the CI grid: 5 methods × 2 rates × 2 seeds, 16 steps, tiny ε tuning"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    p.add_argument("--methods", nargs="+", default=None, help="override the methods (keys as in results.csv)")
    p.add_argument("--steps", type=int, default=None, help="override the training steps per run")
    p.add_argument("--workers", type=int, default=1, help="worker processes, one thread each (default 1)")
    p.add_argument(
        "--rederive", action="store_true", help="train nothing: rewrite the derived files and figures from <out>'s CSVs"
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="train only the runs missing from <out>'s raw CSVs (or whose tuned ε changed) and merge",
    )
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be >= 1")

    if args.rederive:
        paths = rederive(args.out)
        figures = write_figures(args.out, args.figure or args.out / "robustness.png")
        print(f"rewrote {', '.join(str(x) for x in [*paths, *figures])}")
        return 0
    grid = SMOKE if args.smoke else Grid()
    if args.seeds is not None:
        grid = dataclasses.replace(grid, seeds=tuple(args.seeds))
    if args.methods is not None:
        grid = dataclasses.replace(grid, methods=tuple(args.methods))
    if args.steps is not None:
        grid = dataclasses.replace(grid, config=dataclasses.replace(grid.config, steps=args.steps))
    previous, old_meta = None, {}
    if args.reuse and (args.out / "results.csv").exists():
        previous = GridResults(*(pd.read_csv(args.out / f"{n}.csv") for n in ("results", "curves", "mechanism")))
        if (args.out / "config.json").exists():
            old_meta = json.loads((args.out / "config.json").read_text(encoding="utf-8"))
        if old_meta.get("config") != json.loads(json.dumps(grid.config.to_dict())):
            p.error(f"--reuse: {args.out / 'config.json'} was written with another config")
    start = time.perf_counter()
    total = len(grid.runs())
    print(
        f"{len(grid.tuning_runs())} tuning runs, then the grid's {total} runs"
        f"{' (training only those missing from ' + str(args.out) + ')' if previous is not None else ''}"
        f" on {args.workers} worker process(es)",
        flush=True,
    )

    def progress(row: dict, done: int, total: int, elapsed: float) -> None:
        eta = elapsed / done * (total - done)
        stage = "tune " if row.get("stage") == "tuning" else ""
        print(
            f"[{stage}{done}/{total}] {row['method']:<18} flip {row['flip_rate']:.0%} seed {row['seed']}: "
            f"acc {row['heldout_accuracy']:.3f} ρ {row['heldout_spearman']:+.3f}  "
            f"({row['wall_s']:.1f} s; elapsed {elapsed:.0f} s, ETA {eta:.0f} s)",
            flush=True,
        )

    out = run_grid(grid, args.workers, progress, previous)
    wall = time.perf_counter() - start
    trained_wall = out.results["wall_s"].dropna() if "wall_s" in out.results else pd.Series(dtype=float)
    meta = {
        "command": "python scripts/robustness_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "grid": grid.describe(),
        "config": grid.config.to_dict(),
        "versions": versions(),
        "workers": args.workers,
        "wall_seconds": round(wall, 1),
        "runs_trained": out.trained,
        "runs_reused": out.reused,
        "run_seconds_mean": round(float(trained_wall.mean()), 2) if len(trained_wall) else None,
    }
    if len(out.tuning_runs):
        meta["tuning"] = {
            "runs": len(out.tuning_runs),
            "wall_seconds": round(out.tuning_seconds, 1),
            "run_seconds_mean": round(float(out.tuning_runs["wall_s"].mean()), 2),
            "chosen_epsilon": out.epsilons,
            "table": [
                {"loss": r.loss, "epsilon": r.epsilon, "acc_mean": round(r.acc_mean, 6), "chosen": bool(r.chosen)}
                for r in out.tuning.itertuples()
            ],
        }
    if out.reused:
        # the timing of the last run that trained the whole grid, carried over
        meta["full_run"] = old_meta.get("full_run") or {
            k: old_meta.get(k) for k in ("command", "workers", "wall_seconds", "run_seconds_mean")
        } | {"runs": len(previous.results)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    paths = write_outputs(out.results, out.curves, out.mechanism, args.out, out.tuning_runs)
    figures = write_figures(args.out, args.figure or args.out / "robustness.png")
    print(paths["tables"].read_text(encoding="utf-8"))
    if out.epsilons:
        chosen = ", ".join(f"{loss} ε = {eps:g}" for loss, eps in out.epsilons.items())
        print(f"tuning: {len(out.tuning_runs)} runs in {out.tuning_seconds:.0f} s; chosen {chosen}")
    print(
        f"{out.trained} runs trained, {out.reused} reused, in {wall:.0f} s;"
        f" wrote {', '.join(str(x) for x in [*paths.values(), *figures])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
