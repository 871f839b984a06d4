"""The robustness study end to end: the smoke grid (CI-sized) and the committed full-grid outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nemo_gammapo.study.grid import Grid, markdown_table, summarise

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "robustness_study.py"


def run_smoke(out: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("smoke_a"), tmp_path_factory.mktemp("smoke_b")
    run_smoke(a)
    run_smoke(b)
    return a, b


def test_smoke_grid_outputs(smoke_runs) -> None:
    out, _ = smoke_runs
    for name in ("results.csv", "summary.csv", "table.md", "robustness.png", "config.json"):
        assert (out / name).stat().st_size > 0, name
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and set(results["method"]) == {"simpo", "gamma_simpo"}
    assert results["heldout_accuracy"].between(0, 1).all()
    assert (results.loc[results["flip_rate"] == 0.0, "realised_flip_rate"] == 0).all()
    assert results.loc[results["flip_rate"] == 0.2, "realised_flip_rate"].between(0.1, 0.3).all()
    table = (out / "table.md").read_text()
    assert "SimPO" in table and "γ-SimPO" in table and "flip 20%" in table
    meta = json.loads((out / "config.json").read_text())
    assert meta["grid"]["seeds"] == [0] and meta["config"]["steps"] == 16


def test_smoke_grid_is_deterministic(smoke_runs) -> None:
    a, b = smoke_runs
    assert (a / "results.csv").read_text() == (b / "results.csv").read_text()
    assert (a / "table.md").read_text() == (b / "table.md").read_text()


def test_committed_full_grid_is_complete_and_consistent() -> None:
    """docs/study holds every run of the default grid; its table is derived from its results."""
    study = REPO / "docs" / "study"
    results = pd.read_csv(study / "results.csv")
    grid = Grid()
    got = set(zip(results["method"], results["flip_rate"].round(6), results["seed"], strict=True))
    assert got == {(m, round(r, 6), s) for m, r, s in grid.runs()}
    assert results["heldout_accuracy"].between(0, 1).all()
    assert (study / "table.md").read_text() == markdown_table(summarise(results))
    meta = json.loads((study / "config.json").read_text())
    assert meta["config"] == grid.config.to_dict()
    assert (REPO / "docs" / "figures" / "robustness.png").stat().st_size > 0
