"""Benchmarks: the timing and ratio arithmetic on fabricated histories with known answers, the result
fields against the columns ``docs/benchmarks.md`` shows, and one tiny smoke run of each benchmark.

No test asserts a measured time; the smoke runs check the structure and the internal consistency
of what a real run writes (each ratio is the quotient of the times it reports).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nemo_gammapo.bench import common
from nemo_gammapo.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTIONS = {"1": "solver", "2": "step", "3": "nemo"}  # "## <n>. …" section of docs/benchmarks.md
COMPUTE_SECTION = "## 4."  # the NeMo path where compute dominates (bench nemo-compute)
GPU_SECTION = "## 5."
COMPILED_ONLY = {"ours_compiled_ms", "speedup_compiled"}  # solver columns of a --compile'd solver only


def documented_columns() -> dict[str, list[str]]:
    """Per benchmark, the columns of the first result table under its section of docs/benchmarks.md."""
    columns: dict[str, list[str]] = {}
    for match in re.finditer(r"^## (\d)\. .*?^```\n(.*?)\n(-[- ]*)\n", DOCS.read_text(encoding="utf-8"), re.M | re.S):
        number, header = match.group(1), match.group(2).splitlines()[-1]
        if number in SECTIONS:
            columns[SECTIONS[number]] = header.split()
    assert set(columns) == set(SECTIONS.values()), f"result tables not found in {DOCS}: {columns}"
    return columns


def documented_compute_columns(table: str) -> list[str]:
    """Columns of the ``scaling`` (first) or ``ratios`` (second) result table of the nemo-compute section."""
    section = DOCS.read_text(encoding="utf-8").split(COMPUTE_SECTION)[1].split(GPU_SECTION)[0]
    headers = [m.group(1).split() for m in re.finditer(r"^```\n(.*?)\n-[- ]*\n", section, re.M)]
    return {"scaling": headers[0], "ratios": headers[2]}[table]


class FakeClock:
    """``perf_counter`` stand-in: time moves only when a timed function says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def perf_counter(self) -> float:
        return self.now

    def step(self, name: str, durations: list[float]) -> Any:
        remaining = iter(durations)

        def fn() -> None:
            self.calls.append(name)
            self.now += next(remaining)

        return fn


# ------------------------------------------------------------------ arithmetic, known answers


