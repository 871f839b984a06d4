"""``nemo-gammapo launch`` (NeMo-Run): checks before submitting, the generated sbatch scripts, and a real
SLURM run in host mode that succeeds, shows its status and logs, and resumes when launched again.

NeMo-Run reads ``NEMORUN_HOME`` once, when first imported, so every call here passes the same
``--home`` (a module-wide folder, set before the first import).
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_gammapo.launch import nemo_run_launch as launch

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--config-name",
    "tiny_cpu",
    "trainer.dpo.val_check_interval=2",
    "trainer.dpo.save_interval=2",
    "model.global_batch_size=4",
]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nemo_run_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEMORUN_HOME", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def empty_stdin(monkeypatch) -> None:
    """NeMo-Run runs its shell steps with invoke, which reads stdin; pytest's captured stdin raises."""
    monkeypatch.setattr(sys, "stdin", io.StringIO())


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = launch.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def sbatch_script(out: str) -> str:
    assert "#!/bin/bash" in out, out[-3000:]
    return out[out.index("#!/bin/bash") :]


def training_srun(script: str) -> str:
    (line,) = [line for line in script.splitlines() if line.startswith("srun --output")]
    return line


def test_cli_lists_launch_and_its_subcommands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nemo_gammapo.cli", "launch", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "{local,slurm,status,logs}" in proc.stdout


