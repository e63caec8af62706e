//! Reading one disk of a VM over SSH, the way its storage allows (see the module docs of
//! [`super`] for the table): [`ExportPlan::choose`] picks it, [`Export`] runs it and writes a raw
//! image into scratch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use async_trait::async_trait;
use crd::DiskFormat;
use serde_json::Value;

use super::config::{DirImage, VmConfig, split_volid};
use super::provider::ProxmoxProvider;
use super::receive::{self, Failure};
use super::ssh::Ssh;
use crate::progress::{Progress, human_bytes};
use crate::provider::{ExportSession, LocalImage, SourceDisk};
use crate::{Error, Result, disk};

/// Storage types by how PVE exports their volumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageKind {
    /// `dir`, `nfs`, `cifs`: files, exported by `Plugin.pm`'s `volume_export`.
    Dir,
    /// `lvmthin`: thin LVs, `raw+size` only; VM snapshots are thin snapshot LVs.
    LvmThin,
    /// `lvm`: thick LVs, `raw+size` only, no snapshots.
    Lvm,
    /// Any other type (ZFS, Ceph RBD, ...): not read by this provider.
    Other(String),
}

impl StorageKind {
    /// The kind of a PVE storage `type`.
    pub fn of(kind: &str) -> StorageKind {
        match kind {
            "dir" | "nfs" | "cifs" => StorageKind::Dir,
            "lvmthin" => StorageKind::LvmThin,
            "lvm" => StorageKind::Lvm,
            other => StorageKind::Other(other.to_string()),
        }
    }
}

/// How one disk is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportPlan {
    /// `pvesm export <volid> raw+size -`: the guest's bytes as they are now (a qcow2 file read
    /// through its backing file, so a linked clone comes out flattened).
    Raw,
    /// `pvesm export <volid> qcow2+size - --with-snapshots 1`, and the same of a linked clone's
    /// base into the relative path the clone's backing file names, then `qemu-img convert -l
    /// snapshot.name=<snapshot>`.
    Qcow2Snapshot(DirImage),
    /// The thin snapshot LV `snap_<volname>_<snapshot>`: `lvchange -ay -K`, `lvs` for its device
    /// path and size, `cat` of the device, `lvchange -an`.
    ThinSnapshot { volname: String },
}

impl ExportPlan {
    /// The way to read `volid` (a disk `key` of the VM) on a storage of `kind`, as it is now or
    /// (`snapshot`) as of a VM snapshot; why it cannot be read otherwise.
    pub fn choose(
        kind: &StorageKind,
        key: &str,
        volid: &str,
        snapshot: bool,
    ) -> Result<ExportPlan> {
        let (storage, volname) = split_volid(volid).ok_or_else(|| {
            Error::Invalid(format!(
                "disk {key} is {volid:?}, not a volume of a Proxmox VE storage (a passed-through \
                 device cannot be exported)"
            ))
        })?;
        match kind {
            StorageKind::Dir => {
                let image = DirImage::parse(volname).ok_or_else(|| {
                    Error::Invalid(format!(
                        "disk {key} ({volid}) is not a VM image of storage {storage}"
                    ))
                })?;
                match (snapshot, image.format()) {
                    (false, _) => Ok(ExportPlan::Raw),
                    (true, "qcow2") => Ok(ExportPlan::Qcow2Snapshot(image)),
                    (true, format) => Err(Error::Invalid(format!(
                        "disk {key} ({volid}) is a {format} file on directory storage {storage}, \
                         which Proxmox VE cannot snapshot: stop the VM to migrate it"
                    ))),
                }
            }
            StorageKind::LvmThin if snapshot => Ok(ExportPlan::ThinSnapshot {
                volname: volname.to_string(),
            }),
            StorageKind::LvmThin => Ok(ExportPlan::Raw),
            StorageKind::Lvm if snapshot => Err(Error::Invalid(format!(
                "disk {key} ({volid}) is on LVM storage {storage}, which has no snapshots: stop \
                 the VM to migrate it"
            ))),
            StorageKind::Lvm => Ok(ExportPlan::Raw),
            StorageKind::Other(t) => Err(Error::Invalid(format!(
                "disk {key} ({volid}) is on storage {storage} of type {t}; this runner exports \
                 disks of dir, nfs, cifs, lvm and lvmthin storages"
            ))),
        }
    }

