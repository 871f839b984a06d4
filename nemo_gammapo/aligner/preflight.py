"""Start-up checks: everything a run would otherwise assert on later, checked before a model exists.

Each check raises :class:`~nemo_gammapo.aligner.errors.ConfigError` with one message that names
the key (or ``file:line``) and the allowed values. The checks are pure functions of the composed
configuration and the data files, so every rank reaches the same verdict without communicating.

What is checked, and the failure it prevents:

* ``model.dpo``: unknown or misspelled keys (with a suggestion), ``loss_params`` entries that would
  silently override a top-level key (β, the loss name, γ/β, length averaging), the loss and γ
  values themselves, and γ-PO losses without a base margin (γ0 = 0 makes γ-SimPO plain SimPO).
* layout: TP × PP × CP against the processes (``trainer.devices × trainer.num_nodes``), attention
  heads / query groups against TP, layers against PP, sequence length against CP.
* batch: ``global_batch_size`` against ``micro_batch_size × data-parallel size``, and the
  reference log-prob micro-batch against the per-rank batch.
* data: one JSONL file per split, each a readable, well-formed file with at least one global batch.
* intervals: NeMo-Aligner's ``save_interval % val_check_interval == 0`` assertion (which fires
  after the first step), with a fractional ``val_check_interval`` resolved against the real
  number of steps per epoch.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from nemo_gammapo.aligner.config import ALIGNER_KEYS, ALIGNER_NATIVE_LOSSES, TOP_LEVEL_FIELDS, dump_config, loss_configs
from nemo_gammapo.aligner.errors import ConfigError
from nemo_gammapo.aligner.identity import allowed_changes
from nemo_gammapo.aligner.reference import check_sidecar, reference_mode
from nemo_gammapo.aligner.reference_check import check_tolerance
from nemo_gammapo.core.config import GammaConfig, GammaDumpConfig, PreferenceLossConfig

# model.dpo keys NeMo-Aligner's MegatronGPTDPOModel reads besides the ones it shares with our loss config.
ALIGNER_ONLY_DPO_KEYS = frozenset(
    {
        "sft_average_log_probs",
        "preference_loss_weight",
        "sft_loss_weight",
        "gt_reward_scale",
        "log_prob_forward_micro_batch_size",
    }
)
DPO_KEYS = ALIGNER_ONLY_DPO_KEYS | set(ALIGNER_KEYS) | set(TOP_LEVEL_FIELDS) | {"loss_params", "gamma", "gamma_dump"}
DPO_KEYS |= {"reference", "reference_logprobs", "reference_check_tolerance"}  # aligner.reference(_check)
# PreferenceLossConfig fields set by a top-level model.dpo key, never by loss_params.
TOP_LEVEL_LOSS_FIELDS = {field: key for key, field in ALIGNER_KEYS.items()} | {f: f for f in TOP_LEVEL_FIELDS}
LOSS_PARAM_KEYS = frozenset(f.name for f in fields(PreferenceLossConfig)) - set(TOP_LEVEL_LOSS_FIELDS)
GAMMA_KEYS = frozenset(f.name for f in fields(GammaConfig))
GAMMA_DUMP_KEYS = frozenset(f.name for f in fields(GammaDumpConfig))
DATA_IMPLS = ("jsonl", "json")  # preference-pair files NeMo-Aligner reads one pair per line


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig | ListConfig) else node


def _unknown_keys(node: Mapping[str, Any] | None, allowed: frozenset[str], prefix: str) -> None:
    for key in sorted(node or {}):
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
        hint = f"; did you mean {prefix}.{close[0]}?" if close else f"; allowed: {sorted(allowed)}"
        raise ConfigError(f"{prefix}.{key} is not a configuration key{hint}")


def check_dpo_section(dpo: DictConfig | Mapping[str, Any], prefix: str = "model.dpo") -> None:
    """Keys and values of ``model.dpo``: nothing unknown, nothing overridden twice, γ0 > 0 for γ-PO."""
    dpo = _plain(dpo) or {}
    _unknown_keys(dpo, frozenset(DPO_KEYS), prefix)
    for key, allowed in (("gamma", GAMMA_KEYS), ("gamma_dump", GAMMA_DUMP_KEYS)):
        if dpo.get(key) is not None and not isinstance(dpo[key], Mapping):
            raise ConfigError(f"{prefix}.{key} must be a mapping (got {dpo[key]!r})")
        _unknown_keys(dpo.get(key), allowed, f"{prefix}.{key}")
    params = dpo.get("loss_params") or {}
    for key in sorted(params):
        if key in TOP_LEVEL_LOSS_FIELDS:
            raise ConfigError(
                f"{prefix}.loss_params.{key} would override {prefix}.{TOP_LEVEL_LOSS_FIELDS[key]}; "
                f"set {prefix}.{TOP_LEVEL_LOSS_FIELDS[key]} instead"
            )
    _unknown_keys(params, LOSS_PARAM_KEYS, f"{prefix}.loss_params")
    dump_config(dpo, prefix)

    name = dpo.get("preference_loss")
    if name in ALIGNER_NATIVE_LOSSES:
        return
    loss_configs(dpo, prefix)  # raises ConfigError naming the key (γ0 > 0 for γ-PO losses included)


@dataclass(frozen=True)
class Layout:
    """Process layout implied by the configuration."""

    world_size: int
    tensor: int
    pipeline: int
    context: int

    @property
    def data(self) -> int:
        return self.world_size // (self.tensor * self.pipeline * self.context)


def _positive_int(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be an integer >= 1 (got {value!r})")
    return value


def check_layout(cfg: DictConfig) -> Layout:
    """TP/PP/CP against the processes, heads, layers and sequence length; returns the layout."""
    devices = _positive_int(cfg.trainer.devices, "trainer.devices")
    nodes = _positive_int(cfg.trainer.num_nodes, "trainer.num_nodes")
    m = cfg.model
    tp = _positive_int(m.get("tensor_model_parallel_size", 1), "model.tensor_model_parallel_size")
    pp = _positive_int(m.get("pipeline_model_parallel_size", 1), "model.pipeline_model_parallel_size")
    cp = _positive_int(m.get("context_parallel_size", 1) or 1, "model.context_parallel_size")
    world = devices * nodes
    if world % (tp * pp * cp):
        raise ConfigError(
            f"model.tensor_model_parallel_size × pipeline_model_parallel_size × context_parallel_size = "
            f"{tp} × {pp} × {cp} = {tp * pp * cp} must divide the {world} processes "
            f"(trainer.devices={devices} × trainer.num_nodes={nodes})"
        )
    heads = m.get("num_attention_heads")
    if isinstance(heads, int) and heads % tp:
        raise ConfigError(
            f"model.num_attention_heads ({heads}) must be divisible by model.tensor_model_parallel_size ({tp})"
        )
    groups = m.get("num_query_groups")
    if isinstance(groups, int) and groups % tp:
        raise ConfigError(
            f"model.num_query_groups ({groups}) must be divisible by model.tensor_model_parallel_size ({tp})"
        )
    layers = m.get("num_layers")
    if isinstance(layers, int) and layers % pp:
        raise ConfigError(f"model.num_layers ({layers}) must be divisible by model.pipeline_model_parallel_size ({pp})")
    if m.get("virtual_pipeline_model_parallel_size") not in (None, 1):
        raise ConfigError(
            "model.virtual_pipeline_model_parallel_size must be null or 1: NeMo-Aligner's DPO loop runs one model "
            "chunk per pipeline stage"
        )
    seq = m.get("encoder_seq_length")
    if cp > 1 and isinstance(seq, int) and seq % (2 * cp):
        raise ConfigError(
            f"model.encoder_seq_length ({seq}) must be divisible by 2 × model.context_parallel_size ({cp})"
        )
    return Layout(world, tp, pp, cp)


def check_batch(cfg: DictConfig, layout: Layout) -> None:
    """Global batch against micro-batch × data-parallel size; the reference micro-batch against it."""
    mbs = _positive_int(cfg.model.micro_batch_size, "model.micro_batch_size")
    gbs = _positive_int(cfg.model.global_batch_size, "model.global_batch_size")
    if gbs % (mbs * layout.data):
        raise ConfigError(
            f"model.global_batch_size ({gbs}) must be a multiple of model.micro_batch_size ({mbs}) × data-parallel "
            f"size ({layout.data} = {layout.world_size} processes / (TP {layout.tensor} × PP {layout.pipeline} × "
            f"CP {layout.context}))"
        )
    ref_mbs = cfg.model.dpo.get("log_prob_forward_micro_batch_size")
    if ref_mbs is not None:
        ref_mbs = _positive_int(ref_mbs, "model.dpo.log_prob_forward_micro_batch_size")
        per_rank = gbs // layout.data
        if per_rank % ref_mbs:
            raise ConfigError(
                f"model.dpo.log_prob_forward_micro_batch_size ({ref_mbs}) must divide the per-rank batch "
                f"(model.global_batch_size / data-parallel size = {per_rank})"
            )


def check_run_options(cfg: DictConfig) -> None:
    """Options of this entry point and of the data loader."""
    if cfg.model.data.data_impl not in DATA_IMPLS:
        # packed_jsonl would pass NeMo-Aligner's dataset builder but our collate and DP margin gather
        # are for unpacked pairs; packed sequences need Transformer Engine (a GPU container) anyway.
        raise ConfigError(f"model.data.data_impl must be one of {list(DATA_IMPLS)} (got {cfg.model.data.data_impl!r})")
    stop = cfg.trainer.dpo.get("stop_after_steps")
    if stop is not None and (not isinstance(stop, int) or stop < 1):
        raise ConfigError(f"trainer.dpo.stop_after_steps must be null or an integer >= 1 (got {stop!r})")
    check_fault_timeouts(cfg)
    check_reference_options(cfg)
    allowed_changes(cfg)


def check_fault_timeouts(cfg: DictConfig) -> None:
    """``trainer.dpo.collective_timeout_s`` (required, > 0) and ``hang_timeout_s`` (null or > 0), seconds."""
    dpo = cfg.trainer.dpo
    for key, nullable in (("collective_timeout_s", False), ("hang_timeout_s", True)):
        value = dpo.get(key)
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            allowed = "null (off) or a number of seconds > 0" if nullable else "a number of seconds > 0"
            raise ConfigError(f"trainer.dpo.{key} must be {allowed} (got {value!r})")


def needs_reference(dpo: Any) -> bool:
    """Does the configured loss read reference-policy log-probs?"""
    from nemo_gammapo.core.registry import LOSSES

    name = dpo.get("preference_loss")
    return name in ALIGNER_NATIVE_LOSSES or LOSSES[name].needs_reference


def check_reference_options(cfg: DictConfig) -> None:
    """``model.dpo.reference`` / ``reference_logprobs`` make sense for this loss and layout."""
    mode = reference_mode(cfg.model.dpo)
    check_tolerance(cfg.model.dpo.get("reference_check_tolerance"))
    if mode != "precomputed":
        return
    loss = cfg.model.dpo.preference_loss
    if not needs_reference(cfg.model.dpo):
        raise ConfigError(f"model.dpo.reference=precomputed but {loss} uses no reference policy; remove the setting")
    if not cfg.model.dpo.get("reference_logprobs"):
        raise ConfigError("model.dpo.reference=precomputed needs model.dpo.reference_logprobs (the file to read)")
    if cfg.model.get("context_parallel_size", 1) != 1:
        raise ConfigError(
            "model.dpo.reference=precomputed supports model.context_parallel_size=1 only "
            f"(got {cfg.model.context_parallel_size}); use model.dpo.reference=online"
        )


def validate_config(cfg: DictConfig) -> Layout:
    """Every check that needs only the configuration (no files); returns the layout."""
    check_dpo_section(cfg.model.dpo)
    check_run_options(cfg)
    layout = check_layout(cfg)
    check_batch(cfg, layout)
    return layout


def data_files(cfg: DictConfig) -> dict[str, list[str]]:
    """``model.data.data_prefix`` as split → files; refuses blends and anything but file paths."""
    prefix = cfg.model.data.data_prefix
    if not isinstance(prefix, DictConfig | Mapping):
        raise ConfigError("model.data.data_prefix must be a mapping with train / validation / test file lists")
    out: dict[str, list[str]] = {}
    for split in ("train", "validation", "test"):
        value = prefix.get(split)
        key = f"model.data.data_prefix.{split}"
        if value is None:
            if split == "test":
                continue
            raise ConfigError(f"{key} is required: a list with one JSONL file")
        entries = [value] if isinstance(value, str) else list(value)
        if len(entries) != 1 or not isinstance(entries[0], str):
            raise ConfigError(
                f"{key} must be a list with exactly one JSONL file (got {len(entries)} entries: {entries!r}); "
                "merge several files into one (e.g. `cat a.jsonl b.jsonl > train.jsonl`); this entry point does not "
                "build weighted blends"
            )
        out[split] = entries
    return out


def validate_data(cfg: DictConfig, warn: Callable[[str], None] | None = None) -> dict[str, int]:
    """Validate every data file (``file:line`` for each problem); returns pairs per split."""
    from nemo_gammapo.data.startup import validate_training_data
    from nemo_gammapo.data.validate import DataValidationError

    files = data_files(cfg)
    byte_level = (cfg.model.get("tokenizer") or {}).get("library") == "byte-level"
    try:
        reports = validate_training_data(
            files,
            max_length=cfg.model.data.get("seq_length") if byte_level else None,  # byte counts are exact only there
            warn=warn,
        )
    except DataValidationError as e:
        raise ConfigError(str(e)) from None
    pairs = {split: sum(r.records for r in split_reports) for split, split_reports in reports.items()}
    gbs = cfg.model.global_batch_size
    if pairs["train"] < gbs:
        raise ConfigError(
            f"model.data.data_prefix.train: {files['train'][0]} has {pairs['train']} pairs, fewer than one global "
            f"batch (model.global_batch_size={gbs})"
        )
    limit_val = cfg.trainer.dpo.get("limit_val_batches", 1.0)
    drop_last = cfg.model.data.get("validation_drop_last", True)
    if limit_val != 0 and drop_last and pairs["validation"] < gbs:
        raise ConfigError(
            f"model.data.data_prefix.validation: {files['validation'][0]} has {pairs['validation']} pairs, fewer "
            f"than one global batch (model.global_batch_size={gbs}), so validation would have no batch"
        )
    return pairs


def steps_per_epoch(train_pairs: int, global_batch_size: int, limit_train_batches: Any = 1.0) -> int:
    """NeMo-Aligner's steps per epoch: whole global batches, then ``limit_train_batches``."""
    steps = train_pairs // global_batch_size
    if limit_train_batches is None or (isinstance(limit_train_batches, float) and limit_train_batches > 1.0):
        limit_train_batches = 1.0
    if isinstance(limit_train_batches, float):
        return int(steps * limit_train_batches)
    return min(steps, limit_train_batches) if limit_train_batches >= 0 else steps


