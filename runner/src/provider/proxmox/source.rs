//! The Proxmox VE source: the VM found by name in the cluster, described from its config, a
//! snapshot when it runs (`vmstate` 0), its disks read over SSH ([`super::export`]).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use crd::{DiskFormat, ProviderType, SnapshotHandle, StopSource};
use reqwest::Method;
use serde_json::Value;

use super::api::SHORT_TASK_TIMEOUT;
use super::config::{DirImage, VmConfig, split_volid};
use super::export::{Export, ExportPlan, StorageKind};
use super::provider::{ProxmoxProvider, Resource, foreign};
use crate::provider::{ExportSession, Source, SourceDisk, VmShape};
use crate::{Error, Result};

const MIB: u64 = 1 << 20;

#[async_trait]
impl Source for ProxmoxProvider {
    fn kind(&self) -> ProviderType {
        ProxmoxProvider::kind(self)
    }

    /// The API with the token, then the SSH login the disks are read through.
    async fn check(&self) -> Result<()> {
        self.check_api().await?;
        let ssh = self.ssh().await?;
        ssh.run(&["true"]).await?;
        tracing::info!("{} works", ssh.system());
        Ok(())
    }

    async fn inspect(&self, name: &str) -> Result<VmShape> {
        let vm = self.find_source(name).await?;
        let config = self.config(&vm.node, vm.vmid).await?;
        let running = self.power_state(&vm.node, vm.vmid).await? == "running";
        self.shape(&vm, &config, running).await
    }

    async fn snapshot(&self, vm: &VmShape, label: &str) -> Result<Option<SnapshotHandle>> {
        if !vm.running {
            return Ok(None);
        }
        let res = self.source_by_id(vm).await?;
        let config = self.config(&res.node, res.vmid).await?;
        self.check_snapshot_support(&res.node, &config).await?;
        if self
            .snapshot_names(&res.node, res.vmid)
            .await?
            .iter()
            .any(|s| s == label)
        {
            tracing::info!(
                "reusing snapshot {label} of VM {} from an earlier attempt",
                vm.name
            );
        } else {
            self.take_snapshot(&res, label).await?;
        }
        Ok(Some(SnapshotHandle::Proxmox {
            node: res.node,
            vmid: res.vmid,
            name: label.to_string(),
        }))
    }

    async fn export(
        &self,
        vm: &VmShape,
        snapshot: Option<&SnapshotHandle>,
    ) -> Result<Box<dyn ExportSession>> {
        let res = self.source_by_id(vm).await?;
        let id = res.vmid.to_string();
        let (config, snapshot) = match snapshot {
            Some(SnapshotHandle::Proxmox { name, .. }) => {
                let path = [
                    "nodes",
                    res.node.as_str(),
                    "qemu",
                    &id,
                    "snapshot",
                    name,
                    "config",
                ];
                let data: Value = self.client().await?.get(&path, &[]).await?;
                (VmConfig::from_json(&data), Some(name.clone()))
            }
            Some(other) => return Err(foreign(other.provider(), "snapshot")),
            None if self.power_state(&res.node, res.vmid).await? == "running" => {
                // read without a snapshot, a running disk would not be consistent
                return Err(Error::transient(
                    self.client().await?.system(),
                    format!("VM {} was started after it was inspected stopped", vm.name),
                ));
            }
            None => (self.config(&res.node, res.vmid).await?, None),
        };
        Ok(Box::new(Export {
            provider: self.clone(),
            node: res.node,
            vm_name: vm.name.clone(),
            snapshot,
            config,
            kinds: HashMap::new(),
        }))
    }

