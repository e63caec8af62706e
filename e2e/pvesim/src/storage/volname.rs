//! Volume IDs and names, after pve-storage's `parse_volume_id`, `parse_name_dir` and the
//! `parse_volname` of `DirPlugin` (via `Plugin`) and `LvmThinPlugin`.
//!
//! * dir: `<vmid>/<name>` (`100/vm-100-disk-0.qcow2`), a linked clone
//!   `<basevmid>/<basename>/<vmid>/<name>` (`900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2`),
//!   `iso/<file>`, `import/<file>`.
//! * lvmthin: `vm-<vmid>-<rest>` or `base-<vmid>-<rest>`, one LV name: a thin linked clone does not
//!   record its base (`vm-102-disk-0`, see the note at the top of `LvmThinPlugin.pm`).

use regex::Regex;

use super::{Storage, StorageKind};
use crate::error::{Error, Result};

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
    /// The base image of a (dir) linked clone: (base VMID, base file name).
    pub base: Option<(u32, String)>,
    /// A template's base image (`base-...`).
    pub is_base: bool,
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

/// `parse_name_dir`: image file names of dir storages; (format, is a base image).
pub fn parse_name_dir(name: &str) -> Result<(String, bool)> {
    static NAMED: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"^(vm-|base-|subvol-)(\d+)-[^/\s]+\.(raw|qcow2|vmdk|subvol)$").expect("regex")
    });
    static OTHER: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"^(base-)?[^/\s]+\.(raw|qcow2|vmdk|subvol)$").expect("regex")
    });
    if let Some(caps) = NAMED.captures(name) {
        return Ok((caps[3].to_string(), &caps[1] == "base-"));
    }
    if name.starts_with("snap-") && name.ends_with(".qcow2") {
        return Err(Error::failed(format!(
            "'{name}' is a snapshot filename, not a volume!"
        )));
    }
    if let Some(caps) = OTHER.captures(name) {
        return Ok((caps[2].to_string(), caps.get(1).is_some()));
    }
    Err(Error::failed(format!(
        "unable to parse volume filename '{name}'"
    )))
}

/// The format of an `import/` file name (`SAFE_CHAR(_WITH_WHITESPACE)+.(ova|ovf|qcow2|raw|vmdk)`).
pub fn import_format(name: &str, allow_space: bool) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    let safe =
        |c: char| c.is_ascii_alphanumeric() || "-.+=_".contains(c) || (allow_space && c == ' ');
    if stem.is_empty() || !stem.chars().all(safe) {
        return None;
    }
    matches!(ext, "ova" | "ovf" | "qcow2" | "raw" | "vmdk").then(|| ext.to_string())
}

/// The disk number `n` of `vm-<vmid>-disk-<n>` or `base-<vmid>-disk-<n>` (any format, as
/// `find_free_diskname` counts).
pub fn disk_number(volid: &str, vmid: u32) -> Option<u32> {
    let name = volid.rsplit(['/', ':']).next()?;
    let rest = name
        .strip_prefix(&format!("vm-{vmid}-disk-"))
        .or_else(|| name.strip_prefix(&format!("base-{vmid}-disk-")))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Storage {
    fn volume(&self, volname: &str, vtype: VolType, name: &str, format: &str) -> Volume {
        Volume {
            storage: self.id.clone(),
            volname: volname.to_string(),
            vtype,
            name: name.to_string(),
            vmid: None,
            base: None,
            is_base: false,
            format: format.to_string(),
        }
    }

    /// `parse_volname` of the storage's plugin.
    pub fn parse_volname(&self, volname: &str) -> Result<Volume> {
        match self.kind {
            StorageKind::Lvmthin => self.parse_lvm_volname(volname),
            StorageKind::Dir => self.parse_dir_volname(volname),
        }
    }

    /// `LvmThinPlugin::parse_volname` (with `parse_lvm_name` first).
    fn parse_lvm_volname(&self, volname: &str) -> Result<Volume> {
        static LVM_NAME: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
            Regex::new(r"(?i)^[a-z0-9][a-z0-9\-_.]*[a-z0-9]$").expect("regex")
        });
        static IMAGE: std::sync::LazyLock<Regex> =
            std::sync::LazyLock::new(|| Regex::new(r"^(vm|base)-(\d+)-\S+$").expect("regex"));
        if !LVM_NAME.is_match(volname) {
            return Err(Error::failed(format!(
                "lvm name '{volname}' contains illegal characters"
            )));
        }
        let caps = IMAGE
            .captures(volname)
            .ok_or_else(|| Error::failed(format!("unable to parse lvm volume name '{volname}'")))?;
        let mut volume = self.volume(volname, VolType::Images, volname, "raw");
        volume.vmid = caps[2].parse().ok();
        volume.is_base = &caps[1] == "base";
        Ok(volume)
    }

    /// `Plugin::parse_volname` (the dir plugin's).
    fn parse_dir_volname(&self, volname: &str) -> Result<Volume> {
        static CLONE: std::sync::LazyLock<Regex> =
            std::sync::LazyLock::new(|| Regex::new(r"^(\d+)/(\S+)/(\d+)/(\S+)$").expect("regex"));
        static IMAGE: std::sync::LazyLock<Regex> =
            std::sync::LazyLock::new(|| Regex::new(r"^(\d+)/(\S+)$").expect("regex"));
        if let Some(caps) = CLONE.captures(volname) {
            parse_name_dir(&caps[2])?;
            let (format, is_base) = parse_name_dir(&caps[4])?;
            let mut volume = self.volume(volname, VolType::Images, &caps[4], &format);
            volume.vmid = caps[3].parse().ok();
            volume.base = caps[1].parse().ok().map(|id| (id, caps[2].to_string()));
            volume.is_base = is_base;
            return Ok(volume);
        }
        if let Some(caps) = IMAGE.captures(volname) {
            let (format, is_base) = parse_name_dir(&caps[2])?;
            let mut volume = self.volume(volname, VolType::Images, &caps[2], &format);
            volume.vmid = caps[1].parse().ok();
            volume.is_base = is_base;
            return Ok(volume);
        }
        if let Some(name) = volname.strip_prefix("iso/")
            && !name.contains('/')
            && let Some(ext) = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())
            && (ext == "iso" || ext == "img")
        {
            return Ok(self.volume(volname, VolType::Iso, name, "raw"));
        }
        if let Some(name) = volname.strip_prefix("import/")
            && let Some(format) = import_format(name, true)
        {
            return Ok(self.volume(volname, VolType::Import, name, &format));
        }
        Err(Error::failed(format!(
            "unable to parse directory volume name '{volname}'"
        )))
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
}
