//! The vSphere target: `OvfManager.CreateImportSpec` of a generated OVF ([`super::ovf`]), the spec
//! marked with the migration's UID (`extraConfig`), `ResourcePool.ImportVApp` into the datastore of
//! targetStorageHint (else the Provider's `defaults`: datastore, cluster, resourcePool, folder,
//! network), every disk POSTed as streamOptimized VMDK to its lease URL and checked against the
//! lease's manifest, the lease kept alive and completed, the VM powered on when the source ran. Any
//! failure aborts the lease and destroys the half-made VM (vCenter does the latter itself; vcsim
//! does not). A VM is found by name with its mark (for the pipeline's target-name check) and
//! deleted by managed object id, after its mark and name are read again.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use crd::{ProviderType, TargetDiskHandle, TargetVmHandle};
use futures::StreamExt as _;
use sha1::{Digest as _, Sha1};
use tokio::io::AsyncReadExt as _;

use super::lease::{self, Lease};
use super::ovf;
use super::provider::{OWNER_KEY, VsphereProvider, guest_id, vm_ref, vsphere_firmware};
use super::{Client, Datacenter, DeviceUrl, ImportParams, MoRef, PowerState, VmInfo};
use crate::progress::{Progress, human_bytes};
use crate::provider::{FoundVm, ImportInput, ImportSession, LocalImage, NewVm, Source, Target};
use crate::{Error, Result};

#[async_trait]
impl Target for VsphereProvider {
    fn kind(&self) -> ProviderType {
        VsphereProvider::kind(self)
    }

    async fn check(&self) -> Result<()> {
        VsphereProvider::check(self).await
    }

    async fn find_vms(&self, name: &str, owner: &str) -> Result<Vec<FoundVm>> {
        let mut found = Vec::new();
        for moref in self.client().await?.find_vms(name).await? {
            // one removed between the listing and this read is gone
            if let Some(info) = self.vm_if_present(&moref).await? {
                found.push(FoundVm {
                    ours: ensure_ours(&info, name, owner).is_ok(),
                    handle: TargetVmHandle::Vsphere {
                        vm: moref.value,
                        name: name.to_string(),
                    },
                });
            }
        }
        Ok(found)
    }

    async fn preflight(&self, vm: &NewVm) -> Result<()> {
        let place = self.placement(vm).await?;
        tracing::info!(
            "the VM will go to datastore {} ({} network(s))",
            place.datastore_name,
            place.networks.len()
        );
        Ok(())
    }

    async fn import(
        &self,
        vm: &NewVm,
        _imported: &[Option<TargetDiskHandle>],
    ) -> Result<Box<dyn ImportSession>> {
        if vm.disks.len() > ovf::MAX_DISKS {
            return Err(Error::Invalid(format!(
                "VM {} has {} disks; a vSphere VM takes at most {} on its SCSI controllers",
                vm.name,
                vm.disks.len(),
                ovf::MAX_DISKS
            )));
        }
        let client = self.client().await?.clone();
        let place = self.placement(vm).await?;
        let ovf = ovf::descriptor(vm, guest_id(vm.os), &place.network_names());
        let params = ImportParams {
            entity_name: vm.name.clone(),
            network_mapping: place
                .networks
                .iter()
                .map(|n| (n.name.clone(), n.moref.clone()))
                .collect(),
            disk_provisioning: Some("thin".into()),
        };
        let annotation = format!("Migrated by virtrigaud (migration {})", vm.owner);
        let spec = client
            .create_import_spec(&ovf, &place.pool, &place.datastore, &params)
            .await?
            .with_config(
                Some(&annotation),
                &[(OWNER_KEY, vm.owner.as_str())],
                Some(vsphere_firmware(vm.firmware)),
            )?;
        let moref = client
            .import_vapp(&place.pool, &spec, Some(&place.folder), None)
            .await?;
        let lease = Lease::open(&client, moref).await?;
        tracing::info!(
            "importing VM {} into datastore {} ({}): lease {} ready",
            vm.name,
            place.datastore_name,
            lease.info.entity.value,
            lease.moref.value
        );
        let urls = disk_urls(&spec.file_items, &lease.info.device_urls, vm.disks.len());
        let session = Import {
            provider: self.clone(),
            client,
            vm: vm.clone(),
            entity: lease.info.entity.clone(),
            lease: Some(lease),
            urls,
            done: 0,
        };
        match session.urls.iter().position(Option::is_none) {
            Some(i) => {
                let why = format!("the import lease offers no upload URL for disk {i}");
                Box::new(session).abort().await?;
                Err(Error::Invalid(why))
            }
            None => Ok(Box::new(session)),
        }
    }

