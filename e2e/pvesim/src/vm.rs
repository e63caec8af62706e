//! VM operations after qemu-server's `PVE::API2::Qemu` and `PVE::AbstractConfig`: the storage and
//! drive checks made before a create or config change, disk allocation and `import-from` (a real
//! `qemu-img convert` into a new volume), destroy, snapshots and power state. The API layer checks
//! parameters and privileges, then runs these in worker tasks.

use std::collections::{BTreeMap, BTreeSet};

use crate::auth::Auth;
use crate::datadir::{now, random_uuid};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::qemu_config::{
    self, Drive, Snapshot, VmState, format_size, parse_drive, parse_new_disk,
};
use crate::qemu_img::{self, Log};
use crate::schema::Params;
use crate::storage::{Feature, VolType, Volume, parse_volume_id};

/// Parses a storage volume ID into its storage and volume.
pub fn volume(node: &Node, volid: &str) -> Result<(crate::storage::Storage, Volume)> {
    let (store, volname) = parse_volume_id(volid)?;
    let storage = node.storage(store)?;
    let volume = storage.parse_volname(volname)?;
    Ok((storage, volume))
}

/// `PVE::Storage::check_volume_access`.
pub fn check_volume_access(
    node: &Node,
    auth: &Auth,
    vmid: Option<u32>,
    volid: &str,
    vtype: Option<VolType>,
) -> Result<()> {
    if volid.starts_with('/') || parse_volume_id(volid).is_err() {
        if !auth.is_root() {
            return Err(Error::failed(
                "Only root can pass arbitrary filesystem paths.",
            ));
        }
        return Ok(());
    }
    let (storage, vol) = volume(node, volid)?;
    if let Some(t) = vtype
        && t != vol.vtype
    {
        return Err(Error::failed(format!(
            "unable to use volume {volid} - content type needs to be '{}'",
            t.as_str()
        )));
    }
    let path = format!("/storage/{}", storage.id);
    if auth.has(&path, "Datastore.Allocate") {
        return Ok(());
    }
    match (vol.vtype, vol.vmid) {
        (VolType::Iso | VolType::Import, _) => {
            auth.check_any(&path, &["Datastore.AllocateSpace", "Datastore.Audit"])
        }
        (_, Some(owner)) if Some(owner) == vmid => Ok(()),
        (VolType::Images, Some(owner)) => {
            auth.check(&path, &["Datastore.Audit"])?;
            auth.check(&format!("/vms/{owner}"), &["VM.Config.Disk"])
        }
        _ => Err(Error::failed(format!(
            "missing privileges to access {volid}"
        ))),
    }
}

/// The drive keys of a parameter set, sorted.
fn drive_keys(settings: &Params) -> Vec<String> {
    settings
        .keys()
        .filter(|k| qemu_config::is_drive_key(k))
        .cloned()
        .collect()
}

/// `$check_storage_access`: privileges and content types of every volume a create/update touches.
pub fn check_storage_access(
    node: &Node,
    auth: &Auth,
    vmid: u32,
    settings: &Params,
    default_storage: Option<&str>,
) -> Result<()> {
    for key in drive_keys(settings) {
        let Some(drive) = parse_drive(&key, &settings[&key]) else {
            continue;
        };
        let file = drive.file();
        let cdrom = drive.is_cdrom();
        if file.is_empty() || file == "none" || file == "cloudinit" {
            // nothing to check
        } else if cdrom && file == "cdrom" {
            auth.check("/", &["Sys.Console"])?;
        } else if !cdrom && let Some((store, _)) = parse_new_disk(file) {
            let storeid = store
                .or(default_storage)
                .ok_or_else(|| Error::failed("no storage ID specified (and no default storage)"))?;
            auth.check(&format!("/storage/{storeid}"), &["Datastore.AllocateSpace"])?;
            let storage = node.storage(storeid)?;
            if !storage.supports("images") {
                return Err(Error::param(
                    "storage",
                    format!("storage '{storeid}' does not support vm images"),
                ));
            }
        } else {
            check_volume_access(node, auth, Some(vmid), file, None)?;
            if parse_volume_id(file).is_ok() {
                let (_, vol) = volume(node, file)?;
                if !matches!(vol.vtype, VolType::Images | VolType::Iso) {
                    return Err(Error::param(
                        &key,
                        "content type needs to be 'images' or 'iso'",
                    ));
                }
            }
        }
        if let Some(src) = drive.props.get("import-from") {
            let mut src_vmid = None;
            if !src.starts_with('/') && parse_volume_id(src).is_ok() {
                let (_, vol) = volume(node, src)?;
                if !matches!(vol.vtype, VolType::Images | VolType::Import) {
                    return Err(Error::param(
                        &key,
                        format!(
                            "{src} has wrong type '{}' - needs to be 'images' or 'import'",
                            vol.vtype.as_str()
                        ),
                    ));
                }
                if vol.format == "ova" || vol.format == "ovf" {
                    return Err(Error::failed(format!(
                        "cannot import from '{src}' - importing from OVA/OVF archives is not implemented by the simulator"
                    )));
                }
                src_vmid = vol.vmid;
            }
            match src_vmid {
                Some(owner) => auth.check(&format!("/vms/{owner}"), &["VM.Clone"])?,
                None => check_volume_access(node, auth, Some(vmid), src, None)?,
            }
        }
    }
    for (key, value) in settings
        .iter()
        .filter(|(k, _)| qemu_config::is_unused_key(k))
    {
        let volid = value.split(',').next().unwrap_or_default();
        if parse_volume_id(volid).is_err() {
            return Err(Error::param(key, format!("not a valid volid: {volid}")));
        }
        check_volume_access(node, auth, Some(vmid), volid, Some(VolType::Images))?;
    }
    Ok(())
}

