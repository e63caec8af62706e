//! Hypervisors in the two roles of a migration.
//!
//! A [`Source`] finds and describes a VM, freezes its disks with a snapshot and opens an
//! [`ExportSession`], which writes each disk's guest content into scratch. A [`Target`] opens an
//! [`ImportSession`], which takes each verified disk and ends by making the VM. Sessions own what a
//! hypervisor needs across the disks of one VM (a vSphere NFC lease and its keep-alive, a VM that
//! `ImportVApp` creates up front, Proxmox import files attached at creation) and end in `finish` or
//! `abort`. What they leave on a hypervisor is named by a typed handle ([`crd::handles`]) that the
//! pipeline records in the status at once, so a later attempt resumes with it and cleanup removes
//! exactly it. A handle is not proof of ownership: providers reuse or delete what it names only
//! when it carries the migration's mark ([`mark`]), and delete by id, never by a name looked up
//! again. The pipeline ([`crate::phases`]) knows no hypervisor.
//!
//! Implementations: [`libvirt`], [`vsphere`] and [`proxmox`] (both roles); a file-backed double for tests behind
//! the `test-doubles` feature.

#[cfg(feature = "test-doubles")]
pub mod file;
pub mod libvirt;
pub mod mark;
pub mod proxmox;
pub mod vsphere;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use crd::plan::ProviderPlan;
use crd::{
    DiskFormat, NetworkHint, ProviderType, SnapshotHandle, StopSource, TargetDiskHandle,
    TargetVmHandle,
};

use crate::Result;
use crate::credentials::Credentials;
use crate::endpoint::Guard;
use crate::progress::Progress;
use crate::storage::PresignedObject;

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

/// The source end the plan names, with the `source.*` credentials. Nothing is contacted yet.
pub fn source(
    plan: &ProviderPlan,
    credentials: &Credentials,
    guard: Guard,
) -> Result<Box<dyn Source>> {
    match plan.type_ {
        ProviderType::Libvirt => Ok(Box::new(libvirt::LibvirtProvider::new(
            plan,
            credentials,
            Side::Source.scope(),
            guard,
        )?)),
        ProviderType::Vsphere => Ok(Box::new(vsphere::VsphereProvider::new(
            plan,
            credentials,
            Side::Source.scope(),
            guard,
        )?)),
        ProviderType::Proxmox => Ok(Box::new(proxmox::ProxmoxProvider::new(
            plan,
            credentials,
            Side::Source.scope(),
            guard,
        )?)),
    }
}

/// The target end the plan names, with the `target.*` credentials. Nothing is contacted yet.
pub fn target(
    plan: &ProviderPlan,
    credentials: &Credentials,
    guard: Guard,
) -> Result<Box<dyn Target>> {
    match plan.type_ {
        ProviderType::Libvirt => Ok(Box::new(libvirt::LibvirtProvider::new(
            plan,
            credentials,
            Side::Target.scope(),
            guard,
        )?)),
        ProviderType::Vsphere => Ok(Box::new(vsphere::VsphereProvider::new(
            plan,
            credentials,
            Side::Target.scope(),
            guard,
        )?)),
        ProviderType::Proxmox => Ok(Box::new(proxmox::ProxmoxProvider::new(
            plan,
            credentials,
            Side::Target.scope(),
            guard,
        )?)),
    }
}

/// Firmware of a VM, where the source says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

/// The guest operating system's family, where the source knows it (vSphere guest id, Proxmox
/// `ostype`); targets pick their matching guest type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OsFamily {
    Linux,
    Windows,
    #[default]
    Other,
}

/// One disk of the source VM, in bus order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceDisk {
    /// Name on the source: `vda`, `scsi0`, `disk-2000`... Also names the staged object.
    pub name: String,
    /// Format of the source image as it is read.
    pub format: DiskFormat,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Where the provider finds the disk (volume path, datastore path, volid). Only the provider
    /// that made it reads it.
    pub locator: String,
}

/// What the source VM looks like: enough to define an equivalent VM on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmShape {
    /// Hypervisor id (UUID, moref, VMID).
    pub id: String,
    /// Name on the hypervisor.
    pub name: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub firmware: Firmware,
    pub os: OsFamily,
    /// Whether the VM was running when inspected.
    pub running: bool,
    pub disks: Vec<SourceDisk>,
    /// Number of network interfaces.
    pub nics: usize,
}

/// A disk image in the runner's scratch space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalImage {
    pub path: PathBuf,
    pub format: DiskFormat,
}

