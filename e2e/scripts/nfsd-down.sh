#!/usr/bin/env bash
# Stops the NFSv3 server started by nfsd-up.sh (ganesha, then rpcbind), by the pids in
# $E2E_WORLD/pids/nfsd.pid and rpcbind.pid (never by name). The export's files, the configuration and
# the logs are kept.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=${E2E_WORLD:-${VRG_WORLD:-$ROOT/e2e/.world}}
PIDS=$W/pids

say() { printf '[nfsd-down] %s\n' "$*"; }

# shellcheck source=e2e/scripts/stop-by-pid.sh
. "$HERE/stop-by-pid.sh"

[ -d "$PIDS" ] || { say "no world at $W: nothing to stop"; exit 0; }
stop nfsd ganesha.nfsd
stop rpcbind rpcbind
