"""FIFO queue of recent β-scaled reward margins (paper appendix C, Algorithm 2).

The queue widens the γ solve set beyond one (small) micro-batch so that γ reflects the margin
distribution rather than one batch's sampling noise. Differences from the authors' code, on
purpose: it starts empty, it is a tensor ring buffer (no Python lists, no ``.tolist()``), it
samples with its own seeded generator (so every rank that feeds it the same margins draws the
same sample), it stores a validity flag per slot (so padded or masked entries can be pushed
without a device→host sync and are never used in a solve), and its full state round-trips
bit-exactly through ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

SAMPLING_MODES = ("random", "recent")


class MarginQueue:
    """Fixed-capacity ring buffer of reward margins held as a tensor.

    Args:
        capacity: number of slots (the paper's queue holds 2048 margins). ``0`` disables the
            queue: solve sets are then the current margins only.
        solve_size: target size ``m_n`` of a solve set (the paper uses 256).
        sampling: ``"random"`` draws queued margins uniformly without replacement with the
            queue's own generator; ``"recent"`` takes the most recently pushed ones.
        seed: seed of the sampling generator; use the same seed on every rank.
        device: where the buffer lives (the device the margins are on).
    """

    def __init__(
        self,
        capacity: int = 2048,
        solve_size: int = 256,
        sampling: str = "random",
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0 (got {capacity!r})")
        if solve_size < 1:
            raise ValueError(f"solve_size must be >= 1 (got {solve_size!r})")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES} (got {sampling!r})")
        self.capacity = capacity
        self.solve_size = solve_size
        self.sampling = sampling
        self.seed = seed
        device = torch.device("cpu") if device is None else torch.device(device)
        self.margins = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.valid = torch.zeros(capacity, dtype=torch.bool, device=device)
        self.pointer = 0  # next slot to write
        self.count = 0  # filled slots, <= capacity
        # Sampling runs on a CPU generator: it is cheap for <= a few thousand slots, its state is
        # portable across devices (a checkpoint resumes on any device, and a GPU run draws the
        # same samples as a CPU run), and its indices reach an accelerator through pinned memory
        # with an asynchronous copy (no sync). Every other index is built on the buffer's device.
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        """Number of filled slots (including slots whose entry was pushed as invalid)."""
        return self.count

    @property
    def device(self) -> torch.device:
        return self.margins.device

    def to(self, device: torch.device | str) -> MarginQueue:
        """Move the buffer to ``device`` (in place); returns ``self``."""
        self.margins = self.margins.to(device)
        self.valid = self.valid.to(device)
        return self

    def num_valid(self) -> Tensor:
        """Number of valid queued margins, as a device tensor (no host sync)."""
        return self.valid.sum()

    # ------------------------------------------------------------------ solve set
    def _queued_indices(self, k: int) -> Tensor:
        """Slot indices of ``k`` queued entries chosen by the sampling mode (``k <= count``)."""
        if self.sampling == "recent":
            return (self.pointer - 1 - torch.arange(k, device=self.device)) % self.capacity
        # With a full buffer the slot order is irrelevant for uniform sampling; with a partial
        # one slots 0..count-1 are exactly the filled ones. A fresh pinned block per draw: the
        # caching host allocator keeps it until the asynchronous copy has read it.
        pinned = self.device.type != "cpu" and torch.cuda.is_available()
        idx = torch.randperm(self.count, generator=self.generator, device="cpu", pin_memory=pinned)[:k]
        return idx.to(self.device, non_blocking=True)

    def solve_set(self, current: Tensor, current_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Current margins followed by up to ``solve_size − len(current)`` queued margins.

        Args:
            current: the step's margins, shape ``(n,)``; for data-parallel training these are
                the margins gathered from all data-parallel ranks, in rank order.
            current_valid: optional boolean mask of ``current``.

        Returns:
            ``(margins, valid)`` of shape ``(n + k,)``; the first ``n`` entries are ``current``
            in order, so γ for the current pairs is ``solve_gamma(...)[:n]``.
        """
        current = current.detach().reshape(-1)
        if current_valid is None:
            current_valid = torch.ones_like(current, dtype=torch.bool)
        k = min(max(self.solve_size - current.numel(), 0), self.count)
        if k == 0:
            return current, current_valid.reshape(-1)
        idx = self._queued_indices(k)
        margins = torch.cat([current, self.margins[idx].to(current.dtype)])
        valid = torch.cat([current_valid.reshape(-1).to(torch.bool), self.valid[idx]])
        return margins, valid

    # ------------------------------------------------------------------ push
    def push(self, margins: Tensor, valid: Tensor | None = None) -> None:
        """Append margins in order (oldest entries are overwritten once the buffer is full).

        Non-finite margins are stored as invalid. No device→host sync: the number of slots
        written is ``margins.numel()``, known on the host.
        """
        if self.capacity == 0:
            return
        margins = margins.detach().reshape(-1).to(device=self.device, dtype=torch.float32)
        ok = torch.isfinite(margins)
        if valid is not None:
            ok = ok & valid.reshape(-1).to(device=self.device, dtype=torch.bool)
        n = margins.numel()
        if n > self.capacity:  # only the newest `capacity` entries can survive
            margins, ok = margins[-self.capacity :], ok[-self.capacity :]
            self.pointer = (self.pointer + n - self.capacity) % self.capacity
            n = self.capacity
        slots = (self.pointer + torch.arange(n, device=self.device)) % self.capacity
        self.margins[slots] = torch.where(ok, margins, torch.zeros_like(margins))
        self.valid[slots] = ok
        self.pointer = (self.pointer + n) % self.capacity
        self.count = min(self.count + n, self.capacity)

    def ordered(self) -> tuple[Tensor, Tensor]:
        """Queued ``(margins, valid)`` from oldest to newest (for inspection and tests)."""
        start = (self.pointer - self.count) % self.capacity if self.capacity else 0
        idx = (start + torch.arange(self.count, device=self.device)) % max(self.capacity, 1)
        return self.margins[idx], self.valid[idx]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Full state on CPU: buffer, validity, pointer, count, generator state and settings."""
        return {
            "capacity": self.capacity,
            "solve_size": self.solve_size,
            "sampling": self.sampling,
            "seed": self.seed,
            "margins": self.margins.detach().cpu().clone(),
            "valid": self.valid.detach().cpu().clone(),
            "pointer": self.pointer,
            "count": self.count,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` bit-exactly.

        The buffer contents, pointer, count and generator state come from ``state``; the
        settings (solve size, sampling mode) stay those this queue was configured with, so a
        resumed run can change them deliberately. The capacity must match.
        """
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"queue capacity mismatch: checkpoint has {state['capacity']}, this run is configured "
                f"with {self.capacity}"
            )
        self.margins = state["margins"].to(device=self.device, dtype=torch.float32).clone()
        self.valid = state["valid"].to(device=self.device, dtype=torch.bool).clone()
        self.pointer = int(state["pointer"])
        self.count = int(state["count"])
        self.generator.set_state(state["generator"].clone())
