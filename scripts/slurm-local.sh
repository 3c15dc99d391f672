#!/usr/bin/env bash
# Single-node Slurm cluster on this host, for the Slurm launcher's tests and for trying the Slurm
# path on a workstation (Debian/Ubuntu, as root; works without systemd, e.g. in a container).
#
#   scripts/slurm-local.sh up      install munge, slurmctld, slurmd, slurm-client if missing, write the
#                                  config (CPUs, memory of this host), start munged (unless one already
#                                  answers), slurmctld and slurmd, wait until the node is idle
#   scripts/slurm-local.sh status  daemons and node state; exit 0 only when the cluster is usable
#   scripts/slurm-local.sh down    cancel the cluster's jobs, stop the daemons `up` started (by pid)
#
# Clients find the cluster through SLURM_CONF only (nothing is written to /etc/slurm). After `up`:
#   export SLURM_CONF=/tmp/slurm-local/slurm.conf     (or: . /tmp/slurm-local/env.sh)
# (with $SLURM_LOCAL_DIR for /tmp/slurm-local when set). Jobs inherit it from sbatch's environment.
#
# No slurmdbd: `sacct` fails ("Slurm accounting storage is disabled"), so submitit's own job.state
# stays UNKNOWN. The harness does not use it: its `status` and `--wait` read squeue and submitit's
# result pickles (benchmark/job_status.py).
#
# State directory ${SLURM_LOCAL_DIR:-/tmp/slurm-local}: slurm.conf, env.sh, *.pid, state/
# (slurmctld), spool/ (slurmd), log/ (daemon logs, apt.log, jobcomp.log: a line per job end or
# requeue). `down` removes only the pid files: job ids keep counting across restarts.
# Process tracking is proctrack/linuxproc with task/none (cgroups fail in containers): CPU and
# memory requests are scheduling bookkeeping only, nothing is confined or enforced.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
export SLURM_CONF=$DIR/slurm.conf
NODE=$(hostname -s)
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}

usage() { echo "usage: $0 up|down|status   (state dir: \$SLURM_LOCAL_DIR, default /tmp/slurm-local)" >&2; exit 2; }
[ $# -eq 1 ] || usage

# pid recorded in $DIR/$1.pid and still that daemon (comm checked, so a reused pid is never touched)
daemon_pid() {
  local pid
  pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}
node_state() {  # never fails: "no answer" when slurmctld does not respond
  local s=""
  if [ -f "$SLURM_CONF" ]; then s=$(timeout 10 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1) || true; fi
  echo "${s:-no answer}"
}
healthy() {
  daemon_pid slurmctld >/dev/null && daemon_pid slurmd >/dev/null || return 1
  # exact states: a suffix (idle*: not responding, drain, ...) means unusable
  case $(node_state) in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}
show_logs() {
  for f in "$DIR"/log/{apt,slurmctld,slurmd}.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
}
die() { echo "slurm-local: $*" >&2; show_logs; exit 1; }

install_packages() {
  local missing=() p
  for p in munge slurmctld slurmd slurm-client; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (log: $DIR/log/apt.log) ..."
  # Keep the packages' postinst from starting daemons (invoke-rc.d honours policy-rc.d);
  # an existing policy-rc.d is left as it is.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod 755 $policy; made_policy=1; fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"; } >"$DIR/log/apt.log" 2>&1 || rc=$?
  [ $made_policy = 0 ] || rm -f $policy
  [ $rc = 0 ] || die "apt-get install ${missing[*]} failed"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi  # a munged already answers
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  local _
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n | unmunge >/dev/null || die "munge -n | unmunge fails"
  cp /run/munge/munged.pid "$DIR/munged.pid"  # marks it as ours: `down` stops it
}

write_config() {
  local cpus mem_mb margin
  cpus=$(nproc)
  mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
  margin=$(( mem_mb / 20 > 512 ? mem_mb / 20 : 512 ))  # slurmd drains the node if RealMemory > actual
  mem_mb=$(( mem_mb - margin ))
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  cat >"$SLURM_CONF.new" <<EOF
# written by scripts/slurm-local.sh, anew by each "up" that starts the daemons
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire+1 s before it may start again (default 120 s)
AuthInfo=cred_expire=10
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# no cgroups in containers: plain /proc process tracking, no task binding/confinement
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# scan pending jobs every 5 s (default 60/30 s), so requeued jobs start soon after they are eligible
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
# CPUs and memory are the consumables; jobs without --mem get DefMemPerCPU, so 1-CPU jobs share the node
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$(( mem_mb / cpus ))
# requeue allowed (submitit requeues itself on USR2); time limits enforced without grace
JobRequeue=1
OverTimeLimit=0
KillWait=5
MinJobAge=30
ReturnToService=2
MessageTimeout=10
SlurmdTimeout=60
SlurmctldTimeout=60
InactiveLimit=0
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$SLURM_CONF.new" "$SLURM_CONF"
}

write_env() {
  cat >"$DIR/env.sh" <<EOF
export SLURM_CONF=$SLURM_CONF
EOF
}

up() {
  [ "$(id -u)" = 0 ] || { echo "slurm-local: up needs root" >&2; exit 1; }
  mkdir -p "$DIR/log"
  write_env
  if healthy; then
    echo "slurm-local: already up (node $NODE $(node_state))"
  else
    install_packages
    start_munge
    # a running daemon keeps its config: rewrite it only when both are down
    if ! daemon_pid slurmctld >/dev/null && ! daemon_pid slurmd >/dev/null; then write_config; fi
    daemon_pid slurmctld >/dev/null || slurmctld -f "$SLURM_CONF" || die "slurmctld did not start"
    daemon_pid slurmd >/dev/null || slurmd -f "$SLURM_CONF" || die "slurmd did not start"
    # healthy = our two daemons alive and the node idle/mixed/allocated (not a node of another
    # cluster answering on the same ports)
    local t0=$SECONDS state resumed=0
    while ! healthy; do
      state=$(node_state)
      case $state in
        down*|drain*|fail*)  # e.g. left down by an earlier run: ReturnToService does not cover it
          [ $resumed = 1 ] || { scontrol update nodename="$NODE" state=resume 2>/dev/null || true; resumed=1; } ;;
      esac
      [ $((SECONDS - t0)) -lt "$WAIT_S" ] \
        || die "node $NODE not usable after ${WAIT_S}s (state: $state); \`$0 down\` stops what was started"
      sleep 1
    done
    echo "slurm-local: up in $((SECONDS - t0))s after start (node $NODE $(node_state), $(nproc) CPUs, partition debug)"
  fi
  echo "export SLURM_CONF=$SLURM_CONF"
  echo "# or: . $DIR/env.sh"
}

