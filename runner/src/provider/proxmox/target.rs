//! The Proxmox VE target: each disk first goes into a file storage's `import` content (uploaded,
//! or fetched by PVE from a presigned URL), each file a [`TargetDiskHandle::Proxmox`]; the VMID
//! is reserved when the import starts; `finish` creates the VM with `import-from` of the files
//! onto the target storage, marked with the migration (tag and description line), starts it when
//! asked and removes the files. Import files carry the migration's UID tag in their names
//! ([`crate::provider::mark`]): only such files are reused or deleted; VMs are deleted by VMID
//! after their config shows the mark and the name.

use async_trait::async_trait;
use crd::{DiskFormat, ProviderType, TargetDiskHandle, TargetVmHandle};
use reqwest::Method;
use serde_json::Value;

use super::api::{LONG_TASK_TIMEOUT, as_u64};
use super::config::{self, TAG, VmConfig, split_volid};
use super::provider::{NodeStorage, ProxmoxProvider, foreign};
use super::transfer;
use crate::progress::Progress;
use crate::provider::{Firmware, FoundVm, ImportInput, ImportSession, NewVm, Source, Target, mark};
use crate::{Error, Result, stream};

const MIB: u64 = 1 << 20;
/// Tries of VM creation when another creator took the reserved VMID first.
const CREATE_TRIES: u32 = 5;
/// How much larger than asked a created disk may be: PVE allocates in KiB, LVM in 4 MiB extents.
const ROUNDING: u64 = 4 * MIB;

#[async_trait]
impl Target for ProxmoxProvider {
    fn kind(&self) -> ProviderType {
        ProxmoxProvider::kind(self)
    }

    async fn check(&self) -> Result<()> {
        self.check_api().await
    }

    fn pulls(&self) -> bool {
        true
    }

    async fn find_vms(&self, name: &str, owner: &str) -> Result<Vec<FoundVm>> {
        let mut found = Vec::new();
        for vm in self.vms_named(name).await? {
            // one removed between the listing and this read is gone
            if let Some(config) = self.config_if_present(&vm.node, vm.vmid).await? {
                found.push(FoundVm {
                    ours: ensure_ours(&config, vm.vmid, name, owner).is_ok(),
                    handle: TargetVmHandle::Proxmox {
                        node: vm.node,
                        vmid: vm.vmid,
                        name: name.to_string(),
                    },
                });
            }
        }
        Ok(found)
    }

    /// The node, the storage (holding VM disks), an import storage and every NIC's bridge.
    async fn preflight(&self, vm: &NewVm) -> Result<()> {
        let place = self.placement(vm).await?;
        let bridges = bridges(vm, self.inner.defaults.network.as_deref())?;
        tracing::info!(
            "VM {} will go to storage {} on node {} (through {}), NICs on {}",
            vm.name,
            place.storage,
            place.node,
            place.import_storage,
            if bridges.is_empty() {
                "none".to_string()
            } else {
                bridges.join(", ")
            }
        );
        Ok(())
    }

    async fn import(
        &self,
        vm: &NewVm,
        imported: &[Option<TargetDiskHandle>],
    ) -> Result<Box<dyn ImportSession>> {
        let place = self.placement(vm).await?;
        let mut volumes = Vec::new();
        for (disk, handle) in vm
            .disks
            .iter()
            .zip(imported.iter().chain(std::iter::repeat(&None)))
        {
            volumes.push(match handle {
                None => None,
                Some(h) => Some(self.reusable(h, &place.node, &disk.name, &vm.owner).await?),
            });
        }
        let vmid = self.next_vmid().await?;
        tracing::info!(
            "importing VM {} into storage {} on node {} (VMID {vmid} reserved; disks pass through {})",
            vm.name,
            place.storage,
            place.node,
            place.import_storage
        );
        Ok(Box::new(Import {
            provider: self.clone(),
            vm: vm.clone(),
            place,
            vmid,
            volumes,
        }))
    }

    async fn validate(
        &self,
        vm: &NewVm,
        handle: &TargetVmHandle,
        _disks: &[Option<TargetDiskHandle>],
    ) -> Result<()> {
        let TargetVmHandle::Proxmox { node, vmid, .. } = handle else {
            return Err(foreign(handle.provider(), "VM"));
        };
        let config = self.config(node, *vmid).await?;
        let bridges = bridges(vm, self.inner.defaults.network.as_deref())?;
        check_config(vm, &config, &bridges)
    }

