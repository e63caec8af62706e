//! The libvirt source: inspection, external disk-only snapshots and their removal, volume
//! downloads.

use std::fs::File;
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crd::{DiskFormat, SnapshotHandle, StopSource};
use virt::domain::Domain;
use virt::domain_snapshot::DomainSnapshot;
use virt::error::{Error as VirtError, ErrorNumber};
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::sys;

use super::ffi::{self, Received};
use super::xml::{self, DiskSource};
use super::{CHUNK, Host, POLL, disk_format, file_safe, snapshot_name};
use crate::progress::{Progress, human_bytes};
use crate::provider::{LocalImage, OsFamily, SourceDisk, VmShape};
use crate::{Error, Result};

/// A block commit that makes no progress for this long is given up.
const COMMIT_STALL: Duration = Duration::from_secs(600);
/// Pivot attempts, [`POLL`] apart, while libvirt waits for the commit job's ready event.
const PIVOT_TRIES: u32 = 150;
/// Longest backing chain exported.
const MAX_CHAIN: usize = 16;

/// The handle of snapshot `name` of `vm`.
fn handle(vm: &VmShape, name: String) -> SnapshotHandle {
    SnapshotHandle::Libvirt {
        domain_uuid: vm.id.clone(),
        name,
    }
}

impl Host<'_> {
    pub(super) fn inspect(&self, name: &str) -> Result<VmShape> {
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
            name: name.to_string(),
            cpus: info.vcpus,
            memory_bytes: info.memory_bytes,
            firmware: info.firmware,
            os: OsFamily::Other,
            running,
            disks,
            nics: info.nics,
        })
    }

    pub(super) fn snapshot(&self, vm: &VmShape, label: &str) -> Result<Option<SnapshotHandle>> {
        let dom = self.domain_by_uuid(&vm.id)?;
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
                return Ok(Some(handle(vm, name)));
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
                if d.backing.as_deref() == Some(overlay.as_str()) {
                    return Err(Error::Invalid(format!(
                        "disk {} runs on {overlay}, a snapshot overlay of an earlier migration: \
                         commit it first",
                        disk.name
                    )));
                }
                // not in use: the disk neither writes to it nor reads through it
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
        Ok(Some(handle(vm, name)))
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
        snapshot: Option<&str>,
    ) -> Result<(String, DiskFormat)> {
        let Some(snapshot) = snapshot else {
            return Ok((disk.locator.clone(), disk.format));
        };
        let dom = self.domain_by_uuid(&vm.id)?;
        let snap = self
            .find_snapshot(&dom, snapshot)?
            .ok_or_else(|| Error::NotFound {
                what: "libvirt snapshot".into(),
                detail: format!("{snapshot} of domain {}", vm.id),
            })?;
        let overlays = self.snapshot_overlays(&snap)?;
        let overlay = overlays
            .iter()
            .find(|(name, _)| name == &disk.name)
            .map(|(_, o)| o.clone())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "snapshot {snapshot} has no overlay for disk {}",
                    disk.name
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

    pub(super) fn export(
        &self,
        vm: &VmShape,
        disk: &SourceDisk,
        snapshot: Option<&str>,
        dir: PathBuf,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let (path, format) = self.export_source(vm, disk, snapshot)?;
        let chain = self.chain(&path, format)?;
        if chain.len() > 1 {
            return self.export_chain(disk, &chain, dir, progress);
        }
        let vol = self.volume_at(&path)?;
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

    /// The image at `path` and its backing chain (linked clones, earlier overlays), top first, each
    /// a pool volume. A raw image ends the chain (it may hold anything, also what a format probe
    /// takes for a backing file).
    fn chain(&self, path: &str, format: DiskFormat) -> Result<Vec<(String, DiskFormat)>> {
        let mut chain = vec![(path.to_string(), format)];
        while chain.len() <= MAX_CHAIN {
            let (top, top_format) = chain.last().cloned().expect("not empty");
            if top_format == DiskFormat::Raw {
                return Ok(chain);
            }
            let info = self.volume_info(&self.volume_at(&top)?)?;
            let Some(backing) = info.backing else {
                return Ok(chain);
            };
            let format = match info.backing_format.as_deref() {
                Some(f) => disk_format(f, &backing)?,
                None => {
                    return Err(Error::Invalid(format!(
                        "{top} names no format for its backing file {backing}: the runner does \
                         not probe formats"
                    )));
                }
            };
            chain.push((backing, format));
        }
        Err(Error::Invalid(format!(
            "{path} has a backing chain longer than {MAX_CHAIN} images"
        )))
    }

    /// Downloads every image of `chain` into a private directory, points each at the local copy of
    /// its backing file, and flattens the chain into one raw image: the disk's guest content.
    fn export_chain(
        &self,
        disk: &SourceDisk,
        chain: &[(String, DiskFormat)],
        dir: PathBuf,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let names: Vec<&str> = chain.iter().map(|(p, _)| p.as_str()).collect();
        tracing::info!(
            "disk {}: exporting a chain of {} images ({}), flattened locally",
            disk.name,
            chain.len(),
            names.join(" <- ")
        );
        let local = dir.join(format!("{}.chain", file_safe(&disk.name)));
        std::fs::create_dir_all(&local)
            .map_err(|e| Error::io(format!("creating {}", local.display()), e))?;
        let result = self
            .fetch_chain(chain, &local, progress)
            .and_then(|images| {
                let dest = dir.join(format!("{}.raw", file_safe(&disk.name)));
                crate::disk::flatten_blocking(&images[0], &local, DiskFormat::Raw, &dest)
            });
        let _ = std::fs::remove_dir_all(&local);
        result
    }

    /// The chain's images as local files `f<i>.<format>`, each rebased onto the next.
    fn fetch_chain(
        &self,
        chain: &[(String, DiskFormat)],
        local: &Path,
        progress: &Progress,
    ) -> Result<Vec<LocalImage>> {
        let mut total = 0;
        let mut images = Vec::new();
        for (i, (path, format)) in chain.iter().enumerate() {
            let vol = self.volume_at(path)?;
            total += vol
                .get_info_flags(sys::VIR_STORAGE_VOL_GET_PHYSICAL)
                .map_err(|e| self.err(format_args!("reading volume {path}"), e))?
                .allocation;
            progress.set_total(total);
            let out = local.join(format!("f{i}.{format}"));
            self.download(&vol, path, &out, progress)?;
            images.push(LocalImage {
                path: out,
                format: *format,
            });
        }
        for pair in images.windows(2) {
            crate::disk::rebase_blocking(&pair[0], &pair[1])?;
        }
        Ok(images)
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

    pub(super) fn delete_snapshot(&self, domain_uuid: &str, name: &str) -> Result<()> {
        let dom = match self.domain_by_uuid(domain_uuid) {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => {
                tracing::warn!(
                    "domain {domain_uuid} is gone; nothing to remove for snapshot {name}"
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match self.find_snapshot(&dom, name)? {
            Some(snap) => self.remove_snapshot(&dom, snap, name),
            None => {
                tracing::info!("snapshot {name} already removed");
                Ok(())
            }
        }
    }

    /// Deletes the source domain (deleteSource): only the inspected one, by name and UUID.
    pub(super) fn delete_source(&self, vm: &VmShape) -> Result<()> {
        let dom = match self.domain_by_name(&vm.name) {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => {
                tracing::info!("domain {:?} does not exist; nothing to delete", vm.name);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.ensure_inspected(&dom, vm, "deleted")?;
        self.delete_domain(&dom, &vm.name, None)
    }

    /// Stops the inspected source domain: a guest shutdown waited for up to `timeout`, or a
    /// power-off (destroy).
    pub(super) fn stop(&self, vm: &VmShape, how: StopSource, timeout: Duration) -> Result<()> {
        let dom = self.domain_by_name(&vm.name)?;
        self.ensure_inspected(&dom, vm, "stopped")?;
        let name = &vm.name;
        if !self.is_active(&dom)? {
            return Ok(());
        }
        match how {
            StopSource::Never => return Ok(()),
            StopSource::PowerOff => {
                dom.destroy()
                    .map_err(|e| self.err(format_args!("powering off domain {name:?}"), e))?;
                return Ok(());
            }
            StopSource::Shutdown => {
                dom.shutdown()
                    .map_err(|e| self.err(format_args!("shutting down domain {name:?}"), e))?;
            }
        }
        let deadline = Instant::now() + timeout;
        while self.is_active(&dom)? {
            if Instant::now() >= deadline {
                return Err(Error::ShutdownTimedOut {
                    vm: format!("{name:?}"),
                    timeout: crd::format_duration(timeout),
                });
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Starts the inspected source domain again (a migration that stopped it ended without a
    /// target).
    pub(super) fn start_source(&self, vm: &VmShape) -> Result<()> {
        let dom = self.domain_by_name(&vm.name)?;
        self.ensure_inspected(&dom, vm, "started")?;
        self.start_domain(&dom, &vm.name)
    }

    /// Refuses a domain that is no longer the inspected one (`vm.id`); `action` says what is then
    /// not done to it.
    fn ensure_inspected(&self, dom: &Domain, vm: &VmShape, action: &str) -> Result<()> {
        let uuid = dom
            .get_uuid_string()
            .map_err(|e| self.err("reading the domain UUID", e))?;
        if uuid != vm.id {
            return Err(Error::Invalid(format!(
                "domain {:?} is now {uuid}, not the migrated {}: it is not {action}",
                vm.name, vm.id
            )));
        }
        Ok(())
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
}
