"""Errors a user can act on, and how the entry point reports them: one line, once, no traceback.

Every error here is raised on *every* rank at the same point (start-up checks read the same
configuration and files everywhere; the non-finite guard decides on all-reduced values), so each
rank can stop on its own; only global rank 0 prints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A run stopped for a reason the user can fix; ``str(error)`` is the one line shown."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """An invalid configuration value or input file; the message starts with the full key."""


class RunDirBusy(UserError):
    """Another live run holds the run directory's lock."""

    exit_code = 3


class NonFiniteTraining(UserError):
    """A training or validation step produced a non-finite loss or gradient norm."""

    exit_code = 4


def global_rank() -> int:
    """This process's global rank from the launcher's environment (torchrun, SLURM), else 0."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


@contextmanager
def exit_on_user_error(prog: str = "nemo-gammapo train") -> Iterator[None]:
    """Turn a :class:`UserError` into one line on rank 0's stderr and a non-zero exit.

    Framework errors (bugs, hardware) keep their tracebacks. The process group, if any, is torn
    down first so that no rank waits on a peer that has stopped.
    """
    try:
        yield
    except UserError as error:
        if global_rank() == 0:
            print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # best effort: the error above is what matters
            pass
        raise SystemExit(error.exit_code) from None
