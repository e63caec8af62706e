//! VM configuration after qemu-server: the config keys a PVE VM has (with their schema, for
//! validation), drives as property strings, snapshots, and the state file of one VM.
//!
//! PVE keeps `/etc/pve/nodes/<node>/qemu-server/<vmid>.conf`; the simulator keeps the same keys and
//! values in `qemu-server/<vmid>.json`, plus the power state PVE reads from the running QEMU process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::datadir::{DataDir, read_json, write_json};
use crate::error::{Error, Result};
use crate::schema::{self, Params, Prop, Type};

/// IDE drives `ide0..ide3`.
pub const MAX_IDE: u32 = 4;
/// SATA drives `sata0..sata5`.
pub const MAX_SATA: u32 = 6;
/// SCSI drives `scsi0..scsi30`.
pub const MAX_SCSI: u32 = 31;
/// VirtIO drives `virtio0..virtio15`.
pub const MAX_VIRTIO: u32 = 16;
/// Network devices `net0..net31`.
pub const MAX_NETS: u32 = 32;
/// Unused volumes `unused0..unused255`.
pub const MAX_UNUSED: u32 = 256;

/// One VM: its config, snapshots and power state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmState {
    /// Config keys and values (`name`, `cores`, `scsi0`, ...).
    pub config: BTreeMap<String, String>,
    /// Snapshots by name.
    #[serde(default)]
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Set while the VM "runs": the Unix time it was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since: Option<i64>,
}

/// One snapshot: the config at that time plus PVE's snapshot metadata.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// The VM config when the snapshot was taken.
    pub config: BTreeMap<String, String>,
    /// Creation time.
    pub snaptime: i64,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Parent snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// `prepare` or `delete` while a task works on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapstate: Option<String>,
}

/// `cfs_config_path`, as it appears in PVE's messages.
pub fn config_path(node: &str, vmid: u32) -> String {
    format!("nodes/{node}/qemu-server/{vmid}.conf")
}

impl VmState {
    /// `load_config`: fails with PVE's message when the VM does not exist.
    pub fn load(data: &DataDir, node: &str, vmid: u32) -> Result<VmState> {
        read_json(&data.vm_file(vmid))?.ok_or_else(|| {
            Error::failed(format!(
                "Configuration file '{}' does not exist",
                config_path(node, vmid)
            ))
        })
    }

    /// Whether VM `vmid` exists.
    pub fn exists(data: &DataDir, vmid: u32) -> bool {
        data.vm_file(vmid).is_file()
    }

    /// Writes the state file.
    pub fn save(&self, data: &DataDir, vmid: u32) -> Result<()> {
        write_json(&data.vm_file(vmid), self)
    }

    /// Removes the state file (`destroy_config`).
    pub fn remove(data: &DataDir, vmid: u32) -> Result<()> {
        let path = data.vm_file(vmid);
        std::fs::remove_file(&path).map_err(Error::io(format!("remove {}", path.display())))
    }

