#!/usr/bin/env bash
# `make load`: the control plane under a team's burst, against the real e2e world (apiserver, operator,
# webhook; the node runs a stub runner image that exits at once, so no disk moves). Prints a table:
#
#   burst     N VMMigrations applied at once (parallel kubectl applies): seconds until every one has its
#             runner Job or a queue position in its status (target: 500 within 30 s)
#   operator  peak RSS of the operator process over the run (VmHWM; target <= 64 MiB)
#   apiserver requests the apiserver served during the burst, per migration (every client counted)
#   webhook   p50/p99 of the webhook's own admission latency during the burst (its histogram's buckets)
#             and, from a load generator against its HTTPS endpoint, p50/p99 at a sustained rate
#             (target: p99 <= 5 ms at 500 requests/s)
#
# Traffic goes only to the world's addresses (loopback, the gateway, pod IPs in the node's network
# namespace); the generator refuses any other. Bounded: N migrations, RATE x SECONDS requests.
# Afterwards the operator gets its own runner image back and the namespace is deleted.
#
# Environment: LOAD_MIGRATIONS (500), LOAD_RATE (500), LOAD_SECONDS (10), E2E_WORLD, VRG_CACHE.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORLD=${E2E_WORLD:-$ROOT/e2e/.world}
VRG_CACHE=${VRG_CACHE:-$HOME/.cache/virtrigaud}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$VRG_CACHE/target}
N=${LOAD_MIGRATIONS:-500}
RATE=${LOAD_RATE:-500}
SECONDS_AT_RATE=${LOAD_SECONDS:-10}
NS=vrg-load
SYS=virtrigaud-system
STUB=virtrigaud/runner:load-stub
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

say() { printf '[load] %s\n' "$*" >&2; }
die() { printf '[load] ERROR: %s\n' "$*" >&2; exit 1; }

[ -s "$WORLD/env" ] || die "no $WORLD/env: start the e2e world (make e2e-up)"
# shellcheck disable=SC1091
. "$WORLD/env"
K() { "$KUBECTL" "$@"; }
K get --raw /readyz >/dev/null || die "the world's apiserver does not answer"
SOCK=$WORLD/node/containerd/containerd.sock
[ -S "$SOCK" ] || die "no node containerd at $SOCK (make e2e-up)"

# --- the stub runner: a static binary that exits 0, as the runner image's entrypoint ----------------------
stub_image() {
  local tar=$VRG_CACHE/images/runner-load-stub.tar d
  if [ ! -s "$tar" ]; then
    d=$(mktemp -d)
    printf 'int main(void) { return 0; }\n' >"$d/stub.c"
    gcc -Os -static -o "$d/runner" "$d/stub.c"
    umoci init --layout "$d/layout" && umoci new --image "$d/layout:load-stub"
    mkdir -p "$d/fs" && install -m 0755 "$d/runner" "$d/fs/runner"
    umoci insert --image "$d/layout:load-stub" "$d/fs/runner" /usr/local/bin/runner >/dev/null
    umoci config --image "$d/layout:load-stub" --config.user 65532:65532 \
      --config.entrypoint /usr/local/bin/runner >/dev/null
    umoci gc --layout "$d/layout"
    tar -C "$d/layout" -cf "$tar" oci-layout index.json blobs
    rm -rf "$d"
  fi
  ctr -a "$SOCK" -n k8s.io images import --base-name docker.io/virtrigaud/runner "$tar" >/dev/null
}

restore() {
  K delete namespace "$NS" --wait=false --ignore-not-found >/dev/null 2>&1 || true
  K apply -k "$ROOT/e2e/kustomize" >/dev/null && K -n "$SYS" rollout status deploy/virtrigaud-operator --timeout=120s >/dev/null
  rm -rf "$W"
}

say "stub runner image $STUB"
stub_image
trap restore EXIT
K -n "$SYS" patch deploy virtrigaud-operator --type=json \
  -p "[{\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/args/-\",\"value\":\"--runner-image=$STUB\"}]" >/dev/null
K -n "$SYS" rollout status deploy/virtrigaud-operator --timeout=120s >/dev/null

