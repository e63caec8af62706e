//! The libvirt target: volumes filled through upload streams (named with the migration's UID tag),
//! the domain defined from the source's shape and marked with the migration's UID, validation,
//! lookup of a domain by name with its mark, and deletion of what a migration made (by UUID,
//! checked against that mark).

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::Path;
use std::time::Instant;

use crd::{DiskFormat, TargetVmHandle};
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

use super::ffi;
use super::xml;
use super::{CHUNK, Host, POLL};
use crate::progress::{Progress, human_bytes};
use crate::provider::{FoundVm, LocalImage, NewVm, mark};
use crate::{Error, Result};

/// One disk to put into a pool volume.
pub(super) struct ImportJob {
    /// Volume name, carrying `owner`'s tag.
    pub volume: String,
    /// UID of the migration.
    pub owner: String,
    pub pool: String,
    pub image: LocalImage,
    pub disk_name: String,
    pub virtual_size: u64,
}

impl Host<'_> {
    /// Creates a volume in the job's pool and uploads the image into it; returns the volume path.
    pub(super) fn import(&self, job: &ImportJob, progress: &Progress) -> Result<String> {
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
        self.remove_leftover(&pool, job)?;
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
        Ok(info.path)
    }

    /// Removes a volume of the job's name: its name carries this migration's tag, so it is what an
    /// import of this migration left when it was cut off before the status recorded it. Any other
    /// volume of that name is refused, untouched.
    fn remove_leftover(&self, pool: &StoragePool, job: &ImportJob) -> Result<()> {
        let vol = match StorageVol::lookup_by_name(pool, &job.volume) {
            Ok(vol) => vol,
            Err(e) if e.code() == ErrorNumber::NoStorageVolume => return Ok(()),
            Err(e) => return Err(self.err(format_args!("looking up volume {:?}", job.volume), e)),
        };
        if !mark::carries_tag(&job.volume, &job.owner) {
            return Err(Error::Invalid(format!(
                "volume {:?} already exists in libvirt storage pool {:?} on {}",
                job.volume,
                job.pool,
                self.ep.shown()
            )));
        }
        vol.delete(0)
            .map_err(|e| self.err(format_args!("deleting the leftover {:?}", job.volume), e))?;
        tracing::info!(
            "removed volume {:?}, left by an interrupted import of this migration",
            job.volume
        );
        Ok(())
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

    /// Defines the domain of `vm` on the volumes at `paths`, stopped.
    pub(super) fn create(&self, vm: &NewVm, paths: &[String]) -> Result<TargetVmHandle> {
        let ep = self.ep.shown();
        match Domain::lookup_by_name(self.conn, &vm.name) {
            Ok(dom) => {
                let uuid = dom.get_uuid_string().unwrap_or_else(|_| "?".into());
                return Err(Error::NotOurs(format!(
                    "a domain named {:?} (uuid {uuid}) appeared on {ep} while the migration ran: \
                     it is left untouched; choose another targetName or remove that domain",
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
            .zip(paths)
            .map(|(d, path)| xml::NewDisk {
                path: path.clone(),
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
                owner: &vm.owner,
            });
            Domain::define_xml(self.conn, &domain_xml).map_err(|e| {
                self.ep
                    .definition_error(format_args!("defining domain {:?}", vm.name), e)
            })
        };
        let dom = define(None, false)?;
        let id = dom
            .get_uuid_string()
            .map_err(|e| self.err("reading the domain UUID", e))?;
        tracing::info!(
            "defined domain {:?} ({domain_type}, {} vCPU, {}, {} disk(s), {} NIC(s)), stopped",
            vm.name,
            vm.cpus,
            human_bytes(vm.memory_bytes),
            vm.disks.len(),
            vm.networks.len(),
        );
        Ok(TargetVmHandle::Libvirt {
            uuid: id,
            name: vm.name.clone(),
        })
    }

    /// Checks domain `uuid` against `vm`: disks on `paths` with the expected capacities, NICs.
    pub(super) fn validate(&self, vm: &NewVm, uuid: &str, paths: &[String]) -> Result<()> {
        let dom = self.domain_by_uuid(uuid)?;
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
        for ((disk, expected), want) in disks.iter().zip(&vm.disks).zip(paths) {
            let path = self.disk_path(disk)?;
            if &path != want {
                return Err(Error::Invalid(format!(
                    "disk {} of {:?} is {path}, expected {want}",
                    disk.target, vm.name
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
        }
        Ok(())
    }

    /// The domain named `name`, if there is one, by UUID, with whether it carries `owner`'s mark.
    pub(super) fn find_target(&self, name: &str, owner: &str) -> Result<Vec<FoundVm>> {
        let dom = match self.domain_by_name(name) {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let uuid = dom
            .get_uuid_string()
            .map_err(|e| self.err("reading the domain UUID", e))?;
        let mark = self.domain_info(&dom)?.owner;
        Ok(vec![FoundVm {
            handle: TargetVmHandle::Libvirt {
                uuid,
                name: name.to_string(),
            },
            ours: mark.as_deref() == Some(owner),
        }])
    }

    /// Starts target domain `uuid` after checking it is `name` and carries `owner`'s mark.
    pub(super) fn start_target(&self, uuid: &str, name: &str, owner: &str) -> Result<()> {
        let dom = self.domain_by_uuid(uuid)?;
        self.ensure_domain_ours(&dom, uuid, name, owner, "started")?;
        self.start_domain(&dom, name)
    }

    /// Deletes domain `uuid` after checking it is the one this migration created: named `name`
    /// and marked with `owner`.
    pub(super) fn delete_target(&self, uuid: &str, name: &str, owner: &str) -> Result<()> {
        let dom = match self.domain_by_uuid(uuid) {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => {
                tracing::info!("domain {name:?} ({uuid}) does not exist; nothing to delete");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.ensure_domain_ours(&dom, uuid, name, owner, "deleted")?;
        self.delete_domain(&dom, name, Some(owner))
    }

    /// Refuses ([`Error::NotOurs`]) a domain not named `name` or without `owner`'s mark; `action`
    /// says what is then not done to it.
    fn ensure_domain_ours(
        &self,
        dom: &Domain,
        uuid: &str,
        name: &str,
        owner: &str,
        action: &str,
    ) -> Result<()> {
        let current = dom
            .get_name()
            .map_err(|e| self.err("reading the domain name", e))?;
        let mark = self.domain_info(dom)?.owner;
        if current != name || mark.as_deref() != Some(owner) {
            return Err(Error::NotOurs(format!(
                "domain {current:?} ({uuid}) is not named {name:?} or lacks the mark of migration \
                 {owner}: it is not {action}"
            )));
        }
        Ok(())
    }
}
