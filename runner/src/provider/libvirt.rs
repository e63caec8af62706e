//! libvirt/KVM through libvirt's own Rust bindings (the `virt` crate), as source and target. Every
//! libvirt call blocks, so each method runs its calls on a blocking thread ([`LibvirtProvider::run`]).
//!
//! Disks move through storage-volume streams, which work against a remote libvirtd without any
//! shell on the host:
//! - source ([`source`]): the domain is found by name; its data disks (cdroms skipped) are listed in
//!   bus order. A running domain gets an external, disk-only snapshot whose qcow2 overlays sit next to
//!   the base images (so they are pool volumes); the base images stop changing and are downloaded
//!   with a sparse stream. Deleting the snapshot commits each overlay back into its base (active block
//!   commit, then pivot), removes the snapshot metadata and the overlay volumes: the domain is left
//!   exactly as before. A stopped domain needs no snapshot.
//! - target ([`target`]): volumes are created in the pool named by `targetStorageHint` (else the
//!   Provider's `defaults.datastore`, else `default`) and filled through upload streams (sparse for raw
//!   images), each named `<vm>-<disk>-<tag>.<format>` with the migration's UID tag
//!   ([`super::mark`]); the domain is defined from the source's shape, marked with the migration's
//!   UID in its `<metadata>`, and left stopped (the pipeline starts it per spec.cutover). A domain is deleted by
//!   UUID, and only its volumes that carry the tag go with it.
//!
//! Sessions hold nothing on the host: an export reads volumes, an import's volumes are recorded as
//! they are made, and the domain is defined when the import finishes.

mod connection;
mod ffi;
mod known_hosts;
mod source;
mod target;
mod xml;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use crd::plan::ProviderPlan;
use crd::{DiskFormat, ProviderType, SnapshotHandle, StopSource, TargetDiskHandle, TargetVmHandle};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::{Error as VirtError, ErrorNumber};
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

use self::connection::{Connection, Endpoint};
use self::xml::{DiskInfo, DiskSource, DomainInfo, PoolInfo};
use super::{
    ExportSession, FoundVm, ImportInput, ImportSession, LocalImage, NewVm, Source, SourceDisk,
    Target, VmShape, mark,
};
use crate::credentials::Credentials;
use crate::endpoint::Guard;
use crate::progress::Progress;
use crate::{Error, Result};

/// Pool used when neither the migration nor the Provider names one.
pub const DEFAULT_POOL: &str = "default";
/// Stream buffer: libvirt sends at most 256 KiB per message.
const CHUNK: usize = 1 << 20;
/// How often block jobs and busy pools are polled.
const POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// A libvirt host as a migration source and target. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct LibvirtProvider {
    endpoint: Arc<Endpoint>,
    guard: Guard,
    default_pool: String,
    default_bridge: Option<String>,
    /// The open connection, shared by concurrent calls; reopened when it died.
    conn: Arc<Mutex<Option<Arc<Connection>>>>,
}

impl std::fmt::Debug for LibvirtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtProvider")
            .field("endpoint", &self.endpoint)
            .field("default_pool", &self.default_pool)
            .finish()
    }
}

impl LibvirtProvider {
    /// A provider for `plan`, authenticating with the `scope` (`source` or `target`) credentials;
    /// every connection goes to an address `guard` judged. Nothing is contacted until the first call.
    pub fn new(
        plan: &ProviderPlan,
        creds: &Credentials,
        scope: &str,
        guard: Guard,
    ) -> Result<Self> {
        let endpoint = Endpoint::new(
            &plan.endpoint,
            plan.insecure_skip_verify,
            creds,
            scope,
            guard.allows_local(),
        )?;
        let defaults = plan.defaults.as_ref();
        Ok(LibvirtProvider {
            endpoint: Arc::new(endpoint),
            guard,
            default_pool: defaults
                .and_then(|d| d.datastore.clone())
                .unwrap_or_else(|| DEFAULT_POOL.to_string()),
            default_bridge: defaults.and_then(|d| d.network.clone()),
            conn: Arc::default(),
        })
    }

