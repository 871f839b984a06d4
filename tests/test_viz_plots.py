"""``nemo-gammapo plots`` on a real short NeMo-Aligner run: every figure, CSVs consistent with the dumps."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nemo_gammapo.artifacts.dumps import read_dumps

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
KEYS = ["step", "microbatch", "dp_rank", "pair"]
FIGURES = ("margin_distribution", "gamma_vs_margin", "epsilon_vs_margin", "training_curves")
GAMMA0 = 1.0  # tiny_cpu: γ/β = 0.2, β = 5


@pytest.fixture(scope="module")
def plotted(tmp_path_factory, aligner_runs) -> tuple[Path, Path]:
    """The plots of a 16-step γ-SimPO DP2 run that dumped pairs every 4 steps (see conftest)."""
    run_dir = aligner_runs.dir("plots")
    out = tmp_path_factory.mktemp("plots")
    proc = subprocess.run(
        [sys.executable, "-m", "nemo_gammapo.cli", "plots", str(run_dir), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir, out


def test_every_figure_and_csv_is_written(plotted) -> None:
    _, out = plotted
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 10_000, name
        assert len(pd.read_csv(out / f"{name}.csv")) > 0, name


def test_margin_and_gamma_csvs_match_the_dumps(plotted) -> None:
    run_dir, out = plotted
    dumps = read_dumps(run_dir)
    dumps = dumps[dumps["valid"]]
    margins = pd.read_csv(out / "margin_distribution.csv")
    assert len(margins) == len(dumps) and sorted(margins["step"].unique()) == [0, 4, 8, 12]
    merged = margins.merge(dumps, on=KEYS, suffixes=("_csv", "_dump"))
    assert len(merged) == len(dumps)
    assert (merged["margin_csv"] - merged["margin_dump"]).abs().max() < 1e-6
    assert (merged["in_zoom"] == (merged["margin_dump"].abs() <= GAMMA0)).all()

    gammas = pd.read_csv(out / "gamma_vs_margin.csv").merge(dumps, on=KEYS, suffixes=("_csv", "_dump"))
    assert len(gammas) > 0
    assert (gammas["gamma_csv"] - gammas["gamma_dump"]).abs().max() < 1e-6
    assert (gammas["margin_csv"] - gammas["margin_dump"]).abs().max() < 1e-6


def test_epsilon_csv_is_eq14(plotted) -> None:
    _, out = plotted
    eps = pd.read_csv(out / "epsilon_vs_margin.csv")
    assert len(eps) > 0
    # γ0 comes from the run's config.yaml (written at start-up), exactly the configured ratio·β.
    assert eps["gamma0"].nunique() == 1 and eps["gamma0"].iloc[0] == pytest.approx(GAMMA0)
    for row in eps.itertuples():
        g0 = float(row.gamma0)
        m, delta = float(row.margin), float(row.gamma) - g0
        sigma = 1.0 / (1.0 + math.exp(-(m - g0)))
        want = delta * (1 - sigma) / (math.log(1 + math.exp(m + g0)) - math.log(1 + math.exp(g0 - m)))
        assert row.epsilon == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_training_curves_csv_matches_metrics(plotted) -> None:
    run_dir, out = plotted
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    curves = pd.read_csv(out / "training_curves.csv").set_index("step")
    train = [r for r in history if "train/loss" in r]
    assert len(train) == 16
    for rec in train:
        assert curves.at[rec["step"], "train/loss"] == pytest.approx(rec["train/loss"])
        assert curves.at[rec["step"], "train/gamma_po/gamma_mean"] == pytest.approx(rec["train/gamma_po/gamma_mean"])
    vals = [r for r in history if "val/acc" in r]
    assert vals and all(curves.at[r["step"], "val/acc"] == pytest.approx(r["val/acc"]) for r in vals)
