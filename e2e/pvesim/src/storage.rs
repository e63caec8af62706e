//! Storages of the simulated node, after pve-storage's `DirPlugin` and `LvmThinPlugin`.
//!
//! * `local` (type `dir`): volumes are files, `<volname>` is a path below the storage directory
//!   (`100/vm-100-disk-0.qcow2` under `images/`, `import/<file>`, `iso/<file>` under `template/iso/`).
//!   Formats raw, qcow2 and vmdk; snapshots are qcow2 internal snapshots (`qemu-img snapshot -c`).
//! * `local-lvm` (type `lvmthin`): volumes are raw "logical volumes" `vm-<vmid>-disk-<n>`, kept as
//!   sparse files in the storage directory; a snapshot is a thin copy `snap_<volname>_<snap>` (made
//!   with `cp --reflink=auto --sparse=always`). Content `images` only, so PVE's own refusals of
//!   `import` or `iso` content there come out the same.
//!
//! Volume names, format rules, disk naming and error messages follow pve-storage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::datadir::{DataDir, read_json, write_json};
use crate::error::{Error, Result};
use crate::qemu_img::{self, Log};

/// Class name of the dir plugin, as PVE's messages print it.
pub const DIR_PLUGIN: &str = "PVE::Storage::DirPlugin";
/// Class name of the LVM-thin plugin.
pub const LVMTHIN_PLUGIN: &str = "PVE::Storage::LvmThinPlugin";

/// The node: its name and storage definitions (`node.json`, PVE's `storage.cfg`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Node name.
    pub node: String,
    /// Storage definitions by storage ID.
    pub storages: BTreeMap<String, StorageConfig>,
}

/// One storage definition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StorageConfig {
    /// Plugin type.
    #[serde(rename = "type")]
    pub kind: StorageKind,
    /// Directory of the storage's files (relative paths are relative to the data directory).
    pub path: PathBuf,
    /// Allowed content types.
    pub content: Vec<String>,
    /// LVM volume group (lvmthin; informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vgname: Option<String>,
    /// LVM thin pool (lvmthin; informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinpool: Option<String>,
}

/// Storage plugin types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Directory storage.
    Dir,
    /// LVM-thin storage.
    Lvmthin,
}

impl StorageKind {
    /// The type name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Dir => "dir",
            StorageKind::Lvmthin => "lvmthin",
        }
    }
}

impl NodeConfig {
    /// The default node: `pve1` with `local` (dir: import, iso, images) and `local-lvm` (images).
    pub fn default_config() -> Self {
        NodeConfig {
            node: "pve1".to_string(),
            storages: BTreeMap::from([
                (
                    "local".to_string(),
                    StorageConfig {
                        kind: StorageKind::Dir,
                        path: PathBuf::from("storage/local"),
                        content: vec!["images".into(), "import".into(), "iso".into()],
                        vgname: None,
                        thinpool: None,
                    },
                ),
                (
                    "local-lvm".to_string(),
                    StorageConfig {
                        kind: StorageKind::Lvmthin,
                        path: PathBuf::from("storage/local-lvm"),
                        content: vec!["images".into()],
                        vgname: Some("pve".into()),
                        thinpool: Some("data".into()),
                    },
                ),
            ]),
        }
    }

    /// Loads `node.json`, writing the default one first if there is none; creates storage directories.
    pub fn load_or_init(data: &DataDir) -> Result<Self> {
        let config = match read_json::<NodeConfig>(&data.node_file())? {
            Some(c) => c,
            None => {
                let c = NodeConfig::default_config();
                write_json(&data.node_file(), &c)?;
                c
            }
        };
        for storage in config.all(data) {
            for dir in storage.subdirs() {
                std::fs::create_dir_all(&dir)
                    .map_err(Error::io(format!("create {}", dir.display())))?;
            }
        }
        Ok(config)
    }

