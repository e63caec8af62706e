//! `update_vm`'s config change (qemu-server `PVE::API2::Qemu`): deletions (a removed disk becomes
//! `unusedN`; a removed `unusedN` is destroyed), new disks and imports, and plain values.

use std::collections::{BTreeMap, BTreeSet};

use super::{create_disks, free_volumes, volume};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::qemu_config::{self, VmState, parse_drive, parse_new_disk};
use crate::qemu_img::Log;
use crate::schema::{self, Params};
use crate::storage::parse_volume_id;

type Config = BTreeMap<String, String>;

/// What a config update does (checked by the API before the worker runs).
pub struct Update {
    /// Keys to set.
    pub settings: Params,
    /// Keys to delete.
    pub delete: Vec<String>,
    /// Expected config digest.
    pub digest: Option<String>,
    /// Ignore the config lock.
    pub skiplock: bool,
}

const MODIFIED: &str = "detected modified configuration - file changed by other user? Try again.";

/// The worker of a config update: lock and digest checks, then new disks outside the config
/// lock (they may take long), then the change itself; finally removed `unusedN` volumes are freed.
pub fn update_config(node: &Node, vmid: u32, update: Update, log: Log) -> Result<()> {
    let vm = node.update_vm(vmid, |vm| {
        if !update.skiplock {
            vm.check_lock()?;
        }
        if update.digest.as_ref().is_some_and(|d| *d != vm.digest()) {
            return Err(Error::failed(MODIFIED));
        }
        Ok(vm.clone())
    })?;
    let created = create_disks(node, vmid, &new_disks(&update.settings), None, log)?;
    let to_free = node.update_vm(vmid, |current| {
        if current.digest() != vm.digest() {
            return Err(Error::failed(MODIFIED));
        }
        let change = Change {
            node,
            vmid,
            snapshot_volumes: snapshot_volumes(&vm),
        };
        Ok(change.apply(current, &update, &created))
    })?;
    free_volumes(node, &to_free, log);
    Ok(())
}

/// The drive keys that allocate or import a disk (`<storage>:<size>`).
fn new_disks(settings: &Params) -> Params {
    settings
        .iter()
        .filter(|(k, v)| {
            qemu_config::is_drive_key(k)
                && parse_drive(k, v)
                    .is_some_and(|d| !d.is_cdrom() && parse_new_disk(d.file()).is_some())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Volumes the VM's snapshots still use (a deleted `unusedN` of those is kept).
fn snapshot_volumes(vm: &VmState) -> BTreeSet<String> {
    vm.snapshots
        .values()
        .flat_map(|s| qemu_config::volumes(&s.config).into_iter().map(|(_, v)| v))
        .collect()
}

struct Change<'a> {
    node: &'a Node,
    vmid: u32,
    snapshot_volumes: BTreeSet<String>,
}

impl Change<'_> {
    /// Applies deletions and settings; returns the volumes to free.
    fn apply(&self, current: &mut VmState, update: &Update, created: &Config) -> Vec<String> {
        let mut to_free = Vec::new();
        for key in &update.delete {
            if qemu_config::is_unused_key(key) {
                if let Some(volid) = current.config.remove(key)
                    && !self.snapshot_volumes.contains(&volid)
                {
                    to_free.push(volid);
                }
                continue;
            }
            if qemu_config::is_drive_key(key) {
                self.detach(&mut current.config, key);
            }
            current.config.remove(key);
        }
        for (key, value) in &update.settings {
            let value = created.get(key).cloned().unwrap_or_else(|| value.clone());
            if qemu_config::is_drive_key(key) && !same_volume(&current.config, key, &value) {
                self.detach(&mut current.config, key);
            }
            current.config.insert(key.clone(), value);
        }
        to_free
    }

    /// A disk that leaves its drive key stays in the config as `unusedN` when the VM owns it and
    /// no other key references it.
    fn detach(&self, config: &mut Config, key: &str) {
        let Some(old) = config.get(key).and_then(|v| parse_drive(key, v)) else {
            return;
        };
        if old.is_cdrom() || parse_volume_id(old.file()).is_err() {
            return;
        }
        let owned = volume(self.node, old.file()).is_ok_and(|(_, v)| v.vmid == Some(self.vmid));
        let references = qemu_config::volumes(config)
            .iter()
            .filter(|(_, v)| v == old.file())
            .count();
        let slot = (0..schema::index_count("unused"))
            .map(|i| format!("unused{i}"))
            .find(|k| !config.contains_key(k));
        if owned
            && references == 1
            && let Some(slot) = slot
        {
            config.insert(slot, old.file().to_string());
        }
    }
}

/// Whether a drive key keeps its volume.
fn same_volume(config: &Config, key: &str, value: &str) -> bool {
    config
        .get(key)
        .and_then(|v| parse_drive(key, v))
        .zip(parse_drive(key, value))
        .is_some_and(|(a, b)| a.file() == b.file())
}