    /// The open connection, opening (or reopening) it when needed.
    async fn connection(&self) -> Result<Arc<Connection>> {
        {
            let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = guard.as_ref()
                && c.is_alive().unwrap_or(false)
            {
                return Ok(c.clone());
            }
        }
        let pinned = match self.endpoint.remote() {
            Some(remote) => Some(self.guard.pin(remote, self.endpoint.shown()).await?),
            None => None,
        };
        let endpoint = self.endpoint.clone();
        let conn = Arc::new(blocking(move || endpoint.open(pinned.as_ref())).await?);
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `f` with a connected [`Host`] on a blocking thread.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Host) -> Result<T> + Send + 'static,
    {
        let conn = self.connection().await?;
        let endpoint = self.endpoint.clone();
        let default_bridge = self.default_bridge.clone();
        blocking(move || {
            f(&Host {
                conn: &conn,
                ep: &endpoint,
                default_bridge: default_bridge.as_deref(),
            })
        })
        .await
    }

    /// Connects and logs the daemon's version (both roles' `check`).
    async fn connect_and_log(&self) -> Result<()> {
        let (version, hostname) = self
            .run(|h| {
                let v = h
                    .conn
                    .get_lib_version()
                    .map_err(|e| h.err("reading the version", e))?;
                Ok((v, h.conn.get_hostname().unwrap_or_default()))
            })
            .await?;
        tracing::info!(
            "connected to libvirt {}.{}.{} on {hostname} ({})",
            version / 1_000_000,
            version / 1000 % 1000,
            version % 1000,
            self.endpoint.shown()
        );
        Ok(())
    }
}

async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::transient("libvirt", format!("worker thread failed: {e}")))?
}

#[async_trait]
impl Source for LibvirtProvider {
    fn kind(&self) -> ProviderType {
        ProviderType::Libvirt
    }

    async fn check(&self) -> Result<()> {
        self.connect_and_log().await
    }

    async fn inspect(&self, name: &str) -> Result<VmShape> {
        let name = name.to_string();
        self.run(move |h| h.inspect(&name)).await
    }

    async fn snapshot(&self, vm: &VmShape, label: &str) -> Result<Option<SnapshotHandle>> {
        let (vm, label) = (vm.clone(), label.to_string());
        self.run(move |h| h.snapshot(&vm, &label)).await
    }

    async fn export(
        &self,
        vm: &VmShape,
        snapshot: Option<&SnapshotHandle>,
    ) -> Result<Box<dyn ExportSession>> {
        let snapshot = match snapshot {
            Some(SnapshotHandle::Libvirt { name, .. }) => Some(name.clone()),
            Some(other) => return Err(foreign(other.provider(), "snapshot")),
            None => None,
        };
        Ok(Box::new(Export {
            provider: self.clone(),
            vm: vm.clone(),
            snapshot,
        }))
    }

    async fn delete_snapshot(&self, snapshot: &SnapshotHandle, owner: &str) -> Result<()> {
        let SnapshotHandle::Libvirt { domain_uuid, name } = snapshot.clone() else {
            return Err(foreign(snapshot.provider(), "snapshot"));
        };
        mark::ensure_snapshot_ours(snapshot, owner)?;
        self.run(move |h| h.delete_snapshot(&domain_uuid, &name))
            .await
    }

    async fn delete(&self, vm: &VmShape) -> Result<()> {
        let vm = vm.clone();
        self.run(move |h| h.delete_source(&vm)).await
    }

    async fn stop(&self, vm: &VmShape, how: StopSource, timeout: Duration) -> Result<()> {
        let vm = vm.clone();
        self.run(move |h| h.stop(&vm, how, timeout)).await
    }

    async fn start(&self, vm: &VmShape) -> Result<()> {
        let vm = vm.clone();
        self.run(move |h| h.start_source(&vm)).await
    }
}

/// Export of one domain's disks: reads the frozen base images (or the images of a stopped domain).
struct Export {
    provider: LibvirtProvider,
    vm: VmShape,
    /// Name of the migration snapshot, when one was taken.
    snapshot: Option<String>,
}

#[async_trait]
impl ExportSession for Export {
    async fn export_disk(
        &mut self,
        disk: &SourceDisk,
        dir: &std::path::Path,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let (vm, disk, snapshot) = (self.vm.clone(), disk.clone(), self.snapshot.clone());
        let (dir, progress) = (dir.to_path_buf(), progress.clone());
        self.provider
            .run(move |h| h.export(&vm, &disk, snapshot.as_deref(), dir, &progress))
            .await
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    async fn abort(self: Box<Self>) {}
}

#[async_trait]
impl Target for LibvirtProvider {
    fn kind(&self) -> ProviderType {
        ProviderType::Libvirt
    }

