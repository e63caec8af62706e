//! The migration pipeline: the guide's phases, one function each, called in order from
//! [`Pipeline::run`]. Every disk goes through Exporting, Converting and Transferring in turn (so
//! scratch space holds one disk at a time), then through Importing; Creating and ValidatingTarget
//! work on the whole VM.
//!
//! Resume: the status read at start says which disks were staged (sha256 + stagedUrl) and imported
//! (targetDiskId). A staged disk is reused when the stage still holds an object of the recorded size
//! and SHA-256, and only when the disks exported now come from the same snapshot (else all disks
//! are exported again, so a multi-disk VM never mixes two points in time).
//!
//! Integrity: every image from a hypervisor or from staging is checked with `qemu-img info` before
//! use; Importing re-hashes the downloaded image and refuses a mismatch (terminal); ValidatingTarget
//! compares capacities and, where the target reads disks back, the guest-visible SHA-256 with the
//! one computed at export.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crd::plan::RunnerPlan;
use crd::{DiskFormat, Phase, VMMigrationStatus};

use crate::error::with_retries;
use crate::progress::{self, Overall, Progress, Step, human_bytes};
use crate::provider::{
    CreateVm, ImportDisk, ImportedDisk, LocalImage, Provider, Snapshot, SourceDisk, VmShape,
};
use crate::status::StatusWriter;
use crate::storage::{Stage, StagedObject, object_key};
use crate::{Error, Result, disk, endpoint, plan, stream};

/// In-process tries of a provider operation failing transiently, before the attempt is reported
/// retryable. Stages retry inside ([`crate::storage::StageOptions`]), so their calls are not wrapped.
pub const DEFAULT_TRIES: u32 = 3;
/// How often a running transfer refreshes its progress (the writer rate-limits the patches).
const TICK: Duration = Duration::from_secs(1);

/// One migration attempt: the providers and stage to use and where to report.
pub struct Pipeline {
    plan: RunnerPlan,
    source: Box<dyn Provider>,
    target: Box<dyn Provider>,
    stage: Box<dyn Stage>,
    status: StatusWriter,
    scratch: PathBuf,
    tries: u32,
    current: Phase,
    overall: Overall,
}

/// A disk as the pipeline tracks it through the phases.
#[derive(Clone, Debug)]
struct Disk {
    source: SourceDisk,
    /// The disk's name made safe for file names and object keys.
    slug: String,
    /// Object key in staging.
    key: String,
    /// The complete staged object (this attempt or a verified earlier one).
    staged: Option<StagedObject>,
    /// The disk on the target (this attempt or an earlier one).
    imported: Option<ImportedDisk>,
    /// Guest-visible SHA-256, computed when the target can read disks back.
    guest_sha256: Option<String>,
}

/// What Validating found: the source VM, the format to write and the disks.
struct Work {
    vm: VmShape,
    format: DiskFormat,
    disks: Vec<Disk>,
    /// This migration's directory in scratch.
    dir: PathBuf,
    cpus: u32,
    memory_bytes: u64,
}

impl Pipeline {
    /// A pipeline for `plan`, reporting through `status`, with scratch space under `scratch`.
    pub fn new(
        plan: RunnerPlan,
        source: Box<dyn Provider>,
        target: Box<dyn Provider>,
        stage: Box<dyn Stage>,
        status: StatusWriter,
        scratch: impl Into<PathBuf>,
    ) -> Self {
        Pipeline {
            plan,
            source,
            target,
            stage,
            status,
            scratch: scratch.into(),
            tries: DEFAULT_TRIES,
            current: Phase::Validating,
            overall: Overall::default(),
        }
    }

    /// Sets the in-process tries for transient errors (1 = no retry).
    pub fn tries(mut self, tries: u32) -> Self {
        self.tries = tries.max(1);
        self
    }

    /// Runs the migration. On success returns the target VM's id; on failure the failed phase's
    /// condition says why, and a terminal failure removes what it created on the target (and the
    /// snapshot when the policy says so), since no later attempt will use it.
    pub async fn run(mut self) -> Result<String> {
        let mut work = None;
        let result = self.walk(&mut work).await;
        if let Err(e) = &result {
            if let Err(write) = self.status.fail(self.current, e).await {
                tracing::warn!("could not record the failure in the status: {write}");
            }
            if !e.is_retryable() {
                self.discard_partial(work.as_ref()).await;
            }
        }
        let _ = tokio::fs::remove_dir_all(self.scratch_dir()).await;
        result
    }

