//! The LVM-thin plugin's volumes (pve-storage `LvmThinPlugin.pm`) as files: every thin LV of
//! the VG is a sparse file `<storage>/<lv>`, and its device path `<data>/dev/<vg>/<lv>` (standing
//! in for `/dev/<vg>/<lv>`) is a symlink to that file that exists only while the LV is active.
//!
//! * `vm-<vmid>-disk-<n>`: created active (`lvcreate -aly`) and kept active (PVE's
//!   `deactivate_volume` leaves them alone).
//! * `base-<vmid>-disk-<n>`: a template's base image; `create_base` sets the activation-skip flag
//!   (`lvchange -pr -ky`) and deactivates it.
//! * `snap_<volname>_<snap>`: a VM snapshot (`lvcreate -n snap_... -pr -s`); thin snapshots get
//!   the activation-skip flag by default, so they are inactive until `lvchange -ay -K`.
//! * a linked clone of a base image is a writable thin snapshot of it under a new name
//!   (`lvcreate -n vm-<vmid>-disk-<n> -prw -kn -s <vg>/base-...`): here a sparse copy, active.
//!
//! The activation-skip flag follows from the name (`base-` and `snap_`), as PVE sets it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{SizeInfo, Storage, Volume, VolumeInfo, allocated, ctime, read_dir_files};
use crate::error::{Error, Result};
use crate::qemu_img::Log;

/// Thin LVs are allocated in extents of 4 MiB.
const EXTENT: u64 = 4 << 20;

/// One LV as `lvs` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lv {
    /// VG name.
    pub vg: String,
    /// LV name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The device path (a symlink to the file while active).
    pub path: PathBuf,
    /// Whether the device path exists.
    pub active: bool,
    /// The thin pool.
    pub pool: String,
    /// The origin of a snapshot (`snap_<origin>_<snap>`).
    pub origin: Option<String>,
}

impl Lv {
    /// `lv_attr` of a thin volume: `V` (thin), `w`/`r`, `i` (inherited allocation), `-`, `a`
    /// when active, `-` (not open), `t` (thin), `z` (zeroing), `-` and `k` with the
    /// activation-skip flag.
    pub fn attr(&self) -> String {
        let permission = if activation_skip(&self.name) {
            'r'
        } else {
            'w'
        };
        let state = if self.active { 'a' } else { '-' };
        let skip = if activation_skip(&self.name) {
            'k'
        } else {
            '-'
        };
        format!("V{permission}i-{state}-tz-{skip}")
    }
}

/// Whether PVE gives an LV of this name the activation-skip flag (templates' base images and
/// snapshots).
pub fn activation_skip(lv: &str) -> bool {
    lv.starts_with("base-") || lv.starts_with("snap_")
}

/// The origin of a snapshot LV `snap_<volname>_<snap>` among `names`.
fn origin_of(lv: &str, names: &[String]) -> Option<String> {
    let rest = lv.strip_prefix("snap_")?;
    names
        .iter()
        .filter(|n| !n.starts_with("snap_"))
        .find(|n| {
            rest.strip_prefix(n.as_str())
                .is_some_and(|r| r.starts_with('_'))
        })
        .cloned()
}

impl Storage {
    /// The volume group (`vgname`, `pve` by default).
    pub fn vg(&self) -> &str {
        self.vgname.as_deref().unwrap_or("pve")
    }

    /// `<data>/dev/<vg>`: where the device paths of the VG's active LVs are.
    pub fn dev_dir(&self) -> PathBuf {
        self.data_root.join("dev").join(self.vg())
    }

    /// The sparse file behind an LV.
    pub fn lv_file(&self, lv: &str) -> PathBuf {
        self.root.join(lv)
    }

    /// The device path of an LV (present only while it is active).
    pub fn lv_dev(&self, lv: &str) -> PathBuf {
        self.dev_dir().join(lv)
    }

    /// Whether the LV's device path exists.
    pub fn lv_active(&self, lv: &str) -> bool {
        std::fs::symlink_metadata(self.lv_dev(lv)).is_ok()
    }

    /// Activates an LV: its device path becomes a (relative) symlink to the file.
    pub fn activate_lv(&self, lv: &str) -> Result<()> {
        let dev = self.lv_dev(lv);
        if self.lv_active(lv) {
            return Ok(());
        }
        std::fs::create_dir_all(self.dev_dir())
            .map_err(Error::io(format!("create {}", self.dev_dir().display())))?;
        let target = match self.root.strip_prefix(&self.data_root) {
            Ok(relative) => Path::new("../..").join(relative).join(lv),
            Err(_) => self.lv_file(lv),
        };
        std::os::unix::fs::symlink(&target, &dev)
            .map_err(Error::io(format!("link {}", dev.display())))
    }

