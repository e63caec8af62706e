#!/usr/bin/env bash
# Stops the real node started by node-up.sh: the kubelet and kube-proxy, then every container (through
# containerd's own API: each task killed, so no shim outlives its sandbox), containerd, the mounts left
# under the node's state directory, and with --net also the node network (node-net.sh down).
# Only processes whose pid files name them are signalled. Idempotent.
# The Node object stays (NotReady, as with a stopped kubelet); --delete-node removes it too.
#
# Environment: E2E_WORLD, E2E_NODE_NAME (e2e-node).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORLD=${E2E_WORLD:-$(cd "$HERE/.." && pwd)/.world}
export E2E_WORLD=$WORLD
NODE=${E2E_NODE_NAME:-e2e-node}
DIR=$WORLD/node
SOCK=$DIR/containerd/containerd.sock
DELETE_NODE=0 NET=0
for a in "$@"; do
  case $a in
    --delete-node) DELETE_NODE=1 ;;
    --net) NET=1 ;;
    *) echo "usage: $0 [--delete-node] [--net]" >&2; exit 2 ;;
  esac
done
say() { printf '[node] %s\n' "$*" >&2; }

stop() { # stop NAME: TERM, then KILL after 10 s, if pids/NAME.pid runs NAME
  local pid
  pid=$(cat "$WORLD/pids/$1.pid" 2>/dev/null) || return 0
  if [ -n "$pid" ] && [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)" 2>/dev/null)" = "$1" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    say "$1 stopped (pid $pid)"
  fi
  rm -f "$WORLD/pids/$1.pid"
}

stop kubelet
stop kube-proxy
if [ -S "$SOCK" ] && ctr -a "$SOCK" version >/dev/null 2>&1; then
  tasks=$(ctr -a "$SOCK" -n k8s.io tasks ls -q 2>/dev/null || true)
  for t in $tasks; do ctr -a "$SOCK" -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1 || true; done
  for t in $tasks; do
    for _ in $(seq 50); do
      ctr -a "$SOCK" -n k8s.io tasks ls -q 2>/dev/null | grep -qx "$t" || break
      ctr -a "$SOCK" -n k8s.io tasks delete "$t" >/dev/null 2>&1 || sleep 0.1
    done
  done
  [ -z "$tasks" ] || say "$(echo "$tasks" | wc -w) containers stopped"
fi
stop containerd
# The pod sandboxes' network namespaces containerd's CRI pinned under /run/netns (cni-<uuid>): the world's
# containerd is the only CRI on the machine (make images-check runs one without CRI).
for ns in $(ip netns list 2>/dev/null | awk '/^cni-[0-9a-f-]+( |$)/ {print $1}'); do
  ip netns del "$ns" 2>/dev/null || true
done
# Mounts the kubelet and containerd left (tmpfs volumes, rootfs overlays, sandbox /dev/shm), deepest first.
if [ -d "$DIR" ]; then
  awk -v d="$DIR/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
fi

if [ "$DELETE_NODE" = 1 ] && [ -s "$WORLD/kubeconfig" ]; then
  # shellcheck disable=SC1091
  . "$WORLD/control-plane.env"
  "$KUBECTL" --kubeconfig "$WORLD/kubeconfig" delete node "$NODE" --ignore-not-found >/dev/null
  say "node $NODE deleted"
fi
if [ "$NET" = 1 ]; then
  bash "$HERE/node-net.sh" down
fi
