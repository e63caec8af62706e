//! The vSphere source: the VM found by name (inside the Provider's `defaults.folder` when set), a
//! snapshot when it runs, and each disk exported one of two ways, logged per disk:
//! - over the datastore file interface (`/folder`), the fast path, as Proxmox's ESXi importer reads
//!   disks: a flat extent is the guest's bytes (streamed into a sparse raw image); a single-file
//!   sparse VMDK is taken as it is; a delta chain (snapshots, linked clones) is downloaded file by
//!   file, its descriptors rewritten to name only the local copies, and flattened with qemu-img;
//! - over an NFC lease of the snapshot (`ExportSnapshot`, `ExportVm` for a stopped VM), which yields
//!   a streamOptimized VMDK, where the file interface cannot be used: it refuses the request (no
//!   Datastore.Browse privilege, a locked file), or the disk is not plain files (RDM, vSAN/vVol).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use crd::{ProviderType, SnapshotHandle, StopSource};
use futures::StreamExt as _;
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

use super::descriptor::{self, Descriptor, MAX_DESCRIPTOR, SPARSE_MAGIC};
use super::lease::{self, Lease};
use super::provider::{VsphereProvider, firmware, os_family, vm_ref};
use super::{Datacenter, Disk, MoRef, PowerState, VmInfo, split_datastore_path};
use crate::progress::{Progress, human_bytes};
use crate::provider::{ExportSession, LocalImage, Source, SourceDisk, VmShape};
use crate::{Error, Result, disk};

const MIB: u64 = 1 << 20;

#[async_trait]
impl Source for VsphereProvider {
    fn kind(&self) -> ProviderType {
        VsphereProvider::kind(self)
    }

    async fn check(&self) -> Result<()> {
        VsphereProvider::check(self).await
    }

    async fn inspect(&self, name: &str) -> Result<VmShape> {
        let moref = self.find_source(name).await?;
        let vm = self.client().await?.vm_info(&moref).await?;
        Ok(shape(&vm))
    }

    async fn snapshot(&self, vm: &VmShape, label: &str) -> Result<Option<SnapshotHandle>> {
        let client = self.client().await?;
        let moref = vm_ref(&vm.id);
        let info = client.vm_info(&moref).await?;
        if !vm.running {
            match self.needs_nfc(&info).await? {
                None => return Ok(None),
                Some(why) => tracing::info!(
                    "{why}: taking snapshot {label} of the stopped VM so that an NFC lease can \
                     export it"
                ),
            }
        }
        let snapshot = match info.snapshot_named(label) {
            Some(s) => {
                tracing::info!("reusing snapshot {label} from an earlier attempt");
                s.snapshot.clone()
            }
            None => self.take_snapshot(&moref, label).await?,
        };
        Ok(Some(SnapshotHandle::Vsphere {
            vm: vm.id.clone(),
            snapshot: snapshot.value,
            name: label.to_string(),
        }))
    }

    async fn export(
        &self,
        vm: &VmShape,
        snapshot: Option<&SnapshotHandle>,
    ) -> Result<Box<dyn ExportSession>> {
        let client = self.client().await?;
        let moref = vm_ref(&vm.id);
        let info = client.vm_info(&moref).await?;
        let (snapshot, disks) = match snapshot {
            Some(SnapshotHandle::Vsphere { snapshot, .. }) => {
                let snap = MoRef::new("VirtualMachineSnapshot", snapshot);
                let disks = client.snapshot_info(&snap).await?.disks;
                (Some(snap), disks)
            }
            Some(other) => return Err(foreign(other.provider())),
            None => (None, info.disks.clone()),
        };
        let dc = self.datacenter_of(&moref).await?;
        Ok(Box::new(Export {
            provider: self.clone(),
            vm: info,
            snapshot,
            disks,
            dc,
            lease: None,
            exported: 0,
        }))
    }

