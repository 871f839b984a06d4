#!/usr/bin/env bash
# Run a command in the γ-PO image on one machine, with the data, checkpoint and results folders mounted
# and the NCCL/IB environment of docker/nccl_env.sh forwarded.
#
#   DATA_DIR=/data CKPT_DIR=/ckpt RESULTS_DIR=/results bash docker/run.sh \
#     torchrun --nproc_per_node 8 examples/train_gpt_gammapo.py --config-name llama3_8b_instruct \
#       pretrained_checkpoint.restore_from_path=/ckpt/llama3_8b_instruct.nemo run_dir=/results/llama3_8b \
#       'model.data.data_prefix.train=[/data/train.jsonl]' 'model.data.data_prefix.validation=[/data/val.jsonl]'
#   bash docker/run.sh                 # an interactive shell
#   DRY_RUN=1 bash docker/run.sh ...   # print the docker command only
# Host folders are mounted at /data, /ckpt and /results; IMAGE picks the image (default nemo-gammapo:latest).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=docker/nccl_env.sh
source "$here/nccl_env.sh"

IMAGE=${IMAGE:-nemo-gammapo:latest}
DATA_DIR=${DATA_DIR:-$PWD/data}
CKPT_DIR=${CKPT_DIR:-$PWD/ckpt}
RESULTS_DIR=${RESULTS_DIR:-$PWD/results}

cmd=(
    docker run --rm --gpus all --ipc=host --network=host
    --ulimit memlock=-1 --ulimit stack=67108864
    -v "$DATA_DIR:/data" -v "$CKPT_DIR:/ckpt" -v "$RESULTS_DIR:/results"
    -w /opt/nemo_gammapo
)
for name in "${GAMMAPO_ENV_VARS[@]}"; do
    [[ -n "${!name:-}" ]] && cmd+=(-e "$name=${!name}")
done
if [[ $# -eq 0 ]]; then
    cmd+=(-it "$IMAGE" bash)
else
    cmd+=("$IMAGE" "$@")
fi

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
