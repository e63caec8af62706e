#!/usr/bin/env bash
# Checks every endpoint started by endpoints-up.sh: for each service one authenticated request that must succeed
# (plus a small round trip where it is cheap) and requests without / with a wrong credential that must be refused.
# Exits non-zero, naming each mismatch, if anything does not behave. Reads e2e/.world/endpoints.env.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=${VRG_WORLD:-$ROOT/e2e/.world}
ENV_FILE=$W/endpoints.env
[ -r "$ENV_FILE" ] || { echo "endpoints-check: $ENV_FILE missing: run e2e/scripts/endpoints-up.sh" >&2; exit 1; }
# shellcheck disable=SC1090
. "$ENV_FILE"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0 failures=()
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
bad() { failed=$((failed + 1)); failures+=("$1: $2"); printf 'FAIL  %s: %s\n' "$1" "$2"; }
snip() { LC_ALL=C tr -c '[:print:]' ' ' <"$1" | tr -s ' ' | head -c 300; }   # one printable line of a response
# expect NAME WANT GOT [detail]
expect() { if [ "$3" = "$2" ]; then ok "$1"; else bad "$1" "expected $2, got $3${4:+ ($4)}"; fi; }

# ---------------------------------------------------------------------------------------------------
# libvirt: qemu+tcp with SASL
# ---------------------------------------------------------------------------------------------------
lv() { # lv AUTHFILE ARGS...: prints rc; output in $TMP/lv.out
  LIBVIRT_AUTH_FILE=$1 timeout 30 virsh -q -c "$VRG_LIBVIRT_URI" "${@:2}" >"$TMP/lv.out" 2>&1 </dev/null
  echo $?
}
rc=$(lv "$VRG_LIBVIRT_AUTH_FILE" list --all)
expect "libvirt: virsh list --all with the generated credential" 0 "$rc" "$(snip "$TMP/lv.out")"
rc=$(lv "$VRG_LIBVIRT_AUTH_FILE" pool-info "$VRG_LIBVIRT_POOL")
state=$(awk '$1=="State:"{print $2}' "$TMP/lv.out")
expect "libvirt: pool $VRG_LIBVIRT_POOL is running" running "${state:-rc=$rc}" "$(snip "$TMP/lv.out")"
: >"$TMP/empty.conf"
rc=$(lv "$TMP/empty.conf" list --all)
[ "$rc" != 0 ] && ok "libvirt: refused without credentials" || bad "libvirt: no credentials" "virsh succeeded"
sed 's/^password=.*/password=not-the-password/' "$VRG_LIBVIRT_AUTH_FILE" >"$TMP/wrong.conf"
rc=$(lv "$TMP/wrong.conf" list --all)
if [ "$rc" != 0 ] && grep -q 'authentication failed' "$TMP/lv.out"; then ok "libvirt: refused with a wrong password"
else bad "libvirt: wrong password" "rc=$rc: $(snip "$TMP/lv.out")"; fi

# ---------------------------------------------------------------------------------------------------
# vcsim: SOAP Login over TLS verified with the e2e CA
# ---------------------------------------------------------------------------------------------------
vc_login() { # vc_login USER PASSWORD: prints the HTTP status; body in $TMP/vc.out
  curl -sS --max-time 30 --cacert "$VRG_VCSIM_CA" -o "$TMP/vc.out" -w '%{http_code}' \
    -H 'Content-Type: text/xml; charset=utf-8' -H 'SOAPAction: "urn:vim25/8.0.2.0"' "$VRG_VCSIM_URL" \
    --data-binary @- <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:urn="urn:vim25">
 <soapenv:Body><urn:Login><urn:_this type="SessionManager">SessionManager</urn:_this>
  <urn:userName>$1</urn:userName><urn:password>$2</urn:password></urn:Login></soapenv:Body>
</soapenv:Envelope>
EOF
}
code=$(vc_login "$VRG_VCSIM_USER" "$VRG_VCSIM_PASSWORD")
if [ "$code" = 200 ] && grep -q '<LoginResponse' "$TMP/vc.out"; then ok "vcsim: Login with the generated credential"
else bad "vcsim: Login" "HTTP $code: $(snip "$TMP/vc.out")"; fi
code=$(vc_login "$VRG_VCSIM_USER" "not-the-password")
if [ "$code" != 200 ] && grep -q 'InvalidLogin' "$TMP/vc.out"; then ok "vcsim: Login refused with a wrong password"
else bad "vcsim: wrong password" "HTTP $code: $(snip "$TMP/vc.out")"; fi
code=$(vc_login "someone-else" "$VRG_VCSIM_PASSWORD")
if [ "$code" != 200 ] && grep -q 'InvalidLogin' "$TMP/vc.out"; then ok "vcsim: Login refused with a wrong username"
else bad "vcsim: wrong username" "HTTP $code: $(snip "$TMP/vc.out")"; fi