    /// All VMIDs, ascending.
    pub fn list(data: &DataDir) -> Vec<u32> {
        let mut ids: Vec<u32> = std::fs::read_dir(data.vm_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_suffix(".json")?
                            .parse()
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// `check_lock`.
    pub fn check_lock(&self) -> Result<()> {
        match self.config.get("lock") {
            Some(lock) => Err(Error::failed(format!("VM is locked ({lock})"))),
            None => Ok(()),
        }
    }

    /// The SHA-1 digest PVE reports for the config (of the config file's text).
    pub fn digest(&self) -> String {
        use sha1::Digest as _;
        hex::encode(sha1::Sha1::digest(conf_text(&self.config).as_bytes()))
    }

    /// Whether the VM is running.
    pub fn is_running(&self) -> bool {
        self.running_since.is_some()
    }

    /// The VM name (`VM <id>` when unset, as vmstatus does).
    pub fn name(&self, vmid: u32) -> String {
        self.config
            .get("name")
            .cloned()
            .unwrap_or_else(|| format!("VM {vmid}"))
    }

    /// Configured memory in MiB (`memory: [current=]<MiB>`, default 512).
    pub fn memory_mib(&self) -> u64 {
        self.config
            .get("memory")
            .and_then(|m| {
                m.trim_start_matches("current=")
                    .split(',')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(512)
    }

    /// vCPUs: sockets x cores (or `vcpus`).
    pub fn cpus(&self) -> u64 {
        let get = |k: &str, d: u64| self.config.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        let total = get("sockets", 1) * get("cores", 1);
        match get("vcpus", 0) {
            0 => total,
            v => v,
        }
    }

    /// Size of the boot disk (PVE's `maxdisk`), from the drive's `size=`.
    pub fn boot_disk_size(&self) -> u64 {
        let first = boot_disk(&self.config);
        first
            .and_then(|key| parse_drive(&key, self.config.get(&key)?))
            .and_then(|d| schema::parse_size(d.props.get("size")?))
            .unwrap_or(0)
    }
}

/// The config as PVE writes it to `<vmid>.conf` (description as `#` comment lines, then sorted keys).
pub fn conf_text(config: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    if let Some(description) = config.get("description") {
        for line in description.lines() {
            text.push_str(&format!("#{line}\n"));
        }
    }
    for (key, value) in config.iter().filter(|(k, _)| *k != "description") {
        text.push_str(&format!("{key}: {value}\n"));
    }
    text
}

/// Config values as the API returns them: integers and booleans as JSON numbers (PVE's
/// `check_type` on load), everything else as strings.
pub fn config_json(config: &BTreeMap<String, String>) -> serde_json::Map<String, Value> {
    config
        .iter()
        .map(|(key, value)| {
            let typed = match config_prop(key).map(|p| p.ty) {
                Some(Type::Integer) | Some(Type::Boolean) => {
                    value.parse::<i64>().map(Value::from).ok()
                }
                Some(Type::Number) => value.parse::<f64>().ok().map(Value::from),
                _ => None,
            };
            (
                key.clone(),
                typed.unwrap_or_else(|| Value::from(value.as_str())),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// drives
// ---------------------------------------------------------------------------------------------------

/// `NEW_DISK_RE`: `[<storage>:]<size in GiB>`; returns (storage, size).
pub fn parse_new_disk(file: &str) -> Option<(Option<&str>, f64)> {
    let (storage, size) = match file.split_once(':') {
        Some((s, size)) => {
            if s.is_empty() || s.contains(['/', ':']) || s.contains(char::is_whitespace) {
                return None;
            }
            (Some(s), size)
        }
        None => (None, file),
    };
    let valid = {
        let (int, frac) = size.split_once('.').unwrap_or((size, "0"));
        !int.is_empty()
            && !frac.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit())
    };
    if !valid {
        return None;
    }
    Some((storage, size.parse().ok()?))
}

/// A parsed drive (`parse_drive`).
#[derive(Clone, Debug)]
pub struct Drive {
    /// The config key (`scsi0`).
    pub key: String,
    /// Its properties (`file`, `size`, `format`, ...).
    pub props: BTreeMap<String, String>,
}

impl Drive {
    /// The volume (or `none`/`cdrom`/path/new-disk syntax).
    pub fn file(&self) -> &str {
        self.props
            .get("file")
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// `drive_is_cdrom`.
    pub fn is_cdrom(&self) -> bool {
        self.props.get("media").is_some_and(|m| m == "cdrom")
    }

    /// `print_drive`: `file` first, then the other keys sorted.
    pub fn print(&self) -> String {
        let mut parts = vec![self.file().to_string()];
        parts.extend(
            self.props
                .iter()
                .filter(|(k, _)| *k != "file")
                .map(|(k, v)| format!("{k}={v}")),
        );
        parts.join(",")
    }
}

/// `is_valid_drivename` (without `unusedN`).
pub fn is_drive_key(key: &str) -> bool {
    let numbered = |prefix: &str, max: u32| {
        key.strip_prefix(prefix)
            .filter(|n| !n.is_empty() && (n == &"0" || !n.starts_with('0')))
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n < max)
    };
    numbered("ide", MAX_IDE)
        || numbered("sata", MAX_SATA)
        || numbered("scsi", MAX_SCSI)
        || numbered("virtio", MAX_VIRTIO)
        || key == "efidisk0"
        || key == "tpmstate0"
}

/// `unusedN`.
pub fn is_unused_key(key: &str) -> bool {
    key.strip_prefix("unused")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n < MAX_UNUSED && key.len() > 6)
}

/// Parses a drive value (with the allocation schema, so `import-from` is allowed).
pub fn parse_drive(key: &str, value: &str) -> Option<Drive> {
    let fmt = drive_format(key)?;
    let props = schema::parse_property_string(fmt, value, key).ok()?;
    Some(Drive {
        key: key.to_string(),
        props,
    })
}

/// Drives of a config in PVE's order (ide, sata, scsi, virtio, efidisk, tpmstate).
pub fn drives(config: &BTreeMap<String, String>) -> Vec<Drive> {
    let mut keys: Vec<&String> = config.keys().filter(|k| is_drive_key(k)).collect();
    keys.sort_by_key(|k| drive_order(k));
    keys.into_iter()
        .filter_map(|k| parse_drive(k, &config[k]))
        .collect()
}

fn drive_order(key: &str) -> (u32, u32) {
    let bus = ["ide", "sata", "scsi", "virtio", "efidisk", "tpmstate"]
        .iter()
        .position(|p| key.starts_with(p) && key[p.len()..].bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or(9) as u32;
    let n = key
        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .unwrap_or(0);
    (bus, n)
}

/// Volumes of the config that belong to storages: drives (not cd-roms without a volume) and `unusedN`.
pub fn volumes(config: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut result: Vec<(String, String)> = drives(config)
        .into_iter()
        .filter(|d| d.file().contains(':') && !d.file().starts_with('/'))
        .map(|d| (d.key.clone(), d.file().to_string()))
        .collect();
    for (key, value) in config.iter().filter(|(k, _)| is_unused_key(k)) {
        if let Some(volid) = value.split(',').next() {
            result.push((key.clone(), volid.to_string()));
        }
    }
    result
}

/// `resolve_first_disk`: the first non-cd-rom (or cd-rom) drive.
fn first_disk(config: &BTreeMap<String, String>, cdrom: bool) -> Option<String> {
    drives(config)
        .into_iter()
        .filter(|d| !d.key.starts_with("efidisk") && !d.key.starts_with("tpmstate"))
        .find(|d| d.is_cdrom() == cdrom)
        .map(|d| d.key)
}

fn boot_disk(config: &BTreeMap<String, String>) -> Option<String> {
    if let Some(order) = config.get("boot").and_then(|b| b.strip_prefix("order="))
        && let Some(first) = order
            .split(';')
            .find(|d| is_drive_key(d) && config.contains_key(*d))
    {
        return Some(first.to_string());
    }
    first_disk(config, false)
}

/// `get_default_bootdevices` as `order=...`.
pub fn default_boot(config: &BTreeMap<String, String>) -> String {
    let mut devices = Vec::new();
    devices.extend(first_disk(config, false));
    devices.extend(first_disk(config, true));
    if let Some(net) = (0..MAX_NETS)
        .map(|i| format!("net{i}"))
        .find(|k| config.contains_key(k))
    {
        devices.push(net);
    }
    format!("order={}", devices.join(";"))
}

/// PVE's `format_size`: bytes in the largest exact unit (`32G`, `512M`, ...).
pub fn format_size(size: u64) -> String {
    let kb = size / 1024;
    if kb * 1024 != size {
        return size.to_string();
    }
    let mb = kb / 1024;
    if mb * 1024 != kb {
        return format!("{kb}K");
    }
    let gb = mb / 1024;
    if gb * 1024 != mb {
        return format!("{mb}M");
    }
    let tb = gb / 1024;
    if tb * 1024 != gb {
        return format!("{gb}G");
    }
    format!("{tb}T")
}

/// NIC models of qemu-server.
pub const NIC_MODELS: &[&str] = &[
    "rtl8139",
    "ne2k_pci",
    "e1000",
    "pcnet",
    "virtio",
    "ne2k_isa",
    "i82551",
    "i82557b",
    "i82559er",
    "vmxnet3",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
];

/// Fills in a MAC address where a `netN` has none (`add_random_macs`), with Proxmox's OUI BC:24:11.
pub fn add_random_macs(params: &mut Params) -> Result<()> {
    for (key, value) in params.iter_mut().filter(|(k, _)| k.starts_with("net")) {
        let mut parts: Vec<String> = value.split(',').map(str::to_string).collect();
        let Some(first) = parts.first_mut() else {
            continue;
        };
        let has_mac = |p: &str| {
            p.split_once('=')
                .is_some_and(|(k, _)| k == "macaddr" || NIC_MODELS.contains(&k))
        };
        if NIC_MODELS.contains(&first.as_str()) && !parts.iter().any(|p| has_mac(p)) {
            let uuid = crate::datadir::random_uuid()?.replace('-', "");
            let b = uuid.as_bytes();
            let mac = format!(
                "BC:24:11:{}:{}:{}",
                std::str::from_utf8(&b[0..2]).unwrap_or("00"),
                std::str::from_utf8(&b[2..4]).unwrap_or("00"),
                std::str::from_utf8(&b[4..6]).unwrap_or("00")
            )
            .to_ascii_uppercase();
            parts[0] = format!("{}={mac}", parts[0]);
            tracing::debug!(key, "added MAC address");
        }
        *value = parts.join(",");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// schema (qemu-server json_config_properties, the subset the simulator knows)
// ---------------------------------------------------------------------------------------------------

macro_rules! drive_format {
    ($($extra:expr),* $(,)?) => {
        &[
            ("file", Prop::string().default_key().verify(schema::verify_volume_id_or_qm_path)),
            ("volume", Prop::alias("file")),
            ("media", Prop::string().optional().one_of(&["cdrom", "disk"])),
            ("snapshot", Prop::boolean().optional()),
            ("cache", Prop::string().optional().one_of(&["none", "writethrough", "writeback", "unsafe", "directsync"])),
            ("format", Prop::string().optional().one_of(&["raw", "cow", "qcow", "qed", "qcow2", "vmdk", "cloop"])),
            ("size", Prop::string().optional().verify(schema::verify_disk_size)),
            ("backup", Prop::boolean().optional()),
            ("replicate", Prop::boolean().optional()),
            ("rerror", Prop::string().optional().one_of(&["ignore", "report", "stop"])),
            ("werror", Prop::string().optional().one_of(&["enospc", "ignore", "report", "stop"])),
            ("aio", Prop::string().optional().one_of(&["native", "threads", "io_uring"])),
            ("discard", Prop::string().optional().one_of(&["ignore", "on"])),
            ("detect_zeroes", Prop::boolean().optional()),
            ("serial", Prop::string().optional().verify(schema::verify_urlencoded).max_length(60)),
            ("shared", Prop::boolean().optional()),
            ("import-from", Prop::string().optional().verify(schema::verify_volume_id_or_absolute_path)),
            ("mbps", Prop::number().optional()),
            ("mbps_rd", Prop::number().optional()),
            ("mbps_wr", Prop::number().optional()),
            ("iops", Prop::integer().optional()),
            ("iops_rd", Prop::integer().optional()),
            ("iops_wr", Prop::integer().optional()),
            $($extra),*
        ]
    };
}

static IDE_FMT: &[(&str, Prop)] = drive_format!(
    (
        "model",
        Prop::string()
            .optional()
            .verify(schema::verify_urlencoded)
            .max_length(120)
    ),
    ("ssd", Prop::boolean().optional()),
    (
        "wwn",
        Prop::string().optional().pattern("0x[0-9a-fA-F]{16}")
    ),
);
static SATA_FMT: &[(&str, Prop)] = drive_format!(
    ("ssd", Prop::boolean().optional()),
    (
        "wwn",
        Prop::string().optional().pattern("0x[0-9a-fA-F]{16}")
    ),
);
static SCSI_FMT: &[(&str, Prop)] = drive_format!(
    ("iothread", Prop::boolean().optional()),
    (
        "product",
        Prop::string().optional().pattern(r"[A-Za-z0-9\-_\s]{0,16}")
    ),
    ("queues", Prop::integer().optional().range(Some(2), None)),
    ("ro", Prop::boolean().optional()),
    ("scsiblock", Prop::boolean().optional()),
    ("ssd", Prop::boolean().optional()),
    (
        "vendor",
        Prop::string().optional().pattern(r"[A-Za-z0-9\-_\s]{0,8}")
    ),
    (
        "wwn",
        Prop::string().optional().pattern("0x[0-9a-fA-F]{16}")
    ),
);
static VIRTIO_FMT: &[(&str, Prop)] = drive_format!(
    ("iothread", Prop::boolean().optional()),
    ("ro", Prop::boolean().optional()),
);
static EFIDISK_FMT: &[(&str, Prop)] = &[
    (
        "file",
        Prop::string()
            .default_key()
            .verify(schema::verify_volume_id_or_qm_path),
    ),
    ("volume", Prop::alias("file")),
    (
        "format",
        Prop::string()
            .optional()
            .one_of(&["raw", "cow", "qcow", "qed", "qcow2", "vmdk", "cloop"]),
    ),
    (
        "size",
        Prop::string().optional().verify(schema::verify_disk_size),
    ),
    ("efitype", Prop::string().optional().one_of(&["2m", "4m"])),
    ("pre-enrolled-keys", Prop::boolean().optional()),
    (
        "import-from",
        Prop::string()
            .optional()
            .verify(schema::verify_volume_id_or_absolute_path),
    ),
];
static UNUSED_FMT: &[(&str, Prop)] = &[(
    "file",
    Prop::string()
        .default_key()
        .verify(schema::verify_volume_id),
)];

fn drive_format(key: &str) -> Option<&'static [(&'static str, Prop)]> {
    if !is_drive_key(key) && !is_unused_key(key) {
        return None;
    }
    Some(if key.starts_with("ide") {
        IDE_FMT
    } else if key.starts_with("sata") {
        SATA_FMT
    } else if key.starts_with("scsi") {
        SCSI_FMT
    } else if key.starts_with("virtio") {
        VIRTIO_FMT
    } else if key.starts_with("unused") {
        UNUSED_FMT
    } else {
        EFIDISK_FMT
    })
}

static MEMORY_FMT: &[(&str, Prop)] = &[(
    "current",
    Prop::integer().default_key().range(Some(16), None),
)];

static BOOT_FMT: &[(&str, Prop)] = &[
    (
        "legacy",
        Prop::string()
            .optional()
            .default_key()
            .pattern("[acdn]{1,4}"),
    ),
    ("order", Prop::string().optional().verify(verify_boot_order)),
];

fn verify_boot_order(value: &str) -> Result<(), String> {
    for dev in value.split([';', ',', ' ']).filter(|d| !d.is_empty()) {
        let net = dev
            .strip_prefix("net")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n < MAX_NETS);
        let usb = dev
            .strip_prefix("usb")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some();
        let pci = dev
            .strip_prefix("hostpci")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some();
        let special = dev.starts_with("efidisk") || dev.starts_with("tpmstate");
        if !(is_drive_key(dev) && !special || net || usb || pci) {
            return Err(format!("invalid boot device '{dev}'\n"));
        }
    }
    Ok(())
}

static NET_FMT: &[(&str, Prop)] = &[
    ("model", Prop::string().default_key().one_of(NIC_MODELS)),
    ("macaddr", Prop::string().optional().verify(verify_mac)),
    ("bridge", Prop::string().optional().pattern(r"[-_.\w\d]+")),
    (
        "queues",
        Prop::integer().optional().range(Some(0), Some(64)),
    ),
    ("rate", Prop::number().optional()),
    ("tag", Prop::integer().optional().range(Some(1), Some(4094))),
    (
        "trunks",
        Prop::string()
            .optional()
            .pattern(r"\d+(?:-\d+)?(?:;\d+(?:-\d+)?)*"),
    ),
    ("firewall", Prop::boolean().optional()),
    ("link_down", Prop::boolean().optional()),
    (
        "mtu",
        Prop::integer().optional().range(Some(1), Some(65520)),
    ),
    ("rtl8139", Prop::alias("macaddr")),
    ("ne2k_pci", Prop::alias("macaddr")),
    ("e1000", Prop::alias("macaddr")),
    ("pcnet", Prop::alias("macaddr")),
    ("virtio", Prop::alias("macaddr")),
    ("ne2k_isa", Prop::alias("macaddr")),
    ("i82551", Prop::alias("macaddr")),
    ("i82557b", Prop::alias("macaddr")),
    ("i82559er", Prop::alias("macaddr")),
    ("vmxnet3", Prop::alias("macaddr")),
    ("e1000-82540em", Prop::alias("macaddr")),
    ("e1000-82544gc", Prop::alias("macaddr")),
    ("e1000-82545em", Prop::alias("macaddr")),
    ("e1000e", Prop::alias("macaddr")),
];

/// `pve-qm-net`: the model aliases (`virtio=<mac>`) also set the model, which the generic
/// property-string parser does not know; check the value with the model key restored.
fn verify_net(value: &str) -> Result<(), String> {
    let mut model = None;
    let rewritten: Vec<String> = value
        .split(',')
        .map(|part| match part.split_once('=') {
            Some((k, v)) if NIC_MODELS.contains(&k) => {
                model = Some(k.to_string());
                format!("macaddr={v}")
            }
            _ => part.to_string(),
        })
        .collect();
    let mut text = rewritten.join(",");
    if let Some(m) = model {
        text = format!("model={m},{text}");
    }
    schema::parse_property_string(NET_FMT, &text, "").map(|_| ())
}

fn verify_mac(value: &str) -> Result<(), String> {
    let parts: Vec<&str> = value.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0);
    if ok {
        Ok(())
    } else {
        Err("value does not look like a valid unicast MAC address\n".to_string())
    }
}

const OSTYPES: &[&str] = &[
    "other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11", "l24",
    "l26", "solaris",
];
const SCSIHW: &[&str] = &[
    "lsi",
    "lsi53c810",
    "virtio-scsi-pci",
    "virtio-scsi-single",
    "megasas",
    "pvscsi",
];

/// The schema of a config key (`json_config_properties(..., with_disk_alloc)`).
pub fn config_prop(key: &str) -> Option<Prop> {
    let p =
        match key {
            "name" => Prop::string().verify(schema::verify_dns_name),
            "description" => Prop::string().max_length(8192),
            "memory" => Prop::string().property_string(MEMORY_FMT),
            "balloon" => Prop::integer().range(Some(0), None),
            "cores" | "sockets" => Prop::integer().range(Some(1), None),
            "vcpus" => Prop::integer().range(Some(1), None),
            "cpu" => Prop::string(),
            "cpulimit" => Prop::number().range(Some(0), Some(128)),
            "numa" | "onboot" | "protection" | "template" | "acpi" | "kvm" | "tablet"
            | "localtime" => Prop::boolean(),
            "bios" => Prop::string().one_of(&["seabios", "ovmf"]),
            "ostype" => Prop::string().one_of(OSTYPES),
            "scsihw" => Prop::string().one_of(SCSIHW),
            "boot" => Prop::string().property_string(BOOT_FMT),
            "bootdisk" => Prop::string().pattern(r"(ide|sata|scsi|virtio)\d+"),
            "agent" | "vga" | "machine" | "startup" | "hotplug" | "args" | "smbios1" | "meta" => {
                Prop::string()
            }
            "vmgenid" => Prop::string()
                .pattern(r"(?:[a-fA-F0-9]{8}(?:-[a-fA-F0-9]{4}){3}-[a-fA-F0-9]{12}|[01])"),
            "tags" => Prop::string().verify(schema::verify_tag_list),
            k if is_drive_key(k) || is_unused_key(k) => {
                Prop::string().property_string(drive_format(k)?)
            }
            k if k
                .strip_prefix("net")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n < MAX_NETS) =>
            {
                Prop::string().verify(verify_net)
            }
            _ => return None,
        };
    Some(p.optional())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_disk_syntax() {
        assert_eq!(parse_new_disk("local:0"), Some((Some("local"), 0.0)));
        assert_eq!(parse_new_disk("32"), Some((None, 32.0)));
        assert_eq!(parse_new_disk("local:1.5"), Some((Some("local"), 1.5)));
        assert_eq!(parse_new_disk("local:100/vm-100-disk-0.raw"), None);
        assert_eq!(parse_new_disk("local:import/x.qcow2"), None);
    }

    #[test]
    fn drives_and_sizes() {
        let d = parse_drive(
            "scsi0",
            "local:0,import-from=local:import/a.qcow2,iothread=on",
        )
        .unwrap();
        assert_eq!(d.file(), "local:0");
        assert_eq!(d.props["iothread"], "1");
        assert!(parse_drive("virtio0", "local:0,ssd=1").is_none());
        assert!(is_drive_key("scsi30") && !is_drive_key("scsi31") && !is_drive_key("scsi01"));
        assert_eq!(format_size(32 << 30), "32G");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(3 << 20), "3M");
    }

    #[test]
    fn net_with_model_alias() {
        assert!(verify_net("virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1").is_ok());
        assert!(verify_net("virtio,bridge=vmbr0").is_ok());
        assert!(verify_net("bogus=1").is_err());
        let mut p = Params::from([("net0".to_string(), "virtio,bridge=vmbr0".to_string())]);
        add_random_macs(&mut p).unwrap();
        assert!(p["net0"].starts_with("virtio=BC:24:11:"), "{}", p["net0"]);
    }

    #[test]
    fn default_boot_order() {
        let config = BTreeMap::from([
            (
                "scsi0".to_string(),
                "local:100/vm-100-disk-0.qcow2,size=1G".to_string(),
            ),
            ("ide2".to_string(), "none,media=cdrom".to_string()),
            (
                "net0".to_string(),
                "virtio=BC:24:11:00:00:01,bridge=vmbr0".to_string(),
            ),
        ]);
        assert_eq!(default_boot(&config), "order=scsi0;ide2;net0");
    }
}