    fn reader(&self) -> &dyn Source {
        self
    }

    async fn start_vm(&self, handle: &TargetVmHandle, owner: &str) -> Result<()> {
        let TargetVmHandle::Proxmox { node, vmid, name } = handle else {
            return Err(foreign(handle.provider(), "VM"));
        };
        let config = self.config(node, *vmid).await?;
        ensure_ours(&config, *vmid, name, owner)?;
        self.power_on(node, *vmid, name).await?;
        if self.power_state(node, *vmid).await? != "running" {
            return Err(Error::Invalid(format!(
                "VM {name} ({vmid} on {node}) is not running after its start task"
            )));
        }
        Ok(())
    }

    async fn delete_vm(&self, handle: &TargetVmHandle, owner: &str) -> Result<()> {
        let TargetVmHandle::Proxmox { node, vmid, name } = handle else {
            return Err(foreign(handle.provider(), "VM"));
        };
        let Some(config) = self.config_if_present(node, *vmid).await? else {
            tracing::info!("VM {name} ({vmid} on {node}) does not exist; nothing to delete");
            return Ok(());
        };
        ensure_ours(&config, *vmid, name, owner)?;
        self.destroy(node, *vmid, name).await
    }

    async fn delete_disk(&self, handle: &TargetDiskHandle, owner: &str) -> Result<()> {
        let TargetDiskHandle::Proxmox { node, volid, .. } = handle else {
            return Err(foreign(handle.provider(), "disk"));
        };
        ensure_file_ours(volid, owner)?;
        if self.volume(node, volid).await?.is_none() {
            tracing::info!("import file {volid} on {node} is already gone");
            return Ok(());
        }
        self.delete_volume(node, volid).await?;
        tracing::info!("import file {volid} on {node} deleted");
        Ok(())
    }
}

/// Where the VM goes and where its disks pass through.
#[derive(Clone, Debug)]
struct Placement {
    node: String,
    /// Storage of the VM's disks.
    storage: String,
    /// File storage with `import` content the disks are uploaded to.
    import_storage: String,
}

impl ProxmoxProvider {
    /// Node (`defaults.cluster`, else the first online node), storage (targetStorageHint, else
    /// `defaults.datastore`), and the import storage (the storage itself when it takes `import`
    /// content, else the node's first one that does).
    async fn placement(&self, vm: &NewVm) -> Result<Placement> {
        let defaults = &self.inner.defaults;
        let node = match &defaults.cluster {
            Some(node) => node.clone(),
            None => self.nodes().await?.into_iter().next().ok_or_else(|| {
                Error::Invalid("the Proxmox VE cluster lists no online node".into())
            })?,
        };
        let storage = vm
            .storage_hint
            .clone()
            .or_else(|| defaults.datastore.clone())
            .ok_or_else(|| {
                Error::Invalid("no Proxmox VE storage: set targetStorageHint or the Provider's defaults.datastore".into())
            })?;
        let storages = self.storages(&node).await?;
        let target = storages
            .iter()
            .find(|s| s.storage == storage)
            .ok_or_else(|| Error::NotFound {
                what: format!("Proxmox VE storage {storage:?}"),
                detail: format!("node {node} has no storage of that name"),
            })?;
        if !target.has("images") {
            return Err(Error::Invalid(format!(
                "Proxmox VE storage {storage} on {node} does not hold VM disks (content {})",
                target.content
            )));
        }
        let import_storage = import_storage(&storages, target, &node)?;
        Ok(Placement {
            node,
            storage,
            import_storage,
        })
    }

    /// A disk handle of an earlier attempt, checked: an import file of `owner`'s that still has
    /// the recorded size.
    async fn reusable(
        &self,
        handle: &TargetDiskHandle,
        node: &str,
        disk: &str,
        owner: &str,
    ) -> Result<(String, u64)> {
        let TargetDiskHandle::Proxmox {
            node: on,
            volid,
            size,
        } = handle
        else {
            return Err(foreign(handle.provider(), "disk"));
        };
        ensure_file_ours(volid, owner)?;
        let found = match on == node {
            true => self.volume(node, volid).await?,
            false => None,
        };
        match found {
            Some(info) if info.size == *size => {
                tracing::info!("{disk}: reusing {volid} on {node}, imported by an earlier attempt");
                Ok((volid.clone(), *size))
            }
            Some(info) => Err(Error::Invalid(format!(
                "{disk}: import file {volid} of an earlier attempt now has {} bytes, not {size}",
                info.size
            ))),
            None => Err(Error::Invalid(format!(
                "{disk}: import file {volid} of an earlier attempt is gone from node {node}"
            ))),
        }
    }

