"""The robustness grid: a tuning stage (rSimPO's / rDPO's ε), then methods × label-flip rates × seeds,
run in one or more worker processes.

Runs are ordered seed-major, each is a pure function of ``(method, flip rate, seed, config)``
and runs single-threaded, so the results do not depend on the number of worker processes
(``multiprocessing`` with ``spawn``; one CPU thread each). The same property lets a grid reuse
runs it finds in earlier raw outputs (``reuse``): only missing runs, and tuned-ε runs whose ε
changed, are trained, and the merged outputs equal a full run's.
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from nemo_gammapo.study.methods import ALL_METHODS, Method, get_method
from nemo_gammapo.study.trainer import StudyConfig
from nemo_gammapo.study.tuning import Tuning, chosen_epsilons, summarise_tuning, tuning_row

FLIP_RATES = (0.0, 0.1, 0.2, 0.3)


@dataclass(frozen=True)
class Grid:
    """Which runs to make; ``config`` is shared by every run, ``tuning`` chooses the tuned methods' ε."""

    methods: Sequence[str] = tuple(m.key for m in ALL_METHODS)
    flip_rates: Sequence[float] = FLIP_RATES
    seeds: Sequence[int] = tuple(range(10))
    config: StudyConfig = field(default_factory=StudyConfig)
    tuning: Tuning = field(default_factory=Tuning)

    def runs(self) -> list[tuple[str, float, int]]:
        """``(method key, flip rate, seed)``, seed-major (a worker reuses a seed's warm start)."""
        return [(m, r, s) for s, r, m in itertools.product(self.seeds, self.flip_rates, self.methods)]

    def tuned(self) -> list[Method]:
        """The grid's methods whose ε the tuning stage chooses."""
        return [get_method(k) for k in self.methods if get_method(k).tuned]

    def tuning_runs(self) -> list[tuple[Method, float, int]]:
        return self.tuning.runs(self.tuned())

    def describe(self) -> dict[str, Any]:
        out = {"methods": list(self.methods), "flip_rates": list(self.flip_rates), "seeds": list(self.seeds)}
        if self.tuned():
            out["tuning"] = {"losses": [m.loss for m in self.tuned()], **self.tuning.describe()}
        return out


SMOKE = Grid(
    methods=("simpo", "gamma_simpo@tau10", "rsimpo@eps=tuned", "dpo", "gamma_dpo@tau10"),
    flip_rates=(0.0, 0.2),
    seeds=(0, 1),
    config=StudyConfig(n_train=256, n_heldout=128, steps=16, sft_steps=8, curve_every=8),
    tuning=Tuning(candidates=(0.1, 0.3), seeds=(100,)),
)


@dataclass
class GridResults:
    """Everything the grid measured: one row per run, learning curves, mechanism rows, the tuning
    runs and their summary (empty without tuned methods), and what was trained vs reused."""

    results: pd.DataFrame
    curves: pd.DataFrame
    mechanism: pd.DataFrame
    tuning_runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)
    epsilons: dict[str, float] = field(default_factory=dict)
    trained: int = 0
    reused: int = 0
    tuning_seconds: float = 0.0


def run_task(task: tuple[Method, float, int, StudyConfig]) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    """One run and its dump analysis (top level, so a spawned worker can import it)."""
    from nemo_gammapo.study.mechanism import analyse_run
    from nemo_gammapo.study.trainer import train_one

    method, rate, seed, cfg = task
    out = train_one(method, rate, seed, cfg)
    is_gamma = method.tau is not None
    detection, mech = analyse_run(out.dumps, out.train, cfg_gamma0(method.base, cfg), method.base, cfg.steps, is_gamma)
    return {**out.row, **detection}, out.curve, mech.assign(method=method.key, flip_rate=rate, seed=seed)


def tuning_task(task: tuple[Method, float, int, StudyConfig]) -> dict[str, Any]:
    """One tuning run: only its held-out accuracy is used (top level, for spawned workers)."""
    from nemo_gammapo.study.trainer import train_one

    method, rate, seed, cfg = task
    return tuning_row(method, train_one(method, rate, seed, cfg).row)


def cfg_gamma0(base: str, cfg: StudyConfig) -> float:
    """γ0 of a family (the mean of γ_i over a solve)."""
    if base == "simpo":
        return cfg.simpo_gamma_beta_ratio * cfg.simpo_beta
    return cfg.dpo_gamma_beta_ratio * cfg.dpo_beta


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _map(fn: Callable[[Any], Any], tasks: list[Any], pool: Any, on_item: Callable[[Any, int], None]) -> list[Any]:
    """``fn`` over ``tasks``, in order, in ``pool`` (or in this process when ``None``)."""
    out = []
    items = map(fn, tasks) if pool is None or not tasks else pool.imap(fn, tasks, chunksize=1)
    for done, item in enumerate(items, start=1):
        out.append(item)
        on_item(item, done)
    return out


