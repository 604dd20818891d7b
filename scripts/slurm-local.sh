#!/usr/bin/env bash
# A real single-node SLURM on this machine, for tests and for trying launcher=slurm:
#   scripts/slurm-local.sh start    install (Debian: slurmctld slurmd slurm-client munge) if missing, configure, start
#   scripts/slurm-local.sh stop     stop the daemons
#   scripts/slurm-local.sh status   sinfo
# Needs root. The daemons run as plain background processes (no systemd). There is no accounting
# database, so `sacct` is replaced by scripts/sacct-standin (the package's own is set aside with
# dpkg-divert and put back by `stop`), which answers submitit's one query from `scontrol show job`;
# MinJobAge keeps finished jobs visible to it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm-local

need_root() { [ "$(id -u)" = 0 ] || { echo "slurm-local.sh: needs root (apt-get, daemons)" >&2; exit 1; }; }

install_packages() {
  local missing=()
  for cmd in slurmctld slurmd sbatch munged; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null
  fi
}

configure() {
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS" /run/munge
  # The node's line from slurmd itself (its real CPUs and memory); its name must be `hostname -s`.
  local node
  node=$(slurmd -C | head -1)
  cat > "$CONF" <<CONF
# Written by scripts/slurm-local.sh: one node, no accounting, no cgroups.
ClusterName=local
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
# CR_Core, not CR_Core_Memory: jobs that ask for no memory may share the node
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=86400
KillWait=10
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOGS}/slurmctld.log
SlurmdLogFile=${LOGS}/slurmd.log
${node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
  if ! dpkg-divert --list /usr/bin/sacct | grep -q sacct; then
    dpkg-divert --quiet --local --rename --divert /usr/bin/sacct.slurm-local --add /usr/bin/sacct
  fi
  install -m 0755 "$HERE/sacct-standin" /usr/bin/sacct
}

start() {
  need_root
  install_packages
  configure
  chown munge:munge /run/munge 2>/dev/null || true
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "SLURM is up: $(sinfo -h -o '%P %D %T %c CPUs' | head -1) on node ${HOST}"
      return 0
    fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm-local.sh: the node did not come up; see ${LOGS}/" >&2
  exit 1
}

stop() {
  need_root
  for d in slurmd slurmctld munged; do pkill -x "$d" 2>/dev/null || true; done
  for _ in $(seq 20); do pgrep -x 'slurmd|slurmctld|munged' >/dev/null || break; sleep 0.5; done
  if dpkg-divert --list /usr/bin/sacct | grep -q sacct; then
    rm -f /usr/bin/sacct
    dpkg-divert --quiet --local --rename --remove /usr/bin/sacct
  fi
  echo "SLURM stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
