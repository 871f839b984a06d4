"""``nemo-gammapo plots <run_dir> --out <dir>``: every figure of a run, as PNG + CSV.

Reads ``<run_dir>/gamma_dumps/*.parquet`` (written when ``model.dpo.gamma_dump.every > 0``) and
``<run_dir>/metrics.jsonl``. γ0 comes from ``--gamma0``, else the run's ``hparams.yaml``, else
the mean dumped γ (the solver keeps the mean γ equal to γ0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nemo_gammapo.viz import figures
from nemo_gammapo.viz.run_data import load_dumps, load_history, resolve_gamma0, run_hparams


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nemo-gammapo plots", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="training run directory (has gamma_dumps/ and metrics.jsonl)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <run_dir>/plots)")
    p.add_argument("--gamma0", type=float, default=None, help="base target margin γ0 (β-scaled)")
    p.add_argument("--tau", type=float, default=None, help="τ, to draw the γ bounds γ0·e^(±γ0/τ)")
    p.add_argument("--steps", type=int, default=4, help="how many dumped steps the γ and ε figures show")
    p.add_argument("--zoom", type=float, default=None, help="half-width of the near-0 margin zoom (default γ0 or 1)")
    return p


def make_plots(
    run_dir: Path,
    out: Path,
    gamma0: float | None = None,
    tau: float | None = None,
    steps: int = 4,
    zoom: float | None = None,
) -> list[Path]:
    """Write all figures of ``run_dir`` into ``out``; returns the PNG and CSV paths."""
    dumps = load_dumps(run_dir)
    g0, source = resolve_gamma0(run_dir, dumps, gamma0)
    print(f"γ0 = {g0:.6g} (from {source})")
    tau = tau if tau is not None else run_hparams(run_dir).get("tau")
    out.mkdir(parents=True, exist_ok=True)
    chosen = figures.pick_steps(dumps.loc[dumps["gamma"].notna(), "step"], steps)
    written = figures.margin_distribution(dumps, out, zoom if zoom is not None else (g0 or 1.0))
    if chosen:
        written += figures.gamma_vs_margin(dumps, g0, out, chosen, tau)
        written += figures.epsilon_vs_margin(dumps, g0, out, chosen)
    history = load_history(run_dir)
    if history:
        written += figures.training_curves(history, g0, out)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or args.run_dir / "plots"
    try:
        written = make_plots(args.run_dir, out, args.gamma0, args.tau, args.steps, args.zoom)
    except (FileNotFoundError, ValueError) as e:
        print(f"nemo-gammapo plots: {e}")
        return 1
    for path in written:
        print(path)
    return 0
