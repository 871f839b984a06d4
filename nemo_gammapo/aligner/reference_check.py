"""The reference check at a run's first step: is the precomputed file still what the model computes?

With ``model.dpo.reference: precomputed`` the reference log-probs come from a file whose digests
prove only that the data and the starting checkpoint are the same files. A changed tokenizer or
chat template, another precision, or a routing difference (MoE) would still train against a
wrong reference. So at every start (resumes included) the first training step recomputes the
reference log-prob sums of one micro-batch online — a forward of the reference weights, once —
and compares them with the file, per sequence, in nats per response token.

``model.dpo.reference_check_tolerance`` (nats per token, mean over the response; ``null`` skips
the check), default 0.1 (``conf/gpt_gammapo.yaml``): BF16 keeps 8 significant bits (relative rounding
2⁻⁹ ≈ 0.2 %), so two forwards of the same weights at other layouts or paddings differ in a
logit of magnitude ~20 by ~0.04 and in a token's log-prob by a few hundredths of a nat, and by less
on average over a response; 0.1 leaves room for that (an estimate, not measured on a GPU here),
while another tokenizer or template changes log-probs by nats per token. On CPU in float32 the
difference is ~1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nemo_gammapo.aligner.errors import ConfigError


class ReferenceMismatch(ConfigError):
    """The precomputed reference differs from what the model computes online."""


@dataclass(frozen=True)
class Worst:
    """The sequence of a checked micro-batch whose file value is furthest from the online one."""

    per_token: float  # |online − file| / tokens, nats
    pair_id: int
    side: str  # "chosen" or "rejected"
    online: float  # log-prob sum, nats
    file: float
    tokens: int


def worst_sequence(online: torch.Tensor, file: torch.Tensor, tokens: torch.Tensor, pair_ids: torch.Tensor) -> Worst:
    """The worst of ``2B`` sequences: ``online`` / ``file`` / ``tokens`` are ``[2B]`` (chosen rows, then
    rejected), ``pair_ids`` is ``[B]``."""
    gap = (online.double() - file.double()).abs() / tokens.double().clamp(min=1)
    i = int(torch.argmax(gap))
    rows = len(pair_ids)
    return Worst(
        per_token=float(gap[i]),
        pair_id=int(pair_ids[i % rows]),
        side="chosen" if i < rows else "rejected",
        online=float(online[i]),
        file=float(file[i]),
        tokens=int(tokens[i]),
    )


def verdict(worst: Worst, tolerance: float, path: str) -> str | None:
    """The one-line refusal when ``worst`` is beyond ``tolerance``, else None."""
    if worst.per_token <= tolerance:
        return None
    return (
        f"model.dpo.reference_logprobs: {path} disagrees with the reference computed online for pair id "
        f"{worst.pair_id} ({worst.side}: file {worst.file:.4f}, online {worst.online:.4f} nats over "
        f"{worst.tokens} tokens, {worst.per_token:.4f} nats/token > model.dpo.reference_check_tolerance="
        f"{tolerance}); likely causes: another tokenizer, prompt template or precision than the precompute "
        "used, or a model whose routing differs; re-run `nemo-gammapo precompute-reference` with this config"
    )


def check_tolerance(value: object) -> float | None:
    """``model.dpo.reference_check_tolerance`` checked: null or a number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(
            f"model.dpo.reference_check_tolerance must be null (no check) or nats per token > 0 (got {value!r})"
        )
    return float(value)
