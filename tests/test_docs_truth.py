"""Docs and comments name only things that exist: files, folders, configs, CLI flags, config keys, Python names.

What is scanned, and for what:

* ``conf/<name>.yaml``, ``conf/<folder>/``, ``--config-name <name>``, ``--config <name>`` and
  ``CONFIG=<name>``: README.md and every other ``*.md``, the comments of ``conf/*.yaml``, every file
  under ``examples/`` and ``scripts/``, and the docstrings and comments of ``nemo_gammapo/**``;
* relative markdown links (file and ``#anchor``) and repository paths (``docs/...``, ``tests/...``,
  ``nemo_gammapo/...``, ...): every ``*.md``;
* ``nemo-gammapo <command> [subcommand] ... --flag`` and ``scripts/robustness_study.py ... --flag``
  written in a code block or inline code span of any ``*.md``, a docstring or comment of our Python
  files, or a comment of ``conf/*.yaml``: the flag is one the argparse parser of that very
  (sub)command accepts; written without placeholders, the whole command parses, and a
  ``nemo-gammapo plan`` command runs;
* any other ``--flag`` in README.md and docs/*.md: one of our parsers accepts it, or it belongs to a
  named external tool (:data:`EXTERNAL_FLAGS`);
* config keys written as ``model.…``, ``trainer.…``, ``exp_manager.…``, ``pretrained_checkpoint.…``
  in README.md and docs/*.md: present in the composed ``conf/gpt_gammapo.yaml``, or added by a preset
  (:data:`KEYS_NOT_IN_BASE`);
* ``nemo_gammapo.x.y`` names in README.md and docs/*.md: importable, or an attribute of a module.

Each checker also runs on a small document full of wrong names, so a checker that finds nothing
because it reads nothing fails too.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import tokenize
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf
from test_configs import composed

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", ".venv-container", "runs", "__pycache__", ".ruff_cache", ".pytest_cache"}


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Snippet:
    """A piece of text from one file; ``line`` is the line of its first character."""

    path: str
    line: int
    text: str

    def where(self, offset: int) -> str:
        """``path:line`` of the character at ``offset`` in :attr:`text`."""
        return f"{self.path}:{self.line + self.text.count(chr(10), 0, offset)}"


def repo_files(pattern: str) -> list[Path]:
    """Files under the repository matching a glob, outside virtualenvs, caches and run outputs."""
    return sorted(p for p in ROOT.glob(pattern) if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts))


def rel(path: Path) -> str:
    """``path`` relative to the repository root, with forward slashes."""
    return path.relative_to(ROOT).as_posix()


MARKDOWN = repo_files("**/*.md")
MAIN_DOCS = [ROOT / "README.md", *repo_files("docs/*.md")]
FENCE = re.compile(r"^\s*(```|~~~)")


def split_markdown(path: Path, text: str | None = None) -> tuple[Snippet, list[Snippet]]:
    """(prose with fenced code blanked out, line numbers kept; the fenced code blocks)."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).split("\n")
    prose: list[str] = []
    blocks: list[Snippet] = []
    block: list[str] | None = None
    start = 0
    for i, line in enumerate(lines, start=1):
        if FENCE.match(line):
            if block is None:
                block, start = [], i + 1
            else:
                blocks.append(Snippet(rel_or_name(path), start, "\n".join(block)))
                block = None
            prose.append("")
        elif block is not None:
            block.append(line)
            prose.append("")
        else:
            prose.append(line)
    return Snippet(rel_or_name(path), 1, "\n".join(prose)), blocks


def rel_or_name(path: Path) -> str:
    """Repository-relative name of a file in the repository; other files (test fixtures) as given."""
    return rel(path) if path.is_absolute() and ROOT in path.parents else path.as_posix()


INLINE_CODE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")


def inline_code(prose: Snippet) -> list[Snippet]:
    """Every inline code span of a markdown prose snippet (a span may wrap onto the next line)."""
    return [
        Snippet(prose.path, prose.line + prose.text.count("\n", 0, m.start(1)), m.group(1))
        for m in INLINE_CODE.finditer(prose.text)
    ]


