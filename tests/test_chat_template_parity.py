"""Token-level parity: our templates vs each family's own Jinja chat template in transformers.

For every family in :mod:`nemo_gammapo.data.templates` a small tokenizer is built offline (byte-level
BPE trained in-process on a tiny corpus, the family's control strings as added special tokens, the
family's BOS post-processor, the family's chat template) and saved to a temporary folder. Then:

* transformers side: ``AutoTokenizer.from_pretrained(folder).apply_chat_template`` of the prompt
  messages (``add_generation_prompt=True``) and of the messages plus the assistant turn;
* our side: ``render_prompt`` / ``render_response`` strings, tokenized as NeMo-Aligner does —
  NeMo's HF wrapper ``text_to_ids`` (``tokenize`` + ``convert_tokens_to_ids``, no special tokens
  added), and, for the real thing, NeMo-Aligner's ``DPOModelDataset`` built over a 1-row JSONL
  with NeMo's ``AutoTokenizer(folder)``.

Cases: one user turn (Qwen's template then injects its default system prompt, as ours does);
system + user/assistant/user; whitespace-padded turns (Llama-3 / Gemma-2 trim, the others keep).
Prompt ids must be equal. Full ids must be equal except for the one intended difference: where
a family's template writes a newline after the end-of-turn token (Gemma-2 ``<end_of_turn>\\n``,
Qwen2.5 ``<|im_end|>\\n``) our response stops at the end-of-turn token — that token is what the
model emits to stop; the newline only separates turns in a rendered history (earlier assistant
turns in our prompts do carry it). Mistral and Gemma-2 templates have no system role (they raise);
ours folds a system message into the first user turn as ``system + "\\n\\n" + user``, so with a
system message the reference is the family template applied to that folded conversation.

The templates are public data (each model's tokenizer_config.json ``chat_template``), kept in
tests/data/chat_templates/ and written from memory without network access; ``SOURCES`` and that
folder's README name each one's origin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from nemo_gammapo.data.templates import FAMILIES as OUR_FAMILIES
from nemo_gammapo.data.templates import render_prompt, render_response

TEMPLATE_DIR = Path(__file__).parent / "data" / "chat_templates"
# Where each template comes from (details: tests/data/chat_templates/README.md). Public data, the
# tokenizer_config.json "chat_template" value, written from memory (no network access).
SOURCES = {
    "llama3": "meta-llama/Meta-Llama-3-8B-Instruct, tokenizer_config.json, May 2024 revision",
    "mistral": "mistralai/Mistral-7B-Instruct-v0.2 (= v0.1), tokenizer_config.json, early 2024",
    "gemma2": "google/gemma-2-9b-it (= 2b-it, 27b-it), tokenizer_config.json, 2024",
    "qwen2.5": "Qwen/Qwen2.5-7B-Instruct (all Qwen2.5 Instruct sizes), tokenizer_config.json, September 2024",
}


def _template(family: str) -> str:
    text = (TEMPLATE_DIR / f"{family}.jinja").read_text(encoding="utf-8")
    return text.removesuffix("\n")  # the file's own trailing newline


# Per family: the template, the tokenizer's special tokens (as in each model's tokenizer), whether
# the real tokenizer adds BOS itself (a post-processor), whether the template has a system role,
# and what the template writes after an assistant turn beyond our response's end-of-turn marker.
SPECS: dict[str, dict[str, Any]] = {
    "llama3": {
        "template": _template("llama3"),
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "extra": ["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
        "native_system": True,
        "after_turn": "",
    },
    "mistral": {
        "template": _template("mistral"),
        "bos": "<s>",
        "eos": "</s>",
        "extra": ["<unk>"],  # [INST] / [/INST] are plain text in the v0.1/v0.2 tokenizer
        "native_system": False,
        "after_turn": "",
    },
    "gemma2": {
        "template": _template("gemma2"),
        "bos": "<bos>",
        "eos": "<eos>",
        "extra": ["<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        "native_system": False,
        "after_turn": "\n",
    },
    "qwen2.5": {
        "template": _template("qwen2.5"),
        "bos": None,
        "eos": "<|im_end|>",
        "extra": ["<|endoftext|>", "<|im_start|>"],
        "native_system": True,
        "after_turn": "\n",
    },
}
FAMILIES = sorted(SPECS)

CORPUS = [
    "What is 2+2?\n\nThe answer is four. Be brief, please.\n",
    "Hello! Hi there, how can I help you today?\n\nSure, here it is: 4.\n",
    "You are a helpful assistant. Answer in French. Bonjour, ça va ?\n",
    "system user assistant model INST [INST] [/INST] ```python\nprint(2 + 2)\n```\n",
]

# (prompt messages, chosen, rejected)
CASES: dict[str, tuple[list[dict[str, str]], str, str]] = {
    "single": ([{"role": "user", "content": "What is 2+2?"}], "4", "Five."),
    "multi_system": (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "What is 2+2? Show code."},
        ],
        "Sure:\n```python\nprint(2 + 2)\n```",
        "It is four, ça va ?",
    ),
    # whitespace around content: Llama-3 and Gemma-2 templates trim it, Mistral and Qwen keep it
    "padded": (
        [
            {"role": "user", "content": "  Bonjour ?\n"},
            {"role": "assistant", "content": " Hi "},
            {"role": "user", "content": "2+2\n"},
        ],
        " 4 ",
        "\nfive",
    ),
}
CASE_NAMES = sorted(CASES)


def _build_tokenizer(family: str, folder: Path) -> None:
    spec = SPECS[family]
    specials = [t for t in (spec["bos"], spec["eos"], *spec["extra"]) if t is not None]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text tokenizes
        special_tokens=specials,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)  # a few merges (e.g. "\n\n", "Ġis") like a real BPE
    if spec["bos"] is not None:  # as the real Llama-3 / Mistral / Gemma tokenizers: BOS added on encode
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        additional_special_tokens=spec["extra"],
    )
    hf.chat_template = spec["template"]
    hf.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat_tokenizers")
    dirs = {}
    for family in FAMILIES:
        dirs[family] = root / family.replace(".", "_")
        _build_tokenizer(family, dirs[family])
    return dirs


@pytest.fixture(scope="module")
def hf_tokenizers(tokenizer_dirs: dict[str, Path]) -> dict[str, Any]:
    return {f: AutoTokenizer.from_pretrained(str(d), local_files_only=True) for f, d in tokenizer_dirs.items()}


def _reference_messages(family: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """What to feed the family's own template: Mistral / Gemma-2 have no system role, so a system
    message is folded into the first user turn (the convention our templates document)."""
    msgs = [dict(m) for m in messages]
    if not SPECS[family]["native_system"] and msgs and msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
        msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"
    return msgs


def _nemo_text_to_ids(tok: Any, text: str) -> list[int]:
    """NeMo's ``AutoTokenizer.text_to_ids`` (include_special_tokens=False): tokenize + convert."""
    return tok.convert_tokens_to_ids(tok.tokenize(text))


