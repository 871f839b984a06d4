"""What the plots read from a run directory: γ dumps, the metric history and γ0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from nemo_gammapo.aligner.dumps import read_dumps
from nemo_gammapo.aligner.report import read_history


def load_dumps(run_dir: str | Path) -> pd.DataFrame:
    """Valid dumped pairs with finite margin (and γ where the loss has one), sorted by step."""
    frame = read_dumps(run_dir)
    keep = frame["valid"].astype(bool) & frame["margin"].notna()
    return frame[keep].reset_index(drop=True)


def load_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` records, or an empty list when the run has none."""
    path = Path(run_dir) / "metrics.jsonl"
    return read_history(Path(run_dir)) if path.exists() else []


def _hparam_files(run_dir: Path) -> list[Path]:
    # config.yaml: the resolved run config written at start-up; hparams.yaml: NeMo's, at checkpoints
    return [p for p in [run_dir / "config.yaml"] if p.exists()] + sorted(run_dir.glob("**/hparams.yaml"))


def run_hparams(run_dir: str | Path) -> dict[str, float]:
    """β, γ/β, γ0 and τ from the run's ``config.yaml`` or ``hparams.yaml`` (else an empty dict)."""
    from omegaconf import OmegaConf

    for path in _hparam_files(Path(run_dir)):
        cfg = OmegaConf.load(path)
        dpo = OmegaConf.select(cfg, "cfg.dpo") or OmegaConf.select(cfg, "model.dpo") or OmegaConf.select(cfg, "dpo")
        if dpo is None or "gamma_beta_ratio" not in dpo:
            continue
        beta, ratio = float(dpo.ref_policy_kl_penalty), float(dpo.gamma_beta_ratio)
        out = {"beta": beta, "gamma_beta_ratio": ratio, "gamma0": beta * ratio}
        tau = OmegaConf.select(dpo, "gamma.tau")
        if tau is not None:
            out["tau"] = float(tau)
        return out
    return {}


def resolve_gamma0(run_dir: str | Path, dumps: pd.DataFrame, gamma0: float | None = None) -> tuple[float, str]:
    """γ0 and where it came from: the argument, the run's hparams, or the dumped mean γ."""
    if gamma0 is not None:
        return float(gamma0), "command line"
    hp = run_hparams(run_dir)
    if "gamma0" in hp:
        return hp["gamma0"], "run config"
    gammas = dumps["gamma"].dropna()
    if gammas.empty:
        raise ValueError("γ0 unknown: no hparams.yaml and no γ in the dumps; pass --gamma0")
    return float(gammas.mean()), "mean dumped γ (the solver keeps mean γ = γ0)"
