"""γ-PO training entry point (Hydra). Configs live in ../conf.

    # the tiny CPU demo (2 processes, random init, bundled data)
    torchrun --nproc_per_node 2 examples/train_gpt_gammapo.py --config-name tiny_cpu
    # a real run: restore a .nemo checkpoint, your JSONL data, any override
    torchrun --nproc_per_node 8 examples/train_gpt_gammapo.py --config-name llama3_8b_instruct \
        pretrained_checkpoint.restore_from_path=/ckpt/llama3-8b-instruct.nemo \
        model.data.data_prefix.train=[/data/train.jsonl] model.data.data_prefix.validation=[/data/val.jsonl]

``nemo-gammapo train`` runs the start-up checks first and then starts the same worker
(:mod:`nemo_gammapo.aligner.entry`, which this script runs) under torchrun. Re-running the same
command resumes from the newest complete checkpoint in ``run_dir``. Errors and exit codes: see
:mod:`nemo_gammapo.aligner.entry`. The ``__main__`` guard is required: the checkpoint writer
starts helper processes that import this file again.
"""

from nemo_gammapo.aligner.entry import main

if __name__ == "__main__":
    main()
