"""``nemo-gammapo generate``: batched greedy generation equals ``transformers`` one prompt at a time, sampling is
reproducible from its seed, a ``.nemo`` generates what its Hugging Face original does, the output is AlpacaEval's
model-outputs format, and bad input stops with one line and exit code 2.

The model is the random tiny Llama (2 layers, GQA 4/2) with the offline byte-level tokenizer of
``tests/test_hf_parity.py``; prompts of different lengths share batches, so left padding is exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_hf_parity import make_tiny

from nemo_gammapo.data.templates import render_prompt
from nemo_gammapo.evaluate import generate

REPO = Path(__file__).resolve().parents[1]
NEW_TOKENS = 10
EOS, PAD = 1, 2  # make_tiny's ids
# AlpacaEval-style records: different lengths (3 per batch → padded batches), some with a dataset, one with the
# reference model's output / generator fields that the command must replace
PROMPTS: list[dict[str, Any]] = [
    {"dataset": "helpful_base", "instruction": "Q: is 416 even or odd?\nA: "},
    {"instruction": "hi"},
    {"dataset": "oasst", "instruction": "Tell me a story about a cat.", "output": "ref", "generator": "gpt4_turbo"},
    {"instruction": "2+2="},
    {"dataset": "koala", "instruction": "Name three colours of the rainbow, please: "},
]


NEMO_TEST = "test_nemo_generates_what_its_hf_original_does"
# One process, as a user would run it: the project's hf_to_nemo, then `nemo-gammapo generate` through the CLI.
NEMO_SCRIPT = (
    "import sys\n"
    "from nemo_gammapo.convert.hf import hf_to_nemo\n"
    "hf_to_nemo(sys.argv[1], sys.argv[2], 'llama')\n"
    "from nemo_gammapo.cli import main\n"
    "sys.exit(main(sys.argv[3:]))\n"
)


@pytest.fixture(scope="module")
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The tiny HF model folder and the prompt file (a JSON list, elements over several lines).

    When the .nemo test is selected, its conversion and generation start here in a background process
    (NeMo's imports take most of its time), so that they overlap with the other tests.
    """
    root = tmp_path_factory.mktemp("generate")
    hf = root / "tiny-llama"
    make_tiny("llama", hf)
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS, indent=2), encoding="utf-8")
    job = None
    if any(item.name == NEMO_TEST for item in request.session.items):
        nemo, log = root / "tiny.nemo", (root / "nemo_job.log").open("w")
        generate_args = ["generate", str(nemo), "--prompts", str(prompts), "--out", str(root / "nemo.json")]
        generate_args += ["--batch-size", "3", "--max-new-tokens", str(NEW_TOKENS), "--no-progress"]
        job = subprocess.Popen(
            [sys.executable, "-c", NEMO_SCRIPT, str(hf), str(nemo), *generate_args],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        log.close()
    yield {"root": root, "hf": hf, "prompts": prompts, "nemo_job": job}
    if job is not None and job.poll() is None:
        job.kill()
        job.wait()


def run_cli(*argv: str) -> list[dict[str, Any]]:
    """``nemo-gammapo generate`` in this process; the written outputs."""
    out = Path(argv[argv.index("--out") + 1])
    assert generate.main([*argv, "--no-progress"]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def until_eos(tokens: list[int]) -> list[int]:
    return tokens[: tokens.index(EOS)] if EOS in tokens else tokens


@pytest.fixture(scope="module")
def reference(tiny: dict[str, Any]) -> dict[str, Any]:
    """``transformers``' own ``generate`` on each prompt alone (no padding), greedy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny["hf"], torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny["hf"])
    prompt_ids, tokens = [], []
    for p in PROMPTS:
        ids = tokenizer(p["instruction"], add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
        prompt_ids.append(ids[0].tolist())
        tokens.append(until_eos(out[0, ids.shape[1] :].tolist()))
    texts = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
    return {"model": model, "tokenizer": tokenizer, "prompt_ids": prompt_ids, "tokens": tokens, "texts": texts}


@pytest.fixture(scope="module")
def greedy_outputs(tiny: dict[str, Any]) -> list[dict[str, Any]]:
    out = tiny["root"] / "greedy.json"
    return run_cli(
        str(tiny["hf"]),
        "--prompts",
        str(tiny["prompts"]),
        "--out",
        str(out),
        "--batch-size",
        "3",
        "--max-new-tokens",
        str(NEW_TOKENS),
    )


def test_batched_greedy_equals_transformers_one_by_one(
    greedy_outputs: list[dict[str, Any]], reference: dict[str, Any]
) -> None:
    lengths = [len(ids) for ids in reference["prompt_ids"]]
    assert len(set(lengths)) == len(lengths)  # every batch of 3 is left-padded
    assert [o["output"] for o in greedy_outputs] == reference["texts"]
    # the token ids, not only their (lossy) text: the batched path gives each prompt's own greedy tokens
    batched = generate.generate_tokens(
        reference["model"],
        reference["prompt_ids"],
        max_new_tokens=NEW_TOKENS,
        batch_size=3,
        stop_ids=[EOS],
        pad_id=PAD,
    )
    assert batched == reference["tokens"]
    assert all(len(t) <= NEW_TOKENS for t in batched)
    assert sum(map(len, batched)) > 2 * len(PROMPTS)  # it generated something


def test_output_is_alpaca_eval_model_outputs(tiny: dict[str, Any], greedy_outputs: list[dict[str, Any]]) -> None:
    assert [o["instruction"] for o in greedy_outputs] == [p["instruction"] for p in PROMPTS]  # input order
    for out, prompt in zip(greedy_outputs, PROMPTS, strict=True):
        keys = ["instruction", "output", "generator"] + (["dataset"] if "dataset" in prompt else [])
        assert list(out) == keys
        assert out["generator"] == "tiny-llama"  # the model folder's name by default, not the input's
        assert out.get("dataset") == prompt.get("dataset")
        assert isinstance(out["output"], str) and out["output"] != "ref"
    # our data format (JSONL with "prompt"), and a chosen generator name
    jsonl = tiny["root"] / "pairs.jsonl"
    rows = [{"id": f"p{i}", "prompt": p["instruction"], "chosen_response": "x"} for i, p in enumerate(PROMPTS)]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    out = run_cli(
        str(tiny["hf"]),
        "--prompts",
        str(jsonl),
        "--out",
        str(tiny["root"] / "pairs_out.json"),
        "--batch-size",
        "2",
        "--max-new-tokens",
        str(NEW_TOKENS),
        "--generator",
        "gammapo-tiny",
    )
    assert [list(o) for o in out] == [["instruction", "output", "generator"]] * len(PROMPTS)
    assert [o["generator"] for o in out] == ["gammapo-tiny"] * len(PROMPTS)
    assert [o["output"] for o in out] == [o["output"] for o in greedy_outputs]  # batch size does not matter
    assert not list(tiny["root"].glob(".*.tmp"))  # the atomic write left no temporary file


def test_template_is_the_projects_own(tiny: dict[str, Any], reference: dict[str, Any]) -> None:
    """--template mistral generates from exactly render_prompt's text (BOS as text, tokenized as the BOS token)."""
    out = run_cli(
        str(tiny["hf"]),
        "--prompts",
        str(tiny["prompts"]),
        "--out",
        str(tiny["root"] / "mistral.json"),
        "--template",
        "mistral",
        "--max-new-tokens",
        "6",
    )
    model, tokenizer = reference["model"], reference["tokenizer"]
    for row, prompt in zip(out, PROMPTS, strict=True):
        text = render_prompt("mistral", [{"role": "user", "content": prompt["instruction"]}])
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        assert ids[0, 0].item() == 0  # "<s>" written as text is the BOS token
        with torch.no_grad():
            new = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
        expected = tokenizer.decode(until_eos(new[0, ids.shape[1] :].tolist()), skip_special_tokens=True).strip()
        assert row["output"] == expected
        assert row["instruction"] == prompt["instruction"]  # the text as given, not the template


def test_sampling_is_reproducible_from_its_seed(tiny: dict[str, Any], greedy_outputs: list[dict[str, Any]]) -> None:
    def sample(seed: int, name: str) -> list[str]:
        out = run_cli(
            str(tiny["hf"]),
            "--prompts",
            str(tiny["prompts"]),
            "--out",
            str(tiny["root"] / name),
            "--batch-size",
            "3",
            "--max-new-tokens",
            str(NEW_TOKENS),
            "--temperature",
            "1.0",
            "--top-p",
            "0.95",
            "--seed",
            str(seed),
        )
        return [o["output"] for o in out]

    first, again, other = sample(1, "s1.json"), sample(1, "s1b.json"), sample(2, "s2.json")
    assert first == again
    assert first != other and sum(a != b for a, b in zip(first, other, strict=True)) >= 3
    assert first != [o["output"] for o in greedy_outputs]


@pytest.mark.distributed  # a 1-rank NeMo job (gloo process group) in its own process
def test_nemo_generates_what_its_hf_original_does(tiny: dict[str, Any], greedy_outputs: list[dict[str, Any]]) -> None:
    """The .nemo made from the HF folder by hf_to_nemo (no --family: the recorded one) generates the same."""
    job, log = tiny["nemo_job"], tiny["root"] / "nemo_job.log"
    assert job is not None
    try:
        rc = job.wait(timeout=240)
    except subprocess.TimeoutExpired:
        job.kill()
        raise
    assert rc == 0, log.read_text(encoding="utf-8")[-3000:]
    out = json.loads((tiny["root"] / "nemo.json").read_text(encoding="utf-8"))
    assert [o["output"] for o in out] == [o["output"] for o in greedy_outputs]
    assert {o["generator"] for o in out} == {"tiny"}  # the .nemo file's name
    assert [o.get("dataset") for o in out] == [p.get("dataset") for p in PROMPTS]


# ------------------------------------------------------------------------------------------ bad input


def fails(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """Run the command expecting exit code 2 and one line on stderr; that line."""
    try:
        rc = generate.main(list(argv))
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nemo-gammapo generate: error: ")
    return lines[0]


def test_bad_prompt_files_name_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, out = str(tmp_path / "no-model-needed"), str(tmp_path / "out.json")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"instruction": "a"}\n\n{"text": "b", "dataset": "x"}\n', encoding="utf-8")
    line = fails(capsys, model, "--prompts", str(jsonl), "--out", out)
    assert f"{jsonl}:3: no 'instruction' (AlpacaEval) or 'prompt'" in line and "'text'" in line
    listed = tmp_path / "p.json"
    listed.write_text('[\n  {"instruction": "a"},\n  {\n    "instruction": ""\n  }\n]\n', encoding="utf-8")
    assert f"{listed}:3: 'instruction' must be a non-empty string" in fails(
        capsys, model, "--prompts", str(listed), "--out", out
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a"}\n{"instruction": \n', encoding="utf-8")
    assert f"{broken}:2: not valid JSON" in fails(capsys, model, "--prompts", str(broken), "--out", out)
    templated = tmp_path / "templated.jsonl"
    templated.write_text(json.dumps({"prompt": "[INST] hi [/INST]"}) + "\n", encoding="utf-8")
    line = fails(capsys, model, "--prompts", str(templated), "--out", out, "--template", "mistral")
    assert f"{templated}:1: --template mistral:" in line and "--template none" in line
    assert not Path(out).exists()


def test_bad_flags_and_paths_name_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "a"}\n', encoding="utf-8")
    base = [str(tmp_path), "--prompts", str(prompts), "--out", str(tmp_path / "o.json")]
    line = fails(capsys, *base, "--template", "llama2")
    assert "--template" in line and "'llama2'" in line
    assert all(name in line for name in ("llama3", "mistral", "gemma2", "qwen2.5", "none"))
    missing = tmp_path / "missing.json"
    assert f"--prompts {missing}: does not exist" in fails(
        capsys, str(tmp_path), "--prompts", str(missing), "--out", str(tmp_path / "o.json")
    )
    assert f"--prompts {tmp_path}: is a directory" in fails(
        capsys, str(tmp_path), "--prompts", str(tmp_path), "--out", str(tmp_path / "o.json")
    )
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'[{"instruction": "\xff\xfe"}]')
    assert f"--prompts {binary}: not UTF-8 text" in fails(
        capsys, str(tmp_path), "--prompts", str(binary), "--out", str(tmp_path / "o.json")
    )
    if os.geteuid() != 0:  # root reads any file
        locked = tmp_path / "locked.jsonl"
        locked.write_text('{"instruction": "a"}\n', encoding="utf-8")
        locked.chmod(0)
        assert f"--prompts {locked}: not readable" in fails(
            capsys, str(tmp_path), "--prompts", str(locked), "--out", str(tmp_path / "o.json")
        )
    assert "--top-p: only with --temperature" in fails(capsys, *base, "--top-p", "0.9")
    assert "--temperature 0.0: must be > 0" in fails(capsys, *base, "--temperature", "0")
    assert "--batch-size 0: must be >= 1" in fails(capsys, *base, "--batch-size", "0")
    assert f"--out {tmp_path}: is a directory" in fails(capsys, *base[:-1], str(tmp_path))
    assert f"model {tmp_path}: a folder with neither config.json" in fails(capsys, *base)
    assert f"model {tmp_path / 'none.nemo'}: does not exist" in fails(capsys, str(tmp_path / "none.nemo"), *base[1:])


def test_console_entry_point_bad_input(tmp_path: Path) -> None:
    """Through ``python -m nemo_gammapo.cli``: exit 2, one line, no traceback."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "a"}\n{"prompt": 3}\n', encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nemo_gammapo.cli",
            "generate",
            str(tmp_path),
            "--prompts",
            str(prompts),
            "--out",
            str(tmp_path / "o.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"nemo-gammapo generate: error: {prompts}:2: 'prompt' must be a non-empty string, got int"
    ]
