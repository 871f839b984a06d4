"""Identity guards on resume: a run_dir continues only the run it holds.

At a run's first start, rank 0 records in ``run_dir/.nemo_gammapo/run_identity.json`` (NeMo's
exp_manager moves the run_dir's top-level files into ``run_<N>/`` at every start) what decides its numbers,
in four groups:

* ``data``: the SHA-256 of each data file (by split; paths may differ on another allocation);
* ``model``: the starting model (the ``.nemo`` fingerprint of :func:`reference.model_digest`, not
  its path; for a random start its seed and initialisation), the architecture and the tokenizer
  (files by digest);
* ``loss``: the resolved ``model.dpo`` (loss, β, γ settings, loss parameters), less what cannot
  change the numbers (dumps, the log-prob forward's micro-batch, where the reference comes from);
* ``training``: global batch, seed, shuffling, epoch length (``limit_train_batches``), optimizer and
  schedule settings, clipping, precision.

Everything else — logging, intervals, the parallel layout, ``micro_batch_size``, ``stop_after_steps``,
timeouts — may change between starts, and so may ``max_steps`` / ``max_epochs``: running a run longer
is deliberate (the learning-rate schedule then follows the new length from the resumed step on);
each start records them. A resume whose groups differ stops at start-up with one line
naming each change and how to go on (``+resume.allow_changes=[data,...]`` or a new run_dir); an
accepted change is recorded. Independently of the record, the checkpoint to resume from must
hold the configured architecture (its ``common.pt`` keeps the model config it was saved with).
Each start also appends its layout; a change of G (the pairs of one γ solve, DP × micro-batch)
is reported, not refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nemo_gammapo.aligner.errors import ConfigError, global_rank
from nemo_gammapo.aligner.reference import ARCHITECTURE_KEYS

RECORD = Path(".nemo_gammapo") / "run_identity.json"  # relative to the run_dir
GROUPS = ("data", "model", "loss", "training")
# model.dpo keys that do not change a run's numbers (the reference's source is proven equal both ways)
LOSS_IGNORED = (
    "gamma_dump",
    "log_prob_forward_micro_batch_size",
    "reference",
    "reference_logprobs",
    "reference_check_tolerance",
)
# Model-config keys a checkpoint's tensors must agree with: the reference's architecture keys
# less those that change the numbers but not the tensors' shapes.
NOT_SHAPES = ("encoder_seq_length", "layernorm_epsilon", "rotary_base", "rotary_percentage", "tokenizer")
CHECKPOINT_SHAPE_KEYS = tuple(k for k in ARCHITECTURE_KEYS if k not in NOT_SHAPES)
TOKENIZER_FILES = ("model", "vocab_file", "merge_file")


def _digest_or_value(value: Any) -> Any:
    """A file's SHA-256 in place of its path (the path differs across allocations)."""
    from nemo_gammapo.aligner.reference import file_digest

    if isinstance(value, str) and os.path.isfile(value):
        return f"sha256:{file_digest(value)}"
    return value


def start_model_identity(cfg: DictConfig) -> dict[str, Any]:
    """The starting model, independent of where it is stored and of the parallel layout."""
    from nemo_gammapo.aligner.reference import _fingerprint

    model = OmegaConf.to_container(cfg.model, resolve=True)
    out: dict[str, Any] = {k: model.get(k) for k in ARCHITECTURE_KEYS if k != "tokenizer"}
    tokenizer = dict(model.get("tokenizer") or {})
    out["tokenizer"] = {k: _digest_or_value(v) if k in TOKENIZER_FILES else v for k, v in sorted(tokenizer.items())}
    restore = cfg.pretrained_checkpoint.get("restore_from_path")
    if restore:
        h = hashlib.sha256()
        _fingerprint(Path(restore), h)
        out["checkpoint"] = h.hexdigest()
    else:  # random start: what the weights were drawn from (resumes load the trained weights anyway)
        out["random_init"] = {"seed": model.get("seed"), "init_method_std": model.get("init_method_std")}
    return out


