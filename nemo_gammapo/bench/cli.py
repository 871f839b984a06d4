"""``nemo-gammapo bench``: run the benchmarks, print tables, save JSON.

nemo-gammapo bench all --out docs/benchmarks.json      # the CPU benchmarks (several minutes)
nemo-gammapo bench solver|step|nemo|gpu [--smoke]       # one of them; --smoke: one tiny iteration
nemo-gammapo bench nemo-compute --out docs/benchmarks_compute.json  # NeMo path where compute dominates (~15 min)
nemo-gammapo bench gpu [--dry-run]                      # GPU benchmark (or its CPU dry run)
nemo-gammapo bench gpu --peak-tflops 400                # MFU against this dense BF16 peak (TFLOP/s)
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from nemo_gammapo.bench.common import format_table, machine_info

TARGETS = {
    "solver": "retired (replaced by tests/test_gamma_path_cost.py); measurements only",
    "step": "gamma / base step time <= 1.02",
    "nemo": "gamma-SimPO / gamma-DPO step time <= 0.78",
}


def _solver(smoke: bool) -> list[dict[str, Any]]:
    from nemo_gammapo.bench import solver

    if smoke:
        return solver.run([64], repeats=2, compile=False)
    return solver.run([256, 1024, 4096], repeats=50, compile=True)


def _step(smoke: bool, compile: bool = False) -> list[dict[str, Any]]:
    from nemo_gammapo.bench import train_step

    return train_step.run(steps=1 if smoke else 20, smoke=smoke, compile=compile)


def _nemo(smoke: bool) -> list[dict[str, Any]]:
    from nemo_gammapo.bench import nemo_step

    with tempfile.TemporaryDirectory(prefix="gammapo-bench-") as tmp:
        return nemo_step.run(Path(tmp), steps=3 if smoke else 16)


def _nemo_compute(smoke: bool) -> dict[str, Any]:
    from nemo_gammapo.bench import nemo_compute

    plan = nemo_compute.SMOKE if smoke else nemo_compute.FULL
    with tempfile.TemporaryDirectory(prefix="gammapo-bench-") as tmp:
        return nemo_compute.run(Path(tmp), plan)


def _print_nemo_compute(result: dict[str, Any]) -> None:
    from nemo_gammapo.bench.nemo_compute import RATIOS

    size = result["compute_size"]
    print("\n== nemo-compute: size scaling, gamma_simpo (is the step compute-bound?) ==")
    print(format_table(result["scaling"], list(result["scaling"][0])))
    print(f"\n== nemo-compute: variants at {size['name']} (median of {result['rounds']} rounds) ==")
    columns = ["variant", "cpu_ms", "wall_ms", "step_ms", "peak_rss_mib", "rss_growth_mib", "gflop_per_step", "runs"]
    columns += ["steps", "status"]
    print(format_table(result["variants"], columns))
    print("\n== nemo-compute: ratios (status: CPU time per step against the target, <=) ==")
    print(format_table(result["ratios"], ["ratio", "target", "cpu_ratio", "wall_ratio", "step_ratio", "status"]))
    for r in RATIOS:
        print(f"  {r.name}: {r.what}")


def _gpu(smoke: bool, dry_run: bool, peak_tflops: float | None = None) -> list[dict[str, Any]]:
    from nemo_gammapo.bench import gpu

    return [gpu.run(dry_run=dry_run or smoke, peak_tflops=peak_tflops)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nemo-gammapo bench", description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["solver", "step", "nemo", "nemo-compute", "gpu", "all"])
    parser.add_argument("--smoke", action="store_true", help="one tiny iteration each (for CI; no timing value)")
    parser.add_argument("--dry-run", action="store_true", help="gpu: run on CPU with tiny shapes")
    parser.add_argument("--compile", action="store_true", help="step: γ losses use the torch.compile'd solver")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="gpu: the device's dense BF16 peak in TFLOP/s for MFU (default: from the device name; MFU is NaN "
        "for a device not in nemo_gammapo.bench.gpu.PEAK_TFLOPS)",
    )
    parser.add_argument("--out", type=Path, help="write results as JSON here")
    args = parser.parse_args(argv)
    if args.peak_tflops is not None and not (args.peak_tflops > 0 and math.isfinite(args.peak_tflops)):
        parser.error(f"argument --peak-tflops: must be > 0 (got {args.peak_tflops})")

    names = ["solver", "step", "nemo"] if args.which == "all" else [args.which]
    results: dict[str, Any] = {"machine": machine_info(), "smoke": args.smoke}
    for name in names:
        if name == "nemo-compute":
            results[name] = _nemo_compute(args.smoke)
            _print_nemo_compute(results[name])
            continue
        if name == "gpu":
            rows = _gpu(args.smoke, args.dry_run, args.peak_tflops)
        elif name == "step":
            rows = _step(args.smoke, args.compile)
        else:
            rows = globals()[f"_{name}"](args.smoke)
        results[name] = rows
        print(f"\n== {name} ({TARGETS.get(name, 'no target')}) ==")
        print(format_table(rows, list(rows[0])))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 0
