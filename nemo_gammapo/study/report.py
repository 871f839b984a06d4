"""Summaries of the grid: means with 95 % bootstrap intervals over seeds, paired differences against
the base loss, flip detection, the mechanism, the ε tuning stage; written as CSVs and markdown tables.

Every number the write-up quotes is a cell of one of these files (``tests/test_robustness_study.py``
checks that), and every file is a pure function of ``results.csv`` / ``mechanism.csv`` /
``tuning_runs.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nemo_gammapo.study.methods import PRIMARY_TAU, get_method
from nemo_gammapo.study.stats import bootstrap_ci
from nemo_gammapo.study.tuning import summarise_tuning

METRICS = {"heldout_accuracy": "acc", "heldout_spearman": "rho"}


def _ci_columns(prefix: str, values: np.ndarray) -> dict[str, float]:
    mean, low, high = bootstrap_ci(values)
    return {f"{prefix}_mean": mean, f"{prefix}_low": low, f"{prefix}_high": high}


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per method and flip rate: mean and 95 % CI of accuracy and ρ, of the paired (same seed)
    difference to the method's base loss, and (``deg``, accuracy, flip rate > 0) of the paired
    difference in *degradation*: (acc(p) − acc(0)) − (acc_base(p) − acc_base(0)); > 0 means the
    method lost less accuracy to the flips than its base. NaN where undefined (the base itself)."""
    rows = []
    clean = results[results["flip_rate"] == 0.0].set_index(["method", "seed"])["heldout_accuracy"]
    for (key, rate), part in results.groupby(["method", "flip_rate"], sort=False):
        base_key = get_method(key).base
        base = results[(results["method"] == base_key) & (results["flip_rate"] == rate)]
        paired = part.merge(base, on="seed", suffixes=("", "_base"))
        row = {"method": key, "base": base_key, "flip_rate": rate, "seeds": len(part)}
        for col, short in METRICS.items():
            row |= _ci_columns(short, part[col].to_numpy())
            diff = (paired[col] - paired[f"{col}_base"]).to_numpy() if key != base_key else np.array([])
            row |= _ci_columns(f"d_{short}", diff)
        deg = np.array([])
        if key != base_key and rate > 0 and len(paired) and (key, paired["seed"].iloc[0]) in clean.index:
            seeds = paired["seed"].to_numpy()
            own = paired["heldout_accuracy"].to_numpy() - clean.loc[[(key, s) for s in seeds]].to_numpy()
            ref = paired["heldout_accuracy_base"].to_numpy() - clean.loc[[(base_key, s) for s in seeds]].to_numpy()
            deg = own - ref
        row |= _ci_columns("deg", deg)
        rows.append(row)
    return pd.DataFrame(rows)


def method_labels(results: pd.DataFrame) -> dict[str, str]:
    """Row labels of the methods of ``results``; a tuned method's shows the ε it ran with."""
    labels = {}
    for key in dict.fromkeys(results["method"]):
        method = get_method(key)
        if method.tuned:
            eps = results.loc[results["method"] == key, "label_smoothing"].unique()
            method = method.with_epsilon(float(eps[0])) if len(eps) == 1 else method
        labels[key] = method.label
    return labels