    /// A free VMID (`GET /cluster/nextid`).
    async fn next_vmid(&self) -> Result<u32> {
        let id: Value = self
            .client()
            .await?
            .get(&["cluster", "nextid"], &[])
            .await?;
        as_u64(&id)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Error::Invalid(format!("/cluster/nextid answered {id}, not a VMID")))
    }
}

/// The storage disks are uploaded to: `target` itself when it takes `import` content, else the
/// node's first enabled, active one that does.
fn import_storage(storages: &[NodeStorage], target: &NodeStorage, node: &str) -> Result<String> {
    if target.has("import") {
        return Ok(target.storage.clone());
    }
    storages
        .iter()
        .find(|s| s.has("import") && s.enabled && s.active)
        .map(|s| s.storage.clone())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "node {node} has no storage with import content to upload disks to: enable \
                 `import` on a file-based storage"
            ))
        })
}

/// The import of one VM: the files, then the VM.
struct Import {
    provider: ProxmoxProvider,
    vm: NewVm,
    place: Placement,
    /// Reserved when the session started; another may be taken if a creator beat this one to it.
    vmid: u32,
    /// Each disk's import file (volume ID, file length) once imported.
    volumes: Vec<Option<(String, u64)>>,
}

#[async_trait]
impl ImportSession for Import {
    fn vm(&self) -> Option<TargetVmHandle> {
        Some(self.handle(self.vmid))
    }

    async fn import_disk(
        &mut self,
        index: usize,
        input: ImportInput<'_>,
        progress: &Progress,
    ) -> Result<Option<TargetDiskHandle>> {
        let disk =
            self.vm.disks.get(index).cloned().ok_or_else(|| {
                Error::Invalid(format!("VM {} has no disk {index}", self.vm.name))
            })?;
        let filename = import_name(&self.vm.name, &disk.name, disk.format, &self.vm.owner);
        let volid = format!("{}:import/{filename}", self.place.import_storage);
        self.remove_leftover(&volid).await?;
        let started = std::time::Instant::now();
        let sent = self.transfer(input, &filename, progress).await?;
        let size = self.check_file(&volid, sent).await?;
        tracing::info!(
            "{}: {volid} imported in {:.1}s",
            disk.name,
            started.elapsed().as_secs_f64()
        );
        self.volumes[index] = Some((volid.clone(), size));
        Ok(Some(TargetDiskHandle::Proxmox {
            node: self.place.node.clone(),
            volid,
            size,
        }))
    }

    async fn finish(mut self: Box<Self>) -> Result<TargetVmHandle> {
        let volids = self.volids()?;
        self.create(&volids).await?;
        self.remove_files(&volids).await;
        Ok(self.handle(self.vmid))
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        tracing::info!(
            "import of VM {} ended before VMID {} was used",
            self.vm.name,
            self.vmid
        );
        Ok(())
    }
}

impl Import {
    fn handle(&self, vmid: u32) -> TargetVmHandle {
        TargetVmHandle::Proxmox {
            node: self.place.node.clone(),
            vmid,
            name: self.vm.name.clone(),
        }
    }

    /// A file of that name left by an interrupted attempt (cut off before the status recorded it)
    /// is removed first: its name carries this migration's tag.
    async fn remove_leftover(&self, volid: &str) -> Result<()> {
        if self
            .provider
            .volume(&self.place.node, volid)
            .await?
            .is_some()
        {
            ensure_file_ours(volid, &self.vm.owner)?;
            tracing::info!("{volid} exists (an interrupted import of this migration): removing it");
            self.provider.delete_volume(&self.place.node, volid).await?;
        }
        Ok(())
    }

