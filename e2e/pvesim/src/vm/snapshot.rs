//! VM snapshots (`PVE::AbstractConfig::snapshot_create` and `snapshot_delete`): the config is
//! marked (`snapstate`, lock), every disk is snapshotted by its storage, then the snapshot is
//! committed; a failure rolls back the disks done so far.

use std::collections::BTreeMap;

use super::volume;
use crate::datadir::now;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::qemu_config::{self, Drive, Snapshot, VmState};
use crate::qemu_img::Log;
use crate::storage::Feature;

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

/// `snapshot_prepare`: checks, then the snapshot is recorded in state `prepare` and the VM
/// locked; returns the config to snapshot.
fn prepare(
    node: &Node,
    vm: &mut VmState,
    snapname: &str,
    description: Option<String>,
    log: Log,
) -> Result<BTreeMap<String, String>> {
    if vm.is_template() {
        return Err(Error::failed(
            "you can't take a snapshot if it's a template",
        ));
    }
    vm.check_lock()?;
    if vm.snapshots.contains_key(snapname) {
        return Err(Error::failed(format!(
            "snapshot name '{snapname}' already used"
        )));
    }
    if !has_snapshot_feature(node, &vm.config) {
        return Err(Error::failed("snapshot feature is not available"));
    }
    for (name, snap) in vm.snapshots.iter_mut() {
        if snap.parent.as_deref() == Some(snapname) {
            log(&format!(
                "deleting parent '{snapname}' reference from '{name}' to avoid bogus snapshot cycle."
            ));
            snap.parent = None;
        }
    }
    let mut config = vm.config.clone();
    config.remove("lock");
    config.remove("parent");
    let snapshot = Snapshot {
        config: config.clone(),
        snaptime: now(),
        description: description.unwrap_or_default(),
        parent: vm.config.get("parent").cloned(),
        snapstate: Some("prepare".into()),
    };
    vm.config.insert("lock".into(), "snapshot".into());
    vm.snapshots.insert(snapname.to_string(), snapshot);
    Ok(config)
}

/// Snapshots every disk; on a failure the disks done so far lose their snapshot again.
fn snapshot_disks(
    node: &Node,
    config: &BTreeMap<String, String>,
    snapname: &str,
    log: Log,
) -> Result<()> {
    let mut done: Vec<Drive> = Vec::new();
    for drive in snapshot_volumes(config) {
        log(&format!(
            "snapshotting 'drive-{}' ({})",
            drive.key,
            drive.file()
        ));
        let result = volume(node, drive.file()).and_then(|(s, v)| s.snapshot(&v, snapname, log));
        if let Err(e) = result {
            log("snapshot create failed: starting cleanup");
            for drive in &done {
                let undone = volume(node, drive.file())
                    .and_then(|(s, v)| s.snapshot_delete(&v, snapname, log));
                if let Err(e2) = undone {
                    log(&e2.to_string());
                }
            }
            return Err(e);
        }
        done.push(drive);
    }
    Ok(())
}

/// The worker of `POST .../snapshot` (`snapshot_create`: prepare, volume snapshots, commit).
pub fn snapshot_create(
    node: &Node,
    vmid: u32,
    snapname: &str,
    description: Option<String>,
    log: Log,
) -> Result<()> {
    let config = node.update_vm(vmid, |vm| prepare(node, vm, snapname, description, log))?;
    if let Err(e) = snapshot_disks(node, &config, snapname, log) {
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
