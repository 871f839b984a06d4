"""The Dockerfile's base tag and the stack versions it claims, checked against our pinned stack."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
PINS = ROOT / "requirements" / "constraints-cpu.txt"
STACK_LINE = re.compile(r"^#\s+stack:\s+(\S+)\s+image=(\S+)\s+pin=(\S+)\s+(match|differs|not pinned)\b(.*)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out = {}
    for line in PINS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[normalize(name)] = version.strip()
    return out


def args_and_from() -> tuple[dict[str, str], list[str]]:
    args, froms = {}, []
    for line in DOCKERFILE.read_text().splitlines():
        if m := re.match(r"^ARG\s+(\w+)=(\S+)", line):
            args.setdefault(m.group(1), m.group(2))
        elif m := re.match(r"^FROM\s+(\S+)", line):
            froms.append(re.sub(r"\$\{(\w+)\}", lambda g: args[g.group(1)], m.group(1)))
    return args, froms


def stack_claims() -> dict[str, tuple[str, str, str, str]]:
    claims = {}
    for line in DOCKERFILE.read_text().splitlines():
        if m := STACK_LINE.match(line):
            claims[normalize(m.group(1))] = (m.group(2), m.group(3), m.group(4), m.group(5).strip())
    return claims


def test_base_image_is_the_ngc_nemo_release() -> None:
    _, froms = args_and_from()
    assert froms == ["nvcr.io/nvidia/nemo:25.02.01"]


def test_claimed_components_are_all_listed() -> None:
    assert {"nemo-toolkit", "nemo-aligner", "megatron-core", "torch", "transformer-engine", "apex"} <= set(
        stack_claims()
    )


def test_claims_agree_with_the_pin_file() -> None:
    pinned = pins()
    for name, (image, pin, status, why) in stack_claims().items():
        if pin == "none":
            assert name not in pinned, f"{name} is pinned ({pinned.get(name)}) but the Dockerfile says pin=none"
            assert status == "not pinned" and why, name
            continue
        assert pinned.get(name) == pin, f"{name}: Dockerfile says pin={pin}, {PINS.name} has {pinned.get(name)}"
        if status == "match":
            assert image == pin, name
        else:
            assert status == "differs" and image != pin and why.startswith(":"), f"{name}: a difference needs a reason"


def test_nemo_and_aligner_match_exactly() -> None:
    claims = stack_claims()
    for name in ("nemo-toolkit", "nemo-aligner"):
        image, pin, status, _ = claims[name]
        assert status == "match" and image == pin == pins()[name]
    # torch: the CPU stack's version is pinned by the setup script, as the Dockerfile says
    torch_claim = re.search(r"installs (torch==\S+)", claims["torch"][3])
    assert torch_claim and torch_claim.group(1) in (ROOT / "scripts" / "setup_env.sh").read_text()
    # megatron-core differs only by the patch number
    image, pin, _, _ = claims["megatron-core"]
    assert image.split(".")[:2] == pin.split(".")[:2]


def test_build_time_check_uses_the_claimed_versions() -> None:
    args, _ = args_and_from()
    claims = stack_claims()
    assert args["EXPECT_NEMO"] == claims["nemo-toolkit"][0]
    assert args["EXPECT_ALIGNER"] == claims["nemo-aligner"][0]
    assert args["EXPECT_MCORE"] == claims["megatron-core"][0]
    text = DOCKERFILE.read_text()
    check = 'docker/check_stack.py --nemo "${EXPECT_NEMO}" --aligner "${EXPECT_ALIGNER}" --mcore "${EXPECT_MCORE}"'
    assert check in text
    assert "pip install --no-cache-dir --no-deps" in text


@pytest.mark.parametrize("mcore,ok", [("0.11.0", True), ("0.11.1", False)])
def test_check_stack_script(tmp_path: Path, mcore: str, ok: bool) -> None:
    """Against this CPU venv: NeMo/Aligner pins are found; TE never is (it needs CUDA), so it always fails."""
    record = tmp_path / "versions.txt"
    expected = ["--nemo", "2.2.1", "--aligner", "0.7.0", "--mcore", mcore]
    proc = subprocess.run(
        [sys.executable, "docker/check_stack.py", *expected, "--write", str(record)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "transformer_engine: not installed" in proc.stderr
    assert ("mcore: expected" in proc.stderr) is not ok
    assert "nemo: expected" not in proc.stderr and "aligner: expected" not in proc.stderr
    assert "nemo=2.2.1" in record.read_text()