    async fn delete_snapshot(&self, handle: &SnapshotHandle, owner: &str) -> Result<()> {
        let SnapshotHandle::Vsphere { vm, snapshot, name } = handle else {
            return Err(foreign(handle.provider()));
        };
        crate::provider::mark::ensure_snapshot_ours(handle, owner)?;
        let Some(info) = self.vm_if_present(&vm_ref(vm)).await? else {
            tracing::warn!("VM {vm} is gone; nothing to remove for snapshot {name}");
            return Ok(());
        };
        let Some(node) = info
            .all_snapshots()
            .into_iter()
            .find(|s| s.snapshot.value == *snapshot)
        else {
            tracing::info!("snapshot {name} ({snapshot}) already removed");
            return Ok(());
        };
        if node.name != *name {
            return Err(Error::NotOurs(format!(
                "snapshot {snapshot} of {vm} is now named {:?}, not {name:?}",
                node.name
            )));
        }
        let snap = node.snapshot.clone();
        self.client()
            .await?
            .remove_snapshot(&snap, false, true)
            .await?;
        tracing::info!("snapshot {name} of VM {} removed", info.name);
        Ok(())
    }

    async fn delete(&self, vm: &VmShape) -> Result<()> {
        let Some(info) = self.vm_if_present(&vm_ref(&vm.id)).await? else {
            tracing::info!(
                "VM {} ({}) does not exist; nothing to delete",
                vm.name,
                vm.id
            );
            return Ok(());
        };
        if info.name != vm.name {
            return Err(Error::Invalid(format!(
                "VM {} is now named {:?}, not the migrated {:?}: it is not deleted",
                vm.id, info.name, vm.name
            )));
        }
        self.destroy(&info).await
    }