/// `$check_drive_param`: the drive syntax rules, normalizing each drive value as PVE prints it.
pub fn check_drive_params(node: &Node, settings: &mut Params) -> Result<()> {
    for key in drive_keys(settings) {
        let drive = parse_drive(&key, &settings[&key])
            .ok_or_else(|| Error::param(&key, "unable to parse drive options"))?;
        if drive.props.contains_key("import-from") {
            if !parse_new_disk(drive.file()).is_some_and(|(_, size)| size == 0.0) {
                return Err(Error::param(
                    &key,
                    "'import-from' requires special syntax - use <storage ID>:0,import-from=<source>",
                ));
            }
            if key == "efidisk0" {
                for required in ["efitype", "pre-enrolled-keys"] {
                    if !drive.props.contains_key(required) {
                        return Err(Error::param(
                            &key,
                            format!("need to specify '{required}' when using 'import-from'"),
                        ));
                    }
                }
            }
        }
        let file = drive.file();
        if parse_volume_id(file).is_ok()
            && parse_new_disk(file).is_none()
            && !file.ends_with(":cloudinit")
        {
            let (_, vol) = volume(node, file)?;
            if vol.vtype == VolType::Iso && !drive.is_cdrom() {
                return Err(Error::param(
                    &key,
                    "explicit 'media=cdrom' is required for iso images",
                ));
            }
        }
        settings.insert(key.clone(), drive.print());
    }
    Ok(())
}

/// The privilege a config key needs (`check_vm_modify_config_perm`).
pub fn config_privilege(key: &str) -> &'static str {
    match key {
        "cores" | "sockets" | "vcpus" | "cpu" | "cpulimit" | "cpuunits" | "numa" | "affinity" => {
            "VM.Config.CPU"
        }
        "memory" | "balloon" | "shares" => "VM.Config.Memory",
        "bios" | "ostype" | "scsihw" | "vga" | "machine" | "acpi" | "kvm" | "tablet"
        | "localtime" => "VM.Config.HWType",
        k if qemu_config::is_drive_key(k) || qemu_config::is_unused_key(k) => "VM.Config.Disk",
        k if k.starts_with("net") => "VM.Config.Network",
        _ => "VM.Config.Options",
    }
}

/// Frees volumes (best effort; errors go to the log, as PVE's cleanup `warn`s).
fn free_volumes(node: &Node, volids: &[String], log: Log) {
    for volid in volids {
        if let Err(e) = volume(node, volid).and_then(|(s, v)| s.free(&v)) {
            log(&format!("{e}"));
        }
    }
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
    let mut created = Vec::new();
    let mut result = BTreeMap::new();
    for key in drive_keys(settings) {
        let Some(mut drive) = parse_drive(&key, &settings[&key]) else {
            continue;
        };
        match create_disk(node, vmid, &mut drive, default_storage, &mut created, log) {
            Ok(Some(value)) => {
                result.insert(key, value);
            }
            Ok(None) => {}
            Err(e) => {
                free_volumes(node, &created, log);
                return Err(e);
            }
        }
    }
    Ok(result)
}

