#!/usr/bin/env bash
# Starts the local e2e world's Kubernetes control plane as plain processes on 127.0.0.1 (no containers):
#   etcd                      http://127.0.0.1:23790 (client), 127.0.0.1:23800 (peer), data in e2e/.world/etcd
#   kube-apiserver            https://127.0.0.1:6443
#   kube-controller-manager   https://127.0.0.1:10257/healthz
#   kube-scheduler            https://127.0.0.1:10259/healthz
# Builds/caches the binaries (e2e/scripts/build-k8s.sh) and the PKI (e2e/scripts/pki.sh) first if needed.
# Logs: e2e/.world/logs/<name>.log, pids: e2e/.world/pids/<name>.pid, admin kubeconfig: e2e/.world/kubeconfig,
# shell exports (KUBECONFIG, KUBECTL, K8S_BIN): e2e/.world/control-plane.env.
#
# Idempotent: a component whose pid is alive (and is our binary) and healthy is left alone; one that is alive
# but does not become healthy within its timeout is stopped and started again. Returns when the apiserver's
# /readyz is ok, both controllers' /healthz are ok and the controller-manager has created default/default.
#
# Environment: E2E_WORLD (default <repo>/e2e/.world), VRG_CACHE, CP_TIMEOUT (seconds per component, default 120).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORLD=${E2E_WORLD:-$(cd "$HERE/.." && pwd)/.world}
export E2E_WORLD=$WORLD
PKI=$WORLD/pki
LOGS=$WORLD/logs
PIDS=$WORLD/pids
TIMEOUT=${CP_TIMEOUT:-120}

ETCD_CLIENT=127.0.0.1:23790
ETCD_PEER=127.0.0.1:23800
APISERVER_PORT=6443
KCM_PORT=10257
SCHED_PORT=10259
SERVICE_CIDR=10.96.0.0/16

say() { printf '[control-plane] %s\n' "$*" >&2; }
die() { printf '[control-plane] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
T0=$(now)
elapsed() { awk -v a="$T0" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}'; }

command -v curl >/dev/null || die "curl is not installed"
K8S_BIN=$(bash "$HERE/build-k8s.sh" | tail -n1)
[ -x "$K8S_BIN/kube-apiserver" ] || die "no kube-apiserver in $K8S_BIN"
export KUBECTL=$K8S_BIN/kubectl
bash "$HERE/pki.sh"

mkdir -p "$LOGS" "$PIDS" "$WORLD/etcd"
chmod 700 "$WORLD/etcd"
# One up/down at a time (the components are started with this fd closed, so they do not hold the lock).
exec 9>"$WORLD/control-plane.lock"
flock -w 300 9 || die "another control-plane-up/down holds $WORLD/control-plane.lock"

# Admin kubeconfig and an env file for other scripts and shells (source it).
cmp -s "$PKI/admin.kubeconfig" "$WORLD/kubeconfig" || install -m 600 "$PKI/admin.kubeconfig" "$WORLD/kubeconfig"
export KUBECONFIG=$WORLD/kubeconfig
cat >"$WORLD/control-plane.env" <<EOF
# written by e2e/scripts/control-plane-up.sh
export KUBECONFIG=$WORLD/kubeconfig
export KUBECTL=$KUBECTL
export K8S_BIN=$K8S_BIN
EOF

# --- process helpers -----------------------------------------------------------------------------------
pid_of() { # prints the pid of component $1 if it is alive and runs our binary
  local f=$PIDS/$1.pid pid exe
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "${exe% (deleted)}" = "$K8S_BIN/$1" ] || return 1
  echo "$pid"
}

stop() { # stop component $1 by pid: TERM, then KILL after 15 s (5 s for kube-apiserver)
  local pid i
  # kube-apiserver's graceful shutdown stalls without etcd: stop it first (it is started again after etcd).
  [ "$1" = etcd ] && stop kube-apiserver
  pid=$(pid_of "$1") || { rm -f "$PIDS/$1.pid"; return 0; }
  local t=150; [ "$1" = kube-apiserver ] && t=50   # its state is in etcd; open watch streams delay its exit
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq $t); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { say "$1 ($pid) still running $((t / 10))s after TERM: KILL"; kill -KILL "$pid" 2>/dev/null || true; }
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$PIDS/$1.pid"
}

# Busy on loopback (the gateway's socat on the node network's address forwards to it and does not count).
port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | awk '{print $4}' | grep -Eq '^(127\.0\.0\.1|0\.0\.0\.0|\*|\[::\]):'; }

start() { # start NAME PORT ARGS...: detached from this shell, log appended, pid recorded
  local name=$1 port=$2; shift 2
  if port_busy "$port"; then
    die "port $port is already in use by a process that is not our $name: $(ss -Hltnp "sport = :$port" | grep -v socat | head -n1)"
  fi
  printf '\n===== %s starting %s =====\n' "$(date -u +%FT%TZ)" "$name" >>"$LOGS/$name.log"
  # setsid: own session, so the process outlives the calling shell/job; exec keeps $! == the component's pid.
  setsid "$K8S_BIN/$name" "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
  echo $! >"$PIDS/$name.pid"
  disown 2>/dev/null || true
}

