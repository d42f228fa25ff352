#!/bin/sh
# tools/slurm-up.sh DIR - a private Slurm cluster on this one machine, for
# the tests: munged, slurmctld and two slurmd (nodes n1 and n2 on
# 127.0.0.1), every file (configuration, keys, sockets, state, logs) under
# DIR. Needs root and Debian's slurm-wlm and munge. Prints the line that
# points Slurm's commands at it (export SLURM_CONF=DIR/slurm.conf) and
# returns once sinfo shows both nodes idle; tools/slurm-down.sh DIR stops it.
# Ports: SLURM_UP_PORT (slurmctld, default 16817) and the two next ones
# for the nodes.
set -eu
dir=${1:?usage: slurm-up.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
[ "$(id -u)" = 0 ] || { echo "slurm-up: needs root (slurmd runs jobs as their users)" >&2; exit 1; }
for c in munged mungekey slurmctld slurmd sinfo; do
    command -v "$c" >/dev/null 2>&1 || { echo "slurm-up: $c missing (apt-get install slurm-wlm munge)" >&2; exit 1; }
done
port=${SLURM_UP_PORT:-16817}
n1=$((port + 1)); n2=$((port + 2))
host=$(hostname)
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
chmod 700 "$dir"

# munge: a key and a daemon of our own (own socket), not the system's
mungekey --create --keyfile="$dir/munge.key" --force >/dev/null 2>&1 ||
    dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 2>/dev/null
chmod 600 "$dir/munge.key"
munged --force --key-file="$dir/munge.key" --socket="$dir/munge.sock" \
    --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge.seed"

cat > "$dir/slurm.conf" <<CONF
ClusterName=ppctest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
MinJobAge=30
SchedulerType=sched/backfill
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=[$n1-$n2] CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF" -N n1
slurmd -f "$SLURM_CONF" -N n2
i=0
while :; do
    states=$(sinfo -h -N -o %T 2>/dev/null | sort -u | tr '\n' ' ')
    [ "$states" = "idle " ] && break
    i=$((i + 1))
    if [ $i -gt 150 ]; then
        echo "slurm-up: nodes not idle after 30 s (sinfo: ${states:-no answer}); logs in $dir/log" >&2
        exit 1
    fi
    sleep 0.2
done
echo "export SLURM_CONF=$dir/slurm.conf"
