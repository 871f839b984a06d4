"""Hugging Face ↔ NeMo conversion: tiny random Llama, Mistral and Qwen2 models through our training path
give ``transformers``' log-probs, at TP1 and TP2, before and after training.

Tiny ``transformers`` models of each family and a byte-level tokenizer are built offline, converted to
``.nemo`` (:func:`nemo_gammapo.convert.hf.hf_to_nemo`) and restored the way training does
(``pretrained_checkpoint.restore_from_path`` with the ``tiny_llama_cpu`` preset, whose architecture
keys are dropped so the checkpoint's apply). The per-sequence log-probs of the chosen and rejected
responses of bundled demo pairs (NeMo-Aligner's ``get_logprob_batch``) are compared with
``transformers`` on the same weights and tokens; the export back to HF is compared weight by weight.

The round trip: the converted Llama is restored at TP2 by 2 processes (log-probs again), trained
2 steps there by the real training path, its newest checkpoint becomes a ``.nemo``
(``run_to_nemo``, read at TP1) and then a HF folder; that model reloads in ``transformers``,
generates, and scores the pairs as our NeMo path scores the trained ``.nemo``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from nemo_gammapo.distributed.process_groups import run_on_ranks

TOLERANCE = 1e-4
PAIRS = 4
TOKENS = 264  # the byte-level tokenizer's size: 8 specials + 256 bytes (8 × 33)
# transformers config class and the keys that differ from the shared tiny shape
TINY: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    # QKV bias, tied embeddings, and more embedding rows than tokens (as Qwen2's 152064 vs 151665)
    "qwen2": ("Qwen2Config", {"vocab_size": 320, "tie_word_embeddings": True}),
}
ARCHITECTURE_KEYS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "normalization",
    "layernorm_epsilon",
    "activation",
    "bias",
    "position_embedding_type",
    "share_embeddings_and_output_weights",
    "make_vocab_size_divisible_by",
    "init_method_std",
    "tokenizer",
)
PROMPT = "Q: is 416 even or odd?\nA: "


def make_tiny(family: str, out: Path) -> None:
    """A random 2-layer model of ``family`` (GQA 4/2, 64 wide) and a byte-level BPE tokenizer in ``out``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from nemo_gammapo.convert.hf import FAMILIES

    specials = ["<s>", "</s>", "<pad>"] + [f"<extra_{i}>" for i in range(5)]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    assert len(vocab) == TOKENS
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(
        out
    )
    config_class, specific = TINY[family]
    shape: dict[str, Any] = {
        "vocab_size": TOKENS,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
        "tie_word_embeddings": False,
    }
    config = getattr(transformers, config_class)(**{**shape, **specific})
    torch.manual_seed(0)
    model = getattr(transformers, FAMILIES[family].hf_model)(config)
    with torch.no_grad():  # norms away from 1, larger weights, non-zero biases: a mapping error cannot hide
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" in name or "bias" in name else 0.05))
    model.save_pretrained(out)