    async fn validate(
        &self,
        vm: &NewVm,
        handle: &TargetVmHandle,
        _disks: &[Option<TargetDiskHandle>],
    ) -> Result<()> {
        let TargetVmHandle::Vsphere { vm: id, .. } = handle else {
            return Err(foreign(handle.provider()));
        };
        let info = self.client().await?.vm_info(&vm_ref(id)).await?;
        check_shape(vm, &info)
    }

    fn reader(&self) -> &dyn Source {
        self
    }

    async fn start_vm(&self, handle: &TargetVmHandle, owner: &str) -> Result<()> {
        let TargetVmHandle::Vsphere { vm: id, name } = handle else {
            return Err(foreign(handle.provider()));
        };
        let client = self.client().await?;
        let info = client.vm_info(&vm_ref(id)).await?;
        ensure_ours(&info, name, owner)?;
        if info.power_state != PowerState::PoweredOn {
            client.power_on(&info.moref).await?;
        }
        Ok(())
    }

    async fn delete_vm(&self, handle: &TargetVmHandle, owner: &str) -> Result<()> {
        let TargetVmHandle::Vsphere { vm, name } = handle else {
            return Err(foreign(handle.provider()));
        };
        match self.vm_if_present(&vm_ref(vm)).await? {
            None => {
                tracing::info!("VM {name} ({vm}) does not exist; nothing to delete");
                Ok(())
            }
            Some(info) => {
                ensure_ours(&info, name, owner)?;
                self.destroy(&info).await
            }
        }
    }

    async fn delete_disk(&self, handle: &TargetDiskHandle, _owner: &str) -> Result<()> {
        Err(foreign(handle.provider()))
    }

    async fn close(&self) {
        VsphereProvider::close(self).await
    }
}

/// Where an imported VM goes.
struct Placement {
    datastore: MoRef,
    datastore_name: String,
    pool: MoRef,
    folder: MoRef,
    networks: Vec<super::Network>,
}

impl Placement {
    fn network_names(&self) -> Vec<String> {
        self.networks.iter().map(|n| n.name.clone()).collect()
    }
}

impl VsphereProvider {
    /// Datastore (targetStorageHint, else `defaults.datastore`), resource pool
    /// (`defaults.resourcePool`, else the root pool of `defaults.cluster` or of the first compute
    /// resource), folder (`defaults.folder`, else the datacenter's VM folder) and networks (each
    /// hint's `network`, else `defaults.network`), each looked up so that a wrong name is an error
    /// naming it.
    async fn placement(&self, vm: &NewVm) -> Result<Placement> {
        let client = self.client().await?;
        let defaults = &self.inner.defaults;
        let dc = client.datacenter(None).await?;
        let datastore_name = vm
            .storage_hint
            .clone()
            .or_else(|| defaults.datastore.clone())
            .ok_or_else(|| {
                Error::Invalid(
                    "no vSphere datastore: set targetStorageHint or the Provider's defaults.datastore"
                        .into(),
                )
            })?;
        let datastore = client.find_datastore(&dc, &datastore_name).await?;
        let pool = self.pool(client, &dc).await?;
        let folder = match &defaults.folder {
            Some(path) => client.find_vm_folder(&dc, path).await?,
            None => dc.vm_folder.clone(),
        };
        let mut networks = Vec::new();
        for name in network_names(vm, defaults.network.as_deref())? {
            networks.push(client.find_network(&dc, &name).await?);
        }
        Ok(Placement {
            datastore,
            datastore_name,
            pool,
            folder,
            networks,
        })
    }

    async fn pool(&self, client: &Client, dc: &Datacenter) -> Result<MoRef> {
        let defaults = &self.inner.defaults;
        let compute = match &defaults.cluster {
            Some(c) => client.find_cluster(dc, c).await?,
            None => client.default_compute_resource(dc).await?,
        };
        match &defaults.resource_pool {
            Some(rp) => client.find_resource_pool(&compute, rp).await,
            None => client.root_resource_pool(&compute).await,
        }
    }
}

