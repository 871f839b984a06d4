"""Build-time check that the image holds the stack the Dockerfile claims; records what it found.

Reads installed distribution metadata only (importing NeMo or Transformer Engine needs a GPU driver,
which ``docker build`` does not have). Exit status 1 names every mismatch.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

# distribution names to try, in order, for each component
DISTRIBUTIONS = {
    "nemo": ("nemo_toolkit", "nemo-toolkit"),
    "aligner": ("nemo_aligner", "nemo-aligner"),
    "mcore": ("megatron_core", "megatron-core"),
    "torch": ("torch",),
    "transformer_engine": ("transformer_engine", "transformer-engine", "transformer_engine_torch"),
    "apex": ("apex",),
    "nemo_gammapo": ("nemo_gammapo",),
}


def installed(names: tuple[str, ...]) -> str | None:
    """The installed version of the first distribution found, or None."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nemo", required=True, help="expected nemo-toolkit version")
    p.add_argument("--aligner", required=True, help="expected nemo-aligner version")
    p.add_argument("--mcore", required=True, help="expected megatron-core version")
    p.add_argument("--write", help="file to record every component's version in")
    args = p.parse_args(argv)
    found = {key: installed(names) for key, names in DISTRIBUTIONS.items()}
    report = "\n".join(f"{key}={found[key] or 'not found'}" for key in DISTRIBUTIONS)
    print(report)
    if args.write:
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(report + "\n")
    errors = [
        f"{key}: expected {want}, found {found[key] or 'nothing'}"
        for key, want in (("nemo", args.nemo), ("aligner", args.aligner), ("mcore", args.mcore))
        if not (found[key] or "").startswith(want)
    ]
    errors += [f"{key}: not installed" for key in ("torch", "transformer_engine", "nemo_gammapo") if not found[key]]
    for e in errors:
        print(f"check_stack: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
