//! Creating a VM's disks (qemu-server `create_disks`): `<storage>:<GiB>` allocates a volume,
//! `<storage>:0,import-from=<source>` makes a full copy of the source with `qemu-img convert`
//! (`$import_from_volid` + `clone_disk`), the source flattened whatever its backing chain (a
//! linked clone's overlay on its base image reads as one disk).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{free_volumes, start_vm, volume};
use crate::datadir::{now, random_uuid};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::qemu_config::{self, Drive, VmState, format_size, parse_drive, parse_new_disk};
use crate::qemu_img::{self, Log};
use crate::schema::Params;
use crate::storage::{Feature, VolType, parse_volume_id};

/// The drive keys of a parameter set, sorted.
pub(super) fn drive_keys(settings: &Params) -> Vec<String> {
    settings
        .keys()
        .filter(|k| qemu_config::is_drive_key(k))
        .cloned()
        .collect()
}

/// Disk creation for one VM: the volumes made so far are freed if a later one fails.
struct Disks<'a> {
    node: &'a Node,
    vmid: u32,
    default_storage: Option<&'a str>,
    created: Vec<String>,
    log: Log<'a>,
}

/// `create_disks`: allocates new disks and runs imports for the drive keys of `settings`; returns
/// the drive values to write into the config. On failure every volume created so far is freed.
pub fn create_disks(
    node: &Node,
    vmid: u32,
    settings: &Params,
    default_storage: Option<&str>,
    log: Log,
) -> Result<BTreeMap<String, String>> {
    let mut disks = Disks {
        node,
        vmid,
        default_storage,
        created: Vec::new(),
        log,
    };
    let mut result = BTreeMap::new();
    for key in drive_keys(settings) {
        let Some(mut drive) = parse_drive(&key, &settings[&key]) else {
            continue;
        };
        match disks.create(&mut drive) {
            Ok(value) => {
                result.insert(key, value);
            }
            Err(e) => {
                free_volumes(node, &disks.created, log);
                return Err(e);
            }
        }
    }
    Ok(result)
}

impl Disks<'_> {
    /// One drive: the value to store for it.
    fn create(&mut self, drive: &mut Drive) -> Result<String> {
        let file = drive.file().to_string();
        if file.is_empty() || file == "none" || file == "cdrom" {
            drive.props.remove("size");
            return Ok(drive.print());
        }
        if let Some((store, size_gib)) = parse_new_disk(&file) {
            return self.new_disk(drive, store, size_gib);
        }
        if parse_volume_id(&file).is_ok() {
            self.check_existing(drive, &file)?;
        }
        Ok(drive.print())
    }

    /// `<storage>:<GiB>` (allocate) or `<storage>:0,import-from=<source>` (import).
    fn new_disk(
        &mut self,
        drive: &mut Drive,
        store: Option<&str>,
        size_gib: f64,
    ) -> Result<String> {
        let storeid = store
            .or(self.default_storage)
            .ok_or_else(|| Error::failed("no storage ID specified (and no default storage)"))?
            .to_string();
        let format = drive.props.get("format").cloned();
        let (volid, size) = match drive.props.remove("import-from") {
            Some(source) => self
                .import(&drive.key, &source, &storeid, format)
                .map_err(|e| Error::failed(format!("cannot import from '{source}' - {e}")))?,
            None => {
                let target = self.node.storage(&storeid)?;
                let format = format.unwrap_or_else(|| target.resolve_format_hint(None));
                let size = (size_gib * 1024.0 * 1024.0 * 1024.0) as u64;
                let volid = target.alloc_image(self.vmid, &format, size, self.log)?;
                self.created.push(volid.clone());
                (volid, size)
            }
        };
        drive.props.insert("file".into(), volid);
        drive.props.insert("size".into(), format_size(size));
        drive.props.remove("format");
        let value = drive.print();
        (self.log)(&format!(
            "{}: successfully created disk '{value}'",
            drive.key
        ));
        Ok(value)
    }

    /// An existing volume: content type and format must fit.
    fn check_existing(&self, drive: &Drive, file: &str) -> Result<()> {
        let (_, vol) = volume(self.node, file)?;
        if !matches!(vol.vtype, VolType::Images | VolType::Iso) {
            return Err(Error::failed(format!(
                "cannot use volume {file} - content type needs to be 'images' or 'iso'"
            )));
        }
        match drive.props.get("format") {
            Some(format) if *format != vol.format => Err(Error::failed(format!(
                "drive '{}' - volume '{file}' - 'format={format}' option different from storage format '{}'",
                drive.key, vol.format
            ))),
            _ => Ok(()),
        }
    }

    /// `$import_from_volid` + `clone_disk`: a full copy of `source` into a new volume of
    /// `storeid`; returns the new volume ID and its size.
    fn import(
        &mut self,
        key: &str,
        source: &str,
        storeid: &str,
        format: Option<String>,
    ) -> Result<(String, u64)> {
        let target = self.node.storage(storeid)?;
        let src = import_source(self.node, source)?;
        let size = qemu_img::info(&src.path, Some(&src.format))?.virtual_size;
        let dst_format = target.resolve_format_hint(Some(format.as_deref().unwrap_or(&src.format)));
        if let Some(f) = format.filter(|f| *f != dst_format) {
            (self.log)(&format!(
                "format '{f}' is not supported by the target storage '{storeid}' - using '{dst_format}' instead"
            ));
        }
        match &src.drivename {
            Some(d) => (self.log)(&format!("create full clone of drive {d} ({source})")),
            None => (self.log)(&format!("create full clone of drive ({source})")),
        }
        let new_volid = target.alloc_image(self.vmid, &dst_format, size, self.log)?;
        self.created.push(new_volid.clone());
        (self.log)(&format!("allocated target volume '{new_volid}'"));
        let (_, new_vol) = volume(self.node, &new_volid)?;
        let dst = target.file(&new_vol);
        qemu_img::convert(&src.path, &src.format, &dst, &dst_format, size, self.log)?;
        let new_size = target.size_info(&new_vol)?.size;
        tracing::info!(vmid = self.vmid, key, source, volid = %new_volid, "imported disk");
        Ok((new_volid, new_size))
    }
}

