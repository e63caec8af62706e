#!/usr/bin/env bash
# Stops the process node started by e2e/scripts/node-up.sh: TERM (the node stops its container processes:
# TERM, then KILL after 5 s), then KILL after NODE_STOP_TIMEOUT seconds (default 20). Only the pid in
# e2e/.world/pids/node.pid is signalled, and only if it runs an e2e-node binary. Idempotent.
# The Node object stays (it turns NotReady like a stopped kubelet's); --delete-node removes it too.
#
# Environment: E2E_WORLD, E2E_NODE_NAME (e2e-node), NODE_STOP_TIMEOUT.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORLD=${E2E_WORLD:-$(cd "$HERE/.." && pwd)/.world}
NODE=${E2E_NODE_NAME:-e2e-node}
PIDFILE=$WORLD/pids/node.pid
STOP_TIMEOUT=${NODE_STOP_TIMEOUT:-20}
DELETE_NODE=0
for a in "$@"; do
  case $a in
    --delete-node) DELETE_NODE=1 ;;
    *) echo "usage: $0 [--delete-node]" >&2; exit 2 ;;
  esac
done
say() { printf '[node] %s\n' "$*" >&2; }

if [ -s "$PIDFILE" ]; then
  pid=$(cat "$PIDFILE")
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  if [ "$(basename "${exe% (deleted)}")" = e2e-node ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((STOP_TIMEOUT * 10))); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "pid $pid still running after ${STOP_TIMEOUT}s: KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped (pid $pid)"
  fi
  rm -f "$PIDFILE"
else
  say "not running"
fi

if [ "$DELETE_NODE" = 1 ] && [ -s "$WORLD/kubeconfig" ]; then
  # shellcheck disable=SC1091
  [ -f "$WORLD/control-plane.env" ] && . "$WORLD/control-plane.env"
  "${KUBECTL:-kubectl}" --kubeconfig "$WORLD/kubeconfig" delete node "$NODE" --ignore-not-found >/dev/null
  say "node $NODE deleted"
fi
