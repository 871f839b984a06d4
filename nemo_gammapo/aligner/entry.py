"""The training worker's entry point: ``python -m nemo_gammapo.aligner.entry --config-name NAME [overrides]``.

What ``nemo-gammapo train`` starts under torchrun (``torchrun -m``) and what
``examples/train_gpt_gammapo.py`` runs; it lives in the package so that it works from a wheel.
Configs come from :func:`nemo_gammapo.configs.config_dir` (``--config-dir`` adds another folder).
A configuration or data error stops every rank before the model is built, with one line on rank 0
(exit code 2); a second run in the same ``run_dir`` stops at once (exit code 3); a non-finite step
stops the run unsaved (exit code 4). Workers started by torchrun die with it.

The ``__main__`` guard of the script that runs :func:`main` is required: the checkpoint writer
starts a helper process (``multiprocessing`` spawn) that imports the main module again. That is
also why this module imports nothing heavy at its top: the helper then starts in a fraction of a
second instead of importing NeMo a second time (~15 s and ~1 GB per rank on the CPU stack).
"""

from __future__ import annotations

from nemo_gammapo.aligner.errors import exit_on_user_error
from nemo_gammapo.aligner.run_dir import die_with_parent, exit_with_launcher
from nemo_gammapo.aligner.stop_request import catch_early
from nemo_gammapo.configs import DEFAULT_CONFIG, config_dir

# Imported again in the checkpoint writer's spawned helpers (as their ``__mp_main__``): those must
# not outlive the worker (see :func:`nemo_gammapo.aligner.run_dir.die_with_parent`).
die_with_parent()


def main() -> None:
    """Parse Hydra's command line (``--config-name``, overrides) and train."""
    catch_early()  # first: a stop signal during the (slow) imports below must not kill the worker
    exit_with_launcher()

    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

    maybe_apply_cpu_patches(nemo=True)  # before NeMo is imported; a no-op when CUDA is present

    from nemo.core.config import hydra_runner
    from omegaconf import DictConfig

    from nemo_gammapo.aligner.train import train

    @hydra_runner(config_path=str(config_dir()), config_name=DEFAULT_CONFIG)
    def hydra_main(cfg: DictConfig) -> None:
        with exit_on_user_error():
            train(cfg)

    hydra_main()


if __name__ == "__main__":
    main()