    /// The phases, in order.
    async fn walk(&mut self, work: &mut Option<Work>) -> Result<String> {
        let w = work.insert(self.validating().await?);
        let snapshot = self.snapshotting(w).await?;
        for i in 0..w.disks.len() {
            self.stage_disk(w, i, snapshot.as_ref()).await?;
        }
        self.staged(w).await?;
        if let Some(s) = &snapshot {
            self.release_snapshot(&w.vm, s).await;
        }
        for i in 0..w.disks.len() {
            self.importing(w, i).await?;
        }
        self.status
            .complete(
                Phase::Importing,
                "Imported",
                &format!(
                    "{} imported into {}",
                    count(w.disks.len(), "disk"),
                    self.plan.target.name
                ),
            )
            .await?;
        let id = self.creating(w).await?;
        self.validating_target(w, &id).await?;
        self.finish(w, &id).await?;
        Ok(id)
    }

    /// This migration's directory in scratch, removed when the attempt ends.
    fn scratch_dir(&self) -> PathBuf {
        self.scratch.join(format!(
            "{}-{}",
            self.plan.migration.namespace, self.plan.migration.name
        ))
    }

    /// Records a progress milestone (sent with the next write; progress never goes back).
    fn milestone(&mut self, percent: i32) {
        let percent = self.overall.at_least(percent);
        self.status.set_progress(percent);
    }

    /// Enters a phase (or re-enters it for the next disk).
    async fn enter(&mut self, phase: Phase, message: String) -> Result<()> {
        self.current = phase;
        self.status.begin(phase, message).await
    }

    /// Validating: endpoints, credentials, source VM and disks, target name and format, staging,
    /// resume state and scratch space. Fails fast with a precise message.
    async fn validating(&mut self) -> Result<Work> {
        self.milestone(0);
        self.enter(
            Phase::Validating,
            format!(
                "Checking source {}, target {} and {} storage",
                self.plan.source.name,
                self.plan.target.name,
                self.plan.storage.type_.as_str()
            ),
        )
        .await?;
        let plan = &self.plan;
        for endpoint in [
            Some(plan.source.endpoint.as_str()),
            Some(plan.target.endpoint.as_str()),
            // NFS is mounted by the kubelet, not reached by the runner.
            plan.storage
                .endpoint
                .as_deref()
                .filter(|_| plan.storage.type_ != crd::StorageType::Nfs),
        ]
        .into_iter()
        .flatten()
        {
            endpoint::check(endpoint).await?;
        }

        let (source, target, stage, tries) =
            (&*self.source, &*self.target, &*self.stage, self.tries);
        with_retries("source check", tries, || source.check()).await?;
        let vm = with_retries("source inspect", tries, || {
            source.inspect_vm(&plan.source_vm.name)
        })
        .await?;
        if vm.disks.is_empty() {
            return Err(Error::Invalid(format!(
                "source VM {} has no disks to migrate",
                plan.source_vm.name
            )));
        }
        with_retries("target check", tries, || target.check()).await?;
        let format = plan
            .target_disk_format
            .unwrap_or_else(|| target.kind().native_format());
        if !target.import_formats().contains(&format) {
            let accepted: Vec<&str> = target.import_formats().iter().map(|f| f.as_str()).collect();
            return Err(Error::Invalid(format!(
                "target {} ({}) does not import {format} disks (it accepts {})",
                plan.target.name,
                target.kind(),
                accepted.join(", ")
            )));
        }
        // A VM of the target name is refused unless an earlier attempt of this migration made it.
        let ours = self.status.status().target_vm_id.is_some();
        let exists =
            with_retries("target name", tries, || target.vm_exists(&plan.target_name)).await?;
        match (exists, ours) {
            (true, false) => {
                return Err(Error::Invalid(format!(
                    "a VM named {} already exists on target {}",
                    plan.target_name, plan.target.name
                )));
            }
            (false, true) => {
                tracing::info!(
                    "the target VM an earlier attempt created is gone: it will be created again"
                );
                self.status.clear_target_vm().await?;
            }
            _ => {}
        }
        stage.check().await?;
        let (cpus, memory_bytes) = match &plan.target_resources {
            Some(r) => (
                r.cpu.unwrap_or(vm.cpus),
                match &r.memory {
                    Some(q) => plan::quantity_bytes(q)?,
                    None => vm.memory_bytes,
                },
            ),
            None => (vm.cpus, vm.memory_bytes),
        };

        let mut disks = Vec::new();
        for d in &vm.disks {
            let slug = slug(&d.name);
            let key = object_key(
                &plan.migration.namespace,
                &plan.migration.name,
                &slug,
                format,
            );
            let mut disk = Disk {
                source: d.clone(),
                slug,
                key,
                staged: None,
                imported: None,
                guest_sha256: None,
            };
            self.resume_state(&mut disk, format).await?;
            disks.push(disk);
        }

        let dir = self.scratch_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating scratch {}", dir.display()), e))?;
        let reads_back = target.reads_back();
        let needed = disks
            .iter()
            .filter(|d| d.imported.is_none())
            .map(|d| {
                let copies = 1
                    + u64::from(d.source.format != format)
                    + u64::from(reads_back && d.source.format != DiskFormat::Raw);
                d.source.virtual_size.saturating_mul(copies)
            })
            .max()
            .unwrap_or(0);
        disk::ensure_space(&dir, needed)?;

        // Every disk gets its entry in the status from the start.
        for d in &disks {
            let mut entry = self
                .status
                .disk(&d.source.name)
                .cloned()
                .unwrap_or_default();
            entry.name = d.source.name.clone();
            entry.source_format = Some(d.source.format);
            entry.source_size_bytes = Some(d.source.virtual_size as i64);
            entry.target_format = Some(format);
            self.status.set_disk(entry).await?;
        }

        self.overall = Overall::new(disks.iter().map(|d| d.source.virtual_size));
        let staged = disks.iter().filter(|d| d.staged.is_some()).count();
        let imported = disks.iter().filter(|d| d.imported.is_some()).count();
        let resumed = if staged + imported > 0 {
            format!("; resuming: {staged} staged, {imported} imported")
        } else {
            String::new()
        };
        let message = format!(
            "source VM {} ({}, {}), target {} ({format}), {} reachable{resumed}",
            plan.source_vm.name,
            count(vm.disks.len(), "disk"),
            human_bytes(vm.disks.iter().map(|d| d.virtual_size).sum()),
            plan.target.name,
            stage.describe(),
        );
        self.status
            .complete(Phase::Validating, "Validated", &message)
            .await?;
        Ok(Work {
            vm,
            format,
            disks,
            dir,
            cpus,
            memory_bytes,
        })
    }

