//! `VMMigration`: move one virtual machine from one hypervisor to another through intermediate storage.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ObjectRef, SecretRef};
use crate::handles::{SnapshotHandle, TargetDiskHandle, TargetVmHandle};
use crate::references::PinnedReference;

/// What to migrate, where to, and through which storage. Immutable after creation.
// Printer columns repeat `type_ = "string"` by design; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "infra.virtrigaud.io",
    version = "v1beta1",
    kind = "VMMigration",
    doc = "Migrates a virtual machine between hypervisors (libvirt/KVM, Proxmox VE, VMware vSphere) through intermediate storage (S3, HTTP or NFS). The source VM is snapshotted, its disks exported, converted when the target needs another format, staged with SHA-256 checksums, imported into the target provider, and a new VM is created there. The source VM is never changed beyond a temporary snapshot, unless spec.cutover asks the migration to stop it for the final copy (required by cleanupPolicy.deleteSource).",
    plural = "vmmigrations",
    singular = "vmmigration",
    namespaced,
    status = "VMMigrationStatus",
    shortname = "vmm",
    shortname = "vmmig",
    category = "virtrigaud",
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.sourceName", description = "Source VirtualMachine"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetName", description = "Name of the new VM"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Current phase"),
    printcolumn(name = "Progress", type_ = "integer", json_path = ".status.progress", description = "Percent of the migration done"),
    printcolumn(name = "Attempt", type_ = "integer", json_path = ".status.attempt", description = "Current attempt"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", description = "Why the migration is (not yet) Ready"),
    printcolumn(name = "Target-Provider", type_ = "string", json_path = ".spec.targetProviderRef.name", description = "Target Provider", priority = 1),
    printcolumn(name = "Storage", type_ = "string", json_path = ".spec.storage.type", description = "Intermediate storage", priority = 1),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message", description = "Current state or last error", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: must be at most 63 characters (it names the runner Job and its labels)")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable after creation: delete the VMMigration and create a new one"))]
#[x_kube(validation = Rule::new("!has(self.cleanupPolicy) || !has(self.cleanupPolicy.deleteSource) || !self.cleanupPolicy.deleteSource || (has(self.cutover) && has(self.cutover.stopSource) && self.cutover.stopSource != 'Never')").message("cleanupPolicy.deleteSource needs cutover.stopSource Shutdown or PowerOff: the source is deleted only after a final copy taken while the migration held it stopped was read back from the target and matched").field_path(".cleanupPolicy.deleteSource"))]
#[serde(rename_all = "camelCase")]
pub struct VMMigrationSpec {
    /// Name of the source VirtualMachine object (its name on the source hypervisor).
    #[schemars(length(min = 1, max = 253))]
    pub source_name: String,

    /// Namespace of the source VirtualMachine. Defaults to the VMMigration's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub source_namespace: Option<String>,

    /// The Provider (hypervisor) the VM is migrated to.
    pub target_provider_ref: ObjectRef,

    /// Name of the new VM on the target provider (also the name of the VirtualMachine object created for it).
    #[schemars(length(min = 1, max = 63))]
    pub target_name: String,

    /// Where the target puts the disks: a vSphere datastore, a Proxmox storage (e.g. `local-lvm`) or a
    /// libvirt storage pool (default `default`). Defaults to the target provider's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub target_storage_hint: Option<String>,

    /// Network interfaces of the target VM, in order: each names a vSphere network or a
    /// libvirt/Proxmox bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub target_network_hints: Vec<NetworkHint>,

    /// Disk format to create on the target. Defaults to the target's native format
    /// (vSphere: vmdk, Proxmox and libvirt: qcow2). The target must support the format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_disk_format: Option<DiskFormat>,

    /// CPU and memory of the target VM. Defaults to the source VM's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_resources: Option<TargetResources>,

    /// Intermediate storage the disks are staged in.
    pub storage: StorageSpec,

    /// What is removed after the migration.
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,

    /// Whether the migration may stop the source VM for the final copy, and when the target VM is
    /// started. By default a running source keeps running (its disks are copied from a snapshot)
    /// and the target VM is left stopped, so two copies of one VM never run at once.
    #[serde(default, skip_serializing_if = "Cutover::is_default")]
    pub cutover: Cutover,

