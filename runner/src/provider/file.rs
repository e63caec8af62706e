//! A file-backed hypervisor for tests: each VM is a directory under a root holding its disk images
//! (qcow2, raw or vmdk files) and a `vm.json` descriptor. Snapshots are copies of the images under
//! `snapshots/<label>/`. It is a real [`Provider`] (disk bytes really move and are checked with
//! qemu-img), counts its calls so tests can assert what a resumed run skipped, and can be told to
//! fail a method a number of times.
//!
//! No [`crd::ProviderType`] names it: tests inject it into the pipeline directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use crd::{DiskFormat, ProviderType};
use serde::{Deserialize, Serialize};

use super::{
    CreateVm, CreatedVm, Firmware, ImportDisk, ImportedDisk, LocalImage, Provider, Snapshot,
    SourceDisk, VmShape,
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
impl Provider for FileProvider {
    fn kind(&self) -> ProviderType {
        self.inner.kind
    }

    async fn check(&self) -> Result<()> {
        self.enter("check")?;
        if !self.inner.root.is_dir() {
            return Err(Error::NotFound {
                what: "file provider root".into(),
                detail: self.inner.root.display().to_string(),
            });
        }
        Ok(())
    }

    async fn inspect_vm(&self, name: &str) -> Result<VmShape> {
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
            cpus: vm.cpus,
            memory_bytes: vm.memory_bytes,
            firmware: if vm.uefi {
                Firmware::Uefi
            } else {
                Firmware::Bios
            },
            running: vm.running,
            disks,
            nics: vm.nics,
        })
    }

    async fn vm_exists(&self, name: &str) -> Result<bool> {
        self.enter("vm_exists")?;
        Ok(self.vm_dir(name).join(DESCRIPTOR).exists())
    }

    async fn snapshot(&self, vm: &VmShape, label: &str) -> Result<Option<Snapshot>> {
        self.enter("snapshot")?;
        if !vm.running {
            return Ok(None);
        }
        let name = self.vm_name_of(vm)?;
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
        Ok(Some(Snapshot {
            id: label.to_string(),
        }))
    }

    async fn export_disk(
        &self,
        vm: &VmShape,
        disk: &SourceDisk,
        snapshot: Option<&Snapshot>,
        dir: &Path,
        progress: &Progress,
    ) -> Result<LocalImage> {
        self.enter("export_disk")?;
        let name = self.vm_name_of(vm)?;
        let src = match snapshot {
            Some(s) => self
                .vm_dir(&name)
                .join("snapshots")
                .join(&s.id)
                .join(&disk.locator),
            None => self.disk_path(&name, &disk.locator),
        };
        let dest = dir.join(format!("{}.export.{}", disk.name, disk.format));
        copy_counted(&src, &dest, progress).await?;
        Ok(LocalImage {
            path: dest,
            format: disk.format,
        })
    }

    async fn delete_snapshot(&self, vm: &VmShape, snapshot: &Snapshot) -> Result<()> {
        self.enter("delete_snapshot")?;
        let name = self.vm_name_of(vm)?;
        let dir = self.vm_dir(&name).join("snapshots").join(&snapshot.id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        }
        let mut file = self.read_vm(&name)?;
        file.snapshots.retain(|s| *s != snapshot.id);
        write_descriptor(&self.vm_dir(&name), &file)
    }

    fn import_formats(&self) -> &'static [DiskFormat] {
        self.inner.kind.accepted_formats()
    }

    async fn import_disk(
        &self,
        disk: &ImportDisk<'_>,
        progress: &Progress,
    ) -> Result<ImportedDisk> {
        self.enter("import_disk")?;
        let dir = self.vm_dir(disk.vm_name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let dest = dir.join(format!("{}.{}", disk.disk_name, disk.image.format));
        copy_counted(&disk.image.path, &dest, progress).await?;
        Ok(ImportedDisk {
            id: dest.to_string_lossy().into_owned(),
            format: disk.image.format,
            virtual_size: disk.virtual_size,
        })
    }

    async fn create_vm(&self, vm: &CreateVm<'_>) -> Result<CreatedVm> {
        self.enter("create_vm")?;
        let dir = self.vm_dir(vm.name);
        if dir.join(DESCRIPTOR).exists() {
            return Err(Error::Invalid(format!("VM {} already exists", vm.name)));
        }
        let mut disks = Vec::new();
        for (i, d) in vm.disks.iter().enumerate() {
            let path = PathBuf::from(&d.id);
            if path.parent() != Some(dir.as_path()) || !path.exists() {
                return Err(Error::NotFound {
                    what: "imported disk".into(),
                    detail: d.id.clone(),
                });
            }
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
            running: vm.start,
            nics: vm.networks.len(),
            disks,
            snapshots: Vec::new(),
            networks: vm
                .networks
                .iter()
                .filter_map(|n| n.bridge.clone().or_else(|| n.network.clone()))
                .collect(),
        };
        write_descriptor(&dir, &file)?;
        Ok(CreatedVm { id })
    }

    fn reads_back(&self) -> bool {
        true
    }

    async fn validate_vm(&self, vm: &CreateVm<'_>) -> Result<Vec<Option<String>>> {
        self.enter("validate_vm")?;
        let file = self.read_vm(vm.name)?;
        if file.disks.len() != vm.disks.len() {
            return Err(Error::Invalid(format!(
                "VM {} has {} disks, expected {}",
                vm.name,
                file.disks.len(),
                vm.disks.len()
            )));
        }
        let tmp = self.inner.root.join(".validate");
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io("creating validate dir", e))?;
        let mut hashes = Vec::new();
        for (d, expected) in file.disks.iter().zip(vm.disks) {
            let path = self.disk_path(vm.name, &d.file);
            let info = disk::inspect(&path, d.format).await?;
            if info.virtual_size != expected.virtual_size {
                return Err(Error::Invalid(format!(
                    "disk {} of VM {} has {} bytes, expected {}",
                    d.name, vm.name, info.virtual_size, expected.virtual_size
                )));
            }
            let image = LocalImage {
                path,
                format: d.format,
            };
            hashes.push(Some(disk::guest_sha256(&image, &tmp).await?));
        }
        Ok(hashes)
    }

    async fn delete_vm(&self, name: &str) -> Result<()> {
        self.enter("delete_vm")?;
        let dir = self.vm_dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        }
        Ok(())
    }

    async fn delete_disk(&self, disk: &ImportedDisk) -> Result<()> {
        self.enter("delete_disk")?;
        match std::fs::remove_file(&disk.id) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", disk.id), e))
            }
            _ => Ok(()),
        }
    }
}

impl FileProvider {
    /// The directory name of an inspected VM (its descriptor's id is `file-<name>` or anything the
    /// test wrote; the directory is found by id).
    fn vm_name_of(&self, vm: &VmShape) -> Result<String> {
        let entries = std::fs::read_dir(&self.inner.root)
            .map_err(|e| Error::io(format!("listing {}", self.inner.root.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(file) = self.read_vm(&name)
                && file.id == vm.id
            {
                return Ok(name);
            }
        }
        Err(Error::NotFound {
            what: "VM".into(),
            detail: format!("id {}", vm.id),
        })
    }
}