    /// One line for the log: which way the disk goes.
    pub fn describe(&self, volid: &str, snapshot: Option<&str>) -> String {
        match (self, snapshot) {
            (ExportPlan::Raw, _) => format!("pvesm export {volid} raw+size (current state)"),
            (ExportPlan::Qcow2Snapshot(image), Some(s)) => format!(
                "pvesm export {volid} qcow2+size --with-snapshots 1{}, then qemu-img convert of snapshot {s}",
                image
                    .base_volname()
                    .map(|b| format!(" (and its base {b})"))
                    .unwrap_or_default()
            ),
            (ExportPlan::ThinSnapshot { volname }, Some(s)) => {
                format!("thin snapshot LV snap_{volname}_{s} read with cat")
            }
            (_, None) => format!("{volid}: a snapshot plan without a snapshot"),
        }
    }
}

/// The export of one VM's disks, as of `snapshot` (as they are now without one).
pub struct Export {
    pub(super) provider: ProxmoxProvider,
    pub(super) node: String,
    pub(super) vm_name: String,
    pub(super) snapshot: Option<String>,
    /// The config the disks are read from (the snapshot's, with one).
    pub(super) config: VmConfig,
    /// Storage types by ID, as looked up.
    pub(super) kinds: HashMap<String, StorageKind>,
}

#[async_trait]
impl ExportSession for Export {
    async fn export_disk(
        &mut self,
        disk: &SourceDisk,
        dir: &Path,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let drive = self.config.drive(&disk.name).ok_or_else(|| {
            Error::Invalid(format!(
                "VM {} has no disk {} in {}",
                self.vm_name,
                disk.name,
                self.snapshot
                    .as_deref()
                    .map_or("its config".into(), |s| format!("snapshot {s}"))
            ))
        })?;
        let volid = drive.volid.clone();
        let kind = self.storage_kind(&volid).await?;
        let plan = ExportPlan::choose(&kind, &disk.name, &volid, self.snapshot.is_some())?;
        tracing::info!(
            "{}: {}",
            disk.name,
            plan.describe(&volid, self.snapshot.as_deref())
        );
        let started = Instant::now();
        let out = dir.join(format!("{}.raw", disk.name));
        let image = match &plan {
            ExportPlan::Raw => self.raw(&volid, &out, progress).await?,
            ExportPlan::Qcow2Snapshot(image) => {
                self.qcow2_snapshot(&volid, image, &disk.name, dir, progress)
                    .await?
            }
            ExportPlan::ThinSnapshot { volname } => {
                self.thin_snapshot(&volid, volname, &out, progress).await?
            }
        };
        log_rate(&disk.name, &image.path, started);
        Ok(image)
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    async fn abort(self: Box<Self>) {}
}

impl Export {
    /// The kind of the storage of `volid`.
    async fn storage_kind(&mut self, volid: &str) -> Result<StorageKind> {
        let (storage, _) = split_volid(volid)
            .ok_or_else(|| Error::Invalid(format!("{volid:?} is not a Proxmox VE volume ID")))?;
        if let Some(k) = self.kinds.get(storage) {
            return Ok(k.clone());
        }
        let found = self.provider.storage(&self.node, storage).await?;
        let kind = StorageKind::of(&found.kind);
        self.kinds.insert(storage.to_string(), kind.clone());
        Ok(kind)
    }

    /// `pvesm export <volid> raw+size -` into the sparse raw image `out`.
    async fn raw(&self, volid: &str, out: &Path, progress: &Progress) -> Result<LocalImage> {
        let ssh = self.provider.ssh().await?;
        let mut stream = ssh
            .stream(&["pvesm", "export", volid, "raw+size", "-"])
            .await?;
        let what = ssh.system();
        let received = async {
            let size = receive::read_header(&mut stream.stdout, what).await?;
            progress.set_total(size);
            receive::copy_sparse(&mut stream.stdout, out, Some(size), progress, what).await
        }
        .await;
        finish(stream, received).await?;
        Ok(raw_image(out))
    }

