"""NeMo-path benchmark at a model size where forward+backward dominates the step (CPU, 2 processes).

The tiny CPU preset's steps are dominated by NeMo-Aligner's fixed per-step costs, so loss-level
savings (no reference pass for SimPO-family losses) cannot show there. This benchmark trains the
``tiny_cpu`` preset, widened through Hydra overrides, on synthetic pairs whose every sequence is
exactly ``seq`` tokens long (byte-level tokenizer: one character, one token), so the model FLOPs
of a step are known.

Two parts, both through NeMo-Aligner's ``DPOTrainer`` and our ``MegatronGPTGammaPOModel``:

* **size scaling** — γ-SimPO at several sizes (:data:`SIZES`; the compute size's row pools its
  γ-SimPO variant runs): median step time, model GFLOPs per step, CPU ms per GFLOP, and a
  least-squares fit ``cpu time = fixed + per_gflop · GFLOP`` whose ``fixed`` part, as a share of
  each size's step, says whether compute dominates;
* **variants** — every entry of :data:`VARIANTS` at :data:`COMPUTE_SIZE`, trained round after round
  in the same two processes (the order rotates each round), each run ``steps`` steps; per variant
  the median over all timed steps of its rounds of the CPU time (rank 0's process) and the wall
  time between consecutive steps (everything a step costs: data, the reference pass, forward,
  backward, optimizer), of NeMo-Aligner's ``step_time``, and the peak resident memory (VmHWM, reset
  before every run) of the larger rank. :data:`RATIOS` are quotients of those medians; a target is
  judged on CPU time, which other jobs on a shared machine do not inflate.

A variant whose config key is missing from ``conf/gpt_gammapo.yaml``, or that is marked
``pending``, is listed as ``pending`` and not run.
"""

from __future__ import annotations

import gc
import itertools
import json
import random
import re
import statistics
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_gammapo.distributed.process_groups import reset_between_runs

# ------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Size:
    """Model and batch shape of one run (Hydra overrides of the ``tiny_cpu`` preset)."""

    name: str
    hidden: int
    layers: int
    heads: int
    seq: int
    global_batch: int = 8  # pairs per step (all ranks)
    micro_batch: int = 2  # pairs per micro-batch per rank
    vocab: int = 384  # the byte-level tokenizer's vocabulary padded to a multiple of 128

    @property
    def ffn(self) -> int:
        return 4 * self.hidden

    def overrides(self) -> list[str]:
        m = "model."
        return [
            f"{m}hidden_size={self.hidden}",
            f"{m}ffn_hidden_size={self.ffn}",
            f"{m}num_layers={self.layers}",
            f"{m}num_attention_heads={self.heads}",
            f"{m}encoder_seq_length={self.seq}",
            f"{m}max_position_embeddings={self.seq}",
            f"{m}global_batch_size={self.global_batch}",
            f"{m}micro_batch_size={self.micro_batch}",
        ]

    def train_flops_per_token(self) -> float:
        """Forward + backward model FLOPs per token: 6 × (matmul parameters) + attention scores (12·L·h·s).

        Matmul parameters per layer: QKV and output projection (4h²) and the GELU MLP (2·h·ffn);
        plus the (tied) output layer h·V. Biases, norms and softmax are left out.
        """
        h = self.hidden
        matmul = self.layers * (4 * h * h + 2 * h * self.ffn) + h * self.vocab
        return 6 * matmul + 12 * self.layers * h * self.seq

    def step_gflop(self, reference_pass: bool = False) -> float:
        """Model GFLOPs of one training step over all ranks (2 sequences per pair, ``seq`` tokens each).

        ``reference_pass``: add the DPO family's forward-only reference log-prob pass (a third of training).
        """
        tokens = 2 * self.global_batch * self.seq
        flops = self.train_flops_per_token() * tokens
        return flops * (4 / 3 if reference_pass else 1) / 1e9


