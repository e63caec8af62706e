//! A file-backed hypervisor for tests (feature `test-doubles`): each VM is a directory under a root
//! holding its disk images (qcow2, raw or vmdk files) and a `vm.json` descriptor. Snapshots are
//! copies of the images under `snapshots/<label>/`. It is a real [`Source`] and [`Target`] (disk
//! bytes really move and are checked with qemu-img), counts its calls so tests can assert what a
//! resumed run skipped, and can be told to fail a method a number of times.
//!
//! No [`crd::ProviderType`] names it: tests inject it into the pipeline directly. Its handles are
//! libvirt-shaped (snapshot and VM by descriptor id, disks by file path), whatever `kind` it plays.
//! Its marks ([`super::mark`]): a target VM's `owner` in its descriptor, imported disk files named
//! `<disk>-<tag>.<format>`, snapshots named after the migration; VMs are deleted by descriptor id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use crd::{DiskFormat, ProviderType, SnapshotHandle, StopSource, TargetDiskHandle, TargetVmHandle};
use serde::{Deserialize, Serialize};

use super::{
    ExportSession, Firmware, FoundVm, ImportInput, ImportSession, LocalImage, NewVm, OsFamily,
    Source, SourceDisk, Target, VmShape, mark,
};
use crate::progress::Progress;
use crate::stream::CHUNK;
use crate::{Error, Result, disk};

/// File name of a VM's descriptor.
pub const DESCRIPTOR: &str = "vm.json";

/// The descriptor of a file-backed VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmFile {
    pub id: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    #[serde(default)]
    pub uefi: bool,
    #[serde(default)]
    pub running: bool,
    #[serde(default)]
    pub nics: usize,
    /// Disks in bus order.
    pub disks: Vec<DiskFile>,
    /// Labels of existing snapshots.
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// Bridges or networks the VM was created with.
    #[serde(default)]
    pub networks: Vec<String>,
    /// UID of the migration that created the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One disk of a file-backed VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiskFile {
    pub name: String,
    pub format: DiskFormat,
    /// File name inside the VM directory.
    pub file: String,
}

/// A hypervisor whose VMs are directories. Cheap to clone; clones share call counts.
#[derive(Clone)]
pub struct FileProvider {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    kind: ProviderType,
    calls: Mutex<BTreeMap<&'static str, usize>>,
    failures: Mutex<BTreeMap<&'static str, (usize, bool)>>,
    /// The next imported disk gets a flipped byte after it was copied (a target that damages data).
    corrupt_import: AtomicBool,
}

impl FileProvider {
    /// A provider over `root` that imports the formats of `kind` (e.g. vSphere: vmdk only).
    pub fn new(root: impl Into<PathBuf>, kind: ProviderType) -> Self {
        FileProvider {
            inner: Arc::new(Inner {
                root: root.into(),
                kind,
                calls: Mutex::default(),
                failures: Mutex::default(),
                corrupt_import: AtomicBool::new(false),
            }),
        }
    }

