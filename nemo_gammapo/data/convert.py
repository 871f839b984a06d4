"""Source dataset → NeMo-Aligner DPO JSONL (one file per output split), with a full drop summary.

Output rows: ``id``, string ``prompt`` (chat template applied when one is chosen),
``chosen_response``, ``rejected_response``, ``chosen_reward``/``rejected_reward`` when the source
has scores, and provenance (``source``, ``source_split``, ``source_row``, ``source_id``, ``style``,
``template``; on-policy rows also ``num_candidates``, ``chosen_index``, ``rejected_index``).
Every source row is either written or counted under a drop reason: ``read == written + dropped``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nemo_gammapo.data.rows import CONVERTERS, STYLES, Drop, Fields, RawPair, detect_style, source_id
from nemo_gammapo.data.templates import TemplateError, render_prompt, render_response


@dataclass
class ConvertOptions:
    """How to convert; see ``nemo-gammapo data convert --help``."""

    style: str = "auto"  # plain | messages | onpolicy | auto
    template: str | None = None  # llama3 | mistral | gemma2 | qwen2.5 | None (prompt used as-is)
    bos: bool = True  # write the family's BOS as text (False if your tokenizer adds it)
    end_of_turn: bool = True  # append the family's end-of-turn marker to responses
    system: str | None = None  # system prompt for conversations that have none
    default_system: bool = True  # qwen2.5: inject Qwen's default system prompt when there is none
    seed: int | None = 0  # shuffle seed; None keeps source order
    splits: dict[str, str] | None = None  # input split → output split; None: every split, same name
    holdout: float = 0.0  # fraction of the output "train" split moved to "validation"
    id_prefix: str = ""
    fields: Fields = field(default_factory=Fields)
    max_rows: int | None = None  # per input split, for quick trials (rows beyond it are not read)
    progress: bool = True


@dataclass
class SplitSummary:
    """Counts for one output split."""

    read: int = 0
    written: int = 0
    dropped: Counter = field(default_factory=Counter)
    style: str = ""
    path: str = ""
    note: str = ""


@dataclass
class ConversionSummary:
    """What a conversion read, wrote and dropped (and why), per output split."""

    source: str
    splits: dict[str, SplitSummary] = field(default_factory=dict)

    @property
    def read(self) -> int:
        return sum(s.read for s in self.splits.values())

    @property
    def written(self) -> int:
        return sum(s.written for s in self.splits.values())

    @property
    def dropped(self) -> Counter:
        total: Counter = Counter()
        for s in self.splits.values():
            total.update(s.dropped)
        return total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (written beside the outputs as ``conversion_summary.json``)."""
        return {
            "source": self.source,
            "read": self.read,
            "written": self.written,
            "dropped": dict(sorted(self.dropped.items())),
            "splits": {k: {**asdict(v), "dropped": dict(sorted(v.dropped.items()))} for k, v in self.splits.items()},
        }

    def format(self) -> str:
        """Human-readable summary table."""
        lines = [f"source: {self.source}", f"{'split':<14}{'read':>9}{'written':>9}{'dropped':>9}  file"]
        for name, s in self.splits.items():
            note = f"  ({s.note})" if s.note else ""
            lines.append(f"{name:<14}{s.read:>9}{s.written:>9}{sum(s.dropped.values()):>9}  {s.path}{note}")
        lines.append(f"{'total':<14}{self.read:>9}{self.written:>9}{sum(self.dropped.values()):>9}")
        if self.dropped:
            lines.append("dropped rows by reason:")
            lines += [f"  {reason:<28}{n:>9}" for reason, n in sorted(self.dropped.items())]
        else:
            lines.append("dropped rows: none")
        return "\n".join(lines)


def _apply_template(pair: RawPair, opts: ConvertOptions) -> tuple[str, str, str]:
    if opts.template is None:
        prompt = pair.prompt
        if isinstance(prompt, list):
            users = [m for m in prompt if m["role"] != "system"]
            if len(prompt) != 1 or prompt[0]["role"] != "user":
                raise Drop("needs_template", f"a {len(users)}-turn conversation needs --template")
            prompt = prompt[0]["content"]
        return prompt, pair.chosen, pair.rejected
    messages = [{"role": "user", "content": pair.prompt}] if isinstance(pair.prompt, str) else pair.prompt
    try:
        prompt = render_prompt(
            opts.template, messages, bos=opts.bos, system=opts.system, default_system=opts.default_system
        )
        chosen = render_response(opts.template, pair.chosen, end_of_turn=opts.end_of_turn)
        rejected = render_response(opts.template, pair.rejected, end_of_turn=opts.end_of_turn)
    except TemplateError as e:
        raise Drop("template_error", str(e)) from None
    if chosen == rejected:
        raise Drop("identical_responses", "identical after templating")
    return prompt, chosen, rejected


