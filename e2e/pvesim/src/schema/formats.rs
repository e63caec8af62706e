//! The registered formats the schema file names (`"format": "pve-vmid"`), as `check_format` of
//! pve-common treats them: a `-list` suffix checks every element of a `split_list`, `-opt` checks
//! a non-empty value, a property-string format parses. The verifiers are pve-common's,
//! pve-storage's and qemu-server's; their `die` texts are the messages.
//!
//! The file names formats without defining them. Those the simulator needs are verified here (or
//! declared in [`super::amend::FORMATS`] when they are property strings); [`UNVERIFIED`] lists the
//! rest, which are accepted as PVE would accept a valid value. A name in neither is PVE's
//! `undefined format`, and a test checks that no route of the simulator reaches one.

use std::collections::HashMap;
use std::sync::Mutex;

use regex::Regex;

use super::{api, check};

/// Formats of parameters the simulator accepts unchecked: the file names them without their
/// definition and the simulator does nothing with those parameters beyond storing them.
pub const UNVERIFIED: &[&str] = &[
    "CIDR",
    "address",
    "pve-cpuset",
    "pve-hotplug-features",
    "pve-poolid",
    "pve-qemu-sev-fmt",
    "pve-qemu-tdx-fmt",
    "pve-qm-cicustom",
    "pve-qm-hostpci",
    "pve-qm-ide",
    "pve-qm-ipconfig",
    "pve-qm-rng",
    "pve-qm-smbios1",
    "pve-qm-watchdog",
    "pve-startup-order",
    "pve-vm-cpu-conf",
    "storage-pair",
];

type Verifier = fn(&str) -> Result<(), String>;

/// The verifier functions, by format name.
const VERIFIERS: &[(&str, Verifier)] = &[
    ("string", |_| Ok(())),
    ("pve-node", verify_node),
    ("pve-vmid", verify_vmid),
    ("pve-storage-id", verify_storage_id),
    ("pve-configid", verify_configid),
    ("pve-volume-id", verify_volume_id),
    ("pve-volume-id-or-qm-path", verify_volume_id_or_qm_path),
    (
        "pve-volume-id-or-absolute-path",
        verify_volume_id_or_absolute_path,
    ),
    ("pve-storage-content", verify_content),
    ("pve-bridge-id", verify_bridge_id),
    ("pve-tag", verify_tag),
    ("pve-task-status-type", verify_task_status_type),
    ("pve-qm-bootdisk", verify_bootdisk),
    ("pve-qm-bootdev", verify_bootdev),
    ("mac-addr", verify_mac),
    ("dns-name", verify_dns_name),
    ("disk-size", verify_disk_size),
    ("urlencoded", verify_urlencoded),
];

/// How the simulator knows a format.
pub enum Known {
    /// A verifier function.
    Verifier(Verifier),
    /// A property string declared in [`super::amend::FORMATS`].
    PropertyString,
    /// Listed in [`UNVERIFIED`].
    Unverified,
}

/// How a format name (without `-list`/`-opt`) is known, if at all.
pub fn known(name: &str) -> Option<Known> {
    if let Some((_, f)) = VERIFIERS.iter().find(|(n, _)| *n == name) {
        return Some(Known::Verifier(*f));
    }
    if api().named_format(name).is_some() {
        return Some(Known::PropertyString);
    }
    UNVERIFIED.contains(&name).then_some(Known::Unverified)
}

/// `$format =~ m/^(.*?)(?:-(list|opt))?$/`: the registered name and the suffix.
pub fn split_suffix(format: &str) -> (&str, Option<&str>) {
    for suffix in ["list", "opt"] {
        if let Some(base) = format.strip_suffix(&format!("-{suffix}")[..]) {
            return (base, Some(suffix));
        }
    }
    (format, None)
}

/// `check_format` of a named format; the error is the `die` message (with its newline).
pub fn check_named(format: &str, value: &str, path: &str) -> Result<(), String> {
    if format == "regex" {
        return Ok(());
    }
    let (name, suffix) = split_suffix(format);
    match known(name) {
        None => Err(format!("undefined format '{format}'\n")),
        Some(Known::Unverified) => Ok(()),
        Some(Known::PropertyString) => match suffix {
            Some(kind) => Err(format!("'-{kind}' format must have code ref, not hash\n")),
            None => {
                let keys = api().named_format(name).expect("known property string");
                check::parse_property_string(keys, value, path).map(|_| ())
            }
        },
        Some(Known::Verifier(verify)) => match suffix {
            Some("list") => split_list(value).into_iter().try_for_each(verify),
            Some(_) if value.is_empty() => Ok(()),
            _ => verify(value),
        },
    }
}