    /// How failed attempts are retried.
    #[serde(default)]
    pub retry_policy: RetryPolicy,
}

/// One network interface of the target VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.network) != has(self.bridge)").message("set exactly one of network (vSphere) or bridge (libvirt/Proxmox)"))]
#[serde(rename_all = "camelCase")]
pub struct NetworkHint {
    /// Interface name, e.g. `eth0`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// vSphere network (port group) name, e.g. `VM Network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub network: Option<String>,
    /// Host bridge for libvirt (`virbr0`) or Proxmox (`vmbr0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub bridge: Option<String>,
}

// Disk image format. (No doc comment: the CRD schema inlines the enum, and its description would
// replace the description of every field of this type.)
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// QEMU copy-on-write v2: space-efficient, native to libvirt and Proxmox.
    Qcow2,
    /// VMware disk (streamOptimized when staged), native to vSphere.
    Vmdk,
    /// Raw image: fastest, no metadata.
    Raw,
}

impl DiskFormat {
    /// The name qemu-img and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Raw => "raw",
        }
    }

    /// All formats, for messages.
    pub const ALL: [DiskFormat; 3] = [DiskFormat::Qcow2, DiskFormat::Vmdk, DiskFormat::Raw];
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DiskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DiskFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown disk format {s:?} (allowed: qcow2, vmdk, raw)"))
    }
}

/// CPU and memory overrides for the target VM.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetResources {
    /// Number of virtual CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 768))]
    pub cpu: Option<u32>,
    /// Memory as a Kubernetes quantity, e.g. `8Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// Kind of intermediate storage.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    /// AWS S3 or an S3-compatible server (MinIO, Ceph RGW, Garage...).
    S3,
    /// An HTTP(S) server accepting PUT, GET and DELETE (e.g. WebDAV).
    Http,
    /// An NFSv3 export, reached by the runner over TCP itself (nothing is mounted into its pod).
    Nfs,
}

impl StorageType {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageType::S3 => "s3",
            StorageType::Http => "http",
            StorageType::Nfs => "nfs",
        }
    }
}

/// Intermediate storage. `s3` needs `bucket`; `http` needs an http(s) URL in `endpoint`;
/// `nfs` needs the server in `endpoint` and an absolute export `path`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("self.type != 's3' || (has(self.bucket) && self.bucket != '')").message("storage.bucket is required when storage.type is s3").field_path(".bucket"))]
#[x_kube(validation = Rule::new("self.type != 'http' || (has(self.endpoint) && (self.endpoint.startsWith('http://') || self.endpoint.startsWith('https://')))").message("storage.endpoint must be an http:// or https:// URL when storage.type is http").field_path(".endpoint"))]
#[x_kube(validation = Rule::new("self.type != 'nfs' || (has(self.path) && self.path.startsWith('/'))").message("storage.path must be an absolute path when storage.type is nfs").field_path(".path"))]
#[x_kube(validation = Rule::new("self.type != 'nfs' || (has(self.endpoint) && self.endpoint != '')").message("storage.endpoint (the NFS server) is required when storage.type is nfs").field_path(".endpoint"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// `s3`, `http` or `nfs`.
    #[serde(rename = "type")]
    pub type_: StorageType,
    /// S3 bucket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 63))]
    pub bucket: Option<String>,
    /// s3: the endpoint host[:port] or URL (defaults to AWS for the region; an `endpoint` key in the
    /// credentials Secret, with scheme, takes precedence). http: the base URL objects are put under.
    /// nfs: the NFS server, `host` (its portmapper tells the MOUNT and NFS ports) or `host:port`
    /// (MOUNT and NFS both on that port, as userspace servers serve them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: Option<String>,
    /// S3 region, e.g. `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub region: Option<String>,
    /// nfs: the exported path on the server, e.g. `/mnt/migrations`. s3 and http: an optional key prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: Option<String>,
    /// Secret with the storage credentials, in the VMMigration's namespace. s3: `accessKey`, `secretKey`
    /// (optionally `endpoint`, `sessionToken`); http: `token`, or `username` and `password` (optionally
    /// `ca.crt`). Not needed for nfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// What is removed after the migration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupPolicy {
    /// Delete the staged disk images from the intermediate storage once the target VM is verified.
    #[serde(default = "yes")]
    pub delete_intermediate: bool,
    /// Delete the source VM's migration snapshot once the disks are exported.
    #[serde(default = "yes")]
    pub delete_snapshot: bool,
    /// Delete the source VM after the target VM was created and verified. DANGEROUS: keep false unless
    /// you are certain you no longer need the source.
    #[serde(default)]
    pub delete_source: bool,
}

