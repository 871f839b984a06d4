"""``nemo-gammapo generate``: a model's responses to a prompt file, written as AlpacaEval model outputs.

    nemo-gammapo generate /ckpt/llama3-8b-gammapo-hf --prompts alpaca_eval.json --out outputs.json --template llama3
    nemo-gammapo generate runs/x/checkpoints/x.nemo --prompts prompts.jsonl --out outputs.json --template llama3 \\
        --temperature 0.7 --top-p 0.9 --seed 1 --generator llama3-8b-gammapo

What it reads and writes:

* **Prompts** (``--prompts``): a JSON list of objects, or JSONL (one object per line; blank lines are
  skipped), recognised by the first character (``[``), not the file name. Each object has a string
  ``instruction`` (AlpacaEval's evaluation set; its ``output`` / ``generator`` fields, the reference
  model's, are ignored and ``dataset`` is kept), or a string ``prompt`` (our preference-data format,
  ``docs/data.md``: extra fields such as the responses are ignored).
* **Outputs** (``--out``): a JSON list in the prompts' order, each ``{"instruction", "output",
  "generator"}`` plus ``"dataset"`` when the prompt had one: what AlpacaEval's ``--model_outputs``
  reads. ``instruction`` is the text as given (before the chat template); ``output`` is the decoded
  response up to the first stop token, special tokens removed, surrounding whitespace stripped.
  ``generator`` is ``--generator``, by default the model folder's or ``.nemo`` file's name. The file
  is written at once at the end (a temporary file in the same folder, then renamed), so a stopped
  run leaves no partial file.

How:

* **Model**: a Hugging Face checkpoint folder (``config.json``, the weights, the tokenizer) is loaded
  with ``transformers``' ``AutoModelForCausalLM`` / ``AutoTokenizer`` (local files only). A ``.nemo``
  (file or extracted folder) is first exported to a Hugging Face folder in a temporary directory
  (``$TMPDIR``) with the project's :func:`nemo_gammapo.convert.hf.nemo_to_hf` — the same conversion
  as ``nemo-gammapo convert nemo-to-hf``, on the CPU in float32 — and then generates exactly as a
  Hugging Face folder does. The family (``--family``) defaults to the one ``hf_to_nemo`` recorded in
  the checkpoint (``hf_family``).
* **Prompt text**: ``--template`` renders each instruction as one user turn with the project's own
  templates (:func:`nemo_gammapo.data.templates.render_prompt`, the function ``nemo-gammapo data
  convert --template`` uses), so generation sees the prompts training saw; ``--no-bos``, ``--system``
  and ``--no-default-system`` mean what they mean there. ``none`` (the default) passes the text as
  is: use it for prompts that are already templated, such as our data files' ``prompt`` fields. The
  text is tokenized without added special tokens, as NeMo's tokenizer wrapper does in training (the
  templates write the BOS as text).
* **Decoding**: ``transformers``' ``generate``, greedy by default; ``--temperature`` (> 0) samples,
  with ``--top-p`` (default 1: off) and ``--top-k`` (default 0: off), from ``torch.manual_seed(--seed)``
  (default 0) set once before the first batch: the same command on the same machine gives the same
  outputs, and a different seed or batch size gives other samples. The checkpoint's own
  ``generation_config`` sampling settings are not used. Prompts are sorted by length (longest
  first), cut into batches of ``--batch-size`` and left-padded; greedy outputs are those of
  generating each prompt alone (``tests/test_generate.py``). Generation stops at
  ``--max-new-tokens`` or at a stop token: the checkpoint's ``eos_token_id`` (its generation config
  and tokenizer) and the template's end-of-turn marker when it is one token of the vocabulary
  (``<|eot_id|>``, ``<end_of_turn>``, ``<|im_end|>``).
* **Device**: ``--device`` (default ``cuda`` when available, else ``cpu``), one device;
  ``--dtype auto`` is bfloat16 on a GPU and float32 on the CPU.

Bad input stops before any model is loaded with one line naming the flag, or ``file:line``, and
what is allowed, and exit code 2 (:class:`nemo_gammapo.aligner.errors.ConfigError`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from nemo_gammapo.aligner.errors import ConfigError, UserError
from nemo_gammapo.data.templates import FAMILIES as CHAT_FAMILIES
from nemo_gammapo.data.templates import TemplateError, render_prompt

__all__ = [
    "PromptRecord",
    "Sampling",
    "generate_tokens",
    "load_model",
    "main",
    "model_outputs",
    "read_prompts",
    "render_prompts",
    "stop_token_ids",
    "write_json_atomic",
]

PROG = "nemo-gammapo generate"
TEMPLATES = (*sorted(CHAT_FAMILIES), "none")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_SPACE = re.compile(r"\s*")


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of the input file: where it is, its text, and the AlpacaEval ``dataset`` it belongs to."""

    line: int  # 1-based line of the object's first character
    text: str  # the ``instruction`` (or ``prompt``) as given, before any template
    dataset: Any = None  # copied to the output when ``has_dataset``
    has_dataset: bool = False


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; ``None`` in their place means greedy decoding."""

    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


# --------------------------------------------------------------------------------------------- input


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ConfigError(f"--prompts {path}: does not exist")
    if path.is_dir():
        raise ConfigError(f"--prompts {path}: is a directory, not a JSON / JSONL file")
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError:
        raise ConfigError(f"--prompts {path}: not readable (permission denied)") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--prompts {path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"--prompts {path}: cannot be read ({e.strerror})") from None


def _json_list_items(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """``(line, value)`` of each element of the JSON list ``text`` (the line of the element's first character)."""
    decoder = json.JSONDecoder()
    pos = _SPACE.match(text).end() + 1  # after the "["
    line, counted = 1, 0

    def line_of(at: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, at)
        counted = at
        return line

    pos = _SPACE.match(text, pos).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            start = line_of(pos)
            try:
                value, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
            yield start, value
            pos = _SPACE.match(text, pos).end()
            if text.startswith(",", pos):
                pos = _SPACE.match(text, pos + 1).end()
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            raise ConfigError(f"{path}:{line_of(pos)}: not valid JSON (expected ',' or ']' after a list element)")
    if text[pos:].strip():
        raise ConfigError(f"{path}:{line_of(_SPACE.match(text, pos).end())}: not valid JSON (text after the list)")


def _jsonl_items(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{number}: not valid JSON ({e.msg})") from None


def read_prompts(path: str | Path) -> list[PromptRecord]:
    """The prompts of a JSON list or JSONL file of objects with ``instruction`` (or ``prompt``).

    Raises :class:`ConfigError` naming ``file:line`` for the first bad object.
    """
    path = Path(path)
    text = _read_text(path)
    items = _json_list_items(text, path) if text.lstrip().startswith("[") else _jsonl_items(text, path)
    records = []
    for line, item in items:
        where = f"{path}:{line}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a JSON object with 'instruction', got {type(item).__name__}")
        key = "instruction" if "instruction" in item else "prompt" if "prompt" in item else None
        if key is None:
            have = ", ".join(repr(k) for k in list(item)[:8]) or "none"
            raise ConfigError(f"{where}: no 'instruction' (AlpacaEval) or 'prompt' (our data format) field; has {have}")
        value = item[key]
        if not isinstance(value, str) or not value.strip():
            got = "an empty string" if isinstance(value, str) else type(value).__name__
            raise ConfigError(f"{where}: '{key}' must be a non-empty string, got {got}")
        records.append(PromptRecord(line, value, item.get("dataset"), "dataset" in item))
    if not records:
        raise ConfigError(f"{path}: no prompts in the file")
    return records


def render_prompts(
    records: Sequence[PromptRecord],
    template: str,
    path: str | Path,
    *,
    bos: bool = True,
    system: str | None = None,
    default_system: bool = True,
) -> list[str]:
    """The text each record is generated from: one user turn in ``template``, or the text itself for ``none``."""
    if template == "none":
        return [r.text for r in records]
    out = []
    for r in records:
        try:
            message = [{"role": "user", "content": r.text}]
            out.append(render_prompt(template, message, bos=bos, system=system, default_system=default_system))
        except TemplateError as e:
            hint = " (use --template none for prompts that are already templated)" if "templated" in str(e) else ""
            raise ConfigError(f"{path}:{r.line}: --template {template}: {e}{hint}") from None
    return out


# --------------------------------------------------------------------------------------------- model


def _model_kind(path: Path) -> str:
    """``"hf"`` or ``"nemo"``; :class:`ConfigError` for anything else."""
    if not path.exists():
        raise ConfigError(f"model {path}: does not exist")
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        if (path / "model_config.yaml").is_file():
            return "nemo"
        raise ConfigError(
            f"model {path}: a folder with neither config.json (Hugging Face) nor model_config.yaml (extracted .nemo)"
        )
    if path.suffix == ".nemo" or tarfile.is_tarfile(path):
        return "nemo"
    raise ConfigError(f"model {path}: not a .nemo file or a Hugging Face checkpoint folder")


def recorded_family(nemo: Path) -> str | None:
    """The ``hf_family`` a ``.nemo`` (file or extracted folder) records (``hf_to_nemo`` writes it), else ``None``."""
    import yaml

    try:
        if nemo.is_dir():
            text = (nemo / "model_config.yaml").read_text(encoding="utf-8")
        else:
            with tarfile.open(nemo, "r:*") as tar:
                member = tar.next()
                while member is not None and not member.name.endswith("model_config.yaml"):
                    member = tar.next()
                handle = tar.extractfile(member) if member is not None else None
                if handle is None:
                    return None
                text = handle.read().decode("utf-8")
        cfg = yaml.safe_load(text)
    except (OSError, tarfile.TarError, UnicodeDecodeError, yaml.YAMLError):
        return None
    family = cfg.get("hf_family") if isinstance(cfg, dict) else None
    return family if isinstance(family, str) else None


def _torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def _load_hf(hf_dir: Path, device: str, dtype: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(hf_dir), torch_dtype=_torch_dtype(dtype, device), local_files_only=True
        )
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"model {hf_dir}: cannot be loaded by transformers ({first})") from None
    return model.to(device).eval(), tokenizer