    /// Fills in what an earlier attempt finished for `disk`, as recorded in the status and still
    /// present in staging.
    async fn resume_state(&self, disk: &mut Disk, format: DiskFormat) -> Result<()> {
        let Some(recorded) = self.status.disk(&disk.source.name) else {
            return Ok(());
        };
        if recorded.target_format != Some(format) {
            return Ok(());
        }
        if let Some(id) = &recorded.target_disk_id {
            disk.imported = Some(ImportedDisk {
                id: id.clone(),
                format,
                virtual_size: disk.source.virtual_size,
            });
        }
        let (Some(sha), Some(size)) = (&recorded.sha256, recorded.bytes_total) else {
            return Ok(());
        };
        let stage = &*self.stage;
        let key = disk.key.clone();
        let found = stage.stat(&key).await?;
        match found {
            Some(obj) if obj.sha256 == *sha && obj.size as i64 == size => {
                tracing::info!(
                    "{}: staged object {} verified, skipping export",
                    disk.source.name,
                    obj.url
                );
                disk.staged = Some(obj);
            }
            Some(obj) => tracing::info!(
                "{}: staged object {} differs from the record, exporting again",
                disk.source.name,
                obj.url
            ),
            None => {}
        }
        Ok(())
    }

    /// Snapshotting: freezes the source disks, unless every disk is already staged or imported.
    async fn snapshotting(&mut self, w: &mut Work) -> Result<Option<Snapshot>> {
        let pending = w
            .disks
            .iter()
            .filter(|d| d.staged.is_none() && d.imported.is_none())
            .count();
        if pending == 0 {
            self.status
                .complete(
                    Phase::Snapshotting,
                    "Skipped",
                    "every disk is already staged or imported",
                )
                .await?;
            self.milestone(Overall::START);
            return Ok(None);
        }
        self.enter(
            Phase::Snapshotting,
            format!("Snapshotting source VM {}", self.plan.source_vm.name),
        )
        .await?;
        let label = snapshot_label(&self.plan);
        let (source, vm) = (&*self.source, &w.vm);
        let snapshot = with_retries("snapshot", self.tries, || source.snapshot(vm, &label)).await?;
        let id = snapshot.as_ref().map(|s| s.id.clone());
        let reused = w
            .disks
            .iter()
            .any(|d| d.staged.is_some() || d.imported.is_some());
        if reused && self.status.status().snapshot_id != id {
            tracing::info!(
                "the disks staged earlier come from another snapshot: exporting every disk again"
            );
            for d in &mut w.disks {
                d.staged = None;
                if let Some(old) = d.imported.take() {
                    let target = &*self.target;
                    if let Err(e) = target.delete_disk(&old).await {
                        tracing::warn!("could not delete stale target disk {}: {e}", old.id);
                    }
                }
            }
        }
        self.status.set_snapshot(id.clone()).await?;
        let (reason, message) = match &id {
            Some(id) => ("Snapshotted", format!("snapshot {id} taken")),
            None => (
                "NotNeeded",
                "the source VM is stopped: its disks are exported as they are".to_string(),
            ),
        };
        self.status
            .complete(Phase::Snapshotting, reason, &message)
            .await?;
        self.milestone(Overall::START);
        Ok(snapshot)
    }

