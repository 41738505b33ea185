#!/usr/bin/env bash
# A single-node Slurm on this machine, to try `hydra/launcher=submitit_slurm` for real.
#
#   scripts/slurm_local.sh start [STATE_DIR]    # the daemons; prints the SLURM_CONF line
#   scripts/slurm_local.sh status [STATE_DIR]   # daemons, node and queue
#   scripts/slurm_local.sh stop [STATE_DIR]     # cancels the jobs, stops every daemon; logs stay
#
# Needs root and Debian's packages: apt-get install slurmctld slurmd slurm-client munge.
# Everything the daemons write (slurm.conf, cgroup.conf, munge key and socket, spool, state,
# logs, the job completion log) lives in STATE_DIR (default /tmp/auctionlab-slurm), so nothing
# under /etc is touched and several state dirs can coexist on distinct ports
# (SLURM_LOCAL_CTLD_PORT, SLURM_LOCAL_SLURMD_PORT; defaults 6817 and 6818).
# Clients (sbatch, squeue, the submitit launcher) find this cluster through SLURM_CONF.
#
# Accounting (sacct, which submitit polls for job states) needs slurmdbd and a MariaDB server
# (apt-get install slurmdbd mariadb-server): with SLURM_LOCAL_ACCOUNTING=auto (the default) they
# run when both are installed, on SLURM_LOCAL_DBD_PORT and SLURM_LOCAL_DB_PORT (6819, 6820; the
# database lives in STATE_DIR/db); =no never, =yes fails without them.
#
# Processes are tracked by walking /proc (proctrack/linuxproc) and tasks are not bound
# (task/none): neither needs systemd or a writable cgroup tree, so this runs in a container.
# The daemons run under `nice -n 19` (SLURM_LOCAL_NICE) and jobs inherit that niceness.
set -euo pipefail

action=${1:-}
state=$(realpath -m "${2:-${AUCTIONLAB_SLURM_DIR:-/tmp/auctionlab-slurm}}")
ctld_port=${SLURM_LOCAL_CTLD_PORT:-6817}
slurmd_port=${SLURM_LOCAL_SLURMD_PORT:-6818}
dbd_port=${SLURM_LOCAL_DBD_PORT:-6819}
db_port=${SLURM_LOCAL_DB_PORT:-6820}
accounting=${SLURM_LOCAL_ACCOUNTING:-auto}
niceness=${SLURM_LOCAL_NICE:-19}
partition=${SLURM_LOCAL_PARTITION:-local}
conf=$state/slurm.conf
socket=$state/munge/munge.socket.2

die() {
    echo "slurm_local.sh: $*" >&2
    exit 1
}

need() {
    local missing=()
    for exe in munged mungekey slurmctld slurmd sbatch scontrol sinfo squeue; do
        command -v "$exe" >/dev/null || missing+=("$exe")
    done
    ((${#missing[@]} == 0)) ||
        die "not found: ${missing[*]} (apt-get install slurmctld slurmd slurm-client munge)"
    [[ $(id -u) == 0 ]] || die "the daemons run as root here (SlurmUser=root); run as root"
    local db_tools=(slurmdbd sacctmgr mariadbd mariadb mariadb-install-db) have=yes
    for exe in "${db_tools[@]}"; do
        command -v "$exe" >/dev/null || have=no
    done
    case $accounting in
    auto) accounting=$have ;;
    yes)
        [[ $have == yes ]] || die "SLURM_LOCAL_ACCOUNTING=yes needs ${db_tools[*]}" \
            "(apt-get install slurmdbd mariadb-server)"
        ;;
    no) ;;
    *) die "SLURM_LOCAL_ACCOUNTING must be auto, yes or no (got '$accounting')" ;;
    esac
}

