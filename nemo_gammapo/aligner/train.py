"""γ-PO training with NeMo-Aligner's ``DPOTrainer`` (called by ``examples/train_gpt_gammapo.py``).

One function, :func:`train`, does what a NeMo-Aligner training script does — build the NeMo
trainer and experiment manager, restore (or, for the tiny demo, randomly initialise) the model,
build the JSONL preference datasets, initialise through PyTorch Lightning, resume from the last
checkpoint, run ``DPOTrainer.fit()`` — with our model class and with the reference policy left
out entirely for reference-free losses. It returns the metric history so callers (the demo,
tests) can report on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_gammapo.aligner.checkpoints import newest_complete, set_aside_unusable
from nemo_gammapo.aligner.errors import global_rank
from nemo_gammapo.aligner.hang_watchdog import HangWatchdog, exit_on_peer_failure, is_peer_failure
from nemo_gammapo.aligner.identity import guard_resume
from nemo_gammapo.aligner.preflight import check_layout, preflight, steps_per_epoch, validate_config
from nemo_gammapo.aligner.run_dir import RunDirLock
from nemo_gammapo.aligner.stop_request import StopRequest, stop_file
from nemo_gammapo.artifacts.metrics import append_record, metrics_record

__all__ = ["MetricsHistory", "RunLimit", "TrainResult", "train", "validate_config"]


@dataclass
class TrainResult:
    """What a run produced (identical on every rank)."""

    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged step
    reference_free: bool = False
    holds_reference_weights: bool = False
    gamma_state: dict[str, Any] | None = None  # the final margin-queue state (the last pipeline stage's)
    stopped_on_request: bool = False  # ended early on SIGUSR1, after a checkpoint


class MetricsHistory:
    """Logger added beside NeMo's: keeps every logged metric and appends it to ``metrics.jsonl``."""

    def __init__(self, path: Path, write: bool) -> None:
        self.path, self.write, self.records = path, write, []

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        record = metrics_record(metrics, step)
        self.records.append(record)
        if self.write:
            append_record(self.path, record)


class RunLimit:
    """NeMo-Aligner's run timer plus an optional step budget and a stop request for this job.

    ``trainer.dpo.stop_after_steps: k`` ends the job after ``k`` steps *of this run* exactly as a
    time limit would — checkpoint, then exit — without touching ``max_steps`` (which sets the
    learning-rate schedule). Useful for fixed-length cluster allocations and resume tests. A stop
    request all ranks agreed on (``SIGUSR1``, :mod:`nemo_gammapo.aligner.stop_request`) does the same.
    """

    def __init__(self, timer: Any, stop_after_steps: int | None, stop_request: StopRequest | None = None) -> None:
        self.timer, self.stop_after_steps, self.steps = timer, stop_after_steps, 0
        self.stop_request = stop_request

    def start_time(self) -> None:
        self.timer.start_time()

    def is_finished(self) -> bool:  # DPOTrainer calls this once after every step
        self.steps += 1
        over_budget = self.stop_after_steps is not None and self.steps >= self.stop_after_steps
        requested = self.stop_request is not None and self.stop_request.agreed
        return over_budget or requested or self.timer.is_finished()


def resolved_run_config(cfg: DictConfig) -> DictConfig:
    """The run's configuration with every ``null`` loss / γ / dump setting replaced by the value used.

    ``model.dpo.loss_params`` keeps only the chosen loss's own parameters; ``gamma`` is filled for
    γ-PO losses. This is what ``config.yaml`` records, so reports and plots read the real values.
    """
    from dataclasses import asdict

    from nemo_gammapo.aligner.config import ALIGNER_NATIVE_LOSSES, dump_config, loss_configs
    from nemo_gammapo.core.registry import LOSSES

    record = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    dpo = record.model.dpo
    if dpo.preference_loss not in ALIGNER_NATIVE_LOSSES:
        loss_cfg, gamma_cfg = loss_configs(cfg.model.dpo)
        spec = LOSSES[loss_cfg.name]
        # a field with a ``resolved_<name>`` property (ipo_tau: null means β) records the value used
        dpo.loss_params = {name: getattr(loss_cfg, f"resolved_{name}", getattr(loss_cfg, name)) for name in spec.params}
        dpo.gamma = asdict(gamma_cfg) if spec.gamma else None
    dpo.gamma_dump = asdict(dump_config(cfg.model.dpo))
    return record


