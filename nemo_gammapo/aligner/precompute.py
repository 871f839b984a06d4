"""``nemo-gammapo precompute-reference``: the reference policy's log-probs, once, for every pair.

    nemo-gammapo precompute-reference --config-name llama3_8b_instruct [the training run's overrides]
    nemo-gammapo train --config-name llama3_8b_instruct [the same overrides] model.dpo.reference=precomputed

Takes the training run's own configuration (same config, same overrides), so it loads the same
starting model (``pretrained_checkpoint.restore_from_path``, or the preset's seeded random
weights) at any TP / PP / DP layout, runs it forward only over every pair of the training and
validation files — each pair once, data parallel, with a progress bar — and writes the
per-sequence log-prob sums and token counts keyed by pair id, with the digests of the data and
model, to ``model.dpo.reference_logprobs`` (:mod:`nemo_gammapo.aligner.reference`). The
reference mode in the given config does not matter here (it is the thing being produced).

Start-up checks and the worker launch are those of ``nemo-gammapo train`` (same flags); the
workers run :func:`worker_main` (``python -m nemo_gammapo.aligner.precompute``). No run folder
is created or locked: only the output file is written (atomically).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from nemo_gammapo.aligner.errors import exit_on_user_error
from nemo_gammapo.aligner.run_dir import exit_with_launcher
from nemo_gammapo.configs import DEFAULT_CONFIG, config_dir

PROG = "nemo-gammapo precompute-reference"
WORKER_MODULE = "nemo_gammapo.aligner.precompute"


def use_online_reference(cfg: Any) -> None:
    """The reference is what this command computes: check and run the config in online mode."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.model.dpo.reference = "online"


def precompute(cfg: Any) -> Path:
    """Run the reference over both splits and write the sidecar; its path (on every rank)."""
    import torch
    from megatron.core import parallel_state
    from nemo_aligner.data.nlp.builders import build_dataloader, identity_collate
    from nemo_aligner.utils.train_script_utils import init_distributed, init_using_ptl, resolve_and_create_trainer
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from nemo_gammapo.aligner.pairs import collate_with_pair_ids
    from nemo_gammapo.aligner.preflight import data_files, needs_reference, preflight
    from nemo_gammapo.aligner.reference import ReferenceLogprobs, file_digest, model_digest
    from nemo_gammapo.aligner.train import build_datasets, build_model, merge_checkpoint_config
    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches
    from nemo_gammapo.version_adapters import apply_version_adapters

    maybe_apply_cpu_patches(nemo=True)
    apply_version_adapters()
    use_online_reference(cfg)
    preflight(cfg, warn=lambda msg: print(f"WARNING: {msg}", flush=True))
    if not needs_reference(cfg.model.dpo):
        print(f"{PROG}: note: {cfg.model.dpo.preference_loss} uses no reference; computing it anyway", flush=True)
    out = Path(cfg.model.dpo.reference_logprobs)
    files = data_files(cfg)
    data_digest = {split: file_digest(paths[0]) for split, paths in files.items()}
    digest = model_digest(cfg)  # before the checkpoint's config is merged: as training checks it

    restore_path = merge_checkpoint_config(cfg)
    trainer = resolve_and_create_trainer(cfg, "dpo")
    model = build_model(cfg, trainer, restore_path)
    init_distributed(trainer, model, cfg.model.get("transformer_engine", False))
    train_ds, val_ds = build_datasets(cfg, model.tokenizer)
    gbs, mbs = cfg.model.global_batch_size, cfg.model.micro_batch_size
    train_dl = build_dataloader(cfg, train_ds, 0, mbs, gbs, collate_fn=identity_collate, load_gbs=True)
    init_using_ptl(trainer, model, train_dl, train_ds)

    data = cfg.model.data
    collate_kwargs = {
        "eos_id": model.tokenizer.eos_id,
        "reset_position_ids": data.get("reset_position_ids", False),
        "reset_attention_mask": data.get("reset_attention_mask", False),
        "eod_mask_loss": data.get("eod_mask_loss", False),
        "pad_length_to_multiple_of": data.get("pad_length_to_multiple_of"),
    }
    mb = int(cfg.model.dpo.log_prob_forward_micro_batch_size)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    collects = last_stage and parallel_state.get_tensor_model_parallel_rank() == 0
    shows_progress = collects and dp_rank == 0
    rows: dict[int, tuple[float, float, int, int]] = {}
    for split, dataset in (("train", train_ds), ("validation", val_ds)):
        n = len(dataset)
        starts = range(0, n, dp * mb)  # each step: dp × mb pairs, this rank's mb of them
        for start in tqdm(starts, desc=f"reference log-probs ({split})", disable=not shows_progress, file=sys.stdout):
            positions = [start + dp_rank * mb + j for j in range(mb)]
            # past the end: repeat the last pair (every rank runs the same number of forward passes)
            items = [dataset[min(p, n - 1)] for p in positions]
            batch = collate_with_pair_ids(items, **collate_kwargs)
            with torch.no_grad():
                logprobs = model.get_logprob_batch(batch)
            if not collects:
                continue
            labels = torch.cat((batch["chosen_labels"], batch["rejected_labels"]), dim=0).to(logprobs.device)
            sums = model.get_reduced_masked_logps(logprobs, labels).float().cpu()
            tokens = (labels > -1).sum(-1).cpu()
            for j, position in enumerate(positions):
                if position < n:
                    rows[int(batch["pair_ids"][j])] = (
                        float(sums[j]),
                        float(sums[mb + j]),
                        int(tokens[j]),
                        int(tokens[mb + j]),
                    )

    if collects:  # one file from the data-parallel group of the last stage's TP-rank-0 ranks
        gathered: list[Any] = [None] * dp
        torch.distributed.all_gather_object(gathered, rows, group=parallel_state.get_data_parallel_group())
        if dp_rank == 0:
            merged = {k: v for part in gathered for k, v in part.items()}
            ReferenceLogprobs.from_rows(merged, data_digest, digest).save(out)
            config = OmegaConf.to_container(cfg.model.dpo, resolve=True)
            print(
                f"{PROG}: wrote {out}: {len(merged)} pairs (train {len(train_ds)}, validation {len(val_ds)}), "
                f"for {config['preference_loss']} with model.dpo.reference=precomputed",
                flush=True,
            )
    torch.distributed.barrier()
    return out


def worker_main() -> None:
    """A worker: Hydra's command line (``--config-name``, overrides), then :func:`precompute`."""
    from nemo_gammapo.aligner.stop_request import catch_early

    catch_early()
    exit_with_launcher()

    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

    maybe_apply_cpu_patches(nemo=True)

    from nemo.core.config import hydra_runner
    from omegaconf import DictConfig

    @hydra_runner(config_path=str(config_dir()), config_name=DEFAULT_CONFIG)
    def hydra_main(cfg: DictConfig) -> None:
        with exit_on_user_error():
            precompute(cfg)

    hydra_main()


def main(argv: list[str] | None = None) -> int:
    """The command: start-up checks in this process, then the workers under torchrun."""
    from nemo_gammapo.aligner import cli

    return cli.main(
        argv,
        prog=PROG,
        entry_module=WORKER_MODULE,
        adjust=use_online_reference,
        needs_run_dir=False,
        description=__doc__.split("\n\n")[0],
    )


if __name__ == "__main__":
    worker_main()
