#!/usr/bin/env bash
# Runs the Table-1 --quick sweep through Slurm job arrays on a single-node cluster started on
# this machine, and checks that its table1.json equals a local run's (timings aside).
#
#   scripts/slurm-local.sh [LOCAL_TABLE_DIR]
#
# LOCAL_TABLE_DIR: the output of `memaware table1 --quick` run locally (run here if absent).
# Needs root (the daemons run as root). Installs slurmctld, slurmd, slurm-client and munge
# from the Debian packages when missing; starts munged (unless one runs), slurmctld and
# slurmd with a slurm.conf in a temporary folder; stops the daemons it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
    ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    echo "== installing slurm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

cargo build --release --quiet
memaware="$root/target/release/memaware"
work=$(mktemp -d /tmp/memaware-slurm.XXXXXX)
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    if [ "$status" -ne 0 ]; then
        for log in "$work"/*.log "$work"/plan/logs/*; do
            [ -f "$log" ] && { echo "--- $log"; tail -n 20 "$log"; }
        done
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

echo "== starting munged, slurmctld and slurmd (state in $work)"
if ! pgrep -x munged >/dev/null; then
    [ -f /etc/munge/munge.key ] || { mkdir -p /etc/munge && dd if=/dev/urandom bs=1 count=1024 \
        of=/etc/munge/munge.key 2>/dev/null && chown munge:munge /etc/munge/munge.key &&
        chmod 400 /etc/munge/munge.key; }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    su -s /bin/sh munge -c "munged --pid-file=/run/munge/memaware-munged.pid"
    for _ in $(seq 50); do [ -s /run/munge/memaware-munged.pid ] && break; sleep 0.1; done
    pids+=("$(cat /run/munge/memaware-munged.pid)")
fi

mkdir -p "$work/state" "$work/spool"
conf="$work/slurm.conf"
cat >"$conf" <<EOF
ClusterName=memaware
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$conf"
slurmctld -f "$conf"
for _ in $(seq 100); do [ -s "$work/slurmctld.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$work/slurmctld.pid")")
slurmd -f "$conf" -N localhost
for _ in $(seq 100); do [ -s "$work/slurmd.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$work/slurmd.pid")")
for _ in $(seq 300); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.2
done
[ "$state" = idle ] || { echo "the node did not come up (state: ${state:-none})"; exit 1; }
echo "node localhost: $state, $(nproc) CPUs"

local_dir=${1:-}
if [ -z "$local_dir" ]; then
    local_dir="$work/local"
    echo "== local table1 --quick"
    "$memaware" table1 --quick --out "$local_dir" >/dev/null
fi

echo "== table1 --quick through job arrays"
"$memaware" table1 --quick --out "$work/out" --plan "$work/plan"
"$work/plan/submit.sh" --cpus-per-task=1 --time=30
deadline=$((SECONDS + 1800))
while [ -n "$(squeue -h -o %i 2>/dev/null)" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "jobs still queued after 30 minutes"; exit 1; }
    sleep 2
done
[ -f "$work/out/table1.json" ] || { echo "the finish job wrote no table1.json"; exit 1; }

python3 - "$local_dir/table1.json" "$work/out/table1.json" <<'EOF'
import json, sys

def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in ("seconds", "steps_per_s")}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v

local, slurm = (strip(json.load(open(p))) for p in sys.argv[1:])
if local != slurm:
    sys.exit("table1.json from Slurm differs from the local run's")
print("table1.json from Slurm job arrays equals the local run's (timings aside)")
EOF
