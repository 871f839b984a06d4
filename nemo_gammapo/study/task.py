"""The study's synthetic preference task: a known true reward, Bradley–Terry labels, graded ambiguity.

A prompt names one of ``classes`` prompt classes (``"A>"``, ``"B>"``, ...); a response is
``length`` letters from ``alphabet``. The true reward is additive over the response's letters,

    R(x, y) = Σ_t w[c(x), y_t],

where each class's letter weights are a seeded permutation of ``linspace(-1, 1, len(alphabet))``.
A tiny GPT can represent this ordering exactly (a per-class next-letter preference), yet it has to
be learnt from pairs. Training pairs are two independent uniform responses to one prompt, so their
true gaps ΔR range from near-ties to clear-cut; the label follows the Bradley–Terry model
``P(first ≻ second) = σ(ΔR / T)``, so near-ties are genuinely ambiguous (the label is close to a coin
flip) while large gaps are almost always labelled right. Label flips (:mod:`nemo_gammapo.data.noise`)
come on top. Held-out pairs are labelled by the true ordering (exact ties are dropped).

Every row carries ``chosen_reward`` / ``rejected_reward`` (the true rewards, swapped along with
the responses by a flip) and ``bt_correct`` (whether the Bradley–Terry label agreed with R).
Everything is a pure function of ``(TaskSpec, seed)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_SPLIT_CODES = {"train": 1, "heldout": 2, "sft": 3}


@dataclass(frozen=True)
class TaskSpec:
    """The task's shape; ``temperature`` is the Bradley–Terry T (reward units)."""

    classes: int = 4
    alphabet: str = "abcdefgh"
    length: int = 6
    temperature: float = 0.5
    weight_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def prompts(self) -> list[str]:
        return [f"{chr(ord('A') + c)}>" for c in range(self.classes)]

    def weights(self) -> np.ndarray:
        """``[classes, len(alphabet)]`` letter weights (the same for every seed)."""
        rng = np.random.default_rng([self.weight_seed, 7919])
        base = np.linspace(-1.0, 1.0, len(self.alphabet))
        return np.stack([rng.permutation(base) for _ in range(self.classes)])

    def true_reward(self, prompt: str, response: str) -> float:
        """R(x, y) of one prompt/response."""
        w = self.weights()[self.prompts.index(prompt)]
        return float(sum(w[self.alphabet.index(ch)] for ch in response))


def _rng(spec: TaskSpec, seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([spec.weight_seed, seed, _SPLIT_CODES[split]])


def _responses(spec: TaskSpec, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` prompt classes and ``[n, length]`` letter indices, uniform."""
    cls = rng.integers(0, spec.classes, size=n)
    letters = rng.integers(0, len(spec.alphabet), size=(n, spec.length))
    return cls, letters


def _text(spec: TaskSpec, letters: np.ndarray) -> str:
    return "".join(spec.alphabet[i] for i in letters)


def sample_pairs(spec: TaskSpec, seed: int, n: int, split: str) -> list[dict[str, Any]]:
    """``n`` pairs of ``split`` (``"train"``: Bradley–Terry labels; ``"heldout"``: true ordering, no ties)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout' (got {split!r})")
    rng = _rng(spec, seed, split)
    w = spec.weights()
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        c = int(rng.integers(0, spec.classes))
        a, b = (rng.integers(0, len(spec.alphabet), size=spec.length) for _ in range(2))
        r_a, r_b = float(w[c, a].sum()), float(w[c, b].sum())
        u = float(rng.random())
        gap = r_a - r_b
        if split == "heldout":
            if abs(gap) < 1e-9:
                continue
            first_wins = gap > 0
        else:
            first_wins = u < 1.0 / (1.0 + math.exp(-gap / spec.temperature))
        (cw, rw), (cl, rl) = ((a, r_a), (b, r_b)) if first_wins else ((b, r_b), (a, r_a))
        rows.append(
            {
                "id": f"{split}-{seed}-{len(rows)}",
                "prompt": spec.prompts[c],
                "chosen_response": _text(spec, cw),
                "rejected_response": _text(spec, cl),
                "chosen_reward": round(rw, 6),
                "rejected_reward": round(rl, 6),
                "bt_correct": bool(rw > rl),
            }
        )
    return rows


def sft_sequences(spec: TaskSpec, seed: int, n: int) -> list[dict[str, Any]]:
    """``n`` prompt/response rows with uniform random responses: the warm start learns the format only."""
    cls, letters = _responses(spec, _rng(spec, seed, "sft"), n)
    return [{"prompt": spec.prompts[int(c)], "response": _text(spec, row)} for c, row in zip(cls, letters, strict=True)]


def label_noise_profile(spec: TaskSpec, gaps: np.ndarray) -> np.ndarray:
    """P(the Bradley–Terry label is wrong) for true gaps ``|ΔR|``: σ(−|ΔR| / T)."""
    return 1.0 / (1.0 + np.exp(np.abs(gaps) / spec.temperature))