fn yes() -> bool {
    true
}

impl Default for CleanupPolicy {
    fn default() -> Self {
        CleanupPolicy {
            delete_intermediate: true,
            delete_snapshot: true,
            delete_source: false,
        }
    }
}

/// Cutover: stopping the source for a final, unchanging copy and starting the target.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cutover {
    /// How a running source VM is stopped before its disks are copied. `Never` (the default): it
    /// keeps running and is copied from a snapshot. `Shutdown`: the guest is asked to shut down
    /// (ACPI, VMware Tools) and the attempt fails if it is still running after shutdownTimeout.
    /// `PowerOff`: powered off at once. A source the migration stopped stays stopped while attempts
    /// are retried and is started again when the migration fails for good.
    #[serde(default)]
    pub stop_source: StopSource,
    /// How long a guest shutdown may take (stopSource: Shutdown), as a duration such as `5m`.
    /// Defaults to 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 32),
        pattern(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
    )]
    pub shutdown_timeout: Option<String>,
    /// When the target VM is started once verified. `AfterCutover` (the default): only when the
    /// source was running and the migration stopped it. `Always`: even while the source still
    /// runs (two copies with the same MAC addresses). `Never`: the target is left stopped.
    #[serde(default)]
    pub start_target: StartTarget,
}

impl Cutover {
    /// The shutdown timeout of a guest shutdown when the spec gives none.
    pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

    fn is_default(&self) -> bool {
        self == &Cutover::default()
    }

    /// The shutdown timeout as a duration.
    pub fn shutdown_timeout(&self) -> Result<std::time::Duration, crate::DurationError> {
        match &self.shutdown_timeout {
            Some(t) => crate::parse_duration(t),
            None => Ok(Self::DEFAULT_SHUTDOWN_TIMEOUT),
        }
    }

    /// Whether the target VM is started, given whether the source was running when the migration
    /// first saw it and whether the migration stopped it.
    pub fn starts_target(&self, source_was_running: bool, stopped_by_migration: bool) -> bool {
        match self.start_target {
            StartTarget::Always => true,
            StartTarget::Never => false,
            StartTarget::AfterCutover => source_was_running && stopped_by_migration,
        }
    }
}

/// How the migration stops a running source VM (spec.cutover.stopSource).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum StopSource {
    /// The source keeps running; its disks are copied from a snapshot.
    #[default]
    Never,
    /// A guest shutdown, waited for up to shutdownTimeout.
    Shutdown,
    /// An immediate power-off.
    PowerOff,
}

impl StopSource {
    /// Whether the migration stops a running source.
    pub fn stops(self) -> bool {
        self != StopSource::Never
    }
}

/// When the target VM is started (spec.cutover.startTarget).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum StartTarget {
    /// Only when the source was running and the migration stopped it.
    #[default]
    AfterCutover,
    /// Always, even while the source still runs.
    Always,
    /// Never: the target is left stopped.
    Never,
}

/// How failed attempts are retried: the wait before attempt N+1 is backoffDuration x 2^(N-1), capped
/// at maxBackoffDuration (5m, 10m, 20m, 30m, ...).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("duration(self.backoffDuration) <= duration(self.maxBackoffDuration)").message("retryPolicy.backoffDuration must not exceed retryPolicy.maxBackoffDuration").field_path(".backoffDuration"))]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total number of attempts, the first included (1-10).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: i32,
    /// Wait before the first retry, as a duration such as `5m` or `1h30m`.
    #[serde(default = "default_backoff")]
    #[schemars(
        length(min = 1, max = 32),
        pattern(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
    )]
    pub backoff_duration: String,
    /// Upper bound of the wait between attempts.
    #[serde(default = "default_max_backoff")]
    #[schemars(
        length(min = 1, max = 32),
        pattern(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
    )]
    pub max_backoff_duration: String,
}