def test_bad_config_fails_before_anything_is_submitted(home: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    argv = ["slurm", "--home", str(home), "--nodes", "1", "--", *TINY, f"run_dir={run_dir}", "model.dpo.no_such_key=1"]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "no_such_key" in err, err
    # the task counts are pinned by the options: a different trainer.devices is refused
    argv = ["slurm", "--home", str(home), "--ntasks-per-node", "1", *TINY, f"run_dir={run_dir}", "trainer.devices=2"]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "trainer.devices=2 disagrees" in err, err
    assert not (home / "experiments").exists() and not run_dir.exists()


def test_container_script_has_the_pyxis_flags(home: Path, tmp_path: Path, capsys) -> None:
    argv = [
        *("slurm", "--home", str(home), "--dry-run", "--account", "acct", "--partition", "batch"),
        *("--nodes", "2", "--ntasks-per-node", "4", "--gpus-per-node", "4", "--time", "00:20:00"),
        *("--container-image", "nvcr.io#nvidia/nemo:25.02.01", "--container-mounts", "/lustre/data:/data"),
        *("--", "--config-name", "tiny_cpu", "run_dir=/results/run", "model.global_batch_size=16"),
        "model.data.data_prefix.train=[data/demo/train.jsonl]",
    ]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    script = sbatch_script(out)
    for directive in ("account=acct", "partition=batch", "nodes=2", "ntasks-per-node=4", "gpus-per-node=4"):
        assert f"#SBATCH --{directive}\n" in script, directive
    assert "#SBATCH --time=00:20:00" in script and "--chdir" not in script
    assert "srun() {" not in script  # the host-mode wrapper is not there
    srun = shlex.split(training_srun(script))
    assert srun[srun.index("--container-image") + 1] == "nvcr.io#nvidia/nemo:25.02.01"
    mounts = srun[srun.index("--container-mounts") + 1].split(",")
    assert mounts[0] == "/lustre/data:/data" and mounts[1].endswith(":/nemo_run")
    assert srun[srun.index("--container-workdir") + 1] == "/nemo_run/code"
    inner = srun[-1]
    assert srun[-3:-1] == ["bash", "-c"] and inner.startswith(launch.RANK_ENV + "; exec ")
    train = shlex.split(inner.split("; exec ", 1)[1])
    assert train[:3] == ["python", "-m", "nemo_gammapo.aligner.entry"]  # the image's Python
    assert train[5:7] == ["--config-name", "tiny_cpu"]
    assert train[-2:] == ["trainer.num_nodes=2", "trainer.devices=4"]
    assert "model.data.data_prefix.train=[data/demo/train.jsonl]" in train
    # the rendezvous of examples/slurm/common.sh (one file, nemo_gammapo/launch/rendezvous.sh), then run
    assert launch.RENDEZVOUS_SCRIPT.read_text() in script and "\ngammapo_rendezvous\n" in script
    assert not list((home / "experiments").rglob("*_sbatch.sh"))  # a dry run leaves no experiment behind


def test_host_script_runs_srun_without_container_flags(home: Path, tmp_path: Path, capsys) -> None:
    argv = ["slurm", "--home", str(home), "--dry-run", "--ntasks-per-node", "1", *TINY, f"run_dir={tmp_path / 'r'}"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    script = sbatch_script(out)
    assert "--container-image" not in script and "#SBATCH --account" not in script
    assert f"#SBATCH --chdir={Path.cwd()}\n" in script  # relative paths in the config: this folder
    # NeMo-Run writes --container-mounts/--container-workdir into the srun line; the script's srun
    # function drops them. Run that function and the line with a stand-in srun that prints its argv.
    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    snippet = f"{launch.HOST_SRUN}\n{training_srun(script)}\n"
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "SLURM_RESTART_COUNT": "0"}
    proc = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv_seen = proc.stdout.splitlines()
    assert not [a for a in argv_seen if a.startswith("--container")], argv_seen
    assert argv_seen[-3:-1] == ["bash", "-c"] and "--kill-on-bad-exit=1" in argv_seen
    train = shlex.split(argv_seen[-1].split("; exec ", 1)[1])
    assert train[:3] == [sys.executable, "-m", "nemo_gammapo.aligner.entry"]  # this machine's Python
    assert train[-2:] == ["trainer.num_nodes=1", "trainer.devices=1"]


def test_local_dry_run_is_torchrun_with_one_worker_per_device(home: Path, tmp_path: Path, capsys) -> None:
    argv = ["local", "--home", str(home), "--dry-run", *TINY, f"run_dir={tmp_path / 'r'}", "trainer.devices=2"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("torchrun ")]
    cmd = shlex.split(line)
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2" and cmd[cmd.index("--nnodes") + 1] == "1"
    module = cmd.index("-m")
    assert cmd[module + 1 :][:5] == ["nemo_gammapo.aligner.entry", "--config-dir", str(ROOT / "conf"), *TINY[:2]]
    assert "trainer.devices=2" in cmd
    # NeMo-Run shell-quotes torchrun's arguments but starts it without a shell: refused, not mangled
    code, _, err = run_main([*argv, "model.optim.betas=[0.9, 0.98]"], capsys)
    assert code == 2 and "needs shell quoting" in err, err


def train_steps(metrics_file: Path) -> dict[int, float]:
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_host_mode_succeeds_shows_logs_and_resumes(
    slurm_cluster, home: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    monkeypatch.chdir(ROOT)  # tiny_cpu's data paths are relative to the checkout
    run_dir = tmp_path / "run"
    slurm = ["slurm", "--home", str(home), "--wait", "--account", "root", "--nodes", "1", "--ntasks-per-node", "1"]

    code, out, err = run_main([*slurm, "--", *TINY, f"run_dir={run_dir}", "trainer.dpo.max_steps=2"], capsys)
    assert code == 0, out[-3000:] + err[-3000:]
    (exp_id,) = set(re.findall(r"experiment (\S+): SUCCEEDED", out))

    code, out, err = run_main(["status", exp_id, "--home", str(home)], capsys)
    assert code == 0 and f"{exp_id} train: SUCCEEDED (job " in out, out + err
    job_id = int(re.search(r"\(job (\d+),", out).group(1))
    assert any(line.startswith(f"{job_id}|COMPLETED") for line in slurm_cluster.sacct_states(job_id))

    code, out, err = run_main(["logs", exp_id, "--home", str(home)], capsys)
    assert code == 0, err
    assert "train/0 " in out and "saving model to" in out and str(run_dir / "checkpoints") in out  # the task's output

    # the same run_dir again, with more steps: the trainer resumes from the last checkpoint
    code, out, err = run_main([*slurm, *TINY, f"run_dir={run_dir}", "trainer.dpo.max_steps=4"], capsys)
    assert code == 0, out[-3000:] + err[-3000:]
    first, second = train_steps(run_dir / "run_0" / "metrics.jsonl"), train_steps(run_dir / "metrics.jsonl")
    assert sorted(first) == [0, 1]  # `step` counts steps done before this one: training steps 1-2
    assert sorted(second) == [2, 3]  # steps 3-4 only: steps 1-2 were not recomputed
    from nemo_gammapo.artifacts.metrics import read_history

    history = {r["step"]: r["train/loss"] for r in read_history(run_dir) if "train/loss" in r}
    assert history == {**first, **second}