/// One disk of the VM to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDisk {
    /// The source disk's name made safe for file and volume names (`vda`, `scsi0`).
    pub name: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Format of the image the target receives.
    pub format: DiskFormat,
}

/// The VM the target is asked to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewVm {
    pub name: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub firmware: Firmware,
    pub os: OsFamily,
    /// In bus order; the first is the boot disk.
    pub disks: Vec<NewDisk>,
    pub networks: Vec<NetworkHint>,
    /// Pool, datastore or storage for the disks (the target's default when None).
    pub storage_hint: Option<String>,
    /// UID of the migration: providers mark what they create with it and delete only what carries
    /// it.
    pub owner: String,
}

/// A VM the target holds under the migration's target name ([`Target::find_vms`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundVm {
    /// The VM by its hypervisor id (and the name it was found under).
    pub handle: TargetVmHandle,
    /// Whether it carries the migration's mark (libvirt `<metadata>`, vSphere extraConfig,
    /// Proxmox tag and description line; see [`mark`]).
    pub ours: bool,
}

/// Where an import session takes a disk's bytes from.
#[derive(Clone, Copy, Debug)]
pub enum ImportInput<'a> {
    /// A verified image in scratch.
    File(&'a LocalImage),
    /// A staged object the target downloads and verifies itself ([`Target::pulls`]).
    Url(&'a PresignedObject),
}

/// A hypervisor as the source of a migration.
#[async_trait]
pub trait Source: Send + Sync {
    /// Which hypervisor this is.
    fn kind(&self) -> ProviderType;

    /// Connects and authenticates (Validating). Errors name the endpoint, never the credentials.
    async fn check(&self) -> Result<()>;

    /// Finds a VM by name and describes it. `NotFound` when absent.
    async fn inspect(&self, name: &str) -> Result<VmShape>;

    /// Makes the disks stop changing for export. `None` when no snapshot is needed (VM stopped).
    /// `label` is the same for every attempt of a migration: when a snapshot with this label already
    /// exists (an earlier attempt made it), return it unchanged, so resumed exports stay consistent
    /// with the disks staged before.
    async fn snapshot(&self, vm: &VmShape, label: &str) -> Result<Option<SnapshotHandle>>;

    /// Checks that [`Source::export`] has what it needs besides the VM (Proxmox: its SSH login),
    /// so a migration that will read disks back fails in Validating, not at its end.
    async fn check_export(&self) -> Result<()> {
        Ok(())
    }

    /// Opens a session that exports the disks of `vm` as they are in `snapshot` (as they are now
    /// when `None`).
    async fn export(
        &self,
        vm: &VmShape,
        snapshot: Option<&SnapshotHandle>,
    ) -> Result<Box<dyn ExportSession>>;

    /// Stops the running VM `vm` for the final copy (spec.cutover.stopSource): a guest shutdown
    /// waited for up to `timeout` ([`crate::Error::ShutdownTimedOut`] after it), or a power-off.
    /// Refuses when the VM found by name is no longer the inspected one (`vm.id`). A VM already
    /// stopped is not an error.
    async fn stop(&self, vm: &VmShape, how: StopSource, timeout: Duration) -> Result<()>;

    /// Starts `vm` again (a source the migration stopped, once the migration failed for good).
    /// Refuses when the VM found by name is no longer the inspected one.
    async fn start(&self, vm: &VmShape) -> Result<()>;

    /// Removes a migration snapshot, leaving the VM exactly as before it, after checking it is
    /// `owner`'s: named [`mark::snapshot_label`] of `owner` (else [`crate::Error::NotOurs`], and
    /// nothing is touched). An absent snapshot (or VM) is not an error.
    async fn delete_snapshot(&self, snapshot: &SnapshotHandle, owner: &str) -> Result<()>;

    /// Deletes the source VM and its disks (cleanupPolicy.deleteSource, after the target was
    /// verified). Refuses when the VM found by name is no longer the inspected one (`vm.id`).
    async fn delete(&self, vm: &VmShape) -> Result<()>;

    /// Ends the provider's session with the hypervisor (logout), at the end of a run.
    async fn close(&self) {}
}

/// The export of one VM's disks, disk by disk, ending in [`ExportSession::finish`] or
/// [`ExportSession::abort`].
#[async_trait]
pub trait ExportSession: Send {
    /// Writes one disk's guest content into `dir`, streaming, and returns the image written: a
    /// self-contained image (no backing file) of the format the session chose.
    async fn export_disk(
        &mut self,
        disk: &SourceDisk,
        dir: &Path,
        progress: &Progress,
    ) -> Result<LocalImage>;

    /// Ends a session whose disks were all exported.
    async fn finish(self: Box<Self>) -> Result<()>;

    /// Ends a session early (an export or a later step failed); releases what it holds.
    async fn abort(self: Box<Self>);
}

/// A hypervisor as the target of a migration.
#[async_trait]
pub trait Target: Send + Sync {
    /// Which hypervisor this is.
    fn kind(&self) -> ProviderType;

    /// Connects and authenticates (Validating). Errors name the endpoint, never the credentials.
    async fn check(&self) -> Result<()>;

    /// The formats this target imports; the first is its native one.
    fn import_formats(&self) -> &'static [DiskFormat] {
        self.kind().accepted_formats()
    }

    /// Whether the target can fetch a staged object by URL itself, verifying its SHA-256, so the
    /// bytes need not pass through the runner ([`ImportInput::Url`]).
    fn pulls(&self) -> bool {
        false
    }

    /// The same hypervisor, with the target's credentials, in the source role: the pipeline reads
    /// the created VM's disks back through it (inspect, export) before deleteSource acts.
    fn reader(&self) -> &dyn Source;

    /// Every VM named `name` (target-name check), each by its id and with whether it carries the
    /// mark of migration `owner`. Empty when the name is free.
    async fn find_vms(&self, name: &str, owner: &str) -> Result<Vec<FoundVm>>;

    /// Checks, in Validating, that `vm` can be placed: the storage, networks and other names it
    /// needs exist. Errors name what is missing; the import would fail the same way much later.
    async fn preflight(&self, _vm: &NewVm) -> Result<()> {
        Ok(())
    }

    /// Opens the import of `vm`. `imported[i]` is disk `i`'s handle when an earlier attempt already
    /// imported it: the session uses it as it is once it checked the disk carries the mark of
    /// `vm.owner` ([`mark::carries_tag`]), and refuses it with [`crate::Error::NotOurs`] otherwise.
    async fn import(
        &self,
        vm: &NewVm,
        imported: &[Option<TargetDiskHandle>],
    ) -> Result<Box<dyn ImportSession>>;

    /// Checks the created (stopped) VM: exists, disks attached with the expected capacity, NICs.
    async fn validate(
        &self,
        vm: &NewVm,
        handle: &TargetVmHandle,
        disks: &[Option<TargetDiskHandle>],
    ) -> Result<()>;

    /// Starts the created VM (spec.cutover.startTarget) after checking it carries the `owner` mark,
    /// and checks that it runs.
    async fn start_vm(&self, handle: &TargetVmHandle, owner: &str) -> Result<()>;

    /// Deletes a VM this migration created, with its disks, by the id in the handle, after checking
    /// that the VM of that id still has the handle's name and carries the `owner` mark (else
    /// [`crate::Error::NotOurs`], and nothing is touched). An absent VM is not an error.
    async fn delete_vm(&self, handle: &TargetVmHandle, owner: &str) -> Result<()>;

    /// Deletes a disk imported for a VM that was never created, after checking it carries the
    /// `owner` mark ([`mark::carries_tag`]; else [`crate::Error::NotOurs`], and it is kept). An
    /// absent disk is not an error.
    async fn delete_disk(&self, handle: &TargetDiskHandle, owner: &str) -> Result<()>;

    /// Ends the provider's session with the hypervisor (logout), at the end of a run.
    async fn close(&self) {}
}

/// The import of one VM: disk by disk, then [`ImportSession::finish`] makes the VM, stopped; [`ImportSession::abort`] leaves no half-made VM.
#[async_trait]
pub trait ImportSession: Send {
    /// The VM the session already created (vSphere's ImportVApp makes it up front). The pipeline
    /// records it before any disk moves.
    fn vm(&self) -> Option<TargetVmHandle> {
        None
    }

    /// Imports disk `index` of the VM. Returns a handle when the disk exists on the target on its
    /// own (a volume, an uploaded file), so a later attempt can reuse it.
    async fn import_disk(
        &mut self,
        index: usize,
        input: ImportInput<'_>,
        progress: &Progress,
    ) -> Result<Option<TargetDiskHandle>>;

    /// Makes the VM from the imported disks, without starting it. Returns its handle.
    async fn finish(self: Box<Self>) -> Result<TargetVmHandle>;

    /// Ends the session without a VM: removes a VM the session created up front. Disks that have
    /// handles stay (a later attempt reuses them; a terminal failure deletes them).
    async fn abort(self: Box<Self>) -> Result<()>;
}