fn default_max_attempts() -> i32 {
    3
}
fn default_backoff() -> String {
    "5m".into()
}
fn default_max_backoff() -> String {
    "30m".into()
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            backoff_duration: default_backoff(),
            max_backoff_duration: default_max_backoff(),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2 for the first retry): backoff x 2^(next-2), capped.
    pub fn backoff_before(
        &self,
        next_attempt: i32,
    ) -> Result<std::time::Duration, crate::DurationError> {
        let base = crate::parse_duration(&self.backoff_duration)?;
        let cap = crate::parse_duration(&self.max_backoff_duration)?;
        let exponent = (next_attempt - 2).clamp(0, 30) as u32;
        Ok(base.saturating_mul(1u32 << exponent).min(cap))
    }
}

/// The guide's migration phases, in pipeline order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum Phase {
    /// Created, waiting for a runner.
    Pending,
    /// Checking source VM, target provider, storage and credentials.
    Validating,
    /// Creating the source VM snapshot.
    Snapshotting,
    /// Reading the disks from the source provider.
    Exporting,
    /// Converting the disk format (skipped when formats match).
    Converting,
    /// Uploading to intermediate storage.
    Transferring,
    /// Downloading from intermediate storage into the target provider.
    Importing,
    /// Creating the VM on the target provider.
    Creating,
    /// Checking the target VM.
    ValidatingTarget,
    /// Done: the target VM exists and was verified.
    Ready,
    /// Failed: see conditions and message.
    Failed,
}

impl Phase {
    /// The phases a runner walks through, in order.
    pub const PIPELINE: [Phase; 8] = [
        Phase::Validating,
        Phase::Snapshotting,
        Phase::Exporting,
        Phase::Converting,
        Phase::Transferring,
        Phase::Importing,
        Phase::Creating,
        Phase::ValidatingTarget,
    ];

    /// The condition a phase sets when it has run (the guide's `Validated`, `Snapshotted`, ...).
    pub fn condition_type(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Validating => "Validated",
            Phase::Snapshotting => "Snapshotted",
            Phase::Exporting => "Exported",
            Phase::Converting => "Converted",
            Phase::Transferring => "Transferring",
            Phase::Importing => "Imported",
            Phase::Creating => "Created",
            Phase::ValidatingTarget => "TargetValidated",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
        }
    }

    /// Ready or Failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Ready | Phase::Failed)
    }

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Validating => "Validating",
            Phase::Snapshotting => "Snapshotting",
            Phase::Exporting => "Exporting",
            Phase::Converting => "Converting",
            Phase::Transferring => "Transferring",
            Phase::Importing => "Importing",
            Phase::Creating => "Creating",
            Phase::ValidatingTarget => "ValidatingTarget",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a migration. The operator owns phase Pending, attempt, retries and the final
/// outcome of a Job; the runner owns the pipeline phases, progress and the per-disk entries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VMMigrationStatus {
    /// Current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Percent of the whole migration done (0-100), weighted by bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub progress: Option<i32>,
    /// Human-readable summary of the current state or of the last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the migration reached Ready or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Current attempt, starting at 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// When the next attempt starts, while waiting for a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<Time>,
    /// The error that ended the previous attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The objects the migration depends on, as they were when its first runner was launched. A
    /// later attempt or the cleanup run is refused when one of them has changed since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "namespace", "name"]))]
    pub references: Vec<PinnedReference>,
    /// The value of the `virtrigaud.io/retry` annotation the operator last acted on: a new attempt of
    /// a Failed migration, or a refusal (Event `RetryRefused`) when the migration was Ready or still
    /// running. Each value is acted on once; set a new one to ask again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_request: Option<String>,
    /// The `metadata.generation` last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, one per type; the runner sets one per pipeline phase (`Validated`, `Snapshotted`,
    /// `Exported`, `Converted`, `Transferring`, `Imported`, `Created`, `TargetValidated`), the operator
    /// sets `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// One entry per source disk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub disks: Vec<DiskStatus>,
    /// Hypervisor id of the target VM, once it is completely created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_vm_id: Option<String>,
    /// The target VM this migration creates, recorded before the hypervisor starts making it (a
    /// later attempt removes a half-made one; cleanup removes it unless the migration is Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_vm: Option<TargetVmHandle>,
    /// The source snapshot the staged disks were exported from, while it exists (resume reuses it;
    /// cleanup removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotHandle>,
    /// The source VM's power state as the first attempt found it, and whether the migration stopped
    /// it (spec.cutover): later attempts and the decision to start the target rely on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_power: Option<SourcePower>,
    /// Multipart uploads into S3 staging not yet completed: the runner of a later attempt (a new
    /// pod, its scratch gone) continues them, keeping the parts the server holds whose content it
    /// re-exports unchanged, and cleanup aborts them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["key"]))]
    pub uploads: Vec<PendingUpload>,
}