CURL_ADMIN=(curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key")
healthy() {
  case $1 in
    etcd) curl -fsS --max-time 3 "http://$ETCD_CLIENT/health" 2>/dev/null | grep -q '"health":"true"' ;;
    kube-apiserver) [ "$("${CURL_ADMIN[@]}" "https://127.0.0.1:$APISERVER_PORT/readyz" 2>/dev/null)" = ok ] ;;
    kube-controller-manager) [ "$(curl -ksS --max-time 3 "https://127.0.0.1:$KCM_PORT/healthz" 2>/dev/null)" = ok ] ;;
    kube-scheduler) [ "$(curl -ksS --max-time 3 "https://127.0.0.1:$SCHED_PORT/healthz" 2>/dev/null)" = ok ] ;;
  esac
}

wait_healthy() { # wait_healthy NAME: until healthy, the process died, or TIMEOUT
  local name=$1 deadline=$(( $(date +%s) + TIMEOUT ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    healthy "$name" && return 0
    pid_of "$name" >/dev/null || { say "$name exited; last log lines:"; tail -n 20 "$LOGS/$name.log" >&2; return 1; }
    sleep 0.25
  done
  say "$name not healthy after ${TIMEOUT}s; last log lines:"; tail -n 20 "$LOGS/$name.log" >&2
  return 1
}

# ensure NAME PORT ARGS...: leave a healthy running instance with the same command line alone, otherwise
# (re)start it (no wait here). The command line is kept in pids/NAME.args, so a changed flag restarts.
ensure() {
  local name=$1 port=$2 pid args; shift 2
  args=$(printf '%s\n' "$K8S_BIN/$name" "$@")
  if pid=$(pid_of "$name"); then
    if [ "$args" != "$(cat "$PIDS/$name.args" 2>/dev/null)" ]; then
      say "$name (pid $pid) runs with other flags: restarting"
      stop "$name"
    elif healthy "$name" || wait_healthy "$name" 2>/dev/null; then
      say "$name already running (pid $pid, healthy)"; return 0
    else
      say "$name (pid $pid) is running but not healthy: restarting"
      stop "$name"
    fi
  fi
  printf '%s\n' "$args" >"$PIDS/$name.args"
  start "$name" "$port" "$@"
  say "$name started (pid $(cat "$PIDS/$name.pid"), log $LOGS/$name.log)"
}

# --- components ------------------------------------------------------------------------------------------
ensure etcd "${ETCD_CLIENT##*:}" \
  --name=e2e --data-dir="$WORLD/etcd" \
  --listen-client-urls="http://$ETCD_CLIENT" --advertise-client-urls="http://$ETCD_CLIENT" \
  --listen-peer-urls="http://$ETCD_PEER" --initial-advertise-peer-urls="http://$ETCD_PEER" \
  --initial-cluster="e2e=http://$ETCD_PEER" --initial-cluster-state=new \
  --unsafe-no-fsync=true --snapshot-count=10000 --quota-backend-bytes=2147483648 --log-level=warn
wait_healthy etcd || die "etcd did not become healthy"

ensure kube-apiserver "$APISERVER_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
  --endpoint-reconciler-type=none \
  --etcd-servers="http://$ETCD_CLIENT" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --client-ca-file="$PKI/ca.crt" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction \
  --enable-aggregator-routing=true \
  --allow-privileged=true \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --profiling=false --v=1
wait_healthy kube-apiserver || die "kube-apiserver did not become ready"
say "kube-apiserver ready at https://127.0.0.1:$APISERVER_PORT ($(elapsed))"

ensure kube-controller-manager "$KCM_PORT" \
  --kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
  --client-ca-file="$PKI/ca.crt" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
  --controllers='*' \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --use-service-account-credentials=true \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --cluster-name=e2e --service-cluster-ip-range="$SERVICE_CIDR" \
  --leader-elect=false --profiling=false --v=1

ensure kube-scheduler "$SCHED_PORT" \
  --kubeconfig="$PKI/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
  --client-ca-file="$PKI/ca.crt" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
  --leader-elect=false --profiling=false --v=1

wait_healthy kube-controller-manager || die "kube-controller-manager did not become healthy"
wait_healthy kube-scheduler || die "kube-scheduler did not become healthy"

# The controller-manager really works once its token/serviceaccount controllers have run.
deadline=$(( $(date +%s) + TIMEOUT ))
until "$KUBECTL" -n default get serviceaccount default >/dev/null 2>&1; do
  [ "$(date +%s)" -lt "$deadline" ] || die "serviceaccount default/default was not created within ${TIMEOUT}s (see $LOGS/kube-controller-manager.log)"
  sleep 0.25
done

say "control plane up in $(elapsed): KUBECONFIG=$WORLD/kubeconfig KUBECTL=$KUBECTL (source $WORLD/control-plane.env)"
