#!/usr/bin/env bash
# Stops the Proxmox VE simulator started by pvesim-up.sh, by the pid in e2e/.world/pids/pvesim.pid
# (never by name). Data (e2e/.world/pve), tokens, certificate, logs and the pvesm wrapper are kept.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=${VRG_WORLD:-$ROOT/e2e/.world}
PIDS=$W/pids

say() { printf '[pvesim-down] %s\n' "$*"; }

# shellcheck source=e2e/scripts/stop-by-pid.sh
. "$HERE/stop-by-pid.sh"
stop pvesim pvesim
