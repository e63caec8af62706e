#!/usr/bin/env bash
# Starts the local e2e world's process node (the e2e-node binary of the e2e crate) in the background and
# waits until its Node is Ready. Needs the control plane (e2e/scripts/control-plane-up.sh) and root (each
# container runs in a private mount namespace; the pod CIDR gets a local route on lo).
#
#   pid  e2e/.world/pids/node.pid         log  e2e/.world/logs/node.log
#   pods e2e/.world/pods/<ns>_<pod>_<uid>  NFS stand-ins  e2e/.world/nfs/<server>/<path>
#
# Credentials: the node's own kubeconfig (system:node:<NODE>, so the Node authorizer and NodeRestriction
# apply as to a real kubelet), or the admin one when the PKI has none. The kubelet API serves
# node-<NODE>-serving.crt on 127.0.0.1:10250 and trusts client certificates of the cluster CA.
#
# Pods share the machine's network namespace; each gets its own IP from the pod CIDR (made local on lo), and
# the preloaded vrg-bindshim library turns a program's bind to 0.0.0.0 / [::] into a bind to its pod IP, so
# pods may listen on the same port (E2E_BIND_SHIM overrides its path when E2E_NODE_BIN is given).
#
# Image mappings (which local binary an image stands for): e2e/.world/node-images.yaml if present
# (`repository: /path/to/binary` lines), plus E2E_NODE_IMAGES="repo=/path repo2=/path2"; any other image
# runs the binary named like its last component from the bin dirs (E2E_NODE_BIN_DIRS, default the cargo
# target's debug dir: virtrigaud/runner:dev -> $CARGO_TARGET_DIR/debug/runner).
# Idempotent: a running node (pid alive, our binary) is left alone.
#
# Environment: E2E_WORLD, E2E_NODE_NAME (e2e-node), E2E_POD_CIDR (10.244.0.0/16), E2E_NODE_BIN (prebuilt
# binary; otherwise `cargo build -p e2e --bin e2e-node` and `-p vrg-bindshim`), E2E_NODE_IMAGES, E2E_NODE_BIN_DIRS, E2E_NODE_ARGS (extra flags),
# NODE_TIMEOUT (seconds, default 60), CARGO_TARGET_DIR.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORLD=${E2E_WORLD:-$REPO/e2e/.world}
PKI=$WORLD/pki
NODE=${E2E_NODE_NAME:-e2e-node}
POD_CIDR=${E2E_POD_CIDR:-10.244.0.0/16}
TIMEOUT=${NODE_TIMEOUT:-60}
PIDFILE=$WORLD/pids/node.pid
LOG=$WORLD/logs/node.log
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${VRG_CACHE:-$HOME/.cache/virtrigaud}/target}

say() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (mount namespaces, pod CIDR route)"
[ -s "$WORLD/kubeconfig" ] || die "no $WORLD/kubeconfig: start the control plane first (e2e/scripts/control-plane-up.sh)"
# shellcheck disable=SC1091
[ -f "$WORLD/control-plane.env" ] && . "$WORLD/control-plane.env"
KUBECTL=${KUBECTL:-kubectl}
for f in ca.crt "node-$NODE-serving.crt" "node-$NODE-serving.key"; do
  [ -s "$PKI/$f" ] || die "missing $PKI/$f (run e2e/scripts/pki.sh)"
done
KUBECONFIG_NODE=$PKI/node-$NODE.kubeconfig
[ -s "$KUBECONFIG_NODE" ] || KUBECONFIG_NODE=$WORLD/kubeconfig

if [ -n "${E2E_NODE_BIN:-}" ]; then
  BIN=$E2E_NODE_BIN
  SHIM=${E2E_BIND_SHIM:-$(dirname "$BIN")/libvrg_bindshim.so}
else
  (cd "$REPO" && cargo build -q -p e2e --bin e2e-node && cargo build -q -p vrg-bindshim)
  BIN=$CARGO_TARGET_DIR/debug/e2e-node
  SHIM=$CARGO_TARGET_DIR/debug/libvrg_bindshim.so
fi
[ -x "$BIN" ] || die "no node binary at $BIN"
[ -f "$SHIM" ] || die "no bind shim at $SHIM (cargo build -p vrg-bindshim)"

mkdir -p "$WORLD/pids" "$WORLD/logs" "$WORLD/pods" "$WORLD/nfs"

running_pid() {
  [ -s "$PIDFILE" ] || return 1
  local pid exe
  pid=$(cat "$PIDFILE")
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  [ "${exe% (deleted)}" = "$(readlink -f "$BIN")" ] || [ "$(basename "${exe% (deleted)}")" = e2e-node ] || return 1
  echo "$pid"
}

ready() {
  [ "$("$KUBECTL" --kubeconfig "$WORLD/kubeconfig" get node "$NODE" \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] &&
    curl -ksf --max-time 2 https://127.0.0.1:10250/healthz >/dev/null
}

if pid=$(running_pid); then
  say "already running (pid $pid)"
else
  args=(--kubeconfig "$KUBECONFIG_NODE" --node-name "$NODE" --world "$WORLD" --pod-cidr "$POD_CIDR"
        --tls-cert "$PKI/node-$NODE-serving.crt" --tls-key "$PKI/node-$NODE-serving.key" --client-ca "$PKI/ca.crt"
        --bind-shim "$SHIM")
  [ -f "$WORLD/node-images.yaml" ] && args+=(--image-config "$WORLD/node-images.yaml")
  for m in ${E2E_NODE_IMAGES:-}; do args+=(--image "$m"); done
  for d in ${E2E_NODE_BIN_DIRS:-$CARGO_TARGET_DIR/debug}; do args+=(--bin-dir "$d"); done
  # shellcheck disable=SC2206
  args+=(${E2E_NODE_ARGS:-})
  say "starting $BIN (log $LOG)"
  # setsid: the node must not die with the calling shell's session; it stops its container processes on TERM
  setsid "$BIN" "${args[@]}" >>"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
fi

deadline=$(( $(date +%s) + TIMEOUT ))
until ready; do
  pid=$(running_pid) || { tail -n 20 "$LOG" >&2; die "the node process exited (see $LOG)"; }
  [ "$(date +%s)" -lt "$deadline" ] || { tail -n 20 "$LOG" >&2; die "node $NODE not Ready within ${TIMEOUT}s (see $LOG)"; }
  sleep 0.5
done
say "node $NODE Ready (pid $(cat "$PIDFILE")), pod CIDR $POD_CIDR, kubelet API https://127.0.0.1:10250"
