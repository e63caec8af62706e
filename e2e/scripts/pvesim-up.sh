#!/usr/bin/env bash
# Starts the Proxmox VE simulator of the local e2e world (e2e/pvesim):
#
#   API   https://127.0.0.1:8006/api2/json   node pve1, storages local (dir) and local-lvm (lvmthin),
#                                             API token auth, certificate signed by the world CA
#   SSH   the world's sshd (127.0.0.1:2222, endpoints-up.sh) runs `pvesm`, `lvs` and `lvchange`,
#         installed as wrappers in /usr/local/sbin that point at the simulator's data directory
#         (lvs/lvchange only when the host has no real lvm2, which they would shadow)
#
# Builds the crate, copies the binaries to e2e/.world/bin/, generates the API tokens once into
# e2e/.world/creds/ (pve-token: root@pam!virtrigaud, full; pve-token-readonly: root@pam!readonly,
# PVEAuditor), creates the fixture VMs if missing (source VM `database-server` 100, templates 900
# and 901, linked clones 101 and 102), starts the server
# (pid e2e/.world/pids/pvesim.pid, log e2e/.world/logs/pvesim.log) and writes e2e/.world/pvesim.env.
# Idempotent: a running simulator is left alone unless its binary changed. Stop with pvesim-down.sh.
# Needs root (for /usr/local/sbin) and the world CA of endpoints-up.sh. VRG_WORLD moves the world;
# VRG_PVESIM_PROFILE=release builds optimized.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=e2e/scripts/node-net.sh
. "$HERE/node-net.sh"
ADDR=$HOST_IP # clients reach the simulator at the node network's gateway (node-net.sh), which forwards to 127.0.0.1
ROOT=$(cd "$HERE/../.." && pwd)
W=${VRG_WORLD:-$ROOT/e2e/.world}
PORT=8006
NODE=pve1
TOKEN_ID='root@pam!virtrigaud'
RO_TOKEN_ID='root@pam!readonly'
PROFILE=${VRG_PVESIM_PROFILE:-debug}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/virtrigaud/target}
SBIN=/usr/local/sbin
MARKER='of the virtrigaud e2e Proxmox simulator'