    /// Deactivates an LV: its device path goes away.
    pub fn deactivate_lv(&self, lv: &str) -> Result<()> {
        match std::fs::remove_file(self.lv_dev(lv)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("unlink {}", self.lv_dev(lv).display()))(
                e,
            )),
        }
    }

    /// Every LV of the VG (volumes and snapshots), by name.
    pub fn lvs(&self) -> Result<Vec<Lv>> {
        let files = read_dir_files(&self.root)?;
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        Ok(files
            .into_iter()
            .map(|(name, meta)| Lv {
                vg: self.vg().to_string(),
                size: meta.len(),
                path: self.lv_dev(&name),
                active: self.lv_active(&name),
                pool: self.thinpool.clone().unwrap_or_default(),
                origin: origin_of(&name, &names),
                name,
            })
            .collect())
    }

    pub(super) fn lvm_size_info(&self, volume: &Volume) -> Result<SizeInfo> {
        let path = self.lv_file(&volume.name);
        let meta = std::fs::metadata(&path).map_err(|_| {
            Error::failed(format!(
                "no such logical volume {}/{}",
                self.vg(),
                volume.name
            ))
        })?;
        Ok(SizeInfo {
            size: meta.len(),
            format: "raw".into(),
            used: allocated(&meta),
            parent: None,
        })
    }

    pub(super) fn lvm_list_images(&self, vmid: Option<u32>) -> Result<Vec<VolumeInfo>> {
        let mut result = Vec::new();
        for (name, meta) in read_dir_files(&self.root)? {
            let Ok(volume) = self.parse_volname(&name) else {
                continue;
            };
            if vmid.is_some_and(|v| volume.vmid != Some(v)) {
                continue;
            }
            result.push(VolumeInfo {
                volid: volume.volid(),
                format: "raw".into(),
                size: meta.len(),
                used: Some(allocated(&meta)),
                vmid: volume.vmid,
                parent: None,
                ctime: ctime(&meta),
                content: "images".into(),
            });
        }
        Ok(result)
    }

    pub(super) fn lvm_alloc(&self, vmid: u32, n: u32, size: u64, log: Log) -> Result<String> {
        let name = format!("vm-{vmid}-disk-{n}");
        let path = self.lv_file(&name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|_| Error::failed(format!("volume {}/{name} already exists", self.vg())))?;
        file.set_len(size.div_ceil(EXTENT) * EXTENT)
            .map_err(Error::io(format!("size {}", path.display())))?;
        self.activate_lv(&name)?;
        log(&format!("  Logical volume \"{name}\" created."));
        Ok(format!("{}:{name}", self.id))
    }

    /// `cp --reflink=auto --sparse=always`: the thin snapshot (or clone) of an LV.
    fn thin_copy(&self, from: &str, to: &str, error: String) -> Result<()> {
        let status = Command::new("cp")
            .args(["--reflink=auto", "--sparse=always", "--"])
            .arg(self.lv_file(from))
            .arg(self.lv_file(to))
            .status()
            .map_err(Error::io("run cp"))?;
        if status.success() {
            Ok(())
        } else {
            let _ = std::fs::remove_file(self.lv_file(to));
            Err(Error::failed(error))
        }
    }

    /// `clone_image` of a base image: `lvcreate -n vm-<vmid>-disk-<n> -prw -kn -s <vg>/<base>`.
    pub(super) fn lvm_clone(&self, base: &Volume, vmid: u32, n: u32, log: Log) -> Result<String> {
        let name = format!("vm-{vmid}-disk-{n}");
        let error = format!("clone image '{}/{}' error", self.vg(), base.name);
        self.thin_copy(&base.name, &name, error)?;
        self.activate_lv(&name)?;
        log(&format!("  Logical volume \"{name}\" created."));
        Ok(format!("{}:{name}", self.id))
    }

    /// `create_base`: `lvrename vm-... base-...`, `lvchange -pr -ky`, `lvchange -an`.
    pub(super) fn lvm_create_base(&self, volume: &Volume) -> Result<String> {
        let prefix = format!("snap_{}_", volume.name);
        if let Some(lv) = self
            .lvs()?
            .into_iter()
            .find(|lv| lv.name.starts_with(&prefix))
        {
            return Err(Error::failed(format!(
                "unable to create base volume - found snaphost '{}'",
                lv.name
            )));
        }
        let new_name = volume.name.replacen("vm-", "base-", 1);
        self.deactivate_lv(&volume.name)?;
        std::fs::rename(self.lv_file(&volume.name), self.lv_file(&new_name)).map_err(|e| {
            Error::failed(format!(
                "lvrename '{vg}/{}' => '{vg}/{new_name}' error: {e}",
                volume.name,
                vg = self.vg()
            ))
        })?;
        Ok(format!("{}:{new_name}", self.id))
    }

    pub(super) fn lvm_free(&self, volume: &Volume) -> Result<()> {
        let prefix = format!("snap_{}_", volume.name);
        for lv in self
            .lvs()?
            .into_iter()
            .filter(|lv| lv.name.starts_with(&prefix))
        {
            self.remove_lv(&lv.name)?;
        }
        if !self.lv_file(&volume.name).exists() {
            tracing::warn!(
                "logical volume {}/{} does not exist",
                self.vg(),
                volume.name
            );
            return Ok(());
        }
        self.remove_lv(&volume.name)
    }

    fn remove_lv(&self, lv: &str) -> Result<()> {
        self.deactivate_lv(lv)?;
        std::fs::remove_file(self.lv_file(lv))
            .map_err(|e| Error::failed(format!("lvremove '{}/{lv}' error: {e}", self.vg())))
    }

    /// `volume_snapshot`: `lvcreate -n snap_<volname>_<snap> -pr -s <vg>/<volname>`.
    pub(super) fn lvm_snapshot(&self, volume: &Volume, snap: &str, log: Log) -> Result<()> {
        let lv = format!("snap_{}_{snap}", volume.name);
        let error = format!("lvcreate snapshot '{}/{lv}' error", self.vg());
        self.thin_copy(&volume.name, &lv, error)?;
        log(&format!("  Logical volume \"{lv}\" created."));
        Ok(())
    }

    /// `volume_snapshot_delete`: `lvremove -f <vg>/snap_<volname>_<snap>`.
    pub(super) fn lvm_snapshot_delete(&self, volume: &Volume, snap: &str) -> Result<()> {
        let lv = format!("snap_{}_{snap}", volume.name);
        self.deactivate_lv(&lv)?;
        std::fs::remove_file(self.lv_file(&lv)).map_err(|e| {
            Error::failed(format!("lvremove snapshot '{}/{lv}' error: {e}", self.vg()))
        })
    }
}
