#!/usr/bin/env bash
# Starts the hypervisor/storage endpoints of the local e2e world on 127.0.0.1, each with generated credentials:
#
#   libvirt   qemu+tcp://127.0.0.1:16509/system   libvirtd 11.3 + qemu 10.0 (TCG or KVM), SASL DIGEST-MD5 + sasldb
#   vcsim     https://10.250.255.1:8989/sdk       govmomi's vCenter simulator, username/password (on the gateway)
#   S3        http://127.0.0.1:9000               s3s-fs (SigV4), bucket vm-migrations
#   HTTP(S)   http://127.0.0.1:8088, https://127.0.0.1:8443   nginx WebDAV PUT/DELETE, bearer token
#   SSH       127.0.0.1:2222                      sshd, public-key only (root)
#
# Servers listen on 127.0.0.1 only; clients (the node's pods, and the tests, so both use the same addresses)
# reach them at the node network's gateway address 10.250.255.1 (node-net.sh, brought up here), which
# forwards each port to 127.0.0.1: every address in endpoints.env is the gateway's, and the certificates
# and known_hosts name both addresses.
# Credentials are generated once into e2e/.world/creds/ and reused. Logs: e2e/.world/logs/<name>.log,
# pids: e2e/.world/pids/<name>.pid. Everything is written to e2e/.world/endpoints.env (shell exports).
# Idempotent: a service whose pid is alive and which answers is left alone. Stop with endpoints-down.sh.
# Needs root and e2e/scripts/install-deps.sh. VRG_WORLD overrides the world directory, VRG_CACHE the tool cache.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=${VRG_WORLD:-$ROOT/e2e/.world}
VRG_CACHE=${VRG_CACHE:-$HOME/.cache/virtrigaud}
BIN=$VRG_CACHE/bin
CREDS=$W/creds LOGS=$W/logs PIDS=$W/pids

LIBVIRT_PORT=16509 VCSIM_PORT=8989 S3_PORT=9000 HTTP_PORT=8088 HTTPS_PORT=8443 SSH_PORT=2222
S3_BUCKET=vm-migrations S3_REGION=us-east-1
LIBVIRT_USER=vrg VCSIM_USER=vrg-admin

# shellcheck source=e2e/scripts/node-net.sh
. "$HERE/node-net.sh"
ADDR=$HOST_IP # where clients connect (the gateway)

