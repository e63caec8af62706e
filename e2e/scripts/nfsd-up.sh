#!/usr/bin/env bash
# Starts the NFSv3 server of the local e2e world, on 127.0.0.1 only:
#
#   portmapper  127.0.0.1:111     rpcbind (TCP; its wildcard bind is moved onto 127.0.0.1 by the world's
#                                 vrg-bindshim preload, and it sees a netconfig of tcp + local only)
#   NFS v3      127.0.0.1:2049    nfs-ganesha 4.3, FSAL VFS, TCP only, AUTH_UNIX, no root squash
#   MOUNT v3    127.0.0.1:20048   the same ganesha (it serves MOUNT on its own port)
#
# The export: $E2E_WORLD/nfs/export as /export (read-write for 127.0.0.1; owned by 65532:65532, the runner's
# uid, so a runner that is not root can write too; no attribute caching, tests look behind the server's
# back). A second one, /export-ro, is read-only (the tests' permission-denied case). A bare host as storage.endpoint finds MOUNT and NFS
# through the portmapper, as with a real server. When 2049 or 20048 are taken by something else, free ports
# are used instead (nfsd.env says which).
#
# Writes $E2E_WORLD/nfsd.env (VRG_NFS_HOST, VRG_NFS_PORT, VRG_NFS_MOUNT_PORT, VRG_NFS_PORTMAPPER_PORT,
# VRG_NFS_ENDPOINT, VRG_NFS_EXPORT, VRG_NFS_DIR, VRG_NFS_RO_EXPORT). Logs: logs/nfsd.log (ganesha), logs/rpcbind.log;
# pids: pids/nfsd.pid, pids/rpcbind.pid. Idempotent: running servers with the same configuration that answer
# are left alone. Checks a write, a read-back and a listing through the export with libnfs (nfs-cp, nfs-ls).
# Stop with nfsd-down.sh. Needs root and e2e/scripts/install-deps.sh (nfs-ganesha, rpcbind, libnfs-utils).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=${E2E_WORLD:-${VRG_WORLD:-$ROOT/e2e/.world}}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/virtrigaud/target}
HOST=127.0.0.1
PMAP_PORT=111
EXPORT=/mnt/migrations # the path of the guide's NFS example
RO_EXPORT=/export-ro # the same server, read-only: the tests' permission-denied case
RUNNER_UID=65532

# shellcheck source=e2e/scripts/node-net.sh
. "$HERE/node-net.sh"
ADDR=$HOST_IP # clients (pods, tests) reach the server at the node network's gateway, which forwards to 127.0.0.1

say() { printf '[nfsd-up] %s\n' "$*"; }
die() { printf '[nfsd-up] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (ganesha's FSAL VFS needs CAP_DAC_READ_SEARCH for open_by_handle_at)"
for t in ganesha.nfsd rpcbind rpcinfo unshare nfs-cp nfs-ls cargo ss; do
  command -v "$t" >/dev/null || die "$t not found: run e2e/scripts/install-deps.sh first"
done
[ -e /usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so ] || [ -n "$(find /usr/lib -name libfsalvfs.so -print -quit 2>/dev/null)" ] \
  || die "ganesha's FSAL VFS (nfs-ganesha-vfs) is missing: run e2e/scripts/install-deps.sh first"

mkdir -p "$W"
W=$(cd "$W" && pwd)
LOGS=$W/logs PIDS=$W/pids BINDIR=$W/bin NFS=$W/nfs
DATA=$NFS/export
mkdir -p "$LOGS" "$PIDS" "$BINDIR" "$NFS" "$DATA" "$NFS/recovery" "$NFS/readonly"
chown "$RUNNER_UID:$RUNNER_UID" "$DATA"
chmod 0775 "$DATA"

# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
# pid_alive NAME EXE: the pid in pids/NAME.pid is running and is EXE (guards against a reused pid)
pid_alive() {
  local f=$PIDS/$1.pid pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc 0-9 <"$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ "$(basename "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" | sed 's/ (deleted)$//')" = "$2" ]
}
# port_owner PORT: the pid listening on 127.0.0.1:PORT (or on every address), empty when none
# (the node network's gateway forwarding that port from its own address does not count)
port_owner() {
  ss -ltnpH "sport = :$1" | awk '$4 ~ /^(127\.0\.0\.1|0\.0\.0\.0|\*|\[::\]):/' |
    sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1
}
wait_for() { # wait_for SECONDS COMMAND...: poll COMMAND every 0.2 s
  local secs=$1 i; shift
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  return 1
}
# start_bg NAME COMMAND...: run COMMAND detached (own session), log to logs/NAME.log, pid to pids/NAME.pid
start_bg() {
  local name=$1; shift
  rm -f "$PIDS/$name.pid"
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
  setsid -f bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDS/$name.pid" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null
  wait_for 5 test -s "$PIDS/$name.pid" || die "$name: no pid file"
}
# stop NAME EXE: TERM our process (by its pid file), wait up to 10 s, then KILL
stop() {
  local f=$PIDS/$1.pid pid i
  pid_alive "$1" "$2" || { rm -f "$f"; return 0; }
  pid=$(tr -dc 0-9 <"$f")
  kill -TERM "$pid"
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$f"
}
fail_log() { echo "---- last lines of $LOGS/$1.log ----" >&2; tail -n 30 "$LOGS/$1.log" >&2 || true; die "$2"; }
# free_port PREFERRED NAME: PREFERRED when nobody else listens there (ours counts as free), else a free one
free_port() {
  local port=$1 owner
  owner=$(port_owner "$port")
  if [ -z "$owner" ] || { pid_alive "$2" ganesha.nfsd && [ "$owner" = "$(tr -dc 0-9 <"$PIDS/$2.pid")" ]; }; then
    echo "$port"; return
  fi
  for ((port = 12049; port < 12149; port++)); do
    [ -z "$(port_owner "$port")" ] && { echo "$port"; return; }
  done
  die "no free port for $2"
}

# ---------------------------------------------------------------------------------------------------
# rpcbind on 127.0.0.1:111
# ---------------------------------------------------------------------------------------------------
# rpcbind binds the wildcard address (its -h only applies to UDP, and crashes with a double free in
# bookworm's 1.2.6): the bindshim preload moves that bind onto 127.0.0.1, and a private mount namespace
# shows it a netconfig with tcp and the local socket only (no UDP, no IPv6).
say "building vrg-bindshim"
(cd "$ROOT" && cargo build -q -p vrg-bindshim) || die "cargo build -p vrg-bindshim failed"
SHIM=$BINDIR/libvrg_bindshim.so
cmp -s "$CARGO_TARGET_DIR/debug/libvrg_bindshim.so" "$SHIM" || {
  install -m 0644 "$CARGO_TARGET_DIR/debug/libvrg_bindshim.so" "$SHIM.new"
  mv -f "$SHIM.new" "$SHIM"
}
cat >"$NFS/netconfig" <<'EOF'
# netconfig of the e2e world's rpcbind (generated by e2e/scripts/nfsd-up.sh): TCP and the local socket
tcp        tpi_cots_ord  v     inet     tcp     -       -
local      tpi_cots_ord  -     loopback  -      -       -
unix       tpi_cots_ord  -     loopback  -      -       -
EOF

pmap_ready() { rpcinfo -n "$PMAP_PORT" -t "$HOST" 100000 2; }
rpcbind_fresh=0
if pid_alive rpcbind rpcbind && pmap_ready >/dev/null 2>&1; then
  say "rpcbind: already running (pid $(cat "$PIDS/rpcbind.pid"))"
