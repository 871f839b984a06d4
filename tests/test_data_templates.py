"""Chat templates: exact strings for each family, written by hand from each family's documented format."""

from __future__ import annotations

import pytest

from nemo_gammapo.data.templates import QWEN_DEFAULT_SYSTEM, TemplateError, render_prompt, render_response

USER = [{"role": "user", "content": "What is 2+2?"}]
MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
]

# Expected prompts, one user turn, BOS as text (the default).
SINGLE = {
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s>[INST] What is 2+2? [/INST]",
    "gemma2": "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "qwen2.5": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
}

# Expected prompts, system + two user turns.
MULTI_EXPECTED = {
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    # no system role: folded into the first user turn
    "mistral": "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] What is 2+2? [/INST]",
    "gemma2": "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "qwen2.5": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
}

RESPONSE = {"llama3": "4<|eot_id|>", "mistral": "4</s>", "gemma2": "4<end_of_turn>", "qwen2.5": "4<|im_end|>"}
BOS = {"llama3": "<|begin_of_text|>", "mistral": "<s>", "gemma2": "<bos>", "qwen2.5": ""}


@pytest.mark.parametrize("family", sorted(SINGLE))
def test_single_turn_prompt(family: str) -> None:
    assert render_prompt(family, USER) == SINGLE[family]


@pytest.mark.parametrize("family", sorted(MULTI_EXPECTED))
def test_multi_turn_with_system(family: str) -> None:
    assert render_prompt(family, MULTI) == MULTI_EXPECTED[family]


@pytest.mark.parametrize("family", sorted(SINGLE))
def test_bos_option_drops_exactly_the_bos(family: str) -> None:
    without = render_prompt(family, USER, bos=False)
    assert without == SINGLE[family][len(BOS[family]) :]
    if BOS[family]:
        assert BOS[family] not in without


@pytest.mark.parametrize("family", sorted(RESPONSE))
def test_response_is_bare_text_plus_end_of_turn(family: str) -> None:
    assert render_response(family, "4") == RESPONSE[family]
    assert render_response(family, "4", end_of_turn=False) == "4"


@pytest.mark.parametrize("family", sorted(RESPONSE))
def test_response_never_carries_system_header_or_bos(family: str) -> None:
    response = render_response(family, "Sure, here it is.")
    for marker in ("system", "You are Qwen", "assistant", "<start_of_turn>", "<|im_start|>", "[INST]"):
        assert marker not in response
    if BOS[family]:
        assert BOS[family] not in response


def test_prompt_plus_response_equals_full_conversation() -> None:
    """Concatenation (what NeMo-Aligner tokenizes) gives the family's rendering of the whole chat."""
    full = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
    )
    assert render_prompt("llama3", USER) + render_response("llama3", "4") == full
    gemma = "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>"
    assert render_prompt("gemma2", USER) + render_response("gemma2", "4") == gemma


def test_qwen_default_system_prompt_options() -> None:
    assert QWEN_DEFAULT_SYSTEM in render_prompt("qwen2.5", USER)
    plain = render_prompt("qwen2.5", USER, default_system=False)
    assert plain == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    custom = render_prompt("qwen2.5", USER, system="Answer in French.")
    assert custom.startswith("<|im_start|>system\nAnswer in French.<|im_end|>\n") and QWEN_DEFAULT_SYSTEM not in custom


def test_llama3_and_gemma2_strip_content_mistral_and_qwen_keep_it() -> None:
    padded = [{"role": "user", "content": "  hi \n"}]
    assert "\n\nhi<|eot_id|>" in render_prompt("llama3", padded)
    assert "user\nhi<end_of_turn>" in render_prompt("gemma2", padded)
    assert "[INST]   hi \n [/INST]" in render_prompt("mistral", padded)
    assert "user\n  hi \n<|im_end|>" in render_prompt("qwen2.5", padded, default_system=False)


@pytest.mark.parametrize(
    ("family", "content"),
    [
        ("llama3", "<|begin_of_text|>What is 2+2?"),  # would be a double BOS
        ("mistral", "<s>[INST] What is 2+2? [/INST]"),
        ("gemma2", "<bos>What is 2+2?"),
        ("gemma2", "<start_of_turn>user\nWhat is 2+2?<end_of_turn>"),
        ("qwen2.5", "<|im_start|>user\nWhat is 2+2?<|im_end|>"),
    ],
)
def test_already_templated_text_is_refused(family: str, content: str) -> None:
    with pytest.raises(TemplateError, match="already templated"):
        render_prompt(family, [{"role": "user", "content": content}])


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "assistant", "content": "x"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],  # ends with assistant
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],  # no alternation
        [{"role": "user", "content": "   "}],  # empty
        [{"role": "user"}],  # no content
    ],
)
def test_bad_conversations_raise(messages: list) -> None:
    with pytest.raises(TemplateError):
        render_prompt("llama3", messages)


def test_unknown_family() -> None:
    with pytest.raises(ValueError, match="unknown chat template"):
        render_prompt("llama2", USER)