SIZES = (
    Size("h64-l2-s128", hidden=64, layers=2, heads=4, seq=128),
    Size("h128-l4-s256", hidden=128, layers=4, heads=4, seq=256),
    Size("h256-l4-s256", hidden=256, layers=4, heads=4, seq=256),
    Size("h384-l6-s256", hidden=384, layers=6, heads=6, seq=256),
)
COMPUTE_SIZE = SIZES[3]  # where forward+backward dominates (see docs/benchmarks.md §4)
SMOKE_SIZE = Size("smoke", hidden=32, layers=1, heads=2, seq=32, global_batch=4, micro_batch=1)

# ------------------------------------------------------------------ variants and ratios

GAMMA_DPO_ARGS = ("model.dpo.ref_policy_kl_penalty=0.5", "model.dpo.gamma_beta_ratio=2.0")
DPO_ARGS = ("model.dpo.ref_policy_kl_penalty=0.5",)


@dataclass(frozen=True)
class Variant:
    """One benchmarked configuration.

    ``overrides``: Hydra overrides on top of the size's; ``precompute_reference``: before the timed
    runs, the same two processes write the reference log-probs of the benchmark's data
    (:func:`~nemo_gammapo.bench.nemo_step.precompute_preset`, what ``nemo-gammapo
    precompute-reference`` runs; untimed, as a user runs it once per dataset) and the variant's runs
    read them (``model.dpo.reference_logprobs``); ``requires``: a dotted config key that must exist
    in ``conf/gpt_gammapo.yaml`` for the variant to run; ``pending``: why the variant cannot run yet
    (it is then reported, not run, whatever ``requires`` says); ``online_reference``: the step
    includes a reference log-prob pass (counted in its GFLOPs).
    """

    name: str
    overrides: tuple[str, ...]
    online_reference: bool = False
    precompute_reference: bool = False
    requires: str | None = None
    pending: str | None = None


VARIANTS: tuple[Variant, ...] = (
    Variant("simpo", ("model.dpo.preference_loss=simpo",)),
    Variant("gamma_simpo", ("model.dpo.preference_loss=gamma_simpo",)),
    Variant("dpo", ("model.dpo.preference_loss=dpo", *DPO_ARGS), online_reference=True),
    Variant("gamma_dpo", ("model.dpo.preference_loss=gamma_dpo", *GAMMA_DPO_ARGS), online_reference=True),
    # γ-DPO with the reference log-probs read from a file written before training (no reference pass).
    Variant(
        "gamma_dpo_precomputed",
        ("model.dpo.preference_loss=gamma_dpo", *GAMMA_DPO_ARGS, "model.dpo.reference=precomputed"),
        precompute_reference=True,
        requires="model.dpo.reference",
    ),
)


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator`` of two variants' median step times, against ``target`` (≤)."""

    name: str
    numerator: str
    denominator: str
    target: float
    what: str = ""


RATIOS = (
    Ratio("gamma_simpo/simpo", "gamma_simpo", "simpo", 1.02, "γ overhead, reference-free"),
    Ratio("gamma_dpo/dpo", "gamma_dpo", "dpo", 1.02, "γ overhead, online reference"),
    Ratio("gamma_simpo/gamma_dpo", "gamma_simpo", "gamma_dpo", 0.80, "SimPO family / online DPO family"),
    Ratio(
        "gamma_dpo_precomputed/gamma_dpo",
        "gamma_dpo_precomputed",
        "gamma_dpo",
        0.80,
        "precomputed / online reference",
    ),
)

# ------------------------------------------------------------------ data


