"""Per-pair margin / γ / loss dumps written during training (for plots and analysis).

Every ``every`` training steps, each last-stage rank with tensor-parallel rank 0 writes its own
data-parallel slice of the step's pairs — at most ``max_pairs`` — to
``<run_dir>/gamma_dumps/step_<step>_dp<rank>.parquet``. The values are the ones the loss already
computed (no extra forward pass) and leave the device once per dumped step, after the
micro-batch loop. Columns: ``step``, ``microbatch``, ``dp_rank``, ``pair`` (index in the global
micro-batch), ``margin`` (β-scaled), ``gamma``, ``loss``, ``valid``. NeMo-Aligner's collate does
not carry dataset ids, so a pair is identified by (step, microbatch, pair).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DUMP_DIR = "gamma_dumps"


class PairDumper:
    def __init__(self, run_dir: str | Path, every: int, max_pairs: int = 256) -> None:
        if every < 0 or max_pairs < 1:
            raise ValueError("gamma_dump.every must be >= 0 and gamma_dump.max_pairs >= 1")
        self.dir = Path(run_dir) / DUMP_DIR
        self.every, self.max_pairs = every, max_pairs

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def write(self, step: int, records: list[dict[str, torch.Tensor]], dp_rank: int) -> Path | None:
        """Write this rank's pairs of ``records`` (``GammaPOLoss.pair_log``) as one parquet file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, list[Any]] = {
            k: [] for k in ("step", "microbatch", "dp_rank", "pair", "margin", "gamma", "loss", "valid")
        }
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


def read_dumps(run_dir: str | Path) -> Any:
    """All dumps of a run as one pandas DataFrame (sorted by step, microbatch, pair)."""
    import pandas as pd

    files = sorted((Path(run_dir) / DUMP_DIR).glob("step_*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {DUMP_DIR}/step_*.parquet under {run_dir} (is model.dpo.gamma_dump.every > 0?)")
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return frame.sort_values(["step", "microbatch", "pair"]).reset_index(drop=True)
