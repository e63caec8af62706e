#!/usr/bin/env bash
# Starts the e2e world's real node: containerd + runc (Debian), CNI bridge/host-local/loopback/portmap
# (Debian's containernetworking-plugins), the kubelet and kube-proxy (built from k8s.io/kubernetes by
# build-k8s.sh), all inside the network namespace the world creates for them, and waits until the Node
# is Ready. Needs the control plane (control-plane-up.sh) and the node network (node-net.sh up).
#
#   netns vrg-node (10.250.255.2)  <- veth ->  host 10.250.255.1 (the gateway: node-net.sh)
#   pods  10.244.0.0/24 on bridge vrg-cni0 inside the netns; the host routes it via 10.250.255.2
#   state e2e/.world/node/{containerd,kubelet,cni}   logs e2e/.world/logs/{containerd,kubelet,kube-proxy}.log
#
# Processes enter only the network namespace (nsenter --net), not a mount namespace of their own: the
# kubelet's volume mounts (tmpfs for Secrets and tokens) must be visible to containerd and runc.
# Facts of this machine kind: processes lack CAP_SYS_RESOURCE (containerd needs restrict_oom_score_adj),
# cgroups are v1 (the kubelet needs failCgroupV1: false and the cgroupfs driver); the kubelet sets the
# kernel sysctls it requires (vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1).
#
# Images: a pause image built from Kubernetes' own pause.c, and the project's images from `make images`
# (their archives in $VRG_CACHE/images), imported into containerd's k8s.io namespace; pods use them
# with imagePullPolicy IfNotPresent and nothing is pulled from any registry.
# Idempotent: running parts are left alone.
#
# Environment: E2E_WORLD, E2E_NODE_NAME (e2e-node), NODE_TIMEOUT (seconds, default 90), VRG_CACHE.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORLD=${E2E_WORLD:-$REPO/e2e/.world}
VRG_CACHE=${VRG_CACHE:-$HOME/.cache/virtrigaud}
PKI=$WORLD/pki
NODE=${E2E_NODE_NAME:-e2e-node}
TIMEOUT=${NODE_TIMEOUT:-90}
DIR=$WORLD/node
PIDS=$WORLD/pids
LOGS=$WORLD/logs
SOCK=$DIR/containerd/containerd.sock
PAUSE_IMAGE=localhost/virtrigaud/pause:3.10
# shellcheck source=e2e/scripts/node-net.sh
. "$HERE/node-net.sh"

say() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (network namespace, containerd, cgroups)"
[ -s "$WORLD/kubeconfig" ] || die "no $WORLD/kubeconfig: start the control plane first (control-plane-up.sh)"
# shellcheck disable=SC1091
. "$WORLD/control-plane.env"
net_exists || die "no network namespace $NODE_NETNS: run node-net.sh up first"
for f in ca.crt "node-$NODE.kubeconfig" "node-$NODE-serving.crt" "node-$NODE-serving.key" kube-proxy.kubeconfig; do
  [ -s "$PKI/$f" ] || die "missing $PKI/$f (run e2e/scripts/pki.sh)"
done
for b in kubelet kube-proxy; do
  [ -x "$K8S_BIN/$b" ] || die "no $K8S_BIN/$b (run e2e/scripts/build-k8s.sh)"
done
for p in containerd runc /usr/lib/cni/bridge; do
  command -v "$p" >/dev/null || [ -x "$p" ] || die "$p is missing (run e2e/scripts/install-deps.sh)"
done
mkdir -p "$DIR"/{containerd,kubelet,cni/net.d,cni/ipam} "$PIDS" "$LOGS"

in_net() { nsenter --net="/run/netns/$NODE_NETNS" "$@"; }
ctr() { command ctr -a "$SOCK" -n k8s.io "$@"; }

pid_alive() { # pid_alive NAME: prints the pid when pids/NAME.pid is a live process running NAME
  local pid
  pid=$(cat "$PIDS/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)" 2>/dev/null)" = "$1" ] || return 1
  echo "$pid"
}