def write_pairs(path: Path, pairs: int, seq: int, seed: int = 0) -> Path:
    """``pairs`` preference pairs, every prompt + response exactly ``seq`` characters (byte-level tokens).

    Chosen and rejected responses have the same length, so no sequence is padded and every step
    processes ``2 · pairs_per_step · seq`` tokens (NeMo-Aligner drops the last token of each).
    """
    rng = random.Random(seed)
    prompt_len = seq // 2
    letters = string.ascii_lowercase
    with path.open("w", encoding="utf-8") as f:
        for i in range(pairs):
            prompt = "".join(rng.choices(letters, k=prompt_len))
            chosen, rejected = ("".join(rng.choices(letters, k=seq - prompt_len)) for _ in range(2))
            record = {"id": f"bench-{i:05d}", "prompt": prompt, "chosen_response": chosen}
            f.write(json.dumps(record | {"rejected_response": rejected}) + "\n")
    return path


def run_overrides(size: Size, steps: int, data: Path) -> list[str]:
    """Overrides every benchmark run gets: the size, ``steps`` steps, no validation, dumps or mid-run checkpoints."""
    return [
        *size.overrides(),
        f"model.data.data_prefix.train=[{data}]",
        f"model.data.data_prefix.validation=[{data}]",
        f"trainer.dpo.max_steps={steps}",
        "trainer.dpo.max_epochs=1",
        "trainer.dpo.limit_val_batches=0",
        f"trainer.dpo.val_check_interval={steps}",
        f"trainer.dpo.save_interval={steps}",
        "model.dpo.gamma_dump.every=0",
        "exp_manager.create_tensorboard_logger=false",
    ]


# ------------------------------------------------------------------ memory and in-process runs


def reset_peak_rss() -> None:
    """Collect garbage and reset this process's resident-memory high-water mark (Linux ``clear_refs``)."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_mib(field: str) -> float | None:
    try:
        match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        match = None
    return int(match.group(1)) / 1024 if match else None


def peak_rss_since_reset_mib() -> float:
    """VmHWM of this process (MiB): the peak since :func:`reset_peak_rss` (since start where it cannot reset)."""
    peak = _status_mib("VmHWM")
    if peak is None:
        from nemo_gammapo.bench.common import peak_rss_mib

        return peak_rss_mib()
    return peak


def rss_mib() -> float:
    """This process's resident memory now (MiB; NaN where ``/proc`` cannot tell)."""
    now = _status_mib("VmRSS")
    return float("nan") if now is None else now


