"""Hugging Face ↔ NeMo conversion: a tiny random Llama through our training path gives HF's log-probs.

One worker process (world size 1): build a tiny ``transformers`` Llama and a byte-level tokenizer
offline, convert it to ``.nemo`` (:func:`nemo_gammapo.convert.hf.hf_to_nemo`), restore it the way
training does (``pretrained_checkpoint.restore_from_path`` with the ``tiny_llama_cpu`` preset, whose
architecture keys are dropped so the checkpoint's apply), compute per-sequence log-probs of chosen and
rejected responses of bundled demo pairs with NeMo-Aligner's ``get_logprob_batch``, compare with
``transformers`` on the same weights and tokens, then export back to HF and compare the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nemo_gammapo.distributed.process_groups import run_on_ranks

pytestmark = pytest.mark.distributed
TOLERANCE = 1e-4
PAIRS = 4


def make_tiny_llama(out: Path) -> None:
    """A random 2-layer Llama (GQA 4/2, untied) and a byte-level BPE tokenizer (no merges) in ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>"] + [f"<extra_{i}>" for i in range(5)]  # 264 tokens: 8 × 33
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(
        out
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        # = the tokenizer's: our model masks rows past the tokenizer's vocabulary out of the softmax
        # (MegatronGPTGammaPOModel: padded vocabulary), which HF does not do for unused rows
        vocab_size=264,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # norms away from 1 and larger weights: a mapping error cannot hide
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" in name else 0.05))
    model.save_pretrained(out)


def hf_sequence_logprobs(model: Any, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ over response tokens of log_softmax(logits)[next token] (``labels``: next tokens, -100 elsewhere)."""
    with torch.no_grad():
        logits = model(tokens).logits.float()
    per_token = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (per_token * (labels > -1)).sum(-1)


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


def parity_worker(rank: int, world_size: int, root: str) -> dict[str, Any]:
    from omegaconf import open_dict

    from nemo_gammapo.convert.hf import FAMILIES, hf_to_nemo, load_hf, nemo_session, save_hf

    root_path = Path(root)
    hf_dir, nemo, exported = root_path / "hf", root_path / "tiny.nemo", root_path / "hf_back"
    make_tiny_llama(hf_dir)
    hf_to_nemo(hf_dir, nemo, "llama")

    with nemo_session():
        from nemo_aligner.utils.train_script_utils import init_distributed, resolve_and_create_trainer

        from nemo_gammapo.aligner.pairs import collate_with_pair_ids
        from nemo_gammapo.aligner.train import build_datasets, build_model, merge_checkpoint_config
        from nemo_gammapo.bench.nemo_step import ROOT, use_bundled_demo_data
        from nemo_gammapo.configs import compose

        cfg = compose(
            "tiny_llama_cpu",
            [
                f"run_dir={root_path / 'run'}",
                "trainer.devices=1",
                f"pretrained_checkpoint.restore_from_path={nemo}",
                f"model.dpo.log_prob_forward_micro_batch_size={PAIRS}",
            ],
        )
        use_bundled_demo_data(cfg)
        with open_dict(cfg):
            for key in ARCHITECTURE_KEYS:  # as a real preset: the architecture comes from the checkpoint
                cfg.model.pop(key)
        assert ROOT.is_dir()
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
        nemo_sums = model.get_reduced_masked_logps(logprobs, labels).float()
        save_hf(model, exported, "llama")

    original = load_hf(hf_dir, FAMILIES["llama"])
    tokens = torch.cat((batch["chosen"], batch["rejected"]), dim=0)
    hf_sums = hf_sequence_logprobs(original, tokens, labels)
    back = load_hf(exported, FAMILIES["llama"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported)
    prompt = tokenizer("Q: is 416 even or odd?\nA: ", return_tensors="pt").input_ids
    generated = back.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return {
        "nemo": nemo_sums,
        "hf": hf_sums,
        "hf_back": hf_sequence_logprobs(back, tokens, labels),
        "response_tokens": (labels > -1).sum(-1),
        "original_state": original.state_dict(),
        "exported_state": back.state_dict(),
        "generated": generated[0, prompt.shape[1] :].tolist(),
        "reference_generated": original.generate(
            prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )[0, prompt.shape[1] :].tolist(),
    }


def test_llama_roundtrip_matches_transformers(tmp_path: Path) -> None:
    (out,) = run_on_ranks(parity_worker, 1, 300, {"root": str(tmp_path)}, init_process_group=False)
    assert out["nemo"].shape == (2 * PAIRS,)
    assert (out["response_tokens"] > 0).all()
    diff = (out["nemo"] - out["hf"]).abs().max().item()
    print(f"max |log p_nemo - log p_hf| = {diff:.3g} over {2 * PAIRS} sequences")
    assert diff <= TOLERANCE, (out["nemo"], out["hf"])
    assert torch.equal(out["hf_back"], out["hf"])
    assert out["original_state"].keys() == out["exported_state"].keys()
    for name, tensor in out["original_state"].items():
        assert torch.equal(tensor, out["exported_state"][name]), name
    assert out["generated"] == out["reference_generated"] and len(out["generated"]) == 4