    /// The bytes into the import storage: uploaded from scratch, or fetched by PVE. Returns the
    /// file's length.
    async fn transfer(
        &self,
        input: ImportInput<'_>,
        filename: &str,
        progress: &Progress,
    ) -> Result<u64> {
        let client = self.provider.client().await?;
        let (node, storage) = (&self.place.node, &self.place.import_storage);
        match input {
            ImportInput::File(image) => {
                let (len, sha256) = stream::hash_file(&image.path, Progress::default()).await?;
                tracing::info!(
                    "uploading {} to {storage} on {node} as {filename}",
                    image.path.display()
                );
                transfer::upload(
                    client,
                    node,
                    storage,
                    filename,
                    &image.path,
                    &sha256,
                    progress,
                )
                .await?;
                Ok(len)
            }
            ImportInput::Url(object) => {
                tracing::info!(
                    "{storage} on {node} downloads {filename} from staging itself (sha256 {})",
                    object.sha256
                );
                transfer::download_url(client, node, storage, filename, object).await?;
                progress.set_done(object.size);
                Ok(object.size)
            }
        }
    }

    /// The imported file as PVE lists it: present, of the length sent (its SHA-256 PVE checked
    /// itself). A wrong one is removed.
    async fn check_file(&self, volid: &str, len: u64) -> Result<u64> {
        let node = &self.place.node;
        let info = self.provider.volume(node, volid).await?.ok_or_else(|| {
            Error::Invalid(format!(
                "{volid} is not on node {node} after its import task succeeded"
            ))
        })?;
        if info.size != len {
            let _ = self.provider.delete_volume(node, volid).await;
            return Err(Error::Invalid(format!(
                "{volid} has {} bytes on node {node}, {len} were sent",
                info.size
            )));
        }
        Ok(info.size)
    }

    /// Every disk's import file.
    fn volids(&self) -> Result<Vec<String>> {
        self.volumes
            .iter()
            .zip(&self.vm.disks)
            .map(|(v, d)| {
                v.as_ref().map(|(volid, _)| volid.clone()).ok_or_else(|| {
                    Error::Invalid(format!(
                        "disk {} of VM {} was not imported",
                        d.name, self.vm.name
                    ))
                })
            })
            .collect()
    }

    /// Creates the VM, with a new VMID when another creator took the reserved one; a failed
    /// creation leaves no VM of ours behind.
    async fn create(&mut self, volids: &[String]) -> Result<()> {
        let bridges = bridges(&self.vm, self.provider.inner.defaults.network.as_deref())?;
        let client = self.provider.client().await?.clone();
        for attempt in 1..=CREATE_TRIES {
            let params = create_params(&self.vm, self.vmid, &self.place.storage, volids, &bridges);
            let params: Vec<(&str, String)> = params
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            let path = ["nodes", self.place.node.as_str(), "qemu"];
            match client
                .run_task(Method::POST, &path, &params, LONG_TASK_TIMEOUT)
                .await
            {
                Ok(()) => {
                    tracing::info!(
                        "created VM {} ({} on {})",
                        self.vm.name,
                        self.vmid,
                        self.place.node
                    );
                    return Ok(());
                }
                Err(e) if attempt < CREATE_TRIES && vmid_taken(&e, self.vmid) => {
                    let taken = self.vmid;
                    self.vmid = self.provider.next_vmid().await?;
                    tracing::info!(
                        "VMID {taken} was taken meanwhile; creating VM {} as {}",
                        self.vm.name,
                        self.vmid
                    );
                }
                Err(e) => {
                    self.discard(self.vmid).await;
                    return Err(e);
                }
            }
        }
        unreachable!("the last try returns")
    }

    /// Removes VM `vmid` when it exists and is ours (a creation that failed half-way).
    async fn discard(&self, vmid: u32) {
        let node = &self.place.node;
        let result = async {
            match self.provider.config_if_present(node, vmid).await? {
                Some(c) if ensure_ours(&c, vmid, &self.vm.name, &self.vm.owner).is_ok() => {
                    self.provider.destroy(node, vmid, &self.vm.name).await
                }
                _ => Ok(()),
            }
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(
                "could not remove the half-made VM {} ({vmid}): {e}",
                self.vm.name
            );
        }
    }

    /// Removes the import files once the VM has its own copies.
    async fn remove_files(&self, volids: &[String]) {
        for volid in volids {
            match self.provider.delete_volume(&self.place.node, volid).await {
                Ok(()) => tracing::info!("import file {volid} removed"),
                Err(e) => tracing::warn!("could not remove import file {volid}: {e}"),
            }
        }
    }
}

