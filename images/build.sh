#!/usr/bin/env bash
# `make images`: the operator, webhook and runner images as OCI archives, on a machine with no
# container daemon and no registry (Debian 12, root).
#
#   root filesystem   debootstrap --variant=minbase bookworm (cached), plus per image the packages it
#                     needs from bookworm (runner: qemu-utils and libvirt0 from bookworm-backports, the
#                     qemu and libvirt the tests run against); apt caches and docs removed
#   binaries          the workspace's release builds
#   user              65532:65532 (nonroot), no shell needed
#   assembly          umoci: one layer for the root filesystem, one for the binary; config with the
#                     entrypoint, user and OCI labels; the layout tarred as an oci-archive
#
# Tags are reproducible: <version>-g<commit> (with -dirty when the tree has uncommitted changes).
# Output: $VRG_CACHE/images/<name>-<tag>.tar and $VRG_CACHE/images/tag; `--tag` prints the tag.
set -euo pipefail
cd "$(dirname "$0")/.."

VRG_CACHE=${VRG_CACHE:-$HOME/.cache/virtrigaud}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$VRG_CACHE/target}
OUT=$VRG_CACHE/images
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
IMAGES=(operator webhook runner)

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
commit=$(git rev-parse --short=12 HEAD)
dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo -dirty || true)
TAG="$version-g$commit$dirty"
CREATED=$(date -u -d "@$(git log -1 --format=%ct)" +%Y-%m-%dT%H:%M:%SZ)
[ "${1:-}" = --tag ] && { echo "$TAG"; exit 0; }

say() { printf '[images] %s\n' "$*" >&2; }
t0=$(date +%s)
since() { echo "$(( $(date +%s) - t0 ))s"; }

need() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
}
need debootstrap umoci

# The packages each image adds to the minbase root filesystem, and from which suite.
packages() {
  case $1 in
    operator | webhook) echo "ca-certificates" ;;
    # libsasl2-modules: the SASL mechanisms libvirt authenticates with (DIGEST-MD5, SCRAM); libvirt0 only
    # recommends it, and without it every qemu+tcp connection fails with "No worthy mechs found".
    runner) echo "ca-certificates openssh-client libsasl2-modules" ;;
  esac
}
backports() {
  case $1 in
    runner) echo "qemu-utils libvirt0" ;;
    *) echo "" ;;
  esac
}

mkdir -p "$OUT"
# One build at a time on a machine (two would write the same archives).
exec 9>"$OUT/.lock"
flock 9
rm -rf "$OUT"/.debootstrap.* "$OUT"/.rootfs.* "$OUT"/.layout.* "$OUT"/.bundle.* # an interrupted run's
base=$OUT/rootfs-$SUITE-minbase.tar
if [ ! -s "$base" ]; then
  say "debootstrap --variant=minbase $SUITE (once; cached in $base)"
  dir=$(mktemp -d "$OUT/.debootstrap.XXXXXX")
  debootstrap --variant=minbase "$SUITE" "$dir" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 \
    || { tail -n 20 "$OUT/debootstrap.log" >&2; exit 1; }
  tar -C "$dir" --numeric-owner -cf "$base.tmp" .
  mv "$base.tmp" "$base"
  rm -rf "$dir"
fi

