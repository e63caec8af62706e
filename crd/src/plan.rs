//! The contract between the operator and the runner Job it launches.
//!
//! The runner's ServiceAccount may only `get` its own VMMigration and `patch` its status, so it cannot
//! read Providers, VirtualMachines or Secrets. The operator resolves all of that and hands the runner a
//! per-attempt Secret mounted at [`MOUNT_DIR`]:
//! - [`PLAN_FILE`]: a [`RunnerPlan`] as JSON (no credentials in it);
//! - one file per credential, named `<scope>.<key>` with scope `source`, `target` or `storage`, e.g.
//!   `storage.accessKey`, `source.password`, `target.token_secret`.
//!
//! The runner ends by writing a [`RunnerOutcome`] as JSON to the termination message path
//! ([`TERMINATION_MESSAGE_PATH`]) and exiting with [`EXIT_OK`], [`EXIT_RETRYABLE`] or [`EXIT_TERMINAL`].

use serde::{Deserialize, Serialize};

use crate::provider::{ProviderDefaults, ProviderType, SshTarget};
use crate::vmmigration::{
    CleanupPolicy, Cutover, DiskFormat, NetworkHint, StorageSpec, TargetResources,
};

/// Where the operator mounts the runner Secret.
pub const MOUNT_DIR: &str = "/var/run/virtrigaud";
/// File name of the plan inside [`MOUNT_DIR`].
pub const PLAN_FILE: &str = "plan.json";
/// Kubernetes' default termination message path.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Where the scratch volume is mounted in the runner pod.
pub const SCRATCH_DIR: &str = "/scratch";
/// Environment variable that overrides [`MOUNT_DIR`] (tests, the e2e process node).
pub const ENV_MOUNT_DIR: &str = "VRG_RUNNER_DIR";
/// Environment variable with the bytes the scratch volume may hold when that is less than the free
/// space its filesystem reports (an emptyDir's `sizeLimit`: the kubelet evicts the pod past it).
pub const ENV_SCRATCH_LIMIT: &str = "VRG_SCRATCH_LIMIT";

/// Runner exit code: migration (or cleanup) finished.
pub const EXIT_OK: i32 = 0;
/// Runner exit code: failed, a later attempt may succeed (network, 5xx, throttling...).
pub const EXIT_RETRYABLE: i32 = 1;
/// Runner exit code: failed, retrying cannot help (bad credentials, VM missing, checksum mismatch, no space).
pub const EXIT_TERMINAL: i32 = 2;

/// What the runner does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunnerMode {
    /// Run the migration pipeline.
    Migrate,
    /// Remove what a cancelled migration left behind (staged objects, source snapshot, partial target).
    Cleanup,
}

/// Everything a runner needs besides credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunnerPlan {
    /// The VMMigration this runner works for.
    pub migration: MigrationRef,
    /// Attempt number, starting at 1.
    pub attempt: i32,
    /// No attempt follows this one (retryPolicy.maxAttempts reached): a failure, retryable or not,
    /// ends the migration, so the runner restores what it changed on the source.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub final_attempt: bool,
    pub mode: RunnerMode,
    pub source: ProviderPlan,
    /// The source VM: its name on the hypervisor and, when known, the hypervisor's id.
    pub source_vm: VmPlan,
    pub target: ProviderPlan,
    /// Name of the new VM on the target.
    pub target_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_storage_hint: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_network_hints: Vec<NetworkHint>,
    /// Explicit target disk format; the target's native format when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_disk_format: Option<DiskFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_resources: Option<TargetResources>,
    /// The storage spec, credentials removed (they are files next to the plan).
    pub storage: StorageSpec,
    pub cleanup_policy: CleanupPolicy,
    /// Whether the source may be stopped for the final copy, and when the target is started.
    #[serde(default)]
    pub cutover: Cutover,
    /// Loopback endpoints (and libvirt's local socket) may be connected to: the operator runs with
    /// `--allow-loopback-endpoints` (local test worlds only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_loopback_endpoints: bool,
}

/// Identifies the VMMigration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A resolved Provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderPlan {
    /// `<namespace>/<name>` of the Provider object, for messages.
    pub name: String,
    #[serde(rename = "type")]
    pub type_: ProviderType,
    pub endpoint: String,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<ProviderDefaults>,
    /// Proxmox VE: the SSH login for disk export, when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshTarget>,
}

/// A resolved VirtualMachine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmPlan {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// How a runner ended, written to the termination message (at most 4 KiB, so no per-disk detail).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunnerOutcome {
    pub succeeded: bool,
    /// Whether a later attempt may succeed (only meaningful when `succeeded` is false).
    #[serde(default)]
    pub retryable: bool,
    /// CamelCase reason, e.g. `StorageAuthFailed`, `ChecksumMismatch`, `Completed`.
    pub reason: String,
    /// One readable line.
    pub message: String,
    /// Hypervisor id of the created target VM, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_vm_id: Option<String>,
}

/// Name of the per-attempt credential file for `scope` (`source`, `target`, `storage`) and `key`.
pub fn credential_file(scope: &str, key: &str) -> String {
    format!("{scope}.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_fits_the_termination_message_limit() {
        let outcome = RunnerOutcome {
            succeeded: false,
            retryable: true,
            reason: "StorageUnavailable".into(),
            message: "x".repeat(3000),
            target_vm_id: None,
        };
        assert!(serde_json::to_vec(&outcome).unwrap().len() < 4096);
        let back: RunnerOutcome =
            serde_json::from_slice(&serde_json::to_vec(&outcome).unwrap()).unwrap();
        assert_eq!(back, outcome);
    }
}
