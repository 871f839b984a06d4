"""The robustness grid: methods × label-flip rates × seeds, run in one or more worker processes.

Runs are ordered seed-major, each is a pure function of ``(method, flip rate, seed, config)``
and runs single-threaded, so the results do not depend on the number of worker processes
(``multiprocessing`` with ``spawn``; one CPU thread each).
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from nemo_gammapo.study.methods import ALL_METHODS, get_method
from nemo_gammapo.study.trainer import StudyConfig

FLIP_RATES = (0.0, 0.1, 0.2, 0.3)


@dataclass(frozen=True)
class Grid:
    """Which runs to make; ``config`` is shared by every run."""

    methods: Sequence[str] = tuple(m.key for m in ALL_METHODS)
    flip_rates: Sequence[float] = FLIP_RATES
    seeds: Sequence[int] = tuple(range(10))
    config: StudyConfig = field(default_factory=StudyConfig)

    def runs(self) -> list[tuple[str, float, int]]:
        """``(method key, flip rate, seed)``, seed-major (a worker reuses a seed's warm start)."""
        return [(m, r, s) for s, r, m in itertools.product(self.seeds, self.flip_rates, self.methods)]

    def describe(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "flip_rates": list(self.flip_rates), "seeds": list(self.seeds)}


SMOKE = Grid(
    methods=("simpo", "gamma_simpo@tau10", "dpo", "gamma_dpo@tau10"),
    flip_rates=(0.0, 0.2),
    seeds=(0, 1),
    config=StudyConfig(n_train=256, n_heldout=128, steps=16, sft_steps=8, curve_every=8),
)


@dataclass
class GridResults:
    """Everything the grid measured: one row per run, learning curves, mechanism rows."""

    results: pd.DataFrame
    curves: pd.DataFrame
    mechanism: pd.DataFrame


def run_task(task: tuple[str, float, int, StudyConfig]) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    """One run and its dump analysis (top level, so a spawned worker can import it)."""
    from nemo_gammapo.study.mechanism import analyse_run
    from nemo_gammapo.study.trainer import train_one

    key, rate, seed, cfg = task
    method = get_method(key)
    out = train_one(method, rate, seed, cfg)
    is_gamma = method.tau is not None
    detection, mech = analyse_run(out.dumps, out.train, cfg_gamma0(method.base, cfg), method.base, cfg.steps, is_gamma)
    return {**out.row, **detection}, out.curve, mech.assign(method=key, flip_rate=rate, seed=seed)


def cfg_gamma0(base: str, cfg: StudyConfig) -> float:
    """γ0 of a family (the mean of γ_i over a solve)."""
    if base == "simpo":
        return cfg.simpo_gamma_beta_ratio * cfg.simpo_beta
    return cfg.dpo_gamma_beta_ratio * cfg.dpo_beta


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_grid(
    grid: Grid, workers: int = 1, progress: Callable[[dict[str, Any], int, int, float], None] | None = None
) -> GridResults:
    """Train every run of ``grid``, in ``workers`` spawned processes when > 1.

    ``progress(row, done, total, elapsed seconds)`` is called once per finished run, in grid order.
    """
    tasks = [(m, r, s, grid.config) for m, r, s in grid.runs()]
    start = time.perf_counter()
    outputs = []

    def collect(items: Any) -> None:
        for done, item in enumerate(items, start=1):
            outputs.append(item)
            if progress is not None:
                progress(item[0], done, len(tasks), time.perf_counter() - start)

    if workers <= 1:
        collect(map(run_task, tasks))
    else:
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            collect(pool.imap(run_task, tasks, chunksize=1))
    results = pd.DataFrame([o[0] for o in outputs])
    curves = pd.DataFrame([c for o in outputs for c in o[1]])
    mech = [o[2] for o in outputs if o[2] is not None]
    return GridResults(results, curves, pd.concat(mech, ignore_index=True) if mech else pd.DataFrame())