say() { printf '[pvesim-up] %s\n' "$*"; }
die() { printf '[pvesim-up] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the pvesm wrapper goes to $SBIN)"
for t in cargo qemu-img qemu-io openssl curl; do
  command -v "$t" >/dev/null || die "$t not found: run e2e/scripts/install-deps.sh first"
done
mkdir -p "$W"
W=$(cd "$W" && pwd)
CREDS=$W/creds LOGS=$W/logs PIDS=$W/pids DATA=$W/pve BINDIR=$W/bin
if [ ! -s "$CREDS/http-ca.pem" ] || [ ! -s "$CREDS/http-ca-key.pem" ]; then
  die "the world CA ($CREDS/http-ca.pem) is missing: run e2e/scripts/endpoints-up.sh first"
fi
mkdir -p "$LOGS" "$PIDS" "$DATA" "$BINDIR"
chmod 700 "$DATA"

# ---------------------------------------------------------------------------------------------------
# build and install the binaries into the world (a later rebuild in the shared target dir does not
# change what runs)
# ---------------------------------------------------------------------------------------------------
say "building pvesim ($PROFILE)"
profile_flag=()
[ "$PROFILE" = release ] && profile_flag=(--release)
(cd "$ROOT" && cargo build -q -p pvesim "${profile_flag[@]}") || die "cargo build -p pvesim failed"
changed=0
for b in pvesim pvesm lvs lvchange; do
  if ! cmp -s "$CARGO_TARGET_DIR/$PROFILE/$b" "$BINDIR/$b"; then
    install -m 0755 "$CARGO_TARGET_DIR/$PROFILE/$b" "$BINDIR/$b.new"
    mv -f "$BINDIR/$b.new" "$BINDIR/$b"
    changed=1
  fi
done

# ---------------------------------------------------------------------------------------------------
# credentials: API tokens (secrets are UUIDs, as PVE's) and the server certificate
# ---------------------------------------------------------------------------------------------------
umask 077
[ -s "$CREDS/pve-token" ] || tr -d '\n' </proc/sys/kernel/random/uuid >"$CREDS/pve-token"
[ -s "$CREDS/pve-token-readonly" ] || tr -d '\n' </proc/sys/kernel/random/uuid >"$CREDS/pve-token-readonly"
SECRET=$(cat "$CREDS/pve-token")
RO_SECRET=$(cat "$CREDS/pve-token-readonly")
cat >"$DATA/tokens.json.tmp" <<EOF
[
  { "tokenid": "$TOKEN_ID", "secret": "$SECRET", "privsep": false, "role": "Administrator" },
  { "tokenid": "$RO_TOKEN_ID", "secret": "$RO_SECRET", "privsep": true, "role": "PVEAuditor" }
]
EOF
mv -f "$DATA/tokens.json.tmp" "$DATA/tokens.json"

CERT=$CREDS/pvesim.pem KEY=$CREDS/pvesim-key.pem
if [ ! -s "$CERT" ] || [ ! -s "$KEY" ] || ! openssl verify -CAfile "$CREDS/http-ca.pem" "$CERT" >/dev/null 2>&1 \
   || ! openssl x509 -in "$CERT" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 \
   || ! openssl x509 -in "$CERT" -noout -ext subjectAltName | grep -q "IP Address:$ADDR\b"; then
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/O=virtrigaud e2e/CN=$NODE" \
    -keyout "$KEY" -out "$CREDS/pvesim.csr" 2>/dev/null
  openssl x509 -req -in "$CREDS/pvesim.csr" -CA "$CREDS/http-ca.pem" -CAkey "$CREDS/http-ca-key.pem" \
    -CAcreateserial -days 825 -out "$CERT" 2>/dev/null -extfile <(printf '%s\n' \
      "subjectAltName=IP:127.0.0.1,IP:$ADDR,DNS:localhost,DNS:$NODE" "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth")
  rm -f "$CREDS/pvesim.csr"
  changed=1
  say "issued $CERT (signed by the world CA)"
fi
umask 022

# ---------------------------------------------------------------------------------------------------
# source VM and the pvesm wrapper the sshd session finds on its PATH
# ---------------------------------------------------------------------------------------------------
"$BINDIR/pvesim" fixture --data-dir "$DATA" | sed 's/^/[pvesim-up] fixture: /'

install_wrapper() { # install_wrapper NAME: $SBIN/NAME runs $BINDIR/NAME on $DATA
  local name=$1 wrapper=$SBIN/$1
  if [ -e "$wrapper" ] && ! grep -qF "$MARKER" "$wrapper"; then
    die "$wrapper exists and is not the simulator's wrapper: refusing to replace it"
  fi
  cat >"$wrapper.tmp" <<EOF
#!/bin/sh
# $name $MARKER (generated by e2e/scripts/pvesim-up.sh)
: "\${PVESIM_DATA_DIR:=$DATA}"
export PVESIM_DATA_DIR
exec "$BINDIR/$name" "\$@"
EOF
  chmod 0755 "$wrapper.tmp"
  mv -f "$wrapper.tmp" "$wrapper"
}
install_wrapper pvesm
# lvs/lvchange act on the simulator's LVM-thin volumes; they must not shadow a real lvm2
lvm_wrappers=1
for real in /sbin/lvs /usr/sbin/lvs /sbin/lvchange /usr/sbin/lvchange; do
  if [ -e "$real" ] && ! grep -qsF "$MARKER" "$real"; then lvm_wrappers=0; fi
done
if [ $lvm_wrappers = 1 ]; then
  install_wrapper lvs
  install_wrapper lvchange
else
  say "lvm2 is installed on this host: not installing lvs/lvchange in $SBIN (run $BINDIR/lvs and $BINDIR/lvchange with PVESIM_DATA_DIR=$DATA)"
fi

# ---------------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------------
pid_alive() {
  local f=$PIDS/pvesim.pid pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc 0-9 <"$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ "$(basename "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" | sed 's/ (deleted)$//')" = pvesim ]
}
api() { # api PATH [curl args...]: status code of an authenticated GET
  local p=$1; shift
  curl -s -o /dev/null -w '%{http_code}' --cacert "$CREDS/http-ca.pem" "$@" "https://127.0.0.1:$PORT/api2/json$p"
}
ready() { [ "$(api /version -H "Authorization: PVEAPIToken=$TOKEN_ID=$SECRET")" = 200 ]; }
wait_for() { local i; for ((i = 0; i < $1 * 5; i++)); do "${@:2}" && return 0; sleep 0.2; done; return 1; }
fail_log() { echo "---- last lines of $LOGS/pvesim.log ----" >&2; tail -n 30 "$LOGS/pvesim.log" >&2 || true; die "$1"; }

if pid_alive; then
  if [ $changed = 0 ] && ready; then
    say "pvesim: already running (pid $(cat "$PIDS/pvesim.pid"))"
  else
    say "pvesim: binary or certificate changed, restarting"
    kill "$(cat "$PIDS/pvesim.pid")"
    wait_for 10 bash -c "! kill -0 $(cat "$PIDS/pvesim.pid") 2>/dev/null" || die "pvesim did not stop"
    rm -f "$PIDS/pvesim.pid"
  fi
fi
if ! pid_alive; then
  rm -f "$PIDS/pvesim.pid"
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port 127.0.0.1:$PORT is in use by a process that is not ours: $(ss -ltnpH "sport = :$PORT" | head -1)"
  fi
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
  setsid -f bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDS/pvesim.pid" \
    "$BINDIR/pvesim" --listen "127.0.0.1:$PORT" --data-dir "$DATA" \
    --tls-cert "$CERT" --tls-key "$KEY" --ca-file "$CREDS/http-ca.pem" \
    >>"$LOGS/pvesim.log" 2>&1 </dev/null
  wait_for 5 test -s "$PIDS/pvesim.pid" || die "pvesim: no pid file"
  wait_for 30 ready || fail_log "pvesim does not answer an authenticated GET /version on https://127.0.0.1:$PORT"
  say "pvesim: started (pid $(cat "$PIDS/pvesim.pid")) on https://127.0.0.1:$PORT/api2/json"
fi
code=$(api /version -H "Authorization: PVEAPIToken=$TOKEN_ID=wrong")
[ "$code" = 401 ] || die "a wrong token secret got HTTP $code instead of 401"

# ---------------------------------------------------------------------------------------------------
# pvesim.env, and `pvesm` through the world's sshd when it is up
# ---------------------------------------------------------------------------------------------------
{
  echo "# virtrigaud e2e Proxmox simulator (generated by e2e/scripts/pvesim-up.sh; source it)"
  exp() { printf 'export %s=%q\n' "$1" "$2"; }
  exp VRG_PVE_URL "https://$ADDR:$PORT"
  exp VRG_PVE_NODE "$NODE"
  exp VRG_PVE_TOKEN_ID "$TOKEN_ID"
  exp VRG_PVE_TOKEN_SECRET "$SECRET"
  exp VRG_PVE_READONLY_TOKEN_ID "$RO_TOKEN_ID"
  exp VRG_PVE_READONLY_TOKEN_SECRET "$RO_SECRET"
  exp VRG_PVE_CA "$CREDS/http-ca.pem"
  exp VRG_PVE_DATA_DIR "$DATA"
  exp VRG_PVE_SOURCE_VMID 100
  exp VRG_PVE_SOURCE_NAME database-server
  exp VRG_PVE_TEMPLATE_VMID 900
  exp VRG_PVE_LINKED_CLONE_VMID 101
  exp VRG_PVE_LVM_TEMPLATE_VMID 901
  exp VRG_PVE_LVM_LINKED_CLONE_VMID 102
  echo "# pvesm export (and lvs/lvchange) over SSH: the world's sshd (endpoints-up.sh) runs the wrappers in $SBIN"
  exp VRG_PVE_SSH_HOST "$ADDR"
  exp VRG_PVE_SSH_PORT 2222
  exp VRG_PVE_SSH_USER root
  exp VRG_PVE_SSH_KEY "$CREDS/ssh_client_ed25519"
  exp VRG_PVE_SSH_KNOWN_HOSTS "$CREDS/ssh_known_hosts"
} >"$W/pvesim.env.tmp"
chmod 600 "$W/pvesim.env.tmp"
mv -f "$W/pvesim.env.tmp" "$W/pvesim.env"

if [ -s "$CREDS/ssh_client_ed25519" ] && (exec 3<>/dev/tcp/127.0.0.1/2222) 2>/dev/null; then
  remote() {
    ssh -F none -i "$CREDS/ssh_client_ed25519" -p 2222 -o BatchMode=yes -o IdentitiesOnly=yes \
      -o UserKnownHostsFile="$CREDS/ssh_known_hosts" -o StrictHostKeyChecking=yes -o ConnectTimeout=5 \
      root@127.0.0.1 "$@" </dev/null
  }
  listing=$(remote pvesm list local) || die "ssh root@127.0.0.1 -p 2222 pvesm list local failed"
  grep -q '^local:100/vm-100-disk-0.qcow2 ' <<<"$listing" || die "pvesm over ssh does not list the source VM's disk"
  grep -q '^local:900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2 ' <<<"$listing" \
    || die "pvesm over ssh does not list the linked clone's disk"
  if [ $lvm_wrappers = 1 ]; then
    lv=$(remote lvs --noheadings -o lv_name pve/vm-100-disk-0) || die "ssh root@127.0.0.1 -p 2222 lvs failed"
    [ "$(echo $lv)" = vm-100-disk-0 ] || die "lvs over ssh printed '$lv'"
  fi
  say "ssh: pvesm list local (and lvs) over 127.0.0.1:2222 work"
else
  say "ssh: the world's sshd is not up (endpoints-up.sh); pvesm over ssh not checked"
fi
say "ready; source $W/pvesim.env"