/// Whether `e` is PVE's refusal to create VM `vmid` because it exists.
fn vmid_taken(e: &Error, vmid: u32) -> bool {
    matches!(e, Error::Invalid(m) if m.contains("already exists") && m.contains(&format!("VM {vmid}")))
}

/// `<vm>-<disk>-<tag>.<format>` (`<tag>`: [`mark::owner_tag`] of `owner`), in the characters PVE
/// allows in import file names.
pub fn import_name(vm: &str, disk: &str, format: DiskFormat, owner: &str) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-._+=".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let stem = format!("{}-{}", safe(vm), safe(disk));
    format!("{}.{}", mark::tagged(&stem, owner), format.as_str())
}

/// Refuses ([`Error::NotOurs`]) a volume that is not an import file carrying `owner`'s tag: VM
/// disks and other people's files are never reused or deleted as import files.
fn ensure_file_ours(volid: &str, owner: &str) -> Result<()> {
    if !is_import_volume(volid) {
        return Err(Error::NotOurs(format!(
            "{volid} is not an import file: only import files are reused or deleted as disks"
        )));
    }
    if !mark::carries_tag(mark::file_name(volid), owner) {
        return Err(Error::NotOurs(format!(
            "import file {volid} does not carry the tag of migration {owner} in its name"
        )));
    }
    Ok(())
}

/// Whether a volume ID names an import file (`<storage>:import/<file>`).
fn is_import_volume(volid: &str) -> bool {
    split_volid(volid).is_some_and(|(_, v)| {
        v.strip_prefix("import/")
            .is_some_and(|f| !f.is_empty() && !f.contains('/'))
    })
}

/// The bridge of each NIC: each hint's `bridge` (else the Provider's default network), else the
/// default network as the one NIC, else none.
fn bridges(vm: &NewVm, default: Option<&str>) -> Result<Vec<String>> {
    if vm.networks.is_empty() {
        return Ok(default.map(str::to_string).into_iter().collect());
    }
    vm.networks
        .iter()
        .enumerate()
        .map(|(i, h)| {
            h.bridge.clone().or_else(|| default.map(str::to_string)).ok_or_else(|| {
                Error::Invalid(format!(
                    "targetNetworkHints[{i}] ({}) names no bridge, and the Provider has no defaults.network",
                    h.name
                ))
            })
        })
        .collect()
}

/// Memory in MiB, rounded up (PVE's minimum is 16).
fn memory_mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB).max(16)
}

/// The parameters of `POST /nodes/{node}/qemu`.
fn create_params(
    vm: &NewVm,
    vmid: u32,
    storage: &str,
    volids: &[String],
    bridges: &[String],
) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = vec![
        ("vmid".into(), vmid.to_string()),
        ("name".into(), vm.name.clone()),
        ("sockets".into(), "1".into()),
        ("cores".into(), vm.cpus.max(1).to_string()),
        ("memory".into(), memory_mib(vm.memory_bytes).to_string()),
        ("ostype".into(), config::ostype(vm.os).into()),
        ("scsihw".into(), "virtio-scsi-single".into()),
        ("tags".into(), TAG.into()),
        ("description".into(), config::mark_description(&vm.owner)),
    ];
    match vm.firmware {
        Firmware::Uefi => {
            p.push(("bios".into(), "ovmf".into()));
            p.push(("efidisk0".into(), format!("{storage}:1,efitype=4m")));
        }
        Firmware::Bios => p.push(("bios".into(), "seabios".into())),
    }
    for (i, volid) in volids.iter().enumerate() {
        p.push((
            format!("scsi{i}"),
            format!("{storage}:0,import-from={volid},iothread=1"),
        ));
    }
    if !volids.is_empty() {
        p.push(("boot".into(), "order=scsi0".into()));
    }
    for (i, bridge) in bridges.iter().enumerate() {
        p.push((format!("net{i}"), format!("virtio,bridge={bridge}")));
    }
    p
}

