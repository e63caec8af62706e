//! VM configuration after qemu-server: drives and NICs as property strings (with the keys the
//! schema file declares for them), snapshots, and the state file of one VM.
//!
//! PVE keeps `/etc/pve/nodes/<node>/qemu-server/<vmid>.conf`; the simulator keeps the same keys and
//! values in `qemu-server/<vmid>.json`, plus the power state PVE reads from the running QEMU process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::datadir::{DataDir, read_json, write_json};
use crate::error::{Error, Result};
use crate::schema::{self, Format, Params, Props, Type, api};

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

    /// Whether the VM is a template (`template: 1`).
    pub fn is_template(&self) -> bool {
        self.config.get("template").is_some_and(|t| t == "1")
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
            let typed = match api().qemu_config().get(key).and_then(|p| p.ty.clone()) {
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
    schema::is_valid_drivename(key)
}

/// `unusedN`.
pub fn is_unused_key(key: &str) -> bool {
    schema::split_index(key)
        .is_some_and(|(prefix, n)| prefix == "unused" && n < schema::index_count(prefix))
}

/// The keys of a config key's property string (`scsi5`: the `scsi[n]` format of the schema).
fn format_of(key: &str) -> Option<&'static Props> {
    match &api().qemu_config().get(key)?.format {
        Some(Format::Object(keys)) => Some(keys),
        _ => None,
    }
}

/// Parses a drive value (with the allocation schema, so `import-from` is allowed).
pub fn parse_drive(key: &str, value: &str) -> Option<Drive> {
    if !is_drive_key(key) && !is_unused_key(key) {
        return None;
    }
    let props = schema::parse_property_string(format_of(key)?, value, key).ok()?;
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
    if let Some(net) = (0..schema::index_count("net"))
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

/// `print_net`: `<model>=<mac>` first, then the other keys sorted.
fn print_net(net: &BTreeMap<String, String>) -> String {
    let model = net.get("model").cloned().unwrap_or_default();
    let mut parts = vec![match net.get("macaddr") {
        Some(mac) => format!("{model}={mac}"),
        None => model,
    }];
    let rest = net.iter().filter(|(k, _)| *k != "model" && *k != "macaddr");
    parts.extend(rest.map(|(k, v)| format!("{k}={v}")));
    parts.join(",")
}

/// A random MAC address with Proxmox's OUI BC:24:11 (`random_ether_addr`).
fn random_mac() -> Result<String> {
    let uuid = crate::datadir::random_uuid()?
        .replace('-', "")
        .to_ascii_uppercase();
    Ok(format!(
        "BC:24:11:{}:{}:{}",
        &uuid[0..2],
        &uuid[2..4],
        &uuid[4..6]
    ))
}

/// `add_random_macs`: every `netN` without a MAC address gets one, and is printed as PVE prints
/// it (`virtio=BC:24:11:..,bridge=vmbr0`).
pub fn add_random_macs(params: &mut Params) -> Result<()> {
    for (key, value) in params.iter_mut() {
        let is_net =
            schema::split_index(key).is_some_and(|(p, n)| p == "net" && n < schema::index_count(p));
        let Some(format) = format_of(key).filter(|_| is_net) else {
            continue;
        };
        let Ok(mut net) = schema::parse_property_string(format, value, key) else {
            continue;
        };
        if !net.contains_key("macaddr") {
            net.insert("macaddr".into(), random_mac()?);
            tracing::debug!(key, "added MAC address");
        }
        *value = print_net(&net);
    }
    Ok(())
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
    fn nics_get_a_mac_and_print_as_pve_does() {
        let mut p = Params::from([
            ("net0".to_string(), "virtio,bridge=vmbr0".to_string()),
            (
                "net1".to_string(),
                "model=e1000,firewall=1,bridge=vmbr1".to_string(),
            ),
            (
                "net2".to_string(),
                "virtio=BC:24:11:00:00:01,bridge=vmbr0".to_string(),
            ),
        ]);
        add_random_macs(&mut p).unwrap();
        let mac = regex::Regex::new(
            r"^virtio=BC:24:11:[0-9A-F]{2}:[0-9A-F]{2}:[0-9A-F]{2},bridge=vmbr0$",
        )
        .unwrap();
        assert!(mac.is_match(&p["net0"]), "{}", p["net0"]);
        assert!(
            p["net1"].starts_with("e1000=BC:24:11:")
                && p["net1"].ends_with(",bridge=vmbr1,firewall=1"),
            "{}",
            p["net1"]
        );
        assert_eq!(p["net2"], "virtio=BC:24:11:00:00:01,bridge=vmbr0");
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