def runs_worker(rank: int, world_size: int, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Harness worker: ``runs`` (``{"key", "run_dir", "overrides"}``) one after another in these processes.

    An entry with ``"precompute": True`` writes reference log-probs instead of training (no result).

    Every logged metric record also gets ``cpu_time``: the process's CPU seconds (all its threads)
    when it was logged, so step costs can be read in CPU time on a machine shared with other jobs.
    """
    import sys

    from nemo_gammapo.aligner.train import MetricsHistory
    from nemo_gammapo.bench.nemo_step import train_preset

    upstream = MetricsHistory.log_metrics

    def log_metrics(self: Any, metrics: dict[str, Any], step: int | None = None) -> None:
        upstream(self, metrics, step)
        self.records[-1]["cpu_time"] = time.process_time()  # this rank's CPU seconds so far

    MetricsHistory.log_metrics = log_metrics  # type: ignore[method-assign]
    results = []
    for i, run in enumerate(runs):
        if rank == 0:
            print(f"  [{i + 1}/{len(runs)}] {run['key']}", file=sys.stderr, flush=True)
        if run.get("precompute"):
            from nemo_gammapo.bench.nemo_step import precompute_preset

            precompute_preset(world_size, run["run_dir"], run["overrides"])
            reset_between_runs(rank)
            continue
        reset_peak_rss()
        start_rss = rss_mib()
        result = train_preset(world_size, run["run_dir"], run["overrides"])
        peak = peak_rss_since_reset_mib()
        results.append(
            {"key": run["key"], "history": result.history, "peak_rss_mib": peak, "rss_growth_mib": peak - start_rss}
        )
        reset_between_runs(rank)
    return results


# ------------------------------------------------------------------ arithmetic


def run_times(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One run's per-step costs, the first step (allocations, warm-up) left out.

    ``wall_gaps_s`` / ``cpu_gaps_s``: wall and CPU seconds between consecutive training-step records
    (all the work of steps 2, 3, ...: data, the reference pass, forward, backward, optimizer,
    logging); ``step_times_s``: NeMo-Aligner's ``step_time`` of the same steps (forward, backward,
    optimizer; wall time); ``wall_s``, ``cpu_s``, ``step_s``: their medians (NaN when absent).
    """
    from nemo_gammapo.aligner.report import train_records

    records = train_records(history)

    def gaps(key: str) -> list[float]:
        return [b[key] - a[key] for a, b in itertools.pairwise(records) if key in a and key in b]

    times = {
        "wall_gaps_s": gaps("wall_time"),
        "cpu_gaps_s": gaps("cpu_time"),
        "step_times_s": [r["train/step_time"] for r in records[1:]],
    }
    medians = {"wall_s": "wall_gaps_s", "cpu_s": "cpu_gaps_s", "step_s": "step_times_s"}
    return times | {name: _median(times[key]) for name, key in medians.items()}


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One variant's numbers over its runs (each :func:`run_times` plus ``peak_rss_mib``).

    ``wall_ms`` / ``cpu_ms`` / ``step_ms``: medians over the steps of all its runs pooled;
    ``peak_rss_mib``: the largest of its runs (the larger rank's VmHWM: memory earlier runs left
    in the process included); ``rss_growth_mib``: the median over its runs of how far a run raised
    its larger rank's resident memory above where the run started (the run's own peak);
    ``runs`` and ``steps``: how many were timed.
    """

    def pooled_ms(key: str) -> float:
        return 1e3 * _median([t for r in runs for t in r[key]])

    return {
        "wall_ms": pooled_ms("wall_gaps_s"),
        "cpu_ms": pooled_ms("cpu_gaps_s"),
        "step_ms": pooled_ms("step_times_s"),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "rss_growth_mib": statistics.median(r["rss_growth_mib"] for r in runs),
        "runs": len(runs),
        "steps": sum(len(r["wall_gaps_s"]) for r in runs),
    }


def fit_fixed_cost(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``time = fixed + per_gflop · gflop`` through ``(gflop, seconds)`` points."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    slope, intercept = statistics.linear_regression(xs, ys)
    return intercept, slope


def scaling_rows(sizes: Sequence[Size], times: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The size-scaling table from each size's :func:`run_times` medians (``times[size.name]``).

    Per size: model GFLOPs per step, median wall, CPU (per rank) and ``step_time`` ms, CPU ms per
    GFLOP, and a least-squares line ``cpu = fixed + per_gflop · GFLOP`` over all sizes with the
    share of each size's CPU time its ``fixed`` part accounts for (NaN for a single size).
    ``fixed_share_bound``: the smallest size's whole step (its compute included) over this size's,
    an upper bound of the fixed per-step cost's share that no straight-line fit assumes.
    """
    fixed, per_gflop = float("nan"), float("nan")  # one size: nothing to fit
    if len(sizes) > 1:
        fixed, per_gflop = fit_fixed_cost([(s.step_gflop(), times[s.name]["cpu_s"]) for s in sizes])
    smallest = times[min(sizes, key=lambda s: s.step_gflop()).name]["cpu_s"]
    rows = []
    for s in sizes:
        g, t = s.step_gflop(), times[s.name]
        rows.append(
            {
                "size": s.name,
                "gflop_per_step": g,
                "wall_ms": 1e3 * t["wall_s"],
                "step_ms": 1e3 * t["step_s"],
                "cpu_ms": 1e3 * t["cpu_s"],
                "cpu_ms_per_gflop": 1e3 * t["cpu_s"] / g,
                "fit_fixed_ms": 1e3 * fixed,
                "fit_ms_per_gflop": 1e3 * per_gflop,
                "fixed_share": fixed / t["cpu_s"],
                "fixed_share_bound": smallest / t["cpu_s"],
            }
        )
    return rows


