"""Smoke runs of every benchmark: one tiny iteration each, structure checked, no timing asserted."""

from __future__ import annotations

import json
import math

import pytest

from nemo_gammapo.cli import main as cli_main


def _finite_positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_solver_benchmark_smoke(tmp_path) -> None:
    out = tmp_path / "solver.json"
    assert cli_main(["bench", "solver", "--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    row = result["solver"][0]
    assert row["solve_size"] == 64 and _finite_positive(row["speedup_eager"])
    assert result["machine"]["torch"]


def test_authors_style_reference_computes_gamma_with_mean_gamma0() -> None:
    import torch

    from nemo_gammapo.bench.solver import GAMMA0, AuthorsStyleQueue
    from nemo_gammapo.core import solve_gamma

    q = AuthorsStyleQueue(capacity=16, solve_size=8)
    margins = torch.tensor([0.5, -1.0, 2.0])
    gamma = q(margins)  # empty queue: the solve set is the current margins
    assert gamma == pytest.approx(solve_gamma(margins, GAMMA0, 10.0).tolist(), abs=1e-5)
    assert sum(gamma) / 3 == pytest.approx(GAMMA0, rel=1e-5)


@pytest.mark.distributed
def test_training_step_benchmark_smoke(tmp_path) -> None:
    out = tmp_path / "step.json"
    assert cli_main(["bench", "step", "--smoke", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["step"]
    assert {(r["loss"], r["base"]) for r in rows} == {("gamma_simpo", "simpo"), ("gamma_dpo", "dpo")}
    assert all(_finite_positive(r["ratio"]) and r["peak_rss_mib"] > 0 for r in rows)


@pytest.mark.distributed
@pytest.mark.slow
def test_nemo_path_benchmark_smoke(tmp_path) -> None:
    out = tmp_path / "nemo.json"
    assert cli_main(["bench", "nemo", "--smoke", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["nemo"][0]
    assert _finite_positive(row["wall_ratio"]) and _finite_positive(row["step_ratio"])
    assert row["simpo_peak_rss_mib"] > 0 and row["dpo_peak_rss_mib"] > 0


def test_gpu_benchmark_dry_run(tmp_path) -> None:
    """The GPU benchmark's CPU dry run: same code path, tiny shapes, one iteration."""
    out = tmp_path / "gpu.json"
    code = (
        "import sys; from nemo_gammapo.cli import main; "
        f"sys.exit(main(['bench', 'gpu', '--dry-run', '--out', {str(out)!r}]))"
    )
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(out.read_text())["gpu"][0]
    assert row["device"] == "cpu (dry run)" and row["layers"] == 2
    assert _finite_positive(row["gamma_overhead_ratio"]) and _finite_positive(row["tokens_per_s"])
