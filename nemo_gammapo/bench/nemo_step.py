"""γ-SimPO vs γ-DPO through the NeMo-Aligner path (tiny CPU preset, 2 processes).

γ-DPO's step includes NeMo-Aligner's reference log-prob pass inside a CPU weight swap (in the
data iterator); γ-SimPO skips both. Reported: median wall time between consecutive steps (all
per-step work), median ``step_time`` (forward/backward/optimizer only) and peak memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nemo_gammapo.bench.common import peak_rss_mib

ROOT = Path(__file__).resolve().parent.parent.parent
LOSSES = {
    "gamma_simpo": [],
    "gamma_dpo": ["model.dpo.ref_policy_kl_penalty=0.5", "model.dpo.gamma_beta_ratio=2.0"],
}


def nemo_worker(rank: int, world_size: int, run_dir: str, overrides: list[str]) -> dict[str, Any]:
    """Harness worker: one tiny_cpu training run; returns its history and peak memory."""
    os.chdir(ROOT)
    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

    maybe_apply_cpu_patches(nemo=True)
    from hydra import compose, initialize_config_dir

    from nemo_gammapo.aligner.train import train

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("tiny_cpu", overrides=[f"run_dir={run_dir}", f"trainer.devices={world_size}", *overrides])
    result = train(cfg)
    return {"history": result.history, "peak_rss_mib": peak_rss_mib()}


def run(out_dir: Path, steps: int = 16) -> list[dict[str, Any]]:
    """Train each loss for ``steps`` steps (validation and mid-run checkpoints off) and compare."""
    from nemo_gammapo.aligner.report import step_compute_seconds, step_seconds
    from nemo_gammapo.testing.harness import run_on_ranks

    results = {}
    for loss, extra in LOSSES.items():
        overrides = [
            f"model.dpo.preference_loss={loss}",
            f"trainer.dpo.max_steps={steps}",
            "trainer.dpo.limit_val_batches=0",
            f"trainer.dpo.save_interval={100 * steps}",
            *extra,
        ]
        ranks = run_on_ranks(
            nemo_worker, 2, 900, {"run_dir": str(out_dir / loss), "overrides": overrides}, init_process_group=False
        )
        results[loss] = {
            "wall_s": step_seconds(ranks[0]["history"]),
            "compute_s": step_compute_seconds(ranks[0]["history"]),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in ranks),
        }
    s, d = results["gamma_simpo"], results["gamma_dpo"]
    return [
        {
            "simpo_wall_ms": 1e3 * s["wall_s"],
            "dpo_wall_ms": 1e3 * d["wall_s"],
            "wall_ratio": s["wall_s"] / d["wall_s"],
            "simpo_step_ms": 1e3 * s["compute_s"],
            "dpo_step_ms": 1e3 * d["compute_s"],
            "step_ratio": s["compute_s"] / d["compute_s"],
            "simpo_peak_rss_mib": s["peak_rss_mib"],
            "dpo_peak_rss_mib": d["peak_rss_mib"],
        }
    ]
