#!/bin/sh
# tools/slurm-down.sh DIR - stop the private Slurm cluster tools/slurm-up.sh
# started in DIR: cancel its jobs, stop both slurmd, slurmctld and munged
# (by the pids in their pid files, nothing else), then wait for them.
dir=${1:?usage: slurm-down.sh DIR}
export SLURM_CONF="$dir/slurm.conf"
if [ -f "$SLURM_CONF" ]; then
    # cancel the jobs and let them end while slurmd still runs, so no step
    # daemon (slurmstepd) or job process outlives the cluster
    scancel --quiet --full --user=root 2>/dev/null
    i=0
    while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
fi
pids=""
for f in "$dir"/slurmd-n1.pid "$dir"/slurmd-n2.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [ -f "$f" ] || continue
    p=$(cat "$f" 2>/dev/null)
    [ -n "$p" ] && kill "$p" 2>/dev/null && pids="$pids $p"
done
for p in $pids; do
    i=0
    while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$p" 2>/dev/null
done
exit 0
