"""Rank a run's training pairs by the evidence that they are mislabeled, from its γ dumps.

A dump row is one pair at one dumped step (:mod:`nemo_gammapo.artifacts.dumps`). A pair whose
label is wrong tends to get a low reward margin once the model has learnt the rule, and under
γ-PO a target margin γ_i below γ0. Each observation is centred on its step (minus the mean of
that step's dumped values, which removes the drift of margins over training and, for γ, is
γ0 up to sampling), negated, and averaged over the steps the pair was seen:

* ``gamma``: evidence = −(γ_i − mean_step γ) — the γ-PO signal (needs a γ-PO run);
* ``margin``: evidence = −(m_i − mean_step m) — any run, e.g. a SimPO / DPO run's margins;
* ``auto``: ``gamma`` when the dumps carry γ values, else ``margin``.

Dumps from every rank and stage of any layout are pooled: pairs are named by their content id
(``pair_id``), so the ranking is the same whatever the parallel layout. Pure pandas; no NeMo.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nemo_gammapo.data.pair_id import pair_id

SCORES = ("auto", "gamma", "margin")


def resolve_score(dumps: pd.DataFrame, score: str) -> str:
    """``score`` with ``auto`` made concrete; ``ValueError`` when ``gamma`` is asked of γ-less dumps."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES} (got {score!r})")
    has_gamma = bool(np.isfinite(dumps["gamma"].to_numpy(dtype=np.float64)).any())
    if score == "auto":
        return "gamma" if has_gamma else "margin"
    if score == "gamma" and not has_gamma:
        raise ValueError("the dumps have no γ values (not a γ-PO run); use --score margin")
    return score


def score_pairs(dumps: pd.DataFrame, score: str = "auto", min_step: int = 0) -> pd.DataFrame:
    """One row per pair id, most suspect first.

    Columns: ``pair_id``, ``score`` (mean evidence, higher = more likely mislabeled), ``seen``
    (dumped observations), ``first_step``, ``last_step``, ``margin_mean``, ``gamma_mean`` (NaN
    without γ). Rows that are invalid, lack a pair id (-1) or come before ``min_step`` are ignored;
    ties are broken by pair id so the order is deterministic. Raises ``ValueError`` when nothing
    is left.
    """
    kind = resolve_score(dumps, score)
    rows = dumps[(dumps["pair_id"] >= 0) & dumps["valid"].astype(bool) & (dumps["step"] >= min_step)]
    rows = rows.drop_duplicates(subset=["step", "microbatch", "pair_id"])  # a re-written step counts once
    value = rows[kind].astype(np.float64)
    rows = rows[np.isfinite(value)].assign(value=value[np.isfinite(value)])
    if rows.empty:
        raise ValueError("no valid dumped pair with a pair id (dumps written before pair ids existed?)")
    centred = rows["value"] - rows.groupby("step")["value"].transform("mean")
    rows = rows.assign(evidence=-centred)
    out = rows.groupby("pair_id").agg(
        score=("evidence", "mean"),
        seen=("evidence", "size"),
        first_step=("step", "min"),
        last_step=("step", "max"),
        margin_mean=("margin", "mean"),
        gamma_mean=("gamma", "mean"),
    )
    out = out.reset_index().sort_values(["score", "pair_id"], ascending=[False, True], kind="mergesort")
    out.attrs["score"] = kind
    return out.reset_index(drop=True)


def index_rows(path: str | Path) -> dict[int, tuple[int, dict[str, Any]]]:
    """``pair_id -> (line number, row)`` of a JSONL training file (the first row wins for duplicates)."""
    out: dict[int, tuple[int, dict[str, Any]]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                row = json.loads(line)
                out.setdefault(pair_id(row), (lineno, row))
    return out


def _auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    from scipy.stats import rankdata

    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def find_suspects(
    dumps: pd.DataFrame, rows: dict[int, tuple[int, dict[str, Any]]], top: int, score: str = "auto", min_step: int = 0
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ``top`` most suspect training rows (original row + a ``suspect`` record) and a summary.

    When the rows carry ``label_flipped`` (as ``nemo-gammapo data flip`` writes), the summary also
    scores the ranking against it: precision@K and AUROC over the pairs seen in the dumps.
    """
    ranked = score_pairs(dumps, score, min_step)
    matched = ranked[ranked["pair_id"].isin(rows.keys())].reset_index(drop=True)
    if matched.empty:
        raise LookupError(f"none of the {len(ranked)} dumped pair ids is a row of the data file")
    picked = []
    for rank, rec in enumerate(matched.head(top).itertuples(index=False), start=1):
        lineno, row = rows[int(rec.pair_id)]
        picked.append(
            {
                **row,
                "suspect": {
                    "rank": rank,
                    "score": float(rec.score),
                    "pair_id": int(rec.pair_id),
                    "line": lineno,
                    "seen": int(rec.seen),
                    "margin_mean": float(rec.margin_mean),
                    "gamma_mean": None if not np.isfinite(rec.gamma_mean) else float(rec.gamma_mean),
                },
            }
        )
    scores = matched["score"].to_numpy()
    summary: dict[str, Any] = {
        "score": ranked.attrs["score"],
        "min_step": min_step,
        "steps": sorted(int(s) for s in dumps["step"].unique()),
        "dumped_pairs": len(ranked),
        "matched_pairs": len(matched),
        "unmatched_pair_ids": int(len(ranked) - len(matched)),
        "data_rows": len(rows),
        "top": len(picked),
        "score_quantiles": {q: float(np.quantile(scores, float(q))) for q in ("0.5", "0.9", "0.99")},
    }
    flags = [rows[int(i)][1].get("label_flipped") for i in matched["pair_id"]]
    if all(isinstance(f, bool) for f in flags):
        positives = np.array(flags, dtype=bool)
        summary["label_flipped"] = {
            "flipped_pairs_seen": int(positives.sum()),
            "precision_at_top": float(positives[: len(picked)].mean()) if picked else float("nan"),
            "auroc": _auroc(scores, positives),
        }
    return picked, summary


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
