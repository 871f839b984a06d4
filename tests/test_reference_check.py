"""The reference check's comparison (``nemo_gammapo.aligner.reference_check``); the product runs
that use it are in ``test_reference_precompute``."""

from __future__ import annotations

import pytest
import torch

from nemo_gammapo.aligner.errors import ConfigError
from nemo_gammapo.aligner.reference_check import check_tolerance, verdict, worst_sequence


def test_the_worst_sequence_is_found_per_token_and_named_by_pair_and_side() -> None:
    online = torch.tensor([-10.0, -20.0, -30.0, -40.0])  # chosen of pairs 7, 8; rejected of 7, 8
    file = torch.tensor([-10.0, -20.5, -33.0, -40.0])
    tokens = torch.tensor([5, 5, 10, 20])
    worst = worst_sequence(online, file, tokens, torch.tensor([7, 8]))
    # 0.5 / 5 = 0.1 for pair 8 chosen; 3 / 10 = 0.3 for pair 7 rejected
    assert (worst.pair_id, worst.side, worst.tokens) == (7, "rejected", 10)
    assert worst.per_token == pytest.approx(0.3) and (worst.online, worst.file) == (-30.0, -33.0)


def test_within_tolerance_passes_and_beyond_it_is_one_line() -> None:
    worst = worst_sequence(
        torch.tensor([-10.0, -12.0]), torch.tensor([-10.2, -12.0]), torch.tensor([4, 4]), torch.tensor([3])
    )
    assert verdict(worst, 0.1, "ref.pt") is None  # 0.05 nats/token
    line = verdict(worst, 0.01, "ref.pt")
    assert line is not None and "\n" not in line
    assert line.startswith(
        "model.dpo.reference_logprobs: ref.pt disagrees with the reference computed online for pair id 3"
    )
    assert "file -10.2000, online -10.0000 nats over 4 tokens, 0.0500 nats/token" in line


@pytest.mark.parametrize("bad", [0, -0.1, True, "0.1"])
def test_bad_tolerances_name_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"model\.dpo\.reference_check_tolerance must be null"):
        check_tolerance(bad)
    assert check_tolerance(None) is None and check_tolerance(1) == 1.0
