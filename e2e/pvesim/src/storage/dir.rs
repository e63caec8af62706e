//! The dir plugin's volumes (pve-storage `Plugin.pm`): image files below `images/<vmid>/`,
//! qcow2 internal snapshots, templates' base images (`base-<vmid>-disk-<n>.<fmt>`, read-only) and
//! their linked clones, qcow2 overlays written as PVE writes them:
//! `qemu-img create -F <fmt> -b ../<basevmid>/<basename> -f qcow2 <path> -o
//! extended_l2=on,cluster_size=128k,preallocation=metadata`, run in the clone's directory so the
//! backing file reference stays relative.

use std::process::Command;

use super::{
    SizeInfo, Storage, VolType, Volume, VolumeInfo, allocated, ctime, import_format, read_dir_files,
};
use crate::error::{Error, Result};
use crate::qemu_img::{self, Log};

/// A linked clone's backing reference `../<basevmid>/<basename>` as (base VMID, base name).
fn parse_parent(parent: &str) -> Option<(u32, String)> {
    let rest = parent.strip_prefix("../")?;
    let (vmid, name) = rest.split_once('/')?;
    let formats = [".raw", ".qcow2", ".vmdk", ".subvol"];
    let ok = !name.contains('/') && formats.iter().any(|f| name.ends_with(f));
    Some((vmid.parse().ok()?, name.to_string())).filter(|_| ok)
}

impl Storage {
    pub(super) fn dir_size_info(&self, volume: &Volume) -> Result<SizeInfo> {
        let path = self.file(volume);
        let meta = std::fs::metadata(&path)
            .map_err(|_| Error::failed(format!("failed to stat '{}'", path.display())))?;
        let plain = |format: &str| SizeInfo {
            size: meta.len(),
            format: format.to_string(),
            used: meta.len(),
            parent: None,
        };
        match volume.vtype {
            VolType::Iso => Ok(plain("iso")),
            _ if volume.format == "ova" || volume.format == "ovf" => Ok(plain(&volume.format)),
            _ => {
                let info = qemu_img::info(&path, Some(&volume.format))?;
                Ok(SizeInfo {
                    size: info.virtual_size,
                    format: info.format,
                    used: info.actual_size,
                    parent: info.backing_filename,
                })
            }
        }
    }

