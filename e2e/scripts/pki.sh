#!/usr/bin/env bash
# Generates the local e2e world's Kubernetes PKI with openssl into e2e/.world/pki/ (git-ignored).
# Idempotent: existing keys and certificates are kept; a certificate is only (re)issued when it is missing,
# no longer verifies against the CA (the CA was recreated), or expires within 30 days.
#
#   ca.{crt,key}                          cluster CA (also --cluster-signing-* of the controller-manager)
#   apiserver.{crt,key}                   kube-apiserver serving cert: 127.0.0.1, localhost, kubernetes,
#                                         kubernetes.default[.svc[.cluster.local]], 10.96.0.1
#   sa.{key,pub}                          service-account token signing key pair
#   admin.{crt,key}                       CN=kubernetes-admin, O=system:masters
#   kube-controller-manager.{crt,key}     CN=system:kube-controller-manager
#   kube-scheduler.{crt,key}              CN=system:kube-scheduler
#   apiserver-kubelet-client.{crt,key}    apiserver -> kubelet (node agent) client, O=system:masters
#   front-proxy-ca.{crt,key}, front-proxy-client.{crt,key}   aggregation layer (requestheader)
#   node-<NODE>.{crt,key}                 CN=system:node:<NODE>, O=system:nodes (node agent -> apiserver)
#   node-<NODE>-serving.{crt,key}         the kubelet's serving cert (127.0.0.1, localhost, <NODE>, its node IP 10.250.255.2)
#   kube-proxy.{crt,key}                  CN=system:kube-proxy (bound to system:node-proxier)
#   *.kubeconfig                          admin, kube-controller-manager, kube-scheduler, node-<NODE>, kube-proxy
#                                         (certs embedded; server https://127.0.0.1:6443, the node's and kube-proxy's
#                                         https://10.250.255.1:6443, the gateway of the node network)
#
# Environment: E2E_WORLD (default <repo>/e2e/.world), E2E_NODE_NAME (default e2e-node),
#              KUBE_APISERVER_URL (default https://127.0.0.1:6443).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORLD=${E2E_WORLD:-$(cd "$HERE/.." && pwd)/.world}
PKI=$WORLD/pki
NODE=${E2E_NODE_NAME:-e2e-node}
SERVER=${KUBE_APISERVER_URL:-https://127.0.0.1:6443}
NODE_IP=10.250.255.2         # the real node's InternalIP (node-net.sh)
GATEWAY_IP=10.250.255.1      # where the node's network reaches the apiserver (node-net.sh)
SERVICE_IP=10.96.0.1          # first IP of --service-cluster-ip-range=10.96.0.0/16
DAYS_CA=3650
DAYS=1825

say() { printf '[pki] %s\n' "$*" >&2; }
die() { printf '[pki] ERROR: %s\n' "$*" >&2; exit 1; }
command -v openssl >/dev/null || die "openssl is not installed"

mkdir -p "$PKI"
chmod 700 "$PKI"
cd "$PKI"
issued=()

newkey() { # newkey NAME: RSA 2048 private key NAME.key unless present
  [ -s "$1.key" ] && return 0
  (umask 077; openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key" 2>/dev/null)
}

# ca NAME CN: self-signed CA (kept if present)
ca() {
  local name=$1 cn=$2
  if [ -s "$name.crt" ] && [ -s "$name.key" ]; then return 0; fi
  newkey "$name"
  openssl req -x509 -new -key "$name.key" -sha256 -days "$DAYS_CA" -subj "/CN=$cn" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$name.crt"
  issued+=("$name")
}

# has_sans CERT SAN: the certificate names every entry of SAN (DNS:x,IP:y,...), so a SAN added here reissues it
has_sans() {
  local have entry
  have=$(openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' ')
  for entry in ${2//,/ }; do
    case ,$have, in *",${entry/#IP:/IPAddress:},"*) ;; *) return 1 ;; esac
  done
}

# cert NAME CA SUBJECT client|server|both [SAN]: leaf certificate signed by CA
cert() {
  local name=$1 ca=$2 subj=$3 usage=$4 san=${5:-}
  if [ -s "$name.crt" ] && [ -s "$name.key" ] \
     && openssl verify -CAfile "$ca.crt" "$name.crt" >/dev/null 2>&1 \
     && openssl x509 -in "$name.crt" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 \
     && has_sans "$name.crt" "$san"; then
    return 0
  fi
  newkey "$name"
  local eku
  case $usage in
    client) eku=clientAuth ;;
    server) eku=serverAuth ;;
    both) eku=serverAuth,clientAuth ;;
  esac
  local ext; ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    echo "authorityKeyIdentifier=keyid"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } >"$ext"
  openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -sha256 -days "$DAYS" -extfile "$ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$ext"
  issued+=("$name")
}

# kubeconfig NAME USER CERTNAME [SERVER]: kubeconfig with embedded CA, client cert and key
kubeconfig() {
  local name=$1 user=$2 c=$3 file=$1.kubeconfig server=${4:-$SERVER}
  local ca_d crt_d key_d
  ca_d=$(base64 -w0 ca.crt); crt_d=$(base64 -w0 "$c.crt"); key_d=$(base64 -w0 "$c.key")
  local new
  new=$(cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: $server
    certificate-authority-data: $ca_d
users:
- name: $user
  user:
    client-certificate-data: $crt_d
    client-key-data: $key_d
contexts:
- name: $user@e2e
  context:
    cluster: e2e
    user: $user
current-context: $user@e2e
EOF
)
  if [ -f "$file" ] && [ "$(cat "$file")" = "$new" ]; then return 0; fi
  (umask 077; printf '%s\n' "$new" >"$file")
  issued+=("$file")
}

ca ca kubernetes-ca
ca front-proxy-ca front-proxy-ca

cert apiserver ca "/CN=kube-apiserver" server \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$SERVICE_IP,IP:$GATEWAY_IP"
cert admin ca "/O=system:masters/CN=kubernetes-admin" client
cert kube-controller-manager ca "/CN=system:kube-controller-manager" client
cert kube-scheduler ca "/CN=system:kube-scheduler" client
cert apiserver-kubelet-client ca "/O=system:masters/CN=kube-apiserver-kubelet-client" client
cert front-proxy-client front-proxy-ca "/CN=front-proxy-client" client
cert "node-$NODE" ca "/O=system:nodes/CN=system:node:$NODE" client
cert "node-$NODE-serving" ca "/O=system:nodes/CN=system:node:$NODE" server "DNS:$NODE,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP"
cert kube-proxy ca "/CN=system:kube-proxy" client

if [ ! -s sa.key ] || [ ! -s sa.pub ]; then
  newkey sa
  openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
  issued+=(sa)
fi

kubeconfig admin kubernetes-admin admin
kubeconfig kube-controller-manager system:kube-controller-manager kube-controller-manager
kubeconfig kube-scheduler system:kube-scheduler kube-scheduler
# The node's agents run in the node's network namespace, where the apiserver is at the gateway address.
kubeconfig "node-$NODE" "system:node:$NODE" "node-$NODE" "https://$GATEWAY_IP:6443"
kubeconfig kube-proxy system:kube-proxy kube-proxy "https://$GATEWAY_IP:6443"

if [ ${#issued[@]} -gt 0 ]; then say "wrote ${issued[*]} in $PKI"; else say "up to date in $PKI"; fi