    async fn stop(&self, vm: &VmShape, how: StopSource, timeout: Duration) -> Result<()> {
        let info = self.inspected(vm, "stopped").await?;
        if info.power_state != PowerState::PoweredOn {
            return Ok(());
        }
        let client = self.client().await?;
        match how {
            StopSource::Never => return Ok(()),
            StopSource::PowerOff => return client.power_off(&info.moref).await,
            StopSource::Shutdown => client.shutdown_guest(&info.moref).await?,
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while client.vm_info(&info.moref).await?.power_state == PowerState::PoweredOn {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::ShutdownTimedOut {
                    vm: format!("{} ({})", vm.name, vm.id),
                    timeout: crd::format_duration(timeout),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    }

    async fn start(&self, vm: &VmShape) -> Result<()> {
        let info = self.inspected(vm, "started").await?;
        if info.power_state == PowerState::PoweredOn {
            return Ok(());
        }
        self.client().await?.power_on(&info.moref).await
    }

    async fn close(&self) {
        VsphereProvider::close(self).await
    }
}

impl VsphereProvider {
    /// The inspected VM, by moref, refused when it no longer has the inspected name; `action` says
    /// what is then not done to it.
    async fn inspected(&self, vm: &VmShape, action: &str) -> Result<VmInfo> {
        let info = self.client().await?.vm_info(&vm_ref(&vm.id)).await?;
        if info.name != vm.name {
            return Err(Error::Invalid(format!(
                "VM {} is now named {:?}, not the migrated {:?}: it is not {action}",
                vm.id, info.name, vm.name
            )));
        }
        Ok(info)
    }

    /// The source VM: at `<datacenter>/vm/<defaults.folder>/<name>` when the Provider names a
    /// folder, else the one VM of that name.
    async fn find_source(&self, name: &str) -> Result<MoRef> {
        let client = self.client().await?;
        match &self.inner.defaults.folder {
            Some(folder) => {
                let dc = client.datacenter(None).await?;
                let path = format!("{}/vm/{}/{name}", dc.path, folder.trim_matches('/'));
                client.find_vm_by_path(&path).await
            }
            None => client.find_vm(name).await,
        }
    }

    /// A quiesced snapshot where the guest's tools allow it, else a crash-consistent one.
    async fn take_snapshot(&self, vm: &MoRef, label: &str) -> Result<MoRef> {
        let client = self.client().await?;
        let about = "taken by virtrigaud for a migration; removed when the migration ends";
        match client.create_snapshot(vm, label, about, false, true).await {
            Ok(s) => {
                tracing::info!("snapshot {label} taken (guest quiesced)");
                Ok(s)
            }
            Err(e) if !e.is_retryable() => {
                tracing::warn!("a quiesced snapshot failed ({e}); taking a crash-consistent one");
                client.create_snapshot(vm, label, about, false, false).await
            }
            Err(e) => Err(e),
        }
    }
}

/// How a disk's files can be read over the datastore file interface.
enum Layout {
    /// A single-file sparse VMDK without parent: taken as it is.
    Sparse,
    /// One flat extent without parent: the guest's bytes.
    Flat(descriptor::Extent),
    /// Text descriptors with a parent chain (or sparse extents): downloaded and flattened.
    Chain,
    /// Not through the file interface: why.
    Unusable(String),
}

impl VsphereProvider {
    /// Reads the top file of `d` to decide how its bytes can be fetched.
    async fn layout(&self, dc: &Datacenter, d: &Disk) -> Result<Layout> {
        let top = &d.backing.file_name;
        let (ds, path) = split_datastore_path(top)?;
        let head = match self.head(dc, ds, path).await {
            Ok(h) => h,
            Err(e) if !e.is_retryable() => {
                return Ok(Layout::Unusable(format!(
                    "the datastore file interface refuses {top} ({e})"
                )));
            }
            Err(e) => return Err(e),
        };
        if head.starts_with(SPARSE_MAGIC) {
            return Ok(match d.parents.is_empty() {
                true => Layout::Sparse,
                false => Layout::Unusable(format!("{top} is a binary sparse delta")),
            });
        }
        let desc = match Descriptor::parse(&String::from_utf8_lossy(&head)) {
            Ok(desc) => desc,
            Err(why) => return Ok(Layout::Unusable(format!("{top}: {why}"))),
        };
        if let Some(e) = desc.extents.iter().find(|e| !e.is_readable()) {
            return Ok(Layout::Unusable(format!(
                "{top} has a {} extent, which is not a plain file",
                e.kind
            )));
        }
        Ok(match (desc.single_flat(), d.parents.is_empty()) {
            (Some(extent), true) => Layout::Flat(extent.clone()),
            _ => Layout::Chain,
        })
    }

    /// The first bytes of a datastore file (a descriptor is all of it).
    async fn head(&self, dc: &Datacenter, ds: &str, path: &str) -> Result<Vec<u8>> {
        let client = self.client().await?;
        let mut body = client.ds_get(dc, ds, path, 0).await?.bytes_stream();
        let mut head = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::transient(client.system(), e))?;
            head.extend_from_slice(&chunk);
            if head.len() >= MAX_DESCRIPTOR {
                break;
            }
        }
        head.truncate(MAX_DESCRIPTOR);
        Ok(head)
    }

    /// Why a stopped VM needs a snapshot after all: a disk the file interface cannot read goes
    /// through an NFC lease, and ExportSnapshot is the export every server offers.
    async fn needs_nfc(&self, vm: &VmInfo) -> Result<Option<String>> {
        let dc = self.datacenter_of(&vm.moref).await?;
        for d in &vm.disks {
            if let Layout::Unusable(why) = self.layout(&dc, d).await? {
                return Ok(Some(why));
            }
        }
        Ok(None)
    }
}

/// The migration's view of a vSphere VM. Disks are named after their device key (`disk-2000`).
fn shape(vm: &VmInfo) -> VmShape {
    VmShape {
        id: vm.moref.value.clone(),
        name: vm.name.clone(),
        cpus: vm.num_cpu,
        memory_bytes: vm.memory_mb * MIB,
        firmware: firmware(vm.firmware),
        os: os_family(&vm.guest_id),
        running: vm.power_state == PowerState::PoweredOn,
        disks: vm
            .disks
            .iter()
            .map(|d| SourceDisk {
                name: format!("disk-{}", d.key),
                format: crd::DiskFormat::Vmdk,
                virtual_size: d.capacity_bytes,
                locator: d.key.to_string(),
            })
            .collect(),
        nics: vm.nics.len(),
    }
}

fn foreign(kind: ProviderType) -> Error {
    Error::Invalid(format!(
        "the recorded snapshot belongs to a {kind} provider, not to this vSphere provider"
    ))
}

/// Export of one VM's disks (as of its snapshot, when it has one).
struct Export {
    provider: VsphereProvider,
    vm: VmInfo,
    snapshot: Option<MoRef>,
    /// The disks as of the snapshot.
    disks: Vec<Disk>,
    dc: Datacenter,
    /// The NFC lease, opened for the first disk that needs it.
    lease: Option<Lease>,
    /// Disks exported so far (the lease's progress).
    exported: usize,
}

/// How the file interface fared for one disk.
enum Folder {
    Image(LocalImage),
    /// It cannot be used for this disk: why.
    Unusable(String),
}

#[async_trait]
impl ExportSession for Export {
    async fn export_disk(
        &mut self,
        disk: &SourceDisk,
        dir: &Path,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let d = self
            .disks
            .iter()
            .find(|d| d.key.to_string() == disk.locator)
            .cloned()
            .ok_or_else(|| {
                Error::Invalid(format!("VM {} has no disk {}", self.vm.name, disk.name))
            })?;
        let image = match self.over_folder(&d, disk, dir, progress).await? {
            Folder::Image(image) => image,
            Folder::Unusable(why) => {
                tracing::info!("{}: {why}; exporting it over an NFC lease", disk.name);
                progress.set_done(0);
                self.over_nfc(&d, disk, dir, progress).await?
            }
        };
        self.exported += 1;
        if let Some(l) = &self.lease {
            l.set_percent(lease::percent(self.exported, self.disks.len(), 0.0));
        }
        Ok(image)
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        match self.lease {
            Some(lease) => lease.complete().await,
            None => Ok(()),
        }
    }

