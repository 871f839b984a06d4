"""One source row → one preference pair (or a named reason to drop it), for each input style.

Styles:

* ``plain``: string ``prompt``, ``chosen``, ``rejected`` (optional ``chosen_reward``/``rejected_reward``
  or ``score_chosen``/``score_rejected``).
* ``messages`` (UltraFeedback-binarized style): ``chosen``/``rejected`` are message lists whose
  last message is the assistant reply; everything before it is the prompt conversation (must be
  the same in both), or — when the lists hold only the reply — the ``prompt`` column (string or
  message list). Scores from ``score_chosen``/``score_rejected``.
* ``onpolicy`` (the paper's recipe): ``prompt`` plus k generated responses and their reward-model
  scores; chosen = highest score, rejected = lowest (first occurrence on equal scores); a row
  whose highest and lowest scores tie is dropped as ``score_tie``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STYLES = ("plain", "messages", "onpolicy")


class Drop(Exception):
    """A row that cannot become a pair; ``reason`` is the counter key in the summary."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class Fields:
    """Column names of the source (defaults follow the public datasets' conventions)."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    responses: str = "all_generated_responses"
    scores: str = "all_rm_scores"
    chosen_score: tuple[str, ...] = ("chosen_reward", "score_chosen")
    rejected_score: tuple[str, ...] = ("rejected_reward", "score_rejected")
    source_id: tuple[str, ...] = ("id", "prompt_id")


@dataclass
class RawPair:
    """A pair before templating: the prompt as a message list or a plain string."""

    prompt: list[dict[str, str]] | str
    chosen: str
    rejected: str
    chosen_reward: float | None = None
    rejected_reward: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def detect_style(row: Mapping[str, Any], fields: Fields) -> str:
    """Guess the style from one row's columns and types."""
    if fields.responses in row and fields.scores in row:
        return "onpolicy"
    chosen = row.get(fields.chosen)
    if isinstance(chosen, list):
        return "messages"
    if isinstance(chosen, str):
        return "plain"
    raise ValueError(
        f"cannot tell the input style from columns {sorted(row)}; pass --style and the field names "
        f"(expected {fields.chosen!r}/{fields.rejected!r} or {fields.responses!r}/{fields.scores!r})"
    )


def _get(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name)
    if value is None:
        raise Drop("missing_field", name)
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise Drop("wrong_type", f"{name} is {type(value).__name__}, expected a string")
    if not value.strip():
        raise Drop("empty_response" if name != "prompt" else "empty_prompt", name)
    return value


def _score(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Drop("bad_score", f"{name}={value!r}")
    return float(value)


def _optional_score(row: Mapping[str, Any], names: Sequence[str]) -> float | None:
    for name in names:
        if row.get(name) is not None:
            return _score(row[name], name)
    return None


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(isinstance(m, Mapping) for m in value):
        raise Drop("wrong_type", f"{name} must be a list of messages")
    out = []
    for m in value:
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise Drop("wrong_type", f"{name}: every message needs string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt(value: Any, name: str) -> list[dict[str, str]] | str:
    if isinstance(value, list):
        msgs = _messages(value, name)
        if not msgs:
            raise Drop("empty_prompt", name)
        return msgs
    return _text(value, "prompt")


def _finish(pair: RawPair) -> RawPair:
    if pair.chosen == pair.rejected:
        raise Drop("identical_responses")
    return pair


def plain_pair(row: Mapping[str, Any], fields: Fields) -> RawPair:
    """``prompt``/``chosen``/``rejected`` strings."""
    return _finish(
        RawPair(
            prompt=_prompt(_get(row, fields.prompt), fields.prompt),
            chosen=_text(_get(row, fields.chosen), fields.chosen),
            rejected=_text(_get(row, fields.rejected), fields.rejected),
            chosen_reward=_optional_score(row, fields.chosen_score),
            rejected_reward=_optional_score(row, fields.rejected_score),
        )
    )


def messages_pair(row: Mapping[str, Any], fields: Fields) -> RawPair:
    """UltraFeedback-binarized style: message lists ending with the assistant reply."""
    chosen = _messages(_get(row, fields.chosen), fields.chosen)
    rejected = _messages(_get(row, fields.rejected), fields.rejected)
    for name, msgs in ((fields.chosen, chosen), (fields.rejected, rejected)):
        if not msgs or msgs[-1]["role"] != "assistant":
            raise Drop("no_assistant_reply", f"the last message of {name} is not from the assistant")
    if chosen[:-1] != rejected[:-1]:
        raise Drop("prompt_mismatch", "chosen and rejected conversations differ before the reply")
    prompt: list[dict[str, str]] | str = chosen[:-1]
    if not prompt:
        prompt = _prompt(_get(row, fields.prompt), fields.prompt)
    return _finish(
        RawPair(
            prompt=prompt,
            chosen=_text(chosen[-1]["content"], fields.chosen),
            rejected=_text(rejected[-1]["content"], fields.rejected),
            chosen_reward=_optional_score(row, fields.chosen_score),
            rejected_reward=_optional_score(row, fields.rejected_score),
        )
    )


def onpolicy_pair(row: Mapping[str, Any], fields: Fields) -> RawPair:
    """k generated responses + reward scores → (highest, lowest)."""
    responses = _get(row, fields.responses)
    scores = _get(row, fields.scores)
    if not isinstance(responses, list) or not isinstance(scores, list):
        raise Drop("wrong_type", f"{fields.responses} and {fields.scores} must be lists")
    if len(responses) != len(scores):
        raise Drop("responses_scores_mismatch", f"{len(responses)} responses, {len(scores)} scores")
    if len(responses) < 2:
        raise Drop("too_few_responses", f"{len(responses)} response(s)")
    values = [_score(s, f"{fields.scores}[{i}]") for i, s in enumerate(scores)]
    best = max(range(len(values)), key=lambda i: (values[i], -i))
    worst = min(range(len(values)), key=lambda i: (values[i], i))
    if values[best] == values[worst]:
        raise Drop("score_tie", f"highest and lowest score are both {values[best]}")
    return _finish(
        RawPair(
            prompt=_prompt(_get(row, fields.prompt), fields.prompt),
            chosen=_text(responses[best], f"{fields.responses}[{best}]"),
            rejected=_text(responses[worst], f"{fields.responses}[{worst}]"),
            chosen_reward=values[best],
            rejected_reward=values[worst],
            extra={"num_candidates": len(values), "chosen_index": best, "rejected_index": worst},
        )
    )


CONVERTERS = {"plain": plain_pair, "messages": messages_pair, "onpolicy": onpolicy_pair}


def source_id(row: Mapping[str, Any], fields: Fields) -> str | None:
    """The row's own id (``id`` or ``prompt_id``), kept as provenance."""
    for name in fields.source_id:
        value = row.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None