    /// The directory of VM `name`.
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.inner.root.join(name)
    }

    /// Writes a VM: its descriptor and the given disk images, copied into its directory.
    pub fn define_vm(&self, name: &str, vm: &VmFile, images: &[(&str, &Path)]) -> Result<()> {
        let dir = self.vm_dir(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {name}"), e))?;
        for (file, src) in images {
            std::fs::copy(src, dir.join(file))
                .map_err(|e| Error::io(format!("copying {}", src.display()), e))?;
        }
        write_descriptor(&dir, vm)
    }

    /// Reads VM `name`'s descriptor.
    pub fn read_vm(&self, name: &str) -> Result<VmFile> {
        let path = self.vm_dir(name).join(DESCRIPTOR);
        let text = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                what: "VM".into(),
                detail: format!("{name} (no {})", path.display()),
            },
            _ => Error::io(format!("reading {}", path.display()), e),
        })?;
        serde_json::from_slice(&text)
            .map_err(|e| Error::Invalid(format!("descriptor {}: {e}", path.display())))
    }

    /// Powers VM `name` on or off (someone else's action on the hypervisor).
    pub fn set_running(&self, name: &str, running: bool) -> Result<()> {
        let mut file = self.read_vm(name)?;
        file.running = running;
        write_descriptor(&self.vm_dir(name), &file)
    }

    /// Damages the next imported disk: one byte of its content flipped after the copy.
    pub fn corrupt_next_import(&self) {
        self.inner.corrupt_import.store(true, Ordering::SeqCst);
    }

    /// How many times `method` was called.
    pub fn calls(&self, method: &str) -> usize {
        self.inner
            .calls
            .lock()
            .expect("calls lock")
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    /// Makes the next `times` calls of `method` fail, transiently or terminally.
    pub fn fail(&self, method: &'static str, times: usize, transient: bool) {
        self.inner
            .failures
            .lock()
            .expect("failures lock")
            .insert(method, (times, transient));
    }

    /// Counts a call and returns the injected failure, if one is due.
    fn enter(&self, method: &'static str) -> Result<()> {
        *self
            .inner
            .calls
            .lock()
            .expect("calls lock")
            .entry(method)
            .or_default() += 1;
        let mut failures = self.inner.failures.lock().expect("failures lock");
        if let Some((left, transient)) = failures.get_mut(method)
            && *left > 0
        {
            *left -= 1;
            let detail = format!("injected failure of {method}");
            return Err(if *transient {
                Error::transient("file provider", detail)
            } else {
                Error::Invalid(detail)
            });
        }
        Ok(())
    }

    fn disk_path(&self, vm: &str, file: &str) -> PathBuf {
        self.vm_dir(vm).join(file)
    }
}

fn write_descriptor(dir: &Path, vm: &VmFile) -> Result<()> {
    let json = serde_json::to_vec_pretty(vm).expect("descriptor serializes");
    std::fs::write(dir.join(DESCRIPTOR), json)
        .map_err(|e| Error::io(format!("writing descriptor in {}", dir.display()), e))
}

/// Copies `src` to `dest` off the async runtime, counting bytes into `progress`.
async fn copy_counted(src: &Path, dest: &Path, progress: &Progress) -> Result<()> {
    let (src, dest, progress) = (src.to_path_buf(), dest.to_path_buf(), progress.clone());
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut input = std::fs::File::open(&src)
            .map_err(|e| Error::io(format!("opening {}", src.display()), e))?;
        let mut output = std::fs::File::create(&dest)
            .map_err(|e| Error::io(format!("creating {}", dest.display()), e))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
            if n == 0 {
                return Ok(());
            }
            output
                .write_all(&buf[..n])
                .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
            progress.add(n as u64);
        }
    })
    .await
    .map_err(|e| Error::io("copying", std::io::Error::other(e)))?
}

#[async_trait]
impl Source for FileProvider {
    fn kind(&self) -> ProviderType {
        self.inner.kind
    }

    async fn check(&self) -> Result<()> {
        self.check_root("check")
    }

    async fn inspect(&self, name: &str) -> Result<VmShape> {
        self.enter("inspect_vm")?;
        let vm = self.read_vm(name)?;
        let mut disks = Vec::new();
        for d in &vm.disks {
            let info = disk::inspect(&self.disk_path(name, &d.file), d.format).await?;
            disks.push(SourceDisk {
                name: d.name.clone(),
                format: d.format,
                virtual_size: info.virtual_size,
                locator: d.file.clone(),
            });
        }
        Ok(VmShape {
            id: vm.id,
            name: name.to_string(),
            cpus: vm.cpus,
            memory_bytes: vm.memory_bytes,
            firmware: if vm.uefi {
                Firmware::Uefi
            } else {
                Firmware::Bios
            },
            os: OsFamily::Other,
            running: vm.running,
            disks,
            nics: vm.nics,
        })
    }

    async fn snapshot(&self, vm: &VmShape, label: &str) -> Result<Option<SnapshotHandle>> {
        self.enter("snapshot")?;
        if !vm.running {
            return Ok(None);
        }
        let name = self.vm_name_of(&vm.id)?;
        let mut file = self.read_vm(&name)?;
        if !file.snapshots.iter().any(|s| s == label) {
            let dir = self.vm_dir(&name).join("snapshots").join(label);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            for d in &file.disks {
                std::fs::copy(self.disk_path(&name, &d.file), dir.join(&d.file))
                    .map_err(|e| Error::io(format!("snapshotting {}", d.file), e))?;
            }
            file.snapshots.push(label.to_string());
            write_descriptor(&self.vm_dir(&name), &file)?;
        }
        Ok(Some(SnapshotHandle::Libvirt {
            domain_uuid: vm.id.clone(),
            name: label.to_string(),
        }))
    }

