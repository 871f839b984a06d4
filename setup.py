"""Package metadata for nemo_gammapo.

The runtime stack (NeMo 2.2.1, megatron-core 0.11.0, NeMo-Aligner 0.7.0, torch 2.13) is pinned in
``requirements/constraints-cpu.txt`` and installed by ``scripts/setup_env.sh``; the ranges below
only state what the code needs so that ``pip install -e .`` inside an NGC container does not
fight the container's own builds.
"""

from setuptools import find_packages, setup

setup(
    name="nemo_gammapo",
    version="0.1.0",
    description="γ-PO (dynamic target-margin preference optimization) for NeMo / Megatron-core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    # The training configs and the bundled demo data ship inside the package as nemo_gammapo.conf and
    # nemo_gammapo.demo_data (see nemo_gammapo/configs.py); the top-level conf/ and data/demo/ folders
    # stay their only source.
    packages=[
        *find_packages(include=["nemo_gammapo", "nemo_gammapo.*"]),
        "nemo_gammapo.conf",
        "nemo_gammapo.demo_data",
    ],
    package_dir={"nemo_gammapo.conf": "conf", "nemo_gammapo.demo_data": "data/demo"},
    package_data={
        "nemo_gammapo.conf": ["*.yaml"],
        "nemo_gammapo.demo_data": ["*.jsonl"],
        "nemo_gammapo.launch": ["*.sh"],  # rendezvous.sh, copied into the sbatch scripts NeMo-Run writes
    },
    install_requires=["torch>=2.2"],
    entry_points={"console_scripts": ["nemo-gammapo=nemo_gammapo.cli:main"]},
    extras_require={
        # The NeMo stack; use requirements/constraints-cpu.txt for the exact, tested pins.
        "nemo": [
            "nemo-toolkit[nlp]==2.2.1",
            "megatron-core==0.11.0",
            "nemo-aligner==0.7.0",
            "omegaconf>=2.3",
            "hydra-core>=1.3",
            "datasets",
            "psutil",
        ],
        "test": ["pytest>=8", "pytest-timeout>=2.3"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6"],
    },
)
