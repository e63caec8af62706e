//! `VirtualMachine`: a VM on a Provider (the upstream project's kind, minimal).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ObjectRef};

/// Which Provider the VM lives on. A VMMigration's `sourceName` names one of these, and a successful
/// migration creates one for the new VM.
// Printer columns repeat `type_ = "string"` by design; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "infra.virtrigaud.io",
    version = "v1beta1",
    kind = "VirtualMachine",
    doc = "A virtual machine on a Provider. metadata.name is its name on the hypervisor, status.id the hypervisor's id for it.",
    plural = "virtualmachines",
    singular = "virtualmachine",
    namespaced,
    status = "VirtualMachineStatus",
    shortname = "vm",
    category = "virtrigaud",
    printcolumn(
        name = "Provider",
        type_ = "string",
        json_path = ".spec.providerRef.name",
        description = "The Provider the VM lives on"
    ),
    printcolumn(
        name = "Id",
        type_ = "string",
        json_path = ".status.id",
        description = "Hypervisor id"
    ),
    printcolumn(
        name = "Power",
        type_ = "string",
        json_path = ".status.powerState",
        description = "Power state"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// The Provider this VM lives on.
    pub provider_ref: ObjectRef,
}

/// Observed state of a VM.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// The hypervisor's id for the VM (libvirt UUID, vSphere managed object id, Proxmox VMID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `On` or `Off`, as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<String>,
    /// Conditions such as `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
