#!/usr/bin/env bash
# `make demo`: the guide's Scenario 1 (Libvirt -> vSphere through S3) in the local e2e world. A running
# two-disk libvirt domain `ubuntu-server` (namespace kvm-vms) is migrated to the vSphere simulator as
# `ubuntu-server-vcenter` by the operator, webhook and runner running from their images as pods on the
# world's node (kubelet + containerd), in namespaces that enforce Pod Security `restricted`, with
# examples/libvirt-to-vsphere.yaml applied unchanged but for the datastore and bucket names. Shows the
# progress until Ready (or the failure), then the proof: the VM on the vSphere side, the runner's check
# of every uploaded disk against the NFC lease's SHA-1 manifest, and the source left as it was.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WORLD=${E2E_WORLD:-$HERE/.world}
# shellcheck disable=SC1091
source "$WORLD/env"
K() { "$KUBECTL" "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
vsphere_vm() {
  VSPHERE_URL=$VRG_VCSIM_URL VSPHERE_USER=$VRG_VCSIM_USER VSPHERE_PASSWORD=$VRG_VCSIM_PASSWORD \
    VSPHERE_CA=$VRG_VCSIM_CA "${CARGO_TARGET_DIR:-$HOME/.cache/virtrigaud/target}/debug/examples/vsphere_vm" "$@"
}

SRC=ubuntu-server
TARGET=ubuntu-server-vcenter
MIGRATION=kvm-to-vsphere

say "Installing the operator and the webhook (kubectl apply -k e2e/kustomize = kustomize/default with the images make images built)"
K apply -k "$HERE/kustomize" >/dev/null
K -n virtrigaud-system rollout status deploy/virtrigaud-operator --timeout=180s
K -n virtrigaud-system rollout status deploy/virtrigaud-webhook --timeout=180s

say "Preparing the source VM '$SRC' on libvirt ($VRG_LIBVIRT_URI): running, vda qcow2 + vdb raw with known data"
K delete vmm "$MIGRATION" --ignore-not-found --wait=true >/dev/null 2>&1 || true
K -n kvm-vms delete vm "$TARGET" --ignore-not-found >/dev/null 2>&1 || true
K delete vm "$TARGET" --ignore-not-found >/dev/null 2>&1 || true
vsphere_vm "$TARGET" --destroy
REF=$WORLD/demo-ref
mkdir -p "$REF"
bash "$HERE/fixtures/libvirt/make-source-vm.sh" "$SRC" --ref-dir "$REF" >/dev/null
virsh -c qemu:///system domblklist "$SRC"

say "Applying the Providers, the source VirtualMachine and the credentials (libvirt, vcsim, S3)"
K create namespace kvm-vms --dry-run=client -o yaml | K apply -f - >/dev/null
# The runner Job runs in the migration's namespace: hold it to Pod Security `restricted`.
K label namespace default pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
K create secret generic libvirt-credentials \
  --from-literal=username="$VRG_LIBVIRT_USER" --from-literal=password="$VRG_LIBVIRT_PASSWORD" \
  --dry-run=client -o yaml | K apply -f - >/dev/null
K create secret generic vsphere-credentials \
  --from-literal=username="$VRG_VCSIM_USER" --from-literal=password="$VRG_VCSIM_PASSWORD" \
  --from-file=ca.crt="$VRG_VCSIM_CA" --dry-run=client -o yaml | K apply -f - >/dev/null
K create secret generic s3-creds \
  --from-literal=accessKey="$VRG_S3_ACCESS_KEY" --from-literal=secretKey="$VRG_S3_SECRET_KEY" \
  --from-literal=endpoint="$VRG_S3_ENDPOINT" --dry-run=client -o yaml | K apply -f - >/dev/null
K apply -f - <<YAML
apiVersion: infra.virtrigaud.io/v1beta1
kind: Provider
metadata: {name: libvirt-kvm, namespace: default}
spec:
  type: libvirt
  endpoint: $VRG_LIBVIRT_URI
  credentialSecretRef: {name: libvirt-credentials}
---
apiVersion: infra.virtrigaud.io/v1beta1
kind: Provider
metadata: {name: vcenter-prod, namespace: default}
spec:
  type: vsphere
  endpoint: $VRG_VCSIM_URL
  credentialSecretRef: {name: vsphere-credentials}
  defaults: {datastore: LocalDS_0, network: VM Network}
---
apiVersion: infra.virtrigaud.io/v1beta1
kind: VirtualMachine
metadata: {name: $SRC, namespace: kvm-vms}
spec:
  providerRef: {name: libvirt-kvm, namespace: default}
YAML

say "Applying the guide's Scenario 1 (examples/libvirt-to-vsphere.yaml; datastore1 -> LocalDS_0, bucket migrations -> $VRG_S3_BUCKET)"
sed -e "s/datastore1/LocalDS_0/" -e "s/bucket: migrations/bucket: $VRG_S3_BUCKET/" \
  "$REPO/examples/libvirt-to-vsphere.yaml" | tee "$WORLD/demo-migration.yaml" | grep -v '^#'
K apply -f "$WORLD/demo-migration.yaml"

say "Watching the migration (kubectl get vmm -w shows the same)"
deadline=$(( $(date +%s) + ${DEMO_TIMEOUT:-900} ))
last=
while :; do
  line=$(K get vmm "$MIGRATION" -o jsonpath='{.status.phase}|{.status.progress}|{.status.attempt}|{.status.message}' 2>/dev/null || true)
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
K get vmm "$MIGRATION" -o wide
K get vmm "$MIGRATION" -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}' | column -t -s $'\t'
echo
K get vmm "$MIGRATION" -o jsonpath='{range .status.disks[*]}{.name}{"  "}{.sourceFormat}{" -> "}{.targetFormat}{"  "}{.bytesTotal}{" bytes  sha256="}{.sha256}{"\n"}{end}'
echo
K get events --field-selector involvedObject.name="$MIGRATION" --sort-by=.lastTimestamp 2>/dev/null | tail -n 15 || true

if [ "$phase" = Ready ]; then
  say "Proof: the VM on vSphere, shaped like the source (1 vCPU, 64 MiB, two 64 MiB disks)"
  vsphere_vm "$TARGET"
  say "Proof: every disk uploaded to the ImportVApp lease matches the lease manifest's SHA-1 (runner log)"
  K logs -l virtrigaud.io/migration="$MIGRATION" --tail=-1 | grep -E "uploaded|manifest" || true
  say "The source is as it was: running, no snapshot left"
  virsh -c qemu:///system domstate "$SRC"
  echo "snapshots: $(virsh -c qemu:///system snapshot-list "$SRC" --name | grep -c . || true)"
  K get vm -A
fi

cat <<TXT

Look around:
  source $WORLD/env                    # KUBECONFIG, KUBECTL and the endpoints' addresses
  \$KUBECTL get vmm -A                  # migrations (short names vmm, vmmig)
  \$KUBECTL describe vmm $MIGRATION
  \$KUBECTL get jobs,pods -l virtrigaud.io/migration=$MIGRATION
  \$KUBECTL logs -l virtrigaud.io/migration=$MIGRATION     # the runner's log
  \$KUBECTL explain vmmigration.spec.storage
  make e2e-down                        # stop the world
TXT
[ "$phase" = Ready ]
