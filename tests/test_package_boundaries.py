"""Package boundaries: core → distributed → aligner (NeMo adapter) → tools; configs ship in the wheel.

The import rules are checked statically on the source (``ast``), so imports inside functions —
which ``tests/test_core_isolation.py``'s import-time check cannot see — count too.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nemo_gammapo.configs import config_dir

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nemo_gammapo"
FRAMEWORKS = ("nemo", "megatron", "nemo_aligner", "transformer_engine", "apex")

# (package whose modules are checked, what none of them may import, why)
RULES = [
    ("nemo_gammapo.core", (*FRAMEWORKS, "nemo_gammapo.distributed", "nemo_gammapo.aligner"), "core is framework-free"),
    ("nemo_gammapo.viz", ("nemo_gammapo.aligner", *FRAMEWORKS), "plots read run artifacts, not the NeMo adapter"),
    (
        "nemo_gammapo.artifacts",
        ("nemo_gammapo.aligner", "nemo_gammapo.viz", "nemo_gammapo.distributed", *FRAMEWORKS),
        "the artifact schema sits below both its writer and its readers",
    ),
]
TEST_HELPERS = "nemo_gammapo.testing"


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of a source file below ``root`` (the folder holding the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import anywhere in the file (relative imports resolved).

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (``c`` may be a submodule).
    """
    module = module_name(path, root)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def boundary_violations(package_dir: Path) -> list[str]:
    """Every import in ``package_dir`` (a ``nemo_gammapo`` source tree) that breaks a boundary rule."""
    root = package_dir.parent
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        module = module_name(path, root)
        where = path.relative_to(root)
        for line, name in imported_names(path, root):
            if _under(name, TEST_HELPERS) and not _under(module, TEST_HELPERS):
                problems.append(f"{where}:{line}: imports {name}: production code must not use test helpers")
            for package, forbidden, why in RULES:
                bad = next((f for f in forbidden if _under(name, f)), None)
                if _under(module, package) and bad is not None:
                    problems.append(f"{where}:{line}: imports {name}: {why}")
    return sorted(set(problems))


def test_package_respects_its_boundaries() -> None:
    assert len(list(PACKAGE.rglob("*.py"))) > 40  # the walk sees the real tree
    assert boundary_violations(PACKAGE) == []


def test_boundary_check_finds_each_kind_of_violation(tmp_path: Path) -> None:
    """The checker itself: a fabricated tree with one violation of each rule, lazy and relative imports too."""
    pkg = tmp_path / "nemo_gammapo"
    files = {
        "__init__.py": "",
        "testing/__init__.py": "",
        "testing/helpers.py": "from nemo_gammapo.models import tiny\n",  # allowed: tests use production code
        "study/trainer.py": "def f():\n    from nemo_gammapo.testing import helpers\n",
        "viz/__init__.py": "",
        "viz/plots.py": "from ..aligner import report\n",
        "core/solver.py": "import torch\nimport megatron.core\n",
        "core/queue.py": "from nemo_gammapo.distributed.gamma_loss import GammaPOLoss\n",
        "artifacts/metrics.py": "def g():\n    import nemo.collections\n",
        "bench/cli.py": "from nemo_gammapo.aligner import report\n",  # allowed: tools may use the adapter
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    found = boundary_violations(pkg)
    assert sorted({line.split(": imports ")[0] for line in found}) == [
        "nemo_gammapo/artifacts/metrics.py:2",
        "nemo_gammapo/core/queue.py:1",
        "nemo_gammapo/core/solver.py:2",
        "nemo_gammapo/study/trainer.py:2",
        "nemo_gammapo/viz/plots.py:1",
    ], found


def test_config_dir_of_the_checkout_is_the_top_level_conf() -> None:
    assert config_dir() == ROOT / "conf"
    assert (config_dir() / "tiny_cpu.yaml").is_file()


def _copy_sources(dest: Path) -> None:
    """What the wheel is built from (a copy, so no stale ``build/`` of the checkout leaks into it)."""
    dest.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("nemo_gammapo", "conf", "data/demo"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def test_built_wheel_carries_the_configs_and_every_cli_finds_them(tmp_path: Path) -> None:
    src, wheels, site, cwd = tmp_path / "src", tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    _copy_sources(src)
    cwd.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = wheels.glob("nemo_gammapo-*.whl")
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=600
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    shipped = {p.name for p in (site / "nemo_gammapo" / "conf").glob("*.yaml")}
    assert shipped == {p.name for p in (ROOT / "conf").glob("*.yaml")}

    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)

    where = run(
        "-c",
        "import nemo_gammapo, nemo_gammapo.configs as c, nemo_gammapo.aligner.cli as t\n"
        "print(nemo_gammapo.__file__); print(c.config_dir()); print(t.build_parser().get_default('config_dir'))",
    )
    assert where.returncode == 0, where.stderr[-3000:]
    package_file, conf, train_default = (Path(line) for line in where.stdout.split())
    assert package_file.is_relative_to(site) and not package_file.is_relative_to(ROOT)
    assert conf == site / "nemo_gammapo" / "conf" and train_default == conf

    plan = run("-m", "nemo_gammapo.cli", "plan", "--config", "llama3_70b_instruct")
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    assert "* = the configured layout (TP8+SP PP4 CP1 DP1)" in plan.stdout, plan.stdout  # conf/llama3_70b_instruct

    # the training launcher finds its configs and its worker module in the wheel too
    data = ROOT / "data" / "demo"
    check = run(
        "-m",
        "nemo_gammapo.cli",
        "train",
        "--config-name",
        "tiny_cpu",
        "--check-only",
        f"model.data.data_prefix.train=[{data / 'train.jsonl'}]",
        f"model.data.data_prefix.validation=[{data / 'validation.jsonl'}]",
        f"run_dir={tmp_path / 'run'}",
    )
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert "checks passed: 2 processes" in check.stdout
    worker = run("-c", "import importlib.util as u; print(u.find_spec('nemo_gammapo.aligner.entry').origin)")
    assert Path(worker.stdout.strip()).is_relative_to(site), worker.stdout + worker.stderr

    # the bundled demo data ships too, and the NeMo benchmark's runs point the tiny presets at it
    demo = run(
        "-c",
        "from omegaconf import OmegaConf\n"
        "from nemo_gammapo.bench.nemo_step import use_bundled_demo_data\n"
        "from nemo_gammapo.configs import demo_data_dir\n"
        "cfg = OmegaConf.create({'model': {'data': {'data_prefix': {'train': ['data/demo/train.jsonl'],"
        " 'validation': ['data/demo/validation.jsonl']}}}})\n"
        "use_bundled_demo_data(cfg)\n"
        "print(demo_data_dir()); print(cfg.model.data.data_prefix.train[0])",
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    demo_dir, train_file = (Path(line) for line in demo.stdout.split())
    assert demo_dir == site / "nemo_gammapo" / "demo_data"
    assert train_file == demo_dir / "train.jsonl" and train_file.read_bytes() == (data / "train.jsonl").read_bytes()
