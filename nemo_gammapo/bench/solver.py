"""γ solver + margin queue cost per micro-batch: ours vs. the authors' style.

"Authors' style" is our own re-implementation of how the authors' reference code is organised:
margins kept in a Python ``deque``, the queued sample drawn with ``random.sample``, the solve
set rebuilt as a tensor from a Python list, the solver written as the literal multiplicative
update on ``p``, and γ taken back to the host with ``.tolist()`` every micro-batch. Ours is
:class:`GammaMarginPolicy` (tensor ring buffer, seeded sampling, log-domain solver), eager and
``torch.compile``-d.
"""

from __future__ import annotations

import collections
import random
from typing import Any

import torch

from nemo_gammapo.bench.common import median_seconds
from nemo_gammapo.core import GammaConfig, GammaMarginPolicy

GAMMA0, TAU, ITERS, CAPACITY = 4.0, 10.0, 20, 2048


class AuthorsStyleQueue:
    """List-and-deque γ computation, host round trips included."""

    def __init__(self, capacity: int, solve_size: int, seed: int = 0) -> None:
        self.queue: collections.deque[float] = collections.deque(maxlen=capacity)
        self.solve_size = solve_size
        self.rng = random.Random(seed)

    def __call__(self, margins: torch.Tensor) -> list[float]:
        current = margins.tolist()
        k = min(self.solve_size - len(current), len(self.queue))
        solve_set = torch.tensor(current + self.rng.sample(list(self.queue), max(k, 0)))
        n = solve_set.numel()
        p = torch.full((n,), 1.0 / n)
        eta = min(0.5 / TAU, 1.0)
        for _ in range(ITERS):
            grad = GAMMA0 * torch.sigmoid(n * GAMMA0 * p - solve_set) + TAU * (1 + torch.log(n * p))
            p = p * torch.exp(-eta * grad)
            p = p / p.sum()
        gamma = (n * GAMMA0 * p)[: len(current)].tolist()
        self.queue.extend(current)
        return gamma


def run(solve_sizes: list[int], microbatch: int = 8, repeats: int = 50, compile: bool = True) -> list[dict[str, Any]]:
    """Median seconds per micro-batch for each implementation and solve size, with ratios."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for size in solve_sizes:
        margins = torch.randn(microbatch, generator=gen)
        authors = AuthorsStyleQueue(CAPACITY, size)
        impls: dict[str, Any] = {"authors_style": authors}
        impls["ours_eager"] = GammaMarginPolicy(GammaConfig(tau=TAU, queue_capacity=CAPACITY, solve_size=size), GAMMA0)
        if compile:
            impls["ours_compiled"] = GammaMarginPolicy(
                GammaConfig(tau=TAU, queue_capacity=CAPACITY, solve_size=size, compile=True), GAMMA0
            )
        for impl in impls.values():  # fill the queues (and compile) before timing
            for _ in range(CAPACITY // microbatch + 1):
                impl(torch.randn(microbatch, generator=gen))
        row: dict[str, Any] = {"solve_size": size, "microbatch": microbatch}
        for name, impl in impls.items():
            row[f"{name}_ms"] = 1e3 * median_seconds(lambda impl=impl, margins=margins: impl(margins), repeats)
        row["speedup_eager"] = row["authors_style_ms"] / row["ours_eager_ms"]
        if compile:
            row["speedup_compiled"] = row["authors_style_ms"] / row["ours_compiled_ms"]
        rows.append(row)
    return rows
