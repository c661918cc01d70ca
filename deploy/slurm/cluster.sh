#!/usr/bin/env bash
# A throwaway single-node Slurm cluster on this machine, for tests of deploy/slurm/incept.sbatch.
#
#   deploy/slurm/cluster.sh up DIR             # prints: export SLURM_CONF=DIR/slurm.conf
#   deploy/slurm/cluster.sh wait DIR JOBID [SECONDS]   # prints: STATE EXITCODE RESTARTS
#   deploy/slurm/cluster.sh down DIR
#
# Needs root and Debian's `slurm-wlm` (22.05) and `munge` packages:
#   apt-get install -y --no-install-recommends slurm-wlm munge
#
# Everything lives in DIR: slurm.conf and gres.conf, a private munged (its own key and socket, so
# the machine's /etc/munge and /run/munge are never touched), slurmctld's state, slurmd's spool,
# the pid files and the logs (DIR/log/). The node is this host (`hostname -s`, reached at
# 127.0.0.1) in one partition, `debug`, the default. No cgroups (proctrack/linuxproc, task/none)
# and no accounting: a job's final state is read from `scontrol show job` for MinJobAge seconds
# after it ends (`wait` does this).
#
# `up` starts munged, slurmctld and slurmd, waits (bounded) until the node is idle and prints the
# `export SLURM_CONF=...` line that sbatch, squeue, scontrol and scancel need; everything else it
# says goes to stderr, so `eval "$(deploy/slurm/cluster.sh up DIR)"` works. If a daemon fails it
# shows the end of that daemon's log, stops what it started and exits 1. `down` cancels the jobs,
# shuts the daemons down and waits for every process it started to exit (found by their pid
# files; a job's leftover slurmstepd by its open slurmd log, with the job's processes under it),
# killing stragglers after a bound; it is a no-op when nothing runs. An already running munged
# of DIR is reused by `up`. `wait` polls until job JOBID reaches a final state (default 300 s).
#
# Knobs (environment, read by `up`):
#   INCEPT_SLURM_CPUS         CPUs the node declares (default: nproc). More than the machine has
#                             is allowed (SlurmdParameters=config_overrides), so a 2-CPU machine
#                             can run a 4-task job.
#   INCEPT_SLURM_GPUS         GPUs the node declares (default: INCEPT_SLURM_CPUS; 0 for none):
#                             a `gpu` gres whose devices are copies of /dev/null in DIR/dev, so
#                             `--gpus-per-task=1` schedules, and Slurm sets CUDA_VISIBLE_DEVICES,
#                             on a machine without GPUs.
#   INCEPT_SLURM_PORT         slurmctld's port; slurmd takes the next one (default: 16817, away
#                             from a real cluster's 6817/6818).
#   INCEPT_SLURM_CRED_EXPIRE  AuthInfo cred_expire, seconds (default: 10; Slurm's is 120, its
#                             minimum 5). A requeued job is held for cred_expire + 1 seconds
#                             before it may start again, so this is the requeue delay.
#   INCEPT_SLURM_MIN_JOB_AGE  seconds a finished job stays visible to scontrol (default: 120).
set -euo pipefail

PROG=cluster.sh
UP_TIMEOUT=30   # seconds for each daemon to come up, and for the node to turn idle
DOWN_TIMEOUT=30 # seconds for the jobs to end and for each daemon to exit

usage() {
  echo "usage: $PROG up DIR | down DIR | wait DIR JOBID [SECONDS]" >&2
  exit 2
}

say() { echo "$PROG: $*" >&2; }

die() {
  say "error: $*"
  exit 1
}

# The pid in pid file $1 (DIR/.../NAME.pid) when that process runs and is NAME (not another
# that took a stale file's pid); nothing, and status 1, otherwise.
live_pid() {
  local pid name
  name=$(basename "$1" .pid)
  [ -s "$1" ] || return 1
  pid=$(tr -dc '0-9' <"$1")
  [ -n "$pid" ] && alive "$pid" || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
  echo "$pid"
}

