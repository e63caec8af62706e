//! `Provider`: a hypervisor endpoint and the credentials to reach it (the upstream project's kind, minimal).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SecretRef};
use crate::vmmigration::DiskFormat;

/// Where the hypervisor is and how to authenticate. Credential Secret keys by type: libvirt `username`/`password` (SASL)
/// or `ssh-privatekey` + `known_hosts` for qemu+ssh; vsphere `username`/`password`; proxmox `token_id`
/// (`user@realm!name`) and `token_secret`, plus `ssh-privatekey` + `known_hosts` for disk export.
// Printer columns repeat `type_ = "string"` by design; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "infra.virtrigaud.io",
    version = "v1beta1",
    kind = "Provider",
    doc = "A hypervisor endpoint (libvirt, vSphere or Proxmox VE) and the Secret with the credentials to reach it.",
    plural = "providers",
    singular = "provider",
    namespaced,
    status = "ProviderStatus",
    category = "virtrigaud",
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.type",
        description = "Hypervisor kind"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.endpoint",
        description = "Where the hypervisor is reached"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// Hypervisor kind: `libvirt`, `vsphere` or `proxmox`.
    #[serde(rename = "type")]
    pub type_: ProviderType,
    /// Where to reach it: libvirt `qemu+tcp://host/system`, `qemu+tls://...`, `qemu+ssh://user@host/system`
    /// or `qemu:///system`; vSphere `https://vcenter.example.com` (the SDK path `/sdk` is implied);
    /// Proxmox `https://pve.example.com:8006`.
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: String,
    /// Secret with the credentials (see the kind's description for the keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_secret_ref: Option<SecretRef>,
    /// Skip TLS certificate verification. For labs only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// Placement defaults for VMs created on this provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<ProviderDefaults>,
    /// Proxmox VE: the SSH login disks are read through (`pvesm export`), when it is not
    /// `root@<endpoint host>:22`. The key and `known_hosts` come from the credential Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshTarget>,
    /// How many migrations may run at once against this Provider, counting each migration that uses
    /// it as its source OR its target (a migration between two Providers takes a slot on both). A
    /// migration runs, and holds its slot, while its runner Job has not finished; one beyond the limit
    /// waits in phase Pending (Ready reason `Queued`, the message naming this Provider, how many run
    /// and how many wait ahead of it), first come first served by creation time across every
    /// namespace that uses this Provider. A change counts within seconds, without restarts. Default 10
    /// when unset: Forklift found about 10 concurrent VM transfers per ESXi host to be the useful
    /// maximum; past it the hypervisor's disks and network, the staging storage and the NFC/export
    /// sessions degrade and every migration gets slower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent_migrations: Option<i32>,
}

impl ProviderSpec {
    /// [`ProviderSpec::max_concurrent_migrations`] when unset.
    pub const DEFAULT_MAX_CONCURRENT_MIGRATIONS: i32 = 10;

    /// How many migrations may run against this Provider at once (at least 1).
    pub fn concurrency_limit(&self) -> i32 {
        self.max_concurrent_migrations
            .unwrap_or(Self::DEFAULT_MAX_CONCURRENT_MIGRATIONS)
            .max(1)
    }
}

/// Where an SSH login goes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshTarget {
    /// Host name or address (default: the endpoint's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub host: Option<String>,
    /// Port (default 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// User (default `root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub user: Option<String>,
}

/// Hypervisor kind.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    /// libvirt/KVM.
    Libvirt,
    /// VMware vSphere (vCenter or ESXi).
    Vsphere,
    /// Proxmox VE.
    Proxmox,
}

impl ProviderType {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderType::Libvirt => "libvirt",
            ProviderType::Vsphere => "vsphere",
            ProviderType::Proxmox => "proxmox",
        }
    }

    /// The disk format a migration writes when `targetDiskFormat` is not set.
    pub fn native_format(self) -> DiskFormat {
        match self {
            ProviderType::Vsphere => DiskFormat::Vmdk,
            ProviderType::Libvirt | ProviderType::Proxmox => DiskFormat::Qcow2,
        }
    }

    /// The disk formats this provider can import.
    pub fn accepted_formats(self) -> &'static [DiskFormat] {
        match self {
            ProviderType::Vsphere => &[DiskFormat::Vmdk],
            ProviderType::Libvirt => &[DiskFormat::Qcow2, DiskFormat::Raw],
            ProviderType::Proxmox => &[DiskFormat::Qcow2, DiskFormat::Raw, DiskFormat::Vmdk],
        }
    }
}

impl std::fmt::Display for ProviderType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Placement defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderDefaults {
    /// vSphere datastore, Proxmox storage or libvirt pool used when a migration gives no targetStorageHint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<String>,
    /// vSphere cluster, or Proxmox node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// vSphere VM folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// vSphere resource pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_pool: Option<String>,
    /// Network (vSphere) or bridge (libvirt, Proxmox) used when a migration gives no network hints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// Observed state of a provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    /// Conditions such as `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_limit_defaults_to_10() {
        let spec: ProviderSpec = serde_json::from_value(serde_json::json!({
            "type": "vsphere", "endpoint": "https://vc.example.com"
        }))
        .unwrap();
        assert_eq!(spec.max_concurrent_migrations, None);
        assert_eq!(spec.concurrency_limit(), 10);
        let spec = ProviderSpec {
            max_concurrent_migrations: Some(3),
            ..spec
        };
        assert_eq!(spec.concurrency_limit(), 3);
    }
}
