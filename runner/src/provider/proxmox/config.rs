//! Reading a VM config (`GET /nodes/{node}/qemu/{vmid}/config`) and volume IDs: disks in bus
//! order, property strings, sizes, the shape the migration needs, and the migration's mark.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::provider::{Firmware, OsFamily};

/// Disk buses in the order their disks are migrated (each by index: `scsi0`, `scsi1`...).
pub const BUSES: [(&str, u32); 4] = [("scsi", 31), ("virtio", 16), ("sata", 6), ("ide", 4)];
/// The tag a migrated VM carries.
pub const TAG: &str = "virtrigaud";
/// The description line naming the migration (its UID) that made a VM.
pub const MARK_PREFIX: &str = "virtrigaud-migration: ";

/// A VM config as key/value strings (numbers and booleans as PVE prints them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmConfig {
    entries: BTreeMap<String, String>,
}

/// A disk of a config: its key (`scsi0`), volume ID and options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    /// Config key (`scsi0`).
    pub key: String,
    /// `local:100/vm-100-disk-0.qcow2`; a host path (`/dev/sdb`) for passed-through devices.
    pub volid: String,
    /// The other keys of the property string (`size`, `media`, `iothread`...).
    pub options: BTreeMap<String, String>,
}

impl Drive {
    /// The `size=` option in bytes.
    pub fn size(&self) -> Option<u64> {
        self.options.get("size").and_then(|s| parse_size(s))
    }
}

impl VmConfig {
    /// The config from the API's JSON object.
    pub fn from_json(data: &Value) -> VmConfig {
        let entries = data
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => u8::from(*b).to_string(),
                    _ => return None,
                };
                Some((k.clone(), text))
            })
            .collect();
        VmConfig { entries }
    }

    /// A value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// The VM's name.
    pub fn name(&self) -> Option<&str> {
        self.get("name")
    }

    /// vCPUs: sockets x cores (both default to 1).
    pub fn cpus(&self) -> u32 {
        let n = |k| {
            self.get(k)
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(1)
        };
        n("sockets").max(1) * n("cores").max(1)
    }

    /// Memory in MiB: `memory` is `[current=]<MiB>` (PVE's default 512).
    pub fn memory_mib(&self) -> u64 {
        self.get("memory")
            .map(|m| property(m, "current").unwrap_or(m.to_string()))
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(512)
    }

    /// `bios: ovmf` is UEFI.
    pub fn firmware(&self) -> Firmware {
        match self.get("bios") {
            Some("ovmf") => Firmware::Uefi,
            _ => Firmware::Bios,
        }
    }

    /// The guest OS family of `ostype`.
    pub fn os(&self) -> OsFamily {
        os_family(self.get("ostype").unwrap_or("other"))
    }

    /// Whether the VM is a template.
    pub fn is_template(&self) -> bool {
        self.get("template") == Some("1")
    }

    /// The network interfaces (`net0`, `net1`...) in order, each as its property string.
    pub fn nics(&self) -> Vec<(u32, &str)> {
        let mut nics: Vec<(u32, &str)> = self
            .entries
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("net")?.parse().ok()?, v.as_str())))
            .collect();
        nics.sort_unstable();
        nics
    }

    /// The bridge of each interface, in order.
    pub fn bridges(&self) -> Vec<Option<String>> {
        self.nics()
            .iter()
            .map(|(_, v)| property(v, "bridge"))
            .collect()
    }

    /// The data disks in migration order: the boot disk (the first disk of `boot: order=`) first,
    /// then bus by bus ([`BUSES`]) by index. CD-ROMs (`media=cdrom`, `none`) are not disks;
    /// `efidisk0`, `tpmstate0` and `unusedN` are not data disks.
    pub fn disks(&self) -> Vec<Drive> {
        let mut disks: Vec<Drive> = BUSES
            .iter()
            .flat_map(|(bus, n)| (0..*n).map(move |i| format!("{bus}{i}")))
            .filter_map(|key| self.drive(&key))
            .filter(|d| d.options.get("media").map(String::as_str) != Some("cdrom"))
            .filter(|d| d.volid != "none" && d.volid != "cdrom")
            .collect();
        let order = self.boot_order();
        if let Some(i) = order
            .iter()
            .find_map(|k| disks.iter().position(|d| d.key == *k))
        {
            let first = disks.remove(i);
            disks.insert(0, first);
        }
        disks
    }

    /// The devices of `boot: order=a;b;c` (the legacy `boot: cdn` names none).
    fn boot_order(&self) -> Vec<String> {
        self.get("boot")
            .and_then(|b| property(b, "order"))
            .map(|o| o.split(';').map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The drive at `key`, parsed.
    pub fn drive(&self, key: &str) -> Option<Drive> {
        let value = self.get(key)?;
        let (first, options) = split_property(value);
        let volid = first.or_else(|| options.get("file").cloned())?;
        Some(Drive {
            key: key.to_string(),
            volid,
            options,
        })
    }

    /// Whether the config has an EFI vars disk or a TPM state volume (neither is migrated).
    pub fn special_volumes(&self) -> Vec<&str> {
        ["efidisk0", "tpmstate0"]
            .into_iter()
            .filter(|k| self.entries.contains_key(*k))
            .collect()
    }

    /// Whether the VM carries the mark of migration `owner`: the tag and the description line.
    pub fn has_mark(&self, owner: &str) -> bool {
        let tagged = self
            .get("tags")
            .is_some_and(|t| t.split([';', ',', ' ']).any(|t| t == TAG));
        let line = format!("{MARK_PREFIX}{owner}");
        let described = self
            .get("description")
            .is_some_and(|d| d.lines().any(|l| l.trim() == line));
        tagged && described
    }
}

/// The description a migrated VM gets: a line for people and the mark line.
pub fn mark_description(owner: &str) -> String {
    format!("Migrated by virtrigaud.\n{MARK_PREFIX}{owner}\n")
}

/// The guest OS family of a PVE `ostype`: `l24`/`l26` Linux, `win*`/`w2k*`/`wxp`/`wvista`
/// Windows.
pub fn os_family(ostype: &str) -> OsFamily {
    match ostype {
        "l24" | "l26" => OsFamily::Linux,
        t if t.starts_with("win") || t.starts_with("w2k") || t == "wxp" || t == "wvista" => {
            OsFamily::Windows
        }
        _ => OsFamily::Other,
    }
}

/// The `ostype` a created VM gets.
pub fn ostype(os: OsFamily) -> &'static str {
    match os {
        OsFamily::Linux => "l26",
        // Windows 10/2016/2019: the broadest of PVE's Windows types
        OsFamily::Windows => "win10",
        OsFamily::Other => "other",
    }
}

