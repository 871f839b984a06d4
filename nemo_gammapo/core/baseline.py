"""A running reference value for batch-relative losses (β-DPO's M0, KTO's z_ref).

β-DPO scales each pair's β by how its margin compares with a reference margin M0, and KTO measures
rewards against a reference point z_ref. Taken from the micro-batch itself, both depend on how the
batch is laid out: at micro-batch 1 the pair *is* the batch (β-DPO becomes DPO exactly), and DP2 ×
micro-batch 1 differs from DP1 × micro-batch 2. :class:`MovingMean` instead keeps an exponential
moving average of the means of *global* micro-batches (gathered over data-parallel ranks), updated
by training micro-batches only and saved with the checkpoint, so the value is the same at every
layout and meaningful at micro-batch 1.

Device tensors throughout: no host sync per call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class MovingMean:
    """``value ← momentum·value + (1 − momentum)·mean(batch)``; the first batch sets it.

    Args:
        momentum: weight of the past, in [0, 1); 0 uses each batch's own mean.
    """

    def __init__(self, momentum: float) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"MovingMean.momentum must be in [0, 1) (got {momentum!r})")
        self.momentum = momentum
        self.value = torch.zeros(())
        self.initialized = torch.zeros((), dtype=torch.bool)

    def __call__(self, values: Tensor, valid: Tensor, update: bool) -> Tensor:
        """The reference value for this batch (0-dim, detached).

        Args:
            values: ``(N,)`` the global micro-batch's values (e.g. β-scaled margins).
            valid: ``(N,)`` bool, which of them count (padding and truncated pairs do not).
            update: fold this batch into the average (training) or only read it (validation).

        Returns the average including this batch when updating; when only reading, the training
        average (this batch's own mean before any training batch was seen).
        """
        values, weights = values.detach().float(), valid.float()
        if self.value.device != values.device:
            self.value, self.initialized = self.value.to(values.device), self.initialized.to(values.device)
        count = weights.sum()
        batch_mean = (values * weights).sum() / count.clamp_min(1.0)
        if not update:
            return torch.where(self.initialized, self.value, batch_mean)
        blended = self.momentum * self.value + (1.0 - self.momentum) * batch_mean
        has_values = count > 0
        self.value = torch.where(has_values, torch.where(self.initialized, blended, batch_mean), self.value)
        self.initialized = self.initialized | has_values
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value.detach().cpu().clone(), "initialized": self.initialized.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["value"].to(self.value.device).clone()
        self.initialized = state["initialized"].to(self.value.device).clone()
