"""``nemo-gammapo launch``: start a γ-PO training run through NeMo-Run executors, then follow it.

    nemo-gammapo launch local --config-name tiny_cpu run_dir=runs/demo
    nemo-gammapo launch slurm --account ACCT --partition batch --nodes 1 --ntasks-per-node 8 \\
        --config-name llama3_8b_instruct run_dir=/lustre/me/runs/8b
    nemo-gammapo launch status EXPERIMENT_ID
    nemo-gammapo launch logs EXPERIMENT_ID

Every run starts the training entry point ``python -m nemo_gammapo.aligner.entry --config-name NAME
[overrides...]``; the Hydra overrides come last (``--`` before them is optional). Before anything is
submitted the configuration is composed and every start-up check of ``nemo-gammapo train
--check-only`` runs here, so a bad key, layout, batch or data file stops with one line (exit code 2)
and a busy ``run_dir`` with exit code 3. Launching again with the same ``run_dir`` resumes from its
last checkpoint.

* ``local``: NeMo-Run's ``LocalExecutor`` with its torchrun launcher, ``trainer.devices`` workers on
  this machine; the command returns when the run ends.
* ``slurm``: NeMo-Run's ``SlurmExecutor`` submitting with ``sbatch`` from this machine
  (``LocalTunnel``). One SLURM task per device: ``trainer.num_nodes`` and ``trainer.devices`` are
  set from ``--nodes`` / ``--ntasks-per-node``; each task gets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``
  from ``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NTASKS`` and the batch script exports
  ``MASTER_ADDR`` (first node) / ``MASTER_PORT`` (from the job id), like ``examples/slurm/common.sh``.
  With ``--container-image`` the tasks run in a pyxis container; without it (*host mode*) they run
  this machine's Python (``--python``) from the current folder. The command returns once the job is
  queued (``--wait``: when it has ended).

NeMo-Run keeps its experiments in ``$NEMORUN_HOME`` (default ``~/.nemo_run``; ``--home`` sets it).
``status`` and ``logs`` take the experiment id printed at submission (or its title: the latest one).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_gammapo.aligner.cli import ENTRY_MODULE, compose
from nemo_gammapo.aligner.errors import ConfigError, UserError
from nemo_gammapo.aligner.run_dir import RunDirLock
from nemo_gammapo.configs import config_dir

PROG = "nemo-gammapo launch"
TASK = "train"  # the experiment's one task; also the SLURM job name's last part
JOB_PREFIX = "gammapo."  # SLURM job name: gammapo.train (NeMo-Run reads the task back after the last '.')
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")

# Per task under srun: torchrun-style rank variables from SLURM's (the entry point reads either).
RANK_ENV = "export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS"
RENDEZVOUS_SCRIPT = Path(__file__).with_name("rendezvous.sh")  # shared with examples/slurm/common.sh


def rendezvous_lines() -> str:
    """In the batch script, before the training srun: one rendezvous for all tasks (MASTER_ADDR from
    the first node's NodeAddr, MASTER_PORT, GLOO_/NCCL_SOCKET_IFNAME from that node's link)."""
    return f"{RENDEZVOUS_SCRIPT.read_text()}gammapo_rendezvous"


# Host mode: NeMo-Run 0.3.0 writes pyxis' --container-mounts/--container-workdir into every training
# srun line even without an image, and a cluster without pyxis rejects them; drop them in the script.
HOST_SRUN = """\
# host mode (no container image): drop the pyxis flags NeMo-Run adds to every srun line
srun() {
    local args=()
    while (($#)); do
        case "$1" in
            --container-mounts | --container-workdir) shift 2 ;;
            --container-mounts=* | --container-workdir=*) shift ;;
            *) args+=("$1"); shift ;;
        esac
    done
    command srun "${args[@]}"
}"""


@dataclass
class Training:
    """The training command: a config, its folder and Hydra overrides."""

    config_name: str
    config_dir: Path
    overrides: list[str] = field(default_factory=list)

    def argv(self, python: str) -> list[str]:
        """``python -m nemo_gammapo.aligner.entry --config-dir DIR --config-name NAME [overrides]``."""
        head = [python, "-m", ENTRY_MODULE, "--config-dir", str(self.config_dir), "--config-name", self.config_name]
        return [*head, *self.overrides]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=None, help="experiment title (default: gammapo-<config name>)")
    p.add_argument("--home", type=Path, default=None, help="NeMo-Run's folder (default: $NEMORUN_HOME or ~/.nemo_run)")
    p.add_argument("--dry-run", action="store_true", help="check, then print what would run; submit nothing")
    p.add_argument("--config-name", default="gpt_gammapo", help="a config in --config-dir (default: gpt_gammapo)")
    p.add_argument("--config-dir", type=Path, default=config_dir(), help="folder of the Hydra configs")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. run_dir=runs/x model.dpo.gamma.tau=5.0")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="{local,slurm,status,logs}")

    local = sub.add_parser("local", help="torchrun on this machine (NeMo-Run LocalExecutor); waits for the end")
    _add_common(local)

    slurm = sub.add_parser("slurm", help="submit with sbatch from this machine (NeMo-Run SlurmExecutor)")
    slurm.add_argument("--account", default=None, help="sbatch --account")
    slurm.add_argument("--partition", default=None, help="sbatch --partition")
    slurm.add_argument("--time", default="01:00:00", help="sbatch --time (default: 01:00:00)")
    slurm.add_argument("--nodes", type=int, default=1, help="nodes (sets trainer.num_nodes; default: 1)")
    slurm.add_argument("--ntasks-per-node", type=int, default=1, help="tasks per node (sets trainer.devices)")
    slurm.add_argument("--gpus-per-node", type=int, default=None, help="sbatch --gpus-per-node")
    slurm.add_argument("--container-image", default=None, help="pyxis image; without it the tasks run on the host")
    slurm.add_argument(
        "--container-mounts", action="append", default=[], metavar="SRC:DST", help="pyxis mount (repeatable)"
    )
    slurm.add_argument("--python", default=None, help="the tasks' Python (default: this one; 'python' in a container)")
    slurm.add_argument("--wait", action="store_true", help="wait for the job to end; exit 0 only if it succeeded")
    _add_common(slurm)

    for name, help_ in (("status", "the state of an experiment's job"), ("logs", "the training output of a job")):
        q = sub.add_parser(name, help=help_)
        q.add_argument("experiment", help="experiment id (or title: its latest run)")
        q.add_argument("--home", type=Path, default=None, help="NeMo-Run's folder (default: $NEMORUN_HOME)")
    return p


def split_training(args: argparse.Namespace) -> Training:
    """The training command; ``--config-name``/``--config-dir`` written after ``--`` count too."""
    name, folder, overrides = args.config_name, args.config_dir, []
    items = iter(args.overrides)
    for item in items:
        if item in ("--config-name", "--config-dir"):
            value = next(items, None)
            if value is None:
                raise ConfigError(f"{item} needs a value")
            name, folder = (value, folder) if item == "--config-name" else (name, Path(value))
        elif item.startswith(("--config-name=", "--config-dir=")):
            key, _, value = item.partition("=")
            name, folder = (value, folder) if key == "--config-name" else (name, Path(value))
        elif item.startswith("-"):
            raise ConfigError(f"{item}: not a Hydra override (launch options go before the overrides)")
        else:
            overrides.append(item)
    return Training(name, folder.resolve(), overrides)


def set_layout(training: Training, nodes: int, tasks_per_node: int) -> None:
    """Pin ``trainer.num_nodes``/``trainer.devices`` to the job's task counts; a different value is an error."""
    for key, value in (("trainer.num_nodes", nodes), ("trainer.devices", tasks_per_node)):
        given = [o.split("=", 1)[1] for o in training.overrides if o.startswith(f"{key}=")]
        if any(g != str(value) for g in given):
            raise ConfigError(f"{key}={given[-1]} disagrees with the job's {value} (set by the launch options)")
        training.overrides = [o for o in training.overrides if not o.startswith(f"{key}=")] + [f"{key}={value}"]