/// A property string `default,key=value,...`: the leading value without `=` (if any) and the
/// keys.
pub fn split_property(value: &str) -> (Option<String>, BTreeMap<String, String>) {
    let mut first = None;
    let mut options = BTreeMap::new();
    for (i, part) in value.split(',').enumerate() {
        match part.split_once('=') {
            Some((k, v)) => {
                options.insert(k.trim().to_string(), v.trim().to_string());
            }
            None if i == 0 => first = Some(part.trim().to_string()),
            None => {}
        }
    }
    (first, options)
}

/// One key of a property string.
pub fn property(value: &str, key: &str) -> Option<String> {
    split_property(value).1.remove(key)
}

/// A PVE size (`256M`, `32G`, `1T`, `512K`, bytes without a suffix) in bytes.
pub fn parse_size(size: &str) -> Option<u64> {
    let s = size.trim();
    let (digits, unit) = match s
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit() && *c != '.')
    {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return None,
    };
    if let Ok(n) = digits.parse::<u64>() {
        return n.checked_mul(1u64 << shift);
    }
    let f: f64 = digits.parse().ok()?;
    Some((f * (1u64 << shift) as f64).round() as u64)
}

/// A volume ID `<storage>:<volname>`.
pub fn split_volid(volid: &str) -> Option<(&str, &str)> {
    let (storage, volname) = volid.split_once(':')?;
    (!storage.is_empty() && !volname.is_empty() && !storage.contains('/'))
        .then_some((storage, volname))
}

/// An image on a directory storage: `<vmid>/<name>`, or a linked clone's
/// `<basevmid>/<basename>/<vmid>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirImage {
    /// The owning VM's directory (`images/<vmid>`).
    pub vmid: String,
    /// File name (`vm-101-disk-0.qcow2`).
    pub name: String,
    /// The base image of a linked clone: (VMID, file name).
    pub base: Option<(String, String)>,
}

impl DirImage {
    /// Parses the volname of an image; `None` when it is not one (or a part is not a plain name).
    pub fn parse(volname: &str) -> Option<DirImage> {
        let parts: Vec<&str> = volname.split('/').collect();
        let plain = |p: &str| !p.is_empty() && p != "." && p != ".." && !p.contains('\\');
        if !parts.iter().all(|p| plain(p)) {
            return None;
        }
        let number = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        match parts.as_slice() {
            [vmid, name] if number(vmid) => Some(DirImage {
                vmid: vmid.to_string(),
                name: name.to_string(),
                base: None,
            }),
            [bvmid, bname, vmid, name] if number(bvmid) && number(vmid) => Some(DirImage {
                vmid: vmid.to_string(),
                name: name.to_string(),
                base: Some((bvmid.to_string(), bname.to_string())),
            }),
            _ => None,
        }
    }

    /// The format its file name says (`qcow2`, `raw`, `vmdk`, `subvol`).
    pub fn format(&self) -> &str {
        self.name.rsplit_once('.').map_or("raw", |(_, ext)| ext)
    }

