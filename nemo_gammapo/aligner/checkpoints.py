"""Which checkpoint a run resumes from: the newest *complete* one, whatever NeMo named it.

NeMo marks a checkpoint as being written by a ``<checkpoint>-unfinished`` file beside it and
removes the marker when the save completes. NeMo's own resume looks only at ``*-last`` checkpoints
and stops when the newest ``-last`` is unfinished ("remove it manually"), even when a complete
earlier or top-k checkpoint exists. Here every checkpoint directory counts: unfinished ones (and
any whose name records a non-finite ``val_loss``) are set aside into ``checkpoints-unfinished/`` —
kept for inspection, never deleted — and the complete one with the highest step is chosen.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

UNFINISHED_SUFFIX = "-unfinished"  # NeMoModelCheckpoint.UNFINISHED_CHECKPOINT_SUFFIX
SET_ASIDE_DIR = "checkpoints-unfinished"
_STEP = re.compile(r"(?:^|-)step=(\d+)")
_VAL_LOSS = re.compile(r"val_loss=(-?[^-]+)")


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint directory: its path, the step in its name, and whether it can be resumed."""

    path: Path
    step: int
    finished: bool
    finite: bool

    @property
    def usable(self) -> bool:
        return self.finished and self.finite


def _val_loss_is_finite(name: str) -> bool:
    match = _VAL_LOSS.search(name)
    if match is None:
        return True
    try:
        return math.isfinite(float(match.group(1)))
    except ValueError:
        return True  # not a number we can read: judge by the marker only


def scan(checkpoint_dir: Path) -> list[CheckpointEntry]:
    """Every checkpoint directory with a ``step=`` in its name, oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    entries = []
    for path in sorted(checkpoint_dir.iterdir()):
        match = _STEP.search(path.name)
        if not path.is_dir() or match is None:
            continue
        finished = not Path(str(path) + UNFINISHED_SUFFIX).exists()
        entries.append(CheckpointEntry(path, int(match.group(1)), finished, _val_loss_is_finite(path.name)))
    return sorted(entries, key=lambda e: (e.step, e.path.name.endswith("-last")))


def newest_complete(checkpoint_dir: Path) -> CheckpointEntry | None:
    """The usable checkpoint with the highest step (a ``-last`` one on ties), or None."""
    usable = [e for e in scan(checkpoint_dir) if e.usable]
    return usable[-1] if usable else None


def set_aside_unusable(checkpoint_dir: Path) -> list[Path]:
    """Move unfinished / non-finite checkpoints (and their markers) out of ``checkpoint_dir``.

    Call on one rank only. The directory moves before its marker, so a rank scanning at the same
    time sees either no directory or a directory that is still marked unfinished.
    Returns the new locations.
    """
    checkpoint_dir = Path(checkpoint_dir)
    moved = []
    for entry in scan(checkpoint_dir):
        if entry.usable:
            continue
        target_dir = checkpoint_dir.parent / SET_ASIDE_DIR
        target_dir.mkdir(exist_ok=True)
        target = target_dir / entry.path.name
        n = 1
        while target.exists():
            target, n = target_dir / f"{entry.path.name}.{n}", n + 1
        shutil.move(str(entry.path), str(target))
        marker = Path(str(entry.path) + UNFINISHED_SUFFIX)
        if marker.exists():
            shutil.move(str(marker), str(target) + UNFINISHED_SUFFIX)
        moved.append(target)
    # markers left without a checkpoint (a save killed before its directory appeared)
    for marker in checkpoint_dir.glob(f"*{UNFINISHED_SUFFIX}") if checkpoint_dir.is_dir() else []:
        if marker.is_file() and not Path(str(marker)[: -len(UNFINISHED_SUFFIX)]).exists():
            marker.unlink()
    return moved