/// The created VM against what was asked: name, vCPUs, memory, firmware, disks and their sizes,
/// NICs and their bridges, the mark.
fn check_config(vm: &NewVm, c: &VmConfig, bridges: &[String]) -> Result<()> {
    let mismatch = |what: String| Err(Error::Invalid(format!("VM {} {what}", vm.name)));
    if c.name() != Some(vm.name.as_str()) {
        return mismatch(format!("is named {:?}", c.name()));
    }
    if c.cpus() != vm.cpus.max(1) {
        return mismatch(format!("has {} vCPUs, expected {}", c.cpus(), vm.cpus));
    }
    if c.memory_mib() != memory_mib(vm.memory_bytes) {
        return mismatch(format!(
            "has {} MiB of memory, expected {}",
            c.memory_mib(),
            memory_mib(vm.memory_bytes)
        ));
    }
    let uefi = vm.firmware == Firmware::Uefi;
    if (c.firmware() == Firmware::Uefi) != uefi || (uefi && c.get("efidisk0").is_none()) {
        return mismatch(format!(
            "has bios {:?} and efidisk0 {:?}, expected {:?}",
            c.get("bios"),
            c.get("efidisk0"),
            vm.firmware
        ));
    }
    let disks = c.disks();
    if disks.len() != vm.disks.len() {
        return mismatch(format!(
            "has {} disks, expected {}",
            disks.len(),
            vm.disks.len()
        ));
    }
    for (i, want) in vm.disks.iter().enumerate() {
        let Some(d) = c.drive(&format!("scsi{i}")) else {
            return mismatch(format!("has no disk scsi{i}"));
        };
        let got = d.size().unwrap_or(0);
        if got < want.virtual_size || got > want.virtual_size.next_multiple_of(ROUNDING) {
            return mismatch(format!(
                "disk scsi{i} has {got} bytes, expected {}",
                want.virtual_size
            ));
        }
    }
    let got: Vec<Option<String>> = c.bridges();
    let want: Vec<Option<String>> = bridges.iter().cloned().map(Some).collect();
    if got != want {
        return mismatch(format!("has NICs on {got:?}, expected {want:?}"));
    }
    if !c.has_mark(&vm.owner) {
        return mismatch(format!("lacks the mark of migration {}", vm.owner));
    }
    Ok(())
}

