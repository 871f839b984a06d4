"""``nemo-gammapo convert``: Hugging Face checkpoints ↔ ``.nemo`` files (:mod:`nemo_gammapo.convert.hf`).

    nemo-gammapo convert hf-to-nemo /ckpt/Llama-3-8B-Instruct /ckpt/llama3-8b-instruct.nemo --family llama --tp 8
    nemo-gammapo convert run-to-nemo runs/x /ckpt/x-trained.nemo
    nemo-gammapo convert nemo-to-hf /ckpt/x-trained.nemo /ckpt/x-trained-hf
    nemo-gammapo convert run-to-hf runs/x /ckpt/x-trained-hf      # the two above in one

Runs in this process on the CPU (a 1-rank job), in float32, printing one line per stage.
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
    to_nemo = sub.add_parser(
        "hf-to-nemo",
        help="a transformers checkpoint folder -> a .nemo file",
        description="Writes a TP1/PP1 .nemo (a distributed checkpoint inside), which training restores at its own "
        "layout; --tp/--pp check that the model splits at the layout you will train at.",
    )
    to_nemo.add_argument("hf_dir", help="folder with config.json, the weights and the tokenizer")
    to_nemo.add_argument("out_nemo", help="the .nemo file to write")
    to_nemo.add_argument("--tp", type=int, default=1, help="tensor-parallel size the model will be trained at")
    to_nemo.add_argument("--pp", type=int, default=1, help="pipeline-parallel size the model will be trained at")
    to_hf = sub.add_parser("nemo-to-hf", help="a .nemo file (or extracted folder) -> a transformers checkpoint folder")
    to_hf.add_argument("nemo", help="the .nemo file or extracted folder")
    to_hf.add_argument("out_dir", help="the folder to write")
    families = f"{', '.join(FAMILIES)} (gemma2 is refused)"
    to_nemo.add_argument("--family", required=True, help=f"model family: {families}")
    to_hf.add_argument("--family", default=None, help=f"model family: {families}; default: the one hf-to-nemo recorded")
    from_run = sub.add_parser(
        "run-to-nemo",
        help="a training run's newest complete checkpoint -> a .nemo file",
        description="Reads the model weights of RUN_DIR/checkpoints' newest complete checkpoint (as resume picks it; "
        "any training layout) and writes them as a TP1/PP1 .nemo.",
    )
    from_run.add_argument("run_dir", help="the training run directory (holds checkpoints/)")
    from_run.add_argument("out_nemo", help="the .nemo file to write")
    from_run.add_argument("--checkpoint", default=None, help="this checkpoint folder, not the newest complete one")
    run_hf = sub.add_parser(
        "run-to-hf",
        help="a training run's newest complete checkpoint -> a transformers checkpoint folder",
        description="run-to-nemo into a temporary .nemo, then nemo-to-hf.",
    )
    run_hf.add_argument("run_dir", help="the training run directory (holds checkpoints/)")
    run_hf.add_argument("out_dir", help="the folder to write")
    run_hf.add_argument("--checkpoint", default=None, help="this checkpoint folder, not the newest complete one")
    recorded = "default: the one hf-to-nemo recorded"
    run_hf.add_argument("--family", default=None, help=f"model family: {families}; {recorded}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {msg}", flush=True)

    from nemo_gammapo.convert.hf import hf_to_nemo, nemo_to_hf, run_to_hf, run_to_nemo

    try:
        if args.direction == "hf-to-nemo":
            out = hf_to_nemo(args.hf_dir, args.out_nemo, args.family, tp=args.tp, pp=args.pp, progress=progress)
        elif args.direction == "run-to-nemo":
            out = run_to_nemo(args.run_dir, args.out_nemo, args.checkpoint, progress=progress)
        elif args.direction == "run-to-hf":
            out = run_to_hf(args.run_dir, args.out_dir, args.family, args.checkpoint, progress=progress)
        else:
            out = nemo_to_hf(args.nemo, args.out_dir, args.family, progress=progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
