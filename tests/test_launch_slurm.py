"""SLURM scripts and Docker helpers: shellcheck-clean, and their dry runs print correct commands.

No SLURM, pyxis or Docker is needed here: every script has a DRY_RUN=1 mode that only prints, and
the batch shell's stop-and-requeue logic is checked with stand-ins for srun and scontrol. The same
scripts on a real SLURM cluster: tests/test_slurm_preemption.py.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SBATCH = sorted((ROOT / "examples" / "slurm").glob("*.sbatch"))
SHELL_FILES = [*SBATCH, ROOT / "examples" / "slurm" / "common.sh", *sorted((ROOT / "docker").glob("*.sh"))]


def shellcheck() -> str:
    for candidate in (ROOT / ".venv" / "bin" / "shellcheck", shutil.which("shellcheck")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("shellcheck not found (.venv/bin/shellcheck or PATH)")


def test_scripts_exist() -> None:
    names = {p.name for p in SBATCH}
    assert {"gammapo_single_node.sbatch", "gammapo_multi_node.sbatch"} <= names


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_shellcheck_clean(path: Path) -> None:
    proc = subprocess.run(
        [shellcheck(), "-x", "--severity=style", str(path.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "NCCL_"))}
    for key in ("NODES", "GPUS_PER_NODE", "CONFIG", "EXTRA_ARGS", "STOP_AFTER_STEPS", "RUN_NAME", "CONTAINER_IMAGE"):
        env.pop(key, None)
    env.update(extra)
    return env


def dry_run(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "examples" / "slurm" / script)],
        cwd=ROOT,
        env=clean_env(DRY_RUN="1", MASTER_ADDR="node001", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def parse_srun(stdout: str) -> tuple[list[str], list[str]]:
    """(srun arguments up to `bash -c`, the training command inside it), via a real shell parser."""
    text = stdout[stdout.index("srun ") :]
    argv = shlex.split(text.replace("\\\n", " "))
    assert argv[0] == "srun" and argv[-3:-1] == ["bash", "-c"], argv
    inner = argv[-1]
    setup, _, command = inner.partition("; exec ")
    assert "RANK=$SLURM_PROCID" in setup and "LOCAL_RANK=$SLURM_LOCALID" in setup
    assert "WORLD_SIZE=$SLURM_NTASKS" in setup
    return argv[:-3], shlex.split(command)


def option(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, args)
    return values[0]


@pytest.mark.parametrize("nodes", [1, 2, 8])
@pytest.mark.parametrize("script", ["gammapo_multi_node.sbatch", "gammapo_single_node.sbatch"])
def test_dry_run_prints_correct_srun(tmp_path: Path, script: str, nodes: int) -> None:
    proc = dry_run(
        script,
        NODES=str(nodes),
        CONFIG="llama3_70b_instruct",
        DATA_DIR=str(tmp_path / "data"),
        CKPT_DIR=str(tmp_path / "ckpt"),
        RESULTS_DIR=str(tmp_path / "res"),
        STOP_AFTER_STEPS="200",
        EXTRA_ARGS="model.dpo.gamma.tau=5.0",
        GPUS_PER_NODE="8",
    )
    assert proc.returncode == 0, proc.stderr
    assert "export MASTER_ADDR=node001 MASTER_PORT=" in proc.stdout
    srun, train = parse_srun(proc.stdout)
    assert option(srun, "nodes") == str(nodes)
    assert option(srun, "ntasks-per-node") == "8"
    assert option(srun, "ntasks") == str(8 * nodes)  # one task per GPU
    assert option(srun, "container-image") == "nvcr.io#nvidia/nemo:25.02.01"
    mounts = dict(m.split(":")[::-1] for m in option(srun, "container-mounts").split(","))
    assert mounts["/data"] == str(tmp_path / "data") and mounts["/ckpt"] == str(tmp_path / "ckpt")
    assert mounts["/results"] == str(tmp_path / "res") and mounts["/opt/nemo_gammapo"] == str(ROOT)
    assert option(srun, "container-workdir") == "/opt/nemo_gammapo"
    assert option(srun, "output").startswith(str(tmp_path / "res" / "llama3_70b_instruct" / "slurm_logs"))
    assert train[:5] == ["python", "-u", "examples/train_gpt_gammapo.py", "--config-name", "llama3_70b_instruct"]
    overrides = train[5:]
    for expected in (
        "run_dir=/results/llama3_70b_instruct",  # fixed run folder: a rerun/requeue resumes from it
        f"trainer.num_nodes={nodes}",
        "trainer.devices=8",
        "pretrained_checkpoint.restore_from_path=/ckpt/llama3_70b_instruct.nemo",
        "model.data.data_prefix.train=[/data/train.jsonl]",
        "model.data.data_prefix.validation=[/data/val.jsonl]",
        "trainer.dpo.stop_after_steps=200",
        "model.dpo.gamma.tau=5.0",
    ):
        assert expected in overrides, (expected, overrides)


def test_gpus_per_node_and_prebuilt_image(tmp_path: Path) -> None:
    proc = dry_run(
        "gammapo_multi_node.sbatch",
        NODES="2",
        GPUS_PER_NODE="4",
        CONTAINER_IMAGE="/lustre/img/nemo-gammapo.sqsh",
        MOUNT_REPO="0",
        RESULTS_DIR=str(tmp_path),
        EXTRA_MOUNTS="/lustre/hf:/hf",
        SRUN_ARGS="--cpu-bind=none --mpi=pmix",
        NCCL_IB_HCA="mlx5_0,mlx5_1",
    )
    assert proc.returncode == 0, proc.stderr
    assert "NCCL_IB_HCA=mlx5_0,mlx5_1" in proc.stdout and "CUDA_DEVICE_MAX_CONNECTIONS=1" in proc.stdout
    srun, train = parse_srun(proc.stdout)
    assert "--cpu-bind=none" in srun and "--mpi=pmix" in srun
    assert option(srun, "container-mounts").endswith(",/lustre/hf:/hf")
    assert (option(srun, "ntasks-per-node"), option(srun, "ntasks")) == ("4", "8")
    assert option(srun, "container-image") == "/lustre/img/nemo-gammapo.sqsh"
    assert "/opt/nemo_gammapo" not in option(srun, "container-mounts")  # the image's installed copy is used
    assert "trainer.devices=4" in train and "trainer.num_nodes=2" in train


def test_socket_interfaces_are_the_users_when_set() -> None:
    """The rendezvous picks the node link only for what the user left unset."""
    proc = dry_run(
        "gammapo_multi_node.sbatch", NODES="2", GPUS_PER_NODE="8", GLOO_SOCKET_IFNAME="ib0", NCCL_SOCKET_IFNAME="^lo"
    )
    assert proc.returncode == 0, proc.stderr
    assert "GLOO_SOCKET_IFNAME=ib0" in proc.stdout and "NCCL_SOCKET_IFNAME=^lo" in proc.stdout


def test_defaults_and_allocation_mismatch() -> None:
    proc = dry_run("gammapo_multi_node.sbatch", GPUS_PER_NODE="8")
    assert proc.returncode == 0, proc.stderr
    srun, train = parse_srun(proc.stdout)
    assert option(srun, "nodes") == "4" and "--config-name" in train and "llama3_70b_instruct" in train
    proc = dry_run("gammapo_single_node.sbatch", GPUS_PER_NODE="8")
    srun, train = parse_srun(proc.stdout)
    assert option(srun, "nodes") == "1" and "llama3_8b_instruct" in train
    # inside an allocation the node count must agree with it
    proc = dry_run("gammapo_multi_node.sbatch", NODES="8", SLURM_JOB_NUM_NODES="4", GPUS_PER_NODE="8")
    assert proc.returncode != 0 and "allocation has 4 nodes" in proc.stderr
    proc = dry_run("gammapo_multi_node.sbatch", SLURM_JOB_NUM_NODES="2", SLURM_JOB_ID="12345", GPUS_PER_NODE="8")
    srun, _ = parse_srun(proc.stdout)
    # 20000 + 10 × (job id mod 2000) + restart count mod 10 (nemo_gammapo/launch/rendezvous.sh)
    assert option(srun, "nodes") == "2" and "MASTER_PORT=23450" in proc.stdout
    again = dry_run(
        "gammapo_multi_node.sbatch",
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_ID="12345",
        SLURM_RESTART_COUNT="3",
        GPUS_PER_NODE="8",
    )
    assert "MASTER_PORT=23453" in again.stdout  # a requeued incarnation never reuses its predecessor's port


@pytest.mark.parametrize(
    "allocation,tasks,error",
    [
        ({}, None, "GPUS_PER_NODE must be set outside a SLURM job"),  # no silent default of 8
        ({"SLURM_JOB_ID": "7"}, None, "sbatch --ntasks-per-node=N"),  # a job that says nothing
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "2"}, "2", None),  # CPU cluster, host mode
        ({"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "4"}, "4", None),  # --gpus-per-node only
        ({"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "8", "SLURM_NTASKS_PER_NODE": "8"}, "8", None),
        ({"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "8", "SLURM_NTASKS_PER_NODE": "2"}, None, "one task per GPU"),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "2", "GPUS_PER_NODE": "4"}, None, "2 tasks per node"),
    ],
)
def test_tasks_per_node_come_from_the_allocation(allocation: dict, tasks: str | None, error: str | None) -> None:
    proc = dry_run("gammapo_single_node.sbatch", **allocation)
    if error is not None:
        assert proc.returncode == 2 and error in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    srun, train = parse_srun(proc.stdout)
    assert option(srun, "ntasks-per-node") == tasks and f"trainer.devices={tasks}" in train


def test_host_mode_runs_the_hosts_python_on_host_paths(tmp_path: Path) -> None:
    """CONTAINER_IMAGE set but empty: no pyxis flags at all (srun without pyxis rejects them)."""
    python = tmp_path / "venv" / "bin" / "python"
    proc = dry_run(
        "gammapo_single_node.sbatch",
        CONTAINER_IMAGE="",
        GPUS_PER_NODE="2",
        CONFIG="tiny_cpu",
        PYTHON=str(python),
        DATA_DIR=str(tmp_path / "my data"),  # a space survives the two levels of quoting
        RESULTS_DIR=str(tmp_path / "res"),
        MODEL_FILE="",  # the preset's own starting point
    )
    assert proc.returncode == 0, proc.stderr
    assert "host mode" in proc.stdout
    srun, train = parse_srun(proc.stdout)
    assert not [a for a in srun if a.startswith("--container") or a.startswith("--no-container")], srun
    assert option(srun, "chdir") == str(ROOT)
    assert train[:3] == [str(python), "-u", "examples/train_gpt_gammapo.py"]
    assert f"run_dir={tmp_path / 'res' / 'tiny_cpu'}" in train
    assert f"model.data.data_prefix.train=[{tmp_path / 'my data' / 'train.jsonl'}]" in train
    assert not [a for a in train if a.startswith("pretrained_checkpoint.")], train
    assert "trainer.devices=2" in train
    # without PYTHON: the checkout's .venv if it has one (README setup), else python3
    proc = dry_run("gammapo_single_node.sbatch", CONTAINER_IMAGE="", GPUS_PER_NODE="1")
    _, train = parse_srun(proc.stdout)
    venv = ROOT / ".venv" / "bin" / "python"
    assert train[0] == (str(venv) if venv.exists() else "python3")


def test_not_in_a_job_without_dry_run() -> None:
    env = clean_env(NODES="1", GPUS_PER_NODE="1")
    proc = subprocess.run(
        ["bash", str(ROOT / "examples/slurm/gammapo_single_node.sbatch")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "not inside a SLURM job" in proc.stderr


def test_sbatch_headers_request_resume_and_assume_no_hardware() -> None:
    for path in SBATCH:
        text = path.read_text()
        for directive in ("--requeue", "--signal=B:USR1@"):
            assert f"#SBATCH {directive}" in text, (path.name, directive)
        # GPU and task counts are the submitter's (clusters without GPU gres reject --gpus-per-node)
        for directive in ("--gpus-per-node", "--ntasks-per-node", "--exclusive"):
            assert f"#SBATCH {directive}" not in text, (path.name, directive)


FAKE_SRUN = """#!/usr/bin/env bash
# stands in for srun: training steps; like the real rank 0, it takes the stop file after a step,
# "checkpoints" and exits 0. FAKE_IGNORE_STOP=1: training ends on its own (exit 0) without taking it.
echo "started" >> "$FAKE_LOG"
[[ "${FAKE_FINISH:-0}" == 1 ]] && exit 0
for _ in $(seq 300); do
    sleep 0.1
    if [[ -e "$FAKE_STOP_FILE" ]]; then
        if [[ "${FAKE_IGNORE_STOP:-0}" == 1 ]]; then echo "finished" >> "$FAKE_LOG"; exit 0; fi
        rm "$FAKE_STOP_FILE"
        echo "checkpointed and stopped" >> "$FAKE_LOG"
        exit 0
    fi
