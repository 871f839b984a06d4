"""Config validation: every bad value is rejected with a message naming field and range."""

import pytest

from nemo_gammapo.core.config import GammaConfig, PreferenceLossConfig, config_from_mapping


def test_defaults_are_valid_and_gamma0_is_derived() -> None:
    cfg = PreferenceLossConfig(beta=10.0, gamma_beta_ratio=0.4)
    assert cfg.gamma0 == pytest.approx(4.0)
    GammaConfig()


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("name", "nope", "one of"),
        ("beta", 0.0, "> 0"),
        ("beta", float("nan"), "> 0"),
        ("gamma_beta_ratio", -0.1, ">= 0"),
        ("label_smoothing", 0.5, r"\[0, 0.5\)"),
        ("ipo_tau", 0.0, "> 0"),
        ("cpo_alpha", -1.0, ">= 0"),
        ("average_log_probs", "yes", "bool"),
    ],
)
def test_loss_config_errors(field: str, value: object, allowed: str) -> None:
    with pytest.raises(ValueError, match=rf"PreferenceLossConfig\.{field} must be .*{allowed}"):
        PreferenceLossConfig(**{field: value})


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("tau", 0.0, "> 0"),
        ("tau", -3.0, "> 0"),
        ("num_iters", 0, ">= 1"),
        ("num_iters", 2.5, "integer"),
        ("lr", 0.0, "> 0"),
        ("solver", "newton", "one of"),
        ("queue_capacity", -1, ">= 0"),
        ("solve_size", 0, ">= 1"),
        ("sampling", "lifo", "one of"),
        ("dpo_convention", "zero", "one of"),
    ],
)
def test_gamma_config_errors(field: str, value: object, allowed: str) -> None:
    with pytest.raises(ValueError, match=rf"GammaConfig\.{field} must be .*{allowed}"):
        GammaConfig(**{field: value})


def test_unknown_keys_are_named() -> None:
    with pytest.raises(ValueError, match=r"model\.gamma\.tua"):
        config_from_mapping(GammaConfig, {"tua": 1.0}, prefix="model.gamma")
    assert config_from_mapping(GammaConfig, {"tau": 3.0}).tau == 3.0
