"""``nemo-gammapo plots <run_dir> --out <dir>``: every figure of a run, as PNG + CSV.

Reads ``<run_dir>/gamma_dumps/*.parquet`` (written when ``model.dpo.gamma_dump.every > 0``) and
the run's ``metrics.jsonl`` files (the current one and those NeMo moved into ``run_<N>/`` on
resume). γ0 comes from ``--gamma0``, else the run's ``config.yaml`` / ``hparams.yaml``, else the
mean dumped γ, else the mean logged γ (the solver keeps the mean γ equal to γ0).

Figures are made from whatever the run has: without dumps only the training curves, without
metrics only the dump figures. A corrupt dump file, or a truncated last ``metrics.jsonl`` line,
is skipped with a one-line warning naming it; the exit code is 1, with one line naming the
problem, when the run directory does not exist, when a ``metrics.jsonl`` line before the last is
corrupt (``file:line``), or when there is nothing to plot.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

from nemo_gammapo.artifacts.dumps import DUMP_DIR
from nemo_gammapo.artifacts.metrics import METRICS_FILE
from nemo_gammapo.viz.run_data import has_dumps, load_dumps, load_history, resolve_gamma0, run_hparams


def _positive(kind: type) -> Callable[[str], int | float]:
    """An argparse ``type`` accepting only finite values > 0 of ``kind``."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nemo-gammapo plots", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="training run directory (has gamma_dumps/ and/or metrics.jsonl)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <run_dir>/plots)")
    p.add_argument("--gamma0", type=float, default=None, help="base target margin γ0 (β-scaled)")
    p.add_argument("--tau", type=_positive(float), default=None, help="τ, to draw the γ bounds γ0·e^(±γ0/τ)")
    p.add_argument("--steps", type=_positive(int), default=4, help="how many dumped steps the γ and ε figures show")
    p.add_argument(
        "--zoom", type=_positive(float), default=None, help="half-width of the near-0 margin zoom (default γ0 or 1)"
    )
    return p


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def make_plots(
    run_dir: Path,
    out: Path,
    gamma0: float | None = None,
    tau: float | None = None,
    steps: int = 4,
    zoom: float | None = None,
) -> list[Path]:
    """Write every figure ``run_dir``'s data allows into ``out``; returns the PNG and CSV paths.

    Raises ``FileNotFoundError`` when ``run_dir`` does not exist or has neither dumps nor
    metrics, ``NotADirectoryError`` when it or ``out`` is not a folder, and ``ValueError``
    (:class:`~nemo_gammapo.artifacts.metrics.HistoryError`) on a corrupt ``metrics.jsonl`` line.
    """
    from nemo_gammapo.viz import figures  # matplotlib: only once there is something to draw

    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.exists():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise NotADirectoryError(f"run directory {run_dir} is not a directory")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} is not a directory")
    history = load_history(run_dir)
    dumps = load_dumps(run_dir)
    if dumps is None and not history:
        what = f"readable {DUMP_DIR}/step_*.parquet" if has_dumps(run_dir) else f"{DUMP_DIR}/step_*.parquet"
        raise FileNotFoundError(f"{run_dir} has no {what} and no {METRICS_FILE}: nothing to plot")
    hparams = run_hparams(run_dir)
    g0, source = resolve_gamma0(run_dir, dumps, gamma0, history, hparams)
    print(f"γ0 = {g0:.6g} (from {source})" if g0 is not None else f"γ0 {source}")
    tau = tau if tau is not None else hparams.get("tau")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if dumps is None:
        _note(f"no {DUMP_DIR}/ figures: no readable dumps (is model.dpo.gamma_dump.every > 0?)")
    elif dumps.empty:
        _note(f"no {DUMP_DIR}/ figures: the dumps hold no valid pair")
    else:
        written += figures.margin_distribution(dumps, out, zoom if zoom is not None else (g0 or 1.0))
        chosen = figures.pick_steps(dumps.loc[dumps["gamma"].notna(), "step"], steps)
        if chosen and g0 is not None:
            written += figures.gamma_vs_margin(dumps, g0, out, chosen, tau)
            written += figures.epsilon_vs_margin(dumps, g0, out, chosen)
    if history:
        written += figures.training_curves(history, g0, out)
    else:
        _note(f"no training curves: {run_dir} has no {METRICS_FILE}")
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``nemo-gammapo plots``; 0 when figures were written, 1 (one line) otherwise."""
    args = build_parser().parse_args(argv)
    out = args.out or args.run_dir / "plots"
    try:
        written = make_plots(args.run_dir, out, args.gamma0, args.tau, args.steps, args.zoom)
    except (OSError, ValueError) as e:
        print(f"nemo-gammapo plots: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0