def set_collective_timeout(trainer: Any, seconds: float) -> None:
    """Every process group of the run times out after ``seconds`` (``trainer.dpo.collective_timeout_s``).

    NeMo's ``NLPDDPStrategy`` passes its (Lightning ``DDPStrategy``) timeout both to the default
    group's ``init_process_group`` and, as ``distributed_timeout_minutes``, to megatron-core's
    ``initialize_model_parallel`` for the TP / PP / DP / CP groups; it is set here, after the trainer is
    built and before the strategy creates any group.
    """
    import datetime

    if not hasattr(trainer.strategy, "_timeout"):
        raise RuntimeError(f"{type(trainer.strategy).__name__} has no process-group timeout to set")
    trainer.strategy._timeout = datetime.timedelta(seconds=float(seconds))


def choose_resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """Point NeMo's resume at the newest complete checkpoint (see :mod:`nemo_gammapo.aligner.checkpoints`).

    Rank 0 first sets unfinished checkpoints aside; every rank then makes the same choice. An
    explicit ``exp_manager.resume_from_checkpoint`` is left alone.
    """
    em = cfg.exp_manager
    if not em.get("resume_if_exists") or em.get("resume_from_checkpoint"):
        return None
    checkpoint_dir = run_dir / "checkpoints"
    if global_rank() == 0:
        for path in set_aside_unusable(checkpoint_dir):
            print(f"WARNING: set aside an unfinished or non-finite checkpoint: {path}", flush=True)
    chosen = newest_complete(checkpoint_dir)
    with open_dict(em):
        em.resume_if_exists = False  # NeMo's own search stops at an unfinished "-last"; ours has chosen
        em.resume_from_checkpoint = str(chosen.path) if chosen is not None else None
    return chosen.path if chosen is not None else None


def merge_checkpoint_config(cfg: DictConfig) -> str | None:
    """Merge the starting ``.nemo``'s model config into ``cfg.model`` (as NeMo-Aligner does) and
    check the layout against it again; the checkpoint path, or None for a random start."""
    from nemo_aligner.utils.utils import load_and_override_model_config

    restore_path = cfg.pretrained_checkpoint.get("restore_from_path")
    if restore_path:
        cfg.model = load_and_override_model_config(restore_path, cfg.model)
        check_layout(cfg)  # the checkpoint's heads and layers against the layout
    return restore_path


def build_model(cfg: DictConfig, trainer: Any, restore_path: str | None) -> Any:
    """``MegatronGPTGammaPOModel`` restored from ``restore_path``, or randomly initialised."""
    from nemo.utils import logging
    from nemo_aligner.utils.utils import load_from_nemo

    from nemo_gammapo.aligner.model import MegatronGPTGammaPOModel

    if restore_path:
        return load_from_nemo(MegatronGPTGammaPOModel, cfg.model, trainer, strict=True, restore_path=restore_path)
    logging.info("pretrained_checkpoint.restore_from_path is null: building a randomly initialised model")
    return MegatronGPTGammaPOModel(cfg.model, trainer)


