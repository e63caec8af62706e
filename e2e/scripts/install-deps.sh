#!/usr/bin/env bash
# Installs everything the local e2e world's endpoints need, on a fresh Debian 12 (bookworm) machine, as root.
# Idempotent: whatever is already present is skipped, so a second run takes a second or two.
#
#   - libvirt 11.3 + qemu 10.0 from bookworm-backports (one qemu generation only), libvirt-dev + pkg-config
#     (for the Rust `virt` crate), Cyrus SASL (DIGEST-MD5 + sasldb) for libvirt's TCP authentication
#   - nginx (WebDAV PUT/DELETE), openssh-server, openssl, jq, curl
#   - the real node: containerd, runc, CNI plugins, iptables (kube-proxy), socat (the node network's gateway);
#     debootstrap and umoci for `make images`
#   - nfs-ganesha + FSAL VFS, rpcbind (the userspace NFSv3 server of nfsd-up.sh), libnfs-utils
#   - s3s-fs (S3 server, crates.io) and vcsim (vSphere simulator, Go module proxy) into $VRG_CACHE/bin
#
# No service is started here: package maintainer scripts are prevented from starting daemons
# (policy-rc.d), and e2e/scripts/endpoints-up.sh starts private instances on 127.0.0.1.
#
# Environment: VRG_CACHE (default ~/.cache/virtrigaud), VRG_SKIP_APT=1 to skip the Debian part.
set -euo pipefail

VRG_CACHE=${VRG_CACHE:-$HOME/.cache/virtrigaud}
BIN=$VRG_CACHE/bin
S3S_FS_VERSION=0.14.1            # 0.17 needs a newer rustc than the one pinned for this project
GOVMOMI_VERSION=v0.56.0          # newest govmomi served by the Go module proxy when this was written

# Debian packages that must come from bookworm-backports (libvirt 11.3, qemu 10.0.2). qemu-system-common,
# qemu-system-data and seabios are listed so that apt does not mix in bookworm's qemu 7.2 pieces.
BACKPORTS_PKGS=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-driver-storage libvirt-daemon-driver-secret
  libvirt-clients libvirt-dev
  qemu-system-x86 qemu-system-common qemu-system-data seabios qemu-utils
)
# From bookworm itself.
BOOKWORM_PKGS=(
  pkg-config libsasl2-modules sasl2-bin
  nginx-full openssh-server openssh-client
  openssl ca-certificates jq curl procps iproute2
  strace # tests: which files qemu-img opens while it inspects a hostile image
  containerd runc containernetworking-plugins iptables socat # the real node (node-up.sh, node-net.sh)
  debootstrap umoci # make images
  nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils # the NFSv3 server of nfsd-up.sh, and its write check
)

say() { printf '[install-deps] %s\n' "$*"; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }
did=()

[ "$(id -u)" = 0 ] || die "run as root (apt-get installs system packages)"

# ---------------------------------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------------------------------
pkg_version() { { dpkg-query -W -f='${db:Status-Status} ${Version}' "$1" 2>/dev/null || true; } | awk '$1=="installed"{print $2}'; }