# ---------------------------------------------------------------------------------------------------
# S3: SigV4 (curl --aws-sigv4; x-amz-content-sha256 given explicitly, curl 7.88 does not add it)
# ---------------------------------------------------------------------------------------------------
EMPTY_SHA=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
s3() { # s3 ACCESS SECRET METHOD PATH [curl args]: prints the HTTP status; body in $TMP/s3.out
  local ak=$1 sk=$2 m=$3 p=$4 mopt; shift 4
  if [ "$m" = HEAD ]; then mopt=(-I); else mopt=(-X "$m"); fi
  curl -sS --max-time 60 --aws-sigv4 "aws:amz:$VRG_S3_REGION:s3" --user "$ak:$sk" "${mopt[@]}" \
    -o "$TMP/s3.out" -w '%{http_code}' "$VRG_S3_ENDPOINT$p" "$@"
}
AK=$VRG_S3_ACCESS_KEY SK=$VRG_S3_SECRET_KEY
head -c 100000 /dev/urandom >"$TMP/obj"
OBJ_SHA=$(sha256sum "$TMP/obj" | cut -d' ' -f1)
KEY="/$VRG_S3_BUCKET/endpoints-check/$$.bin"
expect "s3: HEAD bucket $VRG_S3_BUCKET" 200 "$(s3 "$AK" "$SK" HEAD "/$VRG_S3_BUCKET" -H "x-amz-content-sha256: $EMPTY_SHA")"
code=$(s3 "$AK" "$SK" PUT "$KEY" -H "x-amz-content-sha256: $OBJ_SHA" --data-binary @"$TMP/obj")
expect "s3: PUT object (signed payload hash)" 200 "$code" "$(snip "$TMP/s3.out")"
code=$(s3 "$AK" "$SK" GET "$KEY" -H "x-amz-content-sha256: $EMPTY_SHA" -H 'Range: bytes=1000-1999')
expect "s3: GET object range (206)" 206 "$code" "$(snip "$TMP/s3.out")"
if cmp -s "$TMP/s3.out" <(tail -c +1001 "$TMP/obj" | head -c 1000); then ok "s3: ranged content matches"
else bad "s3: ranged content" "differs from the uploaded bytes"; fi
code=$(s3 "$AK" "wrong$SK" GET "/$VRG_S3_BUCKET?list-type=2" -H "x-amz-content-sha256: $EMPTY_SHA")
if [ "$code" = 403 ] && grep -q SignatureDoesNotMatch "$TMP/s3.out"; then ok "s3: refused with a wrong secret key"
else bad "s3: wrong secret key" "HTTP $code: $(snip "$TMP/s3.out")"; fi
code=$(s3 "AKIAWRONGWRONGWRONG0" "$SK" GET "/$VRG_S3_BUCKET?list-type=2" -H "x-amz-content-sha256: $EMPTY_SHA")
[ "$code" = 403 ] && ok "s3: refused with an unknown access key" || bad "s3: unknown access key" "HTTP $code: $(snip "$TMP/s3.out")"
code=$(curl -sS --max-time 30 -o "$TMP/s3.out" -w '%{http_code}' "$VRG_S3_ENDPOINT$KEY")
[ "$code" = 403 ] && ok "s3: refused without a signature" || bad "s3: anonymous GET" "HTTP $code: $(snip "$TMP/s3.out")"
expect "s3: DELETE object" 204 "$(s3 "$AK" "$SK" DELETE "$KEY" -H "x-amz-content-sha256: $EMPTY_SHA")"