@contextmanager
def load_model(
    model_path: str | Path,
    family: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    progress: Callable[[str], None] = lambda msg: None,
) -> Iterator[tuple[Any, Any]]:
    """``(transformers model, tokenizer)`` of a Hugging Face folder or a ``.nemo``, on ``device``, in eval mode.

    A ``.nemo`` is exported with :func:`nemo_gammapo.convert.hf.nemo_to_hf` into a temporary folder
    that lives as long as the context; ``family`` defaults to the one the checkpoint records.
    """
    path = Path(model_path)
    if _model_kind(path) == "hf":
        progress(f"loading {path}")
        yield _load_hf(path, device, dtype)
        return
    from nemo_gammapo.convert.hf import FAMILIES

    family = family or recorded_family(path)
    if family is None:
        raise ConfigError(f"--family: {path} records no model family; pass one of {', '.join(sorted(FAMILIES))}")
    if family not in FAMILIES:
        raise ConfigError(f"--family {family}: not one of {', '.join(sorted(FAMILIES))}")
    from nemo_gammapo.convert.hf import nemo_to_hf

    with tempfile.TemporaryDirectory(prefix="gammapo-generate-") as scratch:
        hf_dir = Path(scratch) / "hf"
        try:
            nemo_to_hf(path, hf_dir, family, progress=progress)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"model {path}: cannot be exported to Hugging Face ({e})") from None
        if not any(hf_dir.glob("tokenizer*")):
            raise ConfigError(f"model {path}: its tokenizer is not a Hugging Face one; nothing to generate with")
        progress(f"loading the exported {family} model")
        yield _load_hf(hf_dir, device, dtype)


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def stop_token_ids(model: Any, tokenizer: Any, template: str = "none") -> list[int]:
    """The ids that end a response: the checkpoint's EOS ids and the template's end-of-turn token."""
    ids = _ids(getattr(model.generation_config, "eos_token_id", None)) + _ids(tokenizer.eos_token_id)
    if template != "none":
        end_of_turn = tokenizer.get_vocab().get(CHAT_FAMILIES[template].end_of_turn)
        ids += _ids(end_of_turn)
    return list(dict.fromkeys(ids))


