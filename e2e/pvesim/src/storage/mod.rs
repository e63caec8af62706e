//! Storages of the simulated node, after pve-storage's `DirPlugin` and `LvmThinPlugin`.
//!
//! * `local` (type `dir`): volumes are files, `<volname>` is a path below the storage directory
//!   (`100/vm-100-disk-0.qcow2` under `images/`, `import/<file>`, `iso/<file>` under
//!   `template/iso/`). Formats raw, qcow2 and vmdk; snapshots are qcow2 internal snapshots
//!   (`qemu-img snapshot -c`); linked clones are qcow2 overlays on a template's base image
//!   (`dir`).
//! * `local-lvm` (type `lvmthin`, VG `pve`, thin pool `data`): volumes are raw thin "logical
//!   volumes" `vm-<vmid>-disk-<n>`, kept as sparse files in the storage directory, with a device
//!   path `<data>/dev/pve/<lv>` that exists while the LV is active; snapshots and thin clones are
//!   sparse copies ([`lvm`]). Content `images` only, so PVE's own refusals of `import` or `iso`
//!   content there come out the same.
//!
//! Volume names (`volname`), format rules, disk naming and error messages follow pve-storage.

mod dir;
pub mod lvm;
mod volname;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use volname::{VolType, Volume, disk_number, import_format, parse_name_dir, parse_volume_id};