def check(training: Training) -> Any:
    """Compose the config and run every start-up check (as ``nemo-gammapo train --check-only``); the config."""
    from nemo_gammapo.aligner.preflight import preflight

    cfg = compose(training.config_dir, training.config_name, training.overrides)
    checked = preflight(cfg, warn=lambda msg: print(f"{PROG}: warning: {msg}", file=sys.stderr))
    RunDirLock(Path(cfg.exp_manager.explicit_log_dir)).check_free()
    layout = checked["layout"]
    print(
        f"{PROG}: checks passed: {layout.world_size} processes, {checked['pairs']['train']} training pairs, "
        f"run_dir {cfg.run_dir}",
        flush=True,
    )
    return cfg


def check_partition_nodes(partition: str | None, nodes: int) -> None:
    """``--nodes`` against what the partition has (``sinfo``; its default partition without one).

    Skipped where ``sinfo`` is not on PATH (a dry run on a laptop); ``sbatch`` then has the last word.
    """
    if shutil.which("sinfo") is None:
        return
    argv = ["sinfo", "-h", "-N", "-o", "%N %P"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return  # no controller to ask: sbatch reports it
    names: dict[str, set[str]] = {}
    default = None
    for line in proc.stdout.split("\n"):
        if not line.strip():
            continue
        node, part = line.split()
        if part.endswith("*"):
            part = part[:-1]
            default = part
        names.setdefault(part, set()).add(node)
    part = partition or default
    if part is None or part not in names:
        raise ConfigError(f"--partition {partition}: no such partition (partitions: {', '.join(sorted(names))})")
    if nodes > len(names[part]):
        raise ConfigError(f"--nodes {nodes}: partition {part} has {len(names[part])} nodes")


def use_home(home: Path | None) -> str:
    """Point NeMo-Run at ``home`` (it reads ``NEMORUN_HOME`` once, when imported); the folder in use."""
    if home is not None:
        os.environ["NEMORUN_HOME"] = str(home.resolve())
    import nemo_run.config

    if home is not None and nemo_run.config.NEMORUN_HOME != str(home.resolve()):
        raise ConfigError(
            f"--home {home}: NeMo-Run was already imported with NEMORUN_HOME={nemo_run.config.NEMORUN_HOME}"
        )
    return nemo_run.config.NEMORUN_HOME


def slurm_executor(args: argparse.Namespace, home: str) -> Any:
    """The ``run.SlurmExecutor`` for these options (host mode without ``--container-image``)."""
    import nemo_run as run

    host = args.container_image is None
    setup = [rendezvous_lines(), "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}"] + ([HOST_SRUN] if host else [])
    return run.SlurmExecutor(
        account=args.account,  # None: no --account line (NeMo-Run types it str but only formats it)
        partition=args.partition,
        time=args.time,
        nodes=args.nodes,
        ntasks_per_node=args.ntasks_per_node,
        gpus_per_node=args.gpus_per_node,
        container_image=args.container_image,
        container_mounts=list(args.container_mounts),
        job_name_prefix=JOB_PREFIX,
        setup_lines="\n".join(setup),
        additional_parameters={"chdir": os.getcwd()} if host else None,
        tunnel=run.LocalTunnel(job_dir=os.path.join(home, "experiments")),
        packager=run.Packager(),  # nothing to copy: the code is installed (host) or in the image
    )


def slurm_task(training: Training, python: str) -> Any:
    """One ``bash -c '<rank env>; exec python -m ...entry ...'`` per SLURM task."""
    import nemo_run as run

    inner = f"{RANK_ENV}; exec {shlex.join(training.argv(python))}"
    return run.Script(path="-c", args=[shlex.quote(inner)], entrypoint="bash")


def local_task(training: Training) -> Any:
    """The entry point as a module, for NeMo-Run's torchrun launcher."""
    import nemo_run as run

    unsafe = [o for o in training.overrides if shlex.quote(o) != o]
    if unsafe:  # NeMo-Run shell-quotes torchrun's arguments but runs it without a shell
        raise ConfigError(f"launch local: override {unsafe[0]!r} needs shell quoting, which NeMo-Run passes on")
    argv = training.argv("python")
    return run.Script(path=ENTRY_MODULE, m=True, entrypoint="python", args=argv[3:])


def submit(args: argparse.Namespace) -> int:
    training = split_training(args)
    if args.command == "slurm":
        set_layout(training, args.nodes, args.ntasks_per_node)
    cfg = check(training)
    if args.command == "slurm" and not args.dry_run:
        check_partition_nodes(args.partition, args.nodes)
    if args.command == "local" and cfg.trainer.num_nodes != 1:
        raise ConfigError(f"launch local runs on one machine: trainer.num_nodes={cfg.trainer.num_nodes}")

    home = use_home(args.home)
    import nemo_run as run

    title = args.name or f"gammapo-{training.config_name}"
    if not re.fullmatch(r"[\w.-]+", title):
        raise ConfigError(f"--name {title!r}: letters, digits, '.', '-' and '_' only")
    exp_id = f"{title}_{int(time.time())}"
    if args.command == "slurm":
        executor = slurm_executor(args, home)
        python = args.python or ("python" if args.container_image else sys.executable)
        task = slurm_task(training, python)
    else:
        executor = run.LocalExecutor(ntasks_per_node=int(cfg.trainer.devices), launcher="torchrun")
        executor.env_vars["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        executor.env_vars.setdefault("OMP_NUM_THREADS", "1")
        task = local_task(training)

    with run.Experiment(title, executor=executor, id=exp_id, base_dir=home, log_level="WARN") as exp:
        exp.add(task, name=TASK)
        if args.dry_run:
            exp.dryrun(log=False, delete_exp_dir=False)
            print(dry_run_text(exp))
            shutil.rmtree(Path(home, "experiments", title, exp_id))  # nothing was submitted: leave no trace
            return 0
        exp.run(detach=args.command == "slurm")
    print(f"{PROG}: experiment {exp_id}: `{PROG} status {exp_id}`, `{PROG} logs {exp_id}`", flush=True)
    if args.command == "local":
        return 0 if job_state(exp) == "SUCCEEDED" else 1
    if not args.wait:
        return 0
    state = job_state(exp)
    while state not in TERMINAL:
        time.sleep(1)
        state = job_state(exp)
    print(f"{PROG}: experiment {exp_id}: {state}", flush=True)
    return 0 if state == "SUCCEEDED" else 1


def dry_run_text(exp: Any) -> str:
    """What a submission would run: the sbatch script (SLURM) or the worker command (local)."""
    from nemo_run import SlurmExecutor

    job = exp.jobs[0]
    executor = job.executor  # the experiment's copy, assigned to its folder
    if isinstance(executor, SlurmExecutor):
        return Path(executor.experiment_dir, f"{executor.job_name}_sbatch.sh").read_text(encoding="utf-8")
    role = job._executable.roles[0]  # the AppDef NeMo-Run built; no public accessor in 0.3.0
    return shlex.join([role.entrypoint, *role.args])


def job_state(exp: Any) -> str:
    """The task's state as NeMo-Run reports it (``sacct`` under SLURM): RUNNING, SUCCEEDED, ..."""
    info = exp.status(return_dict=True) or {}
    state = info.get(TASK, {}).get("status")
    return getattr(state, "name", str(state))


def open_experiment(args: argparse.Namespace) -> Any:
    use_home(args.home)
    import nemo_run as run

    try:
        return run.Experiment.from_id(args.experiment)
    except AssertionError:
        pass
    try:
        return run.Experiment.from_title(args.experiment)
    except (AssertionError, FileNotFoundError, IndexError):
        raise ConfigError(f"no experiment {args.experiment!r} in NeMo-Run's folder") from None


def status(args: argparse.Namespace) -> int:
    exp = open_experiment(args)
    info = exp.status(return_dict=True) or {}
    for name, job in info.items():
        state = getattr(job["status"], "name", str(job["status"]))
        exp_id = Path(job["local_dir"]).parent.name  # NeMo-Run's folder <experiments>/<title>/<id>/<task>
        print(f"{exp_id} {name}: {state} (job {job.get('job_id') or '-'}, {job['local_dir']})")
    return 0


def logs(args: argparse.Namespace) -> int:
    exp = open_experiment(args)  # first: it points NeMo-Run at --home before NeMo-Run is imported
    from nemo_run.run.logs import get_logs
    from nemo_run.run.torchx_backend.runner import get_runner

    for job in exp.jobs:
        if not job.handle:
            raise ConfigError(f"experiment {args.experiment}: task {job.id} was never submitted")
        get_logs(sys.stdout, identifier=job.handle, regex=None, should_tail=False, runner=get_runner())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "status":
            return status(args)
        if args.command == "logs":
            return logs(args)
        return submit(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
