"""γ-SimPO vs γ-DPO through the NeMo-Aligner path (tiny CPU preset, 2 processes).

γ-DPO's step includes NeMo-Aligner's reference log-prob pass inside a CPU weight swap (in the
data iterator); γ-SimPO skips both. Reported: median wall time between consecutive steps (all
per-step work), median ``step_time`` (forward/backward/optimizer only) and peak memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
LOSSES = {
    "gamma_simpo": [],
    "gamma_dpo": ["model.dpo.ref_policy_kl_penalty=0.5", "model.dpo.gamma_beta_ratio=2.0"],
}


def train_preset(world_size: int, run_dir: str, overrides: list[str], config_name: str = "tiny_cpu") -> Any:
    """Train ``<config dir>/<config_name>.yaml`` (with ``overrides``) in this rank; returns its ``TrainResult``.

    For a rank started by :func:`~nemo_gammapo.distributed.process_groups.run_on_ranks` with
    ``init_process_group=False`` (PyTorch Lightning creates the group from the torchrun environment).
    ``run_dir`` and ``trainer.devices = world_size`` are set before ``overrides``. The working
    directory becomes the repository root in a checkout; the presets' ``data/demo/`` paths point at
    the bundled demo data wherever it is installed; the NeMo CPU patches are applied when CUDA is absent.
    """
    if (ROOT / "conf").is_dir():  # a checkout: relative paths of the presets and callers resolve here
        os.chdir(ROOT)
    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

    maybe_apply_cpu_patches(nemo=True)
    from nemo_gammapo.aligner.train import train
    from nemo_gammapo.configs import compose

    cfg = compose(config_name, [f"run_dir={run_dir}", f"trainer.devices={world_size}", *overrides])
    use_bundled_demo_data(cfg)
    return train(cfg)


def precompute_preset(world_size: int, run_dir: str, overrides: list[str], config_name: str = "tiny_cpu") -> Path:
    """Write the reference log-probs of ``<config_name>.yaml`` (with ``overrides``) from this rank; the file's path.

    The precompute twin of :func:`train_preset` (same rank set-up, same overrides, same bundled data):
    runs :func:`nemo_gammapo.aligner.precompute.precompute`, which writes
    ``model.dpo.reference_logprobs``.
    """
    if (ROOT / "conf").is_dir():
        os.chdir(ROOT)
    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

    maybe_apply_cpu_patches(nemo=True)
    from nemo_gammapo.aligner.precompute import precompute
    from nemo_gammapo.configs import compose

    cfg = compose(config_name, [f"run_dir={run_dir}", f"trainer.devices={world_size}", *overrides])
    use_bundled_demo_data(cfg)
    return precompute(cfg)


DEMO_PREFIX = "data/demo/"  # how the tiny presets name the bundled data (relative to a checkout)


def use_bundled_demo_data(cfg: Any) -> None:
    """Point the presets' ``data/demo/...`` paths at the bundled demo data wherever it is installed."""
    from nemo_gammapo.configs import demo_data_dir

    prefix = cfg.model.data.data_prefix
    for split in ("train", "validation"):
        paths = [str(p) for p in prefix[split]]
        if any(p.startswith(DEMO_PREFIX) for p in paths):
            prefix[split] = [
                str(demo_data_dir() / p[len(DEMO_PREFIX) :]) if p.startswith(DEMO_PREFIX) else p for p in paths
            ]


def loss_summary(history: Sequence[dict[str, Any]], peak_rss_mibs: Sequence[float]) -> dict[str, float]:
    """One loss's numbers from its metric history and its ranks' peak memory (MiB).

    ``wall_s``: median wall seconds between consecutive training steps; ``compute_s``: median of
    NeMo-Aligner's ``train/step_time``; ``peak_rss_mib``: the largest over the ranks.
    """
    from nemo_gammapo.aligner.report import step_compute_seconds, step_seconds

    return {
        "wall_s": step_seconds(history),
        "compute_s": step_compute_seconds(history),
        "peak_rss_mib": max(peak_rss_mibs),
    }


def comparison_row(simpo: dict[str, float], dpo: dict[str, float]) -> dict[str, float]:
    """The result row: both losses' times (ms) and memory, and the γ-SimPO / γ-DPO ratios."""
    return {
        "simpo_wall_ms": 1e3 * simpo["wall_s"],
        "dpo_wall_ms": 1e3 * dpo["wall_s"],
        "wall_ratio": simpo["wall_s"] / dpo["wall_s"],
        "simpo_step_ms": 1e3 * simpo["compute_s"],
        "dpo_step_ms": 1e3 * dpo["compute_s"],
        "step_ratio": simpo["compute_s"] / dpo["compute_s"],
        "simpo_peak_rss_mib": simpo["peak_rss_mib"],
        "dpo_peak_rss_mib": dpo["peak_rss_mib"],
    }


def run(out_dir: Path, steps: int = 16) -> list[dict[str, Any]]:
    """Train each loss for ``steps`` steps (validation and mid-run checkpoints off), one after the
    other in the same two processes, and compare."""
    from nemo_gammapo.bench.nemo_compute import runs_worker
    from nemo_gammapo.distributed.process_groups import run_on_ranks

    runs = [
        {
            "key": loss,
            "run_dir": str(out_dir / loss),
            "overrides": [
                f"model.dpo.preference_loss={loss}",
                f"trainer.dpo.max_steps={steps}",
                "trainer.dpo.limit_val_batches=0",
                f"trainer.dpo.save_interval={100 * steps}",
                *extra,
            ],
        }
        for loss, extra in LOSSES.items()
    ]
    ranks = run_on_ranks(runs_worker, 2, 900, {"runs": runs}, init_process_group=False)
    results = {
        loss: loss_summary(ranks[0][i]["history"], [rank[i]["peak_rss_mib"] for rank in ranks])
        for i, loss in enumerate(LOSSES)
    }
    return [comparison_row(results["gamma_simpo"], results["gamma_dpo"])]
