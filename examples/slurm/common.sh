#!/usr/bin/env bash
# Shared by the γ-PO sbatch scripts in this folder (source it; do not run it).
#
# Builds the one `srun` command that starts NODES × GPUS_PER_NODE training tasks (one per GPU, or
# one per CPU process in host mode on CPU), either in a container through pyxis/enroot or on the
# host, then prints it (DRY_RUN=1) or runs it with clean stop-and-requeue. Settings, all optional
# environment variables (defaults in brackets):
#   CONFIG          conf/ name                                        [set by the sbatch script]
#   NODES           nodes                       [$SLURM_JOB_NUM_NODES, else the script's default]
#   GPUS_PER_NODE   training tasks per node (one per GPU)     [from the allocation: sbatch
#                   --ntasks-per-node, else the GPUs it holds; required with DRY_RUN outside a job]
#   CONTAINER_IMAGE pyxis image: registry image or .sqsh file          [nvcr.io#nvidia/nemo:25.02.01]
#                   set but empty (CONTAINER_IMAGE=): host mode — no container, the host's Python
#                   (PYTHON) and the host paths below as they are
#   PYTHON          host mode: the Python that has nemo_gammapo  [REPO/.venv/bin/python if any, else python3]
#   MOUNT_REPO      container: 1 mounts this checkout at /opt/nemo_gammapo (for the plain NGC
#                   image); 0 uses the copy installed in an image built by docker/build.sh   [1]
#   DATA_DIR        host folder with train.jsonl / val.jsonl (container: mounted at /data)  [$PWD/data]
#   CKPT_DIR        host folder with the .nemo checkpoint (container: mounted at /ckpt)     [$PWD/ckpt]
#   RESULTS_DIR     host folder for runs (container: mounted at /results)              [$PWD/results]
#   MODEL_FILE      .nemo file name inside CKPT_DIR; empty: the config's own
#                   pretrained_checkpoint (e.g. the tiny presets start from random weights) [$CONFIG.nemo]
#   TRAIN_FILE / VAL_FILE   file names inside DATA_DIR                [train.jsonl / val.jsonl]
#   RUN_NAME        run folder under RESULTS_DIR; the same name resumes the same run   [$CONFIG]
#   STOP_AFTER_STEPS  end this job after N steps with a checkpoint (fixed-length allocations)
#   MAX_RESTARTS    requeue after a stop request at most this many times (SLURM_RESTART_COUNT) [10]
#   EXTRA_ARGS      more Hydra overrides, space separated (no spaces inside one override)
#   EXTRA_MOUNTS    container: more mounts, comma separated SRC:DST
#   SRUN_ARGS       more srun options, space separated (e.g. --cpu-bind=verbose,none)
#   DRY_RUN         1: print the environment and the exact srun command, run nothing      [0]
#   FAULT_GRACE_S   after a task recorded a fault (hang, lost peer): seconds before the rest of
#                   the training step is killed                                            [15]
#   MASTER_ADDR / MASTER_PORT / GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME   the rendezvous
#                   [from the allocation: nemo_gammapo/launch/rendezvous.sh]
#
# Before the training srun (not in a dry run) one short check per job: in host mode PYTHON must run
# on every node, and the configuration must pass the start-up checks for NODES × GPUS_PER_NODE
# tasks (`nemo-gammapo train --check-only` on the first node) — else one line and exit 2.

gammapo_fail() {
    echo "gammapo: $*" >&2
    exit 2
}