fn create_disk(
    node: &Node,
    vmid: u32,
    drive: &mut Drive,
    default_storage: Option<&str>,
    created: &mut Vec<String>,
    log: Log,
) -> Result<Option<String>> {
    let file = drive.file().to_string();
    let key = drive.key.clone();
    if file.is_empty() || file == "none" || file == "cdrom" {
        drive.props.remove("size");
        return Ok(Some(drive.print()));
    }
    if let Some((store, size_gib)) = parse_new_disk(&file) {
        let storeid = store
            .or(default_storage)
            .ok_or_else(|| Error::failed("no storage ID specified (and no default storage)"))?
            .to_string();
        let target = node.storage(&storeid)?;
        let (volid, size) = if let Some(source) = drive.props.remove("import-from") {
            import_from(
                node,
                vmid,
                &key,
                &source,
                &storeid,
                drive.props.get("format").cloned(),
                created,
                log,
            )
            .map_err(|e| Error::failed(format!("cannot import from '{source}' - {e}")))?
        } else {
            let format = drive
                .props
                .get("format")
                .cloned()
                .unwrap_or_else(|| target.resolve_format_hint(None));
            let size = (size_gib * 1024.0 * 1024.0 * 1024.0) as u64;
            let volid = target.alloc_image(vmid, &format, size, log)?;
            created.push(volid.clone());
            (volid, size)
        };
        drive.props.insert("file".into(), volid);
        drive.props.insert("size".into(), format_size(size));
        drive.props.remove("format");
        let value = drive.print();
        log(&format!("{key}: successfully created disk '{value}'"));
        return Ok(Some(value));
    }
    if parse_volume_id(&file).is_ok() {
        let (_, vol) = volume(node, &file)?;
        if !matches!(vol.vtype, VolType::Images | VolType::Iso) {
            return Err(Error::failed(format!(
                "cannot use volume {file} - content type needs to be 'images' or 'iso'"
            )));
        }
        if let Some(format) = drive.props.get("format")
            && *format != vol.format
        {
            return Err(Error::failed(format!(
                "drive '{key}' - volume '{file}' - 'format={format}' option different from storage format '{}'",
                vol.format
            )));
        }
    }
    Ok(Some(drive.print()))
}

/// `$import_from_volid` + `clone_disk`: a full copy of `source` into a new volume of `storeid`;
/// returns the new volume ID and its size.
#[allow(clippy::too_many_arguments)]
fn import_from(
    node: &Node,
    vmid: u32,
    key: &str,
    source: &str,
    storeid: &str,
    format: Option<String>,
    created: &mut Vec<String>,
    log: Log,
) -> Result<(String, u64)> {
    let target = node.storage(storeid)?;
    let (src_path, src_format, src_drivename) = if source.starts_with('/') {
        // absolute path: only root@pam gets here (check_volume_access); the format is detected
        let info = qemu_img::info(std::path::Path::new(source), None)?;
        qemu_img::checked_info(std::path::Path::new(source), &info.format, true)?;
        (std::path::PathBuf::from(source), info.format, None)
    } else {
        let (src_storage, vol) = volume(node, source)?;
        let path = src_storage.path(&vol);
        if vol.vtype == VolType::Import {
            // potentially untrusted image file
            qemu_img::checked_info(&path, &vol.format, true)?;
        }
        src_storage
            .size_info(&vol)
            .map_err(|_| Error::failed(format!("could not get size of {source}")))?;
        if !src_storage.has_feature(Feature::Copy, &vol, None) {
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
        (path, vol.format, drivename)
    };
    let size = qemu_img::info(&src_path, Some(&src_format))?.virtual_size;
    let hint = format.clone().unwrap_or_else(|| src_format.clone());
    let dst_format = target.resolve_format_hint(Some(&hint));
    if let Some(f) = &format
        && *f != dst_format
    {
        log(&format!(
            "format '{f}' is not supported by the target storage '{storeid}' - using '{dst_format}' instead"
        ));
    }
    match src_drivename {
        Some(d) => log(&format!("create full clone of drive {d} ({source})")),
        None => log(&format!("create full clone of drive ({source})")),
    }
    let new_volid = target.alloc_image(vmid, &dst_format, size, log)?;
    created.push(new_volid.clone());
    log(&format!("allocated target volume '{new_volid}'"));
    let (_, new_vol) = volume(node, &new_volid)?;
    let dst_path = target.path(&new_vol);
    qemu_img::convert(&src_path, &src_format, &dst_path, &dst_format, size, log)?;
    let (new_size, ..) = target.size_info(&new_vol)?;
    tracing::info!(vmid, key, source, volid = %new_volid, "imported disk");
    Ok((new_volid, new_size))
}

/// The meta info string of a new VM (`new_meta_info_string`).
fn meta_info() -> String {
    let version = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "10.0.2".into());
    format!("creation-qemu={version},ctime={}", now())
}