    async fn export(
        &self,
        vm: &VmShape,
        snapshot: Option<&SnapshotHandle>,
    ) -> Result<Box<dyn ExportSession>> {
        self.enter("export")?;
        Ok(Box::new(FileExport {
            provider: self.clone(),
            vm: self.vm_name_of(&vm.id)?,
            snapshot: snapshot.map(|s| s.name().to_string()),
        }))
    }

    async fn delete_snapshot(&self, snapshot: &SnapshotHandle, owner: &str) -> Result<()> {
        self.enter("delete_snapshot")?;
        let SnapshotHandle::Libvirt { domain_uuid, name } = snapshot else {
            return Err(Error::Invalid(format!("not a file snapshot: {snapshot}")));
        };
        mark::ensure_snapshot_ours(snapshot, owner)?;
        let vm = match self.vm_name_of(domain_uuid) {
            Ok(vm) => vm,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let dir = self.vm_dir(&vm).join("snapshots").join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        }
        let mut file = self.read_vm(&vm)?;
        file.snapshots.retain(|s| s != name);
        write_descriptor(&self.vm_dir(&vm), &file)
    }

    async fn stop(&self, vm: &VmShape, how: StopSource, _timeout: Duration) -> Result<()> {
        self.enter("stop_vm")?;
        self.power_inspected(vm, false, how.stops())
    }

    async fn start(&self, vm: &VmShape) -> Result<()> {
        self.enter("start_source")?;
        self.power_inspected(vm, true, true)
    }

