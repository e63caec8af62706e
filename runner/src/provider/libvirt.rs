//! libvirt/KVM through libvirt's own Rust bindings (the `virt` crate). Every libvirt call blocks, so
//! each provider method runs its calls on a blocking thread ([`LibvirtProvider::run`]).
//!
//! Disks move through storage-volume streams, which work against a remote libvirtd without any
//! shell on the host:
//! - source: the domain is found by name; its data disks (cdroms skipped) are listed in bus order.
//!   A running domain gets an external, disk-only snapshot whose qcow2 overlays sit next to the base
//!   images (so they are pool volumes); the base images stop changing and are downloaded with a
//!   sparse stream. Deleting the snapshot commits each overlay back into its base (active block
//!   commit, then pivot), removes the snapshot metadata and the overlay volumes: the domain is left
//!   exactly as before. A stopped domain needs no snapshot.
//! - target: volumes are created in the pool named by `targetStorageHint` (else the Provider's
//!   `defaults.datastore`, else `default`) and filled through upload streams (sparse for raw images);
//!   the domain is defined from the source's shape and started only if the source was running.

mod connection;
mod ffi;
mod xml;

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crd::plan::ProviderPlan;
use crd::{DiskFormat, ProviderType};
use sha2::{Digest as _, Sha256};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::domain_snapshot::DomainSnapshot;
use virt::error::{Error as VirtError, ErrorNumber};
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

use self::connection::{Connection, Endpoint};
use self::ffi::Received;
use self::xml::{DiskInfo, DiskSource, DomainInfo, PoolInfo};
use super::{
    CreateVm, CreatedVm, ImportDisk, ImportedDisk, LocalImage, Provider, Snapshot, SourceDisk,
    VmShape,
};
use crate::credentials::Credentials;
use crate::progress::{Progress, human_bytes};
use crate::{Error, Result};

/// Pool used when neither the migration nor the Provider names one.
pub const DEFAULT_POOL: &str = "default";
/// Stream buffer: libvirt sends at most 256 KiB per message.
const CHUNK: usize = 1 << 20;
/// A block commit that makes no progress for this long is given up.
const COMMIT_STALL: Duration = Duration::from_secs(600);
/// How often block job progress is polled.
const POLL: Duration = Duration::from_millis(200);
/// Pivot attempts, [`POLL`] apart, while libvirt waits for the commit job's ready event.
const PIVOT_TRIES: u32 = 150;

