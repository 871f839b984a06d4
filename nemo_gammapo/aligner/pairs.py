"""Pair ids through NeMo-Aligner's data path: dataset item → collated batch → loss and dumps.

NeMo-Aligner's ``DPOModelDataset`` turns a JSONL row into token tensors and forgets the row; its
collate (``dpo_custom_collate``) keeps only tensors it knows. These two wrappers add one field:
each item carries ``pair_id`` (:func:`nemo_gammapo.data.pair_id.pair_id` of its row) and the
collated batch carries ``pair_ids`` (``int64 [B]``, in batch order). NeMo-Aligner splits every
tensor of a batch into micro-batches along dim 0, so the ids stay aligned with the pairs all the
way to the loss.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from nemo_aligner.algorithms.dpo import dpo_custom_collate
from nemo_aligner.data.nlp.builders import build_train_valid_test_datasets
from nemo_aligner.data.nlp.datasets import DPOModelDataset

from nemo_gammapo.data.pair_id import pair_id

PAIR_IDS = "pair_ids"  # the batch key


class PairIdDPODataset(DPOModelDataset):
    """``DPOModelDataset`` whose items also carry the row's ``pair_id``."""

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = super().__getitem__(idx)
        item["pair_id"] = pair_id(self.data[idx])
        return item


build_train_valid_test_pair_datasets = partial(build_train_valid_test_datasets, PairIdDPODataset)


def collate_with_pair_ids(batch: list[dict[str, Any]], **kwargs: Any) -> dict[str, torch.Tensor]:
    """``dpo_custom_collate`` plus ``pair_ids`` (``int64 [B]``)."""
    out = dpo_custom_collate(batch, **kwargs)
    out[PAIR_IDS] = torch.tensor([item["pair_id"] for item in batch], dtype=torch.int64)
    return out