    async fn abort(self: Box<Self>) {
        if let Some(lease) = self.lease
            && let Err(e) = lease.abort("the migration's export was cut short").await
        {
            tracing::warn!("aborting the NFC export lease: {e}");
        }
    }
}

impl Export {
    /// The disk through the datastore file interface, or why that cannot be used.
    async fn over_folder(
        &self,
        d: &Disk,
        disk: &SourceDisk,
        dir: &Path,
        progress: &Progress,
    ) -> Result<Folder> {
        let top = &d.backing.file_name;
        let (ds, path) = split_datastore_path(top)?;
        match self.provider.layout(&self.dc, d).await? {
            Layout::Sparse => {
                tracing::info!(
                    "{}: reading {top} over the datastore file interface (a single-file sparse VMDK)",
                    disk.name
                );
                let out = dir.join(format!("{}.vmdk", disk.name));
                let client = self.provider.client().await?;
                progress.set_total(client.ds_head(&self.dc, ds, path).await?);
                self.fetch(ds, path, &out, false, progress).await?;
                Ok(Folder::Image(LocalImage {
                    path: out,
                    format: crd::DiskFormat::Vmdk,
                }))
            }
            Layout::Flat(extent) => self.flat(disk, path, ds, &extent, dir, progress).await,
            Layout::Chain => self.chain(d, disk, dir, progress).await,
            Layout::Unusable(why) => Ok(Folder::Unusable(why)),
        }
    }