def build_datasets(cfg: DictConfig, tokenizer: Any) -> tuple[Any, Any]:
    """The training and validation datasets (NeMo-Aligner's, with pair ids: :mod:`.pairs`)."""
    from nemo_gammapo.aligner.pairs import build_train_valid_test_pair_datasets

    data = cfg.model.data
    train_ds, val_ds, _ = build_train_valid_test_pair_datasets(
        cfg=cfg.model,
        data_prefix=data.data_prefix,
        data_impl=data.data_impl,
        splits_string=data.splits_string,
        train_valid_test_num_samples=[-1 * cfg.model.global_batch_size] * 3,
        seq_length=data.seq_length,
        seed=cfg.model.seed,
        tokenizer=tokenizer,
    )
    return train_ds, val_ds


def train(cfg: DictConfig) -> TrainResult:
    """Run γ-PO training as configured; see ``conf/gpt_gammapo.yaml`` for every key."""
    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches
    from nemo_gammapo.version_adapters import apply_version_adapters

    maybe_apply_cpu_patches(nemo=True)
    apply_version_adapters()
    checked = preflight(cfg, warn=lambda msg: print(f"WARNING: {msg}", flush=True))
    run_dir = Path(cfg.exp_manager.explicit_log_dir).resolve()
    lock = RunDirLock(run_dir)
    if global_rank() == 0:
        lock.acquire()
    try:
        return _train(cfg, run_dir, checked)
    except Exception as error:
        if not is_peer_failure(error):
            raise
        lock.release()
        exit_on_peer_failure(run_dir, error, global_rank())
        raise  # not reached
    finally:
        lock.release()