def check_intervals(cfg: DictConfig, train_pairs: int) -> int:
    """NeMo-Aligner's interval arithmetic on the real data size; returns the validation interval in steps."""
    dpo = cfg.trainer.dpo
    gbs = cfg.model.global_batch_size
    steps = steps_per_epoch(train_pairs, gbs, dpo.get("limit_train_batches", 1.0))
    if steps < 1:
        raise ConfigError(
            f"trainer.dpo.limit_train_batches={dpo.get('limit_train_batches')!r} leaves no training step "
            f"({train_pairs} pairs at model.global_batch_size={gbs})"
        )
    given = dpo.val_check_interval
    if isinstance(given, bool) or not isinstance(given, int | float) or given < 0:
        raise ConfigError(
            f"trainer.dpo.val_check_interval must be an integer >= 0 or a fraction in (0, 1] (got {given!r})"
        )
    interval = int(given * steps) if isinstance(given, float) else given
    where = f"trainer.dpo.val_check_interval={given}"
    if isinstance(given, float):
        where += f" ({interval} steps of the {steps} per epoch: {train_pairs} pairs / global batch {gbs})"
        if interval < 1:
            raise ConfigError(f"{where} is less than one step; give an integer number of steps")
    save = dpo.save_interval
    if isinstance(save, bool) or not isinstance(save, int):
        raise ConfigError(f"trainer.dpo.save_interval must be an integer (got {save!r})")
    validating = dpo.get("limit_val_batches", 1.0) != 0 and interval > 0
    if validating and save > 0 and save % interval:
        divisors = [d for d in range(1, save + 1) if save % d == 0 and d <= steps]
        raise ConfigError(
            f"{where} must divide trainer.dpo.save_interval={save} (NeMo-Aligner asserts it after the first "
            f"step); use an integer val_check_interval, one of {divisors[-6:]}"
        )
    return interval


def preflight(cfg: DictConfig, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All start-up checks in order (configuration, then data, then intervals); returns what they found."""
    layout = validate_config(cfg)
    pairs = validate_data(cfg, warn)
    interval = check_intervals(cfg, pairs["train"])
    if reference_mode(cfg.model.dpo) == "precomputed":
        check_sidecar(cfg, data_files(cfg))
    return {"layout": layout, "pairs": pairs, "val_check_interval": interval}
