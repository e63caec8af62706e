//! VM operations after qemu-server's `PVE::API2::Qemu` and `PVE::AbstractConfig`: the storage and
//! drive checks made before a create or config change (`access`), disk allocation and
//! `import-from` (a real `qemu-img convert` into a new volume, `create`), config updates
//! (`update`), snapshots (`snapshot`), destroy and power state. The API layer checks
//! parameters and privileges, then runs these in worker tasks.

mod access;
mod create;
mod snapshot;
mod update;

use std::collections::BTreeSet;

pub use access::{check_drive_params, check_storage_access, check_volume_access, config_privilege};
pub use create::{create_disks, create_vm_worker};
pub use snapshot::{snapshot_create, snapshot_delete};
pub use update::{Update, update_config};

use crate::datadir::now;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::qemu_config::{self, VmState};
use crate::qemu_img::Log;
use crate::storage::{Storage, Volume, parse_volume_id};

/// Parses a storage volume ID into its storage and volume.
pub fn volume(node: &Node, volid: &str) -> Result<(Storage, Volume)> {
    let (store, volname) = parse_volume_id(volid)?;
    let storage = node.storage(store)?;
    let volume = storage.parse_volname(volname)?;
    Ok((storage, volume))
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