say "namespace $NS: Providers, $N VirtualMachines"
K delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
K create namespace "$NS" >/dev/null
K label namespace "$NS" pod-security.kubernetes.io/enforce=restricted >/dev/null
{
  cat <<YAML
apiVersion: v1
kind: Secret
metadata: {name: kvm, namespace: $NS}
stringData: {username: "$VRG_LIBVIRT_USER", password: "$VRG_LIBVIRT_PASSWORD"}
---
apiVersion: v1
kind: Secret
metadata: {name: s3, namespace: $NS}
stringData: {accessKey: "$VRG_S3_ACCESS_KEY", secretKey: "$VRG_S3_SECRET_KEY"}
---
apiVersion: infra.virtrigaud.io/v1beta1
kind: Provider
metadata: {name: src, namespace: $NS}
spec: {type: libvirt, endpoint: "$VRG_LIBVIRT_URI", credentialSecretRef: {name: kvm}}
---
apiVersion: infra.virtrigaud.io/v1beta1
kind: Provider
metadata: {name: dst, namespace: $NS}
spec: {type: libvirt, endpoint: "$VRG_LIBVIRT_URI", credentialSecretRef: {name: kvm}}
YAML
  for i in $(seq "$N"); do
    printf -- '---\napiVersion: infra.virtrigaud.io/v1beta1\nkind: VirtualMachine\nmetadata: {name: vm-%s, namespace: %s}\nspec: {providerRef: {name: src}}\n' "$i" "$NS"
  done
} >"$W/setup.yaml"
K apply -f "$W/setup.yaml" >/dev/null

migration() { # migration I: the VMMigration of vm-I
  printf -- '---\napiVersion: infra.virtrigaud.io/v1beta1\nkind: VMMigration\nmetadata: {name: m-%s, namespace: %s}\nspec:\n  sourceName: vm-%s\n  targetProviderRef: {name: dst}\n  targetName: copy-%s\n  storage: {type: s3, bucket: vm-migrations, endpoint: "%s", credentialsSecretRef: {name: s3}}\n' \
    "$1" "$NS" "$1" "$1" "${VRG_S3_ENDPOINT#http://}"
}
SHARDS=10
for s in $(seq 0 $((SHARDS - 1))); do
  for i in $(seq "$N"); do [ $((i % SHARDS)) = "$s" ] && migration "$i"; done >"$W/m-$s.yaml"
done

metric_sum() { # metric_sum NAME: the sum of every series of NAME on the apiserver's /metrics
  K get --raw /metrics | awk -v m="$1" 'index($0, m"{") == 1 || index($0, m" ") == 1 {s += $NF} END {printf "%d\n", s}'
}
webhook_ip=$(K -n "$SYS" get pods -l app.kubernetes.io/name=virtrigaud-webhook \
  --field-selector=status.phase=Running -o jsonpath='{.items[*].status.podIP}')
webhook_hist() { # the webhook replicas' CREATE latency buckets, summed: "le count" lines
  for ip in $webhook_ip; do curl -s --max-time 5 "http://$ip:8081/metrics"; done |
    awk -F'[{}" ]+' '/^virtrigaud_webhook_admission_duration_seconds_bucket/ && /operation="CREATE"/ {
      for (i = 1; i <= NF; i++) if ($i == "le=") le = $(i + 1); c[le] += $NF } END { for (l in c) print l, c[l] }' |
    sort -g
}
quantile() { # quantile Q BEFORE AFTER: the smallest bucket bound holding Q of the requests in between
  awk -v q="$1" 'NR == FNR {b[$1] = $2; next} {d[++n] = $1; v[n] = $2 - b[$1]} END {
    tot = v[n]; for (i = 1; i <= n; i++) if (v[i] >= q * tot) { printf "%s", (d[i] == "+Inf" ? "+Inf" : d[i] * 1000); exit } }' "$2" "$3"
}

