#!/usr/bin/env bash
# A real SLURM cluster (with accounting) in a folder, for tests and for trying the launch scripts on
# one machine: one node (this machine) or several nodes, each a network namespace. Needs root and
# Debian's packages:
#   apt-get install munge slurmctld slurmd slurm-client slurmdbd mariadb-server
#
#   bash scripts/slurm_cluster.sh start DIR [--nodes N] [--no-hosts]
#                                             # writes DIR/slurm.conf, starts the daemons, waits for the nodes
#   source DIR/env.sh                         # SLURM_CONF for sbatch / squeue / sacct in this shell
#   bash scripts/slurm_cluster.sh kill-node DIR NODE   # a node dies: its slurmd, job steps and tasks (SIGKILL)
#   bash scripts/slurm_cluster.sh start-node DIR NODE  # ... and comes back (a new slurmd)
#   bash scripts/slurm_cluster.sh cut-link DIR NODE    # a node's link goes down (its processes live on)
#   bash scripts/slurm_cluster.sh restore-link DIR NODE
#   bash scripts/slurm_cluster.sh hosts DIR on|off     # node names resolve in the nodes' hosts files, or not
#   bash scripts/slurm_cluster.sh where DIR NODE       # prints "NAMESPACE LINK": the node's network namespace
#                                                      # and the root side of its veth pair
#   bash scripts/slurm_cluster.sh stop DIR    # stops every daemon, namespace and link started from DIR
#
# One node (the default): this machine under its own name, all its CPUs, NodeAddr 127.0.0.1.
# N >= 2 nodes: node1..nodeN, each a network namespace joined by a veth pair to a private bridge in
# the root namespace (10.217.X.0/24, X from DIR; the bridge is .1, nodeI is .(10+I); no route out),
# each with its own hostname (UTS namespace) and a private /etc/hosts (a bind mount in its own mount
# namespace) that resolves every node name to its address — or, with --no-hosts, none, so that node
# names resolve only through SLURM (NodeAddr). Inside every node the link is called `gpnet0`. Each
# node has 2 CPUs for SLURM (over-subscribing this machine) and its own slurmd; slurmctld (on the
# bridge address), slurmdbd, MariaDB and a private munged (its own key and socket in
# /run/gammapo-munge-<hash of DIR>; nothing on the default socket) run in the root namespace.
#
# Partitions: `batch` (the default; its jobs are never preempted), `low` (preemptible) and `urgent`,
# whose jobs preempt `low` jobs by requeueing them (PreemptType=preempt/partition_prio,
# PreemptMode=REQUEUE), each over every node. EnforcePartLimits=ALL, as many production clusters set
# it: sbatch refuses a job no partition can run (more nodes than it has) instead of leaving it pending. No systemd or cgroups: processes are tracked by parent
# PID (proctrack/linuxproc). Accounting (sacct, needed by NeMo-Run's status and logs) is slurmdbd on
# a private MariaDB in DIR. A requeued job may start again after REQUEUE_DELAY seconds [5] (SLURM's
# default is 120: AuthInfo cred_expire; a test that takes a node away keeps it away > 60 s after the
# requeue, DESIGN §8: a signal slurmctld queued for it is retried ~60 s later and can reach a restarted
# job there; with a long delay, `scontrol update StartTime=now` makes the job "non-startable"). A node that stops
# answering is marked DOWN after SLURMD_TIMEOUT seconds [30] and its jobs are requeued. Daemon logs: DIR/log/.
# Exit status of start: 0 when every node is idle and accounting answers; 1 otherwise (logs printed;
# everything started is stopped again).
set -euo pipefail

