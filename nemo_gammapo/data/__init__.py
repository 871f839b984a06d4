"""Preference data tools: convert HF datasets to NeMo-Aligner DPO JSONL, chat templates,
label-flip noise, and validation (``nemo-gammapo data ...``; see ``docs/data.md``).

Light to import: nothing here imports ``datasets``, ``transformers`` or torch until a function
that needs it runs, so the trainer can call :func:`validate_file` at start-up cheaply.
"""

from nemo_gammapo.data.noise import flip_file, flip_records
from nemo_gammapo.data.templates import FAMILIES, TemplateError, render_prompt, render_response
from nemo_gammapo.data.validate import DataValidationError, Problem, ValidationReport, assert_valid_files, validate_file

__all__ = [
    "FAMILIES",
    "DataValidationError",
    "Problem",
    "TemplateError",
    "ValidationReport",
    "assert_valid_files",
    "flip_file",
    "flip_records",
    "render_prompt",
    "render_response",
    "validate_file",
]