/// A multipart upload in progress (see [`VMMigrationStatus::uploads`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingUpload {
    /// Object key in the bucket.
    pub key: String,
    /// The S3 upload id.
    pub upload_id: String,
}

/// The source VM's power as the migration found and left it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourcePower {
    /// The source VM was running when the first attempt inspected it.
    pub was_running: bool,
    /// The migration stopped it (spec.cutover.stopSource) and has not started it again.
    pub stopped_by_migration: bool,
}

/// Progress and integrity record of one disk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskStatus {
    /// Disk name on the source (e.g. `vda`, `scsi0`, `disk-2000`).
    pub name: String,
    /// Format the source exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_format: Option<DiskFormat>,
    /// Virtual size of the disk in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_size_bytes: Option<i64>,
    /// Format written to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_format: Option<DiskFormat>,
    /// Bytes of the staged image moved so far in the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<i64>,
    /// Size of the staged image in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,
    /// SHA-256 (hex) of the staged image, computed while it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where the staged image is (s3://bucket/key, https://..., nfs://server/path/...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_url: Option<String>,
    /// The disk imported into the target before its VM was created (libvirt volume, Proxmox import
    /// file); a later attempt reuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_disk: Option<TargetDiskHandle>,
    /// SHA-256 (hex) of the disk's guest-visible content as exported from the stopped source,
    /// compared with the target's disk read back before deleteSource acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_sha256: Option<String>,
}

impl VMMigrationSpec {
    /// The namespace of the source VirtualMachine.
    pub fn source_namespace_or<'a>(&'a self, migration_namespace: &'a str) -> &'a str {
        self.source_namespace
            .as_deref()
            .unwrap_or(migration_namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_follows_the_guide() {
        let policy = RetryPolicy::default();
        let mins = |n| policy.backoff_before(n).unwrap() / 60;
        assert_eq!(mins(2), Duration::from_secs(5));
        assert_eq!(mins(3), Duration::from_secs(10));
        assert_eq!(mins(4), Duration::from_secs(20));
        assert_eq!(mins(5), Duration::from_secs(30));
        assert_eq!(mins(10), Duration::from_secs(30));
    }

    #[test]
    fn defaults_match_the_guide() {
        let spec: VMMigrationSpec = serde_json::from_value(serde_json::json!({
            "sourceName": "vm", "targetProviderRef": {"name": "p"}, "targetName": "t",
            "storage": {"type": "nfs", "path": "/x", "endpoint": "nfs.local"}
        }))
        .unwrap();
        assert_eq!(spec.cleanup_policy, CleanupPolicy::default());
        assert!(spec.cleanup_policy.delete_intermediate && spec.cleanup_policy.delete_snapshot);
        assert!(!spec.cleanup_policy.delete_source);
        assert_eq!(spec.retry_policy.max_attempts, 3);
        assert_eq!(spec.retry_policy.backoff_duration, "5m");
        assert_eq!(spec.retry_policy.max_backoff_duration, "30m");
    }

    #[test]
    fn disk_format_round_trips() {
        for f in DiskFormat::ALL {
            assert_eq!(f.as_str().parse::<DiskFormat>(), Ok(f));
        }
        assert!(
            "vhdx"
                .parse::<DiskFormat>()
                .unwrap_err()
                .contains("qcow2, vmdk, raw")
        );
    }
}