# gammapo_quote LEVEL ARG: ARG as shell text; plain words as they are, others in double quotes (LEVEL
# inner, for the command inside `bash -c`) or single quotes (LEVEL outer).
gammapo_quote() {
    local level=$1 arg=$2
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
        printf '%s' "$arg"
    elif [[ "$level" == inner && ! "$arg" =~ [\"\$\`\\\'] ]]; then
        printf '"%s"' "$arg"
    elif [[ "$level" == outer && "$arg" != *"'"* ]]; then
        printf "'%s'" "$arg"
    else
        printf '%q' "$arg"
    fi
}

# gammapo_tasks_per_node: training tasks per node, from the allocation (never a silent default).
gammapo_tasks_per_node() {
    if [[ -n "${GPUS_PER_NODE:-}" ]]; then
        echo "$GPUS_PER_NODE"
    elif [[ -n "${SLURM_NTASKS_PER_NODE:-}" ]]; then
        echo "$SLURM_NTASKS_PER_NODE"
    elif [[ -n "${SLURM_GPUS_ON_NODE:-}" && "${SLURM_GPUS_ON_NODE}" != 0 ]]; then
        echo "$SLURM_GPUS_ON_NODE"
    elif [[ -n "${SLURM_JOB_ID:-}" ]]; then
        gammapo_fail "cannot tell how many training tasks per node: submit with sbatch --ntasks-per-node=N (one per GPU; add --gpus-per-node=N on GPU clusters) or set GPUS_PER_NODE"
    else
        gammapo_fail "GPUS_PER_NODE must be set outside a SLURM job (training tasks per node, one per GPU)"
    fi
}

# gammapo_settings DEFAULT_NODES: fill in and check every setting.
gammapo_settings() {
    local default_nodes=$1
    : "${CONFIG:?CONFIG must be set}"
    NODES=${NODES:-${SLURM_JOB_NUM_NODES:-$default_nodes}}
    if [[ -n "${SLURM_JOB_NUM_NODES:-}" && "$NODES" != "$SLURM_JOB_NUM_NODES" ]]; then
        gammapo_fail "NODES=$NODES but the allocation has $SLURM_JOB_NUM_NODES nodes (use sbatch --nodes=$NODES)"
    fi
    [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || gammapo_fail "NODES must be a positive integer (got '$NODES')"
    GPUS_PER_NODE=$(gammapo_tasks_per_node) || exit 2
    [[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] \
        || gammapo_fail "GPUS_PER_NODE must be a positive integer (got '$GPUS_PER_NODE')"
    if [[ -n "${SLURM_GPUS_ON_NODE:-}" && "$SLURM_GPUS_ON_NODE" != 0 && "$SLURM_GPUS_ON_NODE" != "$GPUS_PER_NODE" ]]; then
        gammapo_fail "$GPUS_PER_NODE tasks per node but the allocation holds $SLURM_GPUS_ON_NODE GPUs per node: one task per GPU (sbatch --ntasks-per-node=$SLURM_GPUS_ON_NODE)"
    fi
    if [[ -n "${SLURM_NTASKS_PER_NODE:-}" && "$SLURM_NTASKS_PER_NODE" != "$GPUS_PER_NODE" ]]; then
        gammapo_fail "GPUS_PER_NODE=$GPUS_PER_NODE but the allocation has $SLURM_NTASKS_PER_NODE tasks per node (sbatch --ntasks-per-node)"
    fi
    CONTAINER_IMAGE=${CONTAINER_IMAGE-nvcr.io#nvidia/nemo:25.02.01}  # set but empty: host mode
    MOUNT_REPO=${MOUNT_REPO:-1}
    DATA_DIR=${DATA_DIR:-$PWD/data}
    CKPT_DIR=${CKPT_DIR:-$PWD/ckpt}
    RESULTS_DIR=${RESULTS_DIR:-$PWD/results}
    MODEL_FILE=${MODEL_FILE-$CONFIG.nemo}
    TRAIN_FILE=${TRAIN_FILE:-train.jsonl}
    VAL_FILE=${VAL_FILE:-val.jsonl}
    RUN_NAME=${RUN_NAME:-$CONFIG}
    RUN_DIR=$RESULTS_DIR/$RUN_NAME  # as the host sees it
    STOP_FILE=$RUN_DIR/.nemo_gammapo/stop_requested  # nemo_gammapo.aligner.stop_request.STOP_FILE
    LOG_DIR=$RUN_DIR/slurm_logs
}

# gammapo_srun_cmd REPO: fill the array SRUN_CMD.
gammapo_srun_cmd() {
    local repo=$1 workdir data ckpt results python
    local -a where=()
    if [[ -n "$CONTAINER_IMAGE" ]]; then
        workdir=/opt/nemo_gammapo data=/data ckpt=/ckpt results=/results python=python
        local mounts="$DATA_DIR:/data,$CKPT_DIR:/ckpt,$RESULTS_DIR:/results"
        [[ "$MOUNT_REPO" == 1 ]] && mounts="$mounts,$repo:$workdir"
        [[ -n "${EXTRA_MOUNTS:-}" ]] && mounts="$mounts,$EXTRA_MOUNTS"
        where=(
            "--container-image=$CONTAINER_IMAGE"
            "--container-mounts=$mounts"
            "--container-workdir=$workdir"
            --no-container-mount-home
        )
    else  # host mode: this checkout, the host's Python and paths
        workdir=$repo data=$DATA_DIR ckpt=$CKPT_DIR results=$RESULTS_DIR
        if [[ -n "${PYTHON:-}" ]]; then
            python=$PYTHON
        elif [[ -x "$repo/.venv/bin/python" ]]; then
            python=$repo/.venv/bin/python
        else
            python=python3
        fi
        where=("--chdir=$workdir")
    fi
    GAMMAPO_PYTHON=$python
    local -a srun_extra=()
    [[ -n "${SRUN_ARGS:-}" ]] && read -r -a srun_extra <<< "$SRUN_ARGS"
    local -a train=(
        "$python" -u examples/train_gpt_gammapo.py --config-name "$CONFIG"
        "run_dir=$results/$RUN_NAME"
        "trainer.num_nodes=$NODES" "trainer.devices=$GPUS_PER_NODE"
        "model.data.data_prefix.train=[$data/$TRAIN_FILE]"
        "model.data.data_prefix.validation=[$data/$VAL_FILE]"
    )
    [[ -n "$MODEL_FILE" ]] && train+=("pretrained_checkpoint.restore_from_path=$ckpt/$MODEL_FILE")
    [[ -n "${STOP_AFTER_STEPS:-}" ]] && train+=("trainer.dpo.stop_after_steps=$STOP_AFTER_STEPS")
    if [[ -n "${EXTRA_ARGS:-}" ]]; then
        local -a extra
        read -r -a extra <<< "$EXTRA_ARGS"
        train+=("${extra[@]}")
    fi
    GAMMAPO_TRAIN_ARGS=("${train[@]:3}")  # the Hydra arguments, for the start-up check
    # torchrun-style variables per task, from SLURM's; PYTHONPATH finds the checkout.
    local inner arg
    inner="export RANK=\$SLURM_PROCID LOCAL_RANK=\$SLURM_LOCALID WORLD_SIZE=\$SLURM_NTASKS"
    inner+=" PYTHONPATH=$(gammapo_quote inner "$workdir")\${PYTHONPATH:+:\$PYTHONPATH}; exec"
    for arg in "${train[@]}"; do
        inner+=" $(gammapo_quote inner "$arg")"
    done
    SRUN_CMD=(
        srun
        "--nodes=$NODES"
        "--ntasks-per-node=$GPUS_PER_NODE"
        "--ntasks=$((NODES * GPUS_PER_NODE))"
        "${where[@]}"
        --kill-on-bad-exit=1
        --label
        "--output=$LOG_DIR/%x_%j_restart${SLURM_RESTART_COUNT:-0}.log"
        "${srun_extra[@]}"
        bash -c "$inner"
    )
}

# gammapo_print: the environment the tasks inherit and the srun command, ready to paste.
gammapo_print() {
    local mode="container $CONTAINER_IMAGE"
    [[ -z "$CONTAINER_IMAGE" ]] && mode="host mode"
    echo "# γ-PO: $NODES node(s) × $GPUS_PER_NODE tasks = $((NODES * GPUS_PER_NODE)) tasks, config $CONFIG, $mode"
    echo "export MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT${GLOO_SOCKET_IFNAME:+ GLOO_SOCKET_IFNAME=$GLOO_SOCKET_IFNAME}"
    local name nccl=""
    for name in "${GAMMAPO_ENV_VARS[@]}"; do
        [[ -n "${!name:-}" ]] && nccl+=" $name=${!name}"
    done
    echo "export${nccl}"
    local i last=$((${#SRUN_CMD[@]} - 1))
    for i in "${!SRUN_CMD[@]}"; do
        if ((i == last)); then
            printf '%s\n' "$(gammapo_quote outer "${SRUN_CMD[i]}")"
        elif [[ "${SRUN_CMD[i]}" =~ ^(srun|bash|-c)$ ]]; then
            printf '%s ' "${SRUN_CMD[i]}"
        else
            printf '%s \\\n  ' "$(gammapo_quote outer "${SRUN_CMD[i]}")"
        fi
    done
}

# On USR1 (sent before the time limit by --signal=B:USR1@N, or by `scancel -b --signal=USR1`) the
# batch shell writes the run's stop file (nemo_gammapo.aligner.stop_request): rank 0 sees it after
# the current step, every task finishes that step, writes a checkpoint and exits 0. Only then is
# the job put back in the queue, so the next run resumes from that checkpoint; at most MAX_RESTARTS
# times. A file, not a forwarded signal: a signal kills a task that has not started Python yet.
# Preemption without a warning (the job is killed and requeued by SLURM) resumes from the last
# complete checkpoint; an interrupted save is set aside, never resumed from.
GAMMAPO_STOP_REQUESTED=0
GAMMAPO_INTERRUPTED=0
gammapo_on_usr1() {
    echo "gammapo: stop requested (USR1): the training tasks checkpoint after this step and exit, then the job requeues"
    GAMMAPO_STOP_REQUESTED=1
    GAMMAPO_INTERRUPTED=1
    mkdir -p "$(dirname "$STOP_FILE")"
    echo "USR1 to SLURM job ${SLURM_JOB_ID:-?} at $(date -Is)" > "$STOP_FILE"
    return 0
}

# A fault the training tasks recorded (nemo_gammapo.aligner.hang_watchdog: a hang past
# trainer.dpo.hang_timeout_s, or a collective that failed on a lost peer) ends the job with
# GAMMAPO_FAULT_EXIT; the job is then requeued like a stop request, and resumes from the newest
# complete checkpoint. User errors (exit 2 configuration/data, 3 run_dir busy, 4 non-finite) never are.
GAMMAPO_FAULT_EXIT=75  # nemo_gammapo.aligner.hang_watchdog.FAULT_EXIT_CODE
gammapo_fault_marker() {
    echo "$RUN_DIR/hangs/${SLURM_JOB_ID:-local}-${SLURM_RESTART_COUNT:-0}/FAULT"
}

# gammapo_fault_watch SRUN_PID: once a fault is recorded, give the step FAULT_GRACE_S seconds [15]
# to end, then kill what is left of it: a frozen task (SIGSTOP, a hung driver) can otherwise hold
# the step, and the allocation, well past the fault.
gammapo_fault_watch() {
    trap '' USR1  # the batch shell's stop request is not for this helper
    local pid=$1 marker grace=${FAULT_GRACE_S:-15}
    marker=$(gammapo_fault_marker)
    while kill -0 "$pid" 2> /dev/null; do
        if [[ -e "$marker" ]]; then
            sleep "$grace"
            if kill -0 "$pid" 2> /dev/null; then
                echo "gammapo: a fault was recorded and the training step is still up after ${grace} s: killing its tasks"
                # the job's numbered steps only (`scancel --signal=KILL JOB` would cancel the whole job)
                local step
                for step in $(squeue -h -s -j "$SLURM_JOB_ID" -o %i 2> /dev/null | grep -E "^${SLURM_JOB_ID}\.[0-9]+$"); do
                    scancel --signal=KILL "$step" || true
                done
            fi
            return 0
        fi
        sleep 2
    done
}

gammapo_requeue() {
    local restarts=${SLURM_RESTART_COUNT:-0}
    if (( restarts >= ${MAX_RESTARTS:-10} )); then
        echo "gammapo: not requeueing job $SLURM_JOB_ID: $restarts restarts reached MAX_RESTARTS=${MAX_RESTARTS:-10}" >&2
        return 1
    fi
    echo "gammapo: requeueing job $SLURM_JOB_ID (restart $((restarts + 1)))"
    scontrol requeue "$SLURM_JOB_ID"
}

# gammapo_check_start REPO: the one start-up check before any training task (see the header).
gammapo_check_start() {
    local repo=$1 out rc=0
    if [[ -z "$CONTAINER_IMAGE" ]]; then
        # PYTHON on every node (one task per node; the node's own line names it)
        out=$(srun --nodes="$NODES" --ntasks-per-node=1 --ntasks="$NODES" --kill-on-bad-exit=0 "--chdir=$repo" \
            bash -c "command -v $(gammapo_quote inner "$GAMMAPO_PYTHON") > /dev/null || echo \"\$(hostname)\"" 2>&1) || rc=$?
        out=$(echo "$out" | grep -v '^srun: ' | tr '\n' ' ' | sed 's/ *$//')
        if [[ -n "$out" || $rc -ne 0 ]]; then
            gammapo_fail "PYTHON=$GAMMAPO_PYTHON does not run on node(s) ${out:-?} (host mode: install the stack on every node, or set PYTHON)"
        fi
        # the start-up checks for this layout, on this (the first) node, before any task starts
        if ! out=$(cd "$repo" && PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$GAMMAPO_PYTHON" -m nemo_gammapo.cli \
            train --check-only "${GAMMAPO_TRAIN_ARGS[@]}" 2>&1); then
            echo "$out" | grep -E '^nemo-gammapo train: error: ' >&2 || echo "$out" | tail -n 5 >&2
            exit 2
        fi
    fi
}

# gammapo_main REPO DEFAULT_NODES: the body of every sbatch script.
gammapo_main() {
    local repo=$1
    gammapo_settings "$2"
    # shellcheck source=nemo_gammapo/launch/rendezvous.sh
    source "$repo/nemo_gammapo/launch/rendezvous.sh"
    gammapo_rendezvous
    gammapo_srun_cmd "$repo"
    # shellcheck source=docker/nccl_env.sh
    source "$repo/docker/nccl_env.sh"
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        gammapo_print
        return 0
    fi
    [[ -n "${SLURM_JOB_ID:-}" ]] || gammapo_fail "not inside a SLURM job: submit with sbatch, or set DRY_RUN=1"
    mkdir -p "$LOG_DIR"
    rm -f "$STOP_FILE"  # a request to an earlier job is not one to this job
    trap gammapo_on_usr1 USR1  # from here on: a warning during the check below is kept, not fatal
    gammapo_check_start "$repo"
    gammapo_print
    "${SRUN_CMD[@]}" &
    local srun_pid=$! rc=0 again watch_pid
    gammapo_fault_watch "$srun_pid" &
    watch_pid=$!
    wait "$srun_pid" || rc=$?
    while [[ "$GAMMAPO_INTERRUPTED" == 1 ]]; do  # the trap cut `wait` short: wait for srun itself
        GAMMAPO_INTERRUPTED=0
        again=0
        wait "$srun_pid" || again=$?
        if [[ "$again" != 127 ]]; then rc=$again; fi  # 127: srun had already been reaped; keep its status
    done
    kill "$watch_pid" 2> /dev/null || true
    wait "$watch_pid" 2> /dev/null || true
    if [[ "$GAMMAPO_STOP_REQUESTED" == 1 && "$rc" == 0 ]]; then
        if [[ -e "$STOP_FILE" ]]; then  # not taken: training had ended anyway
            rm -f "$STOP_FILE"
            echo "gammapo: training finished before the stop request was seen; not requeueing"
        else
            gammapo_requeue || rc=1
        fi
    elif [[ "$rc" != 0 && "$rc" != 2 && "$rc" != 3 && "$rc" != 4 ]] \
        && [[ "$rc" == "$GAMMAPO_FAULT_EXIT" || -e "$(gammapo_fault_marker)" ]]; then
        echo "gammapo: the training tasks ended on a fault (exit $rc): $(cat "$(gammapo_fault_marker)" 2> /dev/null || echo '?')"
        if gammapo_requeue; then rc=0; fi
    fi
    return "$rc"
}