start_bg() { # start_bg NAME CMD...: in the node's network namespace, detached, pid in pids/NAME.pid
  local name=$1
  shift
  if pid=$(pid_alive "$name"); then
    say "$name already running (pid $pid)"
    return 0
  fi
  say "starting $name (log $LOGS/$name.log)"
  setsid nsenter --net="/run/netns/$NODE_NETNS" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

wait_for() { # wait_for SECONDS WHAT NAME CMD...: until CMD succeeds or the process NAME dies
  local secs=$1 what=$2 name=$3 until=$(( $(date +%s) + $1 ))
  shift 3
  until "$@" >/dev/null 2>&1; do
    pid_alive "$name" >/dev/null || { tail -n 20 "$LOGS/$name.log" >&2; die "$name exited (see $LOGS/$name.log)"; }
    [ "$(date +%s)" -lt "$until" ] || { tail -n 20 "$LOGS/$name.log" >&2; die "$what: not within $secs s (see $LOGS/$name.log)"; }
    sleep 0.25
  done
}

# --- containerd --------------------------------------------------------------------------------------------
cat >"$DIR/containerd/config.toml" <<TOML
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
TOML
cat >"$DIR/cni/net.d/10-vrg-pods.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "vrg-pods",
  "plugins": [
    {
      "type": "bridge", "bridge": "vrg-cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
start_bg containerd containerd --config "$DIR/containerd/config.toml"
wait_for 30 "containerd's socket" containerd ctr version

# --- images ------------------------------------------------------------------------------------------------
pause_archive() { # builds (once) the pause image from the pause.c of the Kubernetes module the world uses
  local out=$VRG_CACHE/images/pause-3.10.tar src work
  if [ -s "$out" ]; then echo "$out"; return 0; fi
  src=$(cd "$REPO/e2e/k8s" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  [ -f "$src" ] || die "no pause.c at $src"
  work=$(mktemp -d)
  gcc -Os -static -DVERSION=3.10-virtrigaud -o "$work/pause" "$src"
  strip "$work/pause"
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:3.10"
  mkdir -p "$work/fs"
  install -m 0755 "$work/pause" "$work/fs/pause"
  umoci insert --image "$work/layout:3.10" "$work/fs/pause" /pause >/dev/null
  umoci config --image "$work/layout:3.10" --config.user 65535:65535 --config.entrypoint /pause >/dev/null
  umoci gc --layout "$work/layout"
  tar -C "$work/layout" --owner=0 --group=0 --numeric-owner -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  rm -rf "$work"
  echo "$out"
}

image_digest() { ctr images ls | awk -v ref="$1" '$1 == ref {print $3}'; }
archive_digest() { tar -xOf "$1" index.json | python3 -c 'import json, sys; print(json.load(sys.stdin)["manifests"][0]["digest"])'; }

import() { # import ARCHIVE NAME: into the k8s.io namespace unless NAME is there with the archive's manifest
  local want
  want=$(archive_digest "$1")
  [ "$(image_digest "$2")" = "$want" ] && return 0
  ctr images import --base-name "${2%:*}" "$1" >/dev/null
  [ "$(image_digest "$2")" = "$want" ] || die "importing $1 did not give $2 at $want: $(ctr images ls -q | tr '\n' ' ')"
  say "image $2 imported ($want)"
}

import "$(pause_archive)" "$PAUSE_IMAGE"
tag=$(cat "$VRG_CACHE/images/tag" 2>/dev/null || true)
[ -n "$tag" ] || die "no images built: run make images"
for name in operator webhook runner; do
  import "$VRG_CACHE/images/$name-$tag.tar" "docker.io/virtrigaud/$name:$tag"
done
# Other tags of the project's images go: no pod of the world runs them after the next apply, and each
# commit's images would otherwise pile up in the node's content store.
for name in operator webhook runner; do
  # awk, not grep: a fresh node has no other tag, and grep's "no match" status would end the script.
  ctr images ls -q | awk -v keep="docker.io/virtrigaud/$name:$tag" -v prefix="docker.io/virtrigaud/$name:" \
    'index($0, prefix) == 1 && $0 != keep' |
    while read -r old; do ctr images rm "$old" >/dev/null && say "image $old removed"; done
done
# The tag for e2e/kustomize (a component: the tag changes with every commit).
mkdir -p "$WORLD/kustomize/images"
cat >"$WORLD/kustomize/images/kustomization.yaml" <<YAML
# Written by e2e/scripts/kubelet-up.sh: the images imported into the node's containerd.
apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
images:
  - {name: virtrigaud/operator, newTag: "$tag"}
  - {name: virtrigaud/webhook, newTag: "$tag"}
  - {name: virtrigaud/runner, newTag: "$tag"}
YAML

# --- kubelet ----------------------------------------------------------------------------------------------
cat >"$DIR/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: $NODE_IP
healthzPort: 10248
tlsCertFile: $PKI/node-$NODE-serving.crt
tlsPrivateKeyFile: $PKI/node-$NODE-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podLogsDir: $DIR/kubelet/pod-logs
failSwapOn: false
maxPods: 250
serializeImagePulls: false
# A developer machine's disk is often fuller than a node's (a 2% threshold evicted the operator while
# cargo filled the disk): evict only when it is really full, and never
# garbage-collect the world's images (nothing could pull them back).
evictionHard: {memory.available: 100Mi, nodefs.available: 1Gi, imagefs.available: 1Gi, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerNode: true
YAML
start_bg kubelet "$K8S_BIN/kubelet" --config="$DIR/kubelet/config.yaml" \
  --kubeconfig="$PKI/node-$NODE.kubeconfig" --hostname-override="$NODE" --node-ip="$NODE_IP" \
  --root-dir="$DIR/kubelet/root" --cert-dir="$DIR/kubelet/pki" --v=1

# --- kube-proxy -------------------------------------------------------------------------------------------
mkdir -p "$DIR/kube-proxy"
cat >"$DIR/kube-proxy/config.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE
bindAddress: $NODE_IP
healthzBindAddress: $NODE_IP:10256
metricsBindAddress: $NODE_IP:10249
conntrack: {maxPerCore: 0, min: 0}
YAML
start_bg kube-proxy "$K8S_BIN/kube-proxy" --config="$DIR/kube-proxy/config.yaml" --v=1

# The apiserver runs with --endpoint-reconciler-type=none on loopback: the `kubernetes` Service's endpoint is
# the gateway address, where node-net.sh forwards to it.
"$KUBECTL" apply -f - >/dev/null <<YAML
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: virtrigaud-e2e}
addressType: IPv4
endpoints: [{addresses: ["$HOST_IP"], conditions: {ready: true}}]
ports: [{name: https, port: $APISERVER_PORT, protocol: TCP}]
YAML

ready() { # Ready, as reported by this kubelet (not a Node object left by an earlier node of that name)
  [[ "$("$KUBECTL" get node "$NODE" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion} {.status.conditions[?(@.type=="Ready")].status}')" \
    == containerd://*" True" ]]
}
wait_for "$TIMEOUT" "node $NODE Ready" kubelet ready
say "node $NODE Ready: kubelet https://$NODE_IP:10250, pods $POD_CIDR in netns $NODE_NETNS"