/// The source of an import: its file, format and (for a VM's disk) drive name.
struct Source {
    path: PathBuf,
    format: String,
    drivename: Option<String>,
}

/// Resolves and checks an `import-from` source: an absolute path (root@pam only, format
/// detected, untrusted-image checks) or a volume (`import/` files are untrusted too; images need
/// the storage's `copy` feature).
fn import_source(node: &Node, source: &str) -> Result<Source> {
    if source.starts_with('/') {
        let info = qemu_img::info(Path::new(source), None)?;
        qemu_img::checked_info(Path::new(source), &info.format, true)?;
        return Ok(Source {
            path: PathBuf::from(source),
            format: info.format,
            drivename: None,
        });
    }
    let (storage, vol) = volume(node, source)?;
    let path = storage.file(&vol);
    if vol.vtype == VolType::Import {
        qemu_img::checked_info(&path, &vol.format, true)?;
    }
    storage
        .size_info(&vol)
        .map_err(|_| Error::failed(format!("could not get size of {source}")))?;
    if !storage.has_feature(Feature::Copy, &vol, None) {
        return Err(Error::failed(format!(
            "cannot import from '{source}' - full clone feature is not supported"
        )));
    }
    let drivename = vol.vmid.and_then(|owner| {
        let vm = node.load_vm(owner).ok()?;
        qemu_config::volumes(&vm.config)
            .into_iter()
            .find(|(_, v)| v == source)
            .map(|(k, _)| k)
    });
    Ok(Source {
        path,
        format: vol.format,
        drivename,
    })
}

/// The meta info string of a new VM (`new_meta_info_string`).
fn meta_info() -> String {
    let version = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let stdout = String::from_utf8_lossy(&o.stdout).to_string();
            stdout.split_whitespace().nth(2).map(str::to_string)
        })
        .unwrap_or_else(|| "10.0.2".into());
    format!("creation-qemu={version},ctime={}", now())
}

/// Fills in what PVE adds to a new VM's config (`boot`, `smbios1`, `vmgenid`, `meta`).
fn complete_config(config: &mut BTreeMap<String, String>) -> Result<()> {
    if !config.contains_key("boot") {
        config.insert("boot".into(), qemu_config::default_boot(config));
    }
    if !config.contains_key("smbios1") {
        config.insert("smbios1".into(), format!("uuid={}", random_uuid()?));
    }
    if config.get("vmgenid").is_none_or(|v| v == "1") {
        config.insert("vmgenid".into(), random_uuid()?);
    }
    config.insert("meta".into(), meta_info());
    Ok(())
}

/// Disks, defaults, then the config (without the create lock); new volumes are freed when the
/// config cannot be written.
fn create_vm(
    node: &Node,
    vmid: u32,
    mut settings: Params,
    storage: Option<&str>,
    log: Log,
) -> Result<()> {
    let disks = create_disks(node, vmid, &settings, storage, log)?;
    let created: Vec<String> = disks
        .iter()
        .filter(|(k, v)| settings.get(*k) != Some(*v))
        .filter_map(|(k, v)| parse_drive(k, v).map(|d| d.file().to_string()))
        .collect();
    settings.extend(disks);
    let written = complete_config(&mut settings).and_then(|()| {
        let _guard = node.lock();
        let mut vm = node.load_vm(vmid)?;
        vm.config = settings;
        vm.save(&node.data, vmid)
    });
    if written.is_err() {
        free_volumes(node, &created, log);
    }
    written
}

/// The worker of `POST /nodes/{node}/qemu`; on failure the half-created VM is removed.
pub fn create_vm_worker(
    node: &Node,
    vmid: u32,
    settings: Params,
    default_storage: Option<String>,
    start: bool,
    log: Log,
) -> Result<()> {
    if let Err(e) = create_vm(node, vmid, settings, default_storage.as_deref(), log) {
        let _guard = node.lock();
        if let Err(e2) = VmState::remove(&node.data, vmid) {
            log(&format!("failed to remove config file: {e2}"));
        }
        return Err(Error::failed(format!("unable to create VM {vmid} - {e}")));
    }
    if start {
        log("Execute autostart");
        if let Err(e) = start_vm(node, vmid, false) {
            log(&e.to_string());
        }
    }
    Ok(())
}