/// PVE's `split_list`: `\0`-separated, else separated by `,`, `;` and whitespace.
pub fn split_list(value: &str) -> Vec<&str> {
    if value.contains('\0') {
        return value.split('\0').collect();
    }
    value
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `$value =~ m/^$pattern$/` (compiled once per pattern).
fn matches(pattern: &'static str, value: &str) -> bool {
    static CACHE: std::sync::LazyLock<Mutex<HashMap<&'static str, Regex>>> =
        std::sync::LazyLock::new(Mutex::default);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let regex = cache.entry(pattern).or_insert_with(|| {
        Regex::new(&format!("^(?:{pattern})\n?$")).expect("verifier regex compiles")
    });
    regex.is_match(value)
}

/// `pve-vmid`.
pub fn verify_vmid(value: &str) -> Result<(), String> {
    if matches("[1-9][0-9]{2,8}", value) {
        Ok(())
    } else {
        Err("value does not look like a valid VM ID\n".to_string())
    }
}

/// `pve-node`.
pub fn verify_node(value: &str) -> Result<(), String> {
    if matches("[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?", value) {
        Ok(())
    } else {
        Err("value does not look like a valid node name\n".to_string())
    }
}

/// `dns-name`.
pub fn verify_dns_name(value: &str) -> Result<(), String> {
    const NAME: &str =
        r"([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?";
    if matches(NAME, value) {
        Ok(())
    } else {
        Err("value does not look like a valid DNS name\n".to_string())
    }
}

/// `pve-storage-id` (`parse_id($id, 'storage')`).
pub fn verify_storage_id(value: &str) -> Result<(), String> {
    if value.chars().count() < 2 {
        return Err(format!(
            "storage ID '{value}' cannot be shorter than 2 characters\n"
        ));
    }
    if !is_storage_like_id(value) {
        return Err(format!(
            "storage ID '{value}' contains illegal characters\n"
        ));
    }
    Ok(())
}

/// `^[a-z][a-z0-9\-\_\.]*[a-z0-9]$` (case-insensitive): storage IDs, and the storage part of
/// volume IDs.
pub fn is_storage_like_id(value: &str) -> bool {
    matches(r"(?i)[a-z][a-z0-9\-_.]*[a-z0-9]", value)
}

/// `pve-configid` (`$CONFIGID_RE`; snapshot names).
pub fn verify_configid(value: &str) -> Result<(), String> {
    if matches("(?i)[a-z][a-z0-9_-]+", value) {
        Ok(())
    } else {
        Err(format!("invalid configuration ID '{value}'\n"))
    }
}

/// `pve-volume-id` (pve-storage's `parse_volume_id`).
pub fn verify_volume_id(value: &str) -> Result<(), String> {
    if matches(r"(?i)[a-z][a-z0-9\-_.]*[a-z0-9]:.+", value) {
        Ok(())
    } else {
        Err(format!("unable to parse volume ID '{value}'\n"))
    }
}

/// `pve-volume-id-or-qm-path` (the `file` of a drive).
pub fn verify_volume_id_or_qm_path(value: &str) -> Result<(), String> {
    if value == "none" || value == "cdrom" {
        return Ok(());
    }
    verify_volume_id_or_absolute_path(value)
}

/// `pve-volume-id-or-absolute-path` (`import-from`).
pub fn verify_volume_id_or_absolute_path(value: &str) -> Result<(), String> {
    if value.starts_with('/') {
        Ok(())
    } else {
        verify_volume_id(value)
    }
}

/// `pve-storage-content` (every content type of a dir storage, plus `import`).
pub fn verify_content(value: &str) -> Result<(), String> {
    const CONTENT: &[&str] = &[
        "images", "rootdir", "vztmpl", "iso", "backup", "snippets", "none", "import",
    ];
    if CONTENT.contains(&value) {
        Ok(())
    } else {
        Err(format!("invalid content type '{value}'\n"))
    }
}

/// `pve-bridge-id`.
fn verify_bridge_id(value: &str) -> Result<(), String> {
    if matches(r"[-_.\w\d]+", value) {
        Ok(())
    } else {
        Err(format!("invalid bridge ID '{value}'\n"))
    }
}

/// `pve-tag` (elements of `pve-tag-list`).
fn verify_tag(value: &str) -> Result<(), String> {
    if matches(r"(?i)[a-z0-9_][a-z0-9_\-+.]*", value) {
        Ok(())
    } else {
        Err("invalid characters in tag\n".to_string())
    }
}

/// `pve-task-status-type`.
fn verify_task_status_type(value: &str) -> Result<(), String> {
    if matches("(?i)ok|error|warning|unknown", value) {
        Ok(())
    } else {
        Err(format!("invalid status '{value}'\n"))
    }
}

/// qemu-server's `is_valid_drivename`: a drive key, not `unusedN`.
pub fn is_valid_drivename(name: &str) -> bool {
    let numbered = ["ide", "sata", "scsi", "virtio"].iter().any(|prefix| {
        super::model::split_index(name)
            .is_some_and(|(p, n)| p == *prefix && n < super::model::index_count(p))
    });
    numbered || name == "efidisk0" || name == "tpmstate0"
}

/// `pve-qm-bootdisk`.
fn verify_bootdisk(value: &str) -> Result<(), String> {
    if is_valid_drivename(value) {
        Ok(())
    } else {
        Err(format!("invalid boot disk '{value}'\n"))
    }
}

/// `pve-qm-bootdev` (elements of `boot: order=`): a drive other than efidisk/tpmstate, or a
/// `net`, `usb` or `hostpci` device key of the VM config schema.
fn verify_bootdev(value: &str) -> Result<(), String> {
    let special = value.starts_with("efidisk") || value.starts_with("tpmstate");
    if is_valid_drivename(value) && !special {
        return Ok(());
    }
    let device = ["net", "usb", "hostpci"].iter().any(|base| {
        super::model::split_index(value).is_some_and(|(p, _)| p == *base)
            && api().qemu_config().get(value).is_some()
    });
    if device {
        Ok(())
    } else {
        Err(format!("invalid boot device '{value}'\n"))
    }
}

/// `mac-addr` (unicast: the I/G bit must not be set).
fn verify_mac(value: &str) -> Result<(), String> {
    if matches("(?i)[a-f0-9][02468ace](?::[a-f0-9]{2}){5}", value) {
        Ok(())
    } else {
        Err("value does not look like a valid unicast MAC address\n".to_string())
    }
}

/// `disk-size`.
fn verify_disk_size(value: &str) -> Result<(), String> {
    if parse_size(value).is_some() {
        Ok(())
    } else {
        Err(format!(
            "value does not look like a valid disk size: {value}\n"
        ))
    }
}

/// `parse_size`: `<number>[KMGT][iB]` to bytes.
pub fn parse_size(value: &str) -> Option<u64> {
    static RE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"^(\d+(?:\.\d+)?)([KMGT](?:iB)?)?$").expect("size regex")
    });
    let caps = RE.captures(value)?;
    let number: f64 = caps[1].parse().ok()?;
    let factor: f64 = match caps.get(2).map(|m| &m.as_str()[..1]) {
        None => 1.0,
        Some("K") => 1024.0,
        Some("M") => 1024.0 * 1024.0,
        Some("G") => 1024.0 * 1024.0 * 1024.0,
        Some(_) => 1024.0 * 1024.0 * 1024.0 * 1024.0,
    };
    Some((number * factor) as u64)
}

