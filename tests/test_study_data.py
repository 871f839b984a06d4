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


def test_task_is_seeded_and_graded() -> None:
    """Same seed, same pairs; held-out labels follow R; BT labels err mostly on near-ties."""
    import numpy as np

    from nemo_gammapo.study.task import TaskSpec, label_noise_profile, sample_pairs

    spec = TaskSpec()
    train = sample_pairs(spec, 3, 2000, "train")
    assert train == sample_pairs(spec, 3, 2000, "train") and train != sample_pairs(spec, 4, 2000, "train")
    for row in train[:50]:
        assert row["chosen_reward"] == round(spec.true_reward(row["prompt"], row["chosen_response"]), 6)
    held = sample_pairs(spec, 3, 300, "heldout")
    assert all(r["chosen_reward"] > r["rejected_reward"] for r in held)
    gap = np.array([abs(r["chosen_reward"] - r["rejected_reward"]) for r in train])
    wrong = np.array([not r["bt_correct"] for r in train])
    near, far = gap < 0.5, gap >= 2.0
    assert near.any() and far.any()
    assert wrong[near].mean() > 0.2 > 0.02 > wrong[far].mean()  # ambiguous near-ties, clear large gaps
    expected = label_noise_profile(spec, gap).mean()
    assert abs(wrong.mean() - expected) < 0.03  # labels follow σ(ΔR / T)
