"""Per-pair margin / γ / loss dumps: the parquet schema, its writer and its reader.

Every ``every`` training steps, each last-stage rank with tensor-parallel rank 0 writes its own
data-parallel slice of the step's pairs — at most ``max_pairs`` — to
``<run_dir>/gamma_dumps/step_<step>_dp<rank>.parquet``. The values are the ones the loss already
computed (no extra forward pass) and leave the device once per dumped step, after the
micro-batch loop. Columns: ``step``, ``microbatch``, ``dp_rank``, ``pair`` (index in the global
micro-batch), ``pair_id`` (the pair's content id, :mod:`nemo_gammapo.data.pair_id`; -1 where the
batch carried none), ``margin`` (β-scaled), ``gamma``, ``loss``, ``valid``. ``pair_id`` names the
same pair in every run, layout and resume; dumps written before it existed read back with -1.

The writer (:class:`PairDumper`) runs inside training (``nemo_gammapo.aligner.model``); the
reader (:func:`read_dumps`) serves the plots and analyses and needs neither NeMo nor megatron.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nemo_gammapo.artifacts.metrics import warn_stderr

DUMP_DIR = "gamma_dumps"
COLUMNS = ("step", "microbatch", "dp_rank", "pair", "pair_id", "margin", "gamma", "loss", "valid")
OPTIONAL_COLUMNS = {"pair_id": -1}  # added later; older dumps get this value


class PairDumper:
    """Writes a rank's slice of a step's pairs to ``<run_dir>/gamma_dumps/`` every ``every`` steps (0: never)."""

    def __init__(self, run_dir: str | Path, every: int, max_pairs: int = 256) -> None:
        if every < 0 or max_pairs < 1:
            raise ValueError("gamma_dump.every must be >= 0 and gamma_dump.max_pairs >= 1")
        self.dir = Path(run_dir) / DUMP_DIR
        self.every, self.max_pairs = every, max_pairs

    def due(self, step: int) -> bool:
        """Whether step ``step`` is dumped."""
        return self.every > 0 and step % self.every == 0

    def write(self, step: int, records: list[dict[str, torch.Tensor]], dp_rank: int) -> Path | None:
        """Write this rank's pairs of ``records`` (``GammaPOLoss.pair_log``) as one parquet file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, list[Any]] = {k: [] for k in COLUMNS}
        for mb, rec in enumerate(records):
            losses = rec["local_losses"].float().cpu()
            start, n = int(rec["local_start"]), losses.numel()
            margins = rec["margins"][start : start + n].float().cpu()
            valid = rec["valid"][start : start + n].cpu()
            gamma = (
                rec["gamma"][start : start + n].float().cpu()
                if "gamma" in rec
                else torch.full_like(margins, float("nan"))
            )
            columns["step"] += [step] * n
            columns["microbatch"] += [mb] * n
            columns["dp_rank"] += [dp_rank] * n
            columns["pair"] += list(range(start, start + n))
            ids = rec.get("pair_ids")
            columns["pair_id"] += ids.tolist() if ids is not None and ids.numel() == n else [-1] * n
            columns["margin"] += margins.tolist()
            columns["gamma"] += gamma.tolist()
            columns["loss"] += losses.tolist()
            columns["valid"] += valid.tolist()
        if not columns["step"]:
            return None
        table = pa.table({k: v[: self.max_pairs] for k, v in columns.items()})
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{step:07d}_dp{dp_rank}.parquet"
        pq.write_table(table, path)
        return path


def read_dumps(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> Any:
    """All dumps of a run as one pandas DataFrame (sorted by step, microbatch, pair).

    A dump file that cannot be read as parquet, or lacks a column of the schema above, is skipped
    with a one-line ``warn``-ing naming it (default: stderr), and the others are used. Raises
    ``FileNotFoundError`` when the run directory does not exist or has no dump files, and
    ``ValueError`` when none of its dump files is readable.
    """
    import pandas as pd
    import pyarrow as pa

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        problem = "is not a directory" if run_dir.exists() else "does not exist"
        raise FileNotFoundError(f"run directory {run_dir} {problem}")
    files = sorted((run_dir / DUMP_DIR).glob("step_*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {DUMP_DIR}/step_*.parquet under {run_dir} (is model.dpo.gamma_dump.every > 0?)")
    warn = warn or warn_stderr
    frames = []
    for path in files:
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError, pa.ArrowException) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warn(f"{path}: skipped, not a readable parquet file ({first})")
            continue
        for column, fill in OPTIONAL_COLUMNS.items():
            if column not in frame.columns:
                frame[column] = fill
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            warn(f"{path}: skipped, missing column(s) {missing}")
            continue
        frames.append(frame)
    if not frames:
        raise ValueError(f"none of the {len(files)} dump file(s) under {run_dir / DUMP_DIR} is readable")
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(["step", "microbatch", "pair"]).reset_index(drop=True)