    /// A flat extent: the guest's bytes, streamed into a sparse raw image.
    async fn flat(
        &self,
        disk: &SourceDisk,
        descriptor_path: &str,
        ds: &str,
        extent: &descriptor::Extent,
        dir: &Path,
        progress: &Progress,
    ) -> Result<Folder> {
        let file = extent.file.as_deref().unwrap_or_default();
        let extent_path = descriptor::sibling(descriptor_path, file)?;
        tracing::info!(
            "{}: reading [{ds}] {extent_path} over the datastore file interface (a flat extent, \
             no parent: the guest's bytes)",
            disk.name
        );
        progress.set_total(extent.sectors * 512);
        let out = dir.join(format!("{}.raw", disk.name));
        match self.fetch(ds, &extent_path, &out, true, progress).await {
            Ok(()) => {}
            Err(e) if !e.is_retryable() => {
                let _ = tokio::fs::remove_file(&out).await;
                return Ok(Folder::Unusable(format!(
                    "the datastore file interface refuses [{ds}] {extent_path} ({e})"
                )));
            }
            Err(e) => return Err(e),
        }
        let len = tokio::fs::metadata(&out)
            .await
            .map_err(|e| Error::io(format!("reading {}", out.display()), e))?
            .len();
        if len != extent.sectors * 512 {
            return Err(Error::Invalid(format!(
                "[{ds}] {extent_path} has {len} bytes, its descriptor says {}",
                extent.sectors * 512
            )));
        }
        Ok(Folder::Image(LocalImage {
            path: out,
            format: crd::DiskFormat::Raw,
        }))
    }