    /// Exporting, Converting and Transferring for disk `i`: export into scratch, check the image,
    /// convert when the target wants another format, upload, record the staged object.
    async fn stage_disk(
        &mut self,
        w: &mut Work,
        i: usize,
        snapshot: Option<&Snapshot>,
    ) -> Result<()> {
        let n = w.disks.len();
        let d = w.disks[i].clone();
        if d.staged.is_some() || d.imported.is_some() {
            for step in [Step::Export, Step::Convert, Step::Upload] {
                self.overall.set(i, step, 1.0);
            }
            return Ok(());
        }
        let label = disk_label(i, n);
        let size = d.source.virtual_size;

        self.enter(
            Phase::Exporting,
            format!(
                "Exporting {label} ({}, {})",
                d.source.name,
                human_bytes(size)
            ),
        )
        .await?;
        let counter = Progress::new(size);
        let (source, vm, dir, tries) = (&*self.source, &w.vm, w.dir.as_path(), self.tries);
        let exported = watch(
            &mut self.status,
            &mut self.overall,
            (i, Step::Export),
            ("Exporting", &label),
            &counter,
            with_retries("export", tries, || {
                source.export_disk(vm, &d.source, snapshot, dir, &counter)
            }),
        )
        .await?;
        let info = disk::inspect(&exported.path, exported.format).await?;
        if info.virtual_size != size {
            return Err(Error::Invalid(format!(
                "exported {} has {} bytes, the source reports {}",
                d.source.name, info.virtual_size, size
            )));
        }
        if self.target.reads_back() {
            w.disks[i].guest_sha256 = Some(disk::guest_sha256(&exported, dir).await?);
        }

        let image = if exported.format != w.format {
            self.enter(
                Phase::Converting,
                format!(
                    "Converting {label} ({}) from {} to {}",
                    d.source.name, exported.format, w.format
                ),
            )
            .await?;
            let counter = Progress::new(size);
            let dest = disk::converted_path(dir, &d.slug, w.format);
            let converted = watch(
                &mut self.status,
                &mut self.overall,
                (i, Step::Convert),
                ("Converting", &label),
                &counter,
                disk::convert(&exported, w.format, &dest, &counter),
            )
            .await?;
            remove(&exported.path).await;
            disk::inspect(&converted.path, w.format).await?;
            converted
        } else {
            self.overall.set(i, Step::Convert, 1.0);
            exported
        };

        self.enter(
            Phase::Transferring,
            format!(
                "Uploading {label} ({}) to {}",
                d.source.name,
                self.stage.describe()
            ),
        )
        .await?;
        let bytes = file_size(&image.path)?;
        let counter = Progress::new(bytes);
        let (stage, key, path) = (&*self.stage, d.key.as_str(), image.path.as_path());
        let object = watch(
            &mut self.status,
            &mut self.overall,
            (i, Step::Upload),
            ("Uploading", &label),
            &counter,
            stage.upload(key, path, &counter),
        )
        .await?;
        remove(&image.path).await;
        if object.size != bytes {
            return Err(Error::transient(
                "staging",
                format!(
                    "{} holds {} bytes, {bytes} were uploaded",
                    object.url, object.size
                ),
            ));
        }
        let mut entry = self
            .status
            .disk(&d.source.name)
            .cloned()
            .unwrap_or_default();
        entry.bytes_done = Some(bytes as i64);
        entry.bytes_total = Some(bytes as i64);
        entry.sha256 = Some(object.sha256.clone());
        entry.staged_url = Some(object.url.clone());
        entry.target_disk_id = None;
        self.status.set_disk(entry).await?;
        tracing::info!(
            "{} staged at {} ({}, sha256 {})",
            d.source.name,
            object.url,
            human_bytes(bytes),
            object.sha256
        );
        w.disks[i].staged = Some(object);
        Ok(())
    }