/// The VM is the one a migration named `name` made (tag and description line with `owner`).
fn ensure_ours(c: &VmConfig, vmid: u32, name: &str, owner: &str) -> Result<()> {
    if c.name() != Some(name) || !c.has_mark(owner) {
        return Err(Error::NotOurs(format!(
            "VM {vmid} ({:?}) is not named {name:?} or lacks the tag {TAG} and the line \
             \"{}{owner}\" in its description: it is left alone",
            c.name().unwrap_or_default(),
            config::MARK_PREFIX
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crd::NetworkHint;

    use super::*;
    use crate::provider::{NewDisk, OsFamily};

    fn vm() -> NewVm {
        NewVm {
            name: "web-01".into(),
            cpus: 2,
            memory_bytes: 2048 * MIB,
            firmware: Firmware::Uefi,
            os: OsFamily::Linux,
            disks: vec![
                NewDisk {
                    name: "scsi0".into(),
                    virtual_size: 256 * MIB,
                    format: DiskFormat::Qcow2,
                },
                NewDisk {
                    name: "vdb".into(),
                    virtual_size: 10 * MIB + 512,
                    format: DiskFormat::Qcow2,
                },
            ],
            networks: vec![NetworkHint {
                name: "eth0".into(),
                network: None,
                bridge: Some("vmbr1".into()),
            }],
            storage_hint: Some("local-lvm".into()),
            owner: "uid-1".into(),
        }
    }

    #[test]
    fn create_parameters() {
        let v = vm();
        let volids = [
            "local:import/web-01-scsi0.qcow2".to_string(),
            "local:import/web-01-vdb.qcow2".to_string(),
        ];
        let p = create_params(&v, 104, "local-lvm", &volids, &["vmbr1".into()]);
        let get = |k: &str| p.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("vmid"), Some("104"));
        assert_eq!(
            (get("cores"), get("sockets"), get("memory")),
            (Some("2"), Some("1"), Some("2048"))
        );
        assert_eq!(get("bios"), Some("ovmf"));
        assert_eq!(get("efidisk0"), Some("local-lvm:1,efitype=4m"));
        assert_eq!(
            get("scsi0"),
            Some("local-lvm:0,import-from=local:import/web-01-scsi0.qcow2,iothread=1")
        );
        assert_eq!(
            get("scsi1"),
            Some("local-lvm:0,import-from=local:import/web-01-vdb.qcow2,iothread=1")
        );
        assert_eq!(get("net0"), Some("virtio,bridge=vmbr1"));
        assert_eq!(get("ostype"), Some("l26"));
        assert_eq!(get("tags"), Some("virtrigaud"));
        assert_eq!(
            get("description"),
            Some("Migrated by virtrigaud.\nvirtrigaud-migration: uid-1\n")
        );
        assert_eq!(get("boot"), Some("order=scsi0"));
    }

    #[test]
    fn names_bridges_and_volumes() {
        assert_eq!(
            import_name("web 01", "Hard disk 1", DiskFormat::Vmdk, "uid-1"),
            "web_01-Hard_disk_1-uid1.vmdk"
        );
        assert!(is_import_volume("local:import/web-01-scsi0.qcow2"));
        assert!(ensure_file_ours("local:import/web-01-scsi0-uid1.qcow2", "uid-1").is_ok());
        for theirs in [
            "local:import/web-01-scsi0.qcow2",
            "local:import/web-01-scsi0-uid2.qcow2",
            "local:100/vm-100-disk-0-uid1.qcow2",
        ] {
            let e = ensure_file_ours(theirs, "uid-1").unwrap_err();
            assert_eq!(e.reason(), "NotOwned", "{theirs}: {e}");
        }
        assert!(!is_import_volume("local:100/vm-100-disk-0.qcow2"));
        assert!(!is_import_volume("local:import/a/b.qcow2"));
        let mut v = vm();
        assert_eq!(bridges(&v, Some("vmbr0")).unwrap(), ["vmbr1"]);
        v.networks[0].bridge = None;
        assert_eq!(bridges(&v, Some("vmbr0")).unwrap(), ["vmbr0"]);
        assert!(
            bridges(&v, None)
                .unwrap_err()
                .to_string()
                .contains("targetNetworkHints[0]")
        );
        v.networks.clear();
        assert!(bridges(&v, None).unwrap().is_empty());
        assert_eq!(memory_mib(1), 16);
        assert_eq!(memory_mib(1536 * MIB + 1), 1537);
    }

    #[test]
    fn taken_vmids_are_recognized() {
        let e = Error::Invalid("Proxmox VE x: POST /nodes/pve1/qemu: unable to create VM 104 - VM 104 already exists on node 'pve1'".into());
        assert!(vmid_taken(&e, 104));
        assert!(!vmid_taken(&e, 105));
        assert!(!vmid_taken(
            &Error::transient("x", "VM 104 already exists"),
            104
        ));
    }

    fn created(extra: serde_json::Value) -> VmConfig {
        let mut base = serde_json::json!({
            "name": "web-01", "cores": 2, "sockets": 1, "memory": "2048", "bios": "ovmf",
            "efidisk0": "local-lvm:vm-104-disk-0,efitype=4m,size=4M",
            "scsi0": "local-lvm:vm-104-disk-1,iothread=1,size=256M",
            "scsi1": "local-lvm:vm-104-disk-2,iothread=1,size=12M",
            "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1", "tags": "virtrigaud",
            "description": config::mark_description("uid-1")
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        VmConfig::from_json(&base)
    }

    #[test]
    fn validation_checks_each_property() {
        let v = vm();
        let br = ["vmbr1".to_string()];
        check_config(&v, &created(serde_json::json!({})), &br).unwrap();
        for (extra, needle) in [
            (serde_json::json!({"cores": 1}), "vCPUs"),
            (serde_json::json!({"memory": "1024"}), "memory"),
            (serde_json::json!({"bios": "seabios"}), "bios"),
            (
                serde_json::json!({"scsi1": "local-lvm:vm-104-disk-2,size=8M"}),
                "scsi1",
            ),
            (
                serde_json::json!({"scsi1": "local-lvm:vm-104-disk-2,size=16M"}),
                "scsi1",
            ),
            (serde_json::json!({"net0": "virtio=X,bridge=vmbr0"}), "NICs"),
            (serde_json::json!({"tags": "other"}), "mark"),
        ] {
            let e = check_config(&v, &created(extra.clone()), &br)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{extra}: {e}");
        }
        let c = created(serde_json::json!({}));
        assert!(ensure_ours(&c, 104, "web-01", "uid-1").is_ok());
        assert!(matches!(
            ensure_ours(&c, 104, "web-01", "uid-2"),
            Err(Error::NotOurs(_))
        ));
        assert!(matches!(
            ensure_ours(&c, 104, "web-02", "uid-1"),
            Err(Error::NotOurs(_))
        ));
    }
}