def detect_style_of(dataset: Any, fields: Fields) -> str:
    """The input style from the dataset's column types (falls back to the first row)."""
    features = getattr(dataset, "features", None) or {}
    if fields.responses in features and fields.scores in features:
        return "onpolicy"
    chosen = features.get(fields.chosen)
    if chosen is not None:
        if isinstance(chosen, list) or type(chosen).__name__ == "Sequence":
            return "messages"
        if getattr(chosen, "dtype", None) in ("string", "large_string"):
            return "plain"
    return detect_style(dataset[0], fields) if len(dataset) else "plain"


def convert_split(dataset: Any, in_split: str, style: str, opts: ConvertOptions, source: str) -> tuple[list, Counter]:
    """Convert one input split; returns (records, drop counter). ``dataset`` iterates dict rows."""
    from tqdm.auto import tqdm

    convert_row = CONVERTERS[style]
    records: list[dict[str, Any]] = []
    dropped: Counter = Counter()
    n = len(dataset) if opts.max_rows is None else min(len(dataset), opts.max_rows)
    rows = dataset.select(range(n)) if n < len(dataset) else dataset
    for index, row in enumerate(tqdm(rows, total=n, desc=f"convert {in_split}", disable=not opts.progress)):
        try:
            pair = convert_row(row, opts.fields)
            prompt, chosen, rejected = _apply_template(pair, opts)
        except Drop as d:
            dropped[d.reason] += 1
            continue
        record: dict[str, Any] = {
            "id": f"{opts.id_prefix}{in_split}-{index:07d}",
            "prompt": prompt,
            "chosen_response": chosen,
            "rejected_response": rejected,
            "source": source,
            "source_split": in_split,
            "source_row": index,
            "style": style,
            "template": opts.template or "none",
            **pair.extra,
        }
        if pair.chosen_reward is not None and pair.rejected_reward is not None:
            record["chosen_reward"], record["rejected_reward"] = pair.chosen_reward, pair.rejected_reward
        sid = source_id(row, opts.fields)
        if sid is not None:
            record["source_id"] = sid
        records.append(record)
    return records, dropped


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """One JSON object per line, keys sorted, UTF-8 (not ASCII-escaped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")


def convert_dataset(dataset_dict: Any, out_dir: Path, opts: ConvertOptions, source: str = "") -> ConversionSummary:
    """Convert every selected split of ``dataset_dict`` and write ``<out_dir>/<split>.jsonl``."""
    if opts.style not in (*STYLES, "auto"):
        raise ValueError(f"style must be one of {[*STYLES, 'auto']} (got {opts.style!r})")
    if opts.system is not None and opts.template is None:
        raise ValueError("a system prompt needs a chat template (--template)")
    if not 0.0 <= opts.holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1) (got {opts.holdout})")
    mapping = opts.splits or {name: name for name in dataset_dict}
    missing = [s for s in mapping if s not in dataset_dict]
    if missing:
        raise ValueError(f"split(s) {missing} not in the source; it has {sorted(dataset_dict)}")
    if len(set(mapping.values())) != len(mapping):
        raise ValueError(f"two input splits map to the same output split: {mapping}")
    if opts.holdout and ("train" not in mapping.values() or "validation" in mapping.values()):
        raise ValueError("holdout needs an output split 'train' and no output split 'validation'")

    summary = ConversionSummary(source=source)
    outputs: dict[str, list] = {}
    for in_split, out_split in mapping.items():
        ds = dataset_dict[in_split]
        stats = SplitSummary(read=min(len(ds), opts.max_rows) if opts.max_rows is not None else len(ds))
        stats.style = opts.style
        if stats.style == "auto":
            stats.style = detect_style_of(ds, opts.fields)
        records, stats.dropped = convert_split(ds, in_split, stats.style, opts, source)
        if opts.seed is not None:
            random.Random(f"{opts.seed}:{out_split}").shuffle(records)
        outputs[out_split] = records
        summary.splits[out_split] = stats
    if opts.holdout:
        train = outputs["train"]
        n_hold = round(len(train) * opts.holdout)
        outputs["validation"], outputs["train"] = train[len(train) - n_hold :], train[: len(train) - n_hold]
        summary.splits["train"].read -= n_hold  # per split: read == written + dropped
        summary.splits["validation"] = SplitSummary(
            read=n_hold, style=summary.splits["train"].style, note=f"{opts.holdout:g} of train, held out"
        )
    for out_split, records in outputs.items():
        path = Path(out_dir) / f"{out_split}.jsonl"
        write_jsonl(path, records)
        summary.splits[out_split].written = len(records)
        summary.splits[out_split].path = str(path)
    (Path(out_dir) / "conversion_summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