/// The network of each NIC: the hints' `network`s in order, else the Provider's default network
/// as the one NIC, else none.
fn network_names(vm: &NewVm, default: Option<&str>) -> Result<Vec<String>> {
    if vm.networks.is_empty() {
        return Ok(default.map(str::to_string).into_iter().collect());
    }
    vm.networks
        .iter()
        .enumerate()
        .map(|(i, h)| {
            h.network.clone().ok_or_else(|| {
                Error::Invalid(format!(
                    "targetNetworkHints[{i}] ({}) names a bridge; a vSphere target needs a network",
                    h.name
                ))
            })
        })
        .collect()
}

/// The upload URL of each disk: the lease's device URL whose import key is the file item of the
/// disk's OVF file reference.
fn disk_urls(
    items: &[super::FileItem],
    urls: &[DeviceUrl],
    disks: usize,
) -> Vec<Option<DeviceUrl>> {
    (0..disks)
        .map(|i| {
            let href = ovf::disk_href(i);
            let item = items.iter().find(|f| f.path == href)?;
            urls.iter()
                .find(|u| u.import_key == item.device_id)
                .cloned()
        })
        .collect()
}

/// The created VM against what was asked: name, vCPUs, memory, disks and capacities, NICs and
/// their networks, power state.
fn check_shape(vm: &NewVm, info: &VmInfo) -> Result<()> {
    let mismatch = |what: String| Err(Error::Invalid(format!("VM {} {what}", vm.name)));
    if info.name != vm.name {
        return mismatch(format!("is named {:?}", info.name));
    }
    if info.num_cpu != vm.cpus {
        return mismatch(format!("has {} vCPUs, expected {}", info.num_cpu, vm.cpus));
    }
    let mb = ovf::memory_mb(vm.memory_bytes);
    if info.memory_mb != mb {
        return mismatch(format!(
            "has {} MiB of memory, expected {mb}",
            info.memory_mb
        ));
    }
    if info.disks.len() != vm.disks.len() {
        return mismatch(format!(
            "has {} disks, expected {}",
            info.disks.len(),
            vm.disks.len()
        ));
    }
    for (i, (d, want)) in info.disks.iter().zip(&vm.disks).enumerate() {
        if d.capacity_bytes != want.virtual_size {
            return mismatch(format!(
                "disk {i} has a capacity of {} bytes, expected {}",
                d.capacity_bytes, want.virtual_size
            ));
        }
    }
    let networks = network_names(vm, None)?;
    let got: Vec<&str> = info.nics.iter().filter_map(|n| n.network_name()).collect();
    if !networks.is_empty() && got != networks {
        return mismatch(format!("has NICs on {got:?}, expected {networks:?}"));
    }
    Ok(())
}

/// The VM is the one a migration named `name` and marked with `owner`.
fn ensure_ours(info: &VmInfo, name: &str, owner: &str) -> Result<()> {
    let mark = info
        .extra_config
        .iter()
        .find(|(k, _)| k == OWNER_KEY)
        .map(|(_, v)| v.as_str());
    if info.name != name || mark != Some(owner) {
        return Err(Error::NotOurs(format!(
            "VM {} ({}) is not named {name:?} or lacks {OWNER_KEY}={owner}: it is left alone",
            info.name, info.moref.value
        )));
    }
    Ok(())
}

fn foreign(kind: ProviderType) -> Error {
    Error::Invalid(format!(
        "the recorded handle belongs to a {kind} provider, not to this vSphere provider"
    ))
}

/// An ImportVApp lease: the VM exists from the start and gets its disks one by one.
struct Import {
    provider: VsphereProvider,
    client: Arc<Client>,
    vm: NewVm,
    /// The VM the lease created.
    entity: MoRef,
    lease: Option<Lease>,
    /// Upload URL of each disk.
    urls: Vec<Option<DeviceUrl>>,
    /// Disks uploaded.
    done: usize,
}

#[async_trait]
impl ImportSession for Import {
    fn vm(&self) -> Option<TargetVmHandle> {
        Some(TargetVmHandle::Vsphere {
            vm: self.entity.value.clone(),
            name: self.vm.name.clone(),
        })
    }

