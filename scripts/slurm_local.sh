#!/usr/bin/env bash
# A single-node Slurm cluster on 127.0.0.1 for the Slurm backend's tests (and for trying
# `runner run --backend slurm` on one machine). Debian's slurm-wlm (22.05 on bookworm), no munge
# (auth/none + cred/none), proctrack/linuxproc, task/none, jobcomp/filetxt; jobs run as root.
#
#   scripts/slurm_local.sh start    install if absent, write the config, start the daemons, wait
#                                   until the node is idle
#   scripts/slurm_local.sh stop     stop the daemons started here (by the pids they recorded)
#   scripts/slurm_local.sh status   sinfo
#
# State, logs and pid files live in $SLURM_LOCAL_DIR (default: results/slurm-local in the repo).
# The config is /etc/slurm/slurm.conf, where the Slurm clients look for it; a config this script
# did not write is left alone (start fails).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
state="${SLURM_LOCAL_DIR:-$repo/results/slurm-local}"
conf=/etc/slurm/slurm.conf
marker="# written by runner's scripts/slurm_local.sh"

die() { echo "slurm_local: $*" >&2; exit 1; }

install_slurm() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "Slurm is not installed and installing it needs root (apt-get install slurm-wlm)"
  command -v apt-get >/dev/null || die "Slurm is not installed and there is no apt-get to install it"
  echo "slurm_local: installing slurm-wlm (its recommended plugins are not needed)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm >"$state/apt.log" 2>&1 \
    || { apt-get update -q >>"$state/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm >>"$state/apt.log" 2>&1; } \
    || die "apt-get install slurm-wlm failed; see $state/apt.log"
}

write_conf() {
  if [ -e "$conf" ] && ! grep -qF "$marker" "$conf"; then
    die "$conf exists and was not written by this script; not replacing it"
  fi
  local host node cpus mem
  host="$(hostname -s)"
  # The node's real CPUs and memory, as slurmd itself detects them.
  node="$(slurmd -C | head -n 1)"
  cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")"
  mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")"
  [ -n "$cpus" ] && [ -n "$mem" ] || die "could not read CPUs/RealMemory from 'slurmd -C': $node"
  mkdir -p /etc/slurm "$state/ctld" "$state/d"
  cat >"$conf" <<EOF
$marker
# State in $state
ClusterName=runner-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobCompType=jobcomp/filetxt
JobCompLoc=$state/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem / cpus))
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for 10 minutes (the runner polls them).
MinJobAge=600
# A stage stopped at its time limit gets SIGTERM, then SIGKILL 10 s later.
KillWait=10
InactiveLimit=0
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

pid_of() { [ -s "$state/$1.pid" ] && cat "$state/$1.pid"; }
alive() { local pid; pid="$(pid_of "$1")" && kill -0 "$pid" 2>/dev/null; }

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n 1; }

start() {
  mkdir -p "$state"
  install_slurm
  if alive slurmctld && alive slurmd && [ "$(node_state)" = idle ]; then
    echo "slurm_local: already running (state in $state)"
    return 0
  fi
  stop >/dev/null 2>&1 || true
  write_conf
  # Not `-c`: the saved state keeps the job id counter, so ids recorded in an earlier results
  # directory (slurm/jobs.json) never name another job after a restart.
  slurmctld || die "slurmctld did not start; see $state/slurmctld.log"
  slurmd || die "slurmd did not start; see $state/slurmd.log"
  for _ in $(seq 1 60); do
    case "$(node_state)" in
      idle) echo "slurm_local: node $(hostname -s) idle (state in $state)"; return 0 ;;
      down* | drain*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  die "the node did not become idle within 60 s (state: $(node_state)); see $state/slurmctld.log and $state/slurmd.log"
}

stop() {
  local name pid
  for name in slurmd slurmctld; do
    if pid="$(pid_of "$name")" && kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      echo "slurm_local: stopped $name (pid $pid)"
    fi
    rm -f "$state/$name.pid"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