/// A libvirt host as a migration source and target.
pub struct LibvirtProvider {
    endpoint: Arc<Endpoint>,
    default_pool: String,
    default_bridge: Option<String>,
    /// The open connection, shared by concurrent calls; reopened when it died.
    conn: Mutex<Option<Arc<Connection>>>,
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
    /// A provider for `plan`, authenticating with the `scope` (`source` or `target`) credentials.
    /// Nothing is contacted until the first call.
    pub fn new(plan: &ProviderPlan, creds: &Credentials, scope: &str) -> Result<Self> {
        let endpoint = Endpoint::new(&plan.endpoint, plan.insecure_skip_verify, creds, scope)?;
        let defaults = plan.defaults.as_ref();
        Ok(LibvirtProvider {
            endpoint: Arc::new(endpoint),
            default_pool: defaults
                .and_then(|d| d.datastore.clone())
                .unwrap_or_else(|| DEFAULT_POOL.to_string()),
            default_bridge: defaults.and_then(|d| d.network.clone()),
            conn: Mutex::new(None),
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
        let endpoint = self.endpoint.clone();
        let conn = Arc::new(blocking(move || endpoint.open()).await?);
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
impl Provider for LibvirtProvider {
    fn kind(&self) -> ProviderType {
        ProviderType::Libvirt
    }

    async fn check(&self) -> Result<()> {
        crate::endpoint::check(self.endpoint.shown()).await?;
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

    async fn inspect_vm(&self, name: &str) -> Result<VmShape> {
        let name = name.to_string();
        self.run(move |h| h.inspect(&name)).await
    }

    async fn vm_exists(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.run(move |h| match Domain::lookup_by_name(h.conn, &name) {
            Ok(_) => Ok(true),
            Err(e) if e.code() == ErrorNumber::NoDomain => Ok(false),
            Err(e) => Err(h.err(format_args!("looking up domain {name:?}"), e)),
        })
        .await
    }

    async fn snapshot(&self, vm: &VmShape, label: &str) -> Result<Option<Snapshot>> {
        let (vm, label) = (vm.clone(), label.to_string());
        self.run(move |h| h.snapshot(&vm, &label)).await
    }

    async fn export_disk(
        &self,
        vm: &VmShape,
        disk: &SourceDisk,
        snapshot: Option<&Snapshot>,
        dir: &Path,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let (vm, disk, snapshot) = (vm.clone(), disk.clone(), snapshot.cloned());
        let (dir, progress) = (dir.to_path_buf(), progress.clone());
        self.run(move |h| h.export(&vm, &disk, snapshot.as_ref(), dir, &progress))
            .await
    }

    async fn delete_snapshot(&self, vm: &VmShape, snapshot: &Snapshot) -> Result<()> {
        let (vm, snapshot) = (vm.clone(), snapshot.clone());
        self.run(move |h| h.delete_snapshot(&vm, &snapshot)).await
    }

    async fn import_disk(
        &self,
        disk: &ImportDisk<'_>,
        progress: &Progress,
    ) -> Result<ImportedDisk> {
        let job = ImportJob {
            volume: format!(
                "{}-{}.{}",
                file_safe(disk.vm_name),
                file_safe(disk.disk_name),
                disk.image.format.as_str()
            ),
            pool: disk
                .storage_hint
                .map_or_else(|| self.default_pool.clone(), str::to_string),
            image: disk.image.clone(),
            disk_name: disk.disk_name.to_string(),
            virtual_size: disk.virtual_size,
        };
        let progress = progress.clone();
        self.run(move |h| h.import(&job, &progress)).await
    }

    async fn create_vm(&self, vm: &CreateVm<'_>) -> Result<CreatedVm> {
        let spec = VmSpec::from(vm);
        self.run(move |h| h.create(&spec)).await
    }

    async fn validate_vm(&self, vm: &CreateVm<'_>) -> Result<Vec<Option<String>>> {
        let spec = VmSpec::from(vm);
        self.run(move |h| h.validate(&spec)).await
    }

    async fn delete_vm(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.run(move |h| h.delete_vm(&name)).await
    }

    async fn delete_disk(&self, disk: &ImportedDisk) -> Result<()> {
        let path = disk.id.clone();
        self.run(move |h| h.delete_volume_at(&path).map(|_| ()))
            .await
    }
}

/// An owned copy of [`ImportDisk`] for the blocking thread.
struct ImportJob {
    volume: String,
    pool: String,
    image: LocalImage,
    disk_name: String,
    virtual_size: u64,
}

/// An owned copy of [`CreateVm`] for the blocking thread.
struct VmSpec {
    name: String,
    cpus: u32,
    memory_bytes: u64,
    firmware: super::Firmware,
    disks: Vec<ImportedDisk>,
    networks: Vec<crd::NetworkHint>,
    start: bool,
}

impl From<&CreateVm<'_>> for VmSpec {
    fn from(vm: &CreateVm<'_>) -> Self {
        VmSpec {
            name: vm.name.to_string(),
            cpus: vm.cpus,
            memory_bytes: vm.memory_bytes,
            firmware: vm.firmware,
            disks: vm.disks.to_vec(),
            networks: vm.networks.to_vec(),
            start: vm.start,
        }
    }
}

/// A connection plus what messages need: all blocking work lives here.
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

    /// The source domain of a migration, by the UUID inspection recorded.
    fn domain_of(&self, vm: &VmShape) -> Result<Domain> {
        Domain::lookup_by_uuid_string(self.conn, &vm.id).map_err(|e| match e.code() {
            ErrorNumber::NoDomain => Error::NotFound {
                what: "libvirt domain".into(),
                detail: format!("UUID {} on {}", vm.id, self.ep.shown()),
            },
            _ => self.err(format_args!("looking up domain {}", vm.id), e),
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

    fn inspect(&self, name: &str) -> Result<VmShape> {
        let dom = self.domain_by_name(name)?;
        let running = dom
            .is_active()
            .map_err(|e| self.err("reading the domain state", e))?;
        let info = self.domain_info(&dom)?;
        let mut disks = Vec::new();
        for d in info.data_disks() {
            let format = disk_format(d.format.as_deref().unwrap_or("raw"), &d.target)?;
            let path = self.disk_path(d)?;
            let vol = self.volume_at(&path)?;
            let virtual_size = vol
                .get_info()
                .map_err(|e| self.err(format_args!("reading volume {path}"), e))?
                .capacity;
            disks.push(SourceDisk {
                name: d.target.clone(),
                format,
                virtual_size,
                locator: path,
            });
        }
        Ok(VmShape {
            id: info.uuid,
            cpus: info.vcpus,
            memory_bytes: info.memory_bytes,
            firmware: info.firmware,
            running,
            disks,
            nics: info.nics,
        })
    }

    fn snapshot(&self, vm: &VmShape, label: &str) -> Result<Option<Snapshot>> {
        let dom = self.domain_of(vm)?;
        if !dom
            .is_active()
            .map_err(|e| self.err("reading the domain state", e))?
        {
            return Ok(None);
        }
        let name = snapshot_name(label);
        if let Some(existing) = self.find_snapshot(&dom, &name)? {
            if self.snapshot_in_place(&dom, &existing, vm)? {
                tracing::info!("reusing snapshot {name} from an earlier attempt");
                return Ok(Some(Snapshot { id: name }));
            }
            tracing::info!("removing the incomplete snapshot {name} of an earlier attempt");
            self.remove_snapshot(&dom, existing, &name)?;
        }

        let live = self.domain_info(&dom)?;
        let mut overlays = Vec::new();
        let mut pools = Vec::new();
        for disk in &vm.disks {
            let d = live.disk(&disk.name).ok_or_else(|| {
                Error::Invalid(format!(
                    "disk {} is no longer attached to the domain",
                    disk.name
                ))
            })?;
            if let Some(backing) = &d.backing {
                return Err(Error::Invalid(format!(
                    "disk {} runs on an overlay of {backing}: the runner snapshots disks without backing \
                     chains (commit them with `virsh blockcommit` first)",
                    disk.name
                )));
            }
            let base = self.disk_path(d)?;
            let vol = self.volume_at(&base)?;
            let pool = StoragePool::lookup_by_volume(&vol)
                .map_err(|e| self.err(format_args!("finding the pool of {base}"), e))?;
            let pool_info = self.pool_info(&pool)?;
            if !pool_info.is_file_based() {
                return Err(Error::Invalid(format!(
                    "disk {} is in a {} pool: snapshots of running domains need a file-based pool \
                     (dir, fs, netfs); shut the VM down to migrate it",
                    disk.name, pool_info.kind
                )));
            }
            // next to the base image, so that the overlay is a volume of the same pool
            let overlay = format!("{base}.{name}");
            if let Err(e) = pool.refresh(0) {
                tracing::debug!("refreshing the pool of {base}: {}", e.message());
            }
            let overlay_name = Path::new(&overlay)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Ok(stale) = StorageVol::lookup_by_name(&pool, &overlay_name) {
                // not in use: the domain's disks have no backing chain (checked above)
                stale
                    .delete(0)
                    .map_err(|e| self.err(format_args!("deleting the stale {overlay}"), e))?;
                tracing::info!("removed {overlay}, left over by an earlier attempt");
            }
            overlays.push((disk.name.clone(), overlay));
            pools.push(pool);
        }
        let excluded: Vec<String> = live
            .disks
            .iter()
            .map(|d| d.target.clone())
            .filter(|t| !vm.disks.iter().any(|d| &d.name == t))
            .collect();
        let snapshot_xml = xml::snapshot_xml(&name, &overlays, &excluded);
        let flags =
            sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
        let quiesced = live.guest_agent
            && match DomainSnapshot::create_xml(
                &dom,
                &snapshot_xml,
                flags | sys::VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE,
            ) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(
                        "quiescing the guest file systems failed ({}); taking a crash-consistent snapshot",
                        e.message()
                    );
                    false
                }
            };
        if !quiesced {
            DomainSnapshot::create_xml(&dom, &snapshot_xml, flags)
                .map_err(|e| self.err(format_args!("creating snapshot {name}"), e))?;
        }
        // the overlays become volumes of their pools
        for pool in &pools {
            if let Err(e) = pool.refresh(0) {
                tracing::debug!("refreshing a pool after the snapshot: {}", e.message());
            }
        }
        tracing::info!(
            "snapshot {name}: {} disk(s) now write to overlays, base images frozen{}",
            overlays.len(),
            if quiesced { " (guest quiesced)" } else { "" }
        );
        Ok(Some(Snapshot { id: name }))
    }

    fn find_snapshot(&self, dom: &Domain, name: &str) -> Result<Option<DomainSnapshot>> {
        match DomainSnapshot::lookup_by_name(dom, name, 0) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.code() == ErrorNumber::NoDomainSnapshot => Ok(None),
            Err(e) => Err(self.err(format_args!("looking up snapshot {name}"), e)),
        }
    }

    fn snapshot_overlays(&self, snap: &DomainSnapshot) -> Result<Vec<(String, String)>> {
        let xml = snap
            .get_xml_desc(0)
            .map_err(|e| self.err("reading the snapshot XML", e))?;
        xml::parse_snapshot_overlays(&xml).map_err(Error::Invalid)
    }

    /// Whether every disk of `vm` currently writes to its overlay from `snap`.
    fn snapshot_in_place(&self, dom: &Domain, snap: &DomainSnapshot, vm: &VmShape) -> Result<bool> {
        let overlays = self.snapshot_overlays(snap)?;
        let live = self.domain_info(dom)?;
        Ok(overlays.len() == vm.disks.len()
            && vm.disks.iter().all(|disk| {
                overlays.iter().any(|(name, overlay)| {
                    name == &disk.name
                        && live.disk(name).is_some_and(|d| {
                            d.source == DiskSource::Path(overlay.clone()) && d.backing.is_some()
                        })
                })
            }))
    }

    /// The image to read for `disk`: its frozen base under the snapshot, else its source.
    fn export_source(
        &self,
        vm: &VmShape,
        disk: &SourceDisk,
        snapshot: Option<&Snapshot>,
    ) -> Result<(String, DiskFormat)> {
        let Some(snapshot) = snapshot else {
            return Ok((disk.locator.clone(), disk.format));
        };
        let dom = self.domain_of(vm)?;
        let snap = self
            .find_snapshot(&dom, &snapshot.id)?
            .ok_or_else(|| Error::NotFound {
                what: "libvirt snapshot".into(),
                detail: format!("{} of domain {}", snapshot.id, vm.id),
            })?;
        let overlays = self.snapshot_overlays(&snap)?;
        let overlay = overlays
            .iter()
            .find(|(name, _)| name == &disk.name)
            .map(|(_, o)| o.clone())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "snapshot {} has no overlay for disk {}",
                    snapshot.id, disk.name
                ))
            })?;
        let live = self.domain_info(&dom)?;
        match live.disk(&disk.name) {
            Some(d) if d.source == DiskSource::Path(overlay.clone()) => {
                let base = d.backing.clone().ok_or_else(|| {
                    Error::Invalid(format!("the live XML shows no base image under {overlay}"))
                })?;
                // the base's own format, as libvirt recorded it (the disk's driver now says qcow2)
                let format = match d.backing_format.as_deref() {
                    Some(f) => disk_format(f, &disk.name)?,
                    None => disk.format,
                };
                Ok((base, format))
            }
            _ => Err(Error::Invalid(format!(
                "disk {} no longer writes to the snapshot overlay {overlay}",
                disk.name
            ))),
        }
    }

    fn export(
        &self,
        vm: &VmShape,
        disk: &SourceDisk,
        snapshot: Option<&Snapshot>,
        dir: PathBuf,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let (path, format) = self.export_source(vm, disk, snapshot)?;
        let vol = self.volume_at(&path)?;
        // (a raw image may hold anything, also what a format probe takes for a backing file)
        if format != DiskFormat::Raw
            && let Some(backing) = self.volume_info(&vol)?.backing
        {
            return Err(Error::Invalid(format!(
                "disk {} ({path}) is an overlay of {backing}: the runner exports images without backing \
                 chains (commit or flatten it first)",
                disk.name
            )));
        }
        let physical = vol
            .get_info_flags(sys::VIR_STORAGE_VOL_GET_PHYSICAL)
            .map_err(|e| self.err(format_args!("reading volume {path}"), e))?
            .allocation;
        // the bytes that will move: a qcow2 file is smaller than its disk, a sparse raw one is not
        progress.set_total(physical);
        let out = dir.join(format!("{}.{format}", file_safe(&disk.name)));
        let started = Instant::now();
        let (data, holes) = self.download(&vol, &path, &out, progress)?;
        tracing::info!(
            "exported disk {} from {path}: {} data, {} holes in {:.1}s",
            disk.name,
            human_bytes(data),
            human_bytes(holes),
            started.elapsed().as_secs_f64()
        );
        Ok(LocalImage { path: out, format })
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

    /// Streams `vol` into the file `out`, keeping holes. Returns (data bytes, hole bytes).
    fn download(
        &self,
        vol: &StorageVol,
        path: &str,
        out: &Path,
        progress: &Progress,
    ) -> Result<(u64, u64)> {
        let mut file =
            File::create(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
        let (stream, sparse) = self.open_download(vol, path)?;
        let mut buf = vec![0u8; CHUNK];
        let (mut data, mut holes) = (0u64, 0u64);
        let result = (|| -> Result<()> {
            loop {
                let received = if sparse {
                    ffi::recv_sparse(&stream, &mut buf)
                } else {
                    stream.recv(&mut buf).map(|n| match n {
                        0 => Received::End,
                        n => Received::Data(n),
                    })
                }
                .map_err(|e| self.err(format_args!("reading {path}"), e))?;
                match received {
                    Received::Data(n) => {
                        file.write_all(&buf[..n])
                            .map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
                        data += n as u64;
                        progress.add(n as u64);
                    }
                    Received::Hole(n) => {
                        file.seek(SeekFrom::Current(n as i64))
                            .map_err(|e| Error::io(format!("seeking {}", out.display()), e))?;
                        holes += n;
                        progress.add(n);
                    }
                    Received::End => return Ok(()),
                }
            }
        })();
        if let Err(e) = result {
            let _ = stream.abort();
            return Err(e);
        }
        stream
            .finish()
            .map_err(|e| self.err(format_args!("finishing the download of {path}"), e))?;
        // a trailing hole only moved the file position
        file.set_len(data + holes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
        Ok((data, holes))
    }

    fn delete_snapshot(&self, vm: &VmShape, snapshot: &Snapshot) -> Result<()> {
        let dom = match self.domain_of(vm) {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => {
                tracing::warn!(
                    "domain {} is gone; nothing to remove for snapshot {}",
                    vm.id,
                    snapshot.id
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match self.find_snapshot(&dom, &snapshot.id)? {
            Some(snap) => self.remove_snapshot(&dom, snap, &snapshot.id),
            None => {
                tracing::info!("snapshot {} already removed", snapshot.id);
                Ok(())
            }
        }
    }

    /// Commits every overlay of `snap` back into its base, pivots the disk onto the base, removes
    /// the snapshot metadata and the overlay volumes.
    fn remove_snapshot(&self, dom: &Domain, snap: DomainSnapshot, name: &str) -> Result<()> {
        let overlays = self.snapshot_overlays(&snap)?;
        for (disk, overlay) in &overlays {
            let live = self.domain_info(dom)?;
            let Some(d) = live.disk(disk) else {
                tracing::warn!("disk {disk} of snapshot {name} is no longer attached");
                continue;
            };
            if d.source != DiskSource::Path(overlay.clone()) {
                continue; // committed by an earlier attempt
            }
            let base = d.backing.clone().ok_or_else(|| {
                Error::Invalid(format!(
                    "disk {disk} writes to {overlay} but shows no base image"
                ))
            })?;
            if !dom
                .is_active()
                .map_err(|e| self.err("reading the domain state", e))?
            {
                return Err(Error::Invalid(format!(
                    "the domain was shut down while disk {disk} still writes to the migration overlay \
                     {overlay}: start it so that the runner can commit the overlay into {base}"
                )));
            }
            let started = Instant::now();
            self.commit_and_pivot(dom, disk)?;
            let after = self.domain_info(dom)?;
            if after.disk(disk).map(|d| &d.source) != Some(&DiskSource::Path(base.clone())) {
                return Err(Error::Invalid(format!(
                    "disk {disk} did not return to {base} after the block commit"
                )));
            }
            tracing::info!(
                "disk {disk}: committed {overlay} into {base} in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
        snap.delete(sys::VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
            .map_err(|e| self.err(format_args!("deleting the metadata of snapshot {name}"), e))?;
        for (_, overlay) in &overlays {
            self.delete_volume_at(overlay)?;
        }
        tracing::info!("snapshot {name} removed");
        Ok(())
    }

    /// Active block commit of `disk`'s overlay into its base, then pivot once the job is ready.
    fn commit_and_pivot(&self, dom: &Domain, disk: &str) -> Result<()> {
        let job_err = |what: &str, e: VirtError| self.err(format_args!("{what} of disk {disk}"), e);
        // an interrupted cleanup may have left the job running: continue with it
        if ffi::block_job_progress(dom, disk)
            .map_err(|e| job_err("reading the block job", e))?
            .is_none()
        {
            ffi::block_commit_active(dom, disk)
                .map_err(|e| job_err("starting the block commit", e))?;
        }
        let mut last = None;
        let mut moved = Instant::now();
        loop {
            match ffi::block_job_progress(dom, disk)
                .map_err(|e| job_err("reading the block job", e))?
            {
                Some((cur, end)) if cur == end => break,
                Some(p) => {
                    if last != Some(p) {
                        last = Some(p);
                        moved = Instant::now();
                    } else if moved.elapsed() > COMMIT_STALL {
                        let _ = ffi::block_job_cancel(dom, disk);
                        return Err(Error::transient(
                            format!("libvirt {}", self.ep.shown()),
                            format!(
                                "the block commit of disk {disk} made no progress for {COMMIT_STALL:?}"
                            ),
                        ));
                    }
                }
                None => {
                    return Err(Error::transient(
                        format!("libvirt {}", self.ep.shown()),
                        format!("the block commit job of disk {disk} ended before it was ready"),
                    ));
                }
            }
            std::thread::sleep(POLL);
        }
        // libvirt refuses the pivot ("not ready for pivot yet") until QEMU reported the job ready;
        // that event can trail the counters
        let mut tries = 0;
        loop {
            match ffi::block_job_pivot(dom, disk) {
                Ok(()) => return Ok(()),
                Err(e)
                    if matches!(
                        e.code(),
                        ErrorNumber::OperationInvalid | ErrorNumber::BlockCopyActive
                    ) && tries < PIVOT_TRIES =>
                {
                    tries += 1;
                    std::thread::sleep(POLL);
                }
                Err(e) => return Err(job_err("pivoting", e)),
            }
        }
    }

    fn import(&self, job: &ImportJob, progress: &Progress) -> Result<ImportedDisk> {
        let ep = self.ep.shown();
        let pool = self.pool_by_name(&job.pool)?;
        if !pool
            .is_active()
            .map_err(|e| self.err("reading the pool state", e))?
        {
            return Err(Error::Invalid(format!(
                "libvirt storage pool {:?} on {ep} is not active",
                job.pool
            )));
        }
        if let Err(e) = pool.refresh(0) {
            tracing::debug!("refreshing pool {}: {}", job.pool, e.message());
        }
        let pool_info = self.pool_info(&pool)?;
        let format = job.image.format;
        match format {
            DiskFormat::Raw => {}
            DiskFormat::Qcow2 if pool_info.is_file_based() => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "libvirt storage pool {:?} ({}) cannot hold {format} images; {}",
                    job.pool,
                    pool_info.kind,
                    if pool_info.is_file_based() {
                        "use targetDiskFormat qcow2 or raw"
                    } else {
                        "use targetDiskFormat raw"
                    }
                )));
            }
        }
        match StorageVol::lookup_by_name(&pool, &job.volume) {
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "volume {:?} already exists in libvirt storage pool {:?} on {ep}",
                    job.volume, job.pool
                )));
            }
            Err(e) if e.code() == ErrorNumber::NoStorageVolume => {}
            Err(e) => return Err(self.err(format_args!("looking up volume {:?}", job.volume), e)),
        }
        let image = &job.image.path;
        let meta = std::fs::metadata(image)
            .map_err(|e| Error::io(format!("reading {}", image.display()), e))?;
        let len = meta.len();
        let sparse = format == DiskFormat::Raw && pool_info.is_file_based();
        let needed = if sparse {
            (meta.blocks() * 512).min(len)
        } else {
            len
        };
        let available = pool
            .get_info()
            .map_err(|e| self.err("reading the pool's free space", e))?
            .available;
        if available < needed {
            return Err(Error::NoSpace(format!(
                "libvirt storage pool {:?} on {ep} has {} free, disk {} needs {}",
                job.pool,
                human_bytes(available),
                job.disk_name,
                human_bytes(needed)
            )));
        }
        // Raw volumes take the image byte for byte; a qcow2 image is uploaded verbatim into a volume of
        // its file size, and the pool's format probe then reports it as qcow2 with its virtual size.
        let vol_xml = xml::volume_xml(&job.volume, len, "raw");
        let vol = StorageVol::create_xml(&pool, &vol_xml, 0).map_err(|e| {
            self.err(
                format_args!("creating volume {:?} in pool {:?}", job.volume, job.pool),
                e,
            )
        })?;
        if progress.total() == 0 {
            progress.set_total(len);
        }
        let started = Instant::now();
        let uploaded = self
            .upload(&vol, image, len, sparse, progress)
            .and_then(|()| self.rescan(&pool, &job.pool))
            .and_then(|()| self.volume_info(&vol));
        let info = match uploaded {
            Ok(info) => info,
            Err(e) => {
                if let Err(d) = vol.delete(0) {
                    tracing::warn!(
                        "removing the partial volume {}: {}",
                        job.volume,
                        d.message()
                    );
                }
                return Err(e);
            }
        };
        let got_format = info.format.as_deref().unwrap_or("raw");
        // a raw guest disk may itself start with an image header: only qcow2 must probe as qcow2
        let format_ok = format == DiskFormat::Raw || got_format == format.as_str();
        if !format_ok || info.capacity != job.virtual_size {
            let _ = vol.delete(0);
            return Err(Error::Invalid(format!(
                "volume {:?} reads back as {got_format} of {} bytes, expected {format} of {} bytes",
                job.volume, info.capacity, job.virtual_size
            )));
        }
        tracing::info!(
            "imported disk {} into {} ({}) in {:.1}s",
            job.disk_name,
            info.path,
            human_bytes(len),
            started.elapsed().as_secs_f64()
        );
        Ok(ImportedDisk {
            id: info.path,
            format,
            virtual_size: info.capacity,
        })
    }

    /// Rescans `pool` so that it probes the volumes' formats and sizes afresh. libvirt refuses while
    /// another client builds a volume in the pool: retried for a few seconds.
    fn rescan(&self, pool: &StoragePool, name: &str) -> Result<()> {
        let mut tries = 0;
        loop {
            match pool.refresh(0) {
                Ok(_) => return Ok(()),
                Err(e) if tries < 50 && e.message().contains("asynchronous jobs") => {
                    tries += 1;
                    std::thread::sleep(POLL);
                }
                Err(e) => return Err(self.err(format_args!("refreshing storage pool {name:?}"), e)),
            }
        }
    }

    /// Streams the file `image` (`len` bytes) into `vol`; holes are sent as holes when `sparse`.
    fn upload(
        &self,
        vol: &StorageVol,
        image: &Path,
        len: u64,
        sparse: bool,
        progress: &Progress,
    ) -> Result<()> {
        let file =
            File::open(image).map_err(|e| Error::io(format!("opening {}", image.display()), e))?;
        let stream = Stream::new(self.conn, 0).map_err(|e| self.err("opening a stream", e))?;
        let flags = if sparse {
            sys::VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM
        } else {
            0
        };
        vol.upload(&stream, 0, len, flags)
            .map_err(|e| self.err("starting the upload", e))?;
        let result = if sparse {
            self.send_sparse(&stream, &file, image, len, progress)
        } else {
            self.send_all(&stream, &file, image, progress)
        };
        if let Err(e) = result {
            let _ = stream.abort();
            return Err(e);
        }
        stream.finish().map_err(|e| {
            self.err(
                format_args!("finishing the upload of {}", image.display()),
                e,
            )
        })
    }

    fn send_all(
        &self,
        stream: &Stream,
        mut file: &File,
        image: &Path,
        progress: &Progress,
    ) -> Result<()> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::io(format!("reading {}", image.display()), e))?;
            if n == 0 {
                return Ok(());
            }
            self.send(stream, &buf[..n])?;
            progress.add(n as u64);
        }
    }

    /// Sends the data extents of `file` (found with `SEEK_DATA`/`SEEK_HOLE`) and holes between them.
    fn send_sparse(
        &self,
        stream: &Stream,
        file: &File,
        image: &Path,
        len: u64,
        progress: &Progress,
    ) -> Result<()> {
        use nix::unistd::{Whence, lseek};
        let io = |e: nix::Error| Error::io(format!("reading {}", image.display()), e.into());
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        while pos < len {
            let data = match lseek(file, pos as i64, Whence::SeekData) {
                Ok(off) => off as u64,
                Err(nix::Error::ENXIO) => len, // only a hole remains
                Err(e) => return Err(io(e)),
            };
            if data > pos {
                ffi::send_hole(stream, data - pos).map_err(|e| self.err("sending a hole", e))?;
                progress.add(data - pos);
            }
            if data >= len {
                break;
            }
            let end = (lseek(file, data as i64, Whence::SeekHole).map_err(io)? as u64).min(len);
            let mut off = data;
            while off < end {
                let want = ((end - off) as usize).min(buf.len());
                let n = file
                    .read_at(&mut buf[..want], off)
                    .map_err(|e| Error::io(format!("reading {}", image.display()), e))?;
                if n == 0 {
                    return Err(Error::Invalid(format!(
                        "{} shrank while uploading",
                        image.display()
                    )));
                }
                self.send(stream, &buf[..n])?;
                progress.add(n as u64);
                off += n as u64;
            }
            pos = end;
        }
        Ok(())
    }

    fn send(&self, stream: &Stream, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = stream.send(data).map_err(|e| self.err("uploading", e))?;
            data = &data[n..];
        }
        Ok(())
    }

    fn create(&self, vm: &VmSpec) -> Result<CreatedVm> {
        let ep = self.ep.shown();
        match Domain::lookup_by_name(self.conn, &vm.name) {
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "a domain named {:?} already exists on {ep}",
                    vm.name
                )));
            }
            Err(e) if e.code() == ErrorNumber::NoDomain => {}
            Err(e) => return Err(self.err(format_args!("looking up domain {:?}", vm.name), e)),
        }
        let capabilities = self
            .conn
            .get_capabilities()
            .map_err(|e| self.err("reading the host capabilities", e))?;
        let domain_type = if xml::offers_kvm(&capabilities) {
            "kvm"
        } else {
            "qemu"
        };
        let disks: Vec<xml::NewDisk> = vm
            .disks
            .iter()
            .map(|d| xml::NewDisk {
                path: d.id.clone(),
                format: d.format,
            })
            .collect();
        let define = |uuid: Option<&str>, without_arch_capabilities| {
            let domain_xml = xml::domain_xml(&xml::NewDomain {
                name: &vm.name,
                uuid,
                domain_type,
                vcpus: vm.cpus,
                memory_bytes: vm.memory_bytes,
                firmware: vm.firmware,
                disks: &disks,
                networks: &vm.networks,
                default_bridge: self.default_bridge,
                without_arch_capabilities,
            });
            Domain::define_xml(self.conn, &domain_xml).map_err(|e| {
                self.ep
                    .definition_error(format_args!("defining domain {:?}", vm.name), e)
            })
        };
        let mut dom = define(None, false)?;
        let id = dom
            .get_uuid_string()
            .map_err(|e| self.err("reading the domain UUID", e))?;
        if vm.start {
            let mut started = dom.create().map(|_| ());
            if let Err(e) = &started
                && domain_type == "kvm"
                && e.message().contains("MSR")
            {
                tracing::warn!(
                    "starting {:?} failed ({}); redefining its CPU without arch-capabilities, as nested \
                     KVM hosts need",
                    vm.name,
                    e.message()
                );
                dom = define(Some(&id), true)?;
                started = dom.create().map(|_| ());
            }
            if let Err(e) = started {
                // leave nothing half-made: a retry would otherwise meet its own domain as a name clash
                if let Err(u) = dom.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM) {
                    tracing::warn!(
                        "undefining {:?} after a failed start: {}",
                        vm.name,
                        u.message()
                    );
                }
                return Err(Error::Invalid(format!(
                    "starting domain {:?} on {ep} failed: {}",
                    vm.name,
                    e.message()
                )));
            }
        }
        tracing::info!(
            "defined domain {:?} ({domain_type}, {} vCPU, {}, {} disk(s), {} NIC(s)){}",
            vm.name,
            vm.cpus,
            human_bytes(vm.memory_bytes),
            vm.disks.len(),
            vm.networks.len(),
            if vm.start { ", started" } else { "" }
        );
        Ok(CreatedVm { id })
    }

    fn validate(&self, vm: &VmSpec) -> Result<Vec<Option<String>>> {
        let dom = self.domain_by_name(&vm.name)?;
        let active = dom
            .is_active()
            .map_err(|e| self.err("reading the domain state", e))?;
        if vm.start && !active {
            return Err(Error::Invalid(format!(
                "domain {:?} is not running",
                vm.name
            )));
        }
        let info = self.domain_info(&dom)?;
        let disks = info.data_disks();
        if disks.len() != vm.disks.len() {
            return Err(Error::Invalid(format!(
                "domain {:?} has {} disk(s), expected {}",
                vm.name,
                disks.len(),
                vm.disks.len()
            )));
        }
        if info.nics != vm.networks.len() {
            return Err(Error::Invalid(format!(
                "domain {:?} has {} NIC(s), expected {}",
                vm.name,
                info.nics,
                vm.networks.len()
            )));
        }
        let mut hashes = Vec::new();
        for (disk, expected) in disks.iter().zip(&vm.disks) {
            let path = self.disk_path(disk)?;
            if path != expected.id {
                return Err(Error::Invalid(format!(
                    "disk {} of {:?} is {path}, expected {}",
                    disk.target, vm.name, expected.id
                )));
            }
            let vol = self.volume_at(&path)?;
            let capacity = vol
                .get_info()
                .map_err(|e| self.err(format_args!("reading volume {path}"), e))?
                .capacity;
            if capacity != expected.virtual_size {
                return Err(Error::Invalid(format!(
                    "disk {} of {:?} has a capacity of {capacity} bytes, expected {}",
                    disk.target, vm.name, expected.virtual_size
                )));
            }
            // Only a raw volume's bytes are its guest-visible content, and only a stopped guest
            // leaves them still while they are read.
            hashes.push(if expected.format == DiskFormat::Raw && !active {
                Some(self.hash_volume(&vol, &path)?)
            } else {
                None
            });
        }
        Ok(hashes)
    }

    /// SHA-256 of a volume's bytes, read back through a sparse download stream.
    fn hash_volume(&self, vol: &StorageVol, path: &str) -> Result<String> {
        let (stream, sparse) = self.open_download(vol, path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let zeros = vec![0u8; CHUNK];
        let result = (|| -> Result<()> {
            loop {
                let received = if sparse {
                    ffi::recv_sparse(&stream, &mut buf)
                } else {
                    stream.recv(&mut buf).map(|n| match n {
                        0 => Received::End,
                        n => Received::Data(n),
                    })
                }
                .map_err(|e| self.err(format_args!("reading {path}"), e))?;
                match received {
                    Received::Data(n) => hasher.update(&buf[..n]),
                    Received::Hole(mut n) => {
                        while n > 0 {
                            let k = n.min(CHUNK as u64);
                            hasher.update(&zeros[..k as usize]);
                            n -= k;
                        }
                    }
                    Received::End => return Ok(()),
                }
            }
        })();
        if let Err(e) = result {
            let _ = stream.abort();
            return Err(e);
        }
        stream
            .finish()
            .map_err(|e| self.err(format_args!("finishing the read of {path}"), e))?;
        Ok(hex::encode(hasher.finalize()))
    }

    fn delete_vm(&self, name: &str) -> Result<()> {
        let dom = match self.domain_by_name(name) {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => {
                tracing::info!("domain {name:?} does not exist; nothing to delete");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let info = self.domain_info(&dom)?;
        let paths: Vec<String> = info
            .data_disks()
            .into_iter()
            .filter_map(|d| match self.disk_path(d) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("disk {} of {name:?} is kept: {e}", d.target);
                    None
                }
            })
            .collect();
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
