"""Hydra/OmegaConf ``model.dpo`` node → validated core configs, with errors that name the key."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from nemo_gammapo.aligner.errors import ConfigError
from nemo_gammapo.core.config import GammaConfig, PreferenceLossConfig, config_from_mapping
from nemo_gammapo.core.registry import LOSSES

__all__ = ["ALIGNER_NATIVE_LOSSES", "ConfigError", "loss_configs"]

# NeMo-Aligner's own losses, run by its MegatronGPTDPOModel code unchanged.
ALIGNER_NATIVE_LOSSES = ("rpo_bwd_kl", "rpo_fwd_kl", "rpo_sq")


def _plain(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


def loss_configs(dpo_cfg: DictConfig | dict, prefix: str = "model.dpo") -> tuple[PreferenceLossConfig, GammaConfig]:
    """Build the loss and γ configs from ``model.dpo``; every error names its key.

    ``ref_policy_kl_penalty`` is β (NeMo-Aligner's key), ``preference_average_log_probs`` the
    DPO-family length averaging; the other loss hyperparameters live in ``loss_params`` and the
    γ policy in ``gamma``.
    """
    dpo = _plain(dpo_cfg)
    name = dpo.get("preference_loss", "dpo")
    if name not in LOSSES:
        allowed = sorted(LOSSES) + list(ALIGNER_NATIVE_LOSSES)
        raise ConfigError(f"{prefix}.preference_loss must be one of {allowed} (got {name!r})")
    params = {k: v for k, v in _plain(dpo.get("loss_params")).items() if v is not None}
    if "ipo_tau" not in params and name == "ipo":
        params["ipo_tau"] = dpo.get("ref_policy_kl_penalty")  # NeMo-Aligner's IPO convention
    values = {
        "name": name,
        "beta": dpo.get("ref_policy_kl_penalty", 0.1),
        "gamma_beta_ratio": dpo.get("gamma_beta_ratio", 0.0),
        "average_log_probs": bool(dpo.get("preference_average_log_probs", False)),
        **params,
    }
    try:
        loss_cfg = config_from_mapping(PreferenceLossConfig, values, prefix=f"{prefix}.loss_params")
    except ValueError as e:
        raise ConfigError(
            _with_key(
                str(e),
                prefix,
                {
                    "beta": "ref_policy_kl_penalty",
                    "name": "preference_loss",
                    "average_log_probs": "preference_average_log_probs",
                    "gamma_beta_ratio": "gamma_beta_ratio",
                },
            )
        ) from None
    try:
        gamma_cfg = config_from_mapping(GammaConfig, _plain(dpo.get("gamma")), prefix=f"{prefix}.gamma")
    except ValueError as e:
        raise ConfigError(_with_key(str(e), f"{prefix}.gamma", {})) from None
    return loss_cfg, gamma_cfg  # type: ignore[return-value]


def _with_key(message: str, prefix: str, top_level: dict[str, str]) -> str:
    """Prefix a dataclass validation message with the YAML key it came from."""
    for cls in ("PreferenceLossConfig.", "GammaConfig."):
        if message.startswith(cls):
            field = message[len(cls) :].split(" ", 1)[0]
            key = (
                f"{prefix}.{top_level[field]}"
                if field in top_level
                else (f"{prefix}.{field}" if cls == "GammaConfig." else f"{prefix}.loss_params.{field}")
            )
            return f"{key}: {message}"
    return message
