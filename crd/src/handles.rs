//! Typed references to what a migration made on a hypervisor. The runner records each one in the
//! VMMigration status the moment the thing exists, so that a later attempt resumes with it and a
//! cleanup run removes exactly it. Providers check a handle against the hypervisor (the VM it names
//! still has the recorded name and carries the migration's mark) before deleting anything.
//!
//! Each handle is a one-of: exactly one member, named after the provider type, is set, e.g.
//! `snapshot: {vsphere: {vm: vm-42, snapshot: snapshot-7, name: vrg-...}}`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::provider::ProviderType;

/// A snapshot the runner took of the source VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SnapshotHandle {
    /// An external disk-only snapshot of a libvirt domain.
    #[serde(rename_all = "camelCase")]
    Libvirt {
        /// UUID of the domain.
        domain_uuid: String,
        /// Snapshot name.
        name: String,
    },
    /// A vSphere VM snapshot.
    #[serde(rename_all = "camelCase")]
    Vsphere {
        /// Managed object id of the VM (`vm-42`).
        vm: String,
        /// Managed object id of the snapshot (`snapshot-7`).
        snapshot: String,
        /// Snapshot name.
        name: String,
    },
    /// A Proxmox VE VM snapshot.
    #[serde(rename_all = "camelCase")]
    Proxmox {
        /// Node the VM runs on.
        node: String,
        /// VMID.
        vmid: u32,
        /// Snapshot name.
        name: String,
    },
}

impl SnapshotHandle {
    /// The provider type this handle belongs to.
    pub fn provider(&self) -> ProviderType {
        match self {
            SnapshotHandle::Libvirt { .. } => ProviderType::Libvirt,
            SnapshotHandle::Vsphere { .. } => ProviderType::Vsphere,
            SnapshotHandle::Proxmox { .. } => ProviderType::Proxmox,
        }
    }

    /// The snapshot's name.
    pub fn name(&self) -> &str {
        match self {
            SnapshotHandle::Libvirt { name, .. }
            | SnapshotHandle::Vsphere { name, .. }
            | SnapshotHandle::Proxmox { name, .. } => name,
        }
    }
}

impl std::fmt::Display for SnapshotHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotHandle::Libvirt { domain_uuid, name } => {
                write!(f, "{name} of domain {domain_uuid}")
            }
            SnapshotHandle::Vsphere { vm, snapshot, name } => {
                write!(f, "{name} ({snapshot}) of {vm}")
            }
            SnapshotHandle::Proxmox { node, vmid, name } => {
                write!(f, "{name} of VM {vmid} on {node}")
            }
        }
    }
}

/// The VM a migration creates on the target, recorded before the hypervisor starts making it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TargetVmHandle {
    /// A libvirt domain.
    #[serde(rename_all = "camelCase")]
    Libvirt {
        /// Domain UUID.
        uuid: String,
        /// Domain name.
        name: String,
    },
    /// A vSphere VM.
    #[serde(rename_all = "camelCase")]
    Vsphere {
        /// Managed object id (`vm-42`).
        vm: String,
        /// VM name.
        name: String,
    },
    /// A Proxmox VE VM.
    #[serde(rename_all = "camelCase")]
    Proxmox {
        /// Node it is created on.
        node: String,
        /// VMID.
        vmid: u32,
        /// VM name.
        name: String,
    },
}

impl TargetVmHandle {
    /// The provider type this handle belongs to.
    pub fn provider(&self) -> ProviderType {
        match self {
            TargetVmHandle::Libvirt { .. } => ProviderType::Libvirt,
            TargetVmHandle::Vsphere { .. } => ProviderType::Vsphere,
            TargetVmHandle::Proxmox { .. } => ProviderType::Proxmox,
        }
    }

    /// The hypervisor's id of the VM, as `status.targetVmId` and the VirtualMachine's `status.id`
    /// show it: libvirt UUID, vSphere managed object id, Proxmox VMID.
    pub fn id(&self) -> String {
        match self {
            TargetVmHandle::Libvirt { uuid, .. } => uuid.clone(),
            TargetVmHandle::Vsphere { vm, .. } => vm.clone(),
            TargetVmHandle::Proxmox { vmid, .. } => vmid.to_string(),
        }
    }

    /// The VM's name on the target.
    pub fn name(&self) -> &str {
        match self {
            TargetVmHandle::Libvirt { name, .. }
            | TargetVmHandle::Vsphere { name, .. }
            | TargetVmHandle::Proxmox { name, .. } => name,
        }
    }
}

impl std::fmt::Display for TargetVmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetVmHandle::Libvirt { uuid, name } => write!(f, "domain {name} ({uuid})"),
            TargetVmHandle::Vsphere { vm, name } => write!(f, "VM {name} ({vm})"),
            TargetVmHandle::Proxmox { node, vmid, name } => {
                write!(f, "VM {name} ({vmid} on {node})")
            }
        }
    }
}

/// One disk imported into the target before its VM exists (resume skips it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TargetDiskHandle {
    /// A libvirt storage volume.
    #[serde(rename_all = "camelCase")]
    Libvirt {
        /// Volume path on the host.
        path: String,
    },
    /// A file uploaded to a Proxmox VE storage, attached with `import-from` when the VM is created.
    #[serde(rename_all = "camelCase")]
    Proxmox {
        /// Node the file is on.
        node: String,
        /// Volume id of the file, e.g. `local:import/web-01-scsi0.qcow2`.
        volid: String,
        /// File size in bytes, checked before the file is reused.
        size: u64,
    },
}

impl TargetDiskHandle {
    /// The provider type this handle belongs to.
    pub fn provider(&self) -> ProviderType {
        match self {
            TargetDiskHandle::Libvirt { .. } => ProviderType::Libvirt,
            TargetDiskHandle::Proxmox { .. } => ProviderType::Proxmox,
        }
    }
}

impl std::fmt::Display for TargetDiskHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetDiskHandle::Libvirt { path } => f.write_str(path),
            TargetDiskHandle::Proxmox { node, volid, .. } => write!(f, "{volid} on {node}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_one_of_objects_named_after_the_provider() {
        let snap = SnapshotHandle::Vsphere {
            vm: "vm-42".into(),
            snapshot: "snapshot-7".into(),
            name: "vrg-1".into(),
        };
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"vsphere": {"vm": "vm-42", "snapshot": "snapshot-7", "name": "vrg-1"}})
        );
        assert_eq!(
            serde_json::from_value::<SnapshotHandle>(json).unwrap(),
            snap
        );

        let vm = TargetVmHandle::Proxmox {
            node: "pve1".into(),
            vmid: 104,
            name: "web".into(),
        };
        assert_eq!(vm.id(), "104");
        assert_eq!(vm.provider(), ProviderType::Proxmox);
        assert_eq!(
            serde_json::to_value(&vm).unwrap(),
            serde_json::json!({"proxmox": {"node": "pve1", "vmid": 104, "name": "web"}})
        );
        let disk = TargetDiskHandle::Libvirt {
            path: "/pool/web-vda.qcow2".into(),
        };
        assert_eq!(
            serde_json::to_value(&disk).unwrap(),
            serde_json::json!({"libvirt": {"path": "/pool/web-vda.qcow2"}})
        );
        assert_eq!(
            SnapshotHandle::Libvirt {
                domain_uuid: "u".into(),
                name: "vrg-1".into()
            }
            .to_string(),
            "vrg-1 of domain u"
        );
    }
}