    async fn check(&self) -> Result<()> {
        self.connect_and_log().await
    }

    async fn find_vms(&self, name: &str, owner: &str) -> Result<Vec<FoundVm>> {
        let (name, owner) = (name.to_string(), owner.to_string());
        self.run(move |h| h.find_target(&name, &owner)).await
    }

    async fn preflight(&self, vm: &NewVm) -> Result<()> {
        let pool = vm
            .storage_hint
            .clone()
            .unwrap_or_else(|| self.default_pool.clone());
        self.run(move |h| h.pool_by_name(&pool).map(|_| ())).await
    }

    async fn import(
        &self,
        vm: &NewVm,
        imported: &[Option<TargetDiskHandle>],
    ) -> Result<Box<dyn ImportSession>> {
        let paths = imported
            .iter()
            .map(|h| match h {
                None => Ok(None),
                Some(TargetDiskHandle::Libvirt { path }) => {
                    ensure_volume_ours(path, &vm.owner).map(|()| Some(path.clone()))
                }
                Some(other) => Err(foreign(other.provider(), "disk")),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(Import {
            provider: self.clone(),
            pool: vm
                .storage_hint
                .clone()
                .unwrap_or_else(|| self.default_pool.clone()),
            vm: vm.clone(),
            paths,
        }))
    }

    fn reader(&self) -> &dyn Source {
        self
    }

    async fn validate(
        &self,
        vm: &NewVm,
        handle: &TargetVmHandle,
        disks: &[Option<TargetDiskHandle>],
    ) -> Result<()> {
        let TargetVmHandle::Libvirt { uuid, .. } = handle.clone() else {
            return Err(foreign(handle.provider(), "VM"));
        };
        let paths = disk_paths(disks)?;
        let vm = vm.clone();
        self.run(move |h| h.validate(&vm, &uuid, &paths)).await
    }

    async fn start_vm(&self, handle: &TargetVmHandle, owner: &str) -> Result<()> {
        let TargetVmHandle::Libvirt { uuid, name } = handle.clone() else {
            return Err(foreign(handle.provider(), "VM"));
        };
        let owner = owner.to_string();
        self.run(move |h| h.start_target(&uuid, &name, &owner))
            .await
    }

    async fn delete_vm(&self, handle: &TargetVmHandle, owner: &str) -> Result<()> {
        let TargetVmHandle::Libvirt { uuid, name } = handle.clone() else {
            return Err(foreign(handle.provider(), "VM"));
        };
        let owner = owner.to_string();
        self.run(move |h| h.delete_target(&uuid, &name, &owner))
            .await
    }

    async fn delete_disk(&self, handle: &TargetDiskHandle, owner: &str) -> Result<()> {
        let TargetDiskHandle::Libvirt { path } = handle.clone() else {
            return Err(foreign(handle.provider(), "disk"));
        };
        ensure_volume_ours(&path, owner)?;
        self.run(move |h| h.delete_volume_at(&path).map(|_| ()))
            .await
    }
}

/// Import of one domain: each disk becomes a pool volume at once; `finish` defines the domain.
struct Import {
    provider: LibvirtProvider,
    pool: String,
    vm: NewVm,
    /// Volume path of each disk imported so far (or by an earlier attempt).
    paths: Vec<Option<String>>,
}

#[async_trait]
impl ImportSession for Import {
    async fn import_disk(
        &mut self,
        index: usize,
        input: ImportInput<'_>,
        progress: &Progress,
    ) -> Result<Option<TargetDiskHandle>> {
        let ImportInput::File(image) = input else {
            return Err(Error::Invalid(
                "the libvirt target imports disks from files only".into(),
            ));
        };
        let disk = self
            .vm
            .disks
            .get(index)
            .ok_or_else(|| Error::Invalid(format!("the VM has no disk {index} to import")))?;
        let stem = format!("{}-{}", file_safe(&self.vm.name), file_safe(&disk.name));
        let job = target::ImportJob {
            volume: format!(
                "{}.{}",
                mark::tagged(&stem, &self.vm.owner),
                image.format.as_str()
            ),
            owner: self.vm.owner.clone(),
            pool: self.pool.clone(),
            image: image.clone(),
            disk_name: disk.name.clone(),
            virtual_size: disk.virtual_size,
        };
        let progress = progress.clone();
        let path = self
            .provider
            .run(move |h| h.import(&job, &progress))
            .await?;
        if let Some(slot) = self.paths.get_mut(index) {
            *slot = Some(path.clone());
        }
        Ok(Some(TargetDiskHandle::Libvirt { path }))
    }

