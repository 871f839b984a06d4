"""Training-step time of γ-PO vs. its base loss on a small megatron-core GPT, per layout.

Both models of a pair (e.g. γ-SimPO and SimPO) live in the same processes and step alternately,
so they see the same machine state; the ratio of their median step times is the γ overhead.
Each step is megatron-core's forward/backward schedule, the data-parallel gradient average and
an SGD update (see :mod:`nemo_gammapo.bench.layout_run`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from functools import partial
from typing import Any

from nemo_gammapo.bench.common import alternating_times, peak_rss_mib
from nemo_gammapo.bench.layout_run import Layout, LayoutRun, RunSpec
from nemo_gammapo.distributed.process_groups import run_on_ranks
from nemo_gammapo.models.tiny_gpt import TinyGPTConfig

PAIRS = (("gamma_simpo", "simpo"), ("gamma_dpo", "dpo"))
BENCH_MODEL = TinyGPTConfig(
    num_layers=4, hidden_size=128, num_attention_heads=4, ffn_hidden_size=512, vocab_size=256, seq_length=64
)
SMOKE_MODEL = TinyGPTConfig()
DPO_EXTRA = {"beta": 0.5, "gamma_beta_ratio": 1.0}


def _spec(loss: str, steps: int, dp: int, pairs_per_rank: int, compile: bool) -> RunSpec:
    extra = DPO_EXTRA if "dpo" in loss else {}
    return RunSpec(
        loss_name=loss,
        steps=steps,
        microbatches=2,
        pairs_per_microbatch=dp * pairs_per_rank,
        queue_capacity=2048,
        solve_size=256,
        mask_pair=None,
        lr=1e-3,
        gamma_compile=compile,
        **extra,
    )


def pair_row(
    layout: str, gamma_loss: str, base_loss: str, times: dict[str, list[float]], peak_rss: float
) -> dict[str, Any]:
    """One result row: median step time of the γ loss and of its base loss (ms) and their ratio (γ / base)."""
    g, b = statistics.median(times[gamma_loss]), statistics.median(times[base_loss])
    return {
        "layout": layout,
        "loss": gamma_loss,
        "base": base_loss,
        "gamma_ms": 1e3 * g,
        "base_ms": 1e3 * b,
        "ratio": g / b,
        "peak_rss_mib": peak_rss,
    }


def step_worker(
    rank: int, world_size: int, layouts: list[dict[str, int]], steps: int, model: dict[str, int], compile: bool
) -> list[dict[str, Any]]:
    """Harness worker: alternate the γ and base models of each pair, time every step."""
    cfg = TinyGPTConfig(**model)
    rows = []
    for layout_kwargs in layouts:
        layout = Layout(**layout_kwargs)
        dp = world_size // (layout.tp * layout.pp)
        for gamma_loss, base_loss in PAIRS:
            runs = {}
            for loss in (gamma_loss, base_loss):
                runs[loss] = LayoutRun(layout, _spec(loss, steps + 1, dp, layout.pairs_per_rank, compile), cfg)
                runs[loss].loss.pair_log = None
                # LayoutRun initialises model parallelism; the second one reuses the same groups.
            steps_of = {loss: partial(run.train_step, collect=False) for loss, run in runs.items()}
            times = alternating_times(steps_of, rounds=steps + 1)  # round 0 warms up (allocations, compilation)
            rows.append(pair_row(layout.name(world_size), gamma_loss, base_loss, times, peak_rss_mib()))
            runs[gamma_loss].close()
    return rows


def run(steps: int = 20, smoke: bool = False, compile: bool = False) -> list[dict[str, Any]]:
    """Per layout (TP1 on 1 process; DP2, TP2, PP2 on 2), the γ/base step-time ratios."""
    model = asdict(SMOKE_MODEL if smoke else BENCH_MODEL)
    plans = [(1, [{"tp": 1, "pp": 1, "pairs_per_rank": 2}])]
    if not smoke:
        plans.append(
            (
                2,
                [
                    {"tp": 1, "pp": 1, "pairs_per_rank": 1},
                    {"tp": 2, "pp": 1, "pairs_per_rank": 2},
                    {"tp": 1, "pp": 2, "pairs_per_rank": 2},
                ],
            )
        )
    rows: list[dict[str, Any]] = []
    for world, layouts in plans:
        kwargs = {"layouts": layouts, "steps": steps, "model": model, "compile": compile}
        rows += run_on_ranks(step_worker, world, 900, kwargs)[0]
    return rows