    /// Loads `node.json` (for `pvesm`, which never initializes).
    pub fn load(data: &DataDir) -> Result<Self> {
        read_json(&data.node_file())?.ok_or_else(|| {
            Error::failed(format!(
                "{} does not exist: not a pvesim data directory",
                data.node_file().display()
            ))
        })
    }

    /// All storages, sorted by ID.
    pub fn all(&self, data: &DataDir) -> Vec<Storage> {
        self.storages
            .iter()
            .map(|(id, c)| Storage::new(data, id, c))
            .collect()
    }

    /// One storage: `storage_config`, which dies with `storage 'X' does not exist`.
    pub fn storage(&self, data: &DataDir, id: &str) -> Result<Storage> {
        self.storages
            .get(id)
            .map(|c| Storage::new(data, id, c))
            .ok_or_else(|| Error::failed(format!("storage '{id}' does not exist")))
    }
}

/// Content types of volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolType {
    /// VM disk images.
    Images,
    /// ISO images.
    Iso,
    /// Importable disk images (`import/`).
    Import,
}

impl VolType {
    /// The content type name.
    pub fn as_str(self) -> &'static str {
        match self {
            VolType::Images => "images",
            VolType::Iso => "iso",
            VolType::Import => "import",
        }
    }
}

/// A parsed volume (`parse_volname`).
#[derive(Clone, Debug)]
pub struct Volume {
    /// Storage ID.
    pub storage: String,
    /// Volume name inside the storage.
    pub volname: String,
    /// Content type.
    pub vtype: VolType,
    /// File (or LV) name.
    pub name: String,
    /// Owning VM.
    pub vmid: Option<u32>,
    /// Data format (`raw`, `qcow2`, `vmdk`, `iso`, `ova`, ...).
    pub format: String,
}

impl Volume {
    /// `<storage>:<volname>`.
    pub fn volid(&self) -> String {
        format!("{}:{}", self.storage, self.volname)
    }
}

/// `parse_volume_id`: `<storage>:<volname>`.
pub fn parse_volume_id(volid: &str) -> Result<(&str, &str)> {
    match volid.split_once(':') {
        Some((store, name)) if crate::schema::is_storage_like_id(store) && !name.is_empty() => {
            Ok((store, name))
        }
        _ => Err(Error::failed(format!(
            "unable to parse volume ID '{volid}'"
        ))),
    }
}

/// One entry of a storage content listing.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeInfo {
    /// Volume ID.
    pub volid: String,
    /// Format.
    pub format: String,
    /// Size in bytes (virtual size for images).
    pub size: u64,
    /// Used bytes (images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    /// Owning VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    /// Backing volume (linked clones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Creation (change) time.
    pub ctime: i64,
    /// Content type.
    pub content: String,
}

/// Storage features PVE asks a plugin about (`volume_has_feature`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Take a snapshot.
    Snapshot,
    /// Full copy (clone_disk, import-from).
    Copy,
}

/// A storage, resolved against the data directory.
#[derive(Clone, Debug)]
pub struct Storage {
    /// Storage ID.
    pub id: String,
    /// Plugin type.
    pub kind: StorageKind,
    /// Absolute directory.
    pub root: PathBuf,
    /// Allowed content types.
    pub content: Vec<String>,
}

impl Storage {
    fn new(data: &DataDir, id: &str, config: &StorageConfig) -> Self {
        Storage {
            id: id.to_string(),
            kind: config.kind,
            root: data.resolve(&config.path),
            content: config.content.clone(),
        }
    }