    /// A dir storage's qcow2 disk as of the snapshot: the file (and a linked clone's base) laid out
    /// in a private directory as on the storage, then converted.
    async fn qcow2_snapshot(
        &self,
        volid: &str,
        image: &DirImage,
        name: &str,
        dir: &Path,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let snapshot = self.snapshot.as_deref().unwrap_or_default();
        let chain = dir.join(format!("{name}.chain"));
        let result = async {
            let top = self
                .qcow2_file(volid, &chain, &image.vmid, &image.name, progress)
                .await?;
            if let (Some((bvmid, bname)), Some((storage, _))) = (&image.base, split_volid(volid)) {
                let base = format!("{storage}:{bvmid}/{bname}");
                tracing::info!(
                    "{name}: {volid} is a linked clone of {base}: exporting the base too"
                );
                self.qcow2_file(&base, &chain, bvmid, bname, &Progress::default())
                    .await?;
            }
            let top = LocalImage {
                path: top,
                format: DiskFormat::Qcow2,
            };
            let dest = dir.join(format!("{name}.raw"));
            let flat = disk::flatten_snapshot(
                &top,
                snapshot,
                &chain,
                DiskFormat::Raw,
                &dest,
                &Progress::default(),
            )
            .await?;
            // the file's bytes were counted against the disk's size (a qcow2 file may be a little
            // larger or much smaller): the disk is complete once converted
            progress.set_done(progress.total());
            Ok(flat)
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&chain).await;
        result
    }

    /// `pvesm export <volid> qcow2+size - --with-snapshots 1` into `<chain>/<vmid>/<file>`.
    async fn qcow2_file(
        &self,
        volid: &str,
        chain: &Path,
        vmid: &str,
        file: &str,
        progress: &Progress,
    ) -> Result<PathBuf> {
        let sub = chain.join(vmid);
        tokio::fs::create_dir_all(&sub)
            .await
            .map_err(|e| Error::io(format!("creating {}", sub.display()), e))?;
        let out = sub.join(file);
        let ssh = self.provider.ssh().await?;
        let argv = [
            "pvesm",
            "export",
            volid,
            "qcow2+size",
            "-",
            "--with-snapshots",
            "1",
        ];
        let mut stream = ssh.stream(&argv).await?;
        let what = ssh.system();
        let received = async {
            let virtual_size = receive::read_header(&mut stream.stdout, what).await?;
            progress.set_total(virtual_size);
            receive::copy_sparse(&mut stream.stdout, &out, None, progress, what).await
        }
        .await;
        finish(stream, received).await?;
        Ok(out)
    }

    /// The thin snapshot LV of `volname`, activated for the read and deactivated after it (also
    /// when the read fails).
    async fn thin_snapshot(
        &self,
        volid: &str,
        volname: &str,
        out: &Path,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let snapshot = self.snapshot.as_deref().unwrap_or_default();
        let vg = self.volume_group(volid).await?;
        let lv = format!("{vg}/snap_{volname}_{snapshot}");
        let ssh = self.provider.ssh().await?;
        ssh.run(&["lvchange", "-ay", "-K", &lv]).await?;
        let read = read_lv(ssh, &lv, out, progress).await;
        if let Err(e) = ssh.run(&["lvchange", "-an", &lv]).await {
            tracing::warn!("deactivating {lv} after reading it: {e}");
        }
        read?;
        Ok(raw_image(out))
    }

    /// The volume group of the LVM-thin storage of `volid` (`GET /storage/{storage}`).
    async fn volume_group(&self, volid: &str) -> Result<String> {
        let (storage, _) = split_volid(volid).unwrap_or_default();
        let config: Value = self
            .provider
            .client()
            .await?
            .get(&["storage", storage], &[])
            .await?;
        config
            .get("vgname")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                Error::Invalid(format!("storage {storage} names no volume group (vgname)"))
            })
    }
}