else
  stop rpcbind rpcbind
  owner=$(port_owner "$PMAP_PORT")
  [ -z "$owner" ] || die "port $PMAP_PORT is in use by a process that is not ours: $(ss -ltnpH "sport = :$PMAP_PORT" | head -1)"
  other=$(ss -lxpH | { grep -F ' /run/rpcbind.sock ' || true; } | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
  [ -z "$other" ] || die "an rpcbind that is not ours (pid $other) serves /run/rpcbind.sock; stop it first"
  mkdir -p /run/rpcbind
  # no -w: registrations of an earlier run are stale; ganesha registers again below
  start_bg rpcbind unshare --mount --propagation private sh -c \
    'mount --bind "$1" /etc/netconfig && VRG_BIND_IP=127.0.0.1 LD_PRELOAD="$2" exec rpcbind -f' \
    _ "$NFS/netconfig" "$SHIM"
  wait_for 10 pmap_ready || fail_log rpcbind "rpcbind does not answer on $HOST:$PMAP_PORT"
  rpcbind_fresh=1
  say "rpcbind: started (pid $(cat "$PIDS/rpcbind.pid")) on $HOST:$PMAP_PORT"
fi
# (the gateway's forwarder on the node network's address aside)
bound=$(ss -ltnH "sport = :$PMAP_PORT" | awk -v gw="$ADDR:$PMAP_PORT" '$4 != gw {print $4}' | sort -u | tr '\n' ' ')
[ "$bound" = "$HOST:$PMAP_PORT " ] || die "rpcbind listens on '$bound', expected only $HOST:$PMAP_PORT"

# ---------------------------------------------------------------------------------------------------
# ganesha
# ---------------------------------------------------------------------------------------------------
NFS_PORT=$(free_port 2049 nfsd)
MNT_PORT=$(free_port 20048 nfsd)
[ "$NFS_PORT" = 2049 ] || say "port 2049 is taken: NFS on $NFS_PORT"
[ "$MNT_PORT" = 20048 ] || say "port 20048 is taken: MOUNT on $MNT_PORT"
CONF=$NFS/ganesha.conf
cat >"$CONF.new" <<EOF
# nfs-ganesha of the virtrigaud e2e world (generated by e2e/scripts/nfsd-up.sh)
NFS_CORE_PARAM {
    Bind_addr = $HOST;
    NFS_Port = $NFS_PORT;
    MNT_Port = $MNT_PORT;
    Protocols = 3;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    # NFSv3 clients mount the pseudo path (/export), not the directory behind it
    Mount_Path_Pseudo = true;
}
NFS_KRB5 { Active_krb5 = false; }
NFSV4 { Graceless = true; RecoveryRoot = "$NFS/recovery"; }
EXPORT {
    Export_Id = 1;
    Path = "$DATA";
    Pseudo = "$EXPORT";
    Protocols = 3;
    Transports = TCP;
    SecType = sys;
    Access_Type = None;
    Squash = No_Root_Squash;
    # tests change files behind the server's back: no attribute or directory caching
    Attr_Expiration_Time = 0;
    FSAL { Name = VFS; }
    CLIENT { Clients = $HOST; Access_Type = RW; }
}
EXPORT {
    Export_Id = 2;
    Path = "$NFS/readonly";
    Pseudo = "$RO_EXPORT";
    Protocols = 3;
    Transports = TCP;
    SecType = sys;
    Access_Type = None;
    Squash = No_Root_Squash;
    Attr_Expiration_Time = 0;
    FSAL { Name = VFS; }
    CLIENT { Clients = $HOST; Access_Type = RO; }
}
LOG { Default_Log_Level = EVENT; }
EOF
changed=0
cmp -s "$CONF.new" "$CONF" || changed=1
mv -f "$CONF.new" "$CONF"

rpc_ready() {
  rpcinfo -n "$NFS_PORT" -t "$HOST" 100003 3 && rpcinfo -n "$MNT_PORT" -t "$HOST" 100005 3 \
    && rpcinfo -p "$HOST" | grep -qE "^ +100003 +3 +tcp +$NFS_PORT " \
    && rpcinfo -p "$HOST" | grep -qE "^ +100005 +3 +tcp +$MNT_PORT "
}
if pid_alive nfsd ganesha.nfsd; then
  if [ $changed = 0 ] && [ $rpcbind_fresh = 0 ] && rpc_ready >/dev/null 2>&1; then
    say "ganesha: already running (pid $(cat "$PIDS/nfsd.pid"))"
  else
    say "ganesha: configuration or portmapper changed, restarting"
    stop nfsd ganesha.nfsd
  fi
fi
if ! pid_alive nfsd ganesha.nfsd; then
  for p in "$NFS_PORT" "$MNT_PORT"; do
    [ -z "$(port_owner "$p")" ] || die "port $p is in use by a process that is not ours: $(ss -ltnpH "sport = :$p" | head -1)"
  done
  # -F: foreground (the pid file is ours); ganesha logs DBUS errors (there is no system bus): harmless
  start_bg nfsd ganesha.nfsd -F -f "$CONF" -L "$LOGS/nfsd.log" -p "$NFS/ganesha.pid" -N NIV_EVENT
  wait_for 30 rpc_ready || fail_log nfsd "ganesha does not answer NFS v3 on $HOST:$NFS_PORT and MOUNT v3 on $HOST:$MNT_PORT"
  say "ganesha: started (pid $(cat "$PIDS/nfsd.pid")): NFS $HOST:$NFS_PORT, MOUNT $HOST:$MNT_PORT, export $EXPORT -> $DATA"
fi
for p in "$NFS_PORT" "$MNT_PORT"; do
  bound=$(ss -ltnH "sport = :$p" | awk -v gw="$ADDR:$p" '$4 != gw {print $4}' | sort -u | tr '\n' ' ')
  case "$bound" in
    "$HOST:$p " | "[::ffff:$HOST]:$p ") ;;
    *) die "ganesha listens on '$bound', expected only $HOST:$p" ;;
  esac
