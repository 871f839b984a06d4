"""Byte-level tensors for preference pairs (the study's tokenizer: one token per UTF-8 byte).

Each pair becomes two right-padded rows (chosen, rejected) of ``seq_length`` token ids with the
megatron-core next-token layout: ``labels[t] = tokens[t + 1]`` and ``loss_mask[t] = 1`` exactly
where ``labels[t]`` is a response byte. Byte value 0 never occurs in the text and is the pad id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

VOCAB_SIZE = 256
PAD_ID = 0


@dataclass(frozen=True)
class PairTensors:
    """``N`` pairs as tensors; ``tokens``/``labels``/``loss_mask`` are ``[2, N, S]`` (chosen, rejected).

    ``ref_logps`` (``[2, N]``, summed reference-policy log-probs) is set for DPO-family losses.
    """

    ids: list[str]
    tokens: Tensor
    labels: Tensor
    loss_mask: Tensor
    ref_logps: Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        """Pairs ``index`` (``[B]``) as one megatron micro-batch of ``2B`` rows, chosen rows first."""
        out = {k: torch.cat([v[0, index], v[1, index]]) for k, v in self._fields().items()}
        rows, seq = out["tokens"].shape
        out["position_ids"] = torch.arange(seq).unsqueeze(0).expand(rows, seq)
        return out

    def _fields(self) -> dict[str, Tensor]:
        out = {"tokens": self.tokens, "labels": self.labels, "loss_mask": self.loss_mask}
        if self.ref_logps is not None:
            out["ref_logps"] = self.ref_logps
        return out

    def with_reference(self, ref_logps: Tensor) -> PairTensors:
        """A copy carrying ``ref_logps`` (``[2, N]``)."""
        return replace(self, ref_logps=ref_logps)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def encode_pairs(records: list[dict[str, Any]], seq_length: int) -> PairTensors:
    """Tokenise ``prompt + chosen_response`` and ``prompt + rejected_response`` byte by byte.

    Raises ``ValueError`` when a sequence does not fit in ``seq_length`` tokens.
    """
    n = len(records)
    tokens = torch.full((2, n, seq_length), PAD_ID, dtype=torch.long)
    loss_mask = torch.zeros(2, n, seq_length)
    for i, rec in enumerate(records):
        prompt = rec["prompt"].encode("utf-8")
        for side, key in enumerate(("chosen_response", "rejected_response")):
            response = rec[key].encode("utf-8")
            seq = prompt + response
            if len(seq) > seq_length:
                raise ValueError(f"pair {rec.get('id', i)!r}: {len(seq)} bytes > seq_length {seq_length}")
            tokens[side, i, : len(seq)] = torch.tensor(list(seq))
            loss_mask[side, i, len(prompt) - 1 : len(seq) - 1] = 1.0
    labels = torch.full_like(tokens, PAD_ID)
    labels[..., :-1] = tokens[..., 1:]
    return PairTensors([str(r.get("id", i)) for i, r in enumerate(records)], tokens, labels, loss_mask)


def encode_sequences(records: list[dict[str, Any]], seq_length: int) -> dict[str, Tensor]:
    """``prompt + response`` rows as ``[N, S]`` ``tokens``/``labels``/``loss_mask``/``position_ids`` (SFT)."""
    rows = [{"prompt": r["prompt"], "chosen_response": r["response"], "rejected_response": ""} for r in records]
    pairs = encode_pairs(rows, seq_length)
    out = {k: v[0] for k, v in pairs._fields().items()}
    out["position_ids"] = torch.arange(seq_length).unsqueeze(0).expand(len(records), seq_length)
    return out
