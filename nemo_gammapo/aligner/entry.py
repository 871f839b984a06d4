"""The training worker's entry point: ``python -m nemo_gammapo.aligner.entry --config-name NAME [overrides]``.

What ``nemo-gammapo train`` starts under torchrun (``torchrun -m``) and what
``examples/train_gpt_gammapo.py`` runs; it lives in the package so that it works from a wheel.
Configs come from :func:`nemo_gammapo.configs.config_dir` (``--config-dir`` adds another folder).
A configuration or data error stops every rank before the model is built, with one line on rank 0
(exit code 2); a second run in the same ``run_dir`` stops at once (exit code 3); a non-finite step
stops the run unsaved (exit code 4). Workers started by torchrun die with it.

The ``__main__`` guard of the script that runs :func:`main` is required: the checkpoint writer
starts helper processes that import the main module again.
"""

from omegaconf import DictConfig

from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

maybe_apply_cpu_patches(nemo=True)  # before NeMo is imported; a no-op when CUDA is present

from nemo.core.config import hydra_runner  # noqa: E402

from nemo_gammapo.aligner.errors import exit_on_user_error  # noqa: E402
from nemo_gammapo.aligner.run_dir import exit_with_launcher  # noqa: E402
from nemo_gammapo.aligner.train import train  # noqa: E402
from nemo_gammapo.configs import DEFAULT_CONFIG, config_dir  # noqa: E402


@hydra_runner(config_path=str(config_dir()), config_name=DEFAULT_CONFIG)
def _hydra_main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        train(cfg)


def main() -> None:
    """Parse Hydra's command line (``--config-name``, overrides) and train."""
    exit_with_launcher()
    _hydra_main()


if __name__ == "__main__":
    main()