requests0=$(metric_sum apiserver_request_total)
webhook_hist >"$W/hist0"
say "applying $N VMMigrations at once ($SHARDS parallel kubectl applies)"
t0=$(date +%s.%N)
for s in $(seq 0 $((SHARDS - 1))); do K apply -f "$W/m-$s.yaml" >"$W/apply-$s.log" 2>&1 & done
wait
t_applied=$(date +%s.%N)
grep -L created "$W"/apply-*.log | grep -q . && die "an apply failed: $(cat "$W"/apply-*.log | grep -v created | head -3)"
handled() { # migrations with a runner Job, or waiting with a queue position in their message
  K -n "$NS" get vmmigrations -o jsonpath='{range .items[*]}{.status.attempt}{"|"}{.status.message}{"\n"}{end}' |
    awk -F'|' '$1 >= 1 || $2 ~ /waiting for a slot/ {n++} END {print n + 0}'
}
jobs() { K -n "$NS" get jobs --no-headers 2>/dev/null | wc -l; }
deadline=$(( $(date +%s) + 300 ))
while [ "$(handled)" -lt "$N" ] || [ "$(jobs)" -lt 1 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || die "after 300 s only $(handled) of $N migrations have a Job or a queue position"
  sleep 0.5
done
t_done=$(date +%s.%N)
requests1=$(metric_sum apiserver_request_total)
webhook_hist >"$W/hist1"
njobs=$(jobs)
queued=$(K -n "$NS" get vmmigrations -o jsonpath='{range .items[*]}{.status.message}{"\n"}{end}' | grep -c 'waiting for a slot' || true)

say "webhook: $RATE requests/s for $SECONDS_AT_RATE s against https://${webhook_ip%% *}:8443/validate"
K get validatingwebhookconfiguration virtrigaud-webhook -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | base64 -d >"$W/ca.crt"
python3 - "$NS" >"$W/review.json" <<'PY'
import json, sys, uuid
ns = sys.argv[1]
obj = {"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VMMigration",
       "metadata": {"name": "load-probe", "namespace": ns},
       "spec": {"sourceName": "vm-1", "targetProviderRef": {"name": "dst"}, "targetName": "probe-copy",
                "storage": {"type": "s3", "bucket": "vm-migrations", "credentialsSecretRef": {"name": "s3"}}}}
print(json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
    "uid": str(uuid.uuid4()), "kind": {"group": "infra.virtrigaud.io", "version": "v1beta1", "kind": "VMMigration"},
    "resource": {"group": "infra.virtrigaud.io", "version": "v1beta1", "resource": "vmmigrations"},
    "name": "load-probe", "namespace": ns, "operation": "CREATE",
    "userInfo": {"username": "load", "groups": ["system:authenticated"]}, "object": obj, "dryRun": True}}))
PY
cargo build -q --release -p webhook --example admission_load
gen=$CARGO_TARGET_DIR/release/examples/admission_load
sustained=$("$gen" --url "https://${webhook_ip%% *}:8443/validate" --server-name "virtrigaud-webhook.$SYS.svc" \
  --ca "$W/ca.crt" --body "$W/review.json" \
  --rate "$RATE" --count $((RATE * SECONDS_AT_RATE)))
opid_rss=$(K -n "$SYS" exec deploy/virtrigaud-operator -c operator -- cat /proc/1/status | awk '/^VmHWM/ {print $2}')

py() { python3 -c "$1"; }
burst_s=$(py "print(f'{$t_done - $t0:.1f}')")
apply_s=$(py "print(f'{$t_applied - $t0:.1f}')")
per=$(py "print(f'{($requests1 - $requests0) / $N:.1f}')")
field() { py "import json; print(json.loads('$sustained')['$1'])"; }
rss_mib=$(py "print(f'{$opid_rss / 1024:.1f}')")
printf '\n%-46s %14s %14s %s\n' "figure" "measured" "target" "met"
row() { printf '%-46s %14s %14s %s\n' "$1" "$2" "$3" "$4"; }
ok() { py "print('yes' if $1 else 'NO')"; }
row "$N migrations: all with a Job or queue position" "${burst_s} s" "<= 30 s" "$(ok "$burst_s <= 30")"
row "  (the parallel applies themselves took)" "${apply_s} s" "" ""
row "  Jobs / queued" "$njobs / $queued" "" ""
row "operator peak RSS (VmHWM)" "${rss_mib} MiB" "<= 64 MiB" "$(ok "$rss_mib <= 64")"
row "apiserver requests per migration (all clients)" "$per" "" ""
row "webhook p50 during the burst (bucket bound)" "$(quantile 0.5 "$W/hist0" "$W/hist1") ms" "" ""
row "webhook p99 during the burst (bucket bound)" "$(quantile 0.99 "$W/hist0" "$W/hist1") ms" "" ""
row "webhook at $RATE req/s: achieved rate" "$(field rate)/s" "" ""
row "webhook at $RATE req/s: p50" "$(field p50_ms) ms" "" ""
row "webhook at $RATE req/s: p99" "$(field p99_ms) ms" "<= 5 ms" "$(ok "$(field p99_ms) <= 5")"
row "webhook at $RATE req/s: errors" "$(field errors)" "0" "$(ok "$(field errors) == 0")"