def test_median_seconds_skips_the_warmup_calls_and_takes_the_median(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(common, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    fn = clock.step("f", [100.0, 50.0, 3.0, 1.0, 8.0, 2.0])
    assert common.median_seconds(fn, repeats=4, warmup=2) == 2.5  # median of 3, 1, 8, 2
    assert clock.calls == ["f"] * 6


def test_alternating_times_alternates_the_steps_and_drops_the_warmup_round(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(common, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    steps = {"gamma": clock.step("gamma", [9.0, 1.0, 2.0, 4.0]), "base": clock.step("base", [7.0, 3.0, 1.0, 1.0])}
    times = common.alternating_times(steps, rounds=4)
    assert clock.calls == ["gamma", "base"] * 4
    assert times == {"gamma": [1.0, 2.0, 4.0], "base": [3.0, 1.0, 1.0]}


def test_training_step_row_is_the_ratio_of_median_step_times() -> None:
    from nemo_gammapo.bench.train_step import pair_row

    times = {"gamma_simpo": [0.3, 0.1, 0.2], "simpo": [0.1, 0.4, 0.1, 0.2]}
    row = pair_row("tp1-pp1-dp2-mb1", "gamma_simpo", "simpo", times, peak_rss=512.0)
    assert row["gamma_ms"] == pytest.approx(200.0) and row["base_ms"] == pytest.approx(150.0)
    assert row["ratio"] == pytest.approx(4 / 3)
    assert (row["layout"], row["loss"], row["base"], row["peak_rss_mib"]) == (
        "tp1-pp1-dp2-mb1",
        "gamma_simpo",
        "simpo",
        512.0,
    )
    assert list(row) == documented_columns()["step"]


def _history(wall_times: list[float], step_times: list[float]) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = [
        {"step": i, "wall_time": w, "train/loss": 0.5, "train/step_time": s}
        for i, (w, s) in enumerate(zip(wall_times, step_times, strict=True))
    ]
    history.insert(2, {"step": 1, "wall_time": 1000.0, "val/loss": 0.6})  # not a training step: ignored
    return history


def test_nemo_row_uses_median_gaps_between_training_steps_and_median_step_time() -> None:
    from nemo_gammapo.bench.nemo_step import comparison_row, loss_summary

    simpo = loss_summary(_history([10.0, 11.0, 13.0, 16.0, 16.5], [0.4, 0.2, 0.9, 0.3, 0.5]), [500.0, 700.0])
    assert simpo == {"wall_s": 1.5, "compute_s": 0.4, "peak_rss_mib": 700.0}  # gaps 1, 2, 3, 0.5
    dpo = loss_summary(_history([0.0, 2.0, 4.0], [0.5, 0.5, 0.6]), [800.0, 600.0])
    assert dpo == {"wall_s": 2.0, "compute_s": 0.5, "peak_rss_mib": 800.0}
    row = comparison_row(simpo, dpo)
    assert row == pytest.approx(
        {
            "simpo_wall_ms": 1500.0,
            "dpo_wall_ms": 2000.0,
            "wall_ratio": 0.75,
            "simpo_step_ms": 400.0,
            "dpo_step_ms": 500.0,
            "step_ratio": 0.8,
            "simpo_peak_rss_mib": 700.0,
            "dpo_peak_rss_mib": 800.0,
        }
    )
    assert list(row) == documented_columns()["nemo"]


def test_gpu_numbers_from_step_times() -> None:
    from nemo_gammapo.bench.gpu import DRY_RUN_SHAPE, flops_per_token, step_numbers

    times = {"gamma_simpo": [0.5, 0.25, 1.0], "simpo": [0.25, 0.125, 0.5, 0.25]}
    # flops_per_token · 128 tokens/s / peak = 0.5 exactly at this peak
    peak = flops_per_token(DRY_RUN_SHAPE, 32) * 128 / 0.5 / 1e12
    numbers = step_numbers(times, DRY_RUN_SHAPE, seq=32, batch_seqs=2, peak_tflops=peak)
    assert numbers == pytest.approx(
        {"gamma_step_ms": 500.0, "base_step_ms": 250.0, "gamma_overhead_ratio": 2.0, "tokens_per_s": 128.0, "mfu": 0.5}
    )
    assert math.isnan(step_numbers(times, DRY_RUN_SHAPE, seq=32, batch_seqs=2, peak_tflops=None)["mfu"])


def test_committed_results_have_the_documented_columns() -> None:
    """docs/benchmarks.json (the raw results the tables in the docs were copied from) has their columns."""
    columns = documented_columns()
    results = json.loads((ROOT / "docs" / "benchmarks.json").read_text())
    for name, expected in columns.items():
        assert [list(row) for row in results[name]] == [expected] * len(results[name]), name


@pytest.mark.parametrize("value", ["0", "-3", "nan", "fast"])
def test_peak_tflops_must_be_a_positive_number(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "gpu", "--dry-run", "--peak-tflops", value])
    assert exit_info.value.code == 2 and "--peak-tflops" in capsys.readouterr().err


# ------------------------------------------------------------------ nemo-compute: arithmetic, variants, docs


def test_compute_size_gflop_per_step_known_answer() -> None:
    from nemo_gammapo.bench.nemo_compute import Size

    size = Size("t", hidden=64, layers=2, heads=4, seq=128, global_batch=8)
    # matmul params 2·(4·64² + 2·64·256) + 64·384 = 122880; 6·122880 + 12·2·64·128 = 933888 per token
    assert size.train_flops_per_token() == 933888
    assert size.step_gflop() == pytest.approx(933888 * 2 * 8 * 128 / 1e9)  # 2 sequences per pair
    assert size.step_gflop(reference_pass=True) == pytest.approx(size.step_gflop() * 4 / 3)
    assert "model.ffn_hidden_size=256" in size.overrides() and "model.max_position_embeddings=128" in size.overrides()


def test_compute_pairs_are_exactly_seq_characters_long(tmp_path: Path) -> None:
    from nemo_gammapo.bench.nemo_compute import write_pairs

    path = write_pairs(tmp_path / "p.jsonl", pairs=5, seq=33)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 5 and len({r["id"] for r in records}) == 5
    for r in records:
        assert len(r["prompt"] + r["chosen_response"]) == len(r["prompt"] + r["rejected_response"]) == 33


def _timed_history(wall: list[float], cpu: list[float], step: list[float]) -> list[dict[str, Any]]:
    history = _history(wall, step)
    for record, c in zip([r for r in history if "train/loss" in r], cpu, strict=True):
        record["cpu_time"] = c
    return history


def test_compute_run_times_skip_the_first_step_and_pool_over_runs() -> None:
    from nemo_gammapo.bench.nemo_compute import run_times, summarize

    first = run_times(_timed_history([10.0, 11.0, 13.0, 16.0], [1.0, 1.5, 2.5, 4.0], [9.0, 0.2, 0.9, 0.3]))
    assert first == pytest.approx(
        {
            "wall_gaps_s": [1.0, 2.0, 3.0],
            "cpu_gaps_s": [0.5, 1.0, 1.5],
            "step_times_s": [0.2, 0.9, 0.3],
            "wall_s": 2.0,
            "cpu_s": 1.0,
            "step_s": 0.3,
        }
    )
    second = run_times(_timed_history([0.0, 5.0, 10.0], [0.0, 3.0, 6.0], [9.0, 0.5, 0.6]))
    memory = [{"peak_rss_mib": 700.0, "rss_growth_mib": 10.0}, {"peak_rss_mib": 900.0, "rss_growth_mib": 30.0}]
    summary = summarize([first | memory[0], second | memory[1]])
    # pooled: wall gaps 1, 2, 3, 5, 5; CPU gaps 0.5, 1, 1.5, 3, 3; step times 0.2, 0.9, 0.3, 0.5, 0.6
    assert summary == pytest.approx(
        {
            "wall_ms": 3000.0,
            "cpu_ms": 1500.0,
            "step_ms": 500.0,
            "peak_rss_mib": 900.0,
            "rss_growth_mib": 20.0,
            "runs": 2,
            "steps": 5,
        }
    )
    no_cpu = run_times(_history([0.0, 1.0, 2.0], [0.1, 0.1, 0.1]))  # a history without cpu_time
    assert no_cpu["cpu_gaps_s"] == [] and math.isnan(no_cpu["cpu_s"])


def test_compute_scaling_rows_fit_the_fixed_cost() -> None:
    from nemo_gammapo.bench.nemo_compute import Size, fit_fixed_cost, scaling_rows

    assert fit_fixed_cost([(1.0, 0.3), (2.0, 0.5), (4.0, 0.9)]) == pytest.approx((0.1, 0.2))
    sizes = [Size("a", 64, 2, 4, 128), Size("b", 128, 4, 4, 256)]
    times = {  # CPU: 100 ms fixed + 10 ms per GFLOP
        s.name: {"cpu_s": 0.1 + 0.01 * s.step_gflop(), "wall_s": 2.0, "step_s": 1.0} for s in sizes
    }
    rows = scaling_rows(sizes, times)
    assert [r["size"] for r in rows] == ["a", "b"]
    for row, s in zip(rows, sizes, strict=True):
        assert row["fit_fixed_ms"] == pytest.approx(100.0) and row["fit_ms_per_gflop"] == pytest.approx(10.0)
        assert row["cpu_ms_per_gflop"] == pytest.approx(row["cpu_ms"] / s.step_gflop())
        assert row["fixed_share"] == pytest.approx(100.0 / row["cpu_ms"])
        assert row["fixed_share_bound"] == pytest.approx(rows[0]["cpu_ms"] / row["cpu_ms"])
        assert (row["wall_ms"], row["step_ms"]) == (2000.0, 1000.0)
    assert list(rows[0]) == documented_compute_columns("scaling")
    (single,) = scaling_rows(sizes[:1], times)
    assert math.isnan(single["fixed_share"])


def test_compute_ratio_rows_met_missed_pending_not_run() -> None:
    from nemo_gammapo.bench.nemo_compute import RATIOS, ratio_rows

    ran = {"cpu_ms": 100.0, "wall_ms": 300.0, "step_ms": 50.0, "status": "ran"}
    variants = {
        "simpo": ran,
        "gamma_simpo": ran | {"cpu_ms": 101.0, "wall_ms": 600.0},
        "gamma_dpo": ran | {"cpu_ms": 200.0, "step_ms": 40.0},
        "gamma_dpo_precomputed": {"status": "pending", "reason": "not yet"},
    }
    rows = {r["ratio"]: r for r in ratio_rows(variants)}
    assert list(rows) == [r.name for r in RATIOS]
    assert list(rows["gamma_simpo/simpo"]) == documented_compute_columns("ratios")
    simpo = rows["gamma_simpo/simpo"]
    assert (simpo["cpu_ratio"], simpo["wall_ratio"], simpo["status"]) == (pytest.approx(1.01), 2.0, "met")
    assert rows["gamma_simpo/gamma_dpo"]["cpu_ratio"] == pytest.approx(0.505)
    assert rows["gamma_simpo/gamma_dpo"]["step_ratio"] == pytest.approx(1.25)
    assert rows["gamma_simpo/gamma_dpo"]["status"] == "met"
    assert rows["gamma_dpo/dpo"]["status"] == "not run" and math.isnan(rows["gamma_dpo/dpo"]["cpu_ratio"])
    assert rows["gamma_dpo_precomputed/gamma_dpo"]["status"] == "pending"
    variants["gamma_simpo"] = ran | {"cpu_ms": 103.0}
    assert ratio_rows(variants)[0]["status"] == "MISSED"


def test_compute_variant_is_pending_while_its_config_key_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variant whose config key is absent is reported pending, not run; the precomputed one now runs."""
    from nemo_gammapo import configs
    from nemo_gammapo.bench import nemo_compute

    (variant,) = [v for v in nemo_compute.VARIANTS if v.name == "gamma_dpo_precomputed"]
    assert variant.requires == "model.dpo.reference" and "model.dpo.reference=precomputed" in variant.overrides
    assert not variant.online_reference and variant.precompute_reference and variant.pending is None
    assert nemo_compute.pending_reason(variant) is None  # the real config has the key
    monkeypatch.setattr(configs, "config_dir", lambda: tmp_path)
    (tmp_path / "gpt_gammapo.yaml").write_text("model:\n  dpo:\n    preference_loss: gamma_simpo\n")
    assert "model.dpo.reference" in nemo_compute.pending_reason(variant)  # key absent: pending
    (tmp_path / "gpt_gammapo.yaml").write_text("model:\n  dpo:\n    reference: online\n")
    assert nemo_compute.pending_reason(variant) is None


def test_committed_compute_results_match_the_docs() -> None:
    """docs/benchmarks_compute.json (a full run) has the documented columns; every ratio is its variants' quotient."""
    result = json.loads((ROOT / "docs" / "benchmarks_compute.json").read_text())["nemo-compute"]
    assert result["scaling"] and all(list(r) == documented_compute_columns("scaling") for r in result["scaling"])
    variants = {v["variant"]: v for v in result["variants"]}
    for row in result["ratios"]:
        assert list(row) == documented_compute_columns("ratios")
        if row["status"] == "pending":
            continue
        num, den = row["ratio"].split("/")
        for kind in ("cpu", "wall", "step"):
            assert row[f"{kind}_ratio"] == pytest.approx(variants[num][f"{kind}_ms"] / variants[den][f"{kind}_ms"])
    section = DOCS.read_text(encoding="utf-8").split(COMPUTE_SECTION)[1].split(GPU_SECTION)[0]
    assert "nemo-gammapo bench nemo-compute" in section and "docs/benchmarks_compute.json" in section
    size = result["compute_size"]["name"]
    assert size in section, "the chosen size is named in the docs"


# ------------------------------------------------------------------ one tiny run of each benchmark


def test_solver_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "solver.json"
    assert cli_main(["bench", "solver", "--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["solver"]
    assert list(row) == [c for c in documented_columns()["solver"] if c not in COMPILED_ONLY]  # smoke: eager only
    assert (row["solve_size"], row["microbatch"]) == (64, 8)
    assert row["speedup_eager"] == pytest.approx(row["authors_style_ms"] / row["ours_eager_ms"])
    assert result["smoke"] is True and result["machine"]["torch"]


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
def test_training_step_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    assert cli_main(["bench", "step", "--smoke", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["step"]
    assert [(r["layout"], r["loss"], r["base"]) for r in rows] == [
        ("tp1-pp1-dp1-mb2", "gamma_simpo", "simpo"),
        ("tp1-pp1-dp1-mb2", "gamma_dpo", "dpo"),
    ]
    for row in rows:
        assert list(row) == documented_columns()["step"]
        assert row["ratio"] == pytest.approx(row["gamma_ms"] / row["base_ms"])


@pytest.mark.distributed
@pytest.mark.slow
def test_nemo_path_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "nemo.json"
    assert cli_main(["bench", "nemo", "--smoke", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["nemo"]
    assert list(row) == documented_columns()["nemo"]
    assert row["wall_ratio"] == pytest.approx(row["simpo_wall_ms"] / row["dpo_wall_ms"])
    assert row["step_ratio"] == pytest.approx(row["simpo_step_ms"] / row["dpo_step_ms"])


def test_gpu_benchmark_dry_run(tmp_path: Path) -> None:
    """The GPU benchmark's CPU dry run: same code path, tiny shapes, one iteration, MFU against --peak-tflops."""
    from nemo_gammapo.bench.gpu import DRY_RUN_SHAPE, flops_per_token

    out = tmp_path / "gpu.json"
    code = (
        "import sys; from nemo_gammapo.cli import main; "
        f"sys.exit(main(['bench', 'gpu', '--dry-run', '--peak-tflops', '0.001', '--out', {str(out)!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["gpu"]
    assert (row["device"], row["layers"], row["seq"], row["sync_free_checked"]) == ("cpu (dry run)", 2, 32, False)
    # docs/benchmarks.md §5: "reports tokens/s, MFU, the γ-SimPO/SimPO step ratio" and the sync check
    section = DOCS.read_text(encoding="utf-8").split(GPU_SECTION)[1]
    for phrase in ("tokens/s", "MFU", "γ-SimPO/SimPO step", 'set_sync_debug_mode("error")'):
        assert phrase in section, phrase
    assert row["gamma_overhead_ratio"] == pytest.approx(row["gamma_step_ms"] / row["base_step_ms"])
    assert row["tokens_per_s"] == pytest.approx(2 * 32 / (row["gamma_step_ms"] / 1e3))
    assert row["mfu"] == pytest.approx(flops_per_token(DRY_RUN_SHAPE, 32) * row["tokens_per_s"] / 1e9)


@pytest.mark.distributed
@pytest.mark.slow
def test_nemo_compute_benchmark_smoke(tmp_path: Path) -> None:
    """bench nemo-compute --smoke: a tiny model, one round of γ-SimPO, γ-DPO online and γ-DPO precomputed."""
    out = tmp_path / "compute.json"
    assert cli_main(["bench", "nemo-compute", "--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["smoke"] is True
    result = result["nemo-compute"]
    (scaling,) = result["scaling"]
    assert list(scaling) == documented_compute_columns("scaling") and math.isnan(scaling["fixed_share"])
    variants = {v["variant"]: v for v in result["variants"]}
    assert math.isnan(scaling["fit_fixed_ms"]) and scaling["fixed_share_bound"] == pytest.approx(1.0)
    for name in ("gamma_simpo", "gamma_dpo", "gamma_dpo_precomputed"):
        assert variants[name]["status"] == "ran" and variants[name]["steps"] == 2 and variants[name]["peak_rss_mib"] > 0
        assert 0 <= variants[name]["rss_growth_mib"] <= variants[name]["peak_rss_mib"]
    rows = {r["ratio"]: r for r in result["ratios"]}
    assert [r["status"] for r in rows.values()] == [
        "not run",
        "not run",
        rows["gamma_simpo/gamma_dpo"]["status"],
        rows["gamma_dpo_precomputed/gamma_dpo"]["status"],
    ]
    assert rows["gamma_dpo_precomputed/gamma_dpo"]["status"] in ("met", "MISSED")
    for kind in ("cpu", "wall", "step"):
        ratio = variants["gamma_dpo_precomputed"][f"{kind}_ms"] / variants["gamma_dpo"][f"{kind}_ms"]
        assert rows["gamma_dpo_precomputed/gamma_dpo"][f"{kind}_ratio"] == pytest.approx(ratio)
        ratio = variants["gamma_simpo"][f"{kind}_ms"] / variants["gamma_dpo"][f"{kind}_ms"]
        assert rows["gamma_simpo/gamma_dpo"][f"{kind}_ratio"] == pytest.approx(ratio)