def run_identity(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The four groups for ``cfg`` (data files hashed; see the module docstring)."""
    from nemo_gammapo.aligner.preflight import data_files
    from nemo_gammapo.aligner.reference import file_digest
    from nemo_gammapo.aligner.train import resolved_run_config

    resolved = resolved_run_config(cfg)
    dpo = {k: v for k, v in OmegaConf.to_container(resolved.model.dpo).items() if k not in LOSS_IGNORED}
    model, trainer = resolved.model, resolved.trainer
    training = {
        "model.global_batch_size": model.global_batch_size,
        "model.seed": model.seed,
        "model.data.shuffle": model.data.shuffle,
        "model.data.seq_length": model.data.get("seq_length"),
        "model.optim": OmegaConf.to_container(model.optim),
        "trainer.dpo.limit_train_batches": trainer.dpo.get("limit_train_batches"),
        "trainer.dpo.gradient_clip_val": trainer.dpo.get("gradient_clip_val"),
        "trainer.precision": str(trainer.get("precision")),
    }
    data = {split: f"sha256:{file_digest(files[0])}" for split, files in data_files(cfg).items()}
    return {"data": data, "model": start_model_identity(cfg), "loss": dpo, "training": training}


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    if text.startswith("sha256:"):
        return text[:19] + "…"
    return text if len(text) <= 40 else text[:39] + "…"


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[str]]:
    """Group → ``"key: old → new"`` for every differing entry (shallow keys first; empty groups left out)."""
    out: dict[str, list[str]] = {}
    for group in GROUPS:
        a, b = _flat(old.get(group, {})), _flat(new.get(group, {}))
        diff = [
            f"{k}: {_short(a.get(k, '<unset>'))} → {_short(b.get(k, '<unset>'))}"
            for k in sorted(a.keys() | b.keys(), key=lambda k: (k.count("."), k))  # shallow keys first
            if a.get(k) != b.get(k)
        ]
        if diff:
            out[group] = diff
    return out


def allowed_changes(cfg: DictConfig) -> list[str]:
    """``resume.allow_changes`` checked: a list of group names."""
    resume = cfg.get("resume") or {}
    given = resume.get("allow_changes") or []
    given = [given] if isinstance(given, str) else list(given)
    for name in given:
        if name not in GROUPS:
            raise ConfigError(f"resume.allow_changes: {name!r} is not a group; allowed {list(GROUPS)}")
    return given


def check_checkpoint_architecture(checkpoint: Path, cfg: DictConfig) -> None:
    """Refuse a checkpoint saved by a model of another shape (its ``common.pt`` records the config)."""
    import torch

    common = checkpoint / "common.pt"
    if not common.is_file():
        return
    saved = torch.load(common, map_location="cpu", weights_only=False).get("hyper_parameters", {}).get("cfg")
    if saved is None:
        return
    differ = [
        f"{k}: {saved.get(k)!r} in the checkpoint, {cfg.model.get(k)!r} configured"
        for k in CHECKPOINT_SHAPE_KEYS
        if saved.get(k) != cfg.model.get(k)
    ]
    if differ:
        raise ConfigError(
            f"{checkpoint} holds another model's weights ({'; '.join(differ)}); it cannot resume this run: "
            "use a new run_dir (or move the checkpoints away)"
        )


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)  # readers on other ranks see the old record or the new one, never half


def guard_resume(
    cfg: DictConfig,
    run_dir: Path,
    resume_from: Path | None,
    layout: Mapping[str, int],
    say: Callable[[str], None] = print,
) -> dict[str, list[str]]:
    """Check a resume against the run's record and record this start; returns the accepted changes.

    ``layout``: this start's ``tensor``, ``pipeline``, ``data`` sizes and ``micro_batch_size``.
    Raises :class:`ConfigError` (one line) for a change not in ``resume.allow_changes`` and for a
    checkpoint of another architecture. Every rank checks; global rank 0 writes and speaks.
    """
    allowed = allowed_changes(cfg)
    path = run_dir / RECORD
    current = run_identity(cfg)
    try:
        record = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        record = None
    start = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **layout, "G": layout["data"] * layout["micro_batch_size"]}
    start |= {"max_steps": cfg.trainer.dpo.get("max_steps"), "max_epochs": cfg.trainer.dpo.get("max_epochs")}
    accepted: dict[str, list[str]] = {}
    if resume_from is not None:
        check_checkpoint_architecture(resume_from, cfg)
    if resume_from is not None and record is not None:
        found = changes(record["identity"], current)
        refused = {g: d for g, d in found.items() if g not in allowed}
        if refused:
            what = "; ".join(f"{g}: {', '.join(d[:3])}{' …' if len(d) > 3 else ''}" for g, d in refused.items())
            groups = ",".join(refused)
            raise ConfigError(
                f"{run_dir} holds a run started with other {'/'.join(refused)} ({what}); to go on with the change "
                f"add +resume.allow_changes=[{groups}], or start a new run_dir"
            )
        accepted = found
        last_g = (record.get("starts") or [{}])[-1].get("G")
        if last_g is not None and last_g != start["G"] and global_rank() == 0:
            say(
                f"nemo-gammapo train: G, the pairs of one γ solve (data-parallel {layout['data']} × micro-batch "
                f"{layout['micro_batch_size']}), is now {start['G']}, was {last_g}: γ's solve sets differ from the "
                "uninterrupted run's from here on (recorded; not an error)"
            )
        if accepted and global_rank() == 0:
            listed = "; ".join(c for group in accepted.values() for c in group)
            say(f"nemo-gammapo train: resuming with accepted changes ({listed})")
    if global_rank() == 0:
        if resume_from is None or record is None:
            record = {"identity": current, "starts": []}
        start["resumed_from"] = str(resume_from) if resume_from is not None else None
        if accepted:
            start["accepted_changes"] = accepted
        record["identity"] = current
        record["starts"].append(start)
        record["config"] = OmegaConf.to_container(cfg, resolve=True)
        _write(path, record)
    return accepted