/// `urlencoded` (drive serials).
fn verify_urlencoded(value: &str) -> Result<(), String> {
    if matches(r"[-%a-zA-Z0-9_.!~*'()]*", value) {
        Ok(())
    } else {
        Err(format!("invalid urlencoded string: {value}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_suffixes() {
        assert_eq!(
            split_suffix("pve-configid-list"),
            ("pve-configid", Some("list"))
        );
        assert_eq!(split_suffix("pve-node"), ("pve-node", None));
        assert_eq!(split_list("a, b;c  d"), ["a", "b", "c", "d"]);
        assert_eq!(check_named("pve-configid-list", "scsi1,net0", ""), Ok(()));
        assert_eq!(
            check_named("pve-configid-list", "scsi1;1bad", ""),
            Err("invalid configuration ID '1bad'\n".to_string())
        );
        assert_eq!(
            check_named("no-such-format", "x", ""),
            Err("undefined format 'no-such-format'\n".to_string())
        );
    }

    #[test]
    fn verifiers_are_pves() {
        assert!(
            verify_vmid("100").is_ok()
                && verify_vmid("099").is_err()
                && verify_vmid("1000000000").is_err()
        );
        assert_eq!(
            verify_storage_id("x").unwrap_err(),
            "storage ID 'x' cannot be shorter than 2 characters\n"
        );
        assert_eq!(
            verify_storage_id("1x").unwrap_err(),
            "storage ID '1x' contains illegal characters\n"
        );
        assert!(verify_node("pve1").is_ok() && verify_node("-pve").is_err());
        assert!(
            verify_mac("BC:24:11:00:00:01").is_ok() && verify_mac("01:24:11:00:00:01").is_err()
        );
        assert!(verify_volume_id("local:100/vm-100-disk-0.qcow2").is_ok());
        assert_eq!(
            verify_volume_id("nocolon").unwrap_err(),
            "unable to parse volume ID 'nocolon'\n"
        );
        assert!(
            verify_volume_id_or_qm_path("none").is_ok()
                && verify_volume_id_or_absolute_path("/dev/sda").is_ok()
        );
        assert!(verify_dns_name("db-1.example").is_ok() && verify_dns_name("bad_name").is_err());
        assert_eq!(parse_size("32G"), Some(32 << 30));
        assert_eq!(parse_size("1.5K"), Some(1536));
        assert_eq!(parse_size("12X"), None);
        assert!(
            is_valid_drivename("scsi30")
                && !is_valid_drivename("scsi31")
                && !is_valid_drivename("unused0")
        );
        assert!(verify_bootdev("net0").is_ok() && verify_bootdev("efidisk0").is_err());
    }
}