def _previous_runs(previous: GridResults | None) -> dict[tuple[str, float, int], tuple[dict, list, Any]]:
    """Earlier raw outputs by ``(method, flip rate, seed)``: results row, curve rows, mechanism rows."""
    if previous is None or previous.results.empty:
        return {}

    def by_run(frame: pd.DataFrame) -> dict[tuple[str, float, int], pd.DataFrame]:
        if frame.empty:
            return {}
        groups = frame.groupby([frame["method"], frame["flip_rate"].round(6), frame["seed"]], sort=False)
        return {(str(m), float(r), int(s)): part for (m, r, s), part in groups}

    curves, mechs = by_run(previous.curves), by_run(previous.mechanism)
    out = {}
    for row in previous.results.to_dict("records"):
        key = (str(row["method"]), round(float(row["flip_rate"]), 6), int(row["seed"]))
        out[key] = (row, curves[key].to_dict("records") if key in curves else [], mechs.get(key))
    return out


def run_grid(
    grid: Grid,
    workers: int = 1,
    progress: Callable[[dict[str, Any], int, int, float], None] | None = None,
    previous: GridResults | None = None,
) -> GridResults:
    """The tuning stage (when the grid has tuned methods), then every run of ``grid``, in ``workers``
    spawned processes when > 1.

    ``previous``: earlier raw outputs of the same config; a run found there (same method, flip rate,
    seed and, for a tuned method, the same ε) is reused instead of trained. ``progress(row, done,
    total, elapsed seconds)`` is called once per finished run, in order (tuning rows have
    ``row["stage"] == "tuning"``; ``done``/``total`` count within the stage).
    """
    overlap = set(grid.seeds) & set(grid.tuning.seeds)
    if grid.tuned() and overlap:
        raise ValueError(f"tuning seeds {sorted(overlap)} are also evaluation seeds")
    start = time.perf_counter()

    def report(total: int) -> Callable[[Any, int], None]:
        def on_item(item: Any, done: int) -> None:
            if progress is not None:
                progress(item if isinstance(item, dict) else item[0], done, total, time.perf_counter() - start)

        return on_item

    if workers <= 1:
        return _run_stages(grid, None, report, previous, start)
    # one pool for both stages: a spawned worker's imports take seconds
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        return _run_stages(grid, pool, report, previous, start)


def _run_stages(
    grid: Grid,
    pool: Any,
    report: Callable[[int], Callable[[Any, int], None]],
    previous: GridResults | None,
    start: float,
) -> GridResults:
    tuning_runs, tuning, epsilons = pd.DataFrame(), pd.DataFrame(), {}
    tuning_seconds = 0.0
    if grid.tuned():
        tasks = [(m, r, s, grid.config) for m, r, s in grid.tuning_runs()]
        tuning_runs = pd.DataFrame(_map(tuning_task, tasks, pool, report(len(tasks))))
        tuning_seconds = time.perf_counter() - start
        tuning = summarise_tuning(tuning_runs)
        epsilons = chosen_epsilons(tuning)

    def resolve(key: str) -> Method:
        m = get_method(key)
        return m.with_epsilon(epsilons[m.loss]) if m.tuned else m

    old = _previous_runs(previous)
    todo, kept = [], {}
    for key, rate, seed in grid.runs():
        method = resolve(key)
        hit = old.get((key, round(rate, 6), seed))
        same_eps = hit is not None and abs(hit[0]["label_smoothing"] - method.label_smoothing(rate)) < 1e-9
        if hit is not None and (not method.tuned or same_eps):
            kept[(key, rate, seed)] = hit
        else:
            todo.append((method, rate, seed, grid.config))
    new = _map(run_task, todo, pool, report(len(todo)))
    fresh = {(t[0].key, t[1], t[2]): o for t, o in zip(todo, new, strict=True)}
    outputs = [fresh.get(run) or kept[run] for run in grid.runs()]
    results = pd.DataFrame([o[0] for o in outputs])
    curves = pd.DataFrame([c for o in outputs for c in o[1]])
    mech = [o[2] for o in outputs if o[2] is not None and len(o[2])]
    return GridResults(
        results,
        curves,
        pd.concat(mech, ignore_index=True) if mech else pd.DataFrame(),
        tuning_runs,
        tuning,
        epsilons,
        trained=len(todo),
        reused=len(kept),
        tuning_seconds=tuning_seconds,
    )
