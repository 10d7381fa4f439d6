#!/usr/bin/env bash
# Runs a command on "a machine half as fast": in a CPU cgroup whose quota is half of this
# machine's cores (2 cores -> 1 CPU-second per second), so work that keeps every core busy takes
# twice as long. Work on one thread is not slowed while the other cores idle (the quota is shared),
# so the emulation is lenient for serial phases (the main job's set-up, about 8 s).
#
# Needs root and a writable cgroup file system (v2 cpu.max or v1 cpu.cfs_quota_us).
# Usage: benchmarks/half_speed.sh make train
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
cores=$(nproc)
period=100000
quota=$((period * cores / 2))
name="actorlearner-half-$$"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then  # cgroup v2
  group=/sys/fs/cgroup/$name
  mkdir "$group"
  echo "$quota $period" > "$group/cpu.max"
elif [ -d /sys/fs/cgroup/cpu ]; then  # cgroup v1
  group=/sys/fs/cgroup/cpu/$name
  mkdir "$group"
  echo "$period" > "$group/cpu.cfs_period_us"
  echo "$quota" > "$group/cpu.cfs_quota_us"
else
  echo "$0: no writable CPU cgroup (needs root and /sys/fs/cgroup)" >&2
  exit 2
fi
parent=$(dirname "$group")
cleanup() { echo $$ > "$parent/cgroup.procs" 2>/dev/null && rmdir "$group" 2>/dev/null || true; }
trap cleanup EXIT
echo $$ > "$group/cgroup.procs"
echo "$0: $cores cores at a quota of $quota/$period us ($group)" >&2
start=$(date +%s)
status=0
"$@" || status=$?
echo "$0: exit $status after $(( $(date +%s) - start )) s" >&2
exit $status