# ---------------------------------------------------------------------------------------------------
# HTTP(S): nginx WebDAV with a bearer token
# ---------------------------------------------------------------------------------------------------
http() { # http URL [curl args]: prints the HTTP status; body in $TMP/http.out, headers in $TMP/http.hdr
  local u=$1; shift
  curl -sS --max-time 60 --cacert "$VRG_HTTP_CA" -o "$TMP/http.out" -D "$TMP/http.hdr" -w '%{http_code}' "$u" "$@"
}
AUTH="Authorization: Bearer $VRG_HTTP_TOKEN"
P="/endpoints-check/$$/deep/disk.raw"
expect "http: PUT over HTTPS into a new directory (create_full_put_path)" 201 \
  "$(http "$VRG_HTTPS_URL$P" -H "$AUTH" -T "$TMP/obj")" "$(snip "$TMP/http.out")"
expect "http: GET range over HTTPS (206)" 206 "$(http "$VRG_HTTPS_URL$P" -H "$AUTH" -H 'Range: bytes=1000-1999')"
if cmp -s "$TMP/http.out" <(tail -c +1001 "$TMP/obj" | head -c 1000); then ok "http: ranged content matches"
else bad "http: ranged content" "differs from the uploaded bytes"; fi
expect "http: GET over plain HTTP" 200 "$(http "$VRG_HTTP_URL$P" -H "$AUTH")"
[ "$(sha256sum <"$TMP/http.out" | cut -d' ' -f1)" = "$OBJ_SHA" ] && ok "http: full content matches" \
  || bad "http: full content" "sha256 differs"
code=$(http "$VRG_HTTPS_URL$P")
if [ "$code" = 401 ] && grep -qi '^WWW-Authenticate: Bearer' "$TMP/http.hdr"; then ok "http: GET refused without a token"
else bad "http: no token" "HTTP $code"; fi
expect "http: GET refused with a wrong token" 401 "$(http "$VRG_HTTPS_URL$P" -H 'Authorization: Bearer not-the-token')"
expect "http: PUT refused with a wrong token" 401 "$(http "$VRG_HTTP_URL/endpoints-check/$$/x" -H 'Authorization: Bearer x' -T "$TMP/obj")"
expect "http: Basic credentials refused" 401 "$(http "$VRG_HTTP_URL$P" -u "root:$VRG_HTTP_TOKEN")"
expect "http: DELETE" 204 "$(http "$VRG_HTTPS_URL$P" -H "$AUTH" -X DELETE)"
rm -rf "${VRG_HTTP_EXPORT_DIR:?}/endpoints-check/$$"; rmdir "$VRG_HTTP_EXPORT_DIR/endpoints-check" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------------
# SSH: public key only
# ---------------------------------------------------------------------------------------------------
sshx() { # sshx KEY [ssh options] -- COMMAND: output in $TMP/ssh.out, prints rc
  local key=$1; shift
  timeout 30 ssh -F none -i "$key" -p "$VRG_SSH_PORT" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o UserKnownHostsFile="$VRG_SSH_KNOWN_HOSTS" -o StrictHostKeyChecking=yes -o ConnectTimeout=10 \
    "$@" >"$TMP/ssh.out" 2>&1 </dev/null
  echo $?
}
rc=$(sshx "$VRG_SSH_KEY" "$VRG_SSH_USER@$VRG_SSH_HOST" 'echo vrg-ssh-ok; command -v qemu-img')
if [ "$rc" = 0 ] && grep -q vrg-ssh-ok "$TMP/ssh.out"; then ok "ssh: key login (host key verified) runs a command"
else bad "ssh: key login" "rc=$rc: $(snip "$TMP/ssh.out")"; fi
ssh-keygen -q -t ed25519 -N '' -f "$TMP/other_key"
rc=$(sshx "$TMP/other_key" "$VRG_SSH_USER@$VRG_SSH_HOST" true)
if [ "$rc" != 0 ] && grep -q 'Permission denied' "$TMP/ssh.out"; then ok "ssh: refused with an unknown key"
else bad "ssh: unknown key" "rc=$rc: $(snip "$TMP/ssh.out")"; fi
rc=$(sshx "$TMP/other_key" -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive \
  "$VRG_SSH_USER@$VRG_SSH_HOST" true)
if [ "$rc" != 0 ] && grep -q 'Permission denied' "$TMP/ssh.out"; then ok "ssh: password authentication not offered"
else bad "ssh: password auth" "rc=$rc: $(snip "$TMP/ssh.out")"; fi

# ---------------------------------------------------------------------------------------------------
echo
if [ "$failed" -gt 0 ]; then
  echo "endpoints-check: mismatches:" >&2
  for f in "${failures[@]}"; do echo "  - $f" >&2; done
fi
echo "endpoints: $passed passed, $failed failed"
[ "$failed" = 0 ]