stop_daemons() {  # SIGTERM the named daemons (ours, by pid), wait up to 30 s, then SIGKILL
  local name pid pids=() _
  for name; do
    if pid=$(daemon_pid "$name"); then kill -TERM "$pid"; pids+=("$pid"); echo "stopping $name ($pid)"; fi
    rm -f "$DIR/$name.pid"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 60); do [ -d "/proc/$pid" ] || break; sleep 0.5; done
    [ -d "/proc/$pid" ] && { echo "slurm-local: pid $pid ignores SIGTERM, killing it" >&2; kill -KILL "$pid"; }
  done
  return 0
}

down() {
  [ "$(id -u)" = 0 ] || { echo "slurm-local: down needs root" >&2; exit 1; }
  # cancel the jobs first, so that no job processes outlive slurmd
  local jobs=() _
  daemon_pid slurmctld >/dev/null && mapfile -t jobs < <(timeout 10 squeue -h -o %A 2>/dev/null)
  if [ ${#jobs[@]} -gt 0 ]; then
    echo "cancelling jobs ${jobs[*]}"
    scancel "${jobs[@]}" 2>/dev/null || true
    for _ in $(seq 30); do [ -z "$(squeue -h -t R,CG -o %A 2>/dev/null)" ] && break; sleep 1; done
  fi
  stop_daemons slurmd slurmctld
  stop_daemons munged  # last: the slurm daemons use it until they exit
  echo "slurm-local: down (state kept in $DIR)"
}

status() {
  local name pid rc=0
  for name in munged slurmctld slurmd; do
    if pid=$(daemon_pid "$name"); then echo "$name: running (pid $pid)"
    elif [ $name = munged ] && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then echo "munged: running (not started by this script)"
    else echo "$name: not running"; rc=1; fi
  done
  # sinfo only when slurmctld runs (else it retries for ~10 s)
  echo "node $NODE: $(if daemon_pid slurmctld >/dev/null; then node_state; else echo "no controller"; fi)"
  [ $rc = 0 ] && healthy || rc=1
  [ $rc = 0 ] && echo "export SLURM_CONF=$SLURM_CONF"
  return $rc
}

case $1 in
  up) up ;;
  down) down ;;
  status) status ;;
  *) usage ;;
esac
