#!/usr/bin/env bash
# A real single-node SLURM cluster (with accounting) in a folder, for tests and for trying the
# launch scripts on one machine. Needs root and Debian's packages:
#   apt-get install munge slurmctld slurmd slurm-client slurmdbd mariadb-server
#
#   bash scripts/slurm_cluster.sh start DIR   # writes DIR/slurm.conf, starts the daemons, waits for the node
#   source DIR/env.sh                         # SLURM_CONF for sbatch / squeue / sacct in this shell
#   bash scripts/slurm_cluster.sh stop DIR    # stops every daemon started from DIR
#
# The cluster: one node (this machine, all its CPUs), three partitions — `batch` (the default; its
# jobs are never preempted), `low` (preemptible) and `urgent`, whose jobs preempt `low` jobs by
# requeueing them (PreemptType=preempt/partition_prio, PreemptMode=REQUEUE). No systemd or cgroups: processes are tracked by parent PID
# (proctrack/linuxproc). Accounting (sacct, needed by NeMo-Run's status and logs) is slurmdbd on a
# private MariaDB in DIR. A requeued job may start again after REQUEUE_DELAY seconds [5] (SLURM's
# default is 120: AuthInfo cred_expire). Daemon logs: DIR/log/.
# Exit status of start: 0 when the node is idle and accounting answers; 1 otherwise (logs printed).
set -euo pipefail

usage() {
    echo "usage: bash scripts/slurm_cluster.sh start|stop DIR" >&2
    exit 2
}
[[ $# -eq 2 ]] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)

fail() {
    echo "slurm_cluster: $*" >&2
    local f
    for f in "$dir"/log/*.log; do
        [[ -s "$f" ]] && { echo "--- $f (last lines)" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for SECONDS COMMAND...: retry COMMAND every 0.2 s until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" > /dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

stop() {
    local name pid
    for name in slurmd slurmctld slurmdbd mariadb; do
        [[ -f "$dir/run/$name.pid" ]] || continue
        pid=$(cat "$dir/run/$name.pid")
        kill "$pid" 2> /dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2> /dev/null || true
    done
    # Jobs still running on the node (their slurmstepd outlive slurmd).
    pkill -9 -f "slurmstepd.*$dir" 2> /dev/null || true
    rm -f "$dir"/run/*.pid
}

start() {
    [[ $EUID -eq 0 ]] || fail "needs root (the daemons run as root here)"
    local tool
    for tool in munged slurmctld slurmd slurmdbd mariadbd mariadb-install-db sinfo sacctmgr; do
        command -v "$tool" > /dev/null || fail "'$tool' not found: apt-get install munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
    done
    stop
    mkdir -p "$dir"/{log,run,state,spool,db}
    local host cpus ctld_port slurmd_port dbd_port db_port
    host=$(hostname -s)
    cpus=$(nproc)
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    dbd_port=$(free_port)
    db_port=$(free_port)

    # MUNGE: one daemon per machine on the default socket (slurmctld uses it to reach slurmdbd).
    if ! munge -n > /dev/null 2>&1; then
        install -d -o munge -g munge -m 0755 /run/munge
        runuser -u munge -- munged || fail "munged did not start"
        wait_for 10 munge -n || fail "munge does not answer"
    fi

    # MariaDB for slurmdbd: a private data folder, TCP on 127.0.0.1 only, no grant tables.
    if [[ ! -d "$dir/db/mysql" ]]; then
        mariadb-install-db --user=root --datadir="$dir/db" --auth-root-authentication-method=normal \
            > "$dir/log/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed"
    fi
    mariadbd --user=root --datadir="$dir/db" --socket="$dir/run/mariadb.sock" --port="$db_port" \
        --bind-address=127.0.0.1 --skip-grant-tables --pid-file="$dir/run/mariadb.pid" \
        --log-error="$dir/log/mariadb.log" > /dev/null 2>&1 &
    wait_for 60 test -S "$dir/run/mariadb.sock" || fail "MariaDB did not start"

    cat > "$dir/slurmdbd.conf" << EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$dir/run/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$dir/slurmdbd.conf"

    cat > "$dir/slurm.conf" << EOF
ClusterName=gammapo
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=${REQUEUE_DELAY:-5}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
KillWait=10
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
JobCompType=jobcomp/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=batch Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=low Nodes=$host MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
    cat > "$dir/env.sh" << EOF
# source this file: the SLURM client commands then talk to the cluster in $dir
export SLURM_CONF=$dir/slurm.conf
EOF
    export SLURM_CONF=$dir/slurm.conf

    slurmdbd || fail "slurmdbd did not start"  # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 60 sacctmgr -n show cluster || fail "slurmdbd does not answer"
    slurmctld -f "$dir/slurm.conf" || fail "slurmctld did not start"
    slurmd -f "$dir/slurm.conf" -N "$host" || fail "slurmd did not start"
    node_idle() { [[ "$(sinfo -h -n "$host" -o %T 2> /dev/null | head -n 1)" == idle ]]; }
    wait_for 60 node_idle || fail "node $host did not become idle"
    cluster_known() { sacctmgr -n -P show cluster format=cluster | grep -qx gammapo; }
    wait_for 60 cluster_known || fail "slurmctld did not register with slurmdbd"
    echo "slurm_cluster: up in $dir (node $host, $cpus CPUs; source $dir/env.sh)"
}

case "$action" in
    start) start ;;
    stop) stop; echo "slurm_cluster: stopped ($dir)" ;;
    *) usage ;;
esac
