#!/usr/bin/env bash
# A one-node SLURM cluster with accounting on this machine, for tests and CI.
#
#   scripts/slurm-local.sh start    install (Debian/Ubuntu, as root) and start it; idempotent
#   scripts/slurm-local.sh status   say what runs; exit 0 only when jobs can run and be accounted
#   scripts/slurm-local.sh stop     stop the daemons this script started (by their recorded PIDs)
#   scripts/slurm-local.sh env      print the `export SLURM_CONF=...` line for a shell
#
# Runs as root without systemd or cgroups: munged (as the munge user), MariaDB (mariadbd,
# socket under /run/mysqld, bound to 127.0.0.1), slurmdbd (accounting, so `sacct` works),
# slurmctld and slurmd. Configuration, state, spool, PID and log files live under
# $CBIR_SLURM_DIR (default /tmp/cbir-slurm); /etc/slurm/slurm.conf is linked to that
# configuration unless the machine already has its own, in which case SLURM_CONF must point at
# ours (see `env`). Seen working with Debian 12's SLURM 22.05, munge 0.5 and MariaDB 10.11.
set -euo pipefail

DIR="${CBIR_SLURM_DIR:-/tmp/cbir-slurm}"
CONF="$DIR/etc/slurm.conf"
DBD_CONF="$DIR/etc/slurmdbd.conf"
PIDS="$DIR/pids"
LOGS="$DIR/log"
CLUSTER=cbir
PARTITION=local
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
MYSQL_SOCKET=/run/mysqld/mysqld.sock
# the daemons, in start order: name, expected process name (/proc/PID/comm)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

export SLURM_CONF="$CONF"

say() { echo "slurm-local: $*" >&2; }

fail() {
    say "ERROR: $1"
    if [[ $# -gt 1 && -f "$2" ]]; then
        say "last lines of $2:"
        tail -n 25 "$2" | sed 's/^/    /' >&2
    fi
    exit 1
}

# wait_for SECONDS COMMAND...: retry COMMAND until it succeeds or SECONDS pass
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# PID recorded for a daemon, if that process still runs under the expected name
running_pid() {
    local name=$1 pid
    [[ -f "$PIDS/$name.pid" ]] || return 1
    pid=$(cat "$PIDS/$name.pid")
    [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name"* ]] || return 1
    echo "$pid"
}

# record the PID a daemon wrote into its own PID file
record_pid() {
    local name=$1 pidfile=$2
    wait_for 20 test -s "$pidfile" || return 1
    cp "$pidfile" "$PIDS/$name.pid"
}

install_packages() {
    local missing=()
    for cmd in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct sinfo; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $EUID -eq 0 ]] || fail "missing ${missing[*]}; run as root to install ${PACKAGES[*]} with apt-get"
    command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and no apt-get to install ${PACKAGES[*]}"
    say "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$LOGS/apt.log" 2>&1 || fail "apt-get update failed" "$LOGS/apt.log"
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$LOGS/apt.log" 2>&1 ||
        fail "apt-get install ${PACKAGES[*]} failed" "$LOGS/apt.log"
}

write_config() {
    local host cpus memory
    host=$(hostname -s)
    # the node as slurmd sees it; memory with 10% headroom so the node is never "invalid"
    read -r cpus memory < <(slurmd -C | awk '
        /^NodeName/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
        END { print v["CPUs"], v["RealMemory"] }')
    [[ -n "$cpus" && -n "$memory" ]] || fail "cannot read the node's CPUs and memory from 'slurmd -C'"
    memory=$((memory * 9 / 10))
    cat >"$CONF" <<EOF
# written by scripts/slurm-local.sh: a one-node test cluster
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
# keep finished jobs in squeue long enough for status checks that use it
MinJobAge=300
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DBD_CONF" <<EOF
# written by scripts/slurm-local.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
LogFile=$LOGS/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
EOF
    chmod 600 "$DBD_CONF"
    # client commands read /etc/slurm/slurm.conf: link it here unless the machine has its own
    mkdir -p /etc/slurm
    if [[ ! -e /etc/slurm/slurm.conf || "$(readlink /etc/slurm/slurm.conf)" == "$CONF" ]]; then
        ln -sfn "$CONF" /etc/slurm/slurm.conf
    else
        say "/etc/slurm/slurm.conf is the machine's own: leaving it; use: export SLURM_CONF=$CONF"
    fi
}

start_munged() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0  # already running (ours or the machine's)
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        runuser -u munge -- mungekey --create >/dev/null 2>&1 || fail "cannot create /etc/munge/munge.key"
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge "$LOGS/munge"
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged --log-file="$LOGS/munge/munged.log" --pid-file=/run/munge/munged.pid ||
        fail "munged did not start" "$LOGS/munge/munged.log"
    record_pid munged /run/munge/munged.pid || fail "munged wrote no PID file" "$LOGS/munge/munged.log"
    wait_for 20 bash -c 'munge -n | unmunge' || fail "munge credentials do not round-trip" "$LOGS/munge/munged.log"
}

mariadb_up() { mariadb-admin --socket="$MYSQL_SOCKET" ping; }

start_mariadb() {
    mariadb_up >/dev/null 2>&1 && return 0
    install -d -o mysql -g root -m 0755 /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOGS/mariadb-install.log" 2>&1 ||
            fail "mariadb-install-db failed" "$LOGS/mariadb-install.log"
    fi
    rm -f /run/mysqld/mysqld.pid
    # its own session, detached from the caller's terminal and output (CI waits for neither)
    setsid mariadbd --user=mysql --datadir=/var/lib/mysql --socket="$MYSQL_SOCKET" \
        --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 \
        --innodb-lock-wait-timeout=900 --log-error="$LOGS/mariadb.log" </dev/null >/dev/null 2>&1 &
    record_pid mariadbd /run/mysqld/mysqld.pid || fail "MariaDB wrote no PID file" "$LOGS/mariadb.log"
    wait_for 60 mariadb_up || fail "MariaDB does not answer on $MYSQL_SOCKET" "$LOGS/mariadb.log"
}

start_slurm_daemon() {
    local name=$1 pidfile=$2 ready=$3
    shift 3
    if running_pid "$name" >/dev/null; then
        return 0
    fi
    rm -f "$pidfile"  # a stale one from an earlier run would name a dead process
    "$@" >>"$LOGS/$name.out" 2>&1 || fail "$name did not start" "$LOGS/$name.log"
    record_pid "$name" "$pidfile" || fail "$name wrote no PID file" "$LOGS/$name.log"
    wait_for 60 bash -c "$ready" || fail "$name started but is not ready" "$LOGS/$name.log"
}

node_state() { sinfo -h -N -o %T 2>/dev/null | head -n 1; }

# the node accepts jobs (idle, or busy with some) and accounting answers
cluster_ready() {
    [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing|planned)$ ]] && sacct -n -X -S now-1minutes >/dev/null 2>&1
}

