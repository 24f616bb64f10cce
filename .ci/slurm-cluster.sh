#!/usr/bin/env bash
# A one-node SLURM cluster on loopback, for nslab's engine tests (tests/test_engines_slurm.py
# starts and stops it; Debian's slurm-wlm and munge must be installed: .ci/engines-setup.sh).
#
#   .ci/slurm-cluster.sh start DIR   # writes DIR/slurm.conf, starts munged, slurmctld and slurmd,
#                                    # waits for the node to be idle; clients need SLURM_CONF=DIR/slurm.conf
#   .ci/slurm-cluster.sh stop DIR    # stops the three daemons started in DIR
#
# Everything lives in DIR (configuration, munge key and socket, state, spool, logs, pid files), on
# ports chosen free at start, so it touches no system-wide SLURM or munge set-up. Needs root: slurmd
# runs jobs as their user. Jobs are tracked by process tree (proctrack/linuxproc), so scancel also
# reaches a notebook's kernel, which jupyter starts in a session of its own.
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi

stop_pid() {  # stop the daemon whose pid is in file $1 (TERM, then KILL after 10 s)
  local file="$1" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file" 2>/dev/null || true)"
  rm -f "$file"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

if [ "$cmd" = stop ]; then
  dir="$(cd "$dir" && pwd)"
  # Jobs still running are ended with their node: slurmd first, then the controller, then munge.
  if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ]; then
    SLURM_CONF="$dir/slurm.conf" scancel --user="$(id -un)" 2>/dev/null || true
  fi
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  stop_pid "$dir/munged.pid"
  exit 0
fi
if [ "$cmd" != start ]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "slurm-cluster: needs root (slurmd runs jobs as their user)" >&2
  exit 1
fi
for tool in munged slurmctld slurmd sinfo; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin"
  command -v "$tool" >/dev/null 2>&1 || { echo "slurm-cluster: $tool not found (apt-get install slurm-wlm munge)" >&2; exit 1; }
done

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 700 "$dir/munge"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
ctld_port="$(free_port)"
slurmd_port="$(free_port)"
while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port="$(free_port)"; done
node="$(hostname -s)"
# The node's size as slurmd sees it (CPUs, sockets, cores, threads, memory).
node_hw="$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //')"

# munge: its own key, socket and state here; --force because DIR may sit under a world-writable /tmp.
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed"

cat > "$dir/slurm.conf" <<EOF
# Written by nslab's .ci/slurm-cluster.sh: a one-node cluster on 127.0.0.1 for tests.
ClusterName=nslab-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Quick turn-around for tests: jobs are scheduled, killed and forgotten within seconds.
SchedulerParameters=sched_interval=1
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeAddr=127.0.0.1 $node_hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

export SLURM_CONF="$dir/slurm.conf"
slurmctld -i -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

# Idle within 60 s, or show why not.
for _ in $(seq 600); do
  state="$(sinfo --noheader --nodes="$node" --format=%t 2>/dev/null || true)"
  if [ "$state" = idle ]; then
    echo "slurm-cluster: node $node idle (slurmctld port $ctld_port, slurmd port $slurmd_port)"
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.1
done
echo "slurm-cluster: node $node did not become idle (state: ${state:-unknown}); logs:" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" "$dir/munged.log" >&2 || true
"$0" stop "$dir"
exit 1
