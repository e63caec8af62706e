#!/usr/bin/env bash
# `make images-check`: runs each image built by `make images` under containerd and runc (Debian's),
# with a containerd of its own (state under $VRG_CACHE/containerd-check, its own socket, no CRI):
# the entrypoint answers `--version` with the image's version, as the non-root user 65532, and the
# runner image has the qemu-img the tests use (10.x).
set -euo pipefail
cd "$(dirname "$0")/.."

VRG_CACHE=${VRG_CACHE:-$HOME/.cache/virtrigaud}
OUT=$VRG_CACHE/images
# The tag `make images` last built (written once all three archives are there).
TAG=$(cat "$OUT/tag" 2>/dev/null || bash images/build.sh --tag)
DIR=$VRG_CACHE/containerd-check
SOCK=$DIR/containerd.sock
NS=virtrigaud-check

say() { printf '[images-check] %s\n' "$*"; }
fail() { printf '[images-check] FAILED: %s\n' "$*" >&2; exit 1; }

for name in operator webhook runner; do
  [ -s "$OUT/$name-$TAG.tar" ] || fail "$OUT/$name-$TAG.tar is missing: run make images"
done
for p in containerd runc; do
  dpkg -s "$p" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$p" >/dev/null
done

mkdir -p "$DIR"
cat >"$DIR/config.toml" <<TOML
version = 2
root = "$DIR/root"
state = "$DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
TOML
containerd --config "$DIR/config.toml" >"$DIR/containerd.log" 2>&1 &
ctrd=$!
trap 'kill $ctrd 2>/dev/null; wait $ctrd 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  ctr -a "$SOCK" version >/dev/null 2>&1 && break
  kill -0 $ctrd 2>/dev/null || { tail -n 20 "$DIR/containerd.log" >&2; fail "containerd exited"; }
  sleep 0.1
done
ctr() { command ctr -a "$SOCK" -n "$NS" "$@"; }

run() { # image id command...
  local image=$1 id=$2
  shift 2
  ctr task kill -s KILL "$id" >/dev/null 2>&1 || true
  ctr container rm "$id" >/dev/null 2>&1 || true
  ctr run --rm "$image" "$id" "$@"
}

# The value of label $2 in the config of the one image in oci-archive $1.
oci_label() {
  python3 - "$1" "$2" <<'PY'
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    blob = lambda d: json.load(t.extractfile("blobs/" + d.replace(":", "/")))
    manifest = blob(json.load(t.extractfile("index.json"))["manifests"][0]["digest"])
    print(blob(manifest["config"]["digest"]).get("config", {}).get("Labels", {}).get(sys.argv[2], ""))
PY
}

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
for name in operator webhook runner; do
  ref=docker.io/virtrigaud/$name:$TAG
  ctr images import --base-name "docker.io/virtrigaud/$name" "$OUT/$name-$TAG.tar" >/dev/null
  ctr images ls -q | grep -qx "$ref" || fail "$ref not imported: $(ctr images ls -q)"
  out=$(run "$ref" "check-$name" "/usr/local/bin/$name" --version 2>&1) || fail "$name --version: $out"
  [[ $out == "$name $version" ]] || fail "$name --version printed '$out', expected '$name $version'"
  user=$(run "$ref" "check-$name-user" id -u 2>&1) || fail "id -u in $name: $user"
  [ "$user" = 65532 ] || fail "$name runs as uid $user, expected 65532"
  label=$(oci_label "$OUT/$name-$TAG.tar" org.opencontainers.image.version)
  [ "$label" = "$TAG" ] || fail "$name's org.opencontainers.image.version label is '$label', expected $TAG"
  say "$name: '$out' as uid $user ($ref, labelled $label)"
done
qemu=$(run "docker.io/virtrigaud/runner:$TAG" check-qemu qemu-img --version 2>&1) || fail "qemu-img: $qemu"
[[ $qemu == "qemu-img version 10."* ]] || fail "runner image has '$qemu', expected qemu-img 10.x"
say "runner: ${qemu%%$'\n'*}"
for name in operator webhook runner; do
  ctr images rm "docker.io/virtrigaud/$name:$TAG" >/dev/null
done
say "all three images run under containerd"
