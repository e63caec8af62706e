#!/usr/bin/env bash
# Stops the Proxmox VE simulator started by pvesim-up.sh, by the pid in e2e/.world/pids/pvesim.pid
# (never by name). Data (e2e/.world/pve), tokens, certificate, logs and the pvesm wrapper are kept.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=${VRG_WORLD:-$ROOT/e2e/.world}
f=$W/pids/pvesim.pid

say() { printf '[pvesim-down] %s\n' "$*"; }

if [ ! -s "$f" ]; then say "pvesim: not running (no pid file)"; exit 0; fi
pid=$(tr -dc 0-9 <"$f")
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
  say "pvesim: not running (stale pid file)"; rm -f "$f"; exit 0
fi
exe=$(basename "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" | sed 's/ (deleted)$//')
if [ "$exe" != pvesim ]; then
  say "pvesim: pid $pid is not pvesim any more ($exe), leaving it alone"; rm -f "$f"; exit 0
fi
kill -TERM "$pid"
for ((i = 0; i < 50; i++)); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
if kill -0 "$pid" 2>/dev/null; then
  kill -KILL "$pid" 2>/dev/null || true
  say "pvesim: killed (pid $pid did not stop on TERM within 10 s)"
else
  say "pvesim: stopped (pid $pid)"
fi
rm -f "$f"
