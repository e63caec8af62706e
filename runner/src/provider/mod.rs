//! Hypervisors, behind one trait. The pipeline calls these in phase order; each implementation
//! (libvirt, vSphere, Proxmox, and a file-backed one for tests) lives in its own module, and
//! [`connect`] picks one from the plan.

pub mod file;
pub mod libvirt;
pub mod vsphere;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use crd::plan::ProviderPlan;
use crd::{DiskFormat, NetworkHint, ProviderType};

use crate::credentials::Credentials;
use crate::progress::Progress;
use crate::{Error, Result};

/// Which end of the migration a provider is; names the credential scope (`source.*`, `target.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl Side {
    /// The credential file prefix of this side.
    pub fn scope(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// Builds the provider the plan names, with the credentials of `side`. Types this build has no
/// implementation for are refused with a plain message.
pub fn connect(
    side: Side,
    plan: &ProviderPlan,
    credentials: &Credentials,
) -> Result<Box<dyn Provider>> {
    match plan.type_ {
        ProviderType::Libvirt => Ok(Box::new(libvirt::LibvirtProvider::new(
            plan,
            credentials,
            side.scope(),
        )?)),
        ProviderType::Vsphere | ProviderType::Proxmox => Err(Error::Invalid(format!(
            "provider type {} is not supported by this runner build",
            plan.type_
        ))),
    }
}

/// Firmware of a VM, where the source says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

/// One disk of the source VM, in bus order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceDisk {
    /// Name on the source: `vda`, `scsi0`, `disk-2000`... Also names the staged object.
    pub name: String,
    /// Format of the source image.
    pub format: DiskFormat,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Provider-specific locator (volume path, datastore path, volid).
    pub locator: String,
}

/// What the source VM looks like: enough to define an equivalent VM on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmShape {
    /// Hypervisor id (UUID, moref, VMID).
    pub id: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub firmware: Firmware,
    /// Whether the VM was running when inspected (the target is started only if so).
    pub running: bool,
    pub disks: Vec<SourceDisk>,
    /// Number of network interfaces.
    pub nics: usize,
}

/// A snapshot taken for the migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Provider-specific snapshot id/name.
    pub id: String,
}

/// A disk image in the runner's scratch space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalImage {
    pub path: PathBuf,
    pub format: DiskFormat,
}

/// One disk to import into the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportDisk<'a> {
    /// Name of the VM the disk is for.
    pub vm_name: &'a str,
    /// Position of the disk (0 = boot disk).
    pub index: usize,
    /// Source disk name (for naming the target volume).
    pub disk_name: &'a str,
    /// The verified image to import.
    pub image: &'a LocalImage,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Pool, datastore or storage to put it in (target default when None).
    pub storage_hint: Option<&'a str>,
}

/// A disk that now exists on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedDisk {
    /// Target-side id: volume path, `[datastore] path.vmdk`, `local-lvm:vm-101-disk-0`.
    pub id: String,
    pub format: DiskFormat,
    pub virtual_size: u64,
}

/// The VM to create on the target.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateVm<'a> {
    pub name: &'a str,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub firmware: Firmware,
    pub disks: &'a [ImportedDisk],
    pub networks: &'a [NetworkHint],
    /// Start the VM once created (only when the source was running).
    pub start: bool,
}

/// A created target VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedVm {
    /// Hypervisor id of the new VM.
    pub id: String,
}

/// A hypervisor as a migration source and target.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Which hypervisor this is.
    fn kind(&self) -> ProviderType;

    /// Connects and authenticates (Validating). Errors name the endpoint, never the credentials.
    async fn check(&self) -> Result<()>;

    /// Finds a VM by name and describes it. `NotFound` when absent.
    async fn inspect_vm(&self, name: &str) -> Result<VmShape>;

    /// Whether a VM of this name exists (target-name check).
    async fn vm_exists(&self, name: &str) -> Result<bool>;

    /// Makes the disks stop changing for export. `None` when no snapshot is needed (VM stopped).
    /// `label` is the same for every attempt of a migration: when a snapshot with this label already
    /// exists (an earlier attempt made it), return it unchanged, so resumed exports stay consistent
    /// with the disks staged before.
    async fn snapshot(&self, vm: &VmShape, label: &str) -> Result<Option<Snapshot>>;

    /// Writes one disk's content into `dir`, streaming, and returns the image written.
    async fn export_disk(
        &self,
        vm: &VmShape,
        disk: &SourceDisk,
        snapshot: Option<&Snapshot>,
        dir: &Path,
        progress: &Progress,
    ) -> Result<LocalImage>;

    /// Removes a migration snapshot, leaving the VM exactly as before it.
    async fn delete_snapshot(&self, vm: &VmShape, snapshot: &Snapshot) -> Result<()>;

    /// The formats this provider imports; the first is its native one.
    fn import_formats(&self) -> &'static [DiskFormat] {
        self.kind().accepted_formats()
    }

    /// Imports one verified disk image.
    async fn import_disk(&self, disk: &ImportDisk<'_>, progress: &Progress)
    -> Result<ImportedDisk>;

    /// Creates (and, if asked, starts) the target VM from imported disks.
    async fn create_vm(&self, vm: &CreateVm<'_>) -> Result<CreatedVm>;

    /// Whether [`Provider::validate_vm`] reads disk content back. When true, the pipeline computes
    /// the guest-visible SHA-256 of every disk it exports to compare.
    fn reads_back(&self) -> bool {
        false
    }

    /// Checks the created VM: exists, disks attached with the expected capacity. Returns the hex
    /// SHA-256 of each disk's guest-visible content when the provider can read it back.
    async fn validate_vm(&self, vm: &CreateVm<'_>) -> Result<Vec<Option<String>>>;

    /// Deletes a VM and its disks (deleteSource after validation, or a partial target on cleanup).
    async fn delete_vm(&self, name: &str) -> Result<()>;

    /// Deletes an imported disk that no VM uses (cleanup of a failed attempt).
    async fn delete_disk(&self, disk: &ImportedDisk) -> Result<()>;
}
