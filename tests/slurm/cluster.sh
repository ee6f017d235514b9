#!/bin/bash
# A real Slurm cluster on one machine, for testing slurm/*.sbatch (design: /work/shared/design/SLURM_CI.md).
#
#   tests/slurm/cluster.sh start  BASE [NNODES=2] [CPUS=96] [GPUS=8]   # idempotent; nodes idle on return
#   tests/slurm/cluster.sh exec   BASE CMD [ARGS...]                   # a Slurm client against this cluster
#   tests/slurm/cluster.sh status BASE                                 # exit 0 iff the controller answers
#   tests/slurm/cluster.sh stop   BASE                                 # idempotent; kills all it started
#
# BASE (from `mktemp -d`) holds all state: slurm.conf, munge key and socket, logs, spool, fake GPU devices.
# A hub namespace (hostname ctl) holds the bridge br0 (10.250.0.254/24) and slurmctld; node<i> is a
# net+uts+mount namespace with eth0 = 10.250.0.<i>, its own hostname and /etc/hosts, running slurmd -N node<i>.
# These addresses exist only inside namespaces made here, none with a default route: nothing leaves the
# machine, the host network gets no interface, route or port, and two clusters can run side by side.
# munged stays in the host namespace (reached through its socket file under BASE). Needs root.
# Clients must run in the hub's network namespace (`exec` does that); jobs inherit the submit environment.
set -euo pipefail
shopt -s nullglob
usage() { sed -n '4,7p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 BASE=$2
NET=10.250.0
R=$BASE/run
export SLURM_CONF=$BASE/etc/slurm.conf

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
hub_pid() { cat "$R/ns-ctl.pid"; }
in_hub() { nsenter --net="/proc/$(hub_pid)/ns/net" -- "$@"; }

stop() {  # daemons by PID (they save state), then every process left in the cluster's namespaces
  local f p ns self pids=()
  [ -d "$R" ] || return 0
  for f in "$R"/slurm*.pid "$R"/munged.pid; do
    if alive "$f"; then p=$(cat "$f"); kill "$p" 2>/dev/null || true; pids+=("$p"); fi
    rm -f "$f"
  done
  for _ in $(seq 50); do  # up to 5 s for a clean exit
    local left=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break; sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  self=$(readlink /proc/$$/ns/net)
  for f in "$R"/ns-*.pid; do  # the holder, slurmd/slurmstepd, job processes, clients entered into it
    ns=$(readlink "/proc/$(cat "$f")/ns/net" 2>/dev/null) || ns=$self
    if [ "$ns" != "$self" ]; then   # never sweep the host's own namespace
      for p in /proc/[0-9]*; do
        if [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$ns" ]; then kill -9 "${p#/proc/}" 2>/dev/null || true; fi
      done
    fi
    rm -f "$f"
  done
}

hold() {  # hold NAME: a net+uts+mount namespace kept alive by `sleep`; hostname NAME; own /etc/hosts
  setsid unshare --net --uts --mount --propagation private --fork sh -c \
    "echo \$\$ > '$R/ns-$1.pid'; hostname '$1'; mount --bind '$BASE/etc/hosts' /etc/hosts; exec sleep infinity" \
    </dev/null >/dev/null 2>&1 &
  for _ in $(seq 50); do [ -s "$R/ns-$1.pid" ] && return 0; sleep 0.1; done
  echo "cluster.sh: namespace $1 did not start" >&2; return 1
}

status() { [ -s "$R/ns-ctl.pid" ] && alive "$R/slurmctld.pid" && in_hub scontrol ping 2>/dev/null | grep -q UP; }

start() {
  local NN=${1:-2} CPN=${2:-96} GPN=${3:-8} i g P HUB
  if [ "$(id -u)" -ne 0 ]; then echo "cluster.sh: needs root (namespaces, mknod, munge)" >&2; return 1; fi
  for c in slurmctld slurmd munged mungekey ip unshare nsenter; do
    command -v "$c" >/dev/null || { echo "cluster.sh: $c missing; run tests/slurm/install.sh" >&2; return 1; }
  done
  status && return 0  # already up: keep it (and its jobs)
  stop  # leftovers of a failed or partial start
  chmod 0755 "$BASE"  # mktemp -d gives 0700; munged runs as user munge
  mkdir -p "$BASE"/{etc,log,spool/ctld,munge,fakedev} "$R"
  chown munge:munge "$BASE/munge"; chmod 0755 "$BASE/munge"
  [ -f "$BASE/munge/munge.key" ] || runuser -u munge -- mungekey -c -k "$BASE/munge/munge.key"  # /etc/munge untouched
  runuser -u munge -- munged --socket="$BASE/munge/munge.socket.2" --key-file="$BASE/munge/munge.key" \
    --pid-file="$BASE/munge/munged.pid" --log-file="$BASE/munge/munged.log" --seed-file="$BASE/munge/munged.seed"
  cp "$BASE/munge/munged.pid" "$R/munged.pid"
  { echo "127.0.0.1 localhost"; echo "$NET.254 ctl"
    for i in $(seq "$NN"); do echo "$NET.$i node$i"; done; } > "$BASE/etc/hosts"
  for g in $(seq 0 $((GPN - 1))); do  # character devices: GRES refuses regular files
    [ -e "$BASE/fakedev/nvidia$g" ] || mknod "$BASE/fakedev/nvidia$g" c 1 3
  done
  echo "Name=gpu File=$BASE/fakedev/nvidia[0-$((GPN - 1))]" > "$BASE/etc/gres.conf"
  cat > "$BASE/etc/slurm.conf" <<CONF
ClusterName=ci
SlurmctldHost=ctl($NET.254)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$BASE/munge/munge.socket.2
MailProg=/bin/true
SlurmctldPidFile=$BASE/log/slurmctld.pidfile
SlurmdPidFile=$BASE/log/slurmd-%n.pidfile
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
StateSaveLocation=$BASE/spool/ctld
SlurmdSpoolDir=$BASE/spool/%n
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
GresTypes=gpu
NodeName=DEFAULT CPUs=$CPN RealMemory=512000 Gres=gpu:$GPN State=UNKNOWN
$(for i in $(seq "$NN"); do echo "NodeName=node$i NodeHostname=node$i NodeAddr=$NET.$i"; done)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=train Nodes=ALL MaxTime=INFINITE State=UP
CONF
  hold ctl; HUB=$(hub_pid)
  nsenter -t "$HUB" -n sh -c "ip link set lo up && ip link add br0 type bridge &&
    ip addr add $NET.254/24 dev br0 && ip link set br0 up"
  setsid nsenter -t "$HUB" -n -u -m slurmctld -D -c -f "$SLURM_CONF" \
    >"$BASE/log/slurmctld.stdout" 2>&1 </dev/null &
  echo $! > "$R/slurmctld.pid"
  for i in $(seq "$NN"); do
    mkdir -p "$BASE/spool/node$i"; hold "node$i"; P=$(cat "$R/ns-node$i.pid")
    nsenter -t "$HUB" -n sh -c "ip link add vn$i type veth peer name eth0 netns $P &&
      ip link set vn$i master br0 && ip link set vn$i up"
    nsenter -t "$P" -n sh -c "ip link set lo up && ip addr add $NET.$i/24 dev eth0 && ip link set eth0 up"
    setsid nsenter -t "$P" -n -u -m slurmd -D -N "node$i" -f "$SLURM_CONF" \
      >"$BASE/log/slurmd-node$i.stdout" 2>&1 </dev/null &
    echo $! > "$R/slurmd-node$i.pid"
  done
  for _ in $(seq 60); do
    [ "$(in_hub sinfo -h -t idle -o %D 2>/dev/null)" = "$NN" ] && return 0
    sleep 0.5
  done
  echo "cluster.sh: cluster did not come up; see $BASE/log" >&2
  return 1
}

case $cmd in
  start)
    shift 2
    if ! start "$@"; then stop; exit 1; fi ;;
  stop) stop ;;
  status) status ;;
  exec)
    shift 2; [ $# -ge 1 ] || usage
    [ -s "$R/ns-ctl.pid" ] || { echo "cluster.sh: no cluster in $BASE" >&2; exit 1; }
    exec nsenter --net="/proc/$(hub_pid)/ns/net" -- "$@" ;;
  *) usage ;;
esac