# The root filesystem of image $1, cached by its package lists.
rootfs() {
  local name=$1 key cached dir
  key=$(printf '%s|%s|%s' "$SUITE" "$(packages "$name")" "$(backports "$name")" | sha256sum | cut -c1-16)
  cached=$OUT/rootfs-$key.tar # images with the same packages share it
  if [ ! -s "$cached" ]; then
    say "root filesystem of $name: $(packages "$name") $(backports "$name")"
    dir=$(mktemp -d "$OUT/.rootfs.XXXXXX")
    tar -C "$dir" -xf "$base"
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    echo "deb $MIRROR $SUITE-backports main" >"$dir/etc/apt/sources.list.d/backports.list"
    local chrooted=(chroot "$dir" env DEBIAN_FRONTEND=noninteractive LC_ALL=C)
    "${chrooted[@]}" apt-get update -q >/dev/null
    # shellcheck disable=SC2046
    "${chrooted[@]}" apt-get install -y -q --no-install-recommends $(packages "$name") >/dev/null
    if [ -n "$(backports "$name")" ]; then
      # shellcheck disable=SC2046
      "${chrooted[@]}" apt-get install -y -q --no-install-recommends -t "$SUITE-backports" $(backports "$name") >/dev/null
    fi
    "${chrooted[@]}" groupadd --gid 65532 nonroot
    "${chrooted[@]}" useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin nonroot
    "${chrooted[@]}" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/var/log/* \
      "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/locale/* \
      "$dir/etc/apt/sources.list.d/backports.list"
    : >"$dir/etc/resolv.conf"
    tar -C "$dir" --numeric-owner -cf "$cached.tmp" .
    mv "$cached.tmp" "$cached"
    rm -rf "$dir"
  fi
  echo "$cached"
}

if [ -z "$dirty" ] && [ "$(cat "$OUT/tag" 2>/dev/null)" = "$TAG" ] \
   && [ -s "$OUT/operator-$TAG.tar" ] && [ -s "$OUT/webhook-$TAG.tar" ] && [ -s "$OUT/runner-$TAG.tar" ]; then
  say "virtrigaud/{operator,webhook,runner}:$TAG already built (a clean tree's tag names its content)"
  exit 0
fi
say "release build of ${IMAGES[*]} (tag $TAG)"
cargo build --release --locked -p operator -p webhook -p runner

entrypoint_args() {
  case $1 in
    runner) echo "--config.cmd=migrate" ;;
    *) echo "" ;;
  esac
}

build_image() {
  local name=$1 fs layout bundle archive
  fs=$(rootfs "$name")
  layout=$(mktemp -d "$OUT/.layout.XXXXXX")
  bundle=$(mktemp -d "$OUT/.bundle.XXXXXX")
  archive=$OUT/$name-$TAG.tar
  rmdir "$layout"
  umoci init --layout "$layout"
  umoci new --image "$layout:$TAG"
  mkdir -p "$bundle/rootfs"
  tar -C "$bundle/rootfs" -xf "$fs"
  umoci insert --image "$layout:$TAG" --history.created "$CREATED" \
    --history.created_by "debootstrap minbase $SUITE + $(packages "$name") $(backports "$name")" \
    "$bundle/rootfs" /
  install -D -m 0755 "$CARGO_TARGET_DIR/release/$name" "$bundle/bin/$name"
  umoci insert --image "$layout:$TAG" --history.created "$CREATED" \
    --history.created_by "virtrigaud $name $TAG" "$bundle/bin/$name" "/usr/local/bin/$name"
  # shellcheck disable=SC2046
  umoci config --image "$layout:$TAG" --created "$CREATED" --author virtrigaud \
    --config.user 65532:65532 --config.workingdir / \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin \
    --config.entrypoint "/usr/local/bin/$name" $(entrypoint_args "$name") \
    --config.label "org.opencontainers.image.title=virtrigaud-$name" \
    --config.label "org.opencontainers.image.version=$TAG" \
    --config.label "org.opencontainers.image.revision=$(git rev-parse HEAD)" \
    --config.label "org.opencontainers.image.created=$CREATED" \
    --config.label "org.opencontainers.image.source=https://github.com/virtrigaud/virtrigaud" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --history.created "$CREATED" --history.created_by "virtrigaud image config"
  umoci gc --layout "$layout"
  tar -C "$layout" --sort=name --mtime="$CREATED" --owner=0 --group=0 --numeric-owner \
    -cf "$archive.tmp" oci-layout index.json blobs
  mv "$archive.tmp" "$archive"
  rm -rf "$layout" "$bundle"
  say "$name: $archive ($(du -h "$archive" | cut -f1)) after $(since)"
}

for name in "${IMAGES[@]}"; do
  build_image "$name"
done
echo "$TAG" >"$OUT/tag"
# archives of other tags go (each build is ~150 MB); the cached root filesystems stay
for name in "${IMAGES[@]}"; do
  find "$OUT" -maxdepth 1 -name "$name-*.tar" ! -name "$name-$TAG.tar" -delete
done
say "done: virtrigaud/{${IMAGES[*]// /,}}:$TAG in $OUT ($(since))"
