#!/usr/bin/env bash
# Runs a command on "a machine half as fast": in a CPU cgroup whose quota is half of this
# machine's online processors (2 -> 1 CPU-second per second), so work that keeps every core busy
# takes about twice as long. Work on one thread is not slowed while the other cores idle (the
# quota is shared), so the emulation is lenient for serial phases (the main job's set-up, ~8 s).
# The processor count ignores OMP_NUM_THREADS and any quota this machine already runs under.
#
# Needs root and a writable cgroup file system (v2 cpu.max or v1 cpu.cfs_quota_us). Processes the
# command leaves behind are moved out of the group (unthrottled) when this script exits.
# Usage: benchmarks/half_speed.sh make train
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
cores=$(getconf _NPROCESSORS_ONLN)
period=100000
quota=$((period * cores / 2))
name="actorlearner-half-$$"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then  # cgroup v2
  parent=/sys/fs/cgroup
  grep -qw cpu "$parent/cgroup.subtree_control" || echo +cpu > "$parent/cgroup.subtree_control" || {
    echo "$0: cannot enable the cpu controller in $parent (needs root)" >&2; exit 2; }
elif [ -d /sys/fs/cgroup/cpu ]; then  # cgroup v1
  parent=/sys/fs/cgroup/cpu
else
  echo "$0: no CPU cgroup under /sys/fs/cgroup" >&2
  exit 2
fi
group=$parent/$name
mkdir "$group" || { echo "$0: cannot create $group (needs root)" >&2; exit 2; }
cleanup() {
  local pid
  while read -r pid; do echo "$pid" > "$parent/cgroup.procs" 2>/dev/null || true; done < "$group/cgroup.procs"
  rmdir "$group" 2>/dev/null || echo "$0: could not remove $group" >&2
}
trap cleanup EXIT
if [ -f "$group/cpu.max" ]; then
  echo "$quota $period" > "$group/cpu.max"
else
  echo "$period" > "$group/cpu.cfs_period_us"
  echo "$quota" > "$group/cpu.cfs_quota_us"
fi
echo $$ > "$group/cgroup.procs"
echo "$0: $cores processors at a quota of $quota/$period us ($group)" >&2
start=$(date +%s)
status=0
"$@" || status=$?
echo "$0: exit $status after $(( $(date +%s) - start )) s" >&2
exit $status
