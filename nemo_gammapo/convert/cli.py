"""``nemo-gammapo convert``: Hugging Face checkpoints ↔ ``.nemo`` files (:mod:`nemo_gammapo.convert.hf`).

    nemo-gammapo convert hf-to-nemo /ckpt/Llama-3-8B-Instruct /ckpt/llama3-8b-instruct.nemo --family llama
    nemo-gammapo convert nemo-to-hf runs/x/checkpoints/x.nemo /ckpt/llama3-8b-gammapo-hf --family llama

Runs in this process on the CPU (a 1-rank job), in float32.
"""

from __future__ import annotations

import argparse
import sys
import time

PROG = "nemo-gammapo convert"


def build_parser() -> argparse.ArgumentParser:
    from nemo_gammapo.convert.hf import FAMILIES

    p = argparse.ArgumentParser(prog=PROG, description="Convert between Hugging Face checkpoints and .nemo files.")
    sub = p.add_subparsers(dest="direction", required=True)
    to_nemo = sub.add_parser("hf-to-nemo", help="a transformers checkpoint folder -> a .nemo file (TP1/PP1)")
    to_nemo.add_argument("hf_dir", help="folder with config.json, the weights and the tokenizer")
    to_nemo.add_argument("out_nemo", help="the .nemo file to write")
    to_hf = sub.add_parser("nemo-to-hf", help="a .nemo file (or extracted folder) -> a transformers checkpoint folder")
    to_hf.add_argument("nemo", help="the .nemo file or extracted folder")
    to_hf.add_argument("out_dir", help="the folder to write")
    for sp in (to_nemo, to_hf):
        sp.add_argument("--family", required=True, choices=sorted(FAMILIES), help="model family")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {msg}", flush=True)

    from nemo_gammapo.convert.hf import hf_to_nemo, nemo_to_hf

    try:
        if args.direction == "hf-to-nemo":
            out = hf_to_nemo(args.hf_dir, args.out_nemo, args.family, progress=progress)
        else:
            out = nemo_to_hf(args.nemo, args.out_dir, args.family, progress=progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
