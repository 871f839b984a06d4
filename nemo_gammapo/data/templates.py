"""Chat templates for the paper's four model families, rendered without any tokenizer download.

NeMo-Aligner's DPO dataset takes a *string* prompt as-is and tokenizes ``prompt + response``, so a
template is applied to the **prompt side only** and ends with the assistant header; the response
is the bare assistant text, optionally followed by the family's end-of-turn marker (default on,
so the model learns to stop). Each format was written from the family's documented format:

* ``llama3`` (Llama-3 Instruct): ``<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n
  {text}<|eot_id|>…<|start_header_id|>assistant<|end_header_id|>\\n\\n``; content is stripped;
  system turns are native; no default system prompt.
* ``mistral`` (Mistral-7B-Instruct v0.1/v0.2, tokenizer V1): ``<s>[INST] {user} [/INST]{assistant}</s>``;
  no system role: a system message is prepended to the first user turn (``system\\n\\nuser``).
* ``gemma2`` (Gemma-2 IT): ``<bos><start_of_turn>user\\n{text}<end_of_turn>\\n<start_of_turn>model\\n``;
  content is stripped; no system role: prepended to the first user turn.
* ``qwen2.5`` (Qwen2.5 Instruct, ChatML): ``<|im_start|>{role}\\n{text}<|im_end|>\\n`` … ``<|im_start|>
  assistant\\n``; no BOS; Qwen's own template injects a default system prompt when none is given —
  we do the same on the prompt side (``default_system=True``) and never put it in a response.

BOS: ``bos=True`` (default) writes the family's BOS as text at the start of the prompt, because
NeMo's HF tokenizer wrapper (``text_to_ids``) adds no special tokens itself; pass ``bos=False``
when your tokenizer adds BOS on its own, or you get a double BOS. Prompts that already contain a
family's control markers are refused (:class:`TemplateError`) instead of being wrapped twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Message = dict[str, str]
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


class TemplateError(ValueError):
    """A conversation the template cannot render (bad roles, empty turns, already templated)."""


@dataclass(frozen=True)
class ChatFamily:
    """One family's chat format, as plain strings."""

    name: str
    bos: str  # emitted as text when ``bos=True``; empty when the family has none
    end_of_turn: str  # what ends an assistant turn (appended to responses when requested)
    native_system: bool  # False: a system message is folded into the first user turn
    strip_content: bool  # the family's template trims message content
    markers: tuple[str, ...]  # control strings whose presence means "already templated" (besides a leading BOS)

    def turn(self, role: str, content: str) -> str:
        """One complete (closed) turn."""
        if self.name == "llama3":
            return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"
        if self.name == "mistral":
            return f"[INST] {content} [/INST]" if role == "user" else f"{content}</s>"
        if self.name == "gemma2":
            return f"<start_of_turn>{'model' if role == 'assistant' else role}\n{content}<end_of_turn>\n"
        return f"<|im_start|>{role}\n{content}<|im_end|>\n"  # qwen2.5

    def assistant_header(self) -> str:
        """What opens the assistant turn the model is to continue."""
        return {
            "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "mistral": "",
            "gemma2": "<start_of_turn>model\n",
            "qwen2.5": "<|im_start|>assistant\n",
        }[self.name]


FAMILIES: dict[str, ChatFamily] = {
    "llama3": ChatFamily(
        "llama3", "<|begin_of_text|>", "<|eot_id|>", True, True, ("<|begin_of_text|>", "<|start_header_id|>")
    ),
    "mistral": ChatFamily("mistral", "<s>", "</s>", False, False, ("[INST]", "[/INST]")),
    "gemma2": ChatFamily("gemma2", "<bos>", "<end_of_turn>", False, True, ("<start_of_turn>", "<end_of_turn>")),
    "qwen2.5": ChatFamily("qwen2.5", "", "<|im_end|>", True, False, ("<|im_start|>", "<|im_end|>")),
}


def get_family(name: str) -> ChatFamily:
    """Look a family up by name (``llama3``, ``mistral``, ``gemma2``, ``qwen2.5``)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; choose one of {sorted(FAMILIES)}") from None


def _check_text(family: ChatFamily, content: object, where: str) -> str:
    if not isinstance(content, str):
        raise TemplateError(f"{where}: content must be a string (got {type(content).__name__})")
    for marker in family.markers:
        if marker in content:
            raise TemplateError(f"{where}: already contains {marker!r} (already templated?)")
    if family.bos and content.lstrip().startswith(family.bos):
        raise TemplateError(f"{where}: starts with the BOS {family.bos!r} (already templated? a double BOS)")
    text = content.strip() if family.strip_content else content
    if not text.strip():
        raise TemplateError(f"{where}: empty content")
    return text


def render_prompt(
    family_name: str,
    messages: Sequence[Message],
    *,
    bos: bool = True,
    system: str | None = None,
    default_system: bool = True,
) -> str:
    """Render the prompt side of a conversation, ending with the assistant header.

    ``messages`` alternate user/assistant (optionally after one leading system message) and end
    with a user turn. ``system`` adds a system message when the conversation has none.
    ``default_system`` only matters for ``qwen2.5``: whether to inject Qwen's documented default
    system prompt when there is no system message (its own template does).
    """
    family = get_family(family_name)
    msgs = [dict(m) for m in messages]
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TemplateError(f"message {i}: needs 'role' and 'content'")
    sys_text: str | None = None
    if msgs and msgs[0]["role"] == "system":
        sys_text = _check_text(family, msgs.pop(0)["content"], "system message")
    elif system is not None:
        sys_text = _check_text(family, system, "system prompt")
    if not msgs or msgs[-1]["role"] != "user":
        raise TemplateError("the prompt must end with a user turn")
    for i, m in enumerate(msgs):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise TemplateError(f"message roles must alternate user/assistant (turn {i} is {m['role']!r})")
    texts = [_check_text(family, m["content"], f"{m['role']} turn {i}") for i, m in enumerate(msgs)]

    out = family.bos if bos else ""
    if family.native_system:
        if sys_text is None and family.name == "qwen2.5" and default_system:
            sys_text = QWEN_DEFAULT_SYSTEM
        if sys_text is not None:
            out += family.turn("system", sys_text)
    elif sys_text is not None:
        texts[0] = f"{sys_text}\n\n{texts[0]}"
    for i, text in enumerate(texts):
        out += family.turn("user" if i % 2 == 0 else "assistant", text)
    return out + family.assistant_header()


def render_response(family_name: str, text: str, *, end_of_turn: bool = True) -> str:
    """The response side: the bare assistant text (+ the family's end-of-turn marker).

    Never contains a BOS, a header or a system prompt, so ``prompt + response`` equals the full
    conversation rendered by the family's format.
    """
    family = get_family(family_name)
    body = _check_text(family, text, "response")
    return body + (family.end_of_turn if end_of_turn else "")