    async fn delete_snapshot(&self, handle: &SnapshotHandle, owner: &str) -> Result<()> {
        let SnapshotHandle::Proxmox { node, vmid, name } = handle else {
            return Err(foreign(handle.provider(), "snapshot"));
        };
        crate::provider::mark::ensure_snapshot_ours(handle, owner)?;
        if self.config_if_present(node, *vmid).await?.is_none() {
            tracing::warn!("VM {vmid} is gone; nothing to remove for snapshot {name}");
            return Ok(());
        }
        if !self
            .snapshot_names(node, *vmid)
            .await?
            .iter()
            .any(|s| s == name)
        {
            tracing::info!("snapshot {name} of VM {vmid} already removed");
            return Ok(());
        }
        let path = [
            "nodes",
            node.as_str(),
            "qemu",
            &vmid.to_string(),
            "snapshot",
            name,
        ];
        self.client()
            .await?
            .run_task(Method::DELETE, &path, &[], SHORT_TASK_TIMEOUT)
            .await?;
        tracing::info!("snapshot {name} of VM {vmid} removed");
        Ok(())
    }

    async fn check_export(&self) -> Result<()> {
        self.ssh().await.map(|_| ())
    }

    async fn stop(&self, vm: &VmShape, how: StopSource, timeout: Duration) -> Result<()> {
        let res = self.source_by_id(vm).await?;
        self.power_off(&res.node, res.vmid, &res.name, how, timeout)
            .await
    }

    async fn start(&self, vm: &VmShape) -> Result<()> {
        let res = self.source_by_id(vm).await?;
        self.power_on(&res.node, res.vmid, &res.name).await
    }

    async fn delete(&self, vm: &VmShape) -> Result<()> {
        let found = self.vms_named(&vm.name).await?;
        let Some(res) = found.iter().find(|r| r.vmid.to_string() == vm.id) else {
            return match found.first() {
                Some(other) => Err(Error::Invalid(format!(
                    "the VM named {} is now {} on {}, not the migrated {}: it is not deleted",
                    vm.name, other.vmid, other.node, vm.id
                ))),
                None => {
                    tracing::info!(
                        "VM {} ({}) does not exist; nothing to delete",
                        vm.name,
                        vm.id
                    );
                    Ok(())
                }
            };
        };
        self.destroy(&res.node, res.vmid, &res.name).await
    }
}

impl ProxmoxProvider {
    /// The one VM (not a template) named `name`.
    async fn find_source(&self, name: &str) -> Result<Resource> {
        let found = self.vms_named(name).await?;
        let system = self.client().await?.system().to_string();
        match found.as_slice() {
            [] => Err(Error::NotFound {
                what: format!("VM {name}"),
                detail: format!("{system} has no VM of that name"),
            }),
            [vm] if vm.template => Err(Error::Invalid(format!(
                "{name} ({} on {}) is a template; templates are not migrated: clone it into a VM first",
                vm.vmid, vm.node
            ))),
            [vm] => Ok(vm.clone()),
            many => {
                let ids: Vec<String> = many
                    .iter()
                    .map(|v| format!("{} on {}", v.vmid, v.node))
                    .collect();
                Err(Error::Invalid(format!(
                    "{system} has {} VMs named {name} ({}): rename all but one so the source is unambiguous",
                    many.len(),
                    ids.join(", ")
                )))
            }
        }
    }

    /// The inspected VM again, by VMID (its node may have changed).
    async fn source_by_id(&self, vm: &VmShape) -> Result<Resource> {
        let vmid: u32 = vm
            .id
            .parse()
            .map_err(|_| Error::Invalid(format!("{:?} is not a Proxmox VE VMID", vm.id)))?;
        match self.vm_by_id(vmid).await? {
            Some(r) if r.name == vm.name => Ok(r),
            Some(r) => Err(Error::Invalid(format!(
                "VM {vmid} is now named {:?}, not the inspected {:?}",
                r.name, vm.name
            ))),
            None => Err(Error::NotFound {
                what: format!("VM {} ({vmid})", vm.name),
                detail: "it was removed after inspection".into(),
            }),
        }
    }

