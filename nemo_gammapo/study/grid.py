"""The robustness grid: methods × label-flip rates × seeds, its results CSV and summary table."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nemo_gammapo.study.data import read_jsonl
from nemo_gammapo.study.trainer import METHODS, StudyConfig, train_one
from nemo_gammapo.viz.style import method_label

# Columns of results.csv that are reproducible run to run (everything except wall time).
RESULT_COLUMNS = (
    "method",
    "flip_rate",
    "seed",
    "realised_flip_rate",
    "heldout_accuracy",
    "heldout_margin_mean",
    "flipped_pairs_fit",
    "final_train_loss",
    "final_gamma_mean",
    "final_gamma_std",
    "label_smoothing",
)


@dataclass(frozen=True)
class Grid:
    """Which runs to make; ``config`` is shared by every run."""

    methods: Sequence[str] = METHODS
    flip_rates: Sequence[float] = (0.0, 0.1, 0.2)
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    config: StudyConfig = field(default_factory=StudyConfig)

    def runs(self) -> list[tuple[str, float, int]]:
        return list(itertools.product(self.methods, self.flip_rates, self.seeds))


SMOKE = Grid(methods=("simpo", "gamma_simpo"), flip_rates=(0.0, 0.2), seeds=(0,), config=StudyConfig(steps=16))


def run_grid(
    grid: Grid, train_path: Path, val_path: Path, progress: Callable[[dict[str, Any]], None] | None = None
) -> pd.DataFrame:
    """Train every run of ``grid`` in this process; one row per run (columns of ``train_one``)."""
    train, val = read_jsonl(train_path), read_jsonl(val_path)
    rows = []
    for method, rate, seed in grid.runs():
        row = train_one(method, rate, seed, train, val, grid.config)
        rows.append(row)
        if progress is not None:
            progress(row)
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over seeds of held-out accuracy, margin and noise fit, per method and rate."""
    agg = results.groupby(["method", "flip_rate"], sort=False).agg(
        seeds=("seed", "count"),
        acc_mean=("heldout_accuracy", "mean"),
        acc_std=("heldout_accuracy", "std"),
        margin_mean=("heldout_margin_mean", "mean"),
        margin_std=("heldout_margin_mean", "std"),
        noise_fit_mean=("flipped_pairs_fit", "mean"),
    )
    return agg.reset_index().fillna({"acc_std": 0.0, "margin_std": 0.0})


def markdown_table(summary: pd.DataFrame) -> str:
    """Methods as rows, flip rates as columns: held-out accuracy (%) mean ± std over seeds."""
    rates = sorted(summary["flip_rate"].unique())
    header = "| method | " + " | ".join(f"flip {r:.0%}" for r in rates) + " | mean |"
    lines = [header, "|---" * (len(rates) + 2) + "|"]
    for method in dict.fromkeys(summary["method"]):
        part = summary[summary["method"] == method].set_index("flip_rate")
        cells = [f"{100 * part.at[r, 'acc_mean']:.1f} ± {100 * part.at[r, 'acc_std']:.1f}" for r in rates]
        lines.append(f"| {method_label(method)} | " + " | ".join(cells) + f" | {100 * part['acc_mean'].mean():.1f} |")
    seeds = int(summary["seeds"].max())
    lines.append("")
    lines.append(f"Clean held-out preference accuracy (%), mean ± sample std over {seeds} seed(s).")
    return "\n".join(lines) + "\n"


def write_outputs(results: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """``results.csv`` (one row per run, reproducible columns + wall time), ``summary.csv``, ``table.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results": out_dir / "results.csv", "summary": out_dir / "summary.csv", "table": out_dir / "table.md"}
    cols = [c for c in RESULT_COLUMNS if c in results]
    results[cols].to_csv(paths["results"], index=False, float_format="%.6f")
    summary = summarise(results)
    summary.to_csv(paths["summary"], index=False, float_format="%.6f")
    paths["table"].write_text(markdown_table(summary), encoding="utf-8")
    return paths
