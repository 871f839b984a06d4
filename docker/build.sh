#!/usr/bin/env bash
# Build the γ-PO image (top-level Dockerfile) from this checkout's tracked and untracked-but-not-ignored
# files only (no .venv/, runs/ or .git/ in the build context), and optionally convert it for pyxis.
#
#   bash docker/build.sh                        # -> image nemo-gammapo:latest
#   IMAGE=registry.example.com/me/nemo-gammapo:0.1 bash docker/build.sh
#   SQSH=/lustre/me/nemo-gammapo.sqsh bash docker/build.sh   # also write an enroot squashfs for SLURM
#   DRY_RUN=1 bash docker/build.sh              # print the commands only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE=${IMAGE:-nemo-gammapo:latest}
BASE_IMAGE=${BASE_IMAGE:-}
SQSH=${SQSH:-}

build=(docker build -t "$IMAGE" -f Dockerfile)
[[ -n "$BASE_IMAGE" ]] && build+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
build+=(-)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "git ls-files -z --cached --others --exclude-standard | tar --null -T - -c | $(printf '%q ' "${build[@]}")"
    [[ -n "$SQSH" ]] && echo "enroot import -o $(printf '%q' "$SQSH") dockerd://$IMAGE"
    exit 0
fi
git ls-files -z --cached --others --exclude-standard | tar --null -T - -c | "${build[@]}"
if [[ -n "$SQSH" ]]; then
    enroot import -o "$SQSH" "dockerd://$IMAGE"
fi
