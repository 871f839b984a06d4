"""Start-up check for the training entry point: validate ``model.data.data_prefix`` files before training."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nemo_gammapo.data.validate import ValidationReport, assert_valid_files


def _paths(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # list / ListConfig of paths


def validate_training_data(
    data_prefix: Mapping[str, Any],
    max_length: int | None = None,
    max_errors: int = 10,
    warn: Callable[[str], None] | None = None,
    prefix: str = "model.data.data_prefix",
) -> dict[str, list[ValidationReport]]:
    """Validate every file of every split (``train``, ``validation``, ``test``) in ``data_prefix``.

    Raises :class:`~nemo_gammapo.data.validate.DataValidationError` naming the key
    (``model.data.data_prefix.train``) and showing the first problems of each bad file.
    Over-length pairs (UTF-8 bytes; exact for the byte-level tokenizer, an upper bound
    for subword tokenizers) are not errors: they are passed to ``warn`` with their count.
    """
    reports: dict[str, list[ValidationReport]] = {}
    for split in ("train", "validation", "test"):
        paths = _paths(data_prefix.get(split))
        if not paths:
            continue
        reports[split] = assert_valid_files(
            paths, key=f"{prefix}.{split}", max_errors=max_errors, max_length=max_length
        )
        for r in reports[split]:
            if r.over_length and warn is not None:
                warn(
                    f"{prefix}.{split}: {r.path}: {r.over_length} of {r.records} pairs are longer than "
                    f"{max_length} {r.length_unit} (first lines {r.over_length_lines}); NeMo-Aligner masks them out"
                )
    return reports