/// `lvs` for the device path and size of `lv`, then `cat` of the device into `out`.
async fn read_lv(ssh: &Ssh, lv: &str, out: &Path, progress: &Progress) -> Result<()> {
    let listing = ssh
        .run(&[
            "lvs",
            "--noheadings",
            "--nosuffix",
            "--units",
            "b",
            "-o",
            "lv_path,lv_size",
            lv,
        ])
        .await?;
    let (path, size) = parse_lvs(&listing).ok_or_else(|| Error::Tool {
        tool: format!("lvs {lv} ({})", ssh.system()),
        detail: format!("unexpected output {:?}", listing.trim()),
    })?;
    progress.set_total(size);
    let mut stream = ssh.stream(&["cat", "--", &path]).await?;
    let received =
        receive::copy_sparse(&mut stream.stdout, out, Some(size), progress, ssh.system()).await;
    finish(stream, received).await.map(|_| ())
}

/// `<lv_path> <lv_size>` of one LV from `lvs --noheadings --nosuffix --units b`.
pub fn parse_lvs(listing: &str) -> Option<(String, u64)> {
    let mut words = listing
        .lines()
        .find(|l| !l.trim().is_empty())?
        .split_whitespace();
    let path = words.next()?.to_string();
    let size = words.next()?.parse().ok()?;
    path.starts_with('/').then_some((path, size))
}

/// Ends a remote command after its output was received: the remote's failure, else the local one.
async fn finish(stream: super::ssh::RemoteStream, received: Result<u64, Failure>) -> Result<u64> {
    match received {
        Ok(n) => stream.finish().await.map(|()| n),
        Err(failure) => Err(failure.with_remote(stream.finish().await)),
    }
}

fn raw_image(path: &Path) -> LocalImage {
    LocalImage {
        path: path.to_path_buf(),
        format: DiskFormat::Raw,
    }
}

/// Logs an exported image's size and the rate it came at.
fn log_rate(name: &str, path: &Path, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    tracing::info!(
        "{name}: exported {} in {secs:.1}s ({:.1} MiB/s)",
        human_bytes(size),
        size as f64 / secs / (1 << 20) as f64
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(kind: &str, volid: &str, snapshot: bool) -> Result<ExportPlan> {
        ExportPlan::choose(&StorageKind::of(kind), "scsi0", volid, snapshot)
    }

    #[test]
    fn per_storage_choices() {
        assert_eq!(
            choose("dir", "local:100/vm-100-disk-0.qcow2", false).unwrap(),
            ExportPlan::Raw
        );
        let clone = "local:900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2";
        assert_eq!(choose("dir", clone, false).unwrap(), ExportPlan::Raw);
        match choose("nfs", clone, true).unwrap() {
            ExportPlan::Qcow2Snapshot(image) => {
                assert_eq!(
                    image.base,
                    Some(("900".into(), "base-900-disk-0.qcow2".into()))
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            choose("dir", "local:100/vm-100-disk-1.raw", false).unwrap(),
            ExportPlan::Raw
        );
        let e = choose("dir", "local:100/vm-100-disk-1.raw", true).unwrap_err();
        assert!(e.to_string().contains("stop the VM"), "{e}");
        assert_eq!(
            choose("lvmthin", "local-lvm:vm-102-disk-0", false).unwrap(),
            ExportPlan::Raw
        );
        assert_eq!(
            choose("lvmthin", "local-lvm:vm-102-disk-0", true).unwrap(),
            ExportPlan::ThinSnapshot {
                volname: "vm-102-disk-0".into()
            }
        );
        assert_eq!(
            choose("lvm", "big:vm-1-disk-0", false).unwrap(),
            ExportPlan::Raw
        );
        assert!(choose("lvm", "big:vm-1-disk-0", true).is_err());
        let e = choose("zfspool", "tank:vm-1-disk-0", false).unwrap_err();
        assert!(e.to_string().contains("type zfspool"), "{e}");
        let e = choose("dir", "/dev/sdb", false).unwrap_err();
        assert!(e.to_string().contains("passed-through"), "{e}");
        assert!(choose("dir", "local:iso/x.iso", false).is_err());
    }

    #[test]
    fn lvs_output() {
        let out = "  /dev/pve/snap_vm-102-disk-0_vrg-1 67108864\n";
        assert_eq!(
            parse_lvs(out),
            Some(("/dev/pve/snap_vm-102-disk-0_vrg-1".into(), 64 << 20))
        );
        assert_eq!(parse_lvs(""), None);
        assert_eq!(parse_lvs("x y"), None);
    }
}