/// The worker of `POST /nodes/{node}/qemu`: disks, defaults, then the config without the lock.
/// On failure the new volumes are freed and the config removed.
pub fn create_vm_worker(
    node: &Node,
    vmid: u32,
    mut settings: Params,
    default_storage: Option<String>,
    start: bool,
    log: Log,
) -> Result<()> {
    let result =
        create_disks(node, vmid, &settings, default_storage.as_deref(), log).and_then(|disks| {
            let created: Vec<String> = disks
                .iter()
                .filter(|(k, v)| settings.get(*k) != Some(*v))
                .filter_map(|(k, v)| parse_drive(k, v).map(|d| d.file().to_string()))
                .collect();
            settings.extend(disks);
            let mut config: BTreeMap<String, String> =
                std::mem::take(&mut settings).into_iter().collect();
            let written = (|| {
                if !config.contains_key("boot") {
                    config.insert("boot".into(), qemu_config::default_boot(&config));
                }
                config
                    .entry("smbios1".into())
                    .or_insert(format!("uuid={}", random_uuid()?));
                if config.get("vmgenid").is_none_or(|v| v == "1") {
                    config.insert("vmgenid".into(), random_uuid()?);
                }
                config.insert("meta".into(), meta_info());
                let _guard = node.lock();
                let mut vm = node.load_vm(vmid)?;
                vm.config = config;
                vm.save(&node.data, vmid)
            })();
            if written.is_err() {
                free_volumes(node, &created, log);
            }
            written
        });
    if let Err(e) = result {
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

/// `vm_start` (the simulator runs no QEMU: the VM is marked running).
pub fn start_vm(node: &Node, vmid: u32, skiplock: bool) -> Result<()> {
    node.update_vm(vmid, |vm| {
        if !skiplock {
            vm.check_lock()?;
        }
        if vm.is_running() {
            return Err(Error::failed(format!("VM {vmid} already running")));
        }
        vm.running_since = Some(now());
        Ok(())
    })
}

/// `vm_stop` / `vm_shutdown`: a stopped VM stays stopped without error.
pub fn stop_vm(node: &Node, vmid: u32, skiplock: bool) -> Result<()> {
    node.update_vm(vmid, |vm| {
        if !skiplock {
            vm.check_lock()?;
        }
        vm.running_since = None;
        Ok(())
    })
}

/// Storage volumes of the config and its snapshots that this VM owns.
fn owned_volumes(node: &Node, vmid: u32, vm: &VmState) -> BTreeSet<String> {
    let mut configs = vec![&vm.config];
    configs.extend(vm.snapshots.values().map(|s| &s.config));
    configs
        .into_iter()
        .flat_map(|c| {
            let cdroms: BTreeSet<String> = qemu_config::drives(c)
                .into_iter()
                .filter(|d| d.is_cdrom())
                .map(|d| d.key)
                .collect();
            qemu_config::volumes(c)
                .into_iter()
                .filter(move |(k, _)| !cdroms.contains(k))
                .map(|(_, v)| v)
        })
        .filter(|volid| volume(node, volid).is_ok_and(|(_, v)| v.vmid == Some(vmid)))
        .collect()
}

/// The worker of `DELETE /nodes/{node}/qemu/{vmid}` (`destroy_vm`).
pub fn destroy_vm(
    node: &Node,
    vmid: u32,
    skiplock: bool,
    purge: bool,
    destroy_unreferenced: bool,
    log: Log,
) -> Result<()> {
    let vm = node.update_vm(vmid, |vm| {
        if !skiplock {
            vm.check_lock()?;
        }
        if vm.is_running() {
            return Err(Error::failed(format!(
                "VM {vmid} is running - destroy failed"
            )));
        }
        vm.config.insert("lock".into(), "destroyed".into());
        Ok(vm.clone())
    })?;
    let mut removed = owned_volumes(node, vmid, &vm);
    free_volumes(node, &removed.iter().cloned().collect::<Vec<_>>(), log);
    if destroy_unreferenced {
        for storage in node.storages() {
            for info in storage.list_images(Some(vmid)).unwrap_or_default() {
                if removed.insert(info.volid.clone()) {
                    free_volumes(node, std::slice::from_ref(&info.volid), log);
                }
            }
        }
    }
    {
        let _guard = node.lock();
        VmState::remove(&node.data, vmid)?;
    }
    if purge {
        log(&format!("purging VM {vmid} from related configurations.."));
    }
    Ok(())
}

/// Volumes to snapshot: non-cd-rom drives (`foreach_volume` of `__snapshot_*`).
fn snapshot_volumes(config: &BTreeMap<String, String>) -> Vec<Drive> {
    qemu_config::drives(config)
        .into_iter()
        .filter(|d| !d.is_cdrom() && d.file() != "none" && !d.key.starts_with("tpmstate"))
        .collect()
}

/// `PVE::QemuConfig->has_feature('snapshot', ...)`.
fn has_snapshot_feature(node: &Node, config: &BTreeMap<String, String>) -> bool {
    snapshot_volumes(config).iter().all(|d| {
        volume(node, d.file())
            .is_ok_and(|(storage, vol)| storage.has_feature(Feature::Snapshot, &vol, None))
    })
}

/// The worker of `POST .../snapshot` (`snapshot_create`: prepare, volume snapshots, commit).
pub fn snapshot_create(
    node: &Node,
    vmid: u32,
    snapname: &str,
    description: Option<String>,
    log: Log,
) -> Result<()> {
    let snap_config = node.update_vm(vmid, |vm| {
        if vm.config.get("template").is_some_and(|t| t == "1") {
            return Err(Error::failed("you can't take a snapshot if it's a template"));
        }
        vm.check_lock()?;
        if vm.snapshots.contains_key(snapname) {
            return Err(Error::failed(format!("snapshot name '{snapname}' already used")));
        }
        if !has_snapshot_feature(node, &vm.config) {
            return Err(Error::failed("snapshot feature is not available"));
        }
        for (name, snap) in vm.snapshots.iter_mut() {
            if snap.parent.as_deref() == Some(snapname) {
                log(&format!("deleting parent '{snapname}' reference from '{name}' to avoid bogus snapshot cycle."));
                snap.parent = None;
            }
        }
        let mut config = vm.config.clone();
        config.remove("lock");
        config.remove("parent");
        vm.config.insert("lock".into(), "snapshot".into());
        vm.snapshots.insert(
            snapname.to_string(),
            Snapshot {
                config: config.clone(),
                snaptime: now(),
                description: description.clone().unwrap_or_default(),
                parent: vm.config.get("parent").cloned(),
                snapstate: Some("prepare".into()),
            },
        );
        Ok(config)
    })?;
    let mut done: Vec<Drive> = Vec::new();
    let mut failure = None;
    for drive in snapshot_volumes(&snap_config) {
        log(&format!(
            "snapshotting 'drive-{}' ({})",
            drive.key,
            drive.file()
        ));
        match volume(node, drive.file())
            .and_then(|(storage, vol)| storage.snapshot(&vol, snapname, log))
        {
            Ok(()) => done.push(drive),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        log("snapshot create failed: starting cleanup");
        for drive in &done {
            if let Err(e2) =
                volume(node, drive.file()).and_then(|(s, v)| s.snapshot_delete(&v, snapname, log))
            {
                log(&e2.to_string());
            }
        }
        node.update_vm(vmid, |vm| {
            vm.snapshots.remove(snapname);
            vm.config.remove("lock");
            Ok(())
        })?;
        return Err(e);
    }
    node.update_vm(vmid, |vm| {
        if let Some(snap) = vm.snapshots.get_mut(snapname) {
            snap.snapstate = None;
        }
        vm.config.remove("lock");
        vm.config.insert("parent".into(), snapname.to_string());
        Ok(())
    })
}

/// The worker of `DELETE .../snapshot/{snapname}` (`snapshot_delete`).
pub fn snapshot_delete(
    node: &Node,
    vmid: u32,
    snapname: &str,
    force: bool,
    log: Log,
) -> Result<()> {
    let snap = node.update_vm(vmid, |vm| {
        let Some(snap) = vm.snapshots.get(snapname).cloned() else {
            return Err(Error::failed(format!(
                "snapshot '{snapname}' does not exist"
            )));
        };
        vm.check_lock()?;
        vm.config.insert("lock".into(), "snapshot-delete".into());
        if let Some(s) = vm.snapshots.get_mut(snapname) {
            s.snapstate = Some("delete".into());
        }
        Ok(snap)
    })?;
    for drive in snapshot_volumes(&snap.config) {
        let result = volume(node, drive.file())
            .and_then(|(storage, vol)| storage.snapshot_delete(&vol, snapname, log));
        if let Err(e) = result {
            if force {
                log(&e.to_string());
            } else {
                node.update_vm(vmid, |vm| {
                    vm.config.remove("lock");
                    Ok(())
                })?;
                return Err(e);
            }
        }
    }
    node.update_vm(vmid, |vm| {
        let removed = vm.snapshots.remove(snapname);
        let parent = removed.and_then(|s| s.parent);
        for child in vm.snapshots.values_mut() {
            if child.parent.as_deref() == Some(snapname) {
                child.parent = parent.clone();
            }
        }
        if vm.config.get("parent").map(String::as_str) == Some(snapname) {
            match &parent {
                Some(p) => vm.config.insert("parent".into(), p.clone()),
                None => vm.config.remove("parent"),
            };
        }
        vm.config.remove("lock");
        Ok(())
    })
}

/// `update_vm`'s config change: deletions (a removed disk becomes `unusedN`; a removed `unusedN`
/// is destroyed), new disks and imports, and plain values.
pub fn update_config(
    node: &Node,
    vmid: u32,
    settings: Params,
    delete: Vec<String>,
    digest: Option<String>,
    skiplock: bool,
    log: Log,
) -> Result<()> {
    let mut to_free = Vec::new();
    let vm = node.update_vm(vmid, |vm| {
        if !skiplock {
            vm.check_lock()?;
        }
        if let Some(d) = &digest
            && *d != vm.digest()
        {
            return Err(Error::failed(
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        Ok(vm.clone())
    })?;
    // allocations and imports run outside the config lock, as they may take long
    let new_disks: Params = settings
        .iter()
        .filter(|(k, v)| {
            qemu_config::is_drive_key(k)
                && parse_drive(k, v)
                    .is_some_and(|d| !d.is_cdrom() && parse_new_disk(d.file()).is_some())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let created = create_disks(node, vmid, &new_disks, None, log)?;
    let used_by_snapshots: BTreeSet<String> = vm
        .snapshots
        .values()
        .flat_map(|s| qemu_config::volumes(&s.config).into_iter().map(|(_, v)| v))
        .collect();
    node.update_vm(vmid, |current| {
        if current.digest() != vm.digest() {
            return Err(Error::failed(
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        let unused_slot = |config: &BTreeMap<String, String>| {
            (0..qemu_config::MAX_UNUSED)
                .map(|i| format!("unused{i}"))
                .find(|k| !config.contains_key(k))
        };
        let detach = |config: &mut BTreeMap<String, String>, key: &str| {
            let Some(old) = config.get(key).and_then(|v| parse_drive(key, v)) else {
                return;
            };
            if old.is_cdrom() || parse_volume_id(old.file()).is_err() {
                return;
            }
            let owned = volume(node, old.file()).is_ok_and(|(_, v)| v.vmid == Some(vmid));
            let referenced = qemu_config::volumes(config)
                .iter()
                .filter(|(_, v)| v == old.file())
                .count()
                > 1;
            if owned
                && !referenced
                && let Some(slot) = unused_slot(config)
            {
                config.insert(slot, old.file().to_string());
            }
        };
        for key in &delete {
            if qemu_config::is_unused_key(key) {
                if let Some(volid) = current.config.remove(key)
                    && !used_by_snapshots.contains(&volid)
                {
                    to_free.push(volid);
                }
            } else if qemu_config::is_drive_key(key) {
                detach(&mut current.config, key);
                current.config.remove(key);
            } else {
                current.config.remove(key);
            }
        }
        for (key, value) in settings.iter() {
            let value = created.get(key).cloned().unwrap_or_else(|| value.clone());
            if qemu_config::is_drive_key(key) {
                let same = current
                    .config
                    .get(key)
                    .and_then(|v| parse_drive(key, v))
                    .zip(parse_drive(key, &value))
                    .is_some_and(|(a, b)| a.file() == b.file());
                if !same {
                    detach(&mut current.config, key);
                }
            }
            current.config.insert(key.clone(), value);
        }
        Ok(())
    })?;
    free_volumes(node, &to_free, log);
    Ok(())
}