def _expected(tok: Any, family: str, messages: list[dict[str, str]], response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, full ids) from the family's own template, minus the intended trailing difference."""
    ref = _reference_messages(family, messages)
    prompt = tok.apply_chat_template(ref, add_generation_prompt=True, tokenize=True)
    full = tok.apply_chat_template([*ref, {"role": "assistant", "content": response}], tokenize=True)
    after = SPECS[family]["after_turn"]
    if after:
        tail = _nemo_text_to_ids(tok, after)
        assert full[-len(tail) :] == tail, "the template's turn separator is where we expect it"
        full = full[: -len(tail)]
    return prompt, full


def test_every_family_has_its_template_and_source() -> None:
    """A family added to templates.py without its own template here fails this test."""
    files = {p.stem for p in TEMPLATE_DIR.glob("*.jinja")}
    assert set(OUR_FAMILIES) == set(SPECS) == set(SOURCES) == files


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("family", FAMILIES)
def test_strings_match_the_family_template(hf_tokenizers: dict[str, Any], family: str, case: str) -> None:
    tok = hf_tokenizers[family]
    messages, chosen, _ = CASES[case]
    ref = _reference_messages(family, messages)
    ours_prompt = render_prompt(family, messages)
    assert ours_prompt == tok.apply_chat_template(ref, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template([*ref, {"role": "assistant", "content": chosen}], tokenize=False)
    assert ours_prompt + render_response(family, chosen) + SPECS[family]["after_turn"] == full


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("family", FAMILIES)
def test_token_ids_match_apply_chat_template(hf_tokenizers: dict[str, Any], family: str, case: str) -> None:
    tok = hf_tokenizers[family]
    messages, chosen, rejected = CASES[case]
    prompt = render_prompt(family, messages)
    prompt_ids = _nemo_text_to_ids(tok, prompt)
    for response in (chosen, rejected):
        want_prompt, want_full = _expected(tok, family, messages, response)
        full_ids = _nemo_text_to_ids(tok, prompt + render_response(family, response))
        assert prompt_ids == want_prompt
        assert full_ids == want_full
        assert full_ids[: len(prompt_ids)] == prompt_ids  # no merge across the prompt/response seam
        assert full_ids[-1] == tok.convert_tokens_to_ids(OUR_FAMILIES[family].end_of_turn)  # one token, last


@pytest.mark.parametrize("family", FAMILIES)
def test_exactly_one_bos(hf_tokenizers: dict[str, Any], family: str) -> None:
    """bos=True writes BOS as text and NeMo's text_to_ids adds none: one BOS, like the template.
    A tokenizer call that adds special tokens needs bos=False instead, or BOS is doubled."""
    tok = hf_tokenizers[family]
    messages = CASES["single"][0]
    want = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    bos = SPECS[family]["bos"]
    ids = _nemo_text_to_ids(tok, render_prompt(family, messages))
    assert ids == want
    if bos is None:  # Qwen2.5: no BOS anywhere
        assert tok.bos_token_id is None
        assert tok(render_prompt(family, messages))["input_ids"] == want
        return
    bos_id = tok.convert_tokens_to_ids(bos)
    assert want.count(bos_id) == 1 and want[0] == bos_id
    assert ids.count(bos_id) == 1 and ids[0] == bos_id
    # a tokenizer that adds BOS itself: bos=False gives the template's ids, bos=True a double BOS
    assert tok(render_prompt(family, messages, bos=False))["input_ids"] == want
    assert tok(render_prompt(family, messages))["input_ids"][:2] == [bos_id, bos_id]


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_templates_without_system_role_refuse_it(hf_tokenizers: dict[str, Any], family: str) -> None:
    """Why the system message is folded (and the reference conversation folded the same way)."""
    with pytest.raises(jinja2.exceptions.TemplateError):
        hf_tokenizers[family].apply_chat_template(CASES["multi_system"][0], add_generation_prompt=True)


# --- through NeMo itself: NeMo's AutoTokenizer wrapper and NeMo-Aligner's DPOModelDataset -------------
# Imported lazily: the NeMo / NeMo-Aligner import is most of this module's time (~8 s CPU).


@pytest.fixture(scope="module")
def nemo_tokenizers(tokenizer_dirs: dict[str, Path]) -> dict[str, Any]:
    from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer as NemoAutoTokenizer

    return {f: NemoAutoTokenizer(pretrained_model_name=str(d)) for f, d in tokenizer_dirs.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_nemo_aligner_dpo_dataset_tokens_match_the_template(
    tmp_path: Path, hf_tokenizers: dict[str, Any], nemo_tokenizers: dict[str, Any], family: str
) -> None:
    """A 1-row JSONL per case, built the way nemo_aligner.data.nlp.builders builds DPO datasets."""
    from nemo_aligner.data.nlp.builders import build_dataset_generic
    from nemo_aligner.data.nlp.datasets import DPOModelDataset
    from omegaconf import OmegaConf

    tok, nemo_tok = hf_tokenizers[family], nemo_tokenizers[family]
    for case in CASE_NAMES:
        messages, chosen, rejected = CASES[case]
        prompt = render_prompt(family, messages)
        row = {
            "prompt": prompt,
            "chosen_response": render_response(family, chosen),
            "rejected_response": render_response(family, rejected),
        }
        path = tmp_path / f"{case}.jsonl"
        path.write_text(json.dumps(row) + "\n", encoding="utf-8")
        ds = build_dataset_generic(
            cls=DPOModelDataset,
            cfg=OmegaConf.create({"data": {}}),
            data_prefix=[str(path)],
            data_impl="jsonl",
            num_samples=None,
            seq_length=4096,
            seed=1234,
            tokenizer=nemo_tok,
            name="train",
        )
        item = ds[0]
        assert nemo_tok.text_to_ids(prompt) == _nemo_text_to_ids(tok, prompt)
        for side, response in (("chosen", chosen), ("rejected", rejected)):
            want_prompt, want_full = _expected(tok, family, messages, response)
            n = item[f"{side}_length"]  # inputs are ids[:-1], labels ids[1:] with the prompt masked
            inputs = item[side][:n].tolist()
            labels = item[f"{side}_labels"][:n].tolist()
            assert [*inputs, labels[-1]] == want_full, (family, case, side)
            assert labels.count(-100) == len(want_prompt) - 1, (family, case, side)
            assert inputs[: len(want_prompt)] == want_prompt