say() { printf '[endpoints-up] %s\n' "$*"; }
die() { printf '[endpoints-up] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
for t in libvirtd virtlogd virsh saslpasswd2 nginx /usr/sbin/sshd ssh-keygen openssl curl "$BIN/s3s-fs" "$BIN/vcsim"; do
  command -v "$t" >/dev/null || die "$t not found: run e2e/scripts/install-deps.sh first"
done

mkdir -p "$W" "$CREDS" "$LOGS" "$PIDS"
chmod 700 "$W" "$CREDS"
W=$(cd "$W" && pwd)   # absolute, for the config files
CREDS=$W/creds LOGS=$W/logs PIDS=$W/pids
E2E_WORLD=$W net_up

# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
# pid_alive NAME EXE: the pid in pids/NAME.pid is running and is EXE (guards against a reused pid)
pid_alive() {
  local f=$PIDS/$1.pid pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc 0-9 <"$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ -z "${2:-}" ] || [ "$(basename "$(readlink -f "/proc/$pid/exe" 2>/dev/null)")" = "$2" ]
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s
wait_for() {
  local secs=$1 i; shift 2   # $2 only documents the call site
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  return 1
}
# start_bg NAME COMMAND...: run COMMAND detached (own session), log to logs/NAME.log, pid to pids/NAME.pid
start_bg() {
  local name=$1; shift
  setsid -f bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDS/$name.pid" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null
  wait_for 5 "pid file" test -s "$PIDS/$name.pid" || die "$name: no pid file"
}
port_free_or_die() {
  if port_open "$1"; then
    die "$2: port 127.0.0.1:$1 is in use by a process that is not ours (pid file $PIDS/$2.pid): $(ss -ltnpH "sport = :$1" | head -1)"
  fi
}
secret_file() { # secret_file NAME BYTES: generate creds/NAME once (hex)
  [ -s "$CREDS/$1" ] || { umask 077; openssl rand -hex "$2" | tr -d '\n' >"$CREDS/$1"; }
}
fail_log() { echo "---- last lines of $LOGS/$1.log ----" >&2; tail -n 30 "$LOGS/$1.log" >&2 || true; die "$2"; }

# ---------------------------------------------------------------------------------------------------
# credentials (generated once)
# ---------------------------------------------------------------------------------------------------
gen_creds() {
  umask 077
  secret_file libvirt-password 16
  secret_file vcsim-password 16
  secret_file http-token 24
  [ -s "$CREDS/s3-access-key" ] || openssl rand -hex 10 | tr 'a-f' 'A-F' | tr -d '\n' >"$CREDS/s3-access-key"
  [ -s "$CREDS/s3-secret-key" ] || openssl rand -base64 30 | tr -d '\n/+=' | head -c 40 >"$CREDS/s3-secret-key"

  # TLS: a CA and one server certificate for 127.0.0.1, the gateway and localhost (nginx and vcsim)
  if [ ! -s "$CREDS/http-ca.pem" ] || [ ! -s "$CREDS/http-ca-key.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/O=virtrigaud e2e/CN=virtrigaud e2e CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$CREDS/http-ca-key.pem" -out "$CREDS/http-ca.pem" 2>/dev/null
    rm -f "$CREDS/server.pem"
  fi
  if [ ! -s "$CREDS/server.pem" ] || [ ! -s "$CREDS/server-key.pem" ] \
     || ! openssl x509 -in "$CREDS/server.pem" -noout -ext subjectAltName | grep -q "IP Address:$ADDR\b"; then
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/O=virtrigaud e2e/CN=127.0.0.1" \
      -keyout "$CREDS/server-key.pem" -out "$CREDS/server.csr" 2>/dev/null
    openssl x509 -req -in "$CREDS/server.csr" -CA "$CREDS/http-ca.pem" -CAkey "$CREDS/http-ca-key.pem" \
      -CAcreateserial -days 825 -out "$CREDS/server.pem" 2>/dev/null -extfile <(printf '%s\n' \
        "subjectAltName=IP:127.0.0.1,IP:$ADDR,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth")
    rm -f "$CREDS/server.csr"
  fi

  # SSH: host key of our sshd, and the client key allowed to log in as root
  [ -s "$CREDS/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "virtrigaud-e2e-host" -f "$CREDS/ssh_host_ed25519_key"
  [ -s "$CREDS/ssh_client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "virtrigaud-e2e-client" -f "$CREDS/ssh_client_ed25519"
  cp "$CREDS/ssh_client_ed25519.pub" "$CREDS/ssh_authorized_keys"
  for a in 127.0.0.1 "$ADDR"; do
    echo "[$a]:$SSH_PORT $(cut -d' ' -f1,2 "$CREDS/ssh_host_ed25519_key.pub")"
  done >"$CREDS/ssh_known_hosts"

  # libvirt client auth file (LIBVIRT_AUTH_FILE) answering the SASL username/password prompts
  cat >"$CREDS/libvirt-auth.conf" <<EOF
[credentials-vrg]
authname=$LIBVIRT_USER
password=$(cat "$CREDS/libvirt-password")

[auth-libvirt-127.0.0.1]
credentials=vrg

[auth-libvirt-localhost]
credentials=vrg

[auth-libvirt-$ADDR]
credentials=vrg
EOF
  chmod 600 "$CREDS"/*
}

# ---------------------------------------------------------------------------------------------------
# libvirt
# ---------------------------------------------------------------------------------------------------
LV=$W/libvirt
LIBVIRT_URI="qemu+tcp://127.0.0.1:$LIBVIRT_PORT/system"
virsh_auth() { LIBVIRT_AUTH_FILE=$CREDS/libvirt-auth.conf virsh -q -c "$LIBVIRT_URI" "$@" </dev/null; }

ensure_qemu_conf() {
  # The privileged qemu driver only reads /etc/libvirt/qemu.conf (no override): run qemu as root, as facts.md says,
  # so that it can open images anywhere under the work tree and /dev/kvm.
  local f=/etc/libvirt/qemu.conf
  if ! grep -qE '^\s*user\s*=\s*"root"' "$f" || ! grep -qE '^\s*group\s*=\s*"root"' "$f"; then
    printf '\n# virtrigaud e2e (e2e/scripts/endpoints-up.sh): run guests as root\nuser = "root"\ngroup = "root"\n' >>"$f"
    say "libvirt: set user/group root in $f"
    return 0
  fi
  return 1
}

start_libvirt() {
  mkdir -p "$LV/pool" "$LV/sasl2"
  local qemu_conf_changed=0
  ensure_qemu_conf && qemu_conf_changed=1

  # SASL: DIGEST-MD5 (gives libvirt the SSF >= 56 it requires on a plain TCP socket) against a private sasldb.
  # The db is derived from creds/libvirt-password on every start (the default realm is the hostname).
  cat >"$LV/sasl2/libvirt.conf" <<EOF
mech_list: digest-md5
sasldb_path: $LV/sasl2/passwd.db
EOF
  rm -f "$LV/sasl2/passwd.db"
  saslpasswd2 -p -a libvirt -f "$LV/sasl2/passwd.db" -c "$LIBVIRT_USER" <"$CREDS/libvirt-password"
  chmod 600 "$LV/sasl2/passwd.db"

  cat >"$LV/libvirtd.conf" <<EOF
# private libvirtd config of the virtrigaud e2e world (generated by e2e/scripts/endpoints-up.sh)
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "$LIBVIRT_PORT"
auth_tcp = "sasl"
sasl_allowed_username_list = ["$LIBVIRT_USER", "$LIBVIRT_USER@*"]
# local UNIX socket (/run/libvirt/libvirt-sock): root only, no polkit (there is no D-Bus here)
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:$LOGS/libvirtd.log"
EOF
  cat >"$LV/virtlogd.conf" <<EOF
log_outputs = "3:file:$LOGS/virtlogd.log"
EOF

  if pid_alive virtlogd virtlogd; then
    say "virtlogd: already running (pid $(cat "$PIDS/virtlogd.pid"))"
  else
    rm -f "$PIDS/virtlogd.pid"
    virtlogd -d -f "$LV/virtlogd.conf" -p "$PIDS/virtlogd.pid" || fail_log virtlogd "virtlogd did not start"
    wait_for 10 "virtlogd socket" test -S /run/libvirt/virtlogd-sock || fail_log virtlogd "virtlogd socket missing"
    say "virtlogd: started (pid $(cat "$PIDS/virtlogd.pid"))"
  fi

  if pid_alive libvirtd libvirtd; then
    if [ $qemu_conf_changed = 1 ]; then
      say "libvirtd: qemu.conf changed, restarting"
      kill "$(cat "$PIDS/libvirtd.pid")"; wait_for 15 "libvirtd exit" bash -c "! kill -0 $(cat "$PIDS/libvirtd.pid")" || true
    else
      say "libvirtd: already running (pid $(cat "$PIDS/libvirtd.pid"))"
    fi
  fi
  if ! pid_alive libvirtd libvirtd; then
    rm -f "$PIDS/libvirtd.pid"
    port_free_or_die "$LIBVIRT_PORT" libvirtd
    SASL_CONF_PATH=$LV/sasl2 libvirtd --listen -d -f "$LV/libvirtd.conf" -p "$PIDS/libvirtd.pid" \
      >>"$LOGS/libvirtd.log" 2>&1 || fail_log libvirtd "libvirtd did not start"
    wait_for 30 "libvirtd port" port_open "$LIBVIRT_PORT" || fail_log libvirtd "libvirtd is not listening on $LIBVIRT_PORT"
    say "libvirtd: started (pid $(cat "$PIDS/libvirtd.pid")) on $LIBVIRT_URI"
  fi
  wait_for 30 "libvirt login" virsh_auth version || fail_log libvirtd "virsh -c $LIBVIRT_URI with the generated credential fails"

  # storage pool `default` (a dir pool) under the world; redefined if it points elsewhere (e.g. another clone)
  local target
  target=$(virsh_auth pool-dumpxml default 2>/dev/null | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -1 || true)
  if [ -n "$target" ] && [ "$target" != "$LV/pool" ]; then
    say "libvirt: pool default points to $target, redefining it to $LV/pool"
    virsh_auth pool-destroy default >/dev/null 2>&1 || true
    virsh_auth pool-undefine default >/dev/null
    target=
  fi
  if [ -z "$target" ]; then
    virsh_auth pool-define-as default dir --target "$LV/pool" >/dev/null
    virsh_auth pool-autostart default >/dev/null
    say "libvirt: defined dir pool default at $LV/pool"
  fi
  if [ "$(virsh_auth pool-info default | awk '$1=="State:"{print $2}')" != running ]; then
    virsh_auth pool-start default >/dev/null
  fi
  virsh_auth pool-refresh default >/dev/null
}

# ---------------------------------------------------------------------------------------------------
# vcsim
# ---------------------------------------------------------------------------------------------------
# vcsim listens on the gateway address itself, not behind a forwarder: the URLs it hands out (NFC lease
# devices) name its listen address, and a pod must be able to reach them.
vcsim_ready() {
  grep -qz -- "$ADDR:$VCSIM_PORT" "/proc/$(cat "$PIDS/vcsim.pid")/cmdline" 2>/dev/null &&
    curl -sf --cacert "$CREDS/http-ca.pem" "https://$ADDR:$VCSIM_PORT/about" -o /dev/null
}
start_vcsim() {
  printf '%s' "$VCSIM_USER" >"$CREDS/vcsim-user"
  if pid_alive vcsim vcsim && vcsim_ready; then
    say "vcsim: already running (pid $(cat "$PIDS/vcsim.pid"))"; return
  fi
  pid_alive vcsim vcsim && kill "$(cat "$PIDS/vcsim.pid")" && sleep 1
  rm -f "$PIDS/vcsim.pid"
  ! (exec 3<>"/dev/tcp/$ADDR/$VCSIM_PORT") 2>/dev/null ||
    die "vcsim: port $ADDR:$VCSIM_PORT is in use by a process that is not ours: $(ss -ltnpH "sport = :$VCSIM_PORT" | head -1)"
  mkdir -p "$W/vcsim"
  # -username/-password take file paths (read by the simulator), so no secret shows in `ps`.
  # TMPDIR: the simulator keeps its datastore directories (LocalDS_0, ...) under it.
  start_bg vcsim env TMPDIR="$W/vcsim" "$BIN/vcsim" -l "$ADDR:$VCSIM_PORT" \
    -username "$CREDS/vcsim-user" -password "$CREDS/vcsim-password" \
    -tlscert "$CREDS/server.pem" -tlskey "$CREDS/server-key.pem"
  wait_for 30 "vcsim" vcsim_ready || fail_log vcsim "vcsim does not answer on https://$ADDR:$VCSIM_PORT/about"
  say "vcsim: started (pid $(cat "$PIDS/vcsim.pid")) on https://$ADDR:$VCSIM_PORT/sdk"
}

# ---------------------------------------------------------------------------------------------------
# S3 (s3s-fs)
# ---------------------------------------------------------------------------------------------------
s3() { # s3 METHOD PATH [curl args...]: SigV4-signed request without a body
  # curl 7.88's --aws-sigv4 does not add x-amz-content-sha256, which S3 servers require; it signs the one we give
  local m=$1 p=$2 mopt; shift 2
  if [ "$m" = HEAD ]; then mopt=(-I); else mopt=(-X "$m"); fi   # `-X HEAD` would wait for a body
  curl -sS --max-time 60 --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$(cat "$CREDS/s3-access-key"):$(cat "$CREDS/s3-secret-key")" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    "${mopt[@]}" "http://127.0.0.1:$S3_PORT$p" "$@"
}
s3_ready() { [ "$(s3 GET / -o /dev/null -w '%{http_code}')" = 200 ]; }
start_s3() {
  if pid_alive s3 s3s-fs && s3_ready; then
    say "s3 (s3s-fs): already running (pid $(cat "$PIDS/s3.pid"))"
  else
    pid_alive s3 s3s-fs && kill "$(cat "$PIDS/s3.pid")" && sleep 1
    rm -f "$PIDS/s3.pid"
    port_free_or_die "$S3_PORT" s3
    mkdir -p "$W/s3"
    # s3s-fs takes its keys only as arguments (no env/file option)
    start_bg s3 env RUST_LOG=info "$BIN/s3s-fs" --host 127.0.0.1 --port "$S3_PORT" \
      --access-key "$(cat "$CREDS/s3-access-key")" --secret-key "$(cat "$CREDS/s3-secret-key")" "$W/s3"
    wait_for 30 "s3" s3_ready || fail_log s3 "s3s-fs does not answer a signed ListBuckets"
    say "s3 (s3s-fs): started (pid $(cat "$PIDS/s3.pid")) on http://127.0.0.1:$S3_PORT"
  fi
  if [ "$(s3 HEAD "/$S3_BUCKET" -o /dev/null -w '%{http_code}')" != 200 ]; then
    local code
    code=$(s3 PUT "/$S3_BUCKET" -o "$LOGS/s3-create-bucket.out" -w '%{http_code}')
    [ "$code" = 200 ] || die "s3: creating bucket $S3_BUCKET failed (HTTP $code): $(cat "$LOGS/s3-create-bucket.out")"
    say "s3: created bucket $S3_BUCKET"
  fi
}

# ---------------------------------------------------------------------------------------------------
# nginx (HTTP/HTTPS WebDAV with a bearer token)
# ---------------------------------------------------------------------------------------------------
NG=$W/nginx
http_ready() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$CREDS/http-token")" \
        --cacert "$CREDS/http-ca.pem" "https://127.0.0.1:$HTTPS_PORT/")" = 200 ]
}
start_nginx() {
  mkdir -p "$NG/tmp" "$W/http/exports"
  cat >"$NG/nginx.conf" <<EOF
# private nginx config of the virtrigaud e2e world (generated by e2e/scripts/endpoints-up.sh)
user root;
worker_processes 1;
pid $PIDS/nginx.pid;
error_log $LOGS/nginx.log info;
events { worker_connections 512; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log $LOGS/nginx-access.log;
    client_body_temp_path $NG/tmp/client_body;
    proxy_temp_path $NG/tmp/proxy;
    fastcgi_temp_path $NG/tmp/fastcgi;
    uwsgi_temp_path $NG/tmp/uwsgi;
    scgi_temp_path $NG/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    client_max_body_size 0;           # disk images: no limit
    client_body_buffer_size 1m;
    server_tokens off;
    map_hash_bucket_size 128;        # the map key below is longer than the default bucket allows

    # the one accepted credential; \$vrg_authorized is 1 only for that exact header
    map \$http_authorization \$vrg_authorized {
        default 0;
        "Bearer $(cat "$CREDS/http-token")" 1;
    }

    server {
        listen 127.0.0.1:$HTTP_PORT;
        listen 127.0.0.1:$HTTPS_PORT ssl;
        ssl_certificate $CREDS/server.pem;
        ssl_certificate_key $CREDS/server-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $W/http/exports;

        location / {
            if (\$vrg_authorized = 0) {
                add_header WWW-Authenticate 'Bearer realm="virtrigaud-e2e"' always;
                return 401;
            }
            dav_methods PUT DELETE MKCOL COPY MOVE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            autoindex on;                 # GET of a directory lists it (JSON)
            autoindex_format json;
        }
    }
}
EOF
  nginx -t -q -p "$NG" -e "$LOGS/nginx.log" -c "$NG/nginx.conf" || fail_log nginx "nginx config test failed"
  if pid_alive nginx nginx; then
    kill -HUP "$(cat "$PIDS/nginx.pid")"   # reload: picks up a changed token/cert
    wait_for 10 "nginx" http_ready || fail_log nginx "nginx does not answer after reload"
    say "nginx: already running (pid $(cat "$PIDS/nginx.pid")), reloaded"; return
  fi
  rm -f "$PIDS/nginx.pid"
  port_free_or_die "$HTTP_PORT" nginx; port_free_or_die "$HTTPS_PORT" nginx
  nginx -p "$NG" -e "$LOGS/nginx.log" -c "$NG/nginx.conf" || fail_log nginx "nginx did not start"
  wait_for 15 "nginx" http_ready || fail_log nginx "nginx does not answer on https://127.0.0.1:$HTTPS_PORT/"
  say "nginx: started (pid $(cat "$PIDS/nginx.pid")) on http://127.0.0.1:$HTTP_PORT and https://127.0.0.1:$HTTPS_PORT"
}

# ---------------------------------------------------------------------------------------------------
# sshd
# ---------------------------------------------------------------------------------------------------
ssh_ready() {
  ssh -F none -i "$CREDS/ssh_client_ed25519" -p "$SSH_PORT" -o BatchMode=yes -o IdentitiesOnly=yes \
    -o UserKnownHostsFile="$CREDS/ssh_known_hosts" -o StrictHostKeyChecking=yes -o ConnectTimeout=5 \
    root@127.0.0.1 true </dev/null
}
start_sshd() {
  mkdir -p /run/sshd   # privilege separation directory (sshd refuses to start without it)
  cat >"$W/sshd_config" <<EOF
# private sshd config of the virtrigaud e2e world (generated by e2e/scripts/endpoints-up.sh)
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $CREDS/ssh_host_ed25519_key
PidFile $PIDS/sshd.pid
AuthorizedKeysFile $CREDS/ssh_authorized_keys
# The key file sits in the 0700 creds dir of the world; StrictModes would also demand that every parent
# directory is not group/world-writable, which fails for a world under /tmp ("bad ownership or modes for directory /tmp").
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PermitRootLogin prohibit-password
AllowUsers root
UsePAM no
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp internal-sftp
EOF
  /usr/sbin/sshd -t -f "$W/sshd_config" || die "sshd config test failed"
  if pid_alive sshd sshd && ssh_ready; then
    kill -HUP "$(cat "$PIDS/sshd.pid")"   # re-read config/keys
    wait_for 10 "sshd" ssh_ready || fail_log sshd "sshd does not accept the client key after reload"
    say "sshd: already running (pid $(cat "$PIDS/sshd.pid"))"; return
  fi
  pid_alive sshd sshd && kill "$(cat "$PIDS/sshd.pid")" && sleep 1
  rm -f "$PIDS/sshd.pid"
  port_free_or_die "$SSH_PORT" sshd
  /usr/sbin/sshd -f "$W/sshd_config" -E "$LOGS/sshd.log" || fail_log sshd "sshd did not start"
  wait_for 15 "sshd" ssh_ready || fail_log sshd "sshd does not accept the client key on 127.0.0.1:$SSH_PORT"
  say "sshd: started (pid $(cat "$PIDS/sshd.pid")) on 127.0.0.1:$SSH_PORT"
}

# ---------------------------------------------------------------------------------------------------
# endpoints.env
# ---------------------------------------------------------------------------------------------------
write_env() {
  local f=$W/endpoints.env
  {
    echo "# virtrigaud e2e endpoints (generated by e2e/scripts/endpoints-up.sh; source it)"
    exp() { printf 'export %s=%q\n' "$1" "$2"; }
    exp VRG_WORLD "$W"
    exp VRG_CREDS_DIR "$CREDS"
    exp VRG_CA "$CREDS/http-ca.pem"
    exp VRG_GATEWAY_IP "$ADDR"
    echo "# libvirt (SASL DIGEST-MD5; LIBVIRT_AUTH_FILE=\$VRG_LIBVIRT_AUTH_FILE answers virsh's prompts)"
    exp VRG_LIBVIRT_URI "qemu+tcp://$ADDR:$LIBVIRT_PORT/system"
    exp VRG_LIBVIRT_USER "$LIBVIRT_USER"
    exp VRG_LIBVIRT_PASSWORD "$(cat "$CREDS/libvirt-password")"
    exp VRG_LIBVIRT_AUTH_FILE "$CREDS/libvirt-auth.conf"
    exp VRG_LIBVIRT_POOL default
    exp VRG_LIBVIRT_POOL_DIR "$LV/pool"
    exp VRG_KVM "$([ -r /dev/kvm ] && [ -w /dev/kvm ] && echo 1 || echo 0)"
    echo "# vSphere simulator (TLS certificate signed by \$VRG_CA)"
    exp VRG_VCSIM_URL "https://$ADDR:$VCSIM_PORT/sdk"
    exp VRG_VCSIM_USER "$VCSIM_USER"
    exp VRG_VCSIM_PASSWORD "$(cat "$CREDS/vcsim-password")"
    exp VRG_VCSIM_CA "$CREDS/http-ca.pem"
    exp VRG_VCSIM_DIR "$W/vcsim"
    echo "# S3 (s3s-fs, SigV4, path-style)"
    exp VRG_S3_ENDPOINT "http://$ADDR:$S3_PORT"
    exp VRG_S3_REGION "$S3_REGION"
    exp VRG_S3_BUCKET "$S3_BUCKET"
    exp VRG_S3_ACCESS_KEY "$(cat "$CREDS/s3-access-key")"
    exp VRG_S3_SECRET_KEY "$(cat "$CREDS/s3-secret-key")"
    exp VRG_S3_DATA_DIR "$W/s3"
    echo "# HTTP(S) WebDAV (nginx): Authorization: Bearer \$VRG_HTTP_TOKEN"
    exp VRG_HTTP_URL "http://$ADDR:$HTTP_PORT"
    exp VRG_HTTPS_URL "https://$ADDR:$HTTPS_PORT"
    exp VRG_HTTP_TOKEN "$(cat "$CREDS/http-token")"
    exp VRG_HTTP_CA "$CREDS/http-ca.pem"
    exp VRG_HTTP_EXPORT_DIR "$W/http/exports"
    echo "# SSH (public key only, root)"
    exp VRG_SSH_HOST "$ADDR"
    exp VRG_SSH_PORT "$SSH_PORT"
    exp VRG_SSH_USER root
    exp VRG_SSH_KEY "$CREDS/ssh_client_ed25519"
    exp VRG_SSH_KNOWN_HOSTS "$CREDS/ssh_known_hosts"
    exp VRG_SSH_HOST_KEY_PUB "$(cut -d' ' -f1,2 "$CREDS/ssh_host_ed25519_key.pub")"
  } >"$f.tmp"
  chmod 600 "$f.tmp"
  mv "$f.tmp" "$f"
}

gen_creds
start_libvirt
start_vcsim
start_s3
start_nginx
start_sshd
write_env
[ -e /dev/kvm ] && kvm="present" || kvm="absent (guests run under TCG: <domain type='qemu'>)"
say "all endpoints up; /dev/kvm $kvm; source $W/endpoints.env"