# Whether process $1 runs (a zombie, waiting for its parent to reap it, does not).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # the fields after "(command) "; the command may hold spaces
  [ "${stat%% *}" != Z ]
}

# Waits up to $2 seconds for process $1 to exit; status 1 if it is still there.
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while alive "$pid"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# Stops the process in pid file $2 (named $1): SIGTERM, then SIGKILL after DOWN_TIMEOUT.
stop_pidfile() {
  local name=$1 pidfile=$2 pid
  pid=$(live_pid "$pidfile") || { rm -f "$pidfile"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_exit "$pid" "$DOWN_TIMEOUT"; then
    say "$name (pid $pid) ignored SIGTERM for ${DOWN_TIMEOUT}s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait_exit "$pid" 5 || say "$name (pid $pid) survived SIGKILL"
  fi
  rm -f "$pidfile"
  say "stopped $name (pid $pid)"
}

# Shows the last lines of log $2 of daemon $1, stops whatever `up` started and exits 1.
fail_daemon() {
  local name=$1 log=$2
  say "error: $name did not come up; the end of $log:"
  tail -n 25 "$log" >&2 2>/dev/null || say "($log is missing)"
  down || true
  exit 1
}

write_conf() {
  local host=$1 cpus=$2 gpus=$3 port=$4 cred_expire=$5 min_job_age=$6
  local overrides="" gres_types="" node_gres=""
  if [ "$cpus" -gt "$(nproc)" ]; then
    overrides="SlurmdParameters=config_overrides"
  fi
  if [ "$gpus" -gt 0 ]; then
    gres_types="GresTypes=gpu"
    node_gres="Gres=gpu:$gpus"
  fi
  cat >"$DIR/slurm.conf" <<EOF
# Written by deploy/slurm/cluster.sh: a throwaway single-node cluster, all state under $DIR.
ClusterName=incept-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
# A private munged: its socket is here, and cred_expire is also the requeue delay.
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=$cred_expire
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# No cgroups in a container; no accounting database.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
# Look at pending jobs every second, so a requeued job starts soon after its hold ends.
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
$overrides
$gres_types
ReturnToService=2
JobRequeue=1
MinJobAge=$min_job_age
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus $node_gres State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  # slurmd drops a gpu gres without File=, and wants character devices there: DIR/dev/nvidiaN,
  # copies of /dev/null. Slurm numbers the GPUs from the names (CUDA_VISIBLE_DEVICES=0,1,...).
  rm -rf "${DIR:?}/dev" "${DIR:?}/gres.conf"
  if [ "$gpus" -gt 0 ]; then
    local i
    mkdir -p "$DIR/dev"
    for ((i = 0; i < gpus; i++)); do
      mknod "$DIR/dev/nvidia$i" c 1 3 2>/dev/null || touch "$DIR/dev/nvidia$i"
    done
    echo "NodeName=$host Name=gpu File=$DIR/dev/nvidia[0-$((gpus - 1))]" >"$DIR/gres.conf"
  fi
}

start_munged() {
  local m=$DIR/munge
  if live_pid "$m/munged.pid" >/dev/null; then
    say "munged already running (pid $(live_pid "$m/munged.pid"))"
    return 0
  fi
  # munged wants its key readable by its user only, and refuses a socket whose folder or any
  # folder above it is not executable by all (a 0700 `mktemp -d` holding DIR), unless --force:
  # then it only warns. Clients other than root would need that access; this cluster's are root.
  mkdir -p "$m"
  chmod 0711 "$m"
  if [ ! -s "$m/munge.key" ]; then
    dd if=/dev/urandom of="$m/munge.key" bs=1024 count=1 status=none
  fi
  chmod 0400 "$m/munge.key"
  munged --force --socket="$m/munge.socket" --key-file="$m/munge.key" --pid-file="$m/munged.pid" \
    --log-file="$m/munged.log" --seed-file="$m/munged.seed" </dev/null >>"$m/munged.log" 2>&1 ||
    fail_daemon munged "$m/munged.log"
  munge -S "$m/munge.socket" -n </dev/null | unmunge -S "$m/munge.socket" >/dev/null 2>&1 ||
    fail_daemon munged "$m/munged.log"
  say "munged up (pid $(live_pid "$m/munged.pid"), socket $m/munge.socket)"
}

# Starts daemon $1 (slurmctld or slurmd), which forks into the background and writes its pid
# file, then runs check command "${@:2}" until it succeeds (bounded).
start_slurm_daemon() {
  local name=$1 pidfile=$DIR/run/$1.pid log=$DIR/log/$1.log deadline
  shift
  if live_pid "$pidfile" >/dev/null; then
    die "$name from $DIR is already running (pid $(live_pid "$pidfile")); run '$PROG down $DIR' first"
  fi
  rm -f "$pidfile"
  "$name" -f "$SLURM_CONF" </dev/null >>"$log" 2>&1 || fail_daemon "$name" "$log"
  deadline=$((SECONDS + UP_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if [ -s "$pidfile" ] && ! live_pid "$pidfile" >/dev/null; then
      fail_daemon "$name" "$log" # it wrote its pid and died
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail_daemon "$name" "$log"
    sleep 0.2
  done
  say "$name up (pid $(live_pid "$pidfile" || echo '?'))"
}

ctld_answers() { scontrol ping | grep -q 'is UP'; }

node_state() { sinfo -h -N -n "$HOST" -o %t 2>/dev/null; }

node_idle() { [ "$(node_state)" = idle ]; }

up() {
  [ "$(id -u)" -eq 0 ] || die "needs root (slurmd runs jobs as their users)"
  local cmd
  for cmd in munged munge unmunge slurmctld slurmd sinfo scontrol; do
    command -v "$cmd" >/dev/null ||
      die "$cmd not found: apt-get install -y --no-install-recommends slurm-wlm munge"
  done
  local cpus=${INCEPT_SLURM_CPUS:-$(nproc)}
  local gpus=${INCEPT_SLURM_GPUS:-$cpus}
  mkdir -p "$DIR"/{state,spool,log,run}
  chmod 0755 "$DIR"
  write_conf "$HOST" "$cpus" "$gpus" "${INCEPT_SLURM_PORT:-16817}" \
    "${INCEPT_SLURM_CRED_EXPIRE:-10}" "${INCEPT_SLURM_MIN_JOB_AGE:-120}"
  start_munged
  start_slurm_daemon slurmctld ctld_answers
  start_slurm_daemon slurmd node_idle
  say "node $HOST idle: $cpus CPUs, $gpus GPUs (fake devices), partition debug"
  echo "export SLURM_CONF=$SLURM_CONF"
}

# Pids of the slurmstepd processes of this cluster: they hold its slurmd log open.
stepd_pids() {
  local fd pid
  for fd in /proc/[0-9]*/fd/*; do
    [ "$(readlink "$fd" 2>/dev/null)" = "$DIR/log/slurmd.log" ] || continue
    pid=${fd#/proc/}
    pid=${pid%%/*}
    if [ "$(cut -c1-10 "/proc/$pid/cmdline" 2>/dev/null)" = slurmstepd ]; then
      echo "$pid"
    fi
  done | sort -u
}

# Process $1 and all its descendants, parents first.
tree_pids() {
  local child
  echo "$1"
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    tree_pids "$child"
  done
}

down() {
  local ctld slurmd pid jobs deadline
  ctld=$(live_pid "$DIR/run/slurmctld.pid") || ctld=""
  slurmd=$(live_pid "$DIR/run/slurmd.pid") || slurmd=""
  if [ -n "$ctld" ] && ctld_answers; then
    # Cancel every job (TERM, KillWait, KILL) and wait until none runs or completes.
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      say "cancelling jobs: $jobs"
      # shellcheck disable=SC2086 # one word per job id
      scancel $jobs 2>/dev/null || true
      deadline=$((SECONDS + DOWN_TIMEOUT))
      while [ -n "$(squeue -h -t RUNNING,COMPLETING,CONFIGURING -o %A 2>/dev/null)" ] &&
        [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
      done
    fi
    # Stops slurmctld and every slurmd; slurmctld saves its state first.
    scontrol shutdown >/dev/null 2>&1 || true
    for pid in $slurmd $ctld; do
      wait_exit "$pid" "$DOWN_TIMEOUT" || true
    done
    [ -z "$slurmd" ] || alive "$slurmd" || say "slurmd (pid $slurmd) shut down"
    alive "$ctld" || say "slurmctld (pid $ctld) shut down"
  fi
  # Whatever is left (slurmctld was not answering, or a daemon ignored the shutdown).
  stop_pidfile slurmd "$DIR/run/slurmd.pid"
  stop_pidfile slurmctld "$DIR/run/slurmctld.pid"
  # slurmd leaves running job steps alone: a slurmstepd left is this cluster's, and goes with
  # the job's processes under it.
  local stepd cmd
  for stepd in $(stepd_pids); do
    for pid in $(tree_pids "$stepd"); do
      cmd=$(tr '\0\n' '  ' <"/proc/$pid/cmdline" 2>/dev/null) || continue # gone already
      say "killing leftover ${cmd:0:100} (pid $pid)"
      kill -KILL "$pid" 2>/dev/null || true
      wait_exit "$pid" 5 || say "pid $pid survived SIGKILL"
    done
  done
  stop_pidfile munged "$DIR/munge/munged.pid"
  say "down: no daemon of $DIR runs"
}

# Polls job $1 until it reaches a final state (bounded by $2 seconds) and prints
# "STATE EXITCODE RESTARTS" (for example "COMPLETED 0:0 1"). A requeued job passes through
# REQUEUED and PENDING, which are not final. Exits 1 on timeout, or if scontrol no longer
# knows the job (MinJobAge passed: read its output file instead).
wait_job() {
  local job=$1 deadline=$((SECONDS + $2)) line state
  while :; do
    line=$(scontrol -o show job "$job" 2>/dev/null) ||
      die "scontrol does not know job $job (ended more than MinJobAge ago, or never existed)"
    state=$(grep -o 'JobState=[A-Z_]*' <<<"$line" | cut -d= -f2)
    case $state in
    COMPLETED | CANCELLED | FAILED | TIMEOUT | NODE_FAIL | PREEMPTED | BOOT_FAIL | DEADLINE | OUT_OF_MEMORY)
      echo "$state $(grep -o ' ExitCode=[0-9:]*' <<<"$line" | cut -d= -f2)" \
        "$(grep -o 'Restarts=[0-9]*' <<<"$line" | cut -d= -f2)"
      return 0
      ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || die "job $job still $state after $2 s"
    sleep 0.5
  done
}

[ $# -ge 2 ] || usage
ACTION=$1
if [ "$ACTION" = up ]; then
  mkdir -p "$2"
elif [ ! -d "$2" ] && [ "$ACTION" = down ]; then
  say "down: $2 does not exist: nothing to stop"
  exit 0
elif [ ! -d "$2" ]; then
  die "$2 is not a folder"
fi
DIR=$(cd "$2" && pwd -P)
HOST=$(hostname -s)
export SLURM_CONF=$DIR/slurm.conf
case $ACTION in
up | down)
  [ $# -eq 2 ] || usage
  "$ACTION"
  ;;
wait)
  if [ $# -lt 3 ] || [ $# -gt 4 ]; then usage; fi
  wait_job "$3" "${4:-300}"
  ;;
*) usage ;;
esac