    /// The base's volname (`<basevmid>/<basename>`).
    pub fn base_volname(&self) -> Option<String> {
        self.base.as_ref().map(|(v, n)| format!("{v}/{n}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: Value) -> VmConfig {
        VmConfig::from_json(&json)
    }

    #[test]
    fn the_fixture_source_vm() {
        let c = config(serde_json::json!({
            "bios": "seabios", "boot": "order=scsi0;net0", "cores": 2, "memory": "2048",
            "name": "database-server", "net0": "virtio=BC:24:11:5E:D1:00,bridge=vmbr0,firewall=1",
            "ostype": "l26", "scsi0": "local:100/vm-100-disk-0.qcow2,iothread=1,size=256M",
            "scsi1": "local-lvm:vm-100-disk-0,iothread=1,size=64M", "sockets": 1,
            "description": "virtrigaud e2e source VM (pvesim fixture)"
        }));
        assert_eq!(c.name(), Some("database-server"));
        assert_eq!((c.cpus(), c.memory_mib()), (2, 2048));
        assert_eq!((c.firmware(), c.os()), (Firmware::Bios, OsFamily::Linux));
        let disks = c.disks();
        let keys: Vec<&str> = disks.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["scsi0", "scsi1"]);
        assert_eq!(disks[0].volid, "local:100/vm-100-disk-0.qcow2");
        assert_eq!(disks[1].size(), Some(64 << 20));
        assert_eq!(c.bridges(), [Some("vmbr0".to_string())]);
        assert!(!c.has_mark("x"));
    }

    #[test]
    fn disks_in_bus_order_boot_disk_first_without_cdroms_efi_or_tpm() {
        let c = config(serde_json::json!({
            "boot": "order=ide2;virtio1;scsi0", "bios": "ovmf", "sockets": 2, "cores": 4,
            "memory": "current=4096", "ostype": "win11",
            "ide2": "local:iso/x.iso,media=cdrom", "ide0": "none,media=cdrom",
            "sata0": "local-lvm:vm-1-disk-3,size=1G", "virtio1": "local-lvm:vm-1-disk-2,size=2G",
            "virtio0": "local-lvm:vm-1-disk-1,size=3G", "scsi10": "file=local:1/vm-1-disk-4.raw,size=4G",
            "scsi0": "local-lvm:vm-1-disk-0,size=5G", "efidisk0": "local-lvm:vm-1-disk-9,efitype=4m,size=4M",
            "tpmstate0": "local-lvm:vm-1-disk-8,size=4M", "unused0": "local-lvm:vm-1-disk-7",
            "net1": "virtio=AA,bridge=vmbr1", "net0": "e1000=BB,bridge=vmbr0"
        }));
        let keys: Vec<String> = c.disks().into_iter().map(|d| d.key).collect();
        assert_eq!(keys, ["virtio1", "scsi0", "scsi10", "virtio0", "sata0"]);
        assert_eq!(c.drive("scsi10").unwrap().volid, "local:1/vm-1-disk-4.raw");
        assert_eq!((c.cpus(), c.memory_mib()), (8, 4096));
        assert_eq!((c.firmware(), c.os()), (Firmware::Uefi, OsFamily::Windows));
        assert_eq!(c.special_volumes(), ["efidisk0", "tpmstate0"]);
        assert_eq!(c.bridges(), [Some("vmbr0".into()), Some("vmbr1".into())]);
    }

    #[test]
    fn sizes_ostypes_and_marks() {
        assert_eq!(parse_size("256M"), Some(256 << 20));
        assert_eq!(parse_size("32G"), Some(32 << 30));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("12X"), None);
        for (t, os) in [
            ("l26", OsFamily::Linux),
            ("win10", OsFamily::Windows),
            ("w2k8", OsFamily::Windows),
            ("wxp", OsFamily::Windows),
            ("solaris", OsFamily::Other),
            ("other", OsFamily::Other),
        ] {
            assert_eq!(os_family(t), os, "{t}");
        }
        for os in [OsFamily::Linux, OsFamily::Windows, OsFamily::Other] {
            assert_eq!(os_family(ostype(os)), os);
        }
        let c = config(
            serde_json::json!({"tags": "prod;virtrigaud", "description": mark_description("uid-1")}),
        );
        assert!(c.has_mark("uid-1"));
        assert!(!c.has_mark("uid-2"));
        let untagged = config(serde_json::json!({"description": mark_description("uid-1")}));
        assert!(!untagged.has_mark("uid-1"));
    }

    #[test]
    fn volume_ids() {
        assert_eq!(
            split_volid("local-lvm:vm-102-disk-0"),
            Some(("local-lvm", "vm-102-disk-0"))
        );
        assert_eq!(split_volid("/dev/sdb"), None);
        let clone = DirImage::parse("900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2").unwrap();
        assert_eq!(clone.vmid, "101");
        assert_eq!(clone.format(), "qcow2");
        assert_eq!(
            clone.base_volname().as_deref(),
            Some("900/base-900-disk-0.qcow2")
        );
        let plain = DirImage::parse("100/vm-100-disk-0.raw").unwrap();
        assert_eq!((plain.base.clone(), plain.format()), (None, "raw"));
        assert_eq!(DirImage::parse("100/../etc/passwd/1/x"), None);
        assert_eq!(DirImage::parse("import/x.qcow2"), None);
    }
}
