"""``nemo-gammapo data`` — convert, validate / stats, flip, template, suspects.

nemo-gammapo data convert SOURCE --out DIR [--template llama3] [--split train_prefs=train ...]
nemo-gammapo data validate FILE [FILE ...] [--max-length 2048 --tokenizer bytes|chars|DIR]
nemo-gammapo data stats FILE [FILE ...]          (same checks; always prints length statistics)
nemo-gammapo data flip IN OUT --p 0.2 --seed 0   (label-flip noise; flipped ids → OUT.flips.json)
nemo-gammapo data template FAMILY "user text"    (print a rendered prompt, to eyeball a format)
nemo-gammapo data suspects RUN_DIR --data TRAIN.jsonl --top 50 --out suspects.jsonl
                                                 (likely mislabeled pairs, from the run's γ dumps)

Exit codes: 0 ok; 1 the data has problems (listed); 2 the command cannot run — an input that does
not exist or is a directory, an output that would overwrite an input (or is a directory), a bad
option — with one line naming the path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from nemo_gammapo.data.templates import FAMILIES


def _input_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an input file, or ``None``."""
    if not path.exists():
        return f"{path} does not exist"
    if path.is_dir():
        return f"{path} is a directory"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable (permission denied)"
    return None


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (after symlinks, or as hard links)."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # a symlink loop: compare the files themselves
        pass
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _overwritten_input(outputs: Iterable[Path], inputs: Iterable[Path]) -> tuple[Path, Path] | None:
    """The first (output, input) pair naming the same file, or ``None``."""
    inputs = list(inputs)
    for out in outputs:
        for src in inputs:
            if _same_file(out, src):
                return out, src
    return None


def _fail(command: str, message: str) -> int:
    print(f"nemo-gammapo data {command}: {message}", file=sys.stderr)
    return 2


def _split_map(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    mapping = {}
    for v in values:
        src, _, dst = v.partition("=")
        mapping[src] = dst or src
    return mapping


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="HF dataset / parquet / JSONL → training JSONL")
    p.add_argument("source", help="hub name, save_to_disk folder, folder of data files, .parquet/.jsonl/.json file")
    p.add_argument("--out", type=Path, required=True, help="output folder: <split>.jsonl + conversion_summary.json")
    p.add_argument("--style", default="auto", choices=["auto", "plain", "messages", "onpolicy"])
    p.add_argument("--template", choices=sorted(FAMILIES), help="chat template for the prompt (default: none)")
    p.add_argument("--no-bos", action="store_true", help="do not write BOS as text (your tokenizer adds it)")
    p.add_argument("--no-end-of-turn", action="store_true", help="do not append the end-of-turn marker to responses")
    p.add_argument("--system", help="system prompt for conversations without one")
    p.add_argument("--no-default-system", action="store_true", help="qwen2.5: no default system prompt")
    p.add_argument("--split", action="append", metavar="IN[=OUT]", help="split to convert (repeatable; default all)")
    p.add_argument("--holdout", type=float, default=0.0, help="fraction of output 'train' moved to 'validation'")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--no-shuffle", action="store_true", help="keep source order")
    p.add_argument("--id-prefix", default="", help="prefix for generated ids")
    p.add_argument("--max-rows", type=int, help="read at most this many rows per split")
    p.add_argument("--config-name", help="hub dataset configuration")
    p.add_argument("--cache-dir", help="datasets cache folder")
    for name, default in (("prompt", "prompt"), ("chosen", "chosen"), ("rejected", "rejected")):
        p.add_argument(f"--{name}-field", default=default, help=f"column holding the {name} (default {default!r})")
    p.add_argument("--responses-field", default="all_generated_responses", help="on-policy: list of responses")
    p.add_argument("--scores-field", default="all_rm_scores", help="on-policy: list of reward scores")
    p.add_argument("--no-progress", action="store_true")