pid_alive() {
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
    # The node as slurmd sees it (CPUs, sockets, cores, threads, RealMemory): a node line that
    # claims more than the hardware has is drained by the controller at registration.
    local node
    node=$(slurmd -C | head -n 1)
    [[ $node == NodeName=* ]] || die "slurmd -C printed no node line: $node"
    local name=${node#NodeName=}
    name=${name%% *}
    cat >"$conf" <<EOF
# Written by scripts/slurm_local.sh: a one-node cluster on $(hostname).
ClusterName=auctionlab
SlurmctldHost=$name(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$(accounting_lines)
JobCompType=jobcomp/filetxt
JobCompLoc=$state/log/jobcomp.log
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$partition Nodes=$name Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmd loads cgroup.conf next to slurm.conf at start; spelled out here: no cgroup plugin
    # is configured, so nothing is constrained (a container may not let us write cgroups).
    cat >"$state/cgroup.conf" <<EOF
CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
}

accounting_lines() {
    if [[ $accounting == yes ]]; then
        printf '%s\n' JobAcctGatherType=jobacct_gather/linux \
            AccountingStorageType=accounting_storage/slurmdbd \
            AccountingStorageHost=127.0.0.1 "AccountingStoragePort=$dbd_port" \
            "AccountingStoragePass=$socket" # the munge socket for slurmdbd connections
    else
        printf '%s\n' JobAcctGatherType=jobacct_gather/none \
            AccountingStorageType=accounting_storage/none
    fi
}

db_sql() {
    mariadb --no-defaults --socket="$state/db/mysqld.sock" --batch -e "$1"
}

start_accounting() {
    # MariaDB in the state dir (root logs in through its socket), then slurmdbd on top of it.
    local db=$state/db
    mkdir -p "$db"
    if [[ ! -d $db/data/mysql ]]; then
        mariadb-install-db --no-defaults --user=root --datadir="$db/data" --skip-test-db \
            --auth-root-authentication-method=socket >"$state/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed, see $state/log/mariadb-install.log"
    fi
    if ! pid_alive "$db/mariadbd.pid"; then
        # mariadbd does not detach itself: setsid, and no inherited stdout a caller waits on.
        # Native AIO is off because not every container offers it.
        setsid nice -n "$niceness" mariadbd --no-defaults --user=root --datadir="$db/data" \
            --socket="$db/mysqld.sock" --port="$db_port" --bind-address=127.0.0.1 \
            --pid-file="$db/mariadbd.pid" --log-error="$state/log/mariadbd.log" \
            --skip-name-resolve --innodb-use-native-aio=0 \
            --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
            </dev/null >/dev/null 2>&1 &
    fi
    wait_for 60 "MariaDB" db_sql 'SELECT 1' ||
        die "MariaDB did not start, see $state/log/mariadbd.log"
    [[ -s $db/password ]] ||
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$db/password")
    local password
    password=$(cat "$db/password")
    db_sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    # slurmdbd reads slurmdbd.conf next to SLURM_CONF and refuses one others can read.
    (
        umask 077
        cat >"$state/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$socket
DbdHost=$(hostname -s)
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$state/slurmdbd.pid
LogFile=$state/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$password
StorageLoc=slurm_acct_db
EOF
    )
    pid_alive "$state/slurmdbd.pid" || nice -n "$niceness" slurmdbd
    wait_for 60 "slurmdbd" sacctmgr -n list cluster ||
        die "slurmdbd did not answer, see $state/log/slurmdbd.log"
    # The controller's records go to its cluster, which must exist before it starts.
    sacctmgr -n -P list cluster format=cluster | grep -qx auctionlab ||
        sacctmgr -i add cluster auctionlab >/dev/null
}

start_munge() {
    if pid_alive "$state/munge/munged.pid"; then
        return
    fi
    mkdir -p "$state/munge"
    chmod 755 "$state/munge"
    [[ -s $state/munge/munge.key ]] || mungekey --create --keyfile="$state/munge/munge.key"
    chmod 400 "$state/munge/munge.key"
    # --force: munged refuses root without it
    nice -n "$niceness" munged --force --socket="$socket" --key-file="$state/munge/munge.key" \
        --pid-file="$state/munge/munged.pid" --log-file="$state/log/munged.log" \
        --seed-file="$state/munge/munged.seed"
}

wait_for() {
    # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

node_idle() {
    sinfo -h -N -o '%t' | grep -qx 'idle\|mix\|alloc'
}

start() {
    need
    mkdir -p "$state"/{ctld,spool,log}
    write_conf
    export SLURM_CONF=$conf
    start_munge
    [[ $accounting == yes ]] && start_accounting
    pid_alive "$state/slurmctld.pid" ||
        nice -n "$niceness" slurmctld -f "$conf"
    pid_alive "$state/slurmd.pid" ||
        nice -n "$niceness" slurmd -f "$conf"
    if ! wait_for 30 "controller" scontrol ping || ! wait_for 60 "node" node_idle; then
        echo "slurm_local.sh: the cluster did not come up; last log lines:" >&2
        tail -n 15 "$state"/log/*.log >&2 || true
        exit 1
    fi
    local node
    node=$(sinfo -h -N -o '%N (%c CPUs, %m MB)' | head -n 1)
    echo "Slurm is up: partition '$partition' on $node," \
        "accounting $([[ $accounting == yes ]] && echo 'on (sacct)' || echo 'off')."
    echo "export SLURM_CONF=$conf"
}

status() {
    export SLURM_CONF=$conf
    [[ -f $conf ]] || die "no cluster in $state (run: $0 start $state)"
    local name
    for name in munge/munged db/mariadbd slurmdbd slurmctld slurmd; do
        [[ $name == db/* || $name == slurmdbd ]] && [[ ! -d $state/db ]] && continue
        if pid_alive "$state/$name.pid"; then
            echo "${name#*/}: running (pid $(cat "$state/$name.pid"))"
        else
            echo "${name#*/}: stopped"
        fi
    done
    if scontrol ping >/dev/null 2>&1; then
        sinfo -N -o '%N %P %t %c %m'
        squeue
    fi
}

stop_pid() {
    # stop_pid PIDFILE: TERM, then KILL after 15 s
    local file=$1 pid
    pid_alive "$file" || return 0
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    [[ -d $state ]] || return 0
    export SLURM_CONF=$conf
    # Jobs first, so that slurmd does not leave job steps behind.
    if [[ -f $conf ]] && scontrol ping >/dev/null 2>&1; then
        scancel --full --user="$(id -un)" 2>/dev/null || true
    fi
    stop_pid "$state/slurmd.pid"
    stop_pid "$state/slurmctld.pid"
    stop_pid "$state/slurmdbd.pid"
    stop_pid "$state/db/mariadbd.pid"
    stop_pid "$state/munge/munged.pid"
    echo "Slurm in $state stopped (logs in $state/log)."
}

case $action in
start) start ;;
stop) stop ;;
status) status ;;
*) die "usage: $0 start|stop|status [STATE_DIR] (got '${action}')" ;;
esac