    /// Closes Exporting, Converting and Transferring once every disk is staged.
    async fn staged(&mut self, w: &Work) -> Result<()> {
        let n = count(w.disks.len(), "disk");
        self.status
            .complete(Phase::Exporting, "Exported", &format!("{n} exported"))
            .await?;
        let converted = w
            .disks
            .iter()
            .filter(|d| d.source.format != w.format)
            .count();
        if converted == 0 {
            self.status
                .complete(
                    Phase::Converting,
                    "Skipped",
                    &format!("formats match ({}): no conversion needed", w.format),
                )
                .await?;
        } else {
            self.status
                .complete(
                    Phase::Converting,
                    "Converted",
                    &format!("{} converted to {}", count(converted, "disk"), w.format),
                )
                .await?;
        }
        self.status
            .complete(
                Phase::Transferring,
                "Uploaded",
                &format!("{n} staged in {}", self.stage.describe()),
            )
            .await
    }

    /// Deletes the source snapshot once every disk is staged, when the policy says so. A failure
    /// only warns: the snapshot stays recorded in the status for the cleanup runner.
    async fn release_snapshot(&mut self, vm: &VmShape, snapshot: &Snapshot) {
        if !self.plan.cleanup_policy.delete_snapshot {
            return;
        }
        let source = &*self.source;
        match with_retries("delete snapshot", self.tries, || {
            source.delete_snapshot(vm, snapshot)
        })
        .await
        {
            Ok(()) => {
                tracing::info!("source snapshot {} deleted", snapshot.id);
                if let Err(e) = self.status.set_snapshot(None).await {
                    tracing::warn!("could not record the snapshot deletion: {e}");
                }
            }
            Err(e) => tracing::warn!("could not delete source snapshot {}: {e}", snapshot.id),
        }
    }

    /// Importing for disk `i`: download from staging re-hashing, refuse a mismatch, check the image,
    /// import it into the target and record the target disk.
    async fn importing(&mut self, w: &mut Work, i: usize) -> Result<()> {
        let n = w.disks.len();
        let d = w.disks[i].clone();
        if d.imported.is_some() {
            self.overall.set(i, Step::Download, 1.0);
            self.overall.set(i, Step::Import, 1.0);
            return Ok(());
        }
        let label = disk_label(i, n);
        let object = d.staged.clone().ok_or_else(|| {
            Error::Invalid(format!("{} was neither staged nor imported", d.source.name))
        })?;
        self.enter(
            Phase::Importing,
            format!(
                "Downloading {label} ({}) from {}",
                d.source.name, object.url
            ),
        )
        .await?;
        let dest = disk::converted_path(&w.dir, &d.slug, w.format);
        let counter = Progress::new(object.size);
        let (stage, tries) = (&*self.stage, self.tries);
        watch(
            &mut self.status,
            &mut self.overall,
            (i, Step::Download),
            ("Downloading", &label),
            &counter,
            stage.download(&object, &dest, &counter),
        )
        .await?;
        // The pipeline's own end-to-end check, whatever the backend verified.
        let (bytes, sha256) = stream::hash_file(&dest, Progress::default()).await?;
        if sha256 != object.sha256 || bytes != object.size {
            remove(&dest).await;
            return Err(Error::ChecksumMismatch {
                object: object.url.clone(),
                expected: object.sha256.clone(),
                actual: sha256,
            });
        }
        let image = LocalImage {
            path: dest.clone(),
            format: w.format,
        };
        let info = disk::inspect(&dest, w.format).await?;
        if info.virtual_size != d.source.virtual_size {
            return Err(Error::Invalid(format!(
                "staged {} has a virtual size of {} bytes, the source disk {}",
                object.url, info.virtual_size, d.source.virtual_size
            )));
        }
        if self.target.reads_back() && d.guest_sha256.is_none() {
            w.disks[i].guest_sha256 = Some(disk::guest_sha256(&image, &w.dir).await?);
        }

        self.enter(
            Phase::Importing,
            format!(
                "Importing {label} ({}) into {}",
                d.source.name, self.plan.target.name
            ),
        )
        .await?;
        let counter = Progress::new(bytes);
        let target = &*self.target;
        let request = ImportDisk {
            vm_name: &self.plan.target_name,
            index: i,
            disk_name: &d.slug,
            image: &image,
            virtual_size: d.source.virtual_size,
            storage_hint: self.plan.target_storage_hint.as_deref(),
        };
        let imported = watch(
            &mut self.status,
            &mut self.overall,
            (i, Step::Import),
            ("Importing", &label),
            &counter,
            with_retries("import", tries, || target.import_disk(&request, &counter)),
        )
        .await?;
        remove(&dest).await;
        let mut entry = self
            .status
            .disk(&d.source.name)
            .cloned()
            .unwrap_or_default();
        entry.target_disk_id = Some(imported.id.clone());
        self.status.set_disk(entry).await?;
        tracing::info!("{} imported as {}", d.source.name, imported.id);
        w.disks[i].imported = Some(imported);
        Ok(())
    }

