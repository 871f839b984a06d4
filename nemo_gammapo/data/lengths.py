"""Length functions for over-length counting: UTF-8 bytes, characters, or a local HF tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def make_length_fn(spec: str) -> tuple[Callable[[str], int], str]:
    """``(length_fn, unit)`` for ``spec``: ``bytes``, ``chars``, or a local tokenizer folder.

    ``bytes`` is exact for NeMo's byte-level tokenizer (one token per UTF-8 byte). A folder is
    loaded with ``transformers.AutoTokenizer`` from local files only (never downloads) and counts
    tokens the way NeMo's HF wrapper does (``text_to_ids``: no special tokens added; special-token
    strings written in the text, such as a template's BOS, count as one token each).
    """
    if spec == "bytes":
        return (lambda s: len(s.encode("utf-8"))), "bytes"
    if spec == "chars":
        return len, "chars"
    if not Path(spec).is_dir():
        raise ValueError(f"tokenizer {spec!r}: expected 'bytes', 'chars' or a local tokenizer folder")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec, local_files_only=True)

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return count, "tokens"