start() {
    mkdir -p "$DIR"/{etc,state,spool,run} "$PIDS" "$LOGS"
    if [[ -f "$CONF" ]] && cluster_ready && running_pid slurmctld >/dev/null && running_pid slurmd >/dev/null; then
        say "already running (SLURM_CONF=$CONF)"
        return 0
    fi
    [[ $EUID -eq 0 ]] || fail "the cluster is not running and starting it needs root (daemons run as root)"
    install_packages
    write_config
    start_munged
    start_mariadb
    start_slurm_daemon slurmdbd "$DIR/run/slurmdbd.pid" "sacctmgr -n list cluster" slurmdbd
    # the cluster and root's association, so accounting accepts jobs from the first submission
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >>"$LOGS/sacctmgr.log" 2>&1 ||
            fail "cannot register cluster $CLUSTER in slurmdbd" "$LOGS/sacctmgr.log"
    fi
    # A controller or node daemon started here begins empty (-c; an empty spool): jobs recorded by
    # an earlier life of this cluster (a machine stopped mid-test and restored, say) would be
    # recovered as running, hold the node, and keep every new job pending.
    if ! running_pid slurmctld >/dev/null; then
        start_slurm_daemon slurmctld "$DIR/run/slurmctld.pid" "scontrol ping | grep -q UP" slurmctld -c -f "$CONF"
    fi
    if ! running_pid slurmd >/dev/null; then
        find "$DIR/spool" -mindepth 1 -delete
        start_slurm_daemon slurmd "$DIR/run/slurmd.pid" "sinfo -h -N -o %T | grep -qv '^unk'" slurmd -f "$CONF"
    fi
    if [[ "$(node_state)" =~ ^(down|drain|drained|draining) ]]; then
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    fi
    wait_for 60 cluster_ready || fail "node state '$(node_state)', or sacct cannot reach slurmdbd" "$LOGS/slurmctld.log"
    # a smoke job: it must run and be accounted as COMPLETED
    local job
    job=$(sbatch --parsable -J slurm-local-smoke -o /dev/null -t 1 --mem=10 --wrap=true) ||
        fail "sbatch refused a trivial job" "$LOGS/slurmctld.log"
    wait_for 60 bash -c "sacct -n -X -P -j $job -o State | grep -qx COMPLETED" ||
        fail "smoke job $job did not complete: $(sacct -n -X -P -j "$job" -o State 2>&1)" "$LOGS/slurmd.log"
    say "running: cluster $CLUSTER, partition $PARTITION, node $(hostname -s) (SLURM_CONF=$CONF)"
}

stop() {
    local pid name
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        name=${DAEMONS[i]}
        if pid=$(running_pid "$name"); then
            kill "$pid"
            if ! wait_for 30 bash -c "! test -d /proc/$pid"; then
                say "$name ($pid) ignores SIGTERM; sending SIGKILL"
                kill -9 "$pid" 2>/dev/null || true
            fi
            say "stopped $name ($pid)"
        fi
        rm -f "$PIDS/$name.pid"
    done
}

status() {
    local name pid rc=0
    for name in "${DAEMONS[@]}"; do
        if pid=$(running_pid "$name"); then
            echo "$name: running ($pid)"
        else
            echo "$name: not started by this script"
        fi
    done
    if command -v sinfo >/dev/null 2>&1 && cluster_ready; then
        echo "cluster: ready, node $(node_state), sacct answers (SLURM_CONF=$CONF)"
    else
        echo "cluster: not ready"
        rc=1
    fi
    return $rc
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
env) echo "export SLURM_CONF=$CONF" ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
