"""Precomputed reference log-probs: the sidecar file, its identity checks, and its use in the loss.

With ``model.dpo.reference: precomputed`` a reference-using loss (DPO family) reads the reference
policy's per-sequence log-prob sums from a file written once by ``nemo-gammapo precompute-reference``
(:mod:`nemo_gammapo.aligner.precompute`) instead of running the reference model every step: no
reference forward pass, no weight swap, no host copy of the weights.

The file (``model.dpo.reference_logprobs``, a ``torch.save`` of plain tensors and strings):

* ``pair_ids`` ``int64 [N]`` sorted (:func:`nemo_gammapo.data.pair_id.pair_id`), and per pair
  ``chosen`` / ``rejected`` ``float32 [N]`` — the sums of the response tokens' reference
  log-probs (exactly what the online path reduces each sequence to) — and ``chosen_tokens`` /
  ``rejected_tokens`` ``int64 [N]``;
* ``data_digest`` — ``{split: sha256 of the data file}`` for the training and validation files;
* ``model_digest`` — :func:`model_digest` of the reference model.

At start-up (:func:`check_sidecar`) a file whose data or model digest does not match the run, or
that lacks a value for any pair of the run's files, is refused naming the file and the pair.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nemo_gammapo.aligner.errors import ConfigError
from nemo_gammapo.data.pair_id import file_pair_ids

REFERENCE_MODES = ("online", "precomputed")
FORMAT_VERSION = 1
# Model settings that decide the reference log-probs, besides the weights (parallel layout does not).
ARCHITECTURE_KEYS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "kv_channels",
    "encoder_seq_length",
    "normalization",
    "layernorm_epsilon",
    "activation",
    "bias",
    "position_embedding_type",
    "rotary_base",
    "rotary_percentage",
    "share_embeddings_and_output_weights",
    "tokenizer",
)
FINGERPRINT_BYTES = 16 << 20  # of a checkpoint file, hashed at each end (hashing 100+ GB takes minutes)


def reference_mode(dpo: Mapping[str, Any]) -> str:
    """``model.dpo.reference`` checked: ``online`` or ``precomputed``."""
    mode = dpo.get("reference") or "online"
    if mode not in REFERENCE_MODES:
        raise ConfigError(f"model.dpo.reference={mode!r}: allowed {list(REFERENCE_MODES)}")
    return mode


def file_digest(path: str | Path) -> str:
    """SHA-256 of a data file's bytes (once per file version and process: the start-up checks of a
    precomputed reference and the resume guards both need it)."""
    stat = os.stat(path)
    return _digest(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(path: Path, h: Any) -> None:
    """Size and both ends of every file under ``path`` (a ``.nemo`` file or an extracted folder)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        size = file.stat().st_size
        h.update(f"{file.relative_to(path) if file != path else file.name}:{size}".encode())
        with open(file, "rb") as f:
            h.update(f.read(FINGERPRINT_BYTES))
            if size > 2 * FINGERPRINT_BYTES:
                f.seek(size - FINGERPRINT_BYTES)
                h.update(f.read(FINGERPRINT_BYTES))