use crate::datadir::{DataDir, read_json, write_json};
use crate::error::{Error, Result};
use crate::qemu_img::Log;

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
    /// LVM volume group (lvmthin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vgname: Option<String>,
    /// LVM thin pool (lvmthin).
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
    /// The default node: `pve1` with `local` (dir: import, iso, images) and `local-lvm` (images,
    /// VG `pve`, thin pool `data`, as a default PVE install).
    pub fn default_config() -> Self {
        let storage =
            |kind, path: &str, content: &[&str], lvm: Option<(&str, &str)>| StorageConfig {
                kind,
                path: PathBuf::from(path),
                content: content.iter().map(|c| c.to_string()).collect(),
                vgname: lvm.map(|(vg, _)| vg.to_string()),
                thinpool: lvm.map(|(_, pool)| pool.to_string()),
            };
        NodeConfig {
            node: "pve1".to_string(),
            storages: BTreeMap::from([
                (
                    "local".to_string(),
                    storage(
                        StorageKind::Dir,
                        "storage/local",
                        &["images", "import", "iso"],
                        None,
                    ),
                ),
                (
                    "local-lvm".to_string(),
                    storage(
                        StorageKind::Lvmthin,
                        "storage/local-lvm",
                        &["images"],
                        Some(("pve", "data")),
                    ),
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

    /// The configuration as PVE's `storage.cfg` would hold it (for the digest).
    pub fn storage_cfg(&self, data: &DataDir) -> String {
        let mut text = String::new();
        for storage in self.all(data) {
            text.push_str(&format!("{}: {}\n", storage.kind.as_str(), storage.id));
            for (key, value) in storage.config_entries() {
                text.push_str(&format!("\t{key} {value}\n"));
            }
            text.push('\n');
        }
        text
    }

    /// `GET /storage/{storage}`: the storage's configuration with `storage` and `digest`.
    pub fn storage_json(&self, data: &DataDir, storage: &Storage) -> Value {
        use sha1::Digest as _;
        let digest = hex::encode(sha1::Sha1::digest(self.storage_cfg(data).as_bytes()));
        let mut entry = json!({
            "storage": storage.id,
            "type": storage.kind.as_str(),
            "digest": digest,
        });
        for (key, value) in storage.config_entries() {
            entry[key] = json!(value);
        }
        entry
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
    /// Backing volume (linked clones: `../<basevmid>/<basename>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Creation (change) time.
    pub ctime: i64,
    /// Content type.
    pub content: String,
}

/// `volume_size_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeInfo {
    /// Virtual size.
    pub size: u64,
    /// Format.
    pub format: String,
    /// Allocated bytes.
    pub used: u64,
    /// Backing file (`../900/base-900-disk-0.qcow2` for a linked clone).
    pub parent: Option<String>,
}

/// Storage features PVE asks a plugin about (`volume_has_feature`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Take a snapshot.
    Snapshot,
    /// Full copy (clone_disk, import-from).
    Copy,
    /// Linked clone of a base image.
    Clone,
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
    /// Volume group (lvmthin).
    pub vgname: Option<String>,
    /// Thin pool (lvmthin).
    pub thinpool: Option<String>,
    /// The data directory (the LVM device paths are below `<data>/dev/`).
    data_root: PathBuf,
}

impl Storage {
    fn new(data: &DataDir, id: &str, config: &StorageConfig) -> Self {
        Storage {
            id: id.to_string(),
            kind: config.kind,
            root: data.resolve(&config.path),
            content: config.content.clone(),
            vgname: config.vgname.clone(),
            thinpool: config.thinpool.clone(),
            data_root: data.root().to_path_buf(),
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

    /// The type-specific configuration keys with their values (`path` of a dir storage,
    /// `vgname` and `thinpool` of an LVM-thin one), then `content`.
    fn config_entries(&self) -> Vec<(&'static str, String)> {
        let mut entries = match self.kind {
            StorageKind::Dir => vec![("path", self.root.display().to_string())],
            StorageKind::Lvmthin => vec![
                ("thinpool", self.thinpool.clone().unwrap_or_default()),
                ("vgname", self.vg().to_string()),
            ],
        };
        entries.push(("content", self.content_string()));
        entries
    }

    fn subdirs(&self) -> Vec<PathBuf> {
        match self.kind {
            StorageKind::Dir => vec![
                self.root.join("images"),
                self.root.join("import"),
                self.root.join("template/iso"),
            ],
            StorageKind::Lvmthin => vec![self.root.clone(), self.dev_dir()],
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

    /// The volume's path as PVE's `path` gives it: the file of a dir volume, the device path
    /// `<data>/dev/<vg>/<lv>` of an LVM-thin one (which exists only while the LV is active).
    pub fn path(&self, volume: &Volume) -> PathBuf {
        match self.kind {
            StorageKind::Lvmthin => self.lv_dev(&volume.name),
            StorageKind::Dir => self.file(volume),
        }
    }

    /// The file holding the volume's data (for LVM-thin the sparse file behind the LV; the
    /// simulator's own work uses it directly, as PVE activates volumes before it uses them).
    pub fn file(&self, volume: &Volume) -> PathBuf {
        match (self.kind, volume.vtype) {
            (StorageKind::Lvmthin, _) => self.lv_file(&volume.name),
            (StorageKind::Dir, VolType::Images) => self
                .subdir(VolType::Images)
                .join(volume.vmid.unwrap_or_default().to_string())
                .join(&volume.name),
            (StorageKind::Dir, vtype) => self.subdir(vtype).join(&volume.name),
        }
    }

    /// `volume_size_info`.
    pub fn size_info(&self, volume: &Volume) -> Result<SizeInfo> {
        match self.kind {
            StorageKind::Lvmthin => self.lvm_size_info(volume),
            StorageKind::Dir => self.dir_size_info(volume),
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
        match self.kind {
            StorageKind::Lvmthin => self.lvm_list_images(vmid),
            StorageKind::Dir => self.dir_list_images(vmid),
        }
    }

    /// The next free `vm-<vmid>-disk-<n>` number on this storage (`find_free_diskname`).
    fn free_disk_number(&self, vmid: u32) -> Result<u32> {
        let used: Vec<u32> = self
            .list_images(Some(vmid))?
            .iter()
            .filter_map(|v| disk_number(&v.volid, vmid))
            .collect();
        Ok((0..).find(|n| !used.contains(n)).unwrap_or_default())
    }

    /// `vdisk_alloc`: a new image `vm-<vmid>-disk-<n>` (the first free `n` of that VM on this
    /// storage).
    pub fn alloc_image(&self, vmid: u32, format: &str, size: u64, log: Log) -> Result<String> {
        let (valid, _) = self.formats();
        if !valid.contains(&format) || format == "subvol" {
            return Err(Error::failed(format!("unsupported format '{format}'")));
        }
        let n = self.free_disk_number(vmid)?;
        match self.kind {
            StorageKind::Dir => self.dir_alloc(vmid, n, format, size, log),
            StorageKind::Lvmthin => self.lvm_alloc(vmid, n, size, log),
        }
    }

    /// `clone_image`: a linked clone of a base image for VM `vmid`; returns its volume ID.
    pub fn clone_image(&self, base: &Volume, vmid: u32, log: Log) -> Result<String> {
        if !base.is_base {
            return Err(Error::failed("clone_image only works on base images"));
        }
        let n = self.free_disk_number(vmid)?;
        match self.kind {
            StorageKind::Dir => self.dir_clone(base, vmid, n, log),
            StorageKind::Lvmthin => self.lvm_clone(base, vmid, n, log),
        }
    }

    /// `create_base`: turns a VM's image into a template's base image; returns its volume ID.
    pub fn create_base(&self, volume: &Volume) -> Result<String> {
        if volume.is_base {
            return Err(Error::failed("create_base not possible with base image"));
        }
        match self.kind {
            StorageKind::Dir => self.dir_create_base(volume),
            StorageKind::Lvmthin => self.lvm_create_base(volume),
        }
    }

    /// `vdisk_free`: removes a volume (with its LVM-thin snapshots). A dir base image still used
    /// by a linked clone stays (LVM-thin allows deleting it: its clones are full thin snapshots).
    pub fn free(&self, volume: &Volume) -> Result<()> {
        match self.kind {
            StorageKind::Dir => self.dir_free(volume),
            StorageKind::Lvmthin => self.lvm_free(volume),
        }
    }

    /// `volume_is_base_and_used`: whether a linked clone uses this base image (never on
    /// LVM-thin, which does not track its clones).
    pub fn base_in_use(&self, volume: &Volume) -> Result<bool> {
        match self.kind {
            StorageKind::Dir => self.dir_base_in_use(volume),
            StorageKind::Lvmthin => Ok(false),
        }
    }

    /// `volume_has_feature` for the features the simulator uses (keys `snap`, `base` and
    /// `current` as in the plugins).
    pub fn has_feature(&self, feature: Feature, volume: &Volume, snapname: Option<&str>) -> bool {
        let key = match (snapname, volume.is_base) {
            (Some(_), _) => "snap",
            (None, true) => "base",
            (None, false) => "current",
        };
        let format = volume.format.as_str();
        match (self.kind, feature) {
            (StorageKind::Lvmthin, Feature::Snapshot) => key == "current",
            (StorageKind::Lvmthin, Feature::Clone) => key != "current",
            (StorageKind::Lvmthin, Feature::Copy) => true,
            (StorageKind::Dir, Feature::Snapshot) => key != "base" && format == "qcow2",
            (StorageKind::Dir, Feature::Clone) => key == "base" && format != "subvol",
            (StorageKind::Dir, Feature::Copy) => match key {
                "snap" => format == "qcow2",
                _ => matches!(format, "qcow2" | "raw" | "vmdk"),
            },
        }
    }

    /// `volume_snapshot`.
    pub fn snapshot(&self, volume: &Volume, snap: &str, log: Log) -> Result<()> {
        match self.kind {
            StorageKind::Dir => self.dir_snapshot(volume, snap, log),
            StorageKind::Lvmthin => self.lvm_snapshot(volume, snap, log),
        }
    }

    /// `volume_snapshot_delete`.
    pub fn snapshot_delete(&self, volume: &Volume, snap: &str, log: Log) -> Result<()> {
        match self.kind {
            StorageKind::Dir => self.dir_snapshot_delete(volume, snap, log),
            StorageKind::Lvmthin => self.lvm_snapshot_delete(volume, snap),
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
mod tests;