done

# ---------------------------------------------------------------------------------------------------
# a write, a read-back and a listing through the export (libnfs, through the portmapper)
# ---------------------------------------------------------------------------------------------------
probe=.nfsd-up-check-$$
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; rm -f "$DATA/$probe"' EXIT
head -c 3000017 /dev/urandom >"$tmp/probe"
nfs-cp "$tmp/probe" "nfs://$HOST$EXPORT/$probe?version=3" >/dev/null || fail_log nfsd "writing nfs://$HOST$EXPORT/$probe failed"
cmp -s "$tmp/probe" "$DATA/$probe" || die "the file written through NFS differs from the one in $DATA"
nfs-cp "nfs://$HOST$EXPORT/$probe?version=3" "$tmp/back" >/dev/null || fail_log nfsd "reading nfs://$HOST$EXPORT/$probe failed"
cmp -s "$tmp/probe" "$tmp/back" || die "the file read back through NFS differs from the one written"
nfs-ls "nfs://$HOST$EXPORT?version=3" | grep -q " $probe\$" || die "nfs-ls nfs://$HOST$EXPORT does not list $probe"
say "check: 3000017 bytes written, read back and listed through nfs://$HOST$EXPORT"

# ---------------------------------------------------------------------------------------------------
# nfsd.env
# ---------------------------------------------------------------------------------------------------
{
  echo "# virtrigaud e2e NFSv3 server (generated by e2e/scripts/nfsd-up.sh; source it)"
  echo "# storage: {type: nfs, endpoint: \$VRG_NFS_ENDPOINT, path: \$VRG_NFS_EXPORT}; files land in \$VRG_NFS_DIR"
  exp() { printf 'export %s=%q\n' "$1" "$2"; }
  exp VRG_NFS_HOST "$ADDR"
  exp VRG_NFS_PORT "$NFS_PORT"
  exp VRG_NFS_MOUNT_PORT "$MNT_PORT"
  exp VRG_NFS_PORTMAPPER_PORT "$PMAP_PORT"
  echo "# a bare host: MOUNT's and NFS's ports come from the portmapper (ganesha serves MOUNT on its own port)"
  exp VRG_NFS_ENDPOINT "$ADDR"
  exp VRG_NFS_EXPORT "$EXPORT"
  exp VRG_NFS_DIR "$DATA"
  exp VRG_NFS_RO_EXPORT "$RO_EXPORT"
} >"$W/nfsd.env.tmp"
chmod 600 "$W/nfsd.env.tmp"
mv -f "$W/nfsd.env.tmp" "$W/nfsd.env"
say "ready; source $W/nfsd.env"
