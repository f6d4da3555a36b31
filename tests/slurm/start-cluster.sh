#!/usr/bin/env bash
# Start a throw-away one-node Slurm cluster whose config, state, logs and pid
# files all live in STATE_DIR.  Afterwards `source STATE_DIR/env` sets SLURM_CONF;
# tests/slurm/stop-cluster.sh STATE_DIR stops exactly what this started.
# Needs root (slurmd runs jobs as the submitting user; munged key setup).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
mkdir -p "$1"
STATE=$(cd "$1" && pwd)                    # absolute: slurm.conf paths must be
export PATH="$PATH:/usr/sbin:/sbin"        # daemons live in sbin, often not on PATH
die() { echo "start-cluster: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (munge key, slurmd)"

# --- 1. install Slurm + munge only when missing --------------------------------
need=(sbatch squeue sinfo scontrol scancel slurmctld slurmd munged munge)
missing() { for c in "${need[@]}"; do command -v "$c" >/dev/null || return 0; done; return 1; }
if missing; then
  echo "start-cluster: installing slurm-wlm and munge with apt-get" >&2
  # Keep package postinst scripts from starting system-wide daemons that we
  # would not track (they would hold the munge socket / slurm ports).
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  rc=0
  { apt-get -o DPkg::Lock::Timeout=900 update -q && apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends slurm-wlm munge; } >&2 || rc=$?
  [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc): cannot install slurm-wlm/munge (no package mirror reachable?)"
  ! missing || die "slurm-wlm installed but some of ${need[*]} are still missing"
fi

: > "$STATE/pids"                          # pids of everything *we* start, for stop-cluster.sh
record() { echo "$1" >> "$STATE/pids"; }
# On any failure from here on, stop whatever this script already started.
trap 'rc=$?; [ $rc -eq 0 ] || "$(dirname "$0")/stop-cluster.sh" "$STATE" || true' EXIT

# --- 2. munge: key, run dir, daemon (reuse one that already works) -------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  install -d -o munge -g munge -m 700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  # munged refuses to run as root with a munge-owned key; it daemonises itself
  # and writes its pid file.  stdio to a file so a caller's pipes are not held.
  rm -f /run/munge/munged.pid
  setpriv --reuid=munge --regid=munge --init-groups munged \
    </dev/null >>"$STATE/munged.out" 2>&1 || die "munged failed: $(cat "$STATE/munged.out")"
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  record "$(cat /run/munge/munged.pid)"
  munge -n | unmunge >/dev/null || die "munged started but munge/unmunge fails"
fi

# --- 3. slurm.conf for this host ------------------------------------------------
host=$(hostname -s)
# `slurmd -C` prints the real hardware as a NodeName line (plus UpTime=...).
# Lower RealMemory a little so the node is never "invalid" for reporting less.
nodeline=$(slurmd -C | grep '^NodeName=' | awk '{
  for (i = 1; i <= NF; i++) if ($i ~ /^RealMemory=/) { split($i, m, "="); $i = "RealMemory=" int(m[2] * 0.9) }
  print }')
[ -n "$nodeline" ] || die "slurmd -C gave no NodeName line"
mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log"
cat > "$STATE/slurm.conf" <<EOF
ClusterName=emharness
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# Default MailProg (/usr/bin/mail) is absent here; avoids a start-up error.
MailProg=/bin/true
# Consumable cores, not whole nodes: each 1-CPU array task gets a core, so
# a 2-CPU machine runs two tasks at once.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# No cgroups: works in containers/VMs without a delegated cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$nodeline State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
printf 'export SLURM_CONF=%q\n' "$STATE/slurm.conf" > "$STATE/env"

# --- 4. daemons: foreground mode (-D) under setsid, so $! is the daemon's pid -----
# and they leave the caller's session; stdio to files so no pipe is held open.
# A leftover cluster on the default ports would answer our sinfo and hide the
# new daemons' bind failure, so refuse to start next to one.
for port in 6817 6818; do
  ! timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null ||
    die "port $port already in use (another slurmctld/slurmd running? stop it with stop-cluster.sh)"
done
setsid slurmctld -D -f "$STATE/slurm.conf" </dev/null >>"$STATE/log/slurmctld.out" 2>&1 &
ctld=$!; record $ctld
setsid slurmd -D -f "$STATE/slurm.conf" </dev/null >>"$STATE/log/slurmd.out" 2>&1 &
slurmd=$!; record $slurmd

# --- 5. wait (bounded) until the node is idle; fail fast if a daemon died ---------
export SLURM_CONF="$STATE/slurm.conf"
why="node $host not idle after 60 s"
# (not kill -0: a daemon that died is our unreaped child, a zombie, until we exit)
running() { for p; do [[ $(ps -o stat= -p "$p") == [^Z]* ]] || return 1; done; }
for _ in $(seq 120); do
  running $ctld $slurmd || { why="slurmctld or slurmd exited"; break; }
  [ "$(sinfo -h -n "$host" -o %T 2>/dev/null)" = idle ] && exit 0
  sleep 0.5
done
echo "start-cluster: $why; sinfo says: $(sinfo -h -o '%T %E' 2>&1)" >&2
for f in "$STATE"/log/*; do echo "== $f" >&2; tail -n 30 "$f" >&2; done
exit 1   # the EXIT trap stops the daemons