    /// The plugin class name (in PVE's messages).
    pub fn plugin_class(&self) -> &'static str {
        match self.kind {
            StorageKind::Dir => DIR_PLUGIN,
            StorageKind::Lvmthin => LVMTHIN_PLUGIN,
        }
    }

    /// Whether the storage is file based (`$scfg->{path}` in PVE: only dir here).
    pub fn is_file_based(&self) -> bool {
        self.kind == StorageKind::Dir
    }

    /// Whether content type `content` is enabled.
    pub fn supports(&self, content: &str) -> bool {
        self.content.iter().any(|c| c == content)
    }

    /// Content types as PVE prints them (sorted, comma-separated).
    pub fn content_string(&self) -> String {
        let mut c = self.content.clone();
        c.sort();
        c.join(",")
    }

    fn subdirs(&self) -> Vec<PathBuf> {
        match self.kind {
            StorageKind::Dir => vec![
                self.root.join("images"),
                self.root.join("import"),
                self.root.join("template/iso"),
            ],
            StorageKind::Lvmthin => vec![self.root.clone()],
        }
    }

    /// Directory of a content type (dir storages).
    pub fn subdir(&self, vtype: VolType) -> PathBuf {
        match vtype {
            VolType::Images => self.root.join("images"),
            VolType::Import => self.root.join("import"),
            VolType::Iso => self.root.join("template/iso"),
        }
    }

    /// Image formats the storage can hold, and the default one (plugin data `format`).
    pub fn formats(&self) -> (&'static [&'static str], &'static str) {
        match self.kind {
            StorageKind::Dir => (&["raw", "qcow2", "vmdk", "subvol"], "raw"),
            StorageKind::Lvmthin => (&["raw"], "raw"),
        }
    }

    /// `resolve_format_hint`: the hint if the storage supports it, else its default.
    pub fn resolve_format_hint(&self, hint: Option<&str>) -> String {
        let (valid, default) = self.formats();
        match hint {
            Some(h) if valid.contains(&h) => h.to_string(),
            _ => default.to_string(),
        }
    }

    /// `parse_volname` of the storage's plugin.
    pub fn parse_volname(&self, volname: &str) -> Result<Volume> {
        let volume = |vtype, name: &str, vmid, format: &str| Volume {
            storage: self.id.clone(),
            volname: volname.to_string(),
            vtype,
            name: name.to_string(),
            vmid,
            format: format.to_string(),
        };
        match self.kind {
            StorageKind::Lvmthin => {
                let mut parts = volname.splitn(3, '-');
                let (prefix, vmid) = (
                    parts.next(),
                    parts.next().and_then(|v| v.parse::<u32>().ok()),
                );
                let rest = parts.next().unwrap_or_default();
                if matches!(prefix, Some("vm") | Some("base"))
                    && vmid.is_some()
                    && !rest.is_empty()
                    && !volname.contains(char::is_whitespace)
                {
                    return Ok(volume(VolType::Images, volname, vmid, "raw"));
                }
                Err(Error::failed(format!(
                    "unable to parse lvm volume name '{volname}'"
                )))
            }
            StorageKind::Dir => {
                if let Some((owner, name)) = volname.split_once('/')
                    && !owner.is_empty()
                    && owner.bytes().all(|b| b.is_ascii_digit())
                    && !name.contains(char::is_whitespace)
                {
                    let (_, format) = parse_name_dir(name)?;
                    return Ok(volume(VolType::Images, name, owner.parse().ok(), &format));
                }
                if let Some(name) = volname.strip_prefix("iso/")
                    && !name.contains('/')
                    && let Some(ext) = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())
                    && (ext == "iso" || ext == "img")
                {
                    return Ok(volume(VolType::Iso, name, None, "raw"));
                }
                if let Some(name) = volname.strip_prefix("import/")
                    && let Some(format) = import_format(name, true)
                {
                    return Ok(volume(VolType::Import, name, None, &format));
                }
                Err(Error::failed(format!(
                    "unable to parse directory volume name '{volname}'"
                )))
            }
        }
    }

    /// Parses a full volume ID of this storage.
    pub fn parse_volid(&self, volid: &str) -> Result<Volume> {
        let (store, volname) = parse_volume_id(volid)?;
        if store != self.id {
            return Err(Error::failed(format!(
                "storage ID mismatch ({store} != {})",
                self.id
            )));
        }
        self.parse_volname(volname)
    }

    /// The file behind a volume (`path`; for LVM-thin the file standing in for `/dev/<vg>/<lv>`).
    pub fn path(&self, volume: &Volume) -> PathBuf {
        match (self.kind, volume.vtype) {
            (StorageKind::Lvmthin, _) => self.root.join(&volume.name),
            (StorageKind::Dir, VolType::Images) => self
                .subdir(VolType::Images)
                .join(volume.vmid.unwrap_or_default().to_string())
                .join(&volume.name),
            (StorageKind::Dir, vtype) => self.subdir(vtype).join(&volume.name),
        }
    }

    /// The file of an LVM-thin snapshot (`snap_<volname>_<snap>`).
    pub fn lvm_snapshot_path(&self, volume: &Volume, snap: &str) -> PathBuf {
        self.root.join(format!("snap_{}_{snap}", volume.name))
    }

    /// `volume_size_info`: (virtual size, format, used bytes, backing file).
    pub fn size_info(&self, volume: &Volume) -> Result<(u64, String, u64, Option<String>)> {
        let path = self.path(volume);
        let meta = std::fs::metadata(&path)
            .map_err(|_| Error::failed(format!("failed to stat '{}'", path.display())))?;
        match (self.kind, volume.vtype) {
            (StorageKind::Lvmthin, _) => Ok((meta.len(), "raw".into(), allocated(&meta), None)),
            (StorageKind::Dir, VolType::Iso) => Ok((meta.len(), "iso".into(), meta.len(), None)),
            (StorageKind::Dir, _) if volume.format == "ova" || volume.format == "ovf" => {
                Ok((meta.len(), volume.format.clone(), meta.len(), None))
            }
            (StorageKind::Dir, _) => {
                let info = qemu_img::info(&path, Some(&volume.format))?;
                Ok((
                    info.virtual_size,
                    info.format,
                    info.actual_size,
                    info.backing_filename,
                ))
            }
        }
    }

    /// Content listing (`list_volumes`), optionally of one content type and/or one VM's images.
    pub fn list_volumes(
        &self,
        content: Option<&str>,
        vmid: Option<u32>,
    ) -> Result<Vec<VolumeInfo>> {
        let mut result = Vec::new();
        for vtype in [VolType::Images, VolType::Import, VolType::Iso] {
            if !self.supports(vtype.as_str()) || content.is_some_and(|c| c != vtype.as_str()) {
                continue;
            }
            match vtype {
                VolType::Images => result.extend(self.list_images(vmid)?),
                _ if vmid.is_some() => {}
                _ => result.extend(self.list_files(vtype)?),
            }
        }
        Ok(result)
    }

    /// `list_images`: the VM disk volumes, optionally of one VM.
    pub fn list_images(&self, vmid: Option<u32>) -> Result<Vec<VolumeInfo>> {
        let mut result = Vec::new();
        match self.kind {
            StorageKind::Lvmthin => {
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
            }
            StorageKind::Dir => {
                let images = self.subdir(VolType::Images);
                let mut owners: Vec<String> = match std::fs::read_dir(&images) {
                    Ok(rd) => rd
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().to_string())
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(Error::io(format!("list {}", images.display()))(e)),
                };
                owners.sort();
                for owner in owners {
                    let Ok(owner_id) = owner.parse::<u32>() else {
                        continue;
                    };
                    if vmid.is_some_and(|v| v != owner_id) {
                        continue;
                    }
                    for (name, meta) in read_dir_files(&images.join(&owner))? {
                        let Ok(volume) = self.parse_volname(&format!("{owner}/{name}")) else {
                            continue;
                        };
                        let path = self.path(&volume);
                        let (size, format, used, parent) =
                            match qemu_img::info(&path, Some(&volume.format)) {
                                Ok(info) => (
                                    info.virtual_size,
                                    volume.format.clone(),
                                    info.actual_size,
                                    info.backing_filename,
                                ),
                                Err(_) => {
                                    (meta.len(), "invalid".to_string(), allocated(&meta), None)
                                }
                            };
                        result.push(VolumeInfo {
                            volid: volume.volid(),
                            format,
                            size,
                            used: Some(used),
                            vmid: volume.vmid,
                            parent,
                            ctime: ctime(&meta),
                            content: "images".into(),
                        });
                    }
                }
            }
        }
        Ok(result)
    }

    fn list_files(&self, vtype: VolType) -> Result<Vec<VolumeInfo>> {
        let mut result = Vec::new();
        if self.kind != StorageKind::Dir {
            return Ok(result);
        }
        for (name, meta) in read_dir_files(&self.subdir(vtype))? {
            let format = match vtype {
                VolType::Iso => {
                    let lower = name.to_ascii_lowercase();
                    if !(lower.ends_with(".iso") || lower.ends_with(".img")) {
                        continue;
                    }
                    "iso".to_string()
                }
                VolType::Import => match import_format(&name, false) {
                    Some(f) => f,
                    None => continue,
                },
                VolType::Images => continue,
            };
            let prefix = if vtype == VolType::Iso {
                "iso"
            } else {
                "import"
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

    /// `vdisk_alloc`: a new image `vm-<vmid>-disk-<n>` (the first free `n` of that VM on this storage).
    pub fn alloc_image(&self, vmid: u32, format: &str, size: u64, log: Log) -> Result<String> {
        let (valid, _) = self.formats();
        if !valid.contains(&format) || format == "subvol" {
            return Err(Error::failed(format!("unsupported format '{format}'")));
        }
        let used: Vec<u32> = self
            .list_images(Some(vmid))?
            .iter()
            .filter_map(|v| disk_number(&v.volid, vmid))
            .collect();
        let n = (0..).find(|n| !used.contains(n)).unwrap_or_default();
        match self.kind {
            StorageKind::Dir => {
                let name = format!("vm-{vmid}-disk-{n}.{format}");
                let dir = self.subdir(VolType::Images).join(vmid.to_string());
                std::fs::create_dir_all(&dir)
                    .map_err(Error::io(format!("mkdir {}", dir.display())))?;
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
            StorageKind::Lvmthin => {
                let name = format!("vm-{vmid}-disk-{n}");
                let path = self.root.join(&name);
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|_| Error::failed(format!("volume pve/{name} already exists")))?;
                // thin LVs are allocated in 4 MiB extents
                let extent = 4 << 20;
                file.set_len(size.div_ceil(extent) * extent)
                    .map_err(Error::io(format!("size {}", path.display())))?;
                log(&format!("  Logical volume \"{name}\" created."));
                Ok(format!("{}:{name}", self.id))
            }
        }
    }

    /// `vdisk_free`: removes a volume (with its LVM-thin snapshots).
    pub fn free(&self, volume: &Volume) -> Result<()> {
        let path = self.path(volume);
        if self.kind == StorageKind::Lvmthin {
            let prefix = format!("snap_{}_", volume.name);
            for (name, _) in read_dir_files(&self.root)? {
                if name.starts_with(&prefix) {
                    let snap = self.root.join(&name);
                    std::fs::remove_file(&snap)
                        .map_err(Error::io(format!("remove {}", snap.display())))?;
                }
            }
        }
        if !path.exists() {
            tracing::warn!("disk image '{}' does not exist", path.display());
            return Ok(());
        }
        std::fs::remove_file(&path)
            .map_err(|e| Error::failed(format!("unlink '{}' failed - {e}", path.display())))?;
        if self.kind == StorageKind::Dir
            && volume.vtype == VolType::Images
            && let Some(dir) = path.parent()
        {
            let _ = std::fs::remove_dir(dir); // only when empty, as PVE leaves no empty <vmid>/ behind
        }
        Ok(())
    }

    /// `volume_has_feature` for the features the simulator uses.
    pub fn has_feature(&self, feature: Feature, volume: &Volume, snapname: Option<&str>) -> bool {
        match self.kind {
            StorageKind::Lvmthin => match feature {
                Feature::Snapshot => snapname.is_none(),
                Feature::Copy => true,
            },
            StorageKind::Dir => {
                let format = volume.format.as_str();
                match (feature, snapname) {
                    (Feature::Snapshot, _) => format == "qcow2",
                    (Feature::Copy, Some(_)) => format == "qcow2",
                    (Feature::Copy, None) => matches!(format, "qcow2" | "raw" | "vmdk"),
                }
            }
        }
    }

    /// `volume_snapshot`.
    pub fn snapshot(&self, volume: &Volume, snap: &str, log: Log) -> Result<()> {
        match self.kind {
            StorageKind::Dir => {
                if !(volume.name.ends_with(".qcow2") || volume.name.ends_with(".qed")) {
                    return Err(Error::failed("can't snapshot this image format"));
                }
                qemu_img::snapshot_create(&self.path(volume), snap, log)
            }
            StorageKind::Lvmthin => {
                let src = self.path(volume);
                let dst = self.lvm_snapshot_path(volume, snap);
                let status = Command::new("cp")
                    .args(["--reflink=auto", "--sparse=always", "--"])
                    .arg(&src)
                    .arg(&dst)
                    .status()
                    .map_err(Error::io("run cp"))?;
                if !status.success() {
                    return Err(Error::failed(format!(
                        "lvcreate snapshot 'pve/snap_{}_{snap}' error",
                        volume.name
                    )));
                }
                log(&format!(
                    "  Logical volume \"snap_{}_{snap}\" created.",
                    volume.name
                ));
                Ok(())
            }
        }
    }

    /// `volume_snapshot_delete`.
    pub fn snapshot_delete(&self, volume: &Volume, snap: &str, log: Log) -> Result<()> {
        match self.kind {
            StorageKind::Dir => {
                if !(volume.name.ends_with(".qcow2") || volume.name.ends_with(".qed")) {
                    return Err(Error::failed("can't delete snapshot for this image format"));
                }
                qemu_img::snapshot_delete(&self.path(volume), snap, log)
            }
            StorageKind::Lvmthin => {
                let path = self.lvm_snapshot_path(volume, snap);
                std::fs::remove_file(&path).map_err(|e| {
                    Error::failed(format!(
                        "lvremove 'pve/snap_{}_{snap}' error: {e}",
                        volume.name
                    ))
                })
            }
        }
    }

    /// Total, used and available bytes of the file system holding the storage.
    pub fn usage(&self) -> (u64, u64, u64) {
        match nix::sys::statvfs::statvfs(&self.root) {
            Ok(s) => {
                let frag = s.fragment_size();
                let total = s.blocks() * frag;
                let avail = s.blocks_available() * frag;
                let free = s.blocks_free() * frag;
                (total, total.saturating_sub(free), avail)
            }
            Err(_) => (0, 0, 0),
        }
    }
}

/// `parse_name_dir`: image file names of dir storages.
pub fn parse_name_dir(name: &str) -> Result<(String, String)> {
    let fail = || Error::failed(format!("unable to parse volume filename '{name}'"));
    if name.contains(char::is_whitespace) || name.contains('/') {
        return Err(fail());
    }
    if name.starts_with("snap-") && name.ends_with(".qcow2") {
        return Err(Error::failed(format!(
            "'{name}' is a snapshot filename, not a volume!"
        )));
    }
    let (_, ext) = name.rsplit_once('.').ok_or_else(fail)?;
    if !matches!(ext, "raw" | "qcow2" | "vmdk" | "subvol") || name.len() == ext.len() + 1 {
        return Err(fail());
    }
    Ok((name.to_string(), ext.to_string()))
}

/// The format of an `import/` file name (`SAFE_CHAR(_WITH_WHITESPACE)+.(ova|ovf|qcow2|raw|vmdk)`).
fn import_format(name: &str, allow_space: bool) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    let safe =
        |c: char| c.is_ascii_alphanumeric() || "-.+=_".contains(c) || (allow_space && c == ' ');
    if stem.is_empty() || !stem.chars().all(safe) {
        return None;
    }
    matches!(ext, "ova" | "ovf" | "qcow2" | "raw" | "vmdk").then(|| ext.to_string())
}

/// The disk number `n` of `vm-<vmid>-disk-<n>` (any format, as the dir plugin counts).
fn disk_number(volid: &str, vmid: u32) -> Option<u32> {
    let name = volid.rsplit(['/', ':']).next()?;
    let rest = name
        .strip_prefix(&format!("vm-{vmid}-disk-"))
        .or_else(|| name.strip_prefix(&format!("base-{vmid}-disk-")))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Regular files of a directory with their metadata, sorted by name (missing directory: none).
fn read_dir_files(dir: &Path) -> Result<Vec<(String, std::fs::Metadata)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("list {}", dir.display()))(e)),
    };
    let mut files: Vec<(String, std::fs::Metadata)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (e.file_name().to_string_lossy().to_string(), meta))
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

