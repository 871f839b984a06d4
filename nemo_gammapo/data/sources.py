"""Open preference data with the ``datasets`` library: hub name, ``save_to_disk`` folder, folder of
data files, or a single parquet / JSONL / JSON / CSV file.

Every source comes back as a ``datasets.DatasetDict`` (split name → ``Dataset``):

* a ``save_to_disk`` folder keeps its splits (a single saved ``Dataset`` becomes ``train``);
* a single file is split ``train`` (``datasets``' own convention);
* a folder of data files (searched recursively) is grouped into splits by file name, the hub's
  export naming: ``train_prefs-00000-of-00001.parquet`` and ``train_prefs.jsonl`` both belong to
  split ``train_prefs``;
* a hub name is downloaded with ``huggingface_hub.snapshot_download`` (data files only; with
  ``config_name``, only files under a folder of that name) and then read as a folder.

The pinned stack (datasets 2.14.4 with fsspec 2025.3.2) cannot ``load_dataset`` local files as is:
newer fsspec reports the local protocol as ``("file", "local")``, which datasets 2.14 takes for a
remote filesystem ("Loading a dataset cached in a LocalFileSystem is not supported"), and it
rejects datasets' ``**`` data-file patterns. :func:`local_fs_compat` corrects the first check while
loading; explicit file lists avoid the second.

:func:`local_fs_compat` is a run-time patch of a third-party library, like the CPU shims in
:mod:`nemo_gammapo.cpu_compat` and the version adapters in :mod:`nemo_gammapo.version_adapters`,
but scoped: when fsspec's local protocol is not plain ``"file"``, it replaces ``is_remote_filesystem``
in three ``datasets`` modules for the duration of a ``with`` block (on every device) and puts the
originals back when the block exits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def describe_source(source: str) -> str:
    """How :func:`load_source` reads ``source``: ``save_to_disk``, ``folder``, a builder name, or ``hub``."""
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
    if path.suffix.lower() in FILE_BUILDERS or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"{source}: no such file or folder")
    return "hub"


@contextmanager
def local_fs_compat() -> Iterator[None]:
    """Let datasets 2.14 recognise fsspec ≥ 2023.9's local filesystem as local (scoped patch)."""
    import fsspec

    if fsspec.filesystem("file").protocol == "file":  # a compatible fsspec: nothing to do
        yield
        return
    import datasets.arrow_dataset
    import datasets.arrow_writer
    import datasets.builder

    def is_remote_filesystem(fs: Any) -> bool:
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        return fs is not None and "file" not in protocols

    modules = (datasets.builder, datasets.arrow_dataset, datasets.arrow_writer)
    saved = [m.is_remote_filesystem for m in modules]
    for m in modules:
        m.is_remote_filesystem = is_remote_filesystem
    try:
        yield
    finally:
        for m, original in zip(modules, saved, strict=True):
            m.is_remote_filesystem = original


def split_files(folder: Path, config_name: str | None = None) -> tuple[str, dict[str, list[str]]]:
    """``(builder, {split: [files]})`` for the data files under ``folder``."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in FILE_BUILDERS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and (config_name is None or config_name in p.relative_to(folder).parts[:-1])
    )
    if not files:
        raise FileNotFoundError(f"{folder}: no {sorted(FILE_BUILDERS)} data files found")
    builders = {FILE_BUILDERS[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        raise ValueError(f"{folder}: mixed data file types {sorted(builders)}; point at one file or subfolder")
    splits: dict[str, list[str]] = {}
    for p in files:
        splits.setdefault(p.stem.split("-")[0], []).append(str(p))
    return builders.pop(), splits


def load_source(source: str, *, config_name: str | None = None, cache_dir: str | None = None) -> Any:
    """Load ``source`` as a ``DatasetDict``; a hub name needs network access (or a warm HF cache)."""
    import datasets

    kind = describe_source(source)
    if kind == "hub":
        from huggingface_hub import snapshot_download

        patterns = [f"*{suffix}" for suffix in FILE_BUILDERS]
        folder = snapshot_download(source, repo_type="dataset", allow_patterns=patterns, cache_dir=cache_dir)
        return _load_folder(Path(folder), config_name, cache_dir)
    path = Path(source).resolve()  # datasets 2.14 + fsspec mis-parse some relative paths
    if kind == "save_to_disk":
        # Split by split: DatasetDict.load_from_disk hits the same remote/local confusion.
        dict_json = path / "dataset_dict.json"
        if not dict_json.exists():
            return datasets.DatasetDict({"train": datasets.Dataset.load_from_disk(str(path))})
        splits = json.loads(dict_json.read_text(encoding="utf-8"))["splits"]
        return datasets.DatasetDict({s: datasets.Dataset.load_from_disk(str(path / s)) for s in splits})
    if kind == "folder":
        return _load_folder(path, config_name, cache_dir)
    with local_fs_compat():
        return datasets.load_dataset(kind, data_files={"train": str(path)}, cache_dir=cache_dir)


def _load_folder(folder: Path, config_name: str | None, cache_dir: str | None) -> Any:
    import datasets

    builder, files = split_files(folder, config_name)
    with local_fs_compat():
        return datasets.load_dataset(builder, data_files=files, cache_dir=cache_dir)