    /// A delta chain (snapshot deltas, linked clones): every descriptor and extent downloaded into
    /// a private directory, descriptors rewritten to name the local copies, then flattened.
    async fn chain(
        &self,
        d: &Disk,
        disk: &SourceDisk,
        dir: &Path,
        progress: &Progress,
    ) -> Result<Folder> {
        let chain = d.chain();
        tracing::info!(
            "{}: reading a chain of {} VMDKs over the datastore file interface ({}), flattening it",
            disk.name,
            chain.len(),
            chain.join(" <- ")
        );
        let local = dir.join(format!("{}.chain", disk.name));
        tokio::fs::create_dir_all(&local)
            .await
            .map_err(|e| Error::io(format!("creating {}", local.display()), e))?;
        let result = self.fetch_chain(&chain, &local, progress).await;
        let flattened = match result {
            Ok(None) => {
                let top = LocalImage {
                    path: local.join("f0.vmdk"),
                    format: crd::DiskFormat::Vmdk,
                };
                let dest = dir.join(format!("{}.raw", disk.name));
                disk::flatten(
                    &top,
                    &local,
                    crd::DiskFormat::Raw,
                    &dest,
                    &Progress::default(),
                )
                .await
                .map(Folder::Image)
            }
            Ok(Some(why)) => Ok(Folder::Unusable(why)),
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_dir_all(&local).await;
        flattened
    }

    /// Downloads the chain `files` (top first) into `local` as `f<i>.vmdk` + `f<i>-e<j>`.
    /// `Some(why)` when a part of it cannot be read that way.
    async fn fetch_chain(
        &self,
        files: &[&str],
        local: &Path,
        progress: &Progress,
    ) -> Result<Option<String>> {
        let mut total = 0;
        for (i, name) in files.iter().enumerate() {
            let (ds, path) = split_datastore_path(name)?;
            let head = self.provider.head(&self.dc, ds, path).await?;
            let desc = match Descriptor::parse(&String::from_utf8_lossy(&head)) {
                Ok(desc) if desc.extents.iter().all(|e| e.is_readable()) => desc,
                Ok(_) => return Ok(Some(format!("{name} has extents that are not plain files"))),
                Err(why) => return Ok(Some(format!("{name}: {why}"))),
            };
            if desc.parent.is_some() != (i + 1 < files.len()) {
                return Ok(Some(format!(
                    "{name}'s parent hint does not match the disk's backing chain"
                )));
            }
            let mut names = Vec::new();
            for (j, extent) in desc.extents.iter().enumerate() {
                let local_name = format!("f{i}-e{j}");
                if let Some(file) = &extent.file {
                    let extent_path = descriptor::sibling(path, file)?;
                    total += self
                        .provider
                        .client()
                        .await?
                        .ds_head(&self.dc, ds, &extent_path)
                        .await?;
                    progress.set_total(total);
                    self.fetch(ds, &extent_path, &local.join(&local_name), false, progress)
                        .await?;
                }
                names.push(local_name);
            }
            let parent = (i + 1 < files.len()).then(|| format!("f{}.vmdk", i + 1));
            let text = desc.localized(&names, parent.as_deref());
            tokio::fs::write(local.join(format!("f{i}.vmdk")), text)
                .await
                .map_err(|e| Error::io(format!("writing into {}", local.display()), e))?;
        }
        Ok(None)
    }

    /// Streams a datastore file into `out` (zero chunks become holes when `sparse`).
    async fn fetch(
        &self,
        ds: &str,
        path: &str,
        out: &Path,
        sparse: bool,
        progress: &Progress,
    ) -> Result<()> {
        let client = self.provider.client().await?;
        let body = client.ds_get(&self.dc, ds, path, 0).await?.bytes_stream();
        write_stream(body, out, sparse, progress, client.system()).await
    }

    /// The disk through an NFC lease of the snapshot (or of the stopped VM).
    async fn over_nfc(
        &mut self,
        d: &Disk,
        disk: &SourceDisk,
        dir: &Path,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let client = self.provider.client().await?.clone();
        if self.lease.is_none() {
            let moref = match &self.snapshot {
                Some(s) => client.export_snapshot(s).await?,
                None => client.export_vm(&self.vm.moref).await?,
            };
            self.lease = Some(Lease::open(&client, moref).await?);
        }
        let lease = self.lease.as_ref().expect("opened above");
        let url = device_url(&lease.info, d, &self.disks).ok_or_else(|| {
            Error::Invalid(format!(
                "the NFC lease of VM {} offers no URL for {}",
                self.vm.name, disk.name
            ))
        })?;
        tracing::info!(
            "{}: reading {} over the NFC lease",
            disk.name,
            url.target_id
        );
        progress.set_total(url.file_size.unwrap_or(d.capacity_bytes));
        let out = dir.join(format!("{}.vmdk", disk.name));
        let body = client.nfc_get(&url.url).await?.bytes_stream();
        write_stream(body, &out, false, progress, client.system()).await?;
        Ok(LocalImage {
            path: out,
            format: crd::DiskFormat::Vmdk,
        })
    }
}

/// The device URL of disk `d`: by file name where the server says it (`targetId`), else by the
/// disk's position among the VM's disks in device order.
fn device_url<'a>(
    info: &'a super::LeaseInfo,
    d: &Disk,
    disks: &[Disk],
) -> Option<&'a super::DeviceUrl> {
    let urls: Vec<&super::DeviceUrl> = info.device_urls.iter().filter(|u| u.disk).collect();
    let file = d.backing.file_name.rsplit('/').next().unwrap_or_default();
    if let Some(u) = urls.iter().find(|u| u.target_id == file) {
        return Some(u);
    }
    let mut keys: Vec<i32> = disks.iter().map(|d| d.key).collect();
    keys.sort_unstable();
    let index = keys.iter().position(|k| *k == d.key)?;
    urls.get(index).copied()
}

/// Writes a byte stream into `out`, counting into `progress`; all-zero chunks are skipped over
/// (holes) when `sparse`.
async fn write_stream<S, E>(
    mut body: S,
    out: &Path,
    sparse: bool,
    progress: &Progress,
    system: &str,
) -> Result<()>
where
    S: futures::Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let io = |e: std::io::Error| Error::io(format!("writing {}", out.display()), e);
    let mut file = tokio::fs::File::create(out).await.map_err(io)?;
    let (mut written, mut holes) = (0u64, 0u64);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::transient(system, e))?;
        if sparse && chunk.iter().all(|b| *b == 0) {
            file.seek(std::io::SeekFrom::Current(chunk.len() as i64))
                .await
                .map_err(io)?;
            holes += chunk.len() as u64;
        } else {
            file.write_all(&chunk).await.map_err(io)?;
        }
        written += chunk.len() as u64;
        progress.add(chunk.len() as u64);
    }
    file.set_len(written).await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    if sparse {
        tracing::debug!(
            "{}: {} data, {} holes",
            out.display(),
            human_bytes(written - holes),
            human_bytes(holes)
        );
    }
    Ok(())
}
