"""The committed full robustness grid (docs/study/) is complete and self-consistent, and every number
in docs/robustness.md comes from it.

* ``results.csv`` holds exactly the runs of the default :class:`Grid`, made with its config;
* ``tuning_runs.csv`` holds exactly the grid's tuning runs, on seeds disjoint from the evaluation
  seeds; each tuned loss's chosen ε is the argmax of the committed tuning table (``tuning.csv``),
  is recorded in ``config.json``, and is the ε of every run of that tuned method;
* the derived files (``summary.csv``, ``detection.csv``, ``mechanism_summary.csv``, ``tuning.csv``,
  ``tables.md``) are what :func:`derive` computes from ``results.csv``, ``mechanism.csv`` and
  ``tuning_runs.csv``;
* every table row of the study's write-up is a row of ``tables.md``, and every other number in its
  prose is a number of ``tables.md``, ``config.json`` (full grid or smoke) or the short list below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from nemo_gammapo.study.grid import Grid
from nemo_gammapo.study.report import derive, tuning_table

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "docs" / "study"
DOC = REPO / "docs" / "robustness.md"
FIGURES = ("robustness", "robustness_spearman", "robustness_curves", "robustness_mechanism", "robustness_detection")
NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Numbers the write-up may use that are not results: paper sections / equations / figures / tables,
# the issue number, "95 %" intervals, bin edges and layout words ("2-core", "1 thread").
# Chance (50 %) and perfect (100 %) accuracy, too.
REFERENCES = {"0", "1", "2", "3", "3.1", "4", "5", "6", "7", "13", "14", "17", "95", "50", "100", "10", "20", "30"}
SECTION = "## 4."  # the study's write-up: from this heading to the end


@pytest.fixture(scope="module")
def committed() -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(STUDY / f"{name}.csv") for name in ("results", "mechanism", "tuning_runs")}


def test_results_cover_the_default_grid(committed) -> None:
    results = committed["results"]
    grid = Grid()
    got = set(zip(results["method"], results["flip_rate"].round(6), results["seed"], strict=True))
    assert got == {(m, round(r, 6), s) for m, r, s in grid.runs()} and len(results) == len(grid.runs())
    assert results["heldout_accuracy"].between(0, 1).all()
    meta = json.loads((STUDY / "config.json").read_text())
    assert meta["config"] == json.loads(json.dumps(grid.config.to_dict()))
    assert meta["grid"] == grid.describe()
    for name in FIGURES:
        assert (REPO / "docs" / "figures" / f"{name}.png").stat().st_size > 0, name


def test_epsilon_is_tuned_on_separate_seeds_and_chosen_by_the_committed_table(committed) -> None:
    grid, runs = Grid(), committed["tuning_runs"]
    got = {(m, round(r, 6), s) for m, r, s in zip(runs["method"], runs["flip_rate"], runs["seed"], strict=True)}
    assert got == {(m.key, round(r, 6), s) for m, r, s in grid.tuning_runs()} and len(runs) == len(got)
    assert not set(runs["seed"]) & set(committed["results"]["seed"]), "tuning seeds must not be evaluation seeds"
    table = pd.read_csv(STUDY / "tuning.csv")
    meta = json.loads((STUDY / "config.json").read_text())
    assert meta["grid"]["tuning"]["losses"] == ["rsimpo", "rdpo"]
    results = committed["results"]
    for loss, part in table.groupby("loss"):
        assert sorted(part["epsilon"]) == sorted(grid.tuning.candidates)
        best = part.sort_values("epsilon")["acc_mean"].to_numpy()
        want = float(part.sort_values("epsilon")["epsilon"].to_numpy()[best.argmax()])
        assert part.loc[part["chosen"], "epsilon"].tolist() == [want], loss
        assert meta["tuning"]["chosen_epsilon"][loss] == pytest.approx(want)
        mean = runs[runs["loss"] == loss].groupby("epsilon")["heldout_accuracy"].mean()
        assert mean.to_numpy() == pytest.approx(part.sort_values("epsilon")["acc_mean"].to_numpy(), abs=1e-6)
        tuned = results[results["method"] == f"{loss}@eps=tuned"]
        assert len(tuned) == len(grid.flip_rates) * len(grid.seeds)
        assert tuned["label_smoothing"].to_numpy() == pytest.approx(want), loss
    doc = DOC.read_text(encoding="utf-8")
    rows = [line for line in tuning_table(table).splitlines() if line.startswith("| r")]
    assert len(rows) == 2 and all(row in doc for row in rows), "docs/robustness.md must show the tuning table"


def test_derived_files_follow_from_the_raw_ones(committed) -> None:
    derived = derive(committed["results"], committed["mechanism"], committed["tuning_runs"])
    assert (STUDY / "tables.md").read_text(encoding="utf-8") == derived["tables"]
    for name in ("summary", "detection", "mechanism_summary", "tuning"):
        want = pd.read_csv(STUDY / f"{name}.csv")
        pd.testing.assert_frame_equal(
            want, derived[name].reset_index(drop=True), check_exact=False, rtol=1e-5, atol=2e-6, check_dtype=False
        )


def _prose(text: str) -> str:
    """The doc without code blocks, inline code, image/link targets and table rows."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("|"))


def test_every_number_in_the_write_up_comes_from_the_committed_outputs(committed) -> None:
    doc = DOC.read_text(encoding="utf-8")
    doc = doc[doc.index(SECTION) :]
    tables = (STUDY / "tables.md").read_text(encoding="utf-8")
    table_rows = set(tables.splitlines())
    rows = [line for line in doc.splitlines() if line.startswith("|") and NUMBER.search(line)]
    assert rows, "the write-up quotes no table"
    missing_rows = [r for r in rows if r not in table_rows]
    assert not missing_rows, f"table rows not in docs/study/tables.md: {missing_rows[:3]}"
    results = committed["results"]
    counts = {str(len(results)), str(results["method"].nunique()), str(results["seed"].nunique())}
    configs = (STUDY / "config.json", STUDY / "smoke" / "config.json")
    allowed = set(NUMBER.findall(tables)) | {n for path in configs for n in NUMBER.findall(path.read_text())}
    allowed |= REFERENCES | counts
    stray = sorted({n for n in NUMBER.findall(_prose(doc)) if n not in allowed})
    assert not stray, f"numbers in docs/robustness.md found in no committed output: {stray}"