    /// The target VM as the pipeline defines it.
    fn vm_spec<'a>(&'a self, w: &'a Work, disks: &'a [ImportedDisk]) -> CreateVm<'a> {
        CreateVm {
            name: &self.plan.target_name,
            cpus: w.cpus,
            memory_bytes: w.memory_bytes,
            firmware: w.vm.firmware,
            disks,
            networks: &self.plan.target_network_hints,
            start: w.vm.running,
        }
    }

    /// Creating: defines the target VM from the imported disks (once: an earlier attempt's VM is
    /// reused).
    async fn creating(&mut self, w: &Work) -> Result<String> {
        if let Some(id) = self.status.status().target_vm_id.clone() {
            self.status
                .complete(
                    Phase::Creating,
                    "AlreadyCreated",
                    &format!(
                        "VM {} ({id}) was created by an earlier attempt",
                        self.plan.target_name
                    ),
                )
                .await?;
            return Ok(id);
        }
        self.enter(
            Phase::Creating,
            format!(
                "Creating VM {} on {}",
                self.plan.target_name, self.plan.target.name
            ),
        )
        .await?;
        let disks = imported_disks(w)?;
        // Not retried in-process: creating is not idempotent.
        let created = self.target.create_vm(&self.vm_spec(w, &disks)).await?;
        self.status.set_target_vm(&created.id).await?;
        self.milestone(Overall::IMPORTED + 2);
        self.status
            .complete(
                Phase::Creating,
                "Created",
                &format!("VM {} created ({})", self.plan.target_name, created.id),
            )
            .await?;
        Ok(created.id)
    }

    /// ValidatingTarget: the target checks the VM and its disk capacities; where it reads disks
    /// back, each guest-visible SHA-256 must equal the source's.
    async fn validating_target(&mut self, w: &Work, id: &str) -> Result<()> {
        self.enter(
            Phase::ValidatingTarget,
            format!("Validating VM {} ({id})", self.plan.target_name),
        )
        .await?;
        let disks = imported_disks(w)?;
        let spec = self.vm_spec(w, &disks);
        let target = &*self.target;
        let hashes = with_retries("validate", self.tries, || target.validate_vm(&spec)).await?;
        if hashes.len() != w.disks.len() {
            return Err(Error::Invalid(format!(
                "target VM {} reports {}, expected {}",
                self.plan.target_name,
                count(hashes.len(), "disk"),
                w.disks.len()
            )));
        }
        let mut verified = 0;
        for (d, actual) in w.disks.iter().zip(&hashes) {
            match (actual, &d.guest_sha256) {
                (Some(actual), Some(expected)) if actual != expected => {
                    return Err(Error::ChecksumMismatch {
                        object: format!(
                            "target disk {} of VM {}",
                            d.source.name, self.plan.target_name
                        ),
                        expected: expected.clone(),
                        actual: actual.clone(),
                    });
                }
                (Some(_), Some(_)) => verified += 1,
                _ => {}
            }
        }
        let content = if verified > 0 {
            format!(
                ", guest content of {} matches the source (sha256)",
                count(verified, "disk")
            )
        } else {
            String::new()
        };
        let message = format!(
            "VM {} ({id}): {} with the source's capacities{content}",
            self.plan.target_name,
            count(w.disks.len(), "disk")
        );
        self.milestone(99);
        self.status
            .complete(Phase::ValidatingTarget, "Validated", &message)
            .await
    }

    /// Cleanup policy after a verified target, then Ready.
    async fn finish(&mut self, w: &Work, id: &str) -> Result<()> {
        let policy = self.plan.cleanup_policy.clone();
        let mut notes = Vec::new();
        if policy.delete_intermediate {
            let stage = &*self.stage;
            let mut deleted = 0;
            for d in &w.disks {
                match stage.delete(&d.key).await {
                    Ok(()) => {
                        deleted += 1;
                        if let Some(mut entry) = self.status.disk(&d.source.name).cloned() {
                            entry.staged_url = None;
                            self.status.set_disk(entry).await?;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("could not delete staged {}: {e}", d.key);
                        notes.push(format!("staged {} not deleted: {e}", d.key));
                    }
                }
            }
            tracing::info!("{} deleted from staging", count(deleted, "staged image"));
        }
        if policy.delete_source {
            let (source, name) = (&*self.source, &self.plan.source_vm.name);
            match with_retries("delete source", self.tries, || source.delete_vm(name)).await {
                Ok(()) => {
                    tracing::info!("source VM {name} deleted (cleanupPolicy.deleteSource)");
                    notes.push(format!("source VM {name} deleted"));
                }
                Err(e) => {
                    tracing::warn!("could not delete source VM {name}: {e}");
                    notes.push(format!("source VM {name} not deleted: {e}"));
                }
            }
        }
        let mut message = format!(
            "VM {} ({id}) is ready on {}",
            self.plan.target_name, self.plan.target.name
        );
        for note in notes {
            message.push_str("; ");
            message.push_str(&note);
        }
        self.status.ready(&message).await
    }

    /// After a terminal failure: removes the target disks and VM this migration created and, by
    /// policy, the source snapshot. Staged objects stay for inspection until the cleanup runner.
    async fn discard_partial(&mut self, w: Option<&Work>) {
        let recorded = self.status.status().clone();
        if let Some(id) = &recorded.target_vm_id {
            match self.target.delete_vm(&self.plan.target_name).await {
                Ok(()) => tracing::info!("partial target VM {id} deleted"),
                Err(e) => tracing::warn!("could not delete partial target VM {id}: {e}"),
            }
        }
        for entry in &recorded.disks {
            let (Some(id), Some(format)) = (&entry.target_disk_id, entry.target_format) else {
                continue;
            };
            let disk = ImportedDisk {
                id: id.clone(),
                format,
                virtual_size: entry.source_size_bytes.unwrap_or(0) as u64,
            };
            match self.target.delete_disk(&disk).await {
                Ok(()) => tracing::info!("partial target disk {id} deleted"),
                Err(e) => tracing::warn!("could not delete partial target disk {id}: {e}"),
            }
            let mut cleared = entry.clone();
            cleared.target_disk_id = None;
            let _ = self.status.set_disk(cleared).await;
        }
        if recorded.target_vm_id.is_some() {
            let _ = self.status.clear_target_vm().await;
        }
        if let (true, Some(id), Some(w)) = (
            self.plan.cleanup_policy.delete_snapshot,
            recorded.snapshot_id,
            w,
        ) {
            match self
                .source
                .delete_snapshot(&w.vm, &Snapshot { id: id.clone() })
                .await
            {
                Ok(()) => {
                    let _ = self.status.set_snapshot(None).await;
                }
                Err(e) => tracing::warn!("could not delete source snapshot {id}: {e}"),
            }
        }
    }
}

