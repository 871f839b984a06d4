"""Converter: every input style from local HF-format fixtures (save_to_disk, parquet, JSONL, folder)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import pytest

from nemo_gammapo.data.convert import ConversionSummary, ConvertOptions, convert_dataset
from nemo_gammapo.data.sources import describe_source, load_source
from nemo_gammapo.data.validate import validate_file


def msgs(user: str, reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def uf_row(i: int, good: str, bad: str, **over: object) -> dict:
    row = {
        "prompt": f"question {i}?",
        "prompt_id": f"pid{i}",
        "chosen": msgs(f"question {i}?", good),
        "rejected": msgs(f"question {i}?", bad),
        "score_chosen": 8.0,
        "score_rejected": 3.5,
    }
    row.update(over)
    return row


UF_GOOD = [uf_row(i, f"good answer {i}", f"bad answer {i}") for i in range(6)]
UF_BAD = [
    uf_row(6, "same", "same"),  # identical_responses
    uf_row(7, "x", "y", rejected=msgs("a different question", "y")),  # prompt_mismatch
    uf_row(8, "x", "y", chosen=[{"role": "user", "content": "question 8?"}]),  # no_assistant_reply
    uf_row(9, "  ", "y"),  # empty_response
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_accounting(summary: ConversionSummary) -> None:
    for s in summary.splits.values():
        assert s.read == s.written + sum(s.dropped.values())
    assert summary.read == summary.written + sum(summary.dropped.values())


@pytest.fixture
def cache(tmp_path: Path) -> str:
    return str(tmp_path / "hf_cache")


def test_ultrafeedback_style_from_save_to_disk(tmp_path: Path, cache: str) -> None:
    dsd = datasets.DatasetDict(
        {
            "train_prefs": datasets.Dataset.from_list(UF_GOOD + UF_BAD),
            "test_prefs": datasets.Dataset.from_list([uf_row(20, "yes", "no")]),
        }
    )
    dsd.save_to_disk(str(tmp_path / "uf"))
    assert describe_source(str(tmp_path / "uf")) == "save_to_disk"
    loaded = load_source(str(tmp_path / "uf"), cache_dir=cache)
    opts = ConvertOptions(template="llama3", splits={"train_prefs": "train", "test_prefs": "validation"}, seed=None)
    summary = convert_dataset(loaded, tmp_path / "out", opts, source="uf")

    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert len(train) == 6
    first = train[0]
    assert first["prompt"] == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nquestion 0?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert first["chosen_response"] == "good answer 0<|eot_id|>"
    assert first["rejected_response"] == "bad answer 0<|eot_id|>"
    assert (first["chosen_reward"], first["rejected_reward"]) == (8.0, 3.5)
    assert first["id"] == "train_prefs-0000000" and first["source_id"] == "pid0"
    assert (first["source"], first["source_split"], first["source_row"]) == ("uf", "train_prefs", 0)
    assert (first["style"], first["template"]) == ("messages", "llama3")

    s = summary.splits["train"]
    assert (s.read, s.written, s.style) == (10, 6, "messages")
    assert dict(s.dropped) == {
        "identical_responses": 1,
        "prompt_mismatch": 1,
        "no_assistant_reply": 1,
        "empty_response": 1,
    }
    assert summary.splits["validation"].written == 1
    check_accounting(summary)
    on_disk = json.loads((tmp_path / "out" / "conversion_summary.json").read_text())
    assert on_disk["read"] == 11 and on_disk["written"] == 7 and sum(on_disk["dropped"].values()) == 4
    for name in ("train", "validation"):
        assert validate_file(tmp_path / "out" / f"{name}.jsonl").ok
    text = summary.format()
    for reason in s.dropped:
        assert reason in text


def test_messages_with_separate_prompt_column_and_multi_turn(tmp_path: Path) -> None:
    rows = [
        {  # TRL-style: prompt column as messages, chosen/rejected hold only the reply
            "prompt": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "2+2?"},
            ],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        }
    ]
    dsd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    summary = convert_dataset(dsd, tmp_path, ConvertOptions(template="gemma2", end_of_turn=False, seed=None))
    (out,) = read_jsonl(tmp_path / "train.jsonl")
    assert out["prompt"] == (
        "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nhello<end_of_turn>\n"
        "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert (out["chosen_response"], out["rejected_response"]) == ("4", "5")
    assert "chosen_reward" not in out
    # without a template a multi-turn conversation cannot be written: dropped and counted
    summary = convert_dataset(dsd, tmp_path / "none", ConvertOptions(seed=None))
    assert dict(summary.splits["train"].dropped) == {"needs_template": 1}
    check_accounting(summary)


ONPOLICY = [
    {"prompt": "p0", "prompt_id": "a", "all_generated_responses": ["r0", "r1", "r2", "r3"],
     "all_rm_scores": [0.1, 0.9, -0.4, 0.3]},
    {"prompt": "p1", "prompt_id": "b", "all_generated_responses": ["s0", "s1", "s2"],
     "all_rm_scores": [0.5, 0.5, 0.5]},  # tie → dropped
    {"prompt": "p2", "prompt_id": "c", "all_generated_responses": ["t0", "t1", "t2", "t3", "t4"],
     "all_rm_scores": [2.0, 2.0, -1.0, 0.0, -1.0]},  # ties inside: first highest, first lowest
    {"prompt": "p3", "prompt_id": "d", "all_generated_responses": ["u0"], "all_rm_scores": [1.0]},
    {"prompt": "p4", "prompt_id": "e", "all_generated_responses": ["v0", "v1"], "all_rm_scores": [1.0]},
    {"prompt": "p5", "prompt_id": "f", "all_generated_responses": ["w", "w"], "all_rm_scores": [1.0, 0.0]},
    {"prompt": "p6", "prompt_id": "g", "all_generated_responses": ["x0", "x1"],
     "all_rm_scores": [float("nan"), 0.0]},
]  # fmt: skip


def test_onpolicy_highest_vs_lowest_from_parquet(tmp_path: Path, cache: str) -> None:
    path = tmp_path / "gen.parquet"
    datasets.Dataset.from_list(ONPOLICY).to_parquet(str(path))
    dsd = load_source(str(path), cache_dir=cache)
    summary = convert_dataset(dsd, tmp_path / "out", ConvertOptions(seed=None))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert [r["source_id"] for r in rows] == ["a", "c"]
    a, c = rows
    assert (a["prompt"], a["chosen_response"], a["rejected_response"]) == ("p0", "r1", "r2")
    assert (a["chosen_reward"], a["rejected_reward"]) == (0.9, -0.4)
    assert (a["num_candidates"], a["chosen_index"], a["rejected_index"]) == (4, 1, 2)
    assert (c["chosen_response"], c["rejected_response"], c["chosen_index"], c["rejected_index"]) == ("t0", "t2", 0, 2)
    s = summary.splits["train"]
    assert s.style == "onpolicy"
    assert dict(s.dropped) == {
        "score_tie": 1,
        "too_few_responses": 1,
        "responses_scores_mismatch": 1,
        "identical_responses": 1,
        "bad_score": 1,
    }
    check_accounting(summary)
    assert math.isfinite(a["chosen_reward"])


PLAIN = [
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
    {"prompt": "2+2?", "chosen": "4", "rejected": "5", "chosen_reward": 1.0, "rejected_reward": 0.0},
    {"prompt": "", "chosen": "a", "rejected": "b"},  # empty_prompt
    {"prompt": "q", "chosen": None, "rejected": "b"},  # missing_field
]


def test_plain_rows_from_jsonl_with_qwen_template(tmp_path: Path, cache: str) -> None:
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PLAIN))
    summary = convert_dataset(
        load_source(str(path), cache_dir=cache), tmp_path / "out", ConvertOptions(template="qwen2.5", seed=None)
    )
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert rows[0]["prompt"] == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert rows[0]["chosen_response"] == "Blue.<|im_end|>" and rows[0]["style"] == "plain"
    assert "chosen_reward" not in rows[0]
    assert (rows[1]["chosen_reward"], rows[1]["rejected_reward"]) == (1.0, 0.0)
    assert dict(summary.splits["train"].dropped) == {"empty_prompt": 1, "missing_field": 1}
    check_accounting(summary)


def test_plain_rows_without_template_pass_through(tmp_path: Path, cache: str) -> None:
    path = tmp_path / "plain.parquet"
    datasets.Dataset.from_list(PLAIN[:2]).to_parquet(str(path))
    convert_dataset(load_source(str(path), cache_dir=cache), tmp_path / "out", ConvertOptions(seed=None))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert [(r["prompt"], r["chosen_response"], r["rejected_response"]) for r in rows] == [
        ("Name a colour.", "Blue.", "Seven."),
        ("2+2?", "4", "5"),
    ]


def test_already_templated_prompts_are_dropped_not_wrapped_twice(tmp_path: Path) -> None:
    rows = [{"prompt": "<s>[INST] hi [/INST]", "chosen": "a", "rejected": "b"}]
    dsd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    summary = convert_dataset(dsd, tmp_path, ConvertOptions(template="mistral"))
    assert dict(summary.splits["train"].dropped) == {"template_error": 1}
    assert (tmp_path / "train.jsonl").read_text() == ""


def test_hub_style_folder_of_parquet_shards(tmp_path: Path, cache: str) -> None:
    folder = tmp_path / "snapshot" / "data"
    folder.mkdir(parents=True)
    datasets.Dataset.from_list(UF_GOOD[:4]).to_parquet(str(folder / "train_prefs-00000-of-00002.parquet"))
    datasets.Dataset.from_list(UF_GOOD[4:]).to_parquet(str(folder / "train_prefs-00001-of-00002.parquet"))
    datasets.Dataset.from_list(UF_BAD[:1]).to_parquet(str(folder / "test_prefs-00000-of-00001.parquet"))
    dsd = load_source(str(tmp_path / "snapshot"), cache_dir=cache)
    assert {k: len(v) for k, v in dsd.items()} == {"train_prefs": 6, "test_prefs": 1}


def test_hub_name_downloads_data_files_then_reads_them_as_a_folder(
    tmp_path: Path, cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    snapshot = tmp_path / "snap"
    (snapshot / "data").mkdir(parents=True)
    datasets.Dataset.from_list(ONPOLICY).to_parquet(str(snapshot / "data" / "train-00000-of-00001.parquet"))
    calls = []

    def fake_snapshot_download(repo_id: str, **kw: object) -> str:
        calls.append((repo_id, kw))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert describe_source("someone/some-prefs") == "hub"
    dsd = load_source("someone/some-prefs", cache_dir=cache)
    assert len(dsd["train"]) == len(ONPOLICY)
    assert calls[0][0] == "someone/some-prefs" and calls[0][1]["repo_type"] == "dataset"


def shuffled_ids(tmp_path: Path, seed: int | None, name: str) -> list[str]:
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(50)]
    dsd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    convert_dataset(dsd, tmp_path / name, ConvertOptions(seed=seed, progress=False))
    return [r["id"] for r in read_jsonl(tmp_path / name / "train.jsonl")]


def test_shuffle_is_deterministic_and_seeded(tmp_path: Path) -> None:
    a, b, c = shuffled_ids(tmp_path, 1, "a"), shuffled_ids(tmp_path, 1, "b"), shuffled_ids(tmp_path, 2, "c")
    source_order = shuffled_ids(tmp_path, None, "d")
    assert a == b
    assert a != c and a != source_order
    assert sorted(a) == sorted(c) == source_order


def test_holdout_and_split_errors(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(40)]
    dsd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    summary = convert_dataset(dsd, tmp_path, ConvertOptions(holdout=0.25))
    train, val = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "validation.jsonl")
    assert (len(train), len(val)) == (30, 10)
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    check_accounting(summary)
    with pytest.raises(ValueError, match="not in the source"):
        convert_dataset(dsd, tmp_path, ConvertOptions(splits={"test": "validation"}))
    with pytest.raises(ValueError, match="style"):
        convert_dataset(dsd, tmp_path, ConvertOptions(style="sharegpt"))


def test_max_rows_counts_only_rows_read(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(20)]
    dsd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    summary = convert_dataset(dsd, tmp_path, ConvertOptions(max_rows=7))
    assert (summary.read, summary.written) == (7, 7)


def test_style_is_detected_from_column_types_even_if_the_first_row_is_broken(tmp_path: Path) -> None:
    rows = [uf_row(0, "a", "b", chosen=None), *UF_GOOD[:2]]
    dsd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    summary = convert_dataset(dsd, tmp_path, ConvertOptions(template="llama3"))
    assert summary.splits["train"].style == "messages"
    assert (summary.written, dict(summary.dropped)) == (2, {"missing_field": 1})
    plain_rows = [{"prompt": "q", "chosen": None, "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": "b"}]
    plain = datasets.DatasetDict({"train": datasets.Dataset.from_list(plain_rows)})
    assert convert_dataset(plain, tmp_path / "p", ConvertOptions()).splits["train"].style == "plain"
    with pytest.raises(ValueError, match="system prompt needs a chat template"):
        convert_dataset(plain, tmp_path / "p", ConvertOptions(system="Be nice."))
