"""Open preference data with the ``datasets`` library: hub name, ``save_to_disk`` folder, parquet or JSONL.

Every source comes back as a ``datasets.DatasetDict`` (split name → ``Dataset``). Single files
(and folders of data files) become one split named ``train``, ``datasets``' own convention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def describe_source(source: str) -> str:
    """How :func:`load_source` will read ``source``: ``save_to_disk``, a builder name, or ``hub``."""
    path = Path(source)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            return "save_to_disk"
        return "folder"
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{source}: unknown file type {path.suffix!r}; expected one of {sorted(FILE_BUILDERS)}")
        return builder
    if path.suffix.lower() in FILE_BUILDERS or source.startswith((".", "/")):
        raise FileNotFoundError(f"{source}: no such file or folder")
    return "hub"


def load_source(source: str, *, config_name: str | None = None, cache_dir: str | None = None) -> Any:
    """Load ``source`` as a ``DatasetDict``; a hub name needs network access (or a warm HF cache)."""
    import datasets

    kind = describe_source(source)
    if kind == "save_to_disk":
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
        return loaded
    if kind == "folder":
        return datasets.load_dataset(source, cache_dir=cache_dir)
    if kind == "hub":
        return datasets.load_dataset(source, config_name, cache_dir=cache_dir)
    return datasets.load_dataset(kind, data_files={"train": source}, cache_dir=cache_dir)
