"""What the plots read from a run directory: γ dumps, the metric history and γ0.

Each reader takes what the run has: a missing source gives ``None`` / an empty list, and an
unreadable file is skipped with a one-line warning naming it (``warn``; default: stderr), except a
corrupt ``metrics.jsonl`` line before the last, which raises :class:`~nemo_gammapo.artifacts.metrics.HistoryError`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from nemo_gammapo.artifacts.dumps import DUMP_DIR, read_dumps
from nemo_gammapo.artifacts.metrics import metrics_files, read_history, warn_stderr

Warn = Callable[[str], None]


def has_dumps(run_dir: str | Path) -> bool:
    """Whether ``<run_dir>/gamma_dumps/`` holds any ``step_*.parquet`` file (readable or not)."""
    return any((Path(run_dir) / DUMP_DIR).glob("step_*.parquet"))


def load_dumps(run_dir: str | Path, warn: Warn | None = None) -> pd.DataFrame | None:
    """Valid dumped pairs with finite margin (and γ where the loss has one), sorted by step.

    ``None`` when the run has no dump file, or none that is readable (each unreadable file is
    skipped with a warning, see :func:`nemo_gammapo.artifacts.dumps.read_dumps`).
    """
    if not has_dumps(run_dir):
        return None
    warn = warn or warn_stderr
    try:
        frame = read_dumps(run_dir, warn=warn)
    except ValueError as e:  # every dump file was unreadable (each already warned about)
        warn(str(e))
        return None
    keep = frame["valid"].astype(bool) & frame["margin"].notna()
    return frame[keep].reset_index(drop=True)


def load_history(run_dir: str | Path, warn: Warn | None = None) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` records across resumes (:func:`read_history`), or ``[]`` if it has none."""
    return read_history(Path(run_dir), warn=warn) if metrics_files(run_dir) else []


def _hparam_files(run_dir: Path) -> list[Path]:
    # config.yaml: the resolved run config written at start-up; hparams.yaml: NeMo's, at checkpoints
    return [p for p in [run_dir / "config.yaml"] if p.exists()] + sorted(run_dir.glob("**/hparams.yaml"))


def _dpo_hparams(path: Path) -> dict[str, float] | None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    dpo = OmegaConf.select(cfg, "cfg.dpo") or OmegaConf.select(cfg, "model.dpo") or OmegaConf.select(cfg, "dpo")
    if dpo is None or "gamma_beta_ratio" not in dpo:
        return None
    beta, ratio = float(dpo.ref_policy_kl_penalty), float(dpo.gamma_beta_ratio)
    out = {"beta": beta, "gamma_beta_ratio": ratio, "gamma0": beta * ratio}
    tau = OmegaConf.select(dpo, "gamma.tau")
    if tau is not None:
        out["tau"] = float(tau)
    return out


def run_hparams(run_dir: str | Path, warn: Warn | None = None) -> dict[str, float]:
    """β, γ/β, γ0 and τ from the run's ``config.yaml`` or ``hparams.yaml`` (else an empty dict).

    Files without γ settings are passed over; one that cannot be read (or parsed) is skipped with
    a warning naming it.
    """
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    for path in _hparam_files(Path(run_dir)):
        try:
            found = _dpo_hparams(path)
        except (OSError, ValueError, TypeError, AttributeError, KeyError, yaml.YAMLError, OmegaConfBaseException) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            (warn or warn_stderr)(f"{path}: skipped, no readable β / γ settings ({first})")
            continue
        if found is not None:
            return found
    return {}


def logged_gamma_mean(history: Sequence[dict[str, Any]]) -> float | None:
    """Mean of the logged per-step mean γ (``train/gamma_po/gamma_mean``), or ``None`` if never logged."""
    values = [float(r["train/gamma_po/gamma_mean"]) for r in history if "train/gamma_po/gamma_mean" in r]
    return statistics.fmean(values) if values else None


def resolve_gamma0(
    run_dir: str | Path,
    dumps: pd.DataFrame | None,
    gamma0: float | None = None,
    history: Sequence[dict[str, Any]] = (),
    hparams: dict[str, float] | None = None,
) -> tuple[float | None, str]:
    """γ0 and where it came from: the argument, the run's hparams, the dumped mean γ, the logged mean γ.

    ``hparams`` is :func:`run_hparams`'s result when the caller has it (else it is read here).
    ``(None, reason)`` when none of them has γ0 (a loss without γ and no run config).
    """
    if gamma0 is not None:
        return float(gamma0), "command line"
    hp = run_hparams(run_dir) if hparams is None else hparams
    if "gamma0" in hp:
        return hp["gamma0"], "run config"
    gammas = dumps["gamma"].dropna() if dumps is not None else pd.Series(dtype=float)
    if not gammas.empty:
        return float(gammas.mean()), "mean dumped γ (the solver keeps mean γ = γ0)"
    logged = logged_gamma_mean(history)
    if logged is not None:
        return logged, "mean logged γ (the solver keeps mean γ = γ0)"
    return None, "unknown: no run config and no γ in the dumps or metrics; pass --gamma0"
