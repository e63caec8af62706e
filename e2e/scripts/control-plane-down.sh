#!/usr/bin/env bash
# Stops the local e2e world's Kubernetes control plane started by e2e/scripts/control-plane-up.sh, by pid
# (e2e/.world/pids/<name>.pid): kube-scheduler, kube-controller-manager, kube-apiserver, then etcd;
# TERM, then KILL after CP_STOP_TIMEOUT seconds (default 15; 5 for kube-apiserver). Only processes whose pid file names them and
# that run our cached binary are signalled. Idempotent.
#
#   --wipe   also delete etcd's data (e2e/.world/etcd): the next start is a brand-new cluster (PKI is kept).
#
# Environment: E2E_WORLD (default <repo>/e2e/.world), CP_STOP_TIMEOUT.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORLD=${E2E_WORLD:-$(cd "$HERE/.." && pwd)/.world}
PIDS=$WORLD/pids
STOP_TIMEOUT=${CP_STOP_TIMEOUT:-15}
WIPE=0
for a in "$@"; do
  case $a in
    --wipe) WIPE=1 ;;
    *) echo "usage: $0 [--wipe]" >&2; exit 2 ;;
  esac
done

say() { printf '[control-plane] %s\n' "$*" >&2; }
[ -d "$WORLD" ] || exit 0
exec 9>"$WORLD/control-plane.lock"
flock -w 300 9 || { say "ERROR: another control-plane-up/down holds $WORLD/control-plane.lock"; exit 1; }

stop() {
  local name=$1 f=$PIDS/$1.pid pid exe i
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  exe=${exe% (deleted)}
  if ! kill -0 "$pid" 2>/dev/null || [ "$(basename "$exe")" != "$name" ]; then
    say "$name not running (stale pid file)"; rm -f "$f" "$PIDS/$name.args"; return 0
  fi
  # kube-apiserver's graceful shutdown waits (up to 60 s) for clients' open HTTP/2 watch streams; all its
  # state is in etcd, so it gets at most 5 s before KILL.
  local t=$STOP_TIMEOUT
  [ "$name" = kube-apiserver ] && [ "$t" -gt 5 ] && t=5
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq $((t * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) still running ${t}s after TERM: KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$f" "$PIDS/$name.args"
  say "$name (pid $pid) stopped"
}

for n in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$n"; done

if [ "$WIPE" = 1 ]; then
  rm -rf "$WORLD/etcd"
  say "etcd data wiped ($WORLD/etcd)"
fi