    async fn import_disk(
        &mut self,
        index: usize,
        input: ImportInput<'_>,
        progress: &Progress,
    ) -> Result<Option<TargetDiskHandle>> {
        let ImportInput::File(image) = input else {
            return Err(Error::Invalid(
                "the vSphere target takes disks from files only".into(),
            ));
        };
        let url = self
            .urls
            .get(index)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::Invalid(format!("no upload URL for disk {index}")))?;
        check_stream_optimized(image).await?;
        let sha1 = self.post(&url, image, progress).await?;
        self.check_manifest(&url, &sha1).await?;
        self.done += 1;
        if let Some(l) = &self.lease {
            l.set_percent(lease::percent(self.done, self.vm.disks.len(), 0.0));
        }
        Ok(None)
    }

    async fn finish(mut self: Box<Self>) -> Result<TargetVmHandle> {
        let handle = self.vm().expect("an import always has its VM");
        let lease = self
            .lease
            .take()
            .expect("a session holds its lease until it ends");
        if let Err(e) = lease.complete().await {
            if let Err(d) = self.destroy_entity().await {
                tracing::warn!("removing the half-made VM {}: {d}", self.vm.name);
            }
            return Err(e);
        }
        tracing::info!("VM {} ({}) imported", self.vm.name, self.entity.value);
        Ok(handle)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        if let Some(lease) = self.lease.take()
            && let Err(e) = lease.abort("the migration's import was cut short").await
        {
            tracing::warn!("aborting the import lease: {e}");
        }
        self.destroy_entity().await
    }
}

impl Import {
    /// Streams `image` to `url`, hashing it with SHA-1 on the way; returns the hex SHA-1.
    async fn post(
        &self,
        url: &DeviceUrl,
        image: &LocalImage,
        progress: &Progress,
    ) -> Result<String> {
        let io = |e: std::io::Error| Error::io(format!("reading {}", image.path.display()), e);
        let file = tokio::fs::File::open(&image.path).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        progress.set_total(len);
        let hasher = Arc::new(Mutex::new(Sha1::new()));
        let (h, p) = (hasher.clone(), progress.clone());
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(move |chunk| {
            if let Ok(c) = &chunk {
                h.lock().unwrap_or_else(|e| e.into_inner()).update(c);
                p.add(c.len() as u64);
            }
            chunk
        });
        let started = std::time::Instant::now();
        self.client
            .nfc_post(&url.url, reqwest::Body::wrap_stream(body), len)
            .await?;
        let sha1 = hex::encode(
            hasher
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .finalize(),
        );
        tracing::info!(
            "uploaded {} ({}) to the import lease in {:.1}s, sha1 {sha1}",
            url.target_id,
            human_bytes(len),
            started.elapsed().as_secs_f64()
        );
        Ok(sha1)
    }

    /// The lease's manifest entry for `url` must have the SHA-1 of the bytes sent (servers that
    /// keep no manifest of imports answer none).
    async fn check_manifest(&self, url: &DeviceUrl, sha1: &str) -> Result<()> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        let manifest = self.client.lease_manifest(&lease.moref).await?;
        match manifest.iter().find(|m| m.key == url.key) {
            Some(entry) if entry.sha1.eq_ignore_ascii_case(sha1) => {
                tracing::info!(
                    "the lease manifest's SHA-1 of {} matches the bytes sent ({sha1})",
                    url.target_id
                );
                Ok(())
            }
            Some(entry) => Err(Error::ChecksumMismatch {
                object: format!("disk {} uploaded to VM {}", url.target_id, self.vm.name),
                expected: format!("sha1 {sha1}"),
                actual: format!("sha1 {}", entry.sha1),
            }),
            None => {
                tracing::info!("the server keeps no manifest entry for {}", url.target_id);
                Ok(())
            }
        }
    }

    /// Destroys the VM the lease created, if it is still there.
    async fn destroy_entity(&self) -> Result<()> {
        match self.provider.vm_if_present(&self.entity).await? {
            Some(info) => self.provider.destroy(&info).await,
            None => Ok(()),
        }
    }
}

/// A VMDK vSphere imports through NFC: streamOptimized (the `KDMV` magic and the compressed-grains
/// flag), checked before anything is sent, as govc does.
async fn check_stream_optimized(image: &LocalImage) -> Result<()> {
    let mut header = [0u8; 512];
    let mut file = tokio::fs::File::open(&image.path)
        .await
        .map_err(|e| Error::io(format!("opening {}", image.path.display()), e))?;
    let n = file
        .read(&mut header)
        .await
        .map_err(|e| Error::io(format!("reading {}", image.path.display()), e))?;
    let flags = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let compressed = flags & (1 << 16) != 0;
    if n < 512 || &header[..4] != super::descriptor::SPARSE_MAGIC || !compressed {
        return Err(Error::Invalid(format!(
            "{} is not a streamOptimized VMDK, which vSphere imports",
            image.path.display()
        )));
    }
    Ok(())
}