def degradation_table(summary: pd.DataFrame, methods: list[str], labels: dict[str, str] | None = None) -> str:
    """H1 directly: per method and flip rate > 0, the paired difference in accuracy lost to the flips."""
    labels = labels or {}
    rates = sorted(r for r in summary["flip_rate"].unique() if r > 0)
    lines = ["| method | " + " | ".join(f"flip {r:.0%}" for r in rates) + " |", "|---" * (len(rates) + 1) + "|"]
    for key in methods:
        if key == get_method(key).base:
            continue
        part = summary[summary["method"] == key].set_index("flip_rate")
        cells = [_signed(*part.loc[r, ["deg_mean", "deg_low", "deg_high"]], 100.0, 1) for r in rates]
        lines.append(f"| {labels.get(key, get_method(key).label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def detection_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Flip detection per flip rate > 0: the γ-score of each γ method and the margin score of every
    method, mean and 95 % CI of AUROC and precision@K, and the paired AUROC difference to the base
    loss's margins (SimPO's margins for the SimPO family, DPO's for the DPO family)."""
    rows = []
    noisy = results[results["flip_rate"] > 0]
    for (key, rate), part in noisy.groupby(["method", "flip_rate"], sort=False):
        method = get_method(key)
        base = noisy[(noisy["method"] == method.base) & (noisy["flip_rate"] == rate)]
        for score in ("gamma", "margin"):
            col = f"{score}_auroc"
            if col not in part or part[col].isna().all():
                continue
            paired = part.merge(base[["seed", "margin_auroc"]], on="seed", suffixes=("", "_base"))
            row = {"method": key, "base": method.base, "score": score, "flip_rate": rate, "seeds": len(part)}
            row |= _ci_columns("auroc", part[col].to_numpy())
            row |= _ci_columns("prec", part[f"{score}_precision_at_k"].to_numpy())
            diff = paired[col] - paired["margin_auroc_base" if "margin_auroc_base" in paired else "margin_auroc"]
            same = key == method.base and score == "margin"
            row |= _ci_columns("d_auroc", np.array([]) if same else diff.to_numpy())
            rows.append(row)
    return pd.DataFrame(rows)


def mechanism_summary(mechanism: pd.DataFrame) -> pd.DataFrame:
    """Per method, flip rate, phase and group: mean over seeds (95 % CI) of the per-run mean γ_i − γ0,
    the per-run median implied ε_i (both NaN without γ-PO) and the per-run mean margin."""
    rows = []
    keys = ["method", "flip_rate", "kind", "phase", "group"]
    for key, part in mechanism.groupby(keys, sort=True):
        row = dict(zip(keys, key, strict=True)) | {"seeds": len(part), "n": int(part["n"].sum())}
        row |= _ci_columns("delta", part["delta_mean"].to_numpy())
        row |= _ci_columns("eps", part["eps_median"].to_numpy())
        row |= _ci_columns("margin", part["margin_mean"].to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def _ci(mean: float, low: float, high: float, scale: float = 1.0, digits: int = 1) -> str:
    if not np.isfinite(mean):
        return "—"
    if low == high:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def _signed(mean: float, low: float, high: float, scale: float = 1.0, digits: int = 1) -> str:
    if not np.isfinite(mean):
        return "—"
    return f"{scale * mean:+.{digits}f} [{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"


def method_table(
    summary: pd.DataFrame,
    metric: str,
    scale: float,
    digits: int,
    methods: list[str],
    labels: dict[str, str] | None = None,
) -> str:
    """Rows = methods, columns = flip rates: the base as mean [CI], others as paired difference [CI]."""
    labels = labels or {}
    rates = sorted(summary["flip_rate"].unique())
    lines = ["| method | " + " | ".join(f"flip {r:.0%}" for r in rates) + " |", "|---" * (len(rates) + 1) + "|"]
    for key in methods:
        part = summary[summary["method"] == key].set_index("flip_rate")
        if part.empty:
            continue
        is_base = key == get_method(key).base
        cells = []
        for r in rates:
            if r not in part.index:
                cells.append("—")
                continue
            c = part.loc[r]
            if is_base:
                cells.append(_ci(c[f"{metric}_mean"], c[f"{metric}_low"], c[f"{metric}_high"], scale, digits))
            else:
                cells.append(_signed(c[f"d_{metric}_mean"], c[f"d_{metric}_low"], c[f"d_{metric}_high"], scale, digits))
        name = labels.get(key, get_method(key).label) + ("" if is_base else " − base")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def detection_table(det: pd.DataFrame) -> str:
    """AUROC (and precision@K) of the suspects ranking for the flips, per detector and flip rate: the
    base losses' margins (the baseline detector), each γ-PO run's γ_i and the primary γ-PO's margins."""
    rates = sorted(det["flip_rate"].unique())
    head = "| detector | " + " | ".join(f"AUROC flip {r:.0%}" for r in rates)
    head += " | " + " | ".join(f"prec@K flip {r:.0%}" for r in rates) + " |"
    lines = [head, "|---" * (2 * len(rates) + 1) + "|"]
    for (key, score), part in det.groupby(["method", "score"], sort=False):
        method = get_method(key)
        if not (score == "gamma" or key == method.base or method.tau == PRIMARY_TAU):
            continue  # margins of the base losses and of γ-PO at the primary τ only
        part = part.set_index("flip_rate")
        au = [_ci(*part.loc[r, ["auroc_mean", "auroc_low", "auroc_high"]], 1.0, 3) for r in rates]
        pr = [_ci(*part.loc[r, ["prec_mean", "prec_low", "prec_high"]], 1.0, 3) for r in rates]
        label = f"{get_method(key).label}, {'γ_i' if score == 'gamma' else 'margin'}"
        lines.append(f"| {label} | " + " | ".join(au + pr) + " |")
    return "\n".join(lines) + "\n"


def detection_diff_table(det: pd.DataFrame) -> str:
    """Paired (same seed) AUROC difference: each γ-PO run's γ_i ranking minus its base run's margins."""
    rates = sorted(det["flip_rate"].unique())
    lines = ["| γ_i ranking − base margins | " + " | ".join(f"flip {r:.0%}" for r in rates) + " |"]
    lines.append("|---" * (len(rates) + 1) + "|")
    for key, part in det[det["score"] == "gamma"].groupby("method", sort=False):
        part = part.set_index("flip_rate")
        cells = [_signed(*part.loc[r, ["d_auroc_mean", "d_auroc_low", "d_auroc_high"]], 1.0, 3) for r in rates]
        lines.append(f"| {get_method(key).label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mechanism_table(mech: pd.DataFrame) -> str:
    """γ-PO at the primary τ, last quarter of training: γ_i − γ0 and median ε_i of clean vs flipped
    pairs, and γ_i − γ0 of clean pairs per |ΔR| bin; mean [95 % CI] over seeds."""
    from nemo_gammapo.study.mechanism import gap_bin_labels

    bins = gap_bin_labels()
    head = "| method | flip | γ−γ0 clean | γ−γ0 flipped | ε clean | ε flipped | "
    head += " | ".join(f"γ−γ0 \\|ΔR\\| {b}" for b in bins) + " |"
    lines = [head, "|---" * (6 + len(bins)) + "|"]
    last = mech[mech["phase"] == mech["phase"].max()]
    for key in [k for k in dict.fromkeys(last["method"]) if get_method(k).tau == PRIMARY_TAU]:
        for rate in sorted(last["flip_rate"].unique()):
            part = last[(last["method"] == key) & (last["flip_rate"] == rate)].set_index(["kind", "group"])

            def cell(kind: str, group: str, prefix: str, part: pd.DataFrame = part) -> str:
                if (kind, group) not in part.index:
                    return "—"
                c = part.loc[(kind, group)]
                return _ci(c[f"{prefix}_mean"], c[f"{prefix}_low"], c[f"{prefix}_high"], 1.0, 4)

            cells = [cell("flip", "clean", "delta"), cell("flip", "flipped", "delta")]
            cells += [cell("flip", "clean", "eps"), cell("flip", "flipped", "eps")]
            cells += [cell("gap", b, "delta") for b in bins]
            lines.append(f"| {get_method(key).label} | {rate:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tuning_table(tuning: pd.DataFrame) -> str:
    """The tuning stage: per tuned loss, mean held-out accuracy (%) [95 % CI] of each candidate ε over
    the tuning seeds, and the ε chosen (the highest mean)."""
    eps = sorted(tuning["epsilon"].unique())
    lines = ["| loss | " + " | ".join(f"ε = {e:g}" for e in eps) + " | chosen ε |", "|---" * (len(eps) + 2) + "|"]
    for loss, part in tuning.groupby("loss", sort=False):
        part = part.set_index("epsilon")
        cells = [
            _ci(*part.loc[e, ["acc_mean", "acc_low", "acc_high"]], 100.0, 1) if e in part.index else "—" for e in eps
        ]
        chosen = part.index[part["chosen"].astype(bool)]
        label = get_method(f"{loss}@eps=tuned").label
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {float(chosen[0]):g} |")
    return "\n".join(lines) + "\n"


def headline_methods(results: pd.DataFrame) -> list[str]:
    """The methods of the main tables, in grid order: all but the non-primary τ."""
    keys = list(dict.fromkeys(results["method"]))
    return [k for k in keys if get_method(k).tau in (None, PRIMARY_TAU)]


def tau_methods(results: pd.DataFrame) -> list[str]:
    keys = list(dict.fromkeys(results["method"]))
    return [k for k in keys if get_method(k).tau is not None or k == get_method(k).base]


def write_outputs(
    results: pd.DataFrame,
    curves: pd.DataFrame,
    mechanism: pd.DataFrame,
    out: Path,
    tuning_runs: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """``results.csv``, ``curves.csv``, ``mechanism.csv``, ``tuning_runs.csv`` (raw) and ``summary.csv``,
    ``detection.csv``, ``mechanism_summary.csv``, ``tuning.csv``, ``tables.md`` (derived)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        name: out / f"{name}.csv"
        for name in ("results", "curves", "mechanism", "summary", "detection", "mechanism_summary")
    }
    paths["tables"] = out / "tables.md"
    results.drop(columns=["wall_s"], errors="ignore").to_csv(paths["results"], index=False, float_format="%.6f")
    curves.to_csv(paths["curves"], index=False, float_format="%.6f")
    mechanism.to_csv(paths["mechanism"], index=False, float_format="%.6f")
    if tuning_runs is not None and len(tuning_runs):
        paths["tuning_runs"] = out / "tuning_runs.csv"
        paths["tuning"] = out / "tuning.csv"
        tuning_runs.drop(columns=["wall_s"], errors="ignore").to_csv(
            paths["tuning_runs"], index=False, float_format="%.6f"
        )
    rederive(out)
    return paths


def read_tuning_runs(out: Path) -> pd.DataFrame | None:
    """``<out>/tuning_runs.csv`` (``None`` when the grid had no tuning stage)."""
    path = out / "tuning_runs.csv"
    return pd.read_csv(path) if path.exists() else None


def rederive(out: Path) -> list[Path]:
    """Rewrite the derived files of ``out`` from its raw CSVs (results, mechanism, tuning runs); returns
    their paths."""
    derived = derive(pd.read_csv(out / "results.csv"), pd.read_csv(out / "mechanism.csv"), read_tuning_runs(out))
    paths = []
    names = ["summary", "detection", "mechanism_summary"] + (["tuning"] if len(derived["tuning"]) else [])
    for name in names:
        paths.append(out / f"{name}.csv")
        derived[name].to_csv(paths[-1], index=False, float_format="%.6f")
    paths.append(out / "tables.md")
    paths[-1].write_text(derived["tables"], encoding="utf-8")
    return paths


def derive(
    results: pd.DataFrame, mechanism: pd.DataFrame, tuning_runs: pd.DataFrame | None = None
) -> dict[str, object]:
    """The derived files from the raw ones (what a test recomputes to check consistency)."""
    summary = summarise(results)
    tuning = summarise_tuning(tuning_runs) if tuning_runs is not None and len(tuning_runs) else pd.DataFrame()
    labels = method_labels(results)
    det = detection_summary(results)
    mech = mechanism_summary(mechanism) if len(mechanism) else pd.DataFrame()
    seeds = results["seed"].nunique()
    heads = headline_methods(results)
    taus = tau_methods(results)
    parts = []
    if len(tuning):
        seeds_used = sorted(tuning_runs["seed"].unique())
        parts += [
            "## Tuning stage: ε of rSimPO / rDPO\n",
            f"Held-out true-preference accuracy (%) at flip {tuning['flip_rate'].iloc[0]:.0%}, mean [95 % bootstrap CI]"
            f" over the {len(seeds_used)} tuning seeds ({', '.join(str(s) for s in seeds_used)}; disjoint from the"
            " evaluation seeds); the chosen ε has the highest mean and is used at every flip rate and"
            " evaluation seed.\n",
            tuning_table(tuning),
        ]
    parts += [
        "## Held-out true-preference accuracy (%)\n",
        f"Base losses: mean [95 % bootstrap CI] over {seeds} seeds; other rows: paired difference to the base"
        " (same seed, data, flips and warm start), in points.\n",
        method_table(summary, "acc", 100.0, 1, heads, labels),
        "## Spearman ρ(implicit reward, R) on held-out responses\n",
        "Same layout; ρ per prompt class, averaged over the classes.\n",
        method_table(summary, "rho", 1.0, 3, heads, labels),
        "## H1: accuracy lost to the flips, paired difference to the base (points)\n",
        "(acc(p) − acc(0)) − (acc_base(p) − acc_base(0)) per seed; > 0: the method degraded less than its base.\n",
        degradation_table(summary, heads, labels),
        "## τ sweep (accuracy, points)\n",
        method_table(summary, "acc", 100.0, 1, taus),
    ]
    if len(det):
        parts += ["## Flip detection by the suspects ranking\n", detection_table(det)]
        parts += ["Paired AUROC difference (same seed), γ_i ranking minus the base loss's margin ranking:\n"]
        parts += [detection_diff_table(det)]
    if len(mech):
        parts += ["## Mechanism: γ_i − γ0 and implied ε_i, last quarter of training\n", mechanism_table(mech)]
    return {
        "summary": summary,
        "detection": det,
        "mechanism_summary": mech,
        "tuning": tuning,
        "tables": "\n".join(parts),
    }