done
exit 7
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_LOG"
"""


def stand_ins(tmp_path: Path, srun: str) -> Path:
    """A folder with stand-ins for ``srun`` (the given script) and ``scontrol``, for PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", srun), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    "case,restarts,finish,ignore,rc,requeued",
    [
        ("usr1: tasks checkpoint, then requeue", "0", "0", "0", 0, True),
        ("usr1 past MAX_RESTARTS: no requeue", "3", "0", "0", 1, False),
        ("training ends by itself: no requeue", "0", "1", "0", 0, False),
        ("training ended before taking the request: no requeue", "0", "0", "1", 0, False),
    ],
)
def test_usr1_asks_the_tasks_to_stop_before_the_job_requeues(
    tmp_path: Path, case: str, restarts: str, finish: str, ignore: str, rc: int, requeued: bool
) -> None:
    """The batch shell's trap, with stand-ins for srun and scontrol (no SLURM here)."""
    bin_dir = stand_ins(tmp_path, FAKE_SRUN)
    log = tmp_path / "fake.log"
    stop_file = tmp_path / "results" / "run" / ".nemo_gammapo" / "stop_requested"
    stop_file.parent.mkdir(parents=True)
    stop_file.write_text("left over from an earlier job\n")  # the job deletes it before starting
    env = clean_env(
        NODES="1",
        GPUS_PER_NODE="1",
        SLURM_JOB_ID="42",
        SLURM_RESTART_COUNT=restarts,
        MAX_RESTARTS="3",
        MASTER_ADDR="node001",
        RESULTS_DIR=str(tmp_path / "results"),
        RUN_NAME="run",
        FAKE_LOG=str(log),
        FAKE_FINISH=finish,
        FAKE_IGNORE_STOP=ignore,
        FAKE_STOP_FILE=str(stop_file),
        PATH=f"{bin_dir}:{os.environ['PATH']}",
    )
    job = subprocess.Popen(
        ["bash", str(ROOT / "examples/slurm/gammapo_single_node.sbatch")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (log.exists() and "started" in log.read_text()):
        assert time.monotonic() < deadline, job.communicate()
        time.sleep(0.1)
    if finish == "0":
        time.sleep(0.3)  # the trap is set before srun starts
        assert not stop_file.exists()  # the earlier job's request was dropped at start
        job.send_signal(signal.SIGUSR1)
    out, err = job.communicate(timeout=60)
    events = log.read_text().splitlines()
    assert job.returncode == rc, (case, out, err, events)
    assert ("checkpointed and stopped" in events) == (finish == "0" and ignore == "0"), events
    assert ("scontrol requeue 42" in events) == requeued, events
    if requeued:
        assert events.index("checkpointed and stopped") < events.index("scontrol requeue 42")  # tasks first
    assert not stop_file.exists()  # taken by the tasks, or dropped by the batch shell


FAKE_FAULTY_SRUN = """#!/usr/bin/env bash
# stands in for srun: the training tasks end with FAKE_RC; FAKE_MARKER: a rank recorded a fault first
echo "started" >> "$FAKE_LOG"
if [[ -n "${FAKE_MARKER:-}" ]]; then mkdir -p "$(dirname "$FAKE_MARKER")"; echo "hang: ..." > "$FAKE_MARKER"; fi
exit "$FAKE_RC"
"""


@pytest.mark.parametrize(
    "case,srun_rc,marker,restarts,rc,requeued",
    [
        ("hang or lost peer (exit 75): requeue", 75, False, "0", 0, True),
        ("a fault recorded, srun reports a killed task: requeue", 137, True, "0", 0, True),
        ("a fault past MAX_RESTARTS: no requeue", 75, True, "3", 75, False),
        ("configuration or data error: never", 2, False, "0", 2, False),
        ("run_dir busy: never", 3, False, "0", 3, False),
        ("non-finite training: never, even with a fault record", 4, True, "0", 4, False),
        ("a crash without a fault record: no requeue", 1, False, "0", 1, False),
    ],
)
def test_faults_requeue_the_job_user_errors_never(
    tmp_path: Path, case: str, srun_rc: int, marker: bool, restarts: str, rc: int, requeued: bool
) -> None:
    """How the batch shell answers the tasks' exit (stand-ins for srun and scontrol; no SLURM here)."""
    bin_dir = stand_ins(tmp_path, FAKE_FAULTY_SRUN)
    log = tmp_path / "fake.log"
    fault = tmp_path / "results" / "run" / "hangs" / f"42-{restarts}" / "FAULT"
    env = clean_env(
        NODES="2",
        GPUS_PER_NODE="1",
        SLURM_JOB_ID="42",
        SLURM_JOB_NUM_NODES="2",
        SLURM_RESTART_COUNT=restarts,
        MAX_RESTARTS="3",
        MASTER_ADDR="node001",
        RESULTS_DIR=str(tmp_path / "results"),
        RUN_NAME="run",
        FAKE_LOG=str(log),
        FAKE_RC=str(srun_rc),
        FAKE_MARKER=str(fault) if marker else "",
        PATH=f"{bin_dir}:{os.environ['PATH']}",
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "examples/slurm/gammapo_multi_node.sbatch")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    events = log.read_text().splitlines()
    assert proc.returncode == rc, (case, proc.stdout, proc.stderr, events)
    assert ("scontrol requeue 42" in events) == requeued, (case, events)
    if requeued:
        assert "ended on a fault" in proc.stdout


def test_docker_helpers_dry_run(tmp_path: Path) -> None:
    env = clean_env(DRY_RUN="1", DATA_DIR="/d", CKPT_DIR="/c", RESULTS_DIR="/r", NCCL_IB_HCA="mlx5_0")
    proc = subprocess.run(
        ["bash", "docker/run.sh", "python", "-c", "print(1)"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[:3] == ["docker", "run", "--rm"] and "--gpus" in argv and "--ipc=host" in argv
    for mount in ("/d:/data", "/c:/ckpt", "/r:/results"):
        assert mount in argv
    for env_var in ("NCCL_IB_HCA=mlx5_0", "CUDA_DEVICE_MAX_CONNECTIONS=1", "NCCL_IB_TIMEOUT=22"):
        assert env_var in argv
    assert argv[-4:] == ["nemo-gammapo:latest", "python", "-c", "print(1)"]
    proc = subprocess.run(
        ["bash", "docker/build.sh"], cwd=ROOT, env={**env, "SQSH": "/x/img.sqsh"}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "docker build -t nemo-gammapo:latest -f Dockerfile -" in proc.stdout
    assert "enroot import -o /x/img.sqsh dockerd://nemo-gammapo:latest" in proc.stdout
