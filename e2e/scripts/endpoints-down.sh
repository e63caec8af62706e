#!/usr/bin/env bash
# Stops the endpoints started by endpoints-up.sh, by the pids in e2e/.world/pids/ (never by name).
# Credentials, data and logs in e2e/.world/ are kept. Guests (qemu processes) started through libvirt are left
# running, as libvirt itself does when libvirtd stops; `virsh destroy` them first if they must go.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=${VRG_WORLD:-$ROOT/e2e/.world}
PIDS=$W/pids

say() { printf '[endpoints-down] %s\n' "$*"; }

# shellcheck source=e2e/scripts/stop-by-pid.sh
. "$HERE/stop-by-pid.sh"

[ -d "$PIDS" ] || { say "no world at $W: nothing to stop"; exit 0; }
stop nginx nginx
stop sshd sshd
stop s3 s3s-fs
stop vcsim vcsim
stop libvirtd libvirtd
stop virtlogd virtlogd