usage() {
    echo "usage: bash scripts/slurm_cluster.sh start DIR [--nodes N] [--no-hosts] | stop DIR | kill-node DIR NODE | start-node DIR NODE" >&2
    exit 2
}
[[ $# -ge 2 ]] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
shift 2
nodes=1 hosts_file=1 node_arg=""
case "$action" in
    start)
        while (($#)); do
            case "$1" in
                --nodes)
                    [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]?$ ]] || usage
                    nodes=$2
                    shift 2
                    ;;
                --no-hosts) hosts_file=0; shift ;;
                *) usage ;;
            esac
        done
        ;;
    kill-node | start-node | cut-link | restore-link | where) [[ $# -eq 1 ]] || usage; node_arg=$1 ;;
    hosts) [[ $# -eq 1 && "$1" =~ ^(on|off)$ ]] || usage; hosts_file=$([[ "$1" == on ]] && echo 1 || echo 0) ;;
    stop) [[ $# -eq 0 ]] || usage ;;
    *) usage ;;
esac

# Names of the multi-node pieces, unique per DIR (interface names: at most 15 characters).
hash=$(printf '%s' "$dir" | md5sum | cut -c1-6)
prefix=gp${hash:0:4}
octet=$((16#${hash:4:2}))
subnet=10.217.$octet
bridge=${prefix}br
node_if=gpnet0
# munged runs as the munge user, which must reach its files: outside DIR (a test's temporary folder
# may be private to root), in /run, removed by `stop`.
munge_dir=/run/gammapo-munge-${hash}

fail() {
    echo "slurm_cluster: $*" >&2
    local f
    for f in "$dir"/log/*.log "$munge_dir"/*.log; do
        [[ -s "$f" ]] && { echo "--- $f (last lines)" >&2; tail -n 15 "$f" >&2; }
    done
    [[ "${KEEP_ON_FAIL:-0}" == 1 ]] || stop > /dev/null 2>&1 || true  # KEEP_ON_FAIL=1: leave it for a look
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

kill_pidfile() {
    local file=$1 pid
    [[ -f "$file" ]] || return 0
    pid=$(cat "$file")
    rm -f "$file"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    kill "$pid" 2> /dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2> /dev/null || return 0
        sleep 0.2
    done
    kill -9 "$pid" 2> /dev/null || true
}

# The network namespaces of the multi-node cluster started from DIR (none for one node).
cluster_namespaces() {
    ip netns list 2> /dev/null | awk '{print $1}' | grep -E "^${prefix}n[0-9]+$" || true
}

kill_node() { # kill_node NAMESPACE: every process in it (slurmd, slurmstepd, tasks), at once
    local ns=$1 pids
    pids=$(ip netns pids "$ns" 2> /dev/null || true)
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086  # one PID a word
        kill -9 $pids 2> /dev/null || true
    fi
    for _ in $(seq 25); do
        [[ -z "$(ip netns pids "$ns" 2> /dev/null)" ]] && break
        sleep 0.2
    done
    rm -f "$dir/run/slurmd-node${ns#"${prefix}"n}.pid"
}

stop() {
    local ns i name
    for ns in $(cluster_namespaces); do kill_node "$ns"; done
    kill_pidfile "$dir/run/slurmd.pid"
    for name in slurmctld slurmdbd mariadb; do kill_pidfile "$dir/run/$name.pid"; done
    kill_pidfile "$munge_dir/munged.pid"
    cp "$munge_dir/munged.log" "$dir/log/munged.log" 2> /dev/null || true
    rm -rf "$munge_dir"
    # Jobs still running on a one-node cluster (their slurmstepd outlive slurmd).
    pkill -9 -f "slurmstepd.*$dir" 2> /dev/null || true
    for ns in $(cluster_namespaces); do
        i=${ns#"${prefix}"n}
        ip link del "${prefix}v$i" 2> /dev/null || true
        ip netns del "$ns" 2> /dev/null || true
    done
    ip link del "$bridge" 2> /dev/null || true
    rm -f "$dir"/run/*.pid
}

start_slurmd() { # start_slurmd NAME: one node's slurmd, in the node's network, mount and UTS namespaces
    local name=$1 i=${1#node}
    # nsenter, not `ip netns exec`: the latter remounts /sys and slurmd then finds no cgroup mount.
    nsenter --net="/run/netns/${prefix}n$i" unshare --mount --uts --propagation private -- sh -c \
        "mount --bind '$dir/hosts-$name' /etc/hosts && hostname '$name' && exec slurmd -f '$dir/slurm.conf' -N '$name'" \
        || fail "slurmd of $name did not start"
}

write_hosts() { # write_hosts N: the nodes' hosts files, in place (each is bind-mounted over a node's /etc/hosts)
    local i j n=$1
    for i in $(seq "$n"); do
        {
            echo "127.0.0.1 localhost"
            if [[ "$hosts_file" == 1 ]]; then
                echo "$subnet.1 $(hostname -s)"
                for j in $(seq "$n"); do echo "$subnet.$((10 + j)) node$j"; done
            fi
        } > "$dir/hosts-node$i"
    done
}

make_nodes() { # the namespaces, links, addresses and hosts files of node1..nodeN
    local i ns
    ip link add "$bridge" type bridge || fail "cannot create the bridge $bridge (network namespaces need root)"
    ip addr add "$subnet.1/24" dev "$bridge"
    ip link set "$bridge" up
    for i in $(seq "$nodes"); do
        ns=${prefix}n$i
        ip netns add "$ns" || fail "cannot create the network namespace $ns"
        ip link add "${prefix}v$i" type veth peer name "$node_if" netns "$ns" || fail "cannot create the veth pair of node$i"
        ip link set "${prefix}v$i" master "$bridge" up
        ip -n "$ns" addr add "$subnet.$((10 + i))/24" dev "$node_if"
        ip -n "$ns" link set "$node_if" up
        ip -n "$ns" link set lo up
    done
    write_hosts "$nodes"
}

start() {
    [[ $EUID -eq 0 ]] || fail "needs root (the daemons run as root here)"
    local tool
    for tool in munged slurmctld slurmd slurmdbd mariadbd mariadb-install-db sinfo sacctmgr; do
        command -v "$tool" > /dev/null || fail "'$tool' not found: apt-get install munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
    done
    if ((nodes > 1)); then
        for tool in ip nsenter unshare; do
            command -v "$tool" > /dev/null || fail "'$tool' not found (apt-get install iproute2 util-linux)"
        done
    fi
    stop
    mkdir -p "$dir"/{log,run,state,spool,db}
    local host cpus ctld_port slurmd_port dbd_port db_port ctld_addr node_list i
    local node_lines="" spool slurmd_pid slurmd_log
    host=$(hostname -s)
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    dbd_port=$(free_port)
    db_port=$(free_port)

    # MUNGE: a private daemon (as the munge user) with its own key; every daemon and client finds its
    # socket through AuthInfo=socket=... (slurmdbd connections: AccountingStoragePass).
    install -d -o munge -g munge -m 0755 "$munge_dir"
    dd if=/dev/urandom of="$munge_dir/munge.key" bs=1 count=1024 status=none
    chown munge:munge "$munge_dir/munge.key"
    chmod 400 "$munge_dir/munge.key"
    runuser -u munge -- munged --socket="$munge_dir/munge.sock" --key-file="$munge_dir/munge.key" \
        --pid-file="$munge_dir/munged.pid" --seed-file="$munge_dir/munge.seed" --log-file="$munge_dir/munged.log" \
        || fail "munged did not start"
    wait_for 10 munge -n -S "$munge_dir/munge.sock" || fail "munge does not answer"
    local auth="socket=$munge_dir/munge.sock"

    # MariaDB for slurmdbd: a private data folder, TCP on 127.0.0.1 only, no grant tables.
    if [[ ! -d "$dir/db/mysql" ]]; then
        mariadb-install-db --user=root --datadir="$dir/db" --auth-root-authentication-method=normal \
            > "$dir/log/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed"
    fi
    mariadbd --user=root --datadir="$dir/db" --socket="$dir/run/mariadb.sock" --port="$db_port" \
        --bind-address=127.0.0.1 --skip-grant-tables --pid-file="$dir/run/mariadb.pid" \
        --log-error="$dir/log/mariadb.log" > /dev/null 2>&1 &
    wait_for 60 test -S "$dir/run/mariadb.sock" || fail "MariaDB did not start"

    cat > "$dir/slurmdbd.conf" << END_OF_CONF
AuthType=auth/munge
AuthInfo=$auth
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
END_OF_CONF
    chmod 600 "$dir/slurmdbd.conf"

    if ((nodes == 1)); then
        cpus=$(nproc)
        ctld_addr=127.0.0.1
        node_list=$host
        node_lines="NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN"
        spool=$dir/spool slurmd_pid=$dir/run/slurmd.pid slurmd_log=$dir/log/slurmd.log
    else
        make_nodes
        ctld_addr=$subnet.1
        node_list="node[1-$nodes]"
        for i in $(seq "$nodes"); do
            node_lines+="NodeName=node$i NodeAddr=$subnet.$((10 + i)) NodeHostname=node$i CPUs=2 State=UNKNOWN"$'\n'
            mkdir -p "$dir/spool/node$i"
        done
        spool=$dir/spool/%n slurmd_pid=$dir/run/slurmd-%n.pid slurmd_log=$dir/log/slurmd-%n.log
    fi

    cat > "$dir/slurm.conf" << END_OF_CONF
ClusterName=gammapo
SlurmctldHost=$host($ctld_addr)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=${REQUEUE_DELAY:-5},$auth
StateSaveLocation=$dir/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$slurmd_log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=${SLURMD_TIMEOUT:-30}
KillWait=10
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
AccountingStoragePass=$munge_dir/munge.sock
JobCompType=jobcomp/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
EnforcePartLimits=ALL
${node_lines}
PartitionName=batch Nodes=$node_list Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=low Nodes=$node_list MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=urgent Nodes=$node_list MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
END_OF_CONF
    cat > "$dir/env.sh" << END_OF_CONF
# source this file: the SLURM client commands then talk to the cluster in $dir
export SLURM_CONF=$dir/slurm.conf
END_OF_CONF
    export SLURM_CONF=$dir/slurm.conf

    slurmdbd || fail "slurmdbd did not start" # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 60 sacctmgr -n show cluster || fail "slurmdbd does not answer"
    slurmctld -f "$dir/slurm.conf" || fail "slurmctld did not start"
    if ((nodes == 1)); then
        slurmd -f "$dir/slurm.conf" -N "$host" || fail "slurmd did not start"
    else
        for i in $(seq "$nodes"); do start_slurmd "node$i"; done
    fi
    all_idle() {
        [[ "$(sinfo -h -N -n "$node_list" -o %T 2> /dev/null | sort -u)" == idle ]] \
            && [[ $(sinfo -h -N -n "$node_list" -o %N 2> /dev/null | sort -u | wc -l) -eq $nodes ]]
    }
    wait_for 60 all_idle || fail "the nodes did not become idle: $(sinfo -N 2>&1 | tr '\n' ' ')"
    cluster_known() { sacctmgr -n -P show cluster format=cluster | grep -qx gammapo; }
    wait_for 60 cluster_known || fail "slurmctld did not register with slurmdbd"
    if ((nodes == 1)); then
        echo "slurm_cluster: up in $dir (node $host, $cpus CPUs; source $dir/env.sh)"
    else
        echo "slurm_cluster: up in $dir ($nodes nodes node[1-$nodes] on $subnet.0/24, 2 CPUs each; source $dir/env.sh)"
    fi
}

node_namespace() { # node_namespace NODE: its namespace, or exit 1 naming it
    local ns=${prefix}n${node_arg#node}
    [[ "$node_arg" =~ ^node[0-9]+$ && -e "/run/netns/$ns" ]] || { echo "slurm_cluster: no node '$node_arg' in $dir" >&2; exit 1; }
    echo "$ns"
}

case "$action" in
    start) start ;;
    stop)
        stop
        echo "slurm_cluster: stopped ($dir)"
        ;;
    kill-node)
        ns=$(node_namespace) || exit 1
        kill_node "$ns"
        echo "slurm_cluster: killed every process of $node_arg"
        ;;
    where)
        ns=$(node_namespace) || exit 1
        echo "$ns ${prefix}v${node_arg#node}"
        ;;
    cut-link | restore-link)
        node_namespace > /dev/null || exit 1
        ip link set "${prefix}v${node_arg#node}" "$([[ "$action" == cut-link ]] && echo down || echo up)"
        echo "slurm_cluster: $action $node_arg"
        ;;
    hosts)
        write_hosts "$(cluster_namespaces | wc -l)"
        echo "slurm_cluster: node names $([[ "$hosts_file" == 1 ]] && echo resolve || echo "do not resolve") in the nodes' hosts files"
        ;;
    start-node)
        node_namespace > /dev/null || exit 1
        export SLURM_CONF=$dir/slurm.conf
        start_slurmd "$node_arg"
        echo "slurm_cluster: started the slurmd of $node_arg"
        ;;
esac
