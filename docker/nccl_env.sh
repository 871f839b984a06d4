#!/usr/bin/env bash
# NCCL / InfiniBand / Megatron environment for multi-GPU training; source it (docker/run.sh and the
# sbatch scripts do). Every variable keeps a value you already exported; unset ones get these defaults.
# Cluster-specific ones (NCCL_IB_HCA, NCCL_SOCKET_IFNAME, NCCL_TOPO_FILE) are only passed through:
# ask your admins, e.g. NCCL_IB_HCA=mlx5_0,mlx5_1,... NCCL_SOCKET_IFNAME=ib0 (or the Ethernet device).

# Megatron's tensor/sequence-parallel overlap needs one CUDA work queue per device.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
# Lower memory fragmentation from NCCL's record_stream (NeMo's recommendation).
export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}
# Fail fast and visibly instead of hanging on a broken rank.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# InfiniBand: a generous retry timeout (exponent; 22 ≈ 17 s) survives transient link flaps.
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
# WARN by default; NCCL_DEBUG=INFO prints the chosen transports (IB/NVLink) at start-up.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# NVLink SHARP off unless asked for (it needs NVSwitch support and extra memory).
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}

# Names forwarded into containers by docker/run.sh (pyxis forwards the whole environment itself).
# shellcheck disable=SC2034  # read by docker/run.sh, which sources this file
GAMMAPO_ENV_VARS=(
    CUDA_DEVICE_MAX_CONNECTIONS TORCH_NCCL_AVOID_RECORD_STREAMS TORCH_NCCL_ASYNC_ERROR_HANDLING
    NCCL_IB_TIMEOUT NCCL_DEBUG NCCL_NVLS_ENABLE NCCL_IB_HCA NCCL_SOCKET_IFNAME NCCL_TOPO_FILE
    NCCL_IB_PCI_RELAXED_ORDERING UCX_IB_PCI_RELAXED_ORDERING NCCL_PROTO
)