    async fn delete(&self, vm: &VmShape) -> Result<()> {
        self.enter("delete_vm")?;
        match self.vm_name_of(&vm.id) {
            Ok(name) if name == vm.name => self.remove_vm_dir(&name),
            Ok(name) => Err(Error::Invalid(format!(
                "VM {} is now named {name}, not the migrated {}: it is not deleted",
                vm.id, vm.name
            ))),
            Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Copies disk images (from the snapshot's copies when there is one).
struct FileExport {
    provider: FileProvider,
    /// Directory name of the VM.
    vm: String,
    snapshot: Option<String>,
}

#[async_trait]
impl ExportSession for FileExport {
    async fn export_disk(
        &mut self,
        disk: &SourceDisk,
        dir: &Path,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let p = &self.provider;
        p.enter("export_disk")?;
        let src = match &self.snapshot {
            Some(s) => p
                .vm_dir(&self.vm)
                .join("snapshots")
                .join(s)
                .join(&disk.locator),
            None => p.disk_path(&self.vm, &disk.locator),
        };
        let dest = dir.join(format!("{}.export.{}", disk.name, disk.format));
        copy_counted(&src, &dest, progress).await?;
        Ok(LocalImage {
            path: dest,
            format: disk.format,
        })
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        self.provider.enter("export_finish")
    }

    async fn abort(self: Box<Self>) {
        let _ = self.provider.enter("export_abort");
    }
}

#[async_trait]
impl Target for FileProvider {
    fn kind(&self) -> ProviderType {
        self.inner.kind
    }

    async fn check(&self) -> Result<()> {
        self.check_root("check")
    }

    fn import_formats(&self) -> &'static [DiskFormat] {
        self.inner.kind.accepted_formats()
    }

    fn reader(&self) -> &dyn Source {
        self
    }

    async fn find_vms(&self, name: &str, owner: &str) -> Result<Vec<FoundVm>> {
        self.enter("find_vms")?;
        if !self.vm_dir(name).join(DESCRIPTOR).exists() {
            return Ok(Vec::new());
        }
        let file = self.read_vm(name)?;
        Ok(vec![FoundVm {
            ours: file.owner.as_deref() == Some(owner),
            handle: TargetVmHandle::Libvirt {
                uuid: file.id,
                name: name.to_string(),
            },
        }])
    }

    async fn import(
        &self,
        vm: &NewVm,
        imported: &[Option<TargetDiskHandle>],
    ) -> Result<Box<dyn ImportSession>> {
        self.enter("import")?;
        let files = imported
            .iter()
            .map(|h| match h {
                Some(TargetDiskHandle::Libvirt { path }) => {
                    ensure_disk_ours(path, &vm.owner).map(|()| Some(PathBuf::from(path)))
                }
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(Box::new(FileImport {
            provider: self.clone(),
            vm: vm.clone(),
            files,
        }))
    }

    async fn validate(
        &self,
        vm: &NewVm,
        handle: &TargetVmHandle,
        _disks: &[Option<TargetDiskHandle>],
    ) -> Result<()> {
        self.enter("validate_vm")?;
        let file = self.read_vm(handle.name())?;
        if file.disks.len() != vm.disks.len() {
            return Err(Error::Invalid(format!(
                "VM {} has {} disks, expected {}",
                vm.name,
                file.disks.len(),
                vm.disks.len()
            )));
        }
        for (d, expected) in file.disks.iter().zip(&vm.disks) {
            let path = self.disk_path(&vm.name, &d.file);
            let info = disk::inspect(&path, d.format).await?;
            if info.virtual_size != expected.virtual_size {
                return Err(Error::Invalid(format!(
                    "disk {} of VM {} has {} bytes, expected {}",
                    d.name, vm.name, info.virtual_size, expected.virtual_size
                )));
            }
        }
        Ok(())
    }

    async fn start_vm(&self, handle: &TargetVmHandle, owner: &str) -> Result<()> {
        self.enter("start_vm")?;
        let name = handle.name();
        let mut file = self.read_vm(name)?;
        if file.id != handle.id() || file.owner.as_deref() != Some(owner) {
            return Err(Error::NotOurs(format!(
                "VM {name} is not {} or lacks the mark of migration {owner}: it is not started",
                handle.id()
            )));
        }
        file.running = true;
        write_descriptor(&self.vm_dir(name), &file)
    }

    async fn delete_vm(&self, handle: &TargetVmHandle, owner: &str) -> Result<()> {
        self.enter("delete_vm")?;
        let (id, name) = (handle.id(), handle.name());
        let dir = match self.vm_name_of(&id) {
            Ok(dir) => dir,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let file = self.read_vm(&dir)?;
        if dir != name || file.owner.as_deref() != Some(owner) {
            return Err(Error::NotOurs(format!(
                "VM {dir} ({id}) is not named {name} or lacks the mark of migration {owner}: it is \
                 not deleted"
            )));
        }
        self.remove_vm_dir(&dir)
    }

    async fn delete_disk(&self, handle: &TargetDiskHandle, owner: &str) -> Result<()> {
        self.enter("delete_disk")?;
        let TargetDiskHandle::Libvirt { path } = handle else {
            return Err(Error::Invalid(format!("not a file disk: {handle}")));
        };
        ensure_disk_ours(path, owner)?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {path}"), e))
            }
            _ => Ok(()),
        }
    }
}

/// Flips one byte of the guest content of image `path` (through qemu-io for formats with
/// metadata, so the image stays valid and only its content differs).
async fn damage(path: &Path, format: DiskFormat) -> Result<()> {
    let out = tokio::process::Command::new("qemu-io")
        .args(["-f", format.as_str(), "-c", "write -P 0x5a 4096 512"])
        .arg(path)
        .output()
        .await
        .map_err(|e| Error::io("running qemu-io", e))?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: "qemu-io".into(),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Refuses a disk file whose name does not carry `owner`'s tag.
fn ensure_disk_ours(path: &str, owner: &str) -> Result<()> {
    if !mark::carries_tag(mark::file_name(path), owner) {
        return Err(Error::NotOurs(format!(
            "disk {path} does not carry the tag of migration {owner} in its name"
        )));
    }
    Ok(())
}

/// Copies each verified image into the new VM's directory; `finish` writes its descriptor.
struct FileImport {
    provider: FileProvider,
    vm: NewVm,
    files: Vec<Option<PathBuf>>,
}

#[async_trait]
impl ImportSession for FileImport {
    async fn import_disk(
        &mut self,
        index: usize,
        input: ImportInput<'_>,
        progress: &Progress,
    ) -> Result<Option<TargetDiskHandle>> {
        self.provider.enter("import_disk")?;
        let ImportInput::File(image) = input else {
            return Err(Error::Invalid(
                "the file provider imports files only".into(),
            ));
        };
        let dir = self.provider.vm_dir(&self.vm.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let name = mark::tagged(&self.vm.disks[index].name, &self.vm.owner);
        let dest = dir.join(format!("{name}.{}", image.format));
        copy_counted(&image.path, &dest, progress).await?;
        if self
            .provider
            .inner
            .corrupt_import
            .swap(false, Ordering::SeqCst)
        {
            damage(&dest, image.format).await?;
        }
        self.files[index] = Some(dest.clone());
        Ok(Some(TargetDiskHandle::Libvirt {
            path: dest.to_string_lossy().into_owned(),
        }))
    }

    async fn finish(self: Box<Self>) -> Result<TargetVmHandle> {
        self.provider.enter("create_vm")?;
        let vm = &self.vm;
        let dir = self.provider.vm_dir(&vm.name);
        if dir.join(DESCRIPTOR).exists() {
            return Err(Error::Invalid(format!("VM {} already exists", vm.name)));
        }
        let mut disks = Vec::new();
        for (i, (d, file)) in vm.disks.iter().zip(&self.files).enumerate() {
            let path = file
                .as_ref()
                .filter(|p| p.parent() == Some(dir.as_path()) && p.exists());
            let path = path.ok_or_else(|| Error::NotFound {
                what: "imported disk".into(),
                detail: format!("{} of VM {}", d.name, vm.name),
            })?;
            disks.push(DiskFile {
                name: format!("disk{i}"),
                format: d.format,
                file: path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            });
        }
        let id = format!("file-{}", vm.name);
        let file = VmFile {
            id: id.clone(),
            cpus: vm.cpus,
            memory_bytes: vm.memory_bytes,
            uefi: vm.firmware == Firmware::Uefi,
            running: false,
            nics: vm.networks.len(),
            disks,
            snapshots: Vec::new(),
            networks: vm
                .networks
                .iter()
                .filter_map(|n| n.bridge.clone().or_else(|| n.network.clone()))
                .collect(),
            owner: Some(vm.owner.clone()),
        };
        write_descriptor(&dir, &file)?;
        Ok(TargetVmHandle::Libvirt {
            uuid: id,
            name: vm.name.clone(),
        })
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.provider.enter("import_abort")
    }
}

impl FileProvider {
    /// Sets the inspected VM's power (when `change`), refusing one that is no longer it.
    fn power_inspected(&self, vm: &VmShape, running: bool, change: bool) -> Result<()> {
        let name = self.vm_name_of(&vm.id)?;
        if name != vm.name {
            return Err(Error::Invalid(format!(
                "VM {} is now named {name}, not the migrated {}",
                vm.id, vm.name
            )));
        }
        if change {
            self.set_running(&name, running)?;
        }
        Ok(())
    }

    fn check_root(&self, method: &'static str) -> Result<()> {
        self.enter(method)?;
        if !self.inner.root.is_dir() {
            return Err(Error::NotFound {
                what: "file provider root".into(),
                detail: self.inner.root.display().to_string(),
            });
        }
        Ok(())
    }

    fn remove_vm_dir(&self, name: &str) -> Result<()> {
        let dir = self.vm_dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        }
        Ok(())
    }

    /// The directory name of the VM with descriptor id `id` (`file-<name>` or anything the test
    /// wrote).
    fn vm_name_of(&self, id: &str) -> Result<String> {
        let entries = std::fs::read_dir(&self.inner.root)
            .map_err(|e| Error::io(format!("listing {}", self.inner.root.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(file) = self.read_vm(&name)
                && file.id == id
            {
                return Ok(name);
            }
        }
        Err(Error::NotFound {
            what: "VM".into(),
            detail: format!("id {id}"),
        })
    }
}