    /// `list_images`: a file with a backing file `../<vmid>/<name>` is listed as the linked clone
    /// `<basevmid>/<basename>/<owner>/<name>`.
    pub(super) fn dir_list_images(&self, vmid: Option<u32>) -> Result<Vec<VolumeInfo>> {
        let images = self.subdir(VolType::Images);
        let mut owners: Vec<u32> = match std::fs::read_dir(&images) {
            Ok(rd) => rd
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(format!("list {}", images.display()))(e)),
        };
        owners.sort_unstable();
        let mut result = Vec::new();
        for owner in owners.into_iter().filter(|o| vmid.is_none_or(|v| v == *o)) {
            for (name, meta) in read_dir_files(&images.join(owner.to_string()))? {
                if let Ok(volume) = self.parse_volname(&format!("{owner}/{name}")) {
                    result.push(self.dir_image_info(volume, &meta));
                }
            }
        }
        Ok(result)
    }

    fn dir_image_info(&self, volume: Volume, meta: &std::fs::Metadata) -> VolumeInfo {
        let path = self.file(&volume);
        let (size, format, used, parent) = match qemu_img::info(&path, Some(&volume.format)) {
            Ok(info) => (
                info.virtual_size,
                volume.format.clone(),
                info.actual_size,
                info.backing_filename,
            ),
            Err(_) => (meta.len(), "invalid".to_string(), allocated(meta), None),
        };
        let owner = volume.vmid.unwrap_or_default();
        let volid = match parent.as_deref().and_then(parse_parent) {
            Some((base_vmid, base)) => {
                format!("{}:{base_vmid}/{base}/{owner}/{}", self.id, volume.name)
            }
            None => volume.volid(),
        };
        VolumeInfo {
            volid,
            format,
            size,
            used: Some(used),
            vmid: volume.vmid,
            parent,
            ctime: ctime(meta),
            content: "images".into(),
        }
    }

    /// The files of `import/` or `template/iso/`.
    pub(super) fn list_files(&self, vtype: VolType) -> Result<Vec<VolumeInfo>> {
        let mut result = Vec::new();
        if !self.is_file_based() {
            return Ok(result);
        }
        for (name, meta) in read_dir_files(&self.subdir(vtype))? {
            let (prefix, format) = match vtype {
                VolType::Iso => {
                    let lower = name.to_ascii_lowercase();
                    if !(lower.ends_with(".iso") || lower.ends_with(".img")) {
                        continue;
                    }
                    ("iso", "iso".to_string())
                }
                VolType::Import => match import_format(&name, false) {
                    Some(f) => ("import", f),
                    None => continue,
                },
                VolType::Images => continue,
            };
            result.push(VolumeInfo {
                volid: format!("{}:{prefix}/{name}", self.id),
                format,
                size: meta.len(),
                used: None,
                vmid: None,
                parent: None,
                ctime: ctime(&meta),
                content: vtype.as_str().into(),
            });
        }
        Ok(result)
    }

    pub(super) fn dir_alloc(
        &self,
        vmid: u32,
        n: u32,
        format: &str,
        size: u64,
        log: Log,
    ) -> Result<String> {
        let name = format!("vm-{vmid}-disk-{n}.{format}");
        let dir = self.subdir(VolType::Images).join(vmid.to_string());
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("mkdir {}", dir.display())))?;
        let path = dir.join(&name);
        if path.exists() {
            return Err(Error::failed(format!(
                "disk image '{}' already exists",
                path.display()
            )));
        }
        if let Err(e) = qemu_img::create(&path, format, size, log) {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(format!("{}:{vmid}/{name}", self.id))
    }

    /// `clone_image`: a qcow2 overlay `vm-<vmid>-disk-<n>.qcow2` on the base image.
    pub(super) fn dir_clone(&self, base: &Volume, vmid: u32, n: u32, log: Log) -> Result<String> {
        let base_vmid = base.vmid.unwrap_or_default();
        let name = format!("vm-{vmid}-disk-{n}.qcow2");
        let dir = self.subdir(VolType::Images).join(vmid.to_string());
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("mkdir {}", dir.display())))?;
        let backing = format!("../{base_vmid}/{}", base.name);
        log(&format!(
            "clone {}: images, {name}, {vmid} to {name} (base={backing})",
            base.volname
        ));
        let output = Command::new("qemu-img")
            .current_dir(&dir)
            .args([
                "create",
                "-F",
                &base.format,
                "-b",
                &backing,
                "-f",
                "qcow2",
                &name,
            ])
            .args([
                "-o",
                "extended_l2=on,cluster_size=128k,preallocation=metadata",
            ])
            .output()
            .map_err(Error::io("run qemu-img create"))?;
        if !output.status.success() {
            return Err(Error::failed(format!(
                "unable to create image: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(format!(
            "{}:{base_vmid}/{}/{vmid}/{name}",
            self.id, base.name
        ))
    }

    /// `create_base`: renames `vm-...` to `base-...` and makes the file read-only.
    pub(super) fn dir_create_base(&self, volume: &Volume) -> Result<String> {
        let path = self.file(volume);
        let new_name = match volume.name.strip_prefix("vm-") {
            Some(rest) => format!("base-{rest}"),
            None => volume.name.clone(),
        };
        let vmid = volume.vmid.unwrap_or_default();
        let new_volname = match &volume.base {
            Some((base_vmid, base)) => format!("{base_vmid}/{base}/{vmid}/{new_name}"),
            None => format!("{vmid}/{new_name}"),
        };
        let new_path = path.with_file_name(&new_name);
        if new_path.is_file() {
            return Err(Error::failed(format!(
                "file '{}' already exists",
                new_path.display()
            )));
        }
        std::fs::rename(&path, &new_path).map_err(|e| {
            Error::failed(format!(
                "rename '{}' to '{}' failed - {e}",
                path.display(),
                new_path.display()
            ))
        })?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&new_path, std::fs::Permissions::from_mode(0o444));
        Ok(format!("{}:{new_volname}", self.id))
    }

    /// `volume_is_base_and_used`: a linked clone on this storage has `volume` as its base.
    pub(super) fn dir_base_in_use(&self, volume: &Volume) -> Result<bool> {
        if !volume.is_base {
            return Ok(false);
        }
        let base = (volume.vmid.unwrap_or_default(), volume.name.clone());
        Ok(self.dir_list_images(None)?.iter().any(|info| {
            let volname = info.volid.split_once(':').map_or("", |(_, v)| v);
            self.parse_volname(volname)
                .is_ok_and(|v| v.base.as_ref() == Some(&base))
        }))
    }

    pub(super) fn dir_free(&self, volume: &Volume) -> Result<()> {
        if self.dir_base_in_use(volume)? {
            return Err(Error::failed(format!(
                "base volume '{}' is still in use by linked clones",
                volume.volname
            )));
        }
        let path = self.file(volume);
        if !path.exists() {
            tracing::warn!("disk image '{}' does not exist", path.display());
            return Ok(());
        }
        std::fs::remove_file(&path)
            .map_err(|e| Error::failed(format!("unlink '{}' failed - {e}", path.display())))?;
        if volume.vtype == VolType::Images
            && let Some(dir) = path.parent()
        {
            let _ = std::fs::remove_dir(dir); // only when empty, as PVE leaves no empty <vmid>/ behind
        }
        Ok(())
    }

    pub(super) fn dir_snapshot(&self, volume: &Volume, snap: &str, log: Log) -> Result<()> {
        if !(volume.name.ends_with(".qcow2") || volume.name.ends_with(".qed")) {
            return Err(Error::failed("can't snapshot this image format"));
        }
        qemu_img::snapshot_create(&self.file(volume), snap, log)
    }

    pub(super) fn dir_snapshot_delete(&self, volume: &Volume, snap: &str, log: Log) -> Result<()> {
        if !(volume.name.ends_with(".qcow2") || volume.name.ends_with(".qed")) {
            return Err(Error::failed("can't delete snapshot for this image format"));
        }
        qemu_img::snapshot_delete(&self.file(volume), snap, log)
    }
}