fn allocated(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

fn ctime(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.ctime()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storages() -> (tempfile::TempDir, Storage, Storage) {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::open(tmp.path()).unwrap();
        let node = NodeConfig::load_or_init(&data).unwrap();
        let local = node.storage(&data, "local").unwrap();
        let lvm = node.storage(&data, "local-lvm").unwrap();
        (tmp, local, lvm)
    }

    #[test]
    fn volume_names_parse_as_pve_does() {
        let (_tmp, local, lvm) = storages();
        let v = local.parse_volname("100/vm-100-disk-0.qcow2").unwrap();
        assert_eq!(
            (v.vtype, v.vmid, v.format.as_str()),
            (VolType::Images, Some(100), "qcow2")
        );
        let v = local.parse_volname("import/disk 1.vmdk").unwrap();
        assert_eq!((v.vtype, v.format.as_str()), (VolType::Import, "vmdk"));
        assert_eq!(
            local.parse_volname("import/x.txt").unwrap_err().to_string(),
            "unable to parse directory volume name 'import/x.txt'"
        );
        assert_eq!(
            local
                .parse_volname("100/vm-100-disk-0.img")
                .unwrap_err()
                .to_string(),
            "unable to parse volume filename 'vm-100-disk-0.img'"
        );
        let v = lvm.parse_volname("vm-100-disk-1").unwrap();
        assert_eq!((v.vmid, v.format.as_str()), (Some(100), "raw"));
        assert_eq!(
            lvm.parse_volname("import/a.raw").unwrap_err().to_string(),
            "unable to parse lvm volume name 'import/a.raw'"
        );
    }

    #[test]
    fn alloc_takes_the_first_free_disk_number_and_free_removes() {
        let (_tmp, local, lvm) = storages();
        let quiet = |_: &str| {};
        assert_eq!(
            local.alloc_image(101, "raw", 1 << 20, &quiet).unwrap(),
            "local:101/vm-101-disk-0.raw"
        );
        assert_eq!(
            local.alloc_image(101, "qcow2", 1 << 20, &quiet).unwrap(),
            "local:101/vm-101-disk-1.qcow2"
        );
        assert_eq!(
            lvm.alloc_image(101, "raw", 1 << 20, &quiet).unwrap(),
            "local-lvm:vm-101-disk-0"
        );
        assert_eq!(
            lvm.alloc_image(101, "qcow2", 1 << 20, &quiet)
                .unwrap_err()
                .to_string(),
            "unsupported format 'qcow2'"
        );
        let listed: Vec<String> = local
            .list_images(Some(101))
            .unwrap()
            .into_iter()
            .map(|v| v.volid)
            .collect();
        assert_eq!(
            listed,
            [
                "local:101/vm-101-disk-0.raw",
                "local:101/vm-101-disk-1.qcow2"
            ]
        );
        let v = local.parse_volid("local:101/vm-101-disk-0.raw").unwrap();
        local.free(&v).unwrap();
        assert_eq!(
            local.alloc_image(101, "vmdk", 1 << 20, &quiet).unwrap(),
            "local:101/vm-101-disk-0.vmdk"
        );
        let size = local
            .size_info(&local.parse_volid("local:101/vm-101-disk-1.qcow2").unwrap())
            .unwrap()
            .0;
        assert_eq!(size, 1 << 20);
    }
}
