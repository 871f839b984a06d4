"""Byte-level encoding of the study: response bytes masked in, prompt and padding masked out."""

from __future__ import annotations

import torch

from nemo_gammapo.study.data import PAD_ID, encode_pairs


def test_mask_covers_exactly_the_response() -> None:
    rec = {"id": "a", "prompt": "Q: 7?\nA: ", "chosen_response": "odd\n", "rejected_response": "even\n"}
    pairs = encode_pairs([rec], seq_length=20)
    for side, response in enumerate(("odd\n", "even\n")):
        mask = pairs.loss_mask[side, 0].bool()
        assert bytes(pairs.labels[side, 0][mask].tolist()).decode() == response
        assert int(pairs.tokens[side, 0].ne(PAD_ID).sum()) == len(rec["prompt"]) + len(response)
    batch = pairs.batch(torch.tensor([0]))
    assert batch["tokens"].shape == (2, 20) and batch["position_ids"].shape == (2, 20)


def test_too_long_is_an_error() -> None:
    rec = {"prompt": "x" * 30, "chosen_response": "y", "rejected_response": "z"}
    try:
        encode_pairs([rec], seq_length=16)
    except ValueError as e:
        assert "seq_length" in str(e)
    else:
        raise AssertionError("expected ValueError")