    async fn finish(self: Box<Self>) -> Result<TargetVmHandle> {
        let paths = self
            .paths
            .iter()
            .zip(&self.vm.disks)
            .map(|(p, d)| {
                p.clone()
                    .ok_or_else(|| Error::Invalid(format!("disk {} was not imported", d.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let vm = self.vm.clone();
        self.provider.run(move |h| h.create(&vm, &paths)).await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// The volume paths in libvirt disk handles, in order.
fn disk_paths(disks: &[Option<TargetDiskHandle>]) -> Result<Vec<String>> {
    disks
        .iter()
        .enumerate()
        .map(|(i, h)| match h {
            Some(TargetDiskHandle::Libvirt { path }) => Ok(path.clone()),
            Some(other) => Err(foreign(other.provider(), "disk")),
            None => Err(Error::Invalid(format!("disk {i} has no libvirt volume"))),
        })
        .collect()
}

/// Refuses a volume whose name (the last part of its path) does not carry `owner`'s tag.
fn ensure_volume_ours(path: &str, owner: &str) -> Result<()> {
    if !mark::carries_tag(mark::file_name(path), owner) {
        return Err(Error::NotOurs(format!(
            "volume {path} does not carry the tag of migration {owner} in its name"
        )));
    }
    Ok(())
}

/// A handle of another provider type reached this one: the status was written for another target.
fn foreign(kind: ProviderType, what: &str) -> Error {
    Error::Invalid(format!(
        "the recorded {what} belongs to a {kind} provider, not to this libvirt provider"
    ))
}

/// A connection plus what messages need: all blocking work lives here (source side in
/// [`source`], target side in [`target`]).
struct Host<'a> {
    conn: &'a Connect,
    ep: &'a Endpoint,
    default_bridge: Option<&'a str>,
}

impl Host<'_> {
    fn err(&self, context: impl std::fmt::Display, e: VirtError) -> Error {
        self.ep.error(context, e)
    }

    fn domain_by_name(&self, name: &str) -> Result<Domain> {
        Domain::lookup_by_name(self.conn, name).map_err(|e| match e.code() {
            ErrorNumber::NoDomain => Error::NotFound {
                what: "libvirt domain".into(),
                detail: format!("{name:?} on {}", self.ep.shown()),
            },
            _ => self.err(format_args!("looking up domain {name:?}"), e),
        })
    }

    fn is_active(&self, dom: &Domain) -> Result<bool> {
        dom.is_active()
            .map_err(|e| self.err("reading the domain state", e))
    }

    /// Starts a defined domain (a running one is left as it is). A KVM guest a nested KVM host
    /// refuses for an MSR ("failed to set MSR 0x10a") is redefined with `arch-capabilities`
    /// disabled and started again.
    fn start_domain(&self, dom: &Domain, name: &str) -> Result<()> {
        if self.is_active(dom)? {
            return Ok(());
        }
        let failed = |e: VirtError| {
            Error::Invalid(format!(
                "starting domain {name:?} on {} failed: {}",
                self.ep.shown(),
                e.message()
            ))
        };
        let Err(e) = dom.create() else {
            tracing::info!("domain {name:?} started");
            return Ok(());
        };
        let definition = dom
            .get_xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(|e| self.err("reading the domain definition", e))?;
        let fixed = xml::without_arch_capabilities(&definition);
        let (true, Some(fixed)) = (e.message().contains("MSR"), fixed) else {
            return Err(failed(e));
        };
        tracing::warn!(
            "starting {name:?} failed ({}); redefining its CPU without arch-capabilities, as nested \
             KVM hosts need",
            e.message()
        );
        let dom = Domain::define_xml(self.conn, &fixed).map_err(|e| {
            self.ep
                .definition_error(format_args!("redefining domain {name:?}"), e)
        })?;
        dom.create().map_err(failed)?;
        tracing::info!("domain {name:?} started");
        Ok(())
    }

    /// A domain by UUID (the one inspection or creation recorded).
    fn domain_by_uuid(&self, uuid: &str) -> Result<Domain> {
        Domain::lookup_by_uuid_string(self.conn, uuid).map_err(|e| match e.code() {
            ErrorNumber::NoDomain => Error::NotFound {
                what: "libvirt domain".into(),
                detail: format!("UUID {uuid} on {}", self.ep.shown()),
            },
            _ => self.err(format_args!("looking up domain {uuid}"), e),
        })
    }

    /// The domain's XML: the live definition when it runs, else the persistent one.
    fn domain_info(&self, dom: &Domain) -> Result<DomainInfo> {
        let xml = dom
            .get_xml_desc(0)
            .map_err(|e| self.err("reading the domain XML", e))?;
        xml::parse_domain(&xml).map_err(Error::Invalid)
    }

    fn pool_by_name(&self, name: &str) -> Result<StoragePool> {
        StoragePool::lookup_by_name(self.conn, name).map_err(|e| match e.code() {
            ErrorNumber::NoStoragePool => Error::NotFound {
                what: "libvirt storage pool".into(),
                detail: format!("{name:?} on {}", self.ep.shown()),
            },
            _ => self.err(format_args!("looking up storage pool {name:?}"), e),
        })
    }

    fn pool_info(&self, pool: &StoragePool) -> Result<PoolInfo> {
        let xml = pool
            .get_xml_desc(0)
            .map_err(|e| self.err("reading the storage pool XML", e))?;
        xml::parse_pool(&xml).map_err(Error::Invalid)
    }

    fn volume_info(&self, vol: &StorageVol) -> Result<xml::VolumeInfo> {
        let xml = vol
            .get_xml_desc(0)
            .map_err(|e| self.err("reading the storage volume XML", e))?;
        xml::parse_volume(&xml).map_err(Error::Invalid)
    }

    /// Rescans every active pool, so files created behind libvirt's back become volumes.
    fn refresh_pools(&self) {
        let pools = self
            .conn
            .list_all_storage_pools(sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
            .unwrap_or_default();
        for pool in pools {
            if let Err(e) = pool.refresh(0) {
                tracing::debug!("refreshing a storage pool: {}", e.message());
            }
        }
    }

    /// The pool volume at `path`. `None` when no pool holds it, even after a rescan.
    fn find_volume(&self, path: &str) -> Result<Option<StorageVol>> {
        for attempt in 0..2 {
            match StorageVol::lookup_by_path(self.conn, path) {
                Ok(v) => return Ok(Some(v)),
                Err(e) if e.code() == ErrorNumber::NoStorageVolume => {
                    if attempt == 0 {
                        self.refresh_pools();
                    }
                }
                Err(e) => return Err(self.err(format_args!("looking up volume {path}"), e)),
            }
        }
        Ok(None)
    }

    fn volume_at(&self, path: &str) -> Result<StorageVol> {
        self.find_volume(path)?.ok_or_else(|| Error::NotFound {
            what: "libvirt storage volume".into(),
            detail: format!(
                "{path} on {}: the file is in no storage pool, and the runner reads and writes disks \
                 through pool volumes (define a pool for its directory)",
                self.ep.shown()
            ),
        })
    }

    /// The host path of a disk's source.
    fn disk_path(&self, disk: &DiskInfo) -> Result<String> {
        match &disk.source {
            DiskSource::Path(p) => Ok(p.clone()),
            DiskSource::Volume { pool, volume } => {
                let pool = self.pool_by_name(pool)?;
                let vol = StorageVol::lookup_by_name(&pool, volume)
                    .map_err(|e| self.err(format_args!("looking up volume {volume:?}"), e))?;
                vol.get_path()
                    .map_err(|e| self.err(format_args!("reading the path of volume {volume:?}"), e))
            }
            DiskSource::Other(kind) => Err(Error::Invalid(format!(
                "disk {} is a {kind} disk: the libvirt provider migrates file, block and pool volume disks",
                disk.target
            ))),
            DiskSource::Empty => Err(Error::Invalid(format!(
                "disk {} has no source",
                disk.target
            ))),
        }
    }

    /// Opens a download stream on `vol`: sparse when the daemon supports it.
    fn open_download(&self, vol: &StorageVol, path: &str) -> Result<(Stream, bool)> {
        let stream = Stream::new(self.conn, 0).map_err(|e| self.err("opening a stream", e))?;
        match vol.download(&stream, 0, 0, sys::VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM) {
            Ok(()) => return Ok((stream, true)),
            Err(e)
                if matches!(
                    e.code(),
                    ErrorNumber::NoSupport
                        | ErrorNumber::ArgumentUnsupported
                        | ErrorNumber::InvalidArg
                ) =>
            {
                tracing::info!(
                    "sparse download unsupported ({}); reading every byte",
                    e.message()
                );
            }
            Err(e) => return Err(self.err(format_args!("downloading {path}"), e)),
        }
        let stream = Stream::new(self.conn, 0).map_err(|e| self.err("opening a stream", e))?;
        vol.download(&stream, 0, 0, 0)
            .map_err(|e| self.err(format_args!("downloading {path}"), e))?;
        Ok((stream, false))
    }

    /// Stops and undefines `dom` (named `name`) and deletes its data disks' volumes: all of them
    /// (a source, `owner` None) or only those that carry `owner`'s tag (a target).
    fn delete_domain(&self, dom: &Domain, name: &str, owner: Option<&str>) -> Result<()> {
        let info = self.domain_info(dom)?;
        let paths = self.disposable_disks(&info, name, owner);
        if dom
            .is_active()
            .map_err(|e| self.err("reading the domain state", e))?
        {
            dom.destroy()
                .map_err(|e| self.err(format_args!("stopping domain {name:?}"), e))?;
        }
        dom.undefine_flags(
            sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                | sys::VIR_DOMAIN_UNDEFINE_NVRAM,
        )
        .map_err(|e| self.err(format_args!("undefining domain {name:?}"), e))?;
        for path in &paths {
            if !self.delete_volume_at(path)? {
                tracing::warn!("disk {path} of {name:?} is in no storage pool; left in place");
            }
        }
        tracing::info!("deleted domain {name:?} and {} disk(s)", paths.len());
        Ok(())
    }

    /// The volume paths of the data disks that go with a domain: every one (`owner` None), or
    /// those that carry `owner`'s tag. The others are kept, with a warning.
    fn disposable_disks(&self, info: &DomainInfo, name: &str, owner: Option<&str>) -> Vec<String> {
        info.data_disks()
            .into_iter()
            .filter_map(|d| {
                let path = self.disk_path(d).and_then(|p| match owner {
                    Some(o) => ensure_volume_ours(&p, o).map(|()| p),
                    None => Ok(p),
                });
                path.map_err(|e| tracing::warn!("disk {} of {name:?} is kept: {e}", d.target))
                    .ok()
            })
            .collect()
    }

    /// Deletes the volume at `path`. `false` when there is none.
    fn delete_volume_at(&self, path: &str) -> Result<bool> {
        let Some(vol) = self.find_volume(path)? else {
            return Ok(false);
        };
        match vol.delete(0) {
            Ok(()) => Ok(true),
            Err(e) if e.code() == ErrorNumber::NoStorageVolume => Ok(false),
            Err(e) => Err(self.err(format_args!("deleting volume {path}"), e)),
        }
    }
}

/// The runner's format for a libvirt disk format name.
fn disk_format(name: &str, disk: &str) -> Result<DiskFormat> {
    match name {
        "qcow2" => Ok(DiskFormat::Qcow2),
        "raw" => Ok(DiskFormat::Raw),
        "vmdk" => Ok(DiskFormat::Vmdk),
        other => Err(Error::Invalid(format!(
            "disk {disk} has format {other}; the runner migrates qcow2, raw and vmdk images"
        ))),
    }
}

/// `s` with every character outside `[A-Za-z0-9._-]` replaced by `-`: safe in volume and file names.
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A snapshot name from the pipeline's label: file-safe, at most 64 characters (it also names the
/// overlay files).
fn snapshot_name(label: &str) -> String {
    let name: String = file_safe(label).chars().take(64).collect();
    if name.trim_matches('.').is_empty() {
        "virtrigaud".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_file_name_safe() {
        assert_eq!(snapshot_name("vrg-1234/attempt 2"), "vrg-1234-attempt-2");
        assert_eq!(snapshot_name(".."), "virtrigaud");
        assert_eq!(snapshot_name(&"x".repeat(100)).len(), 64);
        assert_eq!(file_safe("Hard disk 1/x"), "Hard-disk-1-x");
    }
}