def model_digest(cfg: Any) -> str:
    """Identity of the reference model: the starting checkpoint's fingerprint and the architecture.

    With ``pretrained_checkpoint.restore_from_path`` the checkpoint's size and first/last 16 MiB
    (of each file) are hashed, and the parallel layout is not part of it: a sidecar computed at one
    layout serves every layout. Without one (a randomly initialised tiny preset) the seed, the
    initialisation and the TP / PP sizes are (random weights differ between those layouts).
    """
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(cfg.model, resolve=True)
    h = hashlib.sha256()
    arch = {k: model.get(k) for k in ARCHITECTURE_KEYS}
    arch["precision"] = str(cfg.trainer.get("precision"))
    restore = cfg.pretrained_checkpoint.get("restore_from_path")
    if restore:
        path = Path(restore)
        if not path.exists():
            raise ConfigError(f"pretrained_checkpoint.restore_from_path: {path} does not exist")
        _fingerprint(path, h)
    else:  # random weights depend on the seed and on how TP / PP split the initialisation
        arch.update(
            random_init=True,
            seed=model.get("seed"),
            init_method_std=model.get("init_method_std"),
            tensor_model_parallel_size=model.get("tensor_model_parallel_size"),
            pipeline_model_parallel_size=model.get("pipeline_model_parallel_size"),
        )
    h.update(json.dumps(arch, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass
class ReferenceLogprobs:
    """Per-pair reference log-prob sums, sorted by pair id."""

    pair_ids: torch.Tensor  # int64 [N], sorted, unique
    chosen: torch.Tensor  # float32 [N]
    rejected: torch.Tensor  # float32 [N]
    chosen_tokens: torch.Tensor  # int64 [N]
    rejected_tokens: torch.Tensor  # int64 [N]
    data_digest: dict[str, str]
    model_digest: str

    @classmethod
    def from_rows(
        cls, rows: dict[int, tuple[float, float, int, int]], data_digest: dict[str, str], model_digest: str
    ) -> ReferenceLogprobs:
        """From ``{pair_id: (chosen, rejected, chosen_tokens, rejected_tokens)}``."""
        ids = sorted(rows)
        col = list(zip(*(rows[i] for i in ids), strict=True)) if ids else [(), (), (), ()]
        return cls(
            pair_ids=torch.tensor(ids, dtype=torch.int64),
            chosen=torch.tensor(col[0], dtype=torch.float32),
            rejected=torch.tensor(col[1], dtype=torch.float32),
            chosen_tokens=torch.tensor(col[2], dtype=torch.int64),
            rejected_tokens=torch.tensor(col[3], dtype=torch.int64),
            data_digest=dict(data_digest),
            model_digest=model_digest,
        )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"format": FORMAT_VERSION, **self.__dict__}, tmp)
        tmp.replace(path)  # never a half-written sidecar under the real name

    @classmethod
    def load(cls, path: str | Path) -> ReferenceLogprobs:
        try:
            state = torch.load(path, weights_only=True)
        except FileNotFoundError:
            raise ConfigError(
                f"model.dpo.reference_logprobs: {path} does not exist; write it first with "
                "`nemo-gammapo precompute-reference` (same config and overrides as the training run)"
            ) from None
        except Exception as e:  # any unreadable file is the same user error
            raise ConfigError(f"model.dpo.reference_logprobs: {path} is not a reference log-prob file ({e})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
            raise ConfigError(f"model.dpo.reference_logprobs: {path} is not a format-{FORMAT_VERSION} reference file")
        state.pop("format")
        return cls(**state)

    def lookup(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) sums for ``ids`` (``int64 [B]``); ``KeyError`` naming a missing id."""
        pos = torch.searchsorted(self.pair_ids, ids).clamp(max=max(len(self.pair_ids) - 1, 0))
        found = self.pair_ids[pos] == ids if len(self.pair_ids) else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(found.all()):
            missing = int(ids[~found][0])
            raise KeyError(f"pair {missing} has no precomputed reference log-probs")
        return self.chosen[pos], self.rejected[pos]


def check_sidecar(cfg: Any, files: Mapping[str, list[str]]) -> ReferenceLogprobs:
    """Refuse a sidecar that does not belong to this run; the loaded sidecar if it does.

    ``files``: ``{split: [path]}`` of the run's training and validation data.
    """
    path = Path(cfg.model.dpo.reference_logprobs)
    sidecar = ReferenceLogprobs.load(path)
    scanned: list[tuple[str, list[tuple[int, int]]]] = []  # (file, [(line, pair id)]): each file read once
    for split, paths in files.items():
        for data in paths:
            h = hashlib.sha256()
            scanned.append((data, list(file_pair_ids(data, h))))
            digest = h.hexdigest()
            if sidecar.data_digest.get(split) != digest:
                raise ConfigError(
                    f"model.dpo.reference_logprobs: {path} was computed for other {split} data than {data} "
                    f"(sha256 {str(sidecar.data_digest.get(split))[:12]}… vs {digest[:12]}…); recompute it"
                )
    digest = model_digest(cfg)
    if sidecar.model_digest != digest:
        raise ConfigError(
            f"model.dpo.reference_logprobs: {path} was computed with another reference model than this run's "
            f"(model digest {sidecar.model_digest[:12]}… vs {digest[:12]}…); recompute it"
        )
    known = set(sidecar.pair_ids.tolist())
    for data, ids in scanned:
        for lineno, pid in ids:
            if pid not in known:
                raise ConfigError(
                    f"model.dpo.reference_logprobs: {path} has no value for the pair at {data}:{lineno} "
                    f"(pair id {pid}); recompute it"
                )
    return sidecar


def place_sums(sums: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token reference log-probs ``[R, S]`` whose masked sum per row is ``sums[r]`` exactly.

    NeMo-Aligner's batch carries the reference as per-token log-probs and the loss reduces them
    with the response mask (``labels > -1``). Putting each row's precomputed sum on its first
    response token and zeros elsewhere gives back that sum bit for bit (adding zeros is exact),
    and the same holds for the per-token average. Rows without response tokens stay zero.
    """
    mask = labels > -1
    out = torch.zeros(labels.shape, dtype=torch.float32)
    first = mask.float().argmax(dim=-1)
    has_tokens = mask.any(dim=-1)
    rows = torch.arange(labels.shape[0])
    out[rows[has_tokens], first[has_tokens]] = sums.float()[has_tokens]
    return out
