"""``nemo-gammapo train``: check the run in one light process, then start the workers with torchrun.

    nemo-gammapo train --config-name tiny_cpu run_dir=runs/demo model.dpo.gamma.tau=5.0
    nemo-gammapo train --nproc-per-node 8 --config-name llama3_8b_instruct pretrained_checkpoint...=...

The configuration is composed exactly as ``examples/train_gpt_gammapo.py`` composes it (same
``conf/`` folder, same Hydra overrides) and every start-up check runs here first
(:mod:`nemo_gammapo.aligner.preflight`): a bad key, layout, batch, interval or data file stops
with one line and exit code 2 before any worker, model or process group exists. Then torchrun's
own launcher starts ``trainer.devices`` workers on this node (``--nnodes``/``--node-rank``/
``--master-addr`` for several nodes). A worker that stops on a user error has already printed its
one line, so its exit code is passed on without torchrun's failure report; any other failure gets
one line naming the rank and exit code (its traceback is in the worker output above).
For SLURM use ``examples/slurm/`` (srun starts the workers; the same checks run in every task).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nemo_gammapo.aligner.errors import ConfigError, UserError
from nemo_gammapo.aligner.run_dir import RunDirLock
from nemo_gammapo.configs import config_dir

ENTRY_MODULE = "nemo_gammapo.aligner.entry"  # the worker, started with ``torchrun -m``
PROG = "nemo-gammapo train"


def build_parser(prog: str = PROG, description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description or __doc__.split("\n\n")[0])
    p.add_argument("--config-name", default="gpt_gammapo", help="a config in --config-dir (default: gpt_gammapo)")
    p.add_argument("--config-dir", type=Path, default=config_dir(), help="folder of the Hydra configs")
    p.add_argument("--nproc-per-node", type=int, default=None, help="workers on this node (default: trainer.devices)")
    p.add_argument("--nnodes", type=int, default=None, help="nodes (default: trainer.num_nodes)")
    p.add_argument("--node-rank", type=int, default=0, help="this node's rank (multi-node)")
    p.add_argument("--master-addr", default="127.0.0.1", help="rank 0's address (multi-node)")
    p.add_argument("--master-port", type=int, default=None, help="rank 0's port (default: a free one)")
    p.add_argument("--check-only", action="store_true", help="run the start-up checks and exit")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.dpo.gamma.tau=5.0")
    return p


def compose(config_dir: Path, config_name: str, overrides: list[str]):  # -> DictConfig
    """The run's configuration, as Hydra composes it for the entry point; errors name the override."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from nemo_gammapo.configs import compose as compose_config

    if not (config_dir / f"{config_name}.yaml").is_file():
        raise ConfigError(f"--config-name {config_name}: no {config_name}.yaml in {config_dir}")
    try:
        return compose_config(config_name, overrides, config_dir)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(
            "override: " + " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        ) from None


def main(
    argv: list[str] | None = None,
    prog: str = PROG,
    entry_module: str = ENTRY_MODULE,
    adjust: Callable[[Any], None] | None = None,
    needs_run_dir: bool = True,
    description: str | None = None,
) -> int:
    """``nemo-gammapo train``; other commands that start workers the same way pass their own
    ``entry_module``, ``adjust`` the composed config before the checks, and may not need the
    run_dir (``needs_run_dir=False``: no lock check)."""
    args = build_parser(prog, description).parse_args(argv)
    from nemo_gammapo.aligner.preflight import preflight

    try:
        cfg = compose(args.config_dir, args.config_name, args.overrides)
        if adjust is not None:
            adjust(cfg)
        nproc = args.nproc_per_node or cfg.trainer.devices
        nnodes = args.nnodes or cfg.trainer.num_nodes
        if (nproc, nnodes) != (cfg.trainer.devices, cfg.trainer.num_nodes):
            raise ConfigError(
                f"--nproc-per-node {nproc} / --nnodes {nnodes} disagree with trainer.devices={cfg.trainer.devices} / "
                f"trainer.num_nodes={cfg.trainer.num_nodes}; set those keys instead"
            )
        checked = preflight(cfg, warn=lambda msg: print(f"{prog}: warning: {msg}", file=sys.stderr))
        if needs_run_dir:
            RunDirLock(Path(cfg.exp_manager.explicit_log_dir)).check_free()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    layout = checked["layout"]
    print(
        f"{prog}: checks passed: {layout.world_size} processes (TP {layout.tensor} × PP {layout.pipeline} × "
        f"CP {layout.context} × DP {layout.data}), {checked['pairs']['train']} training pairs, validation every "
        f"{checked['val_check_interval']} steps",
        flush=True,
    )
    if args.check_only:
        return 0
    return launch(args, nproc, nnodes, prog, entry_module)


def launch(
    args: argparse.Namespace, nproc: int, nnodes: int, prog: str = PROG, entry_module: str = ENTRY_MODULE
) -> int:
    """Start the workers with torchrun's launcher in this process; returns the job's exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    torchrun = [f"--nproc-per-node={nproc}", f"--nnodes={nnodes}"]
    if nnodes == 1:
        torchrun.append("--standalone")
    else:
        port = args.master_port or 29500
        torchrun += [f"--node-rank={args.node_rank}", f"--master-addr={args.master_addr}", f"--master-port={port}"]
    script = ["-m", entry_module, "--config-dir", str(args.config_dir.resolve()), "--config-name", args.config_name]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # torchrun's agent logs each worker's exit; the workers' own messages (and ours below) say more.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args([*torchrun, *script, *args.overrides]))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode not in {cls.exit_code for cls in (UserError, *UserError.__subclasses__())}:
            print(f"{prog}: error: worker rank {rank} failed with exit code {failure.exitcode} (see its output above)")
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0
