#!/usr/bin/env bash
# Stop what tests/slurm/start-cluster.sh STATE_DIR started: only the pids it
# recorded in STATE_DIR/pids (never anything found by name).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
[ -f "$1/pids" ] || exit 0
STATE=$(cd "$1" && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

# Keep only pids that are still one of our daemons (guards against pid reuse).
pids=()
for p in $(grep -E '^[0-9]+$' "$STATE/pids" || true); do
  comm=$(cat "/proc/$p/comm" 2>/dev/null || true)
  [[ $comm =~ ^(munged|slurmctld|slurmd)$ ]] && pids+=("$p")
done

# Cancel this cluster's jobs first: slurmd does not kill running job steps on
# SIGTERM, so their slurmstepd/job processes would otherwise outlive it.  Only
# when *our* slurmctld is alive, so a foreign one on the same port is untouched.
ours=0
for p in "${pids[@]}"; do
  tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF "slurmctld -D -f $STATE/slurm.conf" && ours=1
done
if [ $ours = 1 ]; then
  export SLURM_CONF="$STATE/slurm.conf"
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086  # word-splitting the id list is intended
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 20); do
      [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5
    done
  fi
fi

alive() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
[ ${#pids[@]} -eq 0 ] || kill -TERM "${pids[@]}" 2>/dev/null || true
for _ in $(seq 50); do alive || break; sleep 0.2; done   # up to 10 s to exit cleanly
[ ${#pids[@]} -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
rm -f "$STATE/pids"