def python_docs(path: Path) -> list[Snippet]:
    """Docstrings (module, class, function) and comments of a Python file."""
    source = path.read_text(encoding="utf-8")
    out: list[Snippet] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    out.append(Snippet(rel(path), first.value.lineno, first.value.value))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append(Snippet(rel(path), tok.start[0], tok.string[1:]))  # without the `#`
    return out


def yaml_comments(path: Path) -> list[Snippet]:
    """The comments of a YAML file (after a ``#`` at the start of a line or after a blank)."""
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        m = re.search(r"(?:^|\s)#(.*)$", line)
        if m:
            out.append(Snippet(rel(path), i, m.group(1)))  # without the `#`
    return out


def whole(path: Path) -> Snippet:
    """A whole file as one snippet."""
    return Snippet(rel(path), 1, path.read_text(encoding="utf-8"))


def markdown_everything(paths: Iterable[Path]) -> list[Snippet]:
    """Prose and code blocks of markdown files."""
    out: list[Snippet] = []
    for path in paths:
        prose, blocks = split_markdown(path)
        out += [prose, *blocks]
    return out


def config_name_sources() -> list[Snippet]:
    """Every place a config file, config folder or config name may be written."""
    out = markdown_everything(MARKDOWN)
    for path in repo_files("conf/*.yaml"):
        out += yaml_comments(path)
    for path in repo_files("examples/**/*") + repo_files("scripts/**/*"):
        if path.suffix in {".py", ".sh", ".sbatch", ".md", ".txt", ""}:
            out.append(whole(path))
    for path in repo_files("nemo_gammapo/**/*.py"):
        out += python_docs(path)
    return out


# ------------------------------------------------------------------------------------------- checkers

CONF = ROOT / "conf"
CONF_FILE = re.compile(r"(?<![\w/.-])conf/([A-Za-z0-9_][\w.-]*?)\.yaml\b")
CONF_FOLDER = re.compile(r"(?<![\w/.-])conf/([A-Za-z0-9_][\w.-]*)/")
# Config names given to our tools; placeholders (<name>, CONFIG, "$CONFIG", ...) are not names.
CONFIG_NAME = re.compile(
    r"(?:--config-name[= ]+|(?<![\w-])--config[= ]+|(?<![\w$])CONFIG=|\{CONFIG:-)([a-z][a-z0-9_]*)(?![\w/.-])"
)


def line_at(text: str, pos: int) -> str:
    """The whole line of ``text`` that holds position ``pos``."""
    end = text.find("\n", pos)
    return text[text.rfind("\n", 0, pos) + 1 : len(text) if end < 0 else end]


def check_config_names(snippets: Iterable[Snippet], conf: Path = CONF) -> list[str]:
    """``conf/<name>.yaml``, ``conf/<folder>/`` and config names passed to our tools exist."""
    problems = []
    for s in snippets:
        for m in CONF_FILE.finditer(s.text):
            if not (conf / f"{m.group(1)}.yaml").is_file():
                problems.append(f"{s.where(m.start())}: conf/{m.group(1)}.yaml does not exist")
        for m in CONF_FOLDER.finditer(s.text):
            if not (conf / m.group(1)).is_dir():
                problems.append(f"{s.where(m.start())}: folder conf/{m.group(1)}/ does not exist")
        for m in CONFIG_NAME.finditer(s.text):
            if "data convert" in line_at(s.text, m.start()):  # `data convert --config-name`: a dataset's config
                continue
            if not (conf / f"{m.group(1)}.yaml").is_file():
                problems.append(f"{s.where(m.start())}: config {m.group(1)!r} is not in conf/ ({m.group(0)!r})")
    return problems


MD_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The ``#anchor`` of every heading of a markdown file."""
    prose, _ = split_markdown(path)
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose.text, re.M)}


def check_links(paths: Iterable[Path]) -> list[str]:
    """Relative links in markdown prose point at an existing file (and heading, for ``#anchor``)."""
    problems = []
    for path in paths:
        prose, _ = split_markdown(path)
        for m in MD_LINK.finditer(prose.text):
            target = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = prose.where(m.start())
            if not dest.exists():
                problems.append(f"{where}: link target {target!r} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: link target {target!r}: no heading #{anchor} in {rel_or_name(dest)}")
    return problems


REPO_PATH = re.compile(
    r"(?<![\w./$~-])((?:conf|docs|tests|examples|scripts|nemo_gammapo|docker|requirements|\.ci|data/demo)/"
    r"[^\s`'\"()\[\]|;]*)"
)