def _until_stop(tokens: list[int], stop: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stop:
            return tokens[:i]
    return tokens


def generate_tokens(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_ids: Sequence[int],
    pad_id: int,
    sampling: Sampling | None = None,
    progress: bool = False,
) -> list[list[int]]:
    """The new tokens for each prompt (in input order), cut before the first stop token.

    Prompts are sorted longest first, batched, left-padded with ``pad_id`` (masked out) and passed
    to ``model.generate``; ``sampling=None`` is greedy decoding.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    settings: dict[str, Any] = {"do_sample": False}
    if sampling is not None:
        settings = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
        settings["top_k"] = sampling.top_k
        torch.manual_seed(sampling.seed)  # also seeds every CUDA device
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, eos_token_id=list(stop_ids) or None, pad_token_id=pad_id, **settings
    )
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    stop = set(stop_ids)
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in prompt_ids]
    for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress, file=sys.stderr):
        width = max(len(prompt_ids[i]) for i in batch)
        tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            n = len(prompt_ids[i])
            tokens[row, width - n :] = torch.tensor(prompt_ids[i], dtype=torch.long)
            mask[row, width - n :] = 1
        with torch.inference_mode():
            generated = model.generate(
                input_ids=tokens.to(device), attention_mask=mask.to(device), generation_config=config
            )
        for row, i in enumerate(batch):
            out[i] = _until_stop(generated[row, width:].tolist(), stop)
    return out


# --------------------------------------------------------------------------------------------- output


def model_outputs(records: Sequence[PromptRecord], outputs: Sequence[str], generator: str) -> list[dict[str, Any]]:
    """AlpacaEval model outputs: ``instruction``, ``output``, ``generator`` (and ``dataset``) per record."""
    rows = []
    for record, text in zip(records, outputs, strict=True):
        row: dict[str, Any] = {"instruction": record.text, "output": text, "generator": generator}
        if record.has_dataset:
            row["dataset"] = record.dataset
        rows.append(row)
    return rows


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` through a temporary file in its folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): ``nemo-gammapo generate: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from nemo_gammapo.convert.hf import FAMILIES

    p = _Parser(prog=PROG, description="Responses of a model to a prompt file, as AlpacaEval model outputs.")
    p.add_argument("model", help="a Hugging Face checkpoint folder, or a .nemo file / extracted .nemo folder")
    p.add_argument("--prompts", type=Path, required=True, help="JSON list or JSONL of {'instruction': ...}")
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write (AlpacaEval model outputs)")
    p.add_argument("--template", choices=TEMPLATES, default="none", help="chat template of the prompt (default none)")
    p.add_argument("--no-bos", action="store_true", help="do not write the template's BOS as text")
    p.add_argument("--system", help="system prompt (as data convert --system)")
    p.add_argument("--no-default-system", action="store_true", help="qwen2.5: no default system prompt")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="response length limit in tokens (default 1024)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default 8)")
    p.add_argument("--temperature", type=float, help="sample at this temperature (> 0); default: greedy")
    p.add_argument("--top-p", type=float, help="sampling: nucleus probability in (0, 1] (default 1: off)")
    p.add_argument("--top-k", type=int, help="sampling: keep the k most likely tokens (default 0: off)")
    p.add_argument("--seed", type=int, help="sampling: torch seed (default 0)")
    p.add_argument("--generator", help="the 'generator' name in the outputs (default: the model's file name)")
    p.add_argument("--family", choices=sorted(FAMILIES), help=".nemo input: model family (default: recorded)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _sampling(args: argparse.Namespace) -> Sampling | None:
    """The sampling settings of the flags, or ``None`` (greedy); :class:`ConfigError` for bad values."""
    if args.temperature is None:
        for flag, value in (("--top-p", args.top_p), ("--top-k", args.top_k), ("--seed", args.seed)):
            if value is not None:
                raise ConfigError(f"{flag}: only with --temperature (sampling); decoding is greedy without it")
        return None
    if not args.temperature > 0:
        raise ConfigError(f"--temperature {args.temperature}: must be > 0 (leave it out for greedy decoding)")
    top_p = 1.0 if args.top_p is None else args.top_p
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p {args.top_p}: must be in (0, 1]")
    top_k = 0 if args.top_k is None else args.top_k
    if top_k < 0:
        raise ConfigError(f"--top-k {args.top_k}: must be >= 0 (0: off)")
    return Sampling(args.temperature, top_p, top_k, 0 if args.seed is None else args.seed)


def _check_args(args: argparse.Namespace) -> Sampling | None:
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.out.is_dir():
        raise ConfigError(f"--out {args.out}: is a directory; give the JSON file to write")
    if args.out.exists() and args.prompts.exists() and os.path.samefile(args.out, args.prompts):
        raise ConfigError(f"--out {args.out}: is the --prompts file; it would be overwritten")
    return _sampling(args)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    """``nemo-gammapo generate`` on parsed arguments; raises :class:`UserError` for bad input."""
    start = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {msg}", flush=True)

    sampling = _check_args(args)
    records = read_prompts(args.prompts)
    texts = render_prompts(
        records,
        args.template,
        args.prompts,
        bos=not args.no_bos,
        system=args.system,
        default_system=not args.no_default_system,
    )
    model_path = Path(args.model)
    _model_kind(model_path)  # fail on a wrong path before anything is imported
    generator = args.generator or (model_path.stem if model_path.suffix == ".nemo" else model_path.resolve().name)
    device = args.device or _default_device()
    with load_model(model_path, args.family, device, args.dtype, progress) as (model, tokenizer):
        stop = stop_token_ids(model, tokenizer, args.template)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else 0)
        prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        mode = "greedy" if sampling is None else f"sampling (T={sampling.temperature}, top-p={sampling.top_p}, "
        mode += "" if sampling is None else f"top-k={sampling.top_k}, seed={sampling.seed})"
        progress(f"{len(records)} prompts, {mode}, batches of {args.batch_size}, on {device}")
        tic = time.monotonic()
        new_tokens = generate_tokens(
            model,
            prompt_ids,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            stop_ids=stop,
            pad_id=pad,
            sampling=sampling,
            progress=not args.no_progress,
        )
        outputs = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new_tokens]
    seconds = time.monotonic() - tic
    total = sum(map(len, new_tokens))
    out = write_json_atomic(args.out, model_outputs(records, outputs, generator))
    progress(f"{total} tokens in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} tokens/s)")
    print(f"{PROG}: wrote {len(records)} responses to {out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``nemo-gammapo generate``: exit code 0, or 2 with one line on stderr for bad input."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
