#!/usr/bin/env bash
# `make demo`: a real migration in the local e2e world. The guide's scenario 1 shape (libvirt source,
# S3 staging) into the libvirt target of the world: a running two-disk domain on the world's libvirtd is
# migrated through the real S3 server by the operator, webhook and runner running as pods on the process
# node. Shows progress until Ready (or the failure), proves the target disks hold the source's content,
# then prints how to look around.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WORLD=${E2E_WORLD:-$HERE/.world}
# shellcheck disable=SC1091
source "$WORLD/env"
K() { "$KUBECTL" "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

NS=demo
SRC=demo-vm
TARGET=demo-vm-migrated
MIGRATION=kvm-to-kvm

say "Installing the operator and the webhook (kubectl apply -k e2e/kustomize = kustomize/default + loopback endpoints)"
K apply -k "$HERE/kustomize" >/dev/null
K -n virtrigaud-system rollout status deploy/virtrigaud-operator --timeout=180s
K -n virtrigaud-system rollout status deploy/virtrigaud-webhook --timeout=180s

say "Preparing the source VM '$SRC' on libvirt ($VRG_LIBVIRT_URI): running, vda qcow2 + vdb raw with known data"
K delete vmm -n "$NS" "$MIGRATION" --ignore-not-found --wait=true >/dev/null 2>&1 || true
K delete vm -n "$NS" "$TARGET" --ignore-not-found >/dev/null 2>&1 || true
virsh -c qemu:///system destroy "$TARGET" >/dev/null 2>&1 || true
virsh -c qemu:///system undefine "$TARGET" --remove-all-storage --nvram >/dev/null 2>&1 || true
REF=$WORLD/demo-ref
mkdir -p "$REF"
bash "$HERE/fixtures/libvirt/make-source-vm.sh" "$SRC" --ref-dir "$REF" >/dev/null
virsh -c qemu:///system domblklist "$SRC"

say "Applying Providers, the source VirtualMachine, credentials and the VMMigration (namespace $NS)"
K create namespace "$NS" --dry-run=client -o yaml | K apply -f - >/dev/null
K -n "$NS" create secret generic libvirt-credentials \
  --from-literal=username="$VRG_LIBVIRT_USER" --from-literal=password="$VRG_LIBVIRT_PASSWORD" \
  --dry-run=client -o yaml | K apply -f - >/dev/null
K -n "$NS" create secret generic s3-creds \
  --from-literal=accessKey="$VRG_S3_ACCESS_KEY" --from-literal=secretKey="$VRG_S3_SECRET_KEY" \
  --from-literal=endpoint="$VRG_S3_ENDPOINT" \
  --dry-run=client -o yaml | K apply -f - >/dev/null
S3_HOSTPORT=${VRG_S3_ENDPOINT#*://}
K apply -f - <<YAML
apiVersion: infra.virtrigaud.io/v1beta1
kind: Provider
metadata: {name: kvm-source, namespace: $NS}
spec:
  type: libvirt
  endpoint: $VRG_LIBVIRT_URI
  credentialSecretRef: {name: libvirt-credentials}
---
apiVersion: infra.virtrigaud.io/v1beta1
kind: Provider
metadata: {name: kvm-target, namespace: $NS}
spec:
  type: libvirt
  endpoint: $VRG_LIBVIRT_URI
  credentialSecretRef: {name: libvirt-credentials}
  defaults: {datastore: $VRG_LIBVIRT_POOL}
---
apiVersion: infra.virtrigaud.io/v1beta1
kind: VirtualMachine
metadata: {name: $SRC, namespace: $NS}
spec:
  providerRef: {name: kvm-source}
YAML
cat <<YAML | tee "$WORLD/demo-migration.yaml"
apiVersion: infra.virtrigaud.io/v1beta1
kind: VMMigration
metadata:
  name: $MIGRATION
  namespace: $NS
spec:
  sourceName: $SRC
  sourceNamespace: $NS
  targetProviderRef:
    name: kvm-target
    namespace: $NS
  targetName: $TARGET
  targetStorageHint: $VRG_LIBVIRT_POOL
  storage:
    type: s3
    bucket: $VRG_S3_BUCKET
    endpoint: $S3_HOSTPORT
    region: $VRG_S3_REGION
    credentialsSecretRef:
      name: s3-creds
  cleanupPolicy:
    deleteIntermediate: true
    deleteSnapshot: true
    deleteSource: false
  retryPolicy:
    maxAttempts: 3
    backoffDuration: 10s
    maxBackoffDuration: 1m
YAML
K apply -f "$WORLD/demo-migration.yaml"

say "Watching the migration (kubectl get vmm -n $NS -w shows the same)"
deadline=$(( $(date +%s) + ${DEMO_TIMEOUT:-900} ))
last=
while :; do
  line=$(K -n "$NS" get vmm "$MIGRATION" -o jsonpath='{.status.phase}|{.status.progress}|{.status.attempt}|{.status.message}' 2>/dev/null || true)
  IFS='|' read -r phase progress attempt message <<<"$line"
  if [ "$line" != "$last" ]; then
    printf '%s  phase=%-16s progress=%3s%%  attempt=%s  %s\n' "$(date +%T)" "${phase:-?}" "${progress:-0}" "${attempt:-?}" "$message"
    last=$line
  fi
  case $phase in Ready|Failed) break ;; esac
  [ "$(date +%s)" -lt "$deadline" ] || { echo "demo: timed out waiting for Ready" >&2; break; }
  sleep 2
done

say "Result"
K -n "$NS" get vmm "$MIGRATION" -o wide
K -n "$NS" get vmm "$MIGRATION" -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}' | column -t -s $'\t'
echo
K -n "$NS" get vmm "$MIGRATION" -o jsonpath='{range .status.disks[*]}{.name}{"  "}{.sourceFormat}{" -> "}{.targetFormat}{"  sha256="}{.sha256}{"  target="}{.targetDisk.libvirt.path}{"\n"}{end}'
echo
K -n "$NS" get events --field-selector involvedObject.name="$MIGRATION" --sort-by=.lastTimestamp 2>/dev/null | tail -n 15 || true
echo
K -n "$NS" logs -l virtrigaud.io/migration="$MIGRATION" --tail=15 2>/dev/null || true

if [ "$phase" = Ready ]; then
  say "Proof: the target's disks hold the source's guest content (qemu-img compare)"
  i=0
  for disk in vda vdb; do
    target=$(K -n "$NS" get vmm "$MIGRATION" -o jsonpath="{.status.disks[$i].targetDisk.libvirt.path}")
    qemu-img compare -U -q "$REF/$disk.raw" "$target" && echo "$disk: identical ($target)"
    i=$((i + 1))
  done
  virsh -c qemu:///system dominfo "$TARGET" | grep -E 'Name|State|CPU|memory'
  K -n "$NS" get vm
fi

cat <<TXT

Look around:
  source $WORLD/env                    # KUBECONFIG, KUBECTL and the endpoints' addresses
  \$KUBECTL get vmm -A                  # migrations (short names vmm, vmmig)
  \$KUBECTL -n $NS describe vmm $MIGRATION
  \$KUBECTL -n $NS get jobs,pods -l virtrigaud.io/migration=$MIGRATION
  \$KUBECTL -n $NS logs -l virtrigaud.io/migration=$MIGRATION     # the runner's log
  \$KUBECTL explain vmmigration.spec.storage
  virsh -c qemu:///system list --all   # source and migrated domains
  make e2e-down                        # stop the world
TXT
[ "$phase" = Ready ]
