"""The grid's tuning stage: rSimPO's and rDPO's ε, chosen on data that the evaluation never sees.

For every tuned loss of the grid (a method with ``tuned=True``) and every candidate ε, one run per
*tuning seed* at one flip rate (20 %, the middle of the noise range), scored by its held-out
true-preference accuracy. Tuning seeds are disjoint from the evaluation seeds (the grid refuses an
overlap), and every draw of the task is keyed by its seed, so the tuning runs' training pairs,
held-out pairs, flips and warm starts are separate draws of the generator: no evaluation pair, and no
evaluation seed's warm start, is looked at. Per loss the ε with the highest mean accuracy over the
tuning seeds wins (a tie goes to the smaller ε); the grid then uses it at every flip rate and every
evaluation seed. Each loss is tuned on its own; the other methods get no tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nemo_gammapo.study.methods import EPSILON_CANDIDATES, Method
from nemo_gammapo.study.stats import bootstrap_ci

TUNING_FLIP_RATE = 0.2
TUNING_SEEDS = (100, 101, 102, 103)


@dataclass(frozen=True)
class Tuning:
    """Which tuning runs to make: ``candidates`` × ``seeds`` per tuned loss, at ``flip_rate``."""

    candidates: Sequence[float] = EPSILON_CANDIDATES
    flip_rate: float = TUNING_FLIP_RATE
    seeds: Sequence[int] = TUNING_SEEDS

    def runs(self, tuned: Sequence[Method]) -> list[tuple[Method, float, int]]:
        """``(candidate method, flip rate, seed)`` for the tuned methods ``tuned``, seed-major."""
        return [
            (Method(m.loss, m.base, epsilon=float(c)), self.flip_rate, s)
            for s in self.seeds
            for m in tuned
            for c in self.candidates
        ]

    def describe(self) -> dict[str, Any]:
        return {"candidates": list(self.candidates), "flip_rate": self.flip_rate, "seeds": list(self.seeds)}


def tuning_row(method: Method, row: dict[str, Any]) -> dict[str, Any]:
    """The tuning record of one finished run (its ``train_one`` row)."""
    return {
        "stage": "tuning",
        "method": method.key,
        "loss": method.loss,
        "epsilon": float(method.epsilon),
        "flip_rate": row["flip_rate"],
        "seed": row["seed"],
        "heldout_accuracy": row["heldout_accuracy"],
        "heldout_spearman": row["heldout_spearman"],
        "wall_s": row["wall_s"],
    }


def summarise_tuning(runs: pd.DataFrame) -> pd.DataFrame:
    """Per loss and candidate ε: mean accuracy (95 % bootstrap CI over the tuning seeds), mean ρ and
    ``chosen`` (the highest mean accuracy of the loss; ties go to the smaller ε)."""
    rows = []
    for (loss, eps), part in runs.groupby(["loss", "epsilon"], sort=False):
        mean, low, high = bootstrap_ci(part["heldout_accuracy"].to_numpy())
        rows.append(
            {
                "loss": loss,
                "epsilon": eps,
                "flip_rate": float(part["flip_rate"].iloc[0]),
                "seeds": len(part),
                "acc_mean": mean,
                "acc_low": low,
                "acc_high": high,
                "rho_mean": float(np.nanmean(part["heldout_spearman"].to_numpy())),
            }
        )
    order = {loss: i for i, loss in enumerate(dict.fromkeys(runs["loss"]))}  # the grid's order of the losses
    table = pd.DataFrame(rows)
    table = table.sort_values(["loss", "epsilon"], key=lambda c: c.map(order) if c.name == "loss" else c)
    table = table.reset_index(drop=True)
    table["chosen"] = False
    for _, part in table.groupby("loss", sort=False):
        best = part["acc_mean"].to_numpy().argmax()  # first maximum = the smallest ε of a tie
        table.loc[part.index[best], "chosen"] = True
    return table


def chosen_epsilons(table: pd.DataFrame) -> dict[str, float]:
    """``{loss: chosen ε}`` of a :func:`summarise_tuning` table."""
    return {str(r.loss): float(r.epsilon) for r in table[table["chosen"]].itertuples()}