def hf_sequence_logprobs(model: Any, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[N]``: Σ over response tokens of log_softmax(logits)[next token].

    ``tokens`` / ``labels`` ``[N, S]``; ``labels`` holds the next tokens, -100 outside the responses.
    """
    with torch.no_grad():
        logits = model(tokens).logits.float()
    per_token = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (per_token * (labels > -1)).sum(-1)


def nemo_sequence_logprobs(nemo: Path, run_dir: Path, devices: int = 1, tp: int = 1) -> dict[str, Any]:
    """Restore ``nemo`` through the training path at TP ``tp`` and score the first :data:`PAIRS` demo pairs.

    Call with a process group of ``devices`` ranks (or inside ``nemo_session``). Returns the model,
    ``tokens`` / ``labels`` ``[2·PAIRS, S]`` (chosen rows, then rejected) and ``sums`` ``[2·PAIRS]`` (nats).
    """
    from nemo_aligner.utils.train_script_utils import init_distributed, resolve_and_create_trainer
    from omegaconf import open_dict

    from nemo_gammapo.aligner.pairs import collate_with_pair_ids
    from nemo_gammapo.aligner.train import build_datasets, build_model, merge_checkpoint_config
    from nemo_gammapo.bench.nemo_step import use_bundled_demo_data
    from nemo_gammapo.configs import compose

    cfg = compose(
        "tiny_llama_cpu",
        [
            f"run_dir={run_dir}",
            f"trainer.devices={devices}",
            f"model.tensor_model_parallel_size={tp}",
            f"pretrained_checkpoint.restore_from_path={nemo}",
            f"model.dpo.log_prob_forward_micro_batch_size={PAIRS}",
        ],
    )
    use_bundled_demo_data(cfg)
    with open_dict(cfg):
        for key in ARCHITECTURE_KEYS:  # as a real preset: the architecture comes from the checkpoint
            cfg.model.pop(key)
    restore_path = merge_checkpoint_config(cfg)
    trainer = resolve_and_create_trainer(cfg, "dpo")
    model = build_model(cfg, trainer, restore_path)
    init_distributed(trainer, model, False)
    train_ds, _ = build_datasets(cfg, model.tokenizer)
    batch = collate_with_pair_ids(
        [train_ds[i] for i in range(PAIRS)],
        eos_id=model.tokenizer.eos_id,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
    )
    model.eval()
    with torch.no_grad():
        logprobs = model.get_logprob_batch(batch)
    labels = torch.cat((batch["chosen_labels"], batch["rejected_labels"]), dim=0)
    return {
        "model": model,
        "tokens": torch.cat((batch["chosen"], batch["rejected"]), dim=0),
        "labels": labels,
        "sums": model.get_reduced_masked_logps(logprobs, labels).float(),
    }


def greedy(model: Any, tokenizer: Any, new_tokens: int = 4) -> list[int]:
    """The ``new_tokens`` greedy continuation of :data:`PROMPT`."""
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, prompt.shape[1] :].tolist()


def parity_worker(rank: int, world_size: int, root: str, families: list[str]) -> dict[str, dict[str, Any]]:
    """For each family: build, convert, score through NeMo and HF, export back; one process for all."""
    from transformers import AutoTokenizer

    from nemo_gammapo.convert.hf import FAMILIES, hf_to_nemo, load_hf, nemo_session, save_hf

    results = {}
    for family in families:
        base = Path(root) / family
        hf_dir, nemo, exported = base / "hf", base / "tiny.nemo", base / "hf_back"
        make_tiny(family, hf_dir)
        hf_to_nemo(hf_dir, nemo, family)
        with nemo_session():
            scored = nemo_sequence_logprobs(nemo, base / "run")
            save_hf(scored.pop("model"), exported, family)
        tokens, labels = scored["tokens"], scored["labels"]
        original, back = load_hf(hf_dir, FAMILIES[family]), load_hf(exported, FAMILIES[family])
        tokenizer = AutoTokenizer.from_pretrained(exported)
        results[family] = {
            **scored,
            "hf": hf_sequence_logprobs(original, tokens, labels),
            "hf_back": hf_sequence_logprobs(back, tokens, labels),
            "original_state": original.state_dict(),
            "exported_state": back.state_dict(),
            "generated": greedy(back, tokenizer),
            "reference_generated": greedy(original, tokenizer),
        }
    return results


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Every family converted and scored, in one worker process (imports paid once)."""
    root = tmp_path_factory.mktemp("hf")
    (out,) = run_on_ranks(parity_worker, 1, 300, {"root": str(root), "families": list(TINY)}, init_process_group=False)
    return root, out


@pytest.mark.distributed
@pytest.mark.parametrize("family", list(TINY))
def test_roundtrip_matches_transformers(converted: tuple[Path, dict[str, dict[str, Any]]], family: str) -> None:
    out = converted[1][family]
    assert out["sums"].shape == (2 * PAIRS,)
    assert ((out["labels"] > -1).sum(-1) > 0).all()
    diff = (out["sums"] - out["hf"]).abs().max().item()
    print(f"{family}: max |log p_nemo - log p_hf| = {diff:.3g} over {2 * PAIRS} sequences")
    assert diff <= TOLERANCE, (out["sums"], out["hf"])
    assert torch.equal(out["hf_back"], out["hf"])
    assert out["original_state"].keys() == out["exported_state"].keys()
    for name, tensor in out["original_state"].items():
        assert torch.equal(tensor, out["exported_state"][name]), name
    assert out["generated"] == out["reference_generated"] and len(out["generated"]) == 4


@pytest.mark.distributed
def test_qwen2_vocabulary_larger_than_tokenizer(converted: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    """The rows past the tokenizer's 264 tokens stay in the softmax (as in HF): parity above needs them."""
    qwen = converted[1]["qwen2"]["original_state"]
    assert qwen["model.embed_tokens.weight"].shape[0] == TINY["qwen2"][1]["vocab_size"] > TOKENS


def same_weights(a: Path, b: Path) -> bool:
    """Two transformers folders hold bit-identical weights (same names, same tensors)."""
    from transformers import AutoModelForCausalLM

    sa = AutoModelForCausalLM.from_pretrained(a, torch_dtype=torch.float32).state_dict()
    sb = AutoModelForCausalLM.from_pretrained(b, torch_dtype=torch.float32).state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def train_worker(rank: int, world_size: int, root: str) -> dict[str, Any] | None:
    """The converted Llama at TP2: score it, train it 2 steps, then (rank 0) run → .nemo → HF and score both."""
    from nemo_gammapo.bench.nemo_step import train_preset
    from nemo_gammapo.convert.cli import main
    from nemo_gammapo.convert.hf import FAMILIES, load_hf, nemo_session
    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches
    from nemo_gammapo.distributed.process_groups import free_port, init_process_group, reset_between_runs, torchrun_env

    maybe_apply_cpu_patches(nemo=True)
    base = Path(root) / "llama"
    nemo, run_dir = base / "tiny.nemo", base / "run_tp2"
    init_process_group(rank, world_size)
    at_tp2 = nemo_sequence_logprobs(nemo, base / "score_tp2", devices=world_size, tp=2)
    del at_tp2["model"]
    reset_between_runs(rank)
    overrides = [
        f"pretrained_checkpoint.restore_from_path={nemo}",
        *(f"~model.{key}" for key in ARCHITECTURE_KEYS),
        "model.tensor_model_parallel_size=2",
        "trainer.dpo.max_steps=2",
        "trainer.dpo.val_check_interval=2",
        "trainer.dpo.save_interval=2",
        "trainer.dpo.limit_val_batches=1",
    ]
    history = train_preset(world_size, str(run_dir), overrides, "tiny_llama_cpu").history
    reset_between_runs(rank)
    if rank:
        return None
    os.environ.update(torchrun_env(0, 1, free_port()))  # rank 0 alone from here (nemo_session keeps a launcher's)
    trained_nemo, trained_hf = base / "trained.nemo", base / "trained_hf"
    # through the command line, as a user exports a training result
    assert main(["run-to-nemo", str(run_dir), str(trained_nemo)]) == 0
    assert main(["nemo-to-hf", str(trained_nemo), str(trained_hf)]) == 0  # the family hf-to-nemo recorded
    assert main(["run-to-hf", str(run_dir), str(base / "trained_hf_direct")]) == 0  # the two in one
    with nemo_session():
        trained = nemo_sequence_logprobs(trained_nemo, base / "score_trained")
        del trained["model"]
    from transformers import AutoTokenizer

    back = load_hf(trained_hf, FAMILIES["llama"])
    return {
        "tp2": at_tp2,
        "trained": trained,
        "train_steps": [r["step"] for r in history if "train/loss" in r],
        "hf_trained": hf_sequence_logprobs(back, trained["tokens"], trained["labels"]),
        "generated": greedy(back, AutoTokenizer.from_pretrained(trained_hf)),
        "direct_export_identical": same_weights(trained_hf, base / "trained_hf_direct"),
    }


@pytest.mark.distributed
def test_tp2_restore_train_and_export(converted: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    root, results = converted
    untrained = results["llama"]
    out, none = run_on_ranks(train_worker, 2, 420, {"root": str(root)}, init_process_group=False)
    assert none is None
    # the TP1 .nemo restored at TP2 by 2 processes scores as transformers does
    assert torch.equal(out["tp2"]["tokens"], untrained["tokens"])
    tp2_diff = (out["tp2"]["sums"] - untrained["hf"]).abs().max().item()
    print(f"TP2: max |log p_nemo - log p_hf| = {tp2_diff:.3g}")
    assert tp2_diff <= TOLERANCE
    # trained 2 steps, exported: HF scores as our NeMo path scores the trained checkpoint ...
    assert torch.equal(out["trained"]["tokens"], untrained["tokens"])
    diff = (out["hf_trained"] - out["trained"]["sums"]).abs().max().item()
    moved = (out["trained"]["sums"] - untrained["hf"]).abs().max().item()
    print(f"trained: max |log p_hf - log p_nemo| = {diff:.3g}; moved by training {moved:.3g}")
    assert diff <= TOLERANCE
    # ... and training changed the model
    assert moved > 100 * TOLERANCE and out["train_steps"] == [0, 1]
    assert len(out["generated"]) == 4
    assert out["direct_export_identical"]  # run-to-hf = run-to-nemo, then nemo-to-hf


def test_layout_is_checked_before_any_weight_is_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from transformers import MistralConfig

    from nemo_gammapo.convert.cli import main

    MistralConfig(num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3).save_pretrained(tmp_path)
    assert main(["hf-to-nemo", str(tmp_path), str(tmp_path / "x.nemo"), "--family", "mistral", "--tp", "4"]) == 2
    assert "num_key_value_heads = 2 is not divisible by TP=4" in capsys.readouterr().err
    assert main(["hf-to-nemo", str(tmp_path), str(tmp_path / "x.nemo"), "--family", "mistral", "--pp", "2"]) == 2
    assert "num_hidden_layers = 3 is not divisible by PP=2" in capsys.readouterr().err
    assert not (tmp_path / "x.nemo").exists()


def test_run_to_nemo_needs_a_complete_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nemo_gammapo.convert.cli import main

    unfinished = tmp_path / "checkpoints" / "gammapo--step=4-last"
    unfinished.mkdir(parents=True)
    Path(f"{unfinished}-unfinished").touch()
    assert main(["run-to-nemo", str(tmp_path), str(tmp_path / "x.nemo")]) == 2
    assert f"no complete checkpoint in {tmp_path / 'checkpoints'}" in capsys.readouterr().err
    assert unfinished.is_dir()  # looked at, not moved


def test_gemma2_is_refused_with_its_reason(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nemo_gammapo.convert.cli import main

    assert main(["hf-to-nemo", str(tmp_path), str(tmp_path / "x.nemo"), "--family", "gemma2"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "family 'gemma2': Gemma-2 needs logit soft-capping" in line