apt_part() {
  local sources_changed=0 bp_file=/etc/apt/sources.list.d/bookworm-backports.sources
  if ! grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
    cat >"$bp_file" <<'EOF'
# added by virtrigaud e2e/scripts/install-deps.sh
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    sources_changed=1
    did+=("added $bp_file")
  fi

  local want=() p v
  for p in "${BACKPORTS_PKGS[@]}"; do
    v=$(pkg_version "$p")
    # an installed bookworm (non-backports) version counts as missing: it must be replaced
    [[ "$v" == *bpo12* ]] || want+=("$p/bookworm-backports")
  done
  for p in "${BOOKWORM_PKGS[@]}"; do
    [ -n "$(pkg_version "$p")" ] || want+=("$p")
  done
  if [ ${#want[@]} -eq 0 ]; then
    say "Debian packages: all present"
    return 0
  fi

  # apt-get update at most once, and only when something must be installed and the lists are missing,
  # stale (> 6 h) or the sources just changed.
  local updated=0 lists_ok=0
  if [ $sources_changed = 0 ] && compgen -G '/var/lib/apt/lists/*bookworm-backports*Packages*' >/dev/null \
     && [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*bookworm-backports*_Packages*' -mmin +360 -print -quit)" ]; then
    lists_ok=1
  fi
  if [ $lists_ok = 0 ]; then
    say "apt-get update"
    apt-get update -qq
    updated=1
    did+=("apt-get update")
  fi

  # Keep maintainer scripts from starting nginx/sshd/libvirtd (they would bind 0.0.0.0:80/22).
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  [ $made_policy = 1 ] && trap 'rm -f /usr/sbin/policy-rc.d' EXIT

  say "apt-get install ${want[*]}"
  local apt_opts=(-y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  if ! DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${want[@]}"; then
    [ $updated = 1 ] && die "apt-get install failed"
    say "apt-get install failed with the existing package lists; running apt-get update and retrying once"
    apt-get update -qq
    did+=("apt-get update (retry)")
    DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${want[@]}"
  fi
  did+=("installed ${#want[@]} Debian packages (+ dependencies): ${want[*]}")
}

if [ "${VRG_SKIP_APT:-0}" = 1 ]; then
  say "VRG_SKIP_APT=1: skipping Debian packages"
else
  apt_part
fi

# ---------------------------------------------------------------------------------------------------
# s3s-fs (crates.io) and vcsim (Go module proxy) into $VRG_CACHE/bin
# ---------------------------------------------------------------------------------------------------
mkdir -p "$BIN"

if [ -x "$BIN/s3s-fs" ] && grep -qs "\"s3s-fs $S3S_FS_VERSION " "$VRG_CACHE/.crates.toml"; then
  say "s3s-fs $S3S_FS_VERSION: present"
else
  command -v cargo >/dev/null || die "cargo not found (the machine image provides Rust via rustup)"
  say "cargo install s3s-fs@$S3S_FS_VERSION --features binary --locked --root $VRG_CACHE (a few minutes)"
  nice -n 10 cargo install --quiet "s3s-fs@$S3S_FS_VERSION" --features binary --locked --root "$VRG_CACHE"
  did+=("built s3s-fs $S3S_FS_VERSION into $BIN")
fi

# vcsim: since govmomi v0.47.0 the vcsim command is a nested module (github.com/vmware/govmomi/vcsim, with a
# `replace ../` in its go.mod) that is not published on the Go module proxy, so
# `go install github.com/vmware/govmomi/vcsim@vX` only works up to v0.46.3 (Dec 2024), whose simulator has no
# ExportSnapshot. The simulator itself lives in the root module, so we build a small launcher of our own
# against github.com/vmware/govmomi@$GOVMOMI_VERSION (flags: the same names as upstream vcsim's).
VCSIM_SRC=$VRG_CACHE/src/vcsim
vcsim_main() {
cat <<'EOF'
// vcsim launcher for the virtrigaud e2e world (generated by e2e/scripts/install-deps.sh).
// It serves govmomi's vCenter simulator (simulator.VPX) like upstream's vcsim command.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"syscall"

	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"

	// optional REST endpoints (tags, content library, ...), as upstream vcsim registers them
	_ "github.com/vmware/govmomi/lookup/simulator"
	_ "github.com/vmware/govmomi/pbm/simulator"
	_ "github.com/vmware/govmomi/sts/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
)

func main() {
	model := simulator.VPX()
	flag.IntVar(&model.Datacenter, "dc", model.Datacenter, "Number of datacenters")
	flag.IntVar(&model.Cluster, "cluster", model.Cluster, "Number of clusters")
	flag.IntVar(&model.ClusterHost, "host", model.ClusterHost, "Number of hosts per cluster")
	flag.IntVar(&model.Host, "standalone-host", model.Host, "Number of standalone hosts")
	flag.IntVar(&model.Datastore, "ds", model.Datastore, "Number of local datastores")
	flag.IntVar(&model.Machine, "vm", model.Machine, "Number of virtual machines per resource pool")
	flag.BoolVar(&model.Autostart, "autostart", model.Autostart, "Autostart model created VMs")
	listen := flag.String("l", "127.0.0.1:8989", "Listen address")
	user := flag.String("username", "", "Login username, or a file holding it (any username allowed if empty)")
	pass := flag.String("password", "", "Login password, or a file holding it")
	useTLS := flag.Bool("tls", true, "Serve HTTPS")
	cert := flag.String("tlscert", "", "TLS certificate (PEM); a built-in self-signed one if empty")
	key := flag.String("tlskey", "", "TLS key (PEM)")
	flag.Parse()

	if flag.Arg(0) == "version" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, d := range bi.Deps {
				if d.Path == "github.com/vmware/govmomi" {
					fmt.Println("govmomi", d.Version)
				}
			}
		}
		return
	}

	u := &url.URL{Host: *listen}
	if *user != "" {
		u.User = url.UserPassword(secret(*user), secret(*pass))
	}
	host, port, err := net.SplitHostPort(*listen)
	if err != nil {
		log.Fatal(err)
	}
	esx.HostSystem.Summary.ManagementServerIp = host
	if n, err := strconv.Atoi(port); err == nil && n > 0 {
		esx.HostSystem.Summary.Config.Port = int32(n)
	}
	model.ServiceContent.About.FullName += " (govmomi simulator)"
	model.ServiceContent.About.OsType = runtime.GOOS + "-" + runtime.GOARCH

	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	model.Service.RegisterEndpoints = true
	model.Service.Listen = u
	if *useTLS {
		model.Service.TLS = new(tls.Config)
		if *cert != "" {
			c, err := tls.LoadX509KeyPair(*cert, *key)
			if err != nil {
				log.Fatal(err)
			}
			model.Service.TLS.Certificates = []tls.Certificate{c}
		}
	}
	s := model.Service.NewServer()
	su := *s.URL
	su.User = nil
	fmt.Printf("vcsim listening on %s (pid %d)\n", su.String(), os.Getpid())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	s.Close()
	model.Remove()
}

func secret(v string) string {
	val, err := session.Secret(v)
	if err != nil {
		log.Fatal(err)
	}
	return val
}
EOF
}

if [ -x "$BIN/vcsim" ] && cmp -s <(vcsim_main) "$VCSIM_SRC/main.go" \
   && go version -m "$BIN/vcsim" 2>/dev/null | grep -qE "^\s+dep\s+github.com/vmware/govmomi\s+$GOVMOMI_VERSION(\s|$)"; then
  say "vcsim (govmomi $GOVMOMI_VERSION simulator): present"
else
  command -v go >/dev/null || die "go not found (the machine image provides Go in /usr/local/go)"
  say "building vcsim against github.com/vmware/govmomi@$GOVMOMI_VERSION (a few minutes)"
  mkdir -p "$VCSIM_SRC"
  vcsim_main >"$VCSIM_SRC/main.go"
  printf 'module virtrigaud.local/e2e-vcsim\n\ngo 1.25.0\n\nrequire github.com/vmware/govmomi %s\n' "$GOVMOMI_VERSION" >"$VCSIM_SRC/go.mod"
  (cd "$VCSIM_SRC" && GOFLAGS=-mod=mod go mod tidy && nice -n 10 go build -trimpath -o "$BIN/vcsim" .)
  did+=("built vcsim (govmomi $GOVMOMI_VERSION simulator) into $BIN")
fi

# ---------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------
if [ ${#did[@]} -eq 0 ]; then
  say "nothing to do: everything was already installed"
else
  for d in "${did[@]}"; do say "did: $d"; done
fi
v_libvirt=$(libvirtd --version | awk '{print $NF}')
v_qemu=$(qemu-system-x86_64 --version | head -1 | awk '{print $4}')
v_qemu_img=$(qemu-img --version | head -1 | awk '{print $3}')
v_nginx=$(nginx -v 2>&1 | sed 's/.*: //')
v_ssh=$(ssh -V 2>&1 | cut -d, -f1)
say "versions: libvirtd $v_libvirt, qemu-system-x86_64 $v_qemu, qemu-img $v_qemu_img, $v_nginx, $v_ssh," \
  "s3s-fs $S3S_FS_VERSION, vcsim (govmomi) $GOVMOMI_VERSION"