    /// The migration's view of a VM.
    async fn shape(&self, vm: &Resource, config: &VmConfig, running: bool) -> Result<VmShape> {
        let special = config.special_volumes();
        if !special.is_empty() {
            tracing::info!(
                "VM {}: {} not migrated as data disks (the target makes its own EFI vars disk; TPM state is not carried over)",
                vm.name,
                special.join(" and ")
            );
        }
        let mut disks = Vec::new();
        for drive in config.disks() {
            let virtual_size = match drive.size() {
                Some(size) => size,
                None => self.volume_size(&vm.node, &drive.volid).await?,
            };
            disks.push(SourceDisk {
                format: stored_format(&drive.volid),
                name: drive.key,
                virtual_size,
                locator: drive.volid,
            });
        }
        Ok(VmShape {
            id: vm.vmid.to_string(),
            name: vm.name.clone(),
            cpus: config.cpus(),
            memory_bytes: config.memory_mib() * MIB,
            firmware: config.firmware(),
            os: config.os(),
            running,
            disks,
            nics: config.nics().len(),
        })
    }

    /// A volume's size from the storage's content listing.
    async fn volume_size(&self, node: &str, volid: &str) -> Result<u64> {
        self.volume(node, volid)
            .await?
            .map(|v| v.size)
            .ok_or_else(|| Error::NotFound {
                what: format!("volume {volid}"),
                detail: format!("its storage on {node} does not list it"),
            })
    }

    /// Refuses a running VM with a disk whose storage has no snapshots, before a snapshot is tried.
    async fn check_snapshot_support(&self, node: &str, config: &VmConfig) -> Result<()> {
        let mut kinds = HashMap::new();
        for drive in config.disks() {
            let storage = split_volid(&drive.volid)
                .map(|(s, _)| s.to_string())
                .unwrap_or_default();
            if !kinds.contains_key(&storage) && !storage.is_empty() {
                let kind = StorageKind::of(&self.storage(node, &storage).await?.kind);
                kinds.insert(storage.clone(), kind);
            }
            let kind = kinds
                .get(&storage)
                .cloned()
                .unwrap_or(StorageKind::Other("none".into()));
            ExportPlan::choose(&kind, &drive.key, &drive.volid, true).map_err(|e| {
                Error::Invalid(format!(
                    "the running VM cannot be snapshotted for export: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// The names of a VM's snapshots (not `current`).
    async fn snapshot_names(&self, node: &str, vmid: u32) -> Result<Vec<String>> {
        let list: Vec<Value> = self
            .client()
            .await?
            .get(&["nodes", node, "qemu", &vmid.to_string(), "snapshot"], &[])
            .await?;
        Ok(list
            .iter()
            .filter_map(|s| s.get("name").and_then(Value::as_str))
            .filter(|n| *n != "current")
            .map(str::to_string)
            .collect())
    }

    /// `POST .../snapshot` without RAM state, waited for.
    async fn take_snapshot(&self, vm: &Resource, label: &str) -> Result<()> {
        let params = [
            ("snapname", label.to_string()),
            ("vmstate", "0".to_string()),
            (
                "description",
                "taken by virtrigaud for a migration; removed when the migration ends".to_string(),
            ),
        ];
        let path = [
            "nodes",
            vm.node.as_str(),
            "qemu",
            &vm.vmid.to_string(),
            "snapshot",
        ];
        self.client()
            .await?
            .run_task(Method::POST, &path, &params, SHORT_TASK_TIMEOUT)
            .await?;
        tracing::info!("snapshot {label} of VM {} ({}) taken", vm.name, vm.vmid);
        Ok(())
    }
}

/// The format a volume is stored in: a dir storage's file extension, raw for block storages.
fn stored_format(volid: &str) -> DiskFormat {
    let image = split_volid(volid).and_then(|(_, v)| DirImage::parse(v));
    match image.as_ref().map(DirImage::format) {
        Some("qcow2") => DiskFormat::Qcow2,
        Some("vmdk") => DiskFormat::Vmdk,
        _ => DiskFormat::Raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_formats() {
        assert_eq!(
            stored_format("local:100/vm-100-disk-0.qcow2"),
            DiskFormat::Qcow2
        );
        assert_eq!(
            stored_format("local:900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2"),
            DiskFormat::Qcow2
        );
        assert_eq!(
            stored_format("local:100/vm-100-disk-1.vmdk"),
            DiskFormat::Vmdk
        );
        assert_eq!(stored_format("local-lvm:vm-100-disk-0"), DiskFormat::Raw);
    }
}