def _add_validate(sub: argparse._SubParsersAction, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--max-errors", type=int, default=50, help="problems listed per file (all are counted)")
    p.add_argument("--max-length", type=int, help="count pairs longer than this (NeMo-Aligner's seq_length)")
    p.add_argument("--tokenizer", default="bytes", help="bytes (default; NeMo byte-level), chars, or a local folder")
    p.add_argument("--strict-length", action="store_true", help="treat over-length pairs as errors")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.add_argument("--no-progress", action="store_true")


def _local_files(source: Path) -> list[Path]:
    """The local files a convert source reads: the file itself, every file under a folder, or none (hub)."""
    if source.is_file():
        return [source]
    return [p for p in source.rglob("*") if p.is_file()] if source.is_dir() else []


def _local_splits(source: str, kind: str, config_name: str | None) -> list[str]:
    """The split names a local source will load as (``sources.load_source``'s conventions), before loading."""
    from nemo_gammapo.data.sources import split_files

    path = Path(source)
    if kind == "save_to_disk" and (path / "dataset_dict.json").exists():
        return list(json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"])
    if kind == "folder":
        return list(split_files(path, config_name)[1])
    return ["train"]  # a single file, or a single saved Dataset


def _convert_outputs(args: argparse.Namespace, splits: Iterable[str]) -> list[Path]:
    """Every file ``convert`` writes under ``--out`` for the source splits ``splits``."""
    names = set((_split_map(args.split) or {name: name for name in splits}).values())
    if args.holdout:
        names.add("validation")
    return [args.out / f"{name}.jsonl" for name in sorted(names)] + [args.out / "conversion_summary.json"]


def run_convert(args: argparse.Namespace) -> int:
    from nemo_gammapo.data.convert import ConvertOptions, convert_dataset
    from nemo_gammapo.data.rows import Fields
    from nemo_gammapo.data.sources import describe_source, load_source
    from nemo_gammapo.data.validate import validate_file

    fields = Fields(
        prompt=args.prompt_field,
        chosen=args.chosen_field,
        rejected=args.rejected_field,
        responses=args.responses_field,
        scores=args.scores_field,
    )
    opts = ConvertOptions(
        style=args.style,
        template=args.template,
        bos=not args.no_bos,
        end_of_turn=not args.no_end_of_turn,
        system=args.system,
        default_system=not args.no_default_system,
        seed=None if args.no_shuffle else args.seed,
        splits=_split_map(args.split),
        holdout=args.holdout,
        id_prefix=args.id_prefix,
        fields=fields,
        max_rows=args.max_rows,
        progress=not args.no_progress,
    )
    try:
        kind = describe_source(args.source)
    except FileNotFoundError:
        return _fail("convert", f"{args.source} does not exist (no such file or folder)")
    except ValueError as e:
        return _fail("convert", str(e))
    if args.out.exists() and not args.out.is_dir():
        return _fail("convert", f"--out {args.out} is not a directory")
    inputs = _local_files(Path(args.source)) if kind != "hub" else []
    try:
        if inputs:  # checked before loading, so a refused conversion reads nothing
            clash = _overwritten_input(
                _convert_outputs(args, _local_splits(args.source, kind, args.config_name)), inputs
            )
            if clash:
                return _fail("convert", f"--out would overwrite the input file {clash[1]} (as {clash[0]})")
        dsd = load_source(args.source, config_name=args.config_name, cache_dir=args.cache_dir)
        clash = _overwritten_input(_convert_outputs(args, dsd), inputs)  # and with the splits as loaded
        if clash:
            return _fail("convert", f"--out would overwrite the input file {clash[1]} (as {clash[0]})")
        summary = convert_dataset(dsd, args.out, opts, source=args.source)
    except (ValueError, OSError) as e:
        return _fail("convert", str(e))
    print(summary.format())
    status = 0
    for split in summary.splits.values():
        report = validate_file(split.path)
        if not report.ok:
            print(report.format(stats=False))
            status = 1
    return status


def run_validate(args: argparse.Namespace, always_stats: bool) -> int:
    from nemo_gammapo.data.lengths import make_length_fn
    from nemo_gammapo.data.validate import validate_file

    problems = [p for p in map(_input_problem, args.files) if p]
    if problems:
        for problem in problems:
            _fail(args.command, problem)
        return 2
    try:
        length_fn, unit = make_length_fn(args.tokenizer)
    except ValueError as e:
        print(f"nemo-gammapo data: {e}", file=sys.stderr)
        return 2
    reports = [
        validate_file(
            f,
            max_errors=args.max_errors,
            max_length=args.max_length,
            length_fn=length_fn,
            length_unit=unit,
            overlength_is_error=args.strict_length,
            progress=not args.no_progress,
        )
        for f in args.files
    ]
    if args.json:
        out = [
            {
                "path": r.path,
                "ok": r.ok,
                "lines": r.lines,
                "records": r.records,
                "counts": dict(r.counts),
                "errors": [vars(p) for p in r.errors],
                "over_length": r.over_length,
            }
            for r in reports
        ]
        print(json.dumps(out, indent=1))
    else:
        for r in reports:
            print(r.format(max_shown=args.max_errors, stats=always_stats or r.ok))
    return 0 if all(r.ok for r in reports) else 1


def run_flip(args: argparse.Namespace) -> int:
    from nemo_gammapo.data.noise import flip_file
    from nemo_gammapo.data.validate import DataValidationError

    ids = args.ids or Path(args.dst).with_suffix(".flips.json")
    problem = _input_problem(args.src)
    if problem:
        return _fail("flip", problem)
    for flag, path in (("output", args.dst), ("flipped-ids file", ids)):
        if path.is_dir():
            return _fail("flip", f"{flag} {path} is a directory")
    if _same_file(args.dst, args.src):
        return _fail("flip", f"output {args.dst} is the input file {args.src}; it would be overwritten")
    if _same_file(ids, args.src):
        return _fail("flip", f"flipped-ids file {ids} is the input file {args.src}; it would be overwritten")
    if _same_file(ids, args.dst):
        return _fail("flip", f"flipped-ids file {ids} is the output file {args.dst}; pass another --ids")
    try:
        result = flip_file(
            args.src, args.dst, p=args.p, seed=args.seed, ids_path=args.ids, progress=not args.no_progress
        )
    except (DataValidationError, ValueError) as e:
        print(f"nemo-gammapo data flip: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the output's folder cannot be made or written
        return _fail("flip", str(e))
    n = len(result.flipped_ids)
    print(f"flipped {n} of {result.total} pairs ({result.rate:.4f}; p={args.p}, seed={args.seed})")
    print(f"wrote {args.dst} and the flipped ids to {ids}")
    return 0


def run_template(args: argparse.Namespace) -> int:
    from nemo_gammapo.data.templates import render_prompt, render_response

    prompt = render_prompt(
        args.family, [{"role": "user", "content": args.text}], bos=not args.no_bos, system=args.system
    )
    print("prompt:  ", json.dumps(prompt, ensure_ascii=False))
    print("response:", json.dumps(render_response(args.family, "<assistant text>"), ensure_ascii=False))
    return 0


def _add_suspects(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suspects", help="rank a run's training pairs by evidence of a wrong label (γ dumps)")
    p.add_argument("run_dir", type=Path, help="run directory holding gamma_dumps/step_*.parquet (any layout)")
    p.add_argument("--data", type=Path, required=True, help="the run's training JSONL (rows are matched by pair id)")
    p.add_argument("--top", type=int, default=50, help="how many pairs to write (default 50)")
    p.add_argument("--out", type=Path, required=True, help="JSONL of the top pairs: original row + 'suspect'")
    p.add_argument("--summary", type=Path, help="summary JSON (default: OUT with .summary.json)")
    p.add_argument("--score", choices=["auto", "gamma", "margin"], default="auto", help="evidence (default auto)")
    p.add_argument("--min-step", type=int, default=0, help="ignore dumps before this step (default 0)")


def run_suspects(args: argparse.Namespace) -> int:
    from nemo_gammapo.artifacts.dumps import read_dumps
    from nemo_gammapo.data.suspects import find_suspects, index_rows, write_jsonl

    summary_path = args.summary or args.out.with_suffix(".summary.json")
    if not args.run_dir.is_dir():
        problem = "is not a directory" if args.run_dir.exists() else "does not exist"
        return _fail("suspects", f"run directory {args.run_dir} {problem}")
    problem = _input_problem(args.data)
    if problem:
        return _fail("suspects", f"--data {problem}")
    if args.top < 1:
        return _fail("suspects", f"--top must be >= 1 (got {args.top})")
    if args.min_step < 0:
        return _fail("suspects", f"--min-step must be >= 0 (got {args.min_step})")
    for flag, path in (("--out", args.out), ("--summary", summary_path)):
        if path.is_dir():
            return _fail("suspects", f"{flag} {path} is a directory")
        if _same_file(path, args.data):
            return _fail("suspects", f"{flag} {path} is the --data file; it would be overwritten")
    if _same_file(args.out, summary_path):
        return _fail("suspects", f"--summary {summary_path} is the --out file; pass another --summary")
    try:
        dumps = read_dumps(args.run_dir)
        rows = index_rows(args.data)
        picked, summary = find_suspects(dumps, rows, args.top, args.score, args.min_step)
    except (FileNotFoundError, ValueError, LookupError) as e:
        return _fail("suspects", str(e).splitlines()[0])
    summary = {"run_dir": str(args.run_dir), "data": str(args.data), "out": str(args.out), **summary}
    try:
        write_jsonl(args.out, picked)
        summary_path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    except OSError as e:
        return _fail("suspects", str(e))
    print(
        f"ranked {summary['matched_pairs']} pairs by {summary['score']} evidence over {len(summary['steps'])} "
        f"dumped step(s); wrote the top {len(picked)} to {args.out} and the summary to {summary_path}"
    )
    if summary["unmatched_pair_ids"]:
        print(
            f"note: {summary['unmatched_pair_ids']} dumped pair id(s) are not rows of {args.data} "
            "(is it the exact file the run trained on?)"
        )
    if "label_flipped" in summary:
        lf = summary["label_flipped"]
        print(f"against label_flipped: precision@{len(picked)} {lf['precision_at_top']:.3f}, AUROC {lf['auroc']:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``nemo-gammapo data`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="nemo-gammapo data",
        description="preference data tools: convert, validate / stats, flip, template, suspects",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    _add_validate(sub, "validate", "check JSONL files; every problem with its line number; exit 1 if any")
    _add_validate(sub, "stats", "same checks, always with length statistics")
    p = sub.add_parser("flip", help="label-flip noise: swap chosen/rejected with probability p per pair")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--p", type=float, required=True, help="flip probability per pair")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ids", type=Path, help="where to write the flipped ids (default DST with .flips.json)")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("template", help="print a rendered prompt for a chat family")
    p.add_argument("family", choices=sorted(FAMILIES))
    p.add_argument("text")
    p.add_argument("--system")
    p.add_argument("--no-bos", action="store_true")
    _add_suspects(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``nemo-gammapo data``."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "convert":
        return run_convert(args)
    if args.command in ("validate", "stats"):
        return run_validate(args, always_stats=args.command == "stats")
    if args.command == "flip":
        return run_flip(args)
    if args.command == "suspects":
        return run_suspects(args)
    return run_template(args)


if __name__ == "__main__":
    sys.exit(main())