/// Removes what a migration left behind (the `cleanup` mode, run when a VMMigration is deleted or
/// abandoned): its staged objects, the source snapshot recorded in the status, and, when it never
/// reached Ready, the target VM it created or the disks it imported. Continues past failures and
/// returns the first (retryable if any was).
pub async fn cleanup(
    plan: &RunnerPlan,
    status: &VMMigrationStatus,
    source: &dyn Provider,
    target: &dyn Provider,
    stage: &dyn Stage,
) -> Result<()> {
    let mut errors: Vec<Error> = Vec::new();
    let mut note = |what: String, r: Result<()>| match r {
        Ok(()) => tracing::info!("cleanup: {what} removed"),
        Err(e) => {
            tracing::warn!("cleanup: {what} not removed: {e}");
            errors.push(e);
        }
    };
    let native = target.kind().native_format();
    for d in &status.disks {
        let format = d
            .target_format
            .or(plan.target_disk_format)
            .unwrap_or(native);
        let key = object_key(
            &plan.migration.namespace,
            &plan.migration.name,
            &slug(&d.name),
            format,
        );
        note(format!("staged {key}"), stage.delete(&key).await);
    }
    if let Some(id) = &status.snapshot_id {
        let r = match source.inspect_vm(&plan.source_vm.name).await {
            Ok(vm) => {
                source
                    .delete_snapshot(&vm, &Snapshot { id: id.clone() })
                    .await
            }
            Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        note(format!("source snapshot {id}"), r);
    }
    if status.phase != Some(Phase::Ready) {
        if status.target_vm_id.is_some() {
            note(
                format!("target VM {}", plan.target_name),
                target.delete_vm(&plan.target_name).await,
            );
        }
        for d in &status.disks {
            if let (Some(id), Some(format)) = (&d.target_disk_id, d.target_format) {
                let disk = ImportedDisk {
                    id: id.clone(),
                    format,
                    virtual_size: d.source_size_bytes.unwrap_or(0) as u64,
                };
                note(format!("target disk {id}"), target.delete_disk(&disk).await);
            }
        }
    }
    match errors.iter().position(Error::is_retryable) {
        Some(i) => Err(errors.swap_remove(i)),
        None => errors.into_iter().next().map_or(Ok(()), Err),
    }
}

/// Runs `fut` while refreshing progress every [`TICK`]: the step's share of the whole migration,
/// the condition message in the guide's form, and a log line every few seconds.
async fn watch<T>(
    status: &mut StatusWriter,
    overall: &mut Overall,
    (disk, step): (usize, Step),
    (verb, label): (&str, &str),
    counter: &Progress,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    status.reset_log();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => {
                if out.is_ok() {
                    overall.set(disk, step, 1.0);
                    counter.set_done(counter.total().max(counter.done()));
                }
                let message = progress::message(verb, label, counter.done(), counter.total());
                status.progress(overall.percent(), message).await;
                return out;
            }
            _ = tick.tick() => {
                overall.set(disk, step, counter.fraction());
                let message = progress::message(verb, label, counter.done(), counter.total());
                status.progress(overall.percent(), message).await;
                status.log_progress(&format!("{verb} {label}"), counter);
            }
        }
    }
}

