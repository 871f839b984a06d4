# The rendezvous of a SLURM job's training tasks (safe under `set -euo pipefail`); sourced by the batch script on the allocation's
# first node, before the training `srun` (examples/slurm/common.sh sources this file; `nemo-gammapo
# launch slurm` copies it into the sbatch script NeMo-Run writes). Exports, each only if not already set:
#   MASTER_ADDR         the first node's address as SLURM knows it (`scontrol show node`: NodeAddr,
#                       which defaults to the node name), so it works where node names resolve only
#                       through SLURM; outside an allocation: this host's name
#   MASTER_PORT         20000 + 10 × (job id mod 2000) + restart count mod 10: a requeued job keeps
#                       its id, and a port its killed incarnation still held would fail the rendezvous
#   GLOO_SOCKET_IFNAME  the interface of this (the first) node that holds MASTER_ADDR's address, or
#   NCCL_SOCKET_IFNAME  the one its route leaves by; never `lo`, so cross-node traffic uses the node
#                       link. Assumes the same interface name on every node (set both yourself where not)
gammapo_rendezvous() {
    local first="" addr="" ip="" dev=""
    if [[ -z "${MASTER_ADDR:-}" ]]; then
        if [[ -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol > /dev/null; then
            first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1) || true
            addr=$(scontrol show node -o "$first" 2> /dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p' | head -n 1) || true
            MASTER_ADDR=${addr:-$first}
        else
            MASTER_ADDR=$(hostname)
        fi
    fi
    MASTER_PORT=${MASTER_PORT:-$((20000 + 10 * (${SLURM_JOB_ID:-0} % 2000) + ${SLURM_RESTART_COUNT:-0} % 10))}
    export MASTER_ADDR MASTER_PORT
    if [[ -z "${GLOO_SOCKET_IFNAME:-}" || -z "${NCCL_SOCKET_IFNAME:-}" ]] && command -v ip > /dev/null; then
        if [[ "$MASTER_ADDR" =~ ^[0-9.]+$ ]]; then
            ip=$MASTER_ADDR
        else
            ip=$(getent ahostsv4 "$MASTER_ADDR" 2> /dev/null | awk 'NR == 1 {print $1}') || true
        fi
        if [[ -n "$ip" ]]; then
            dev=$(ip -o -4 addr show to "$ip" 2> /dev/null | awk 'NR == 1 {print $2}') || true
            if [[ -z "$dev" || "$dev" == lo ]]; then
                dev=$(ip -o -4 route get "$ip" 2> /dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p') || true
            fi
        fi
        if [[ -n "$dev" && "$dev" != lo ]]; then
            export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$dev} NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$dev}
        fi
    fi
}
