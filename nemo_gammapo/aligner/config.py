"""Hydra/OmegaConf ``model.dpo`` node → validated core configs, with errors that name the key.

The YAML keys are the dataclass fields (:class:`~nemo_gammapo.core.config.PreferenceLossConfig`,
:class:`~nemo_gammapo.core.config.GammaConfig`, :class:`~nemo_gammapo.core.config.GammaDumpConfig`),
with their defaults in the dataclasses only (a ``null`` or absent key takes the default). The only
renamed keys are the three NeMo-Aligner owns: ``preference_loss`` (the loss name),
``ref_policy_kl_penalty`` (β) and ``preference_average_log_probs``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from nemo_gammapo.aligner.errors import ConfigError
from nemo_gammapo.core.config import (
    ConfigFieldError,
    GammaConfig,
    GammaDumpConfig,
    PreferenceLossConfig,
    config_from_mapping,
)
from nemo_gammapo.core.registry import LOSSES

__all__ = ["ALIGNER_KEYS", "ALIGNER_NATIVE_LOSSES", "ConfigError", "dump_config", "loss_configs"]

# NeMo-Aligner's own losses, run by its MegatronGPTDPOModel code unchanged.
ALIGNER_NATIVE_LOSSES = ("rpo_bwd_kl", "rpo_fwd_kl", "rpo_sq")
# model.dpo keys NeMo-Aligner owns → PreferenceLossConfig fields.
ALIGNER_KEYS = {
    "preference_loss": "name",
    "ref_policy_kl_penalty": "beta",
    "preference_average_log_probs": "average_log_probs",
}
# model.dpo keys that are PreferenceLossConfig fields under their own name.
TOP_LEVEL_FIELDS = ("gamma_beta_ratio",)


def _plain(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


def _key_of(error: ConfigFieldError, prefix: str) -> str:
    """The YAML key of a PreferenceLossConfig field."""
    top = {field: key for key, field in ALIGNER_KEYS.items()} | {f: f for f in TOP_LEVEL_FIELDS}
    if error.field in top:
        return f"{prefix}.{top[error.field]}"
    return f"{prefix}.loss_params.{error.field}"


def loss_configs(dpo_cfg: DictConfig | dict, prefix: str = "model.dpo") -> tuple[PreferenceLossConfig, GammaConfig]:
    """Build the loss and γ configs from ``model.dpo``; every error names its key.

    A ``loss_params`` entry the chosen loss does not read (see each loss's ``params`` in
    :data:`nemo_gammapo.core.registry.LOSSES`) is an error, so a value never silently does nothing;
    so is a γ-PO loss without a base margin (γ0 = 0 would make every γ_i 0).
    """
    dpo = _plain(dpo_cfg)
    name = dpo.get("preference_loss")
    if name not in LOSSES:
        allowed = sorted(LOSSES) + list(ALIGNER_NATIVE_LOSSES)
        raise ConfigError(f"{prefix}.preference_loss must be one of {allowed} (got {name!r})")
    if dpo.get("ref_policy_kl_penalty") is None:
        raise ConfigError(f"{prefix}.ref_policy_kl_penalty is required: β, the reward scale (a number > 0)")
    params = {k: v for k, v in _plain(dpo.get("loss_params")).items() if v is not None}
    unused = sorted(set(params) - set(LOSSES[name].params))
    if unused:
        raise ConfigError(
            f"{prefix}.loss_params.{unused[0]} is not used by preference_loss={name} (its loss_params: "
            f"{list(LOSSES[name].params) or 'none'}); remove it or set it to null"
        )
    spec = LOSSES[name]
    ratio = dpo.get("gamma_beta_ratio")
    if ratio is None and (spec.gamma or spec.uses_gamma0):
        raise ConfigError(f"{prefix}.gamma_beta_ratio is required by preference_loss={name} (γ0 = ratio · β)")
    if spec.gamma and isinstance(ratio, int | float) and ratio <= 0:
        raise ConfigError(
            f"{prefix}.gamma_beta_ratio must be > 0 for preference_loss={name} (got {ratio!r}): with γ0 = 0 "
            "every γ_i is 0 and the run is margin-free; use a non-γ loss for that"
        )
    values = {field: dpo.get(key) for key, field in ALIGNER_KEYS.items()}
    values |= {field: dpo.get(field) for field in TOP_LEVEL_FIELDS}
    if values["average_log_probs"] is not None:
        values["average_log_probs"] = bool(values["average_log_probs"])
    try:
        loss_cfg = config_from_mapping(PreferenceLossConfig, {**values, **params}, prefix=f"{prefix}.loss_params")
    except ConfigFieldError as e:
        raise ConfigError(f"{_key_of(e, prefix)}: {e}" if e.field else str(e)) from None
    try:
        gamma_cfg = config_from_mapping(GammaConfig, _plain(dpo.get("gamma")), prefix=f"{prefix}.gamma")
    except ConfigFieldError as e:
        raise ConfigError(f"{prefix}.gamma.{e.field}: {e}" if e.field else str(e)) from None
    return loss_cfg, gamma_cfg  # type: ignore[return-value]


def dump_config(dpo_cfg: DictConfig | dict, prefix: str = "model.dpo") -> GammaDumpConfig:
    """``model.dpo.gamma_dump`` as a validated :class:`GammaDumpConfig`."""
    try:
        return config_from_mapping(GammaDumpConfig, _plain(_plain(dpo_cfg).get("gamma_dump")), f"{prefix}.gamma_dump")
    except ConfigFieldError as e:
        raise ConfigError(f"{prefix}.gamma_dump.{e.field}: {e}" if e.field else str(e)) from None