def ratio_rows(variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of :data:`RATIOS` from the variants' summaries: CPU, wall and ``step_time`` ratios.

    ``status``: ``met`` / ``MISSED`` (the CPU-time ratio against the target: on a shared machine
    wall time also counts the other jobs), ``pending`` when a side is a pending variant,
    ``not run`` when a side was not in the plan (``--smoke``).
    """
    nan = float("nan")
    rows = []
    for r in RATIOS:
        num, den = variants.get(r.numerator, {}), variants.get(r.denominator, {})
        row: dict[str, Any] = {"ratio": r.name, "target": r.target}
        if "cpu_ms" in num and "cpu_ms" in den:
            cpu = num["cpu_ms"] / den["cpu_ms"]
            row |= {
                "cpu_ratio": cpu,
                "wall_ratio": num["wall_ms"] / den["wall_ms"],
                "step_ratio": num["step_ms"] / den["step_ms"],
                "status": "met" if cpu <= r.target else "MISSED",
            }
        else:
            status = "pending" if "pending" in (num.get("status"), den.get("status")) else "not run"
            row |= {"cpu_ratio": nan, "wall_ratio": nan, "step_ratio": nan, "status": status}
        rows.append(row)
    return rows


# ------------------------------------------------------------------ configuration checks


def config_has_key(dotted: str) -> bool:
    """Whether ``conf/gpt_gammapo.yaml`` (the base config) has the dotted key, e.g. ``model.dpo.reference``."""
    from omegaconf import OmegaConf

    from nemo_gammapo.configs import config_dir

    node: Any = OmegaConf.load(config_dir() / "gpt_gammapo.yaml")
    for part in dotted.split("."):
        if not OmegaConf.is_dict(node) or part not in node:
            return False
        node = node[part]
    return True


def pending_reason(variant: Variant) -> str | None:
    """Why ``variant`` cannot run in this checkout, or None when it can."""
    if variant.requires is not None and not config_has_key(variant.requires):
        return f"`{variant.requires}` is not in conf/gpt_gammapo.yaml"
    return variant.pending


# ------------------------------------------------------------------ the benchmark

SCALING_LOSS = "gamma_simpo"  # the loss of the size-scaling runs (reference-free: training FLOPs only)
SIZE_FIELDS = ("hidden", "ffn", "layers", "heads", "seq", "global_batch", "micro_batch", "vocab")


@dataclass
class Plan:
    """What one benchmark run does (the full run, or ``--smoke``)."""

    scaling_sizes: Sequence[Size]
    compute_size: Size
    scaling_steps: int
    variant_steps: int
    rounds: int
    variants: Sequence[Variant] = field(default_factory=lambda: VARIANTS)


FULL = Plan(scaling_sizes=SIZES, compute_size=COMPUTE_SIZE, scaling_steps=6, variant_steps=6, rounds=4)
SMOKE = Plan(
    scaling_sizes=(SMOKE_SIZE,),
    compute_size=SMOKE_SIZE,
    scaling_steps=3,
    variant_steps=3,
    rounds=1,
    variants=tuple(v for v in VARIANTS if v.name in ("gamma_simpo", "gamma_dpo", "gamma_dpo_precomputed")),
)


def run(out_dir: Path, plan: Plan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``plan``: the scaling runs and the variant rounds, all in one pair of processes."""
    from nemo_gammapo.distributed.process_groups import run_on_ranks

    out_dir.mkdir(parents=True, exist_ok=True)
    runnable, pending = [], {}
    for v in plan.variants:
        reason = pending_reason(v)
        if reason is None:
            runnable.append(v)
        else:
            pending[v.name] = reason
            log(f"variant {v.name}: pending ({reason}); not run")

    # The compute size's scaling row reuses its γ-SimPO variant runs (the same training) when they run.
    reuse = plan.compute_size if any(v.name == SCALING_LOSS for v in runnable) and plan.rounds else None
    runs: list[dict[str, Any]] = []
    for size in plan.scaling_sizes:
        if size == reuse:
            continue
        n = size.global_batch * plan.scaling_steps
        data = write_pairs(out_dir / f"pairs-{size.seq}-{n}.jsonl", n, size.seq)
        overrides = [*run_overrides(size, plan.scaling_steps, data), f"model.dpo.preference_loss={SCALING_LOSS}"]
        runs.append({"key": f"size:{size.name}", "run_dir": str(out_dir / f"size-{size.name}"), "overrides": overrides})

    size = plan.compute_size
    n = size.global_batch * plan.variant_steps
    data = write_pairs(out_dir / f"pairs-{size.seq}-{n}.jsonl", n, size.seq)
    base = run_overrides(size, plan.variant_steps, data)
    extra: dict[str, list[str]] = {v.name: [] for v in runnable}
    for v in runnable:
        if v.precompute_reference:  # written first, by the same processes, untimed
            extra[v.name] = [f"model.dpo.reference_logprobs={out_dir / f'{v.name}-reference_logprobs.pt'}"]
            overrides = [*base, *v.overrides, *extra[v.name]]
            runs.insert(
                0,
                {
                    "key": f"precompute:{v.name}",
                    "run_dir": str(out_dir / f"{v.name}-precompute"),
                    "overrides": overrides,
                    "precompute": True,
                },
            )
    for round_index in range(plan.rounds if runnable else 0):
        shift = round_index % len(runnable)
        for v in runnable[shift:] + runnable[:shift]:  # rotate the order: no variant always runs first
            key = f"variant:{v.name}:{round_index}"
            overrides = [*base, *v.overrides, *extra[v.name]]
            runs.append({"key": key, "run_dir": str(out_dir / f"{v.name}-r{round_index}"), "overrides": overrides})

    log(f"{len(runs)} training runs in 2 processes (progress on stderr)")
    ranks = run_on_ranks(runs_worker, 2, 3000, {"runs": runs}, init_process_group=False)

    by_key: dict[str, list[dict[str, Any]]] = {}
    for rank_results in ranks:
        for r in rank_results:
            by_key.setdefault(r["key"], []).append(r)
    per_run = {
        key: {
            **run_times(results[0]["history"]),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
            "rss_growth_mib": max(r["rss_growth_mib"] for r in results),
        }
        for key, results in by_key.items()
    }

    size_times = {s.name: per_run[f"size:{s.name}"] for s in plan.scaling_sizes if s != reuse}
    if reuse is not None and reuse in plan.scaling_sizes:
        pooled = [per_run[f"variant:{SCALING_LOSS}:{i}"] for i in range(plan.rounds)]
        medians = {"wall_s": "wall_gaps_s", "cpu_s": "cpu_gaps_s", "step_s": "step_times_s"}
        size_times[reuse.name] = {m: _median([t for r in pooled for t in r[k]]) for m, k in medians.items()}
    scaling = scaling_rows(plan.scaling_sizes, size_times)
    variants: dict[str, dict[str, Any]] = {}
    for v in runnable:
        variants[v.name] = summarize([per_run[f"variant:{v.name}:{i}"] for i in range(plan.rounds)])
        variants[v.name]["gflop_per_step"] = size.step_gflop(reference_pass=v.online_reference)
        variants[v.name]["status"] = "ran"
    for name, reason in pending.items():
        variants[name] = {"status": "pending", "reason": reason}
    return {
        "compute_size": {"name": size.name, **{k: getattr(size, k) for k in SIZE_FIELDS}},
        "sizes": [{"name": s.name, **{k: getattr(s, k) for k in SIZE_FIELDS}} for s in plan.scaling_sizes],
        "steps_per_run": {"scaling": plan.scaling_steps, "variants": plan.variant_steps},
        "rounds": plan.rounds,
        "scaling": scaling,
        "variants": [{"variant": name, **v} for name, v in variants.items()],
        "ratios": ratio_rows(variants),
        "per_run": per_run,
    }
