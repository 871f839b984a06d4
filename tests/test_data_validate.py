"""Validator: a corpus of malformed files, each rejected with the right line number and kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_gammapo.data.lengths import make_length_fn
from nemo_gammapo.data.validate import DataValidationError, assert_valid_files, validate_file

REPO = Path(__file__).resolve().parent.parent


def good(i: int) -> str:
    return json.dumps({"id": f"g{i}", "prompt": f"Q{i}: ", "chosen_response": "yes", "rejected_response": "no"})


def line(**fields: object) -> str:
    base = {"id": "bad", "prompt": "Q: ", "chosen_response": "yes", "rejected_response": "no"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not DROP})


DROP = object()

# name → (bad line text, expected kind); the bad line is always line 3, after two good lines.
CORPUS: dict[str, tuple[str, str]] = {
    "truncated_json": ('{"id": "bad", "prompt": "Q: ", "chosen_response": "ye', "invalid_json"),
    "trailing_comma": ('{"prompt": "Q", "chosen_response": "a", "rejected_response": "b",}', "invalid_json"),
    "python_literal": ("{'prompt': 'Q', 'chosen_response': 'a', 'rejected_response': 'b'}", "invalid_json"),
    "array_line": ('["Q", "a", "b"]', "not_an_object"),
    "missing_prompt": (line(prompt=DROP), "missing_field"),
    "missing_rejected": (line(rejected_response=DROP), "missing_field"),
    "numeric_response": (line(chosen_response=42), "wrong_type"),
    "null_prompt": (line(prompt=None), "wrong_type"),
    "message_list_prompt": (line(prompt=[{"role": "user", "content": "hi"}]), "wrong_type"),
    "empty_chosen": (line(chosen_response=""), "empty_field"),
    "whitespace_prompt": (line(prompt="  \n"), "empty_field"),
    "identical": (line(chosen_response="same", rejected_response="same"), "identical_responses"),
    "string_reward": (line(chosen_reward="high"), "bad_reward"),
    "nan_reward": ('{"prompt": "Q", "chosen_response": "a", "rejected_response": "b", "chosen_reward": NaN}',
                   "bad_reward"),
    "bool_reward": (line(rejected_reward=True), "bad_reward"),
    "list_id": (line(id=[1]), "bad_id"),
    "duplicate_id": (line(id="g1"), "duplicate_id"),
    "duplicate_key": ('{"prompt": "Q", "prompt": "R", "chosen_response": "a", "rejected_response": "b"}',
                      "duplicate_key"),
    "blank_line": ("", "blank_line"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_line_is_reported_with_its_line_number(tmp_path: Path, name: str) -> None:
    bad, kind = CORPUS[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join([good(0), good(1), bad, good(3), good(4)]) + "\n", encoding="utf-8")
    report = validate_file(path)
    assert not report.ok
    assert [(p.line, p.kind) for p in report.errors] == [(3, kind)]
    assert report.errors[0].path == str(path)
    assert report.records == 4 and report.lines == 5  # the other lines are still checked and counted
    assert f"{path}:3: {kind}:" in report.format()


def test_corpus_has_at_least_ten_distinct_kinds() -> None:
    assert len({kind for _, kind in CORPUS.values()}) >= 10


def test_invalid_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        (good(0) + "\n").encode() + '{"prompt": "caf\xe9"}\n'.encode("latin-1") + (good(2) + "\n").encode()
    )
    report = validate_file(path)
    assert [(p.line, p.kind) for p in report.errors] == [(2, "invalid_utf8")]


def test_byte_order_mark_on_line_one(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (good(0) + "\n" + good(1) + "\n").encode())
    report = validate_file(path)
    assert [(p.line, p.kind) for p in report.errors] == [(1, "invalid_json")]
    assert "byte-order mark" in report.errors[0].message


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    report = validate_file(tmp_path / "empty.jsonl")
    assert [(p.line, p.kind) for p in report.errors] == [(0, "empty_file")]
    report = validate_file(tmp_path / "nope.jsonl")
    assert [(p.line, p.kind) for p in report.errors] == [(0, "file_not_found")]


def test_every_problem_is_reported_and_counted(tmp_path: Path) -> None:
    lines = [good(0), CORPUS["truncated_json"][0], line(id="g0"), CORPUS["identical"][0], good(4), ""]
    lines += [line(id=f"x{i}", prompt="") for i in range(30)]
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = validate_file(path, max_errors=5)
    assert [(p.line, p.kind) for p in report.errors] == [
        (2, "invalid_json"),
        (3, "duplicate_id"),
        (4, "identical_responses"),
        (6, "blank_line"),
        (7, "empty_field"),
    ]
    assert report.error_count == 34 and report.counts["empty_field"] == 30
    assert "... and 29 more" in report.format(max_shown=5)


def test_one_line_with_several_problems_reports_each(tmp_path: Path) -> None:
    path = tmp_path / "multi.jsonl"
    path.write_text(json.dumps({"prompt": 1, "chosen_response": ""}) + "\n")
    kinds = sorted(p.kind for p in validate_file(path).errors)
    assert kinds == ["empty_field", "missing_field", "wrong_type"]


def test_valid_file_passes_with_stats(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    rows = [good(i) for i in range(10)]
    rows.append(json.dumps({"prompt": "é? ", "chosen_response": "a", "rejected_response": "bb", "chosen_reward": 1}))
    path.write_text("\n".join(rows))  # no trailing newline is fine
    report = validate_file(path)
    assert report.ok and report.records == 11 and report.errors == []
    assert (report.char_lengths["prompt"].min, report.char_lengths["prompt"].max) == (3, 4)
    assert (report.pair_lengths.min, report.pair_lengths.max) == (len("é? bb".encode()), len("Q0: yes"))  # 6, 7
    assert "OK" in report.format()


@pytest.mark.parametrize("split", ["train", "validation"])
def test_bundled_demo_data_is_valid(split: str) -> None:
    report = validate_file(REPO / "data" / "demo" / f"{split}.jsonl", max_length=64)
    assert report.ok, report.format()
    assert report.records == {"train": 512, "validation": 64}[split] and report.over_length == 0


def test_over_length_pairs_are_counted_with_aligner_rule(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    rows = [
        {"prompt": "abcd", "chosen_response": "efgh", "rejected_response": "x"},  # 8 bytes: 8 - 1 = 7 <= 7
        {"prompt": "abcd", "chosen_response": "x", "rejected_response": "efghi"},  # 9 bytes: over
        {"prompt": "ab", "chosen_response": "ééé", "rejected_response": "x"},  # 2 + 6 bytes = 8: not over
        {"prompt": "ab", "chosen_response": "éééé", "rejected_response": "x"},  # 10 bytes: over
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate_file(path, max_length=7)
    assert report.ok and report.over_length == 2 and report.over_length_lines == [2, 4]
    assert "over-length pairs (> 7 bytes): 2" in report.format()
    chars_fn, unit = make_length_fn("chars")
    assert validate_file(path, max_length=7, length_fn=chars_fn, length_unit=unit).over_length == 1
    strict = validate_file(path, max_length=7, overlength_is_error=True)
    assert [(p.line, p.kind) for p in strict.errors] == [(2, "over_length"), (4, "over_length")]


def test_local_hf_tokenizer_length(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<bos>": 1, "hello": 2, "world": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<bos>")
    fast.save_pretrained(str(tmp_path / "tok"))
    fn, unit = make_length_fn(str(tmp_path / "tok"))
    assert unit == "tokens" and fn("hello world hello") == 3 and fn("<bos>hello") == 2
    with pytest.raises(ValueError, match="tokenizer"):
        make_length_fn(str(tmp_path / "missing"))


def test_assert_valid_files_raises_with_key_and_first_problems(tmp_path: Path) -> None:
    ok, bad = tmp_path / "ok.jsonl", tmp_path / "bad.jsonl"
    ok.write_text(good(0) + "\n")
    bad.write_text(good(0) + "\n" + CORPUS["identical"][0] + "\n")
    assert len(assert_valid_files([ok], key="model.data.data_prefix.train")) == 1
    with pytest.raises(DataValidationError) as e:
        assert_valid_files([ok, bad], key="model.data.data_prefix.train")
    message = str(e.value)
    assert message.startswith("model.data.data_prefix.train: 1 data file(s) failed validation")
    assert f"{bad}:2: identical_responses" in message and str(ok) + ":" not in message