def expand_braces(pattern: str) -> list[str]:
    """Shell brace expansion: ``a/{b,c}.md`` → ``a/b.md``, ``a/c.md``."""
    m = re.search(r"\{([^{}]*,[^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [
        x for part in m.group(1).split(",") for x in expand_braces(pattern[: m.start()] + part + pattern[m.end() :])
    ]


def check_repo_paths(snippets: Iterable[Snippet], root: Path = ROOT) -> list[str]:
    """Repository paths (``docs/x.md``, ``tests/test_y.py::test_z``, ``examples/slurm/``) exist.

    ``<placeholder>`` and ``*`` match anything; ``{a,b}`` is expanded; for ``file.py::name`` the file
    must define ``name``.
    """
    problems = []
    for s in snippets:
        for m in REPO_PATH.finditer(s.text):
            raw = m.group(1)
            path, _, test_name = raw.partition("::")
            path = re.sub(r"[.,:]+$", "", path)
            if "," in path and "{" not in path:
                path = path.split(",")[0]
            matches = [sorted(root.glob(p)) for p in expand_braces(re.sub(r"<[^<>]*>", "*", path))]
            if not all(matches):
                problems.append(f"{s.where(m.start())}: {raw!r} does not exist")
            elif test_name:
                name = re.escape(re.match(r"\w*", test_name).group(0))
                definition = re.compile(rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b", re.M)
                files = [f for hits in matches for f in hits if f.is_file()]
                if not name or not any(definition.search(f.read_text(encoding="utf-8")) for f in files):
                    problems.append(f"{s.where(m.start())}: {raw!r}: {path} defines no {test_name}")
    return problems


# --------------------------------------------------------------------------------------------- parsers


class _Captured(Exception):
    """Carries the parser a ``main`` built out of its ``parse_args`` call."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


def parser_of(module: ModuleType) -> argparse.ArgumentParser:
    """The module's argparse parser: ``build_parser()``, or the one ``main`` builds (caught at ``parse_args``)."""
    if hasattr(module, "build_parser"):
        return module.build_parser()

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        raise _Captured(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        module.main([])
    except _Captured as c:
        return c.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise AssertionError(f"{module.__name__}.main([]) built no argparse parser")


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Sub-commands of a parser (``nemo-gammapo data convert``, ...); empty when it has none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def flags(parser: argparse.ArgumentParser) -> set[str]:
    """The long options a parser accepts (``--out``, ...)."""
    return {opt for opt in parser._option_string_actions if opt.startswith("--")}


def load_script(path: Path) -> ModuleType:
    """Import a script that is not in a package (``scripts/robustness_study.py``) as a module."""
    spec = importlib.util.spec_from_file_location(f"_docs_truth_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Parser of every command the docs run: ``nemo-gammapo <cmd>`` (via the CLI's table) and our scripts."""
    from nemo_gammapo import cli

    out = {name: parser_of(importlib.import_module(module)) for name, (module, _) in cli.SUBCOMMANDS.items()}
    out["scripts/robustness_study.py"] = parser_of(load_script(ROOT / "scripts" / "robustness_study.py"))
    return out


def all_flags(parsers: dict[str, argparse.ArgumentParser]) -> set[str]:
    """Every long option of every parser and sub-parser."""
    out: set[str] = set()
    for parser in parsers.values():
        out |= flags(parser)
        for sub in subparsers(parser).values():
            out |= flags(sub)
    return out


COMMAND = re.compile(
    r"(?:(?<![\w-])nemo-gammapo|python -m nemo_gammapo\.cli)[ \t]+([\w-]+)|(scripts/robustness_study\.py)"
)
FLAG = re.compile(r"^--[A-Za-z][\w-]*")


def command_lines(s: Snippet, inline: bool) -> Iterator[tuple[int, str]]:
    """(offset, line) of each shell line in a code snippet; ``\\`` continuations are joined."""
    if inline:
        yield 0, s.text.replace("\n", " ")
        return
    offset = 0
    joined = ""
    start = 0
    for line in s.text.split("\n"):
        if not joined:
            start = offset
        offset += len(line) + 1
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        yield start, joined + line
        joined = ""
    if joined:
        yield start, joined


@dataclass(frozen=True)
class Command:
    """One ``nemo-gammapo <name> ...`` (or ``scripts/robustness_study.py ...``) written in a doc."""

    where: str
    name: str  # a key of command_parsers()
    args: str  # everything after the name, up to the end of the command
    script: bool

    @property
    def label(self) -> str:
        """How the docs call the command (``nemo-gammapo plan``, ``scripts/robustness_study.py``)."""
        return self.name if self.script else f"nemo-gammapo {self.name}"

    def concrete(self, min_tokens: int = 1) -> list[str] | None:
        """The argument list of a runnable example, else None.

        Not runnable: a bare mention (fewer than ``min_tokens`` arguments) or a synopsis with
        placeholders: ``<x>``, ``...``, ``$VAR``, ``[--optional]``, an upper-case name (``IN``,
        ``FAMILY``) or prose in parentheses after it.
        """
        if re.search(r"<[^>]*>|\.\.\.|…|\$|\[--", self.args):
            return None
        try:
            argv = shlex.split(self.args)
        except ValueError:
            return None
        if len(argv) < min_tokens or any(re.fullmatch(r"[A-Z][A-Z0-9_]*|\(.*", a) for a in argv):
            return None
        return argv


# A shell operator, a redirect, a closing code span, or the end of a parenthesis the command is written in.
COMMAND_END = re.compile(r"&&|\|\||\||;|`|\)|\s\d?>")


def find_commands(snippets: Iterable[tuple[Snippet, bool]]) -> Iterator[Command]:
    """Every command of ours in the snippets ((snippet, is_inline_code) pairs)."""
    for s, inline in snippets:
        for offset, line in command_lines(s, inline):
            line = re.sub(r"(?<!\S)#.*", "", line)  # a shell comment
            for m in COMMAND.finditer(line):
                args = COMMAND_END.split(line[m.end() :], maxsplit=1)[0]
                yield Command(s.where(offset), m.group(1) or m.group(2), args, script=m.group(2) is not None)


def check_command_flags(
    snippets: Iterable[tuple[Snippet, bool]], parsers: dict[str, argparse.ArgumentParser]
) -> list[str]:
    """Each ``nemo-gammapo <cmd> [sub] ... --flag`` uses only flags that (sub)command's parser accepts."""
    problems = []
    for cmd in find_commands(snippets):
        if cmd.name not in parsers:
            problems.append(f"{cmd.where}: `{cmd.label}`: no such command")
            continue
        tokens, parser, label = cmd.args.split(), parsers[cmd.name], cmd.label
        subs = subparsers(parser)
        if subs:
            if not tokens or tokens[0] not in subs:
                if tokens and FLAG.match(tokens[0]) is None and tokens[0] not in ("...", "…"):
                    problems.append(f"{cmd.where}: `{label} {tokens[0]}`: no such subcommand")
                continue
            label, parser, tokens = f"{label} {tokens[0]}", subs[tokens[0]], tokens[1:]
        known = flags(parser) | {"--help"}
        for token in tokens:
            flag = FLAG.match(token)
            if flag and flag.group(0) not in known:
                problems.append(f"{cmd.where}: `{label}` has no flag {flag.group(0)}")
    return problems


def check_commands_parse(
    snippets: Iterable[tuple[Snippet, bool]], parsers: dict[str, argparse.ArgumentParser]
) -> list[str]:
    """Commands written without placeholders parse: required arguments given, values of the right type."""
    problems = []
    for cmd in find_commands(snippets):
        if cmd.name not in parsers:
            continue
        argv = cmd.concrete(min_tokens=2 if subparsers(parsers[cmd.name]) else 1)
        if argv is None:
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                parsers[cmd.name].parse_args(argv)
        except SystemExit as e:
            if e.code:
                message = err.getvalue().strip().splitlines()[-1:] or [f"exit {e.code}"]
                problems.append(f"{cmd.where}: `{cmd.label} {cmd.args.strip()}`: {message[0]}")
    return problems


def check_plan_commands_run(snippets: Iterable[tuple[Snippet, bool]], main: Callable[[list[str]], int]) -> list[str]:
    """``nemo-gammapo plan`` commands without placeholders run (exit 0; 0 or 1 with ``--check``)."""
    problems = []
    for cmd in find_commands(snippets):
        argv = cmd.concrete()
        if cmd.name != "plan" or argv is None:
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
        if rc not in ((0, 1) if "--check" in argv else (0,)):
            message = (err.getvalue().strip().splitlines() or [""])[-1]
            problems.append(f"{cmd.where}: `nemo-gammapo plan {cmd.args.strip()}` exits {rc}: {message}")
    return problems


def code_snippets(paths: Iterable[Path]) -> list[tuple[Snippet, bool]]:
    """(snippet, is_inline) for every code block and inline code span of markdown files."""
    out: list[tuple[Snippet, bool]] = []
    for path in paths:
        prose, blocks = split_markdown(path)
        out += [(b, False) for b in blocks] + [(c, True) for c in inline_code(prose)]
    return out


# Flags of tools other than ours that the docs show, each with the tool it belongs to.
EXTERNAL_FLAGS: dict[str, str] = {
    "--account": "sbatch",
    "--model_outputs": "alpaca_eval (AlpacaEval)",
    "--annotators_config": "alpaca_eval (AlpacaEval)",
    "--partition": "sbatch",
    "--nodes": "sbatch / srun (also `nemo-gammapo plan --nodes`)",
    "--time": "sbatch",
    "--dependency": "sbatch",
    "--export": "sbatch",
    "--job-name": "sbatch",
    "--requeue": "sbatch",
    "--signal": "sbatch",
    "--ntasks": "srun",
    "--ntasks-per-node": "srun",
    "--gpus-per-node": "sbatch (also `nemo-gammapo plan` / `launch slurm --gpus-per-node`)",
    "--exclusive": "sbatch",
    "--chdir": "srun (host mode of examples/slurm/common.sh)",
    "--label": "srun",
    "--container-image": "srun with the pyxis plugin",
    "--container-mounts": "srun with the pyxis plugin",
    "--nproc_per_node": "torchrun",
    "--no-deps": "pip install (docker/build.sh's image)",
    "--input_name_or_path": "NeMo's checkpoint converter scripts",
    "--output_path": "NeMo's checkpoint converter scripts",
    "--precision": "NeMo's checkpoint converter scripts",
    "--llama31": "NeMo's convert_llama_hf_to_nemo.py",
    "--help": "every command",
}
ANY_FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


def check_prose_flags(snippets: Iterable[Snippet], known: set[str]) -> list[str]:
    """Every ``--flag`` anywhere is one of our parsers' flags or a named external tool's."""
    problems = []
    for s in snippets:
        for m in ANY_FLAG.finditer(s.text):
            if m.group(0) not in known and m.group(0) not in EXTERNAL_FLAGS:
                problems.append(f"{s.where(m.start())}: {m.group(0)} is not a flag of any of our commands")
    return problems


CONFIG_KEY = re.compile(r"(?<![\w./{$<-])((?:model|trainer|exp_manager|pretrained_checkpoint)(?:\.[A-Za-z_]\w*)+)")
# Keys the docs name that the base config does not have, because a preset or a `+key=` override adds them.
KEYS_NOT_IN_BASE: dict[str, str] = {}


@cache
def base_config() -> DictConfig:
    """``conf/gpt_gammapo.yaml`` composed with Hydra, as training composes it."""
    return composed("gpt_gammapo")


def has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` is a key of ``cfg`` (a ``???`` value still counts as present)."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node.keys():
            return False
        if OmegaConf.is_missing(node, part):
            return i == len(parts) - 1
        node = node[part]
    return True


def check_config_keys(snippets: Iterable[Snippet], cfg: DictConfig) -> list[str]:
    """Every ``model.…`` / ``trainer.…`` / ``exp_manager.…`` key written in the docs is a real key."""
    problems = []
    for s in snippets:
        text = s.text.replace("cfg.", "    ")  # `cfg.model.dpo`: the same key, written from Python
        for m in CONFIG_KEY.finditer(text):
            key = m.group(1)
            if key not in KEYS_NOT_IN_BASE and not has_key(cfg, key):
                problems.append(f"{s.where(m.start())}: config key {key} is not in conf/gpt_gammapo.yaml")
    return problems


PY_NAME = re.compile(r"(?<![\w.])nemo_gammapo(?:\.[A-Za-z_]\w*)+")


def resolves(dotted: str) -> bool:
    """Whether ``a.b.c`` is a module, or an attribute (chain) of the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def check_python_names(snippets: Iterable[Snippet]) -> list[str]:
    """``nemo_gammapo.x.y`` names in the docs import (module) or resolve (attribute)."""
    return [
        f"{s.where(m.start())}: {m.group(0)} does not exist"
        for s in snippets
        for m in PY_NAME.finditer(s.text)
        if not resolves(m.group(0))
    ]


def main_docs_text() -> list[Snippet]:
    """README.md and docs/*.md, prose and code."""
    return markdown_everything(MAIN_DOCS)


def report(problems: list[str]) -> str:
    """Problems one per line, for an assertion message."""
    return "\n" + "\n".join(problems)


# ----------------------------------------------------------------------------------------------- tests


def test_sources_are_found() -> None:
    """The scans read something: the files they claim to read exist and contain the expected things."""
    assert ROOT / "README.md" in MAIN_DOCS and len(MAIN_DOCS) >= 4
    names = [m.group(1) for s in config_name_sources() for m in CONFIG_NAME.finditer(s.text)]
    assert {"tiny_cpu", "llama3_70b_instruct", "llama3_8b_instruct"} <= set(names)
    commands = [
        m
        for s, inline in code_snippets(MAIN_DOCS)
        for _, line in command_lines(s, inline)
        for m in COMMAND.finditer(line)
    ]
    assert {m.group(1) for m in commands} >= {"train", "data", "plan", "plots", "bench"}
    assert len(list(CONFIG_KEY.finditer("\n".join(s.text for s in main_docs_text())))) > 20


def test_config_files_folders_and_names_exist() -> None:
    assert not (problems := check_config_names(config_name_sources())), report(problems)


def test_markdown_links_resolve() -> None:
    assert not (problems := check_links(MARKDOWN)), report(problems)


def test_repository_paths_exist() -> None:
    assert not (problems := check_repo_paths(markdown_everything(MARKDOWN))), report(problems)


def command_sources() -> list[tuple[Snippet, bool]]:
    """Code in every ``*.md``, docstrings and comments of our Python files, comments of ``conf/*.yaml``."""
    snippets = code_snippets(MARKDOWN)
    for path in repo_files("nemo_gammapo/**/*.py") + repo_files("examples/**/*.py") + repo_files("scripts/*.py"):
        snippets += [(s, False) for s in python_docs(path)]
    for path in repo_files("conf/*.yaml"):
        snippets += [(s, False) for s in yaml_comments(path)]
    return snippets


def test_commands_use_flags_their_parser_accepts() -> None:
    assert not (problems := check_command_flags(command_sources(), command_parsers())), report(problems)


def test_commands_without_placeholders_parse() -> None:
    assert not (problems := check_commands_parse(command_sources(), command_parsers())), report(problems)


def test_plan_commands_in_the_docs_run() -> None:
    from nemo_gammapo.launch import planner

    assert not (problems := check_plan_commands_run(command_sources(), planner.main)), report(problems)


def shell_script_flags() -> set[str]:
    """The long options our shell scripts' ``usage:`` lines name (e.g. ``scripts/slurm_cluster.sh``)."""
    out: set[str] = set()
    for path in repo_files("scripts/*.sh"):
        for line in (ROOT / path).read_text().splitlines():
            if "usage:" in line:
                out |= set(ANY_FLAG.findall(line))
    return out


def test_every_flag_in_the_docs_exists() -> None:
    assert {"--nodes", "--no-hosts"} <= shell_script_flags()
    problems = check_prose_flags(main_docs_text(), all_flags(command_parsers()) | shell_script_flags())
    assert not problems, report(problems)


def test_config_keys_in_the_docs_exist() -> None:
    assert not (problems := check_config_keys(main_docs_text(), base_config())), report(problems)


def test_python_names_in_the_docs_exist() -> None:
    assert not (problems := check_python_names(main_docs_text())), report(problems)


# A document that gets every kind of name wrong: each checker must object to it.
WRONG = """# Title

See [the guide](docs/nope.md), [a heading](#no-such-heading) and `docs/missing_page.md`.
Presets live in `conf/presets/`; the base is `conf/nope_base.yaml`, run with `--config-name nope_cfg`.

```bash
nemo-gammapo plan --config llama3_70b_instruct --no-such-flag
nemo-gammapo data convert in.jsonl --out x --tempalte llama3
nemo-gammapo frobnicate --x
nemo-gammapo data flip in.jsonl out.jsonl --seed 1
```

Set `model.dpo.gamma.no_such_key: 1` and `trainer.dpo.nope=2`; call `nemo_gammapo.core.no_such_function`.
Pass `--made-up-flag` to anything; `tests/test_launch_planner.py::test_does_not_exist` checks it.
"""


def test_checkers_object_to_wrong_names(tmp_path: Path) -> None:
    doc = tmp_path / "WRONG.md"
    doc.write_text(WRONG, encoding="utf-8")
    prose, blocks = split_markdown(doc)
    everything = [prose, *blocks]
    parsers = command_parsers()

    names = check_config_names(everything)
    assert any("folder conf/presets/" in p for p in names) and any("nope_base.yaml" in p for p in names)
    assert any("'nope_cfg'" in p for p in names)
    links = check_links([doc])
    assert any("docs/nope.md" in p for p in links) and any("#no-such-heading" in p for p in links)
    paths = check_repo_paths(everything)
    assert any("docs/missing_page.md" in p for p in paths) and any("test_does_not_exist" in p for p in paths)
    commands = check_command_flags([(b, False) for b in blocks] + [(c, True) for c in inline_code(prose)], parsers)
    assert any("`nemo-gammapo plan` has no flag --no-such-flag" in p for p in commands)
    assert any("`nemo-gammapo data convert` has no flag --tempalte" in p for p in commands)
    assert any("frobnicate" in p for p in commands)
    code = [(b, False) for b in blocks]
    parse = check_commands_parse(code, parsers)
    assert any("data flip" in p and "--p" in p for p in parse)  # `--p` is required
    ran = check_plan_commands_run(code, lambda argv: 2)
    assert len(ran) == 1 and "exits 2" in ran[0]
    assert any("--made-up-flag" in p for p in check_prose_flags(everything, all_flags(parsers)))
    keys = check_config_keys(everything, base_config())
    assert any("model.dpo.gamma.no_such_key" in p for p in keys) and any("trainer.dpo.nope" in p for p in keys)
    assert any("no_such_function" in p for p in check_python_names(everything))
    # and the line numbers point at the right lines
    assert any(p.startswith("WRONG.md:7:") or p.startswith(f"{doc.as_posix()}:7:") for p in commands)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("conf/tiny_cpu.yaml and `--config-name tiny_cpu`", []),
        ("`--config-name <name>`, `--config CONFIG`, `conf/*.yaml`", []),
        ("nemo-gammapo data convert hub/ds --config-name en --out x", []),  # a dataset config, not conf/
    ],
)
def test_placeholders_are_not_names(text: str, expected: list[str]) -> None:
    assert check_config_names([Snippet("x.md", 1, text)]) == expected


def test_github_anchors() -> None:
    assert github_anchor('How γ is computed, and what "correct at scale" means here') == (
        "how-γ-is-computed-and-what-correct-at-scale-means-here"
    )
    assert github_anchor("8. Scaling configs") == "8-scaling-configs"


def test_ci_runs_the_readme_test_command() -> None:
    """README: "`.ci/run` runs exactly this command" — verbatim, with the environment set up by it alone."""
    _, blocks = split_markdown(ROOT / "README.md")
    command = next(b.text.strip() for b in blocks if "-m pytest" in b.text)
    code = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    code = [line for line in code if line and not line.startswith("#")]
    assert command in code
    # The CPU environment is only what README's setup builds (CI runs that same setup once more, first,
    # so that the container leg's setup does not install the checkout at the same time); the one other
    # setup builds the container leg's own environment and is followed by that leg's tests.
    setups = [line for line in code if "scripts/setup_env.sh" in line]
    assert setups[0].startswith("bash scripts/setup_env.sh >"), setups
    assert command in setups and len(setups) == 3, setups
    (container,) = [line for line in setups if "--stack" in line]
    assert "setup_env.sh --stack container && bash scripts/test_container_stack.sh" in container
    assert any(line.startswith(".venv/bin/ruff check .") for line in code)