/// The imported disks in bus order.
fn imported_disks(w: &Work) -> Result<Vec<ImportedDisk>> {
    w.disks
        .iter()
        .map(|d| {
            d.imported
                .clone()
                .ok_or_else(|| Error::Invalid(format!("disk {} was not imported", d.source.name)))
        })
        .collect()
}

/// The snapshot label of a migration: the same for all its attempts, within every hypervisor's
/// naming rules (letters, digits and `-`, at most 40 characters).
fn snapshot_label(plan: &RunnerPlan) -> String {
    let id: String = plan
        .migration
        .uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let id = if id.is_empty() {
        slug(&plan.migration.name)
    } else {
        id
    };
    format!("vrg-{}", id.chars().take(36).collect::<String>())
}

/// A disk name made safe for file names and object keys.
fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "disk".into() } else { s }
}

/// `disk` for a one-disk VM, `disk 2/3` otherwise (the guide's message names "disk").
fn disk_label(i: usize, n: usize) -> String {
    if n == 1 {
        "disk".into()
    } else {
        format!("disk {}/{n}", i + 1)
    }
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn file_size(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

async fn remove(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("could not remove {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_and_stable() {
        assert_eq!(slug("vda"), "vda");
        assert_eq!(slug("Hard disk 1"), "Hard_disk_1");
        assert_eq!(slug("../x"), "___x");
        assert_eq!(disk_label(0, 1), "disk");
        assert_eq!(disk_label(1, 3), "disk 2/3");
    }
}