def _train(cfg: DictConfig, run_dir: Path, checked: dict[str, Any]) -> TrainResult:
    import torch
    from nemo.utils import logging
    from nemo.utils.exp_manager import exp_manager
    from nemo_aligner.utils.distributed import Timer
    from nemo_aligner.utils.train_script_utils import (
        CustomLoggerWrapper,
        add_custom_checkpoint_callback,
        extract_optimizer_scheduler_from_ptl_model,
        init_distributed,
        init_peft,
        init_using_ptl,
        resolve_and_create_trainer,
        retrieve_custom_trainer_state_dict,
    )
    from nemo_aligner.utils.utils import retrieve_model_state_dict_in_cpu

    from nemo_gammapo.aligner.finite_guard import GuardedDPOTrainer
    from nemo_gammapo.aligner.pairs import collate_with_pair_ids
    from nemo_gammapo.aligner.sampler import build_pair_dataloader
    from nemo_gammapo.distributed.checkpoint import broadcast_from_last_stage

    restore_path = merge_checkpoint_config(cfg)
    resume_from = choose_resume_checkpoint(cfg, run_dir)
    layout = checked["layout"]
    sizes = {"tensor": layout.tensor, "pipeline": layout.pipeline, "data": layout.data}
    guard_resume(cfg, run_dir, resume_from, {**sizes, "micro_batch_size": cfg.model.micro_batch_size})
    trainer = resolve_and_create_trainer(cfg, "dpo")
    set_collective_timeout(trainer, cfg.trainer.dpo.collective_timeout_s)
    exp_manager(trainer, cfg.exp_manager)
    logging.info(f"Start-up checks passed: {checked}")
    if resume_from is not None:
        logging.info(f"Resuming from the newest complete checkpoint: {resume_from}")
    history = MetricsHistory(run_dir / "metrics.jsonl", write=trainer.global_rank == 0)
    if trainer.global_rank == 0:  # the resolved configuration this run uses, for reports and plots
        OmegaConf.save(resolved_run_config(cfg), run_dir / "config.yaml")
    logger = CustomLoggerWrapper([*trainer.loggers, history])

    model = build_model(cfg, trainer, restore_path)
    trainer_state = retrieve_custom_trainer_state_dict(trainer)  # None unless resuming
    consumed_samples = trainer_state["consumed_samples"] if trainer_state else 0
    init_distributed(trainer, model, cfg.model.get("transformer_engine", False))

    data = cfg.model.data
    train_ds, val_ds = build_datasets(cfg, model.tokenizer)
    # one global order at every layout (nemo_gammapo.data.order): resumable on another layout
    train_dl = build_pair_dataloader(
        cfg,
        train_ds,
        consumed_samples,
        shuffle=data.shuffle,
        restart=False,
        batches_per_epoch=steps_per_epoch(
            len(train_ds), cfg.model.global_batch_size, cfg.trainer.dpo.get("limit_train_batches", 1.0)
        ),
    )
    val_dl = build_pair_dataloader(cfg, val_ds, 0, shuffle=False, restart=True)

    init_peft(model, cfg.model)
    if not model.reference_free and model.reference_sums is None and not model.use_peft:
        # Full fine-tuning, online reference: the reference policy is the starting weights, kept
        # on the host for DPOTrainer's swap. With PEFT it is the base model with the adapters
        # switched off (NeMo-Aligner's convention; restored adapters are trained weights, not the
        # reference). Precomputed: the sums come from a file and no weights are kept.
        model.ref_policy_state_dict = retrieve_model_state_dict_in_cpu(
            model, megatron_amp_O2=cfg.model.get("megatron_amp_O2", False)
        )
    elif model.reference_check_due and trainer_state and not model.use_peft:
        # resuming with a precomputed reference: the reference check at the first step needs the
        # starting weights, which the checkpoint restore below replaces; dropped after the check
        model.ref_policy_state_dict = retrieve_model_state_dict_in_cpu(
            model, megatron_amp_O2=cfg.model.get("megatron_amp_O2", False)
        )
    init_using_ptl(trainer, model, train_dl, train_ds)
    optimizer, scheduler = extract_optimizer_scheduler_from_ptl_model(model)
    ckpt_callback = add_custom_checkpoint_callback(trainer, model)
    logger.log_hyperparams(OmegaConf.to_container(cfg))

    stop_request = StopRequest(watch=stop_file(run_dir) if trainer.global_rank == 0 else None)
    watchdog = HangWatchdog(run_dir, cfg.trainer.dpo.get("hang_timeout_s"), trainer.global_rank, trainer.world_size)
    dpo_trainer = GuardedDPOTrainer(
        checkpoint_dir=run_dir / "checkpoints",
        stop_request=stop_request,
        watchdog=watchdog,
        cfg=cfg.trainer.dpo,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_dataloader=train_dl,
        val_dataloader=val_dl,
        test_dataloader=None,
        collate_fn=partial(
            collate_with_pair_ids,
            eos_id=model.tokenizer.eos_id,
            reset_position_ids=data.get("reset_position_ids", False),
            reset_attention_mask=data.get("reset_attention_mask", False),
            eod_mask_loss=data.get("eod_mask_loss", False),
        ),
        logger=logger,
        ckpt_callback=ckpt_callback,
        run_timer=RunLimit(
            Timer(cfg.exp_manager.get("max_time_per_run")), cfg.trainer.dpo.get("stop_after_steps"), stop_request
        ),
        pad_length_to_multiple_of=data.get("pad_length_to_multiple_of"),
    )
    if trainer_state:
        dpo_trainer.load_state_dict(trainer_state)
    stop_request.install()
    watchdog.start()
    try:
        dpo_trainer.fit()
    finally:
        watchdog.stop()
        stop_request.uninstall()
    if stop_request.agreed and trainer.global_rank == 0:
        stop_request.consume()
        print(
            f"nemo-gammapo train: stopped on request after step {dpo_trainer.step}, with a checkpoint; "
            "re-running the same command resumes from it",
            flush=True,
        )
    torch.distributed.barrier()
    return TrainResult(
        run_dir=run_dir,
        history=history.records,
        reference_free=model.reference_free,
        holds_reference_weights=model.ref_policy_state_dict is not None,
        gamma_state=broadcast_from_last_stage(model.gamma_po.state_dict()) if model.gamma_po is not None else None,
        stopped_on_request=stop_request.agreed,
    )
