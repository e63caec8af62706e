//! VM operations after qemu-server's `PVE::API2::Qemu` and `PVE::AbstractConfig`: the storage and
//! drive checks made before a create or config change, disk allocation and `import-from` (a real
//! `qemu-img convert` into a new volume), destroy, snapshots and power state. The API layer checks
//! parameters and privileges, then runs these in worker tasks.

mod create;
mod snapshot;
mod update;

use std::collections::BTreeSet;

pub use create::{create_disks, create_vm_worker};
pub use snapshot::{snapshot_create, snapshot_delete};
pub use update::{Update, update_config};

use crate::auth::Auth;
use crate::datadir::now;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::qemu_config::{self, VmState, parse_drive, parse_new_disk};
use crate::qemu_img::Log;
use crate::schema::Params;
use crate::storage::{Storage, VolType, Volume, parse_volume_id};
use create::drive_keys;

/// Parses a storage volume ID into its storage and volume.
pub fn volume(node: &Node, volid: &str) -> Result<(Storage, Volume)> {
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

/// A template's base images must not be in use by linked clones (LVM-thin does not know its
/// clones, so there it never is).
fn check_bases_unused(node: &Node, vm: &VmState) -> Result<()> {
    for (_, volid) in qemu_config::volumes(&vm.config) {
        let Ok((storage, vol)) = volume(node, &volid) else {
            continue;
        };
        if storage.base_in_use(&vol)? {
            return Err(Error::failed(format!(
                "base volume '{volid}' is still in use by linked cloned"
            )));
        }
    }
    Ok(())
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
        if vm.is_template() {
            check_bases_unused(node, vm)?;
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
