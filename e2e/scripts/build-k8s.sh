#!/usr/bin/env bash
# Builds the local e2e world's Kubernetes control plane from Go modules (no container runtime, no kind):
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
#   kubelet, kube-proxy                                               <- k8s.io/kubernetes v1.36.3
#   etcd                                                              <- go.etcd.io/etcd/server/v3 v3.6.8
# using the wrapper module in e2e/k8s (go.mod pins every k8s.io staging module to v0.36.3).
#
# Binaries go to a cache keyed by version, ${VRG_CACHE:-$HOME/.cache/virtrigaud}/k8s-v1.36.3/bin/, and any
# binary already there is skipped: only the first run on a machine pays (about 16 minutes on 2 cores;
# the Go build cache in $(go env GOCACHE) makes a rebuild after a deleted binary much faster).
# Idempotent. Prints the cache's bin directory on the last line of stdout.
#
# Environment: VRG_CACHE, K8S_BUILD_JOBS (go build -p, default: number of CPUs), VRG_K8S_FORCE=1 rebuilds all.
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.8          # the go.etcd.io/etcd/server/v3 version that k8s.io/kubernetes v1.36.3 requires
VRG_CACHE=${VRG_CACHE:-$HOME/.cache/virtrigaud}
OUT=$VRG_CACHE/k8s-$K8S_VERSION
BIN=$OUT/bin
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MOD=$(cd "$HERE/../k8s" && pwd)

say() { printf '[build-k8s] %s\n' "$*" >&2; }
die() { printf '[build-k8s] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "go is not installed (need go >= 1.26.0)"

# name -> Go package (built inside the e2e/k8s module)
declare -A PKG=(
  [etcd]=./cmd/etcd
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
  [kubelet]=k8s.io/kubernetes/cmd/kubelet
  [kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
)
ORDER=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

mkdir -p "$BIN"
missing=()
for n in "${ORDER[@]}"; do
  if [ "${VRG_K8S_FORCE:-0}" != 1 ] && [ -x "$BIN/$n" ]; then continue; fi
  missing+=("$n")
done

if [ ${#missing[@]} -eq 0 ]; then
  say "all binaries present in $BIN (nothing to build)"
  echo "$BIN"
  exit 0
fi

# The version stamps that Kubernetes' own build (hack/lib/version.sh) sets; without them the binaries
# report v0.0.0-master and kubectl prints version-skew warnings.
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldx=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldx+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ldx+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date -X $p.gitCommit=module-$K8S_VERSION"
done

pkgs=()
for n in "${missing[@]}"; do pkgs+=("${PKG[$n]}"); done

tmp=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
say "building ${missing[*]} (k8s $K8S_VERSION, etcd $ETCD_VERSION, $(go version | awk '{print $3}'), -p ${K8S_BUILD_JOBS:-$(nproc)})"
start=$(date +%s)
(
  cd "$MOD"
  # One go build for all missing binaries: shared packages compile once, both cores stay busy.
  nice -n 10 go build -p "${K8S_BUILD_JOBS:-$(nproc)}" -trimpath -ldflags "-s -w$ldx" -o "$tmp/" "${pkgs[@]}"
)
for n in "${missing[@]}"; do
  [ -x "$tmp/$n" ] || die "go build produced no $n"
  mv -f "$tmp/$n" "$BIN/$n"
done
elapsed=$(( $(date +%s) - start ))
cat >"$OUT/VERSIONS" <<EOF
kubernetes $K8S_VERSION (k8s.io/kubernetes, staging modules v0.${minor}.${K8S_VERSION##*.})
etcd $ETCD_VERSION (go.etcd.io/etcd/server/v3)
$(go version)
built $build_date
EOF
say "built ${missing[*]} in ${elapsed}s ($((elapsed / 60))m$((elapsed % 60))s) into $BIN"
echo "$BIN"
