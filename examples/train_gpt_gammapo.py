"""γ-PO training entry point (Hydra). Configs live in ../conf.

    # the tiny CPU demo (2 processes, random init, bundled data)
    torchrun --nproc_per_node 2 examples/train_gpt_gammapo.py --config-name tiny_cpu
    # a real run: restore a .nemo checkpoint, your JSONL data, any override
    torchrun --nproc_per_node 8 examples/train_gpt_gammapo.py --config-name llama3_8b_instruct \
        pretrained_checkpoint.restore_from_path=/ckpt/llama3-8b-instruct.nemo \
        model.data.data_prefix.train=[/data/train.jsonl] model.data.data_prefix.validation=[/data/val.jsonl]

Re-running the same command resumes from the newest complete checkpoint in ``run_dir``. A
configuration or data error stops every rank before the model is built, with one line on rank 0
(exit code 2); a second run in the same ``run_dir`` stops at once (exit code 3); a non-finite step
stops the run unsaved (exit code 4). Workers die with their ``torchrun``.
The ``__main__`` guard is required: the checkpoint writer starts helper processes that import
this file again.
"""

from omegaconf import DictConfig

from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

maybe_apply_cpu_patches(nemo=True)  # before NeMo is imported; a no-op when CUDA is present

from nemo.core.config import hydra_runner  # noqa: E402

from nemo_gammapo.aligner.errors import exit_on_user_error  # noqa: E402
from nemo_gammapo.aligner.run_dir import exit_with_launcher  # noqa: E402
from nemo_gammapo.aligner.train import train  # noqa: E402


@hydra_runner(config_path="../conf", config_name="gpt_gammapo")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        train(cfg)


if __name__ == "__main__":
    exit_with_launcher()
    main()
