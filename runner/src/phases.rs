//! The migration pipeline: the guide's phases, one function each, called in order from
//! [`Pipeline::walk`]. Every disk goes through Exporting, Converting and Transferring in turn inside
//! one export session (so scratch space holds one disk at a time), then through Importing inside one
//! import session; Creating ends that session, and ValidatingTarget checks the whole VM.
//!
//! Resume: the status read at start says which disks were staged (sha256 + stagedUrl) and imported
//! (targetDisk), which snapshot they came from (snapshot) and which target VM was made (targetVm,
//! targetVmId once complete). A staged disk is reused when the stage still holds an object of the
//! recorded size and SHA-256, and only when the disks exported now come from the same snapshot (else
//! all disks are exported again, so a multi-disk VM never mixes two points in time). A target VM an
//! earlier attempt left half-made is deleted (after its provider checked it carries this migration's
//! mark) and made again.
//!
//! Ownership: the status is a record, not proof. What it names is reused or deleted only when it
//! carries the migration's mark ([`crate::provider::mark`]): staged objects must be the ones at this
//! migration's key, target disks and source snapshots must carry its UID in their names, target VMs
//! its mark; deletes go by id. A target VM found under the target name is checked the same way
//! ([`Pipeline::check_target_name`]): a foreign one fails the migration untouched, one of ours that
//! the status does not record is deleted and made again.
//!
//! Integrity: every image from a hypervisor or from staging is checked with `qemu-img info` (under
//! [`disk::InspectLimits`]: 1 GiB of address space, 30 s of CPU time) before
//! use; Importing re-hashes the downloaded image and refuses a mismatch (terminal), or hands a target
//! that downloads by itself the SHA-256 to verify; ValidatingTarget compares capacities and, where the
//! target reads disks back, the guest-visible SHA-256 with the one computed at export.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crd::plan::RunnerPlan;
use crd::{
    DiskFormat, Phase, SnapshotHandle, SourcePower, TargetDiskHandle, TargetVmHandle,
    VMMigrationStatus,
};

use crate::error::{Retry, with_retries};
use crate::progress::{self, Overall, Progress, Step, human_bytes};
use crate::provider::{
    ExportSession, ImportInput, ImportSession, LocalImage, NewDisk, NewVm, Source, SourceDisk,
    Target, VmShape, mark,
};
use crate::status::StatusWriter;
use crate::storage::{Stage, StagedObject, object_key};
use crate::{Error, Result, disk, plan};

/// In-process tries of a provider operation failing transiently, before the attempt is reported
/// retryable. Stages retry inside ([`crate::storage::StageOptions`]), so their calls are not wrapped.
pub const DEFAULT_TRIES: u32 = 3;
/// How often a running transfer refreshes its progress (the writer rate-limits the patches).
const TICK: Duration = Duration::from_secs(1);

/// One migration attempt: the providers and stage to use and where to report.
pub struct Pipeline {
    plan: RunnerPlan,
    source: Box<dyn Source>,
    target: Box<dyn Target>,
    stage: Box<dyn Stage>,
    status: StatusWriter,
    scratch: PathBuf,
    scratch_limit: Option<u64>,
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
    /// Imported into the target (this attempt, or an earlier one that left a handle).
    imported: bool,
    /// The disk's own handle on the target, where it has one.
    handle: Option<TargetDiskHandle>,
    /// Guest-visible SHA-256 of the exported content, computed for deleteSource (the target's
    /// disks are read back and compared with it).
    guest_sha256: Option<String>,
}

/// What Validating found: the source VM, the format to write, the disks and the VM to create.
struct Work {
    vm: VmShape,
    format: DiskFormat,
    disks: Vec<Disk>,
    /// This migration's directory in scratch.
    dir: PathBuf,
    new_vm: NewVm,
}

impl Work {
    /// The disks' target handles, in bus order.
    fn handles(&self) -> Vec<Option<TargetDiskHandle>> {
        self.disks.iter().map(|d| d.handle.clone()).collect()
    }
}

impl Pipeline {
    /// A pipeline for `plan`, reporting through `status`, with scratch space under `scratch`.
    pub fn new(
        plan: RunnerPlan,
        source: Box<dyn Source>,
        target: Box<dyn Target>,
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
            scratch_limit: None,
            tries: DEFAULT_TRIES,
            current: Phase::Validating,
            overall: Overall::default(),
        }
    }

    /// Bounds the scratch space by `limit` bytes besides its filesystem's free space (an emptyDir's
    /// sizeLimit, which statvfs does not show).
    pub fn scratch_limit(mut self, limit: Option<u64>) -> Self {
        self.scratch_limit = limit;
        self
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
        let scratch = self.scratch.clone();
        let result = self
            .walk(&mut work)
            .await
            .map_err(|e| disk::scratch_hint(e, &scratch));
        if let Err(e) = &result {
            if let Err(write) = self.status.fail(self.current, e).await {
                tracing::warn!("could not record the failure in the status: {write}");
            }
            if !e.is_retryable() || self.plan.final_attempt {
                self.discard_partial(work.as_ref().map(|w| &w.vm)).await;
            } else {
                self.kept_for_retry().await;
            }
        }
        let _ = tokio::fs::remove_dir_all(self.scratch_dir()).await;
        self.source.close().await;
        self.target.close().await;
        result
    }

    /// The phases, in order.
    async fn walk(&mut self, work: &mut Option<Work>) -> Result<String> {
        let w = work.insert(self.validating().await?);
        self.stop_source(w).await?;
        let snapshot = self.snapshotting(w).await?;
        self.exporting(w, snapshot.as_ref()).await?;
        self.staged(w).await?;
        if let Some(s) = &snapshot {
            self.release_snapshot(s).await;
        }
        let vm = self.importing_and_creating(w).await?;
        self.validating_target(w, &vm).await?;
        self.finish(w, &vm).await?;
        Ok(vm.id())
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
        check_owner(&self.plan)?;
        let (source, plan, tries) = (&*self.source, &self.plan, self.tries);
        with_retries("source check", tries, || source.check()).await?;
        let vm = with_retries("source inspect", tries, || {
            source.inspect(&plan.source_vm.name)
        })
        .await?;
        if vm.disks.is_empty() {
            return Err(Error::Invalid(format!(
                "source VM {} has no disks to migrate",
                plan.source_vm.name
            )));
        }
        let target = &*self.target;
        with_retries("target check", tries, || target.check()).await?;
        self.check_delete_source().await?;
        if self.status.status().source_power.is_none() {
            let found = SourcePower {
                was_running: vm.running,
                stopped_by_migration: false,
            };
            self.status.set_source_power(found).await?;
        }
        let format = self.target_format()?;
        self.check_target_name().await?;
        self.stage.check().await?;

        let mut disks = Vec::new();
        for d in &vm.disks {
            disks.push(self.resume_state(d, format).await?);
        }
        let dir = self.scratch_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating scratch {}", dir.display()), e))?;
        let needed = self.scratch_needed(&disks, format);
        disk::ensure_space(&dir, needed, self.scratch_limit)?;
        self.record_disks(&disks, format).await?;
        let new_vm = self.new_vm(&vm, &disks, format)?;
        let target = &*self.target;
        with_retries("target placement", tries, || target.preflight(&new_vm)).await?;
        self.overall = Overall::new(disks.iter().map(|d| d.source.virtual_size));
        let message = self.validated_message(&vm, &disks, format);
        self.status
            .complete(Phase::Validating, "Validated", &message)
            .await?;
        Ok(Work {
            vm,
            format,
            disks,
            dir,
            new_vm,
        })
    }

    /// deleteSource needs the user's consent to stop the source (the webhook and the CRD refuse it
    /// without, checked again here) and a target whose disks can be read back.
    async fn check_delete_source(&self) -> Result<()> {
        if !self.plan.cleanup_policy.delete_source {
            return Ok(());
        }
        if !self.plan.cutover.stop_source.stops() {
            return Err(Error::Invalid(
                "spec.cleanupPolicy.deleteSource needs spec.cutover.stopSource Shutdown or PowerOff: \
                 the source is deleted only after a final copy taken while the migration held it \
                 stopped was read back from the target and matched"
                    .into(),
            ));
        }
        self.target.reader().check_export().await.map_err(|e| {
            Error::Invalid(format!(
                "spec.cleanupPolicy.deleteSource needs the target's disks read back, and target {} \
                 cannot export them: {e}",
                self.plan.target.name
            ))
        })
    }

    /// The format to stage and import: the spec's, else the target's native one; refused when the
    /// target cannot import it.
    fn target_format(&self) -> Result<DiskFormat> {
        let target = &*self.target;
        let format = self
            .plan
            .target_disk_format
            .unwrap_or_else(|| target.kind().native_format());
        if !target.import_formats().contains(&format) {
            let accepted: Vec<&str> = target.import_formats().iter().map(|f| f.as_str()).collect();
            return Err(Error::Invalid(format!(
                "target {} ({}) does not import {format} disks (it accepts {})",
                self.plan.target.name,
                target.kind(),
                accepted.join(", ")
            )));
        }
        Ok(format)
    }

    /// The target name, checked against every VM the target holds under it. A VM that does not
    /// carry this migration's mark fails the migration, naming it, and is never touched. A VM an
    /// earlier attempt recorded half-made is deleted first; a completed one that is gone is
    /// forgotten (made again). A VM of ours that the status does not record is deleted by id and
    /// made again ([`Pipeline::remove_unrecorded`] says why it is not adopted).
    async fn check_target_name(&mut self) -> Result<()> {
        let status = self.status.status();
        if status.target_vm.is_some() && status.target_vm_id.is_none() {
            self.discard_target("left half-made by an earlier attempt")
                .await?;
        }
        // from here on, a recorded VM is a completed one
        let recorded = self.status.status().target_vm.clone();
        let is_recorded =
            |vm: &TargetVmHandle| recorded.as_ref().is_some_and(|r| r.id() == vm.id());
        let (kept, unrecorded): (Vec<_>, Vec<_>) = self
            .target_vms_of_ours()
            .await?
            .into_iter()
            .partition(is_recorded);
        if !unrecorded.is_empty() {
            self.remove_unrecorded(&unrecorded).await?;
            if recorded.is_none() {
                self.discard_disks("used by an unrecorded target VM")
                    .await?;
            }
        }
        if recorded.is_some() && kept.is_empty() {
            tracing::info!(
                "the target VM an earlier attempt created is gone: it will be created again"
            );
            self.status.clear_target_vm().await?;
        }
        Ok(())
    }

    /// Every VM the target holds under the target name, when each carries this migration's mark;
    /// else the refusal naming the first that does not.
    async fn target_vms_of_ours(&self) -> Result<Vec<TargetVmHandle>> {
        let (target, name, tries) = (&*self.target, &self.plan.target_name, self.tries);
        let owner = self.plan.migration.uid.as_str();
        let found = with_retries("target name", tries, || target.find_vms(name, owner)).await?;
        match found.iter().find(|f| !f.ours) {
            Some(theirs) => Err(self.name_taken(&theirs.handle)),
            None => Ok(found.into_iter().map(|f| f.handle).collect()),
        }
    }

    /// The refusal of a target name held by a VM without this migration's mark.
    fn name_taken(&self, vm: &TargetVmHandle) -> Error {
        Error::NotOurs(format!(
            "a VM named {} (id {}) already exists on target {} and does not carry the mark of \
             migration {}: it is left untouched; choose another targetName or remove that VM",
            vm.name(),
            vm.id(),
            self.plan.target.name,
            self.plan.migration.uid
        ))
    }

    /// Deletes VMs that carry this migration's mark under the target name but that the status does
    /// not record (the runner was killed between making one and writing the status, or the status
    /// patch failed after vSphere's ImportVApp made it), by id (their provider checks the mark and
    /// name again). The VM is then made again from the verified staged images (the caller also
    /// discards the recorded target disks, which such a VM may have used, unless they belong to a
    /// recorded VM).
    ///
    /// Adopting one that looks complete is not safe on any target: no run of this pipeline
    /// verified it, and validation cannot tell a complete VM from one whose import was cut short.
    /// libvirt: a domain is defined once its volumes exist, but a run killed before starting it or
    /// before ValidatingTarget leaves qcow2 content nobody read back. vSphere: ImportVApp makes the
    /// VM before any byte moves, and a lease that died mid-upload leaves full-capacity disks with
    /// missing grains that pass the shape check. Proxmox VE: the creation task outlives a killed
    /// runner and may still hold the VM (`lock: create`) or have failed half-way; its disk
    /// content is not read back either. Making it again costs one import; adopting could hand the
    /// user a VM with wrong disks.
    async fn remove_unrecorded(&mut self, vms: &[TargetVmHandle]) -> Result<()> {
        let (target, owner, tries) = (&*self.target, self.plan.migration.uid.as_str(), self.tries);
        for vm in vms {
            with_retries("delete unrecorded target VM", tries, || {
                target.delete_vm(vm, owner)
            })
            .await?;
            tracing::info!(
                "target {vm} carries this migration's mark but the status did not record it (a run \
                 cut off between making it and writing the status): deleted by id, it will be made \
                 again"
            );
        }
        Ok(())
    }

    /// Deletes the recorded target VM (its provider checks the migration's mark) and the recorded
    /// target disks, and forgets them; what is not this migration's is only forgotten. Disks are
    /// imported again from staging.
    async fn discard_target(&mut self, why: &str) -> Result<()> {
        let recorded = self.status.status().target_vm.clone();
        let (target, owner, tries) = (&*self.target, self.plan.migration.uid.as_str(), self.tries);
        if let Some(vm) = &recorded {
            match with_retries("delete target VM", tries, || target.delete_vm(vm, owner)).await {
                Ok(()) => tracing::info!("deleted target {vm}, {why}"),
                Err(Error::NotOurs(detail)) => tracing::warn!("target {vm} is kept: {detail}"),
                Err(e) => return Err(e),
            }
            self.status.clear_target_vm().await?;
        }
        self.discard_disks(why).await
    }

    /// Deletes the target disks the status records (each provider checks the migration's mark)
    /// and forgets them; a disk that is not this migration's is kept, with a warning, and forgotten.
    async fn discard_disks(&mut self, why: &str) -> Result<()> {
        let entries = self.status.status().disks.clone();
        let (target, owner, tries) = (&*self.target, self.plan.migration.uid.as_str(), self.tries);
        for entry in &entries {
            let Some(handle) = &entry.target_disk else {
                continue;
            };
            match with_retries("delete target disk", tries, || {
                target.delete_disk(handle, owner)
            })
            .await
            {
                Ok(()) => tracing::info!("deleted target disk {handle}, {why}"),
                Err(Error::NotOurs(detail)) => {
                    tracing::warn!("target disk {handle} is kept: {detail}")
                }
                Err(e) => return Err(e),
            }
            let mut cleared = entry.clone();
            cleared.target_disk = None;
            self.status.set_disk(cleared).await?;
        }
        Ok(())
    }

    /// What an earlier attempt finished for source disk `d`, as recorded in the status and still
    /// present in staging.
    async fn resume_state(&self, d: &SourceDisk, format: DiskFormat) -> Result<Disk> {
        let slug = slug(&d.name);
        let plan = &self.plan;
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
            imported: false,
            handle: None,
            guest_sha256: None,
        };
        let Some(recorded) = self.status.disk(&d.name) else {
            return Ok(disk);
        };
        if recorded.target_format != Some(format) {
            return Ok(disk);
        }
        disk.guest_sha256 = recorded.guest_sha256.clone();
        if let Some(handle) = &recorded.target_disk {
            disk.imported = true;
            disk.handle = Some(handle.clone());
        }
        if let (Some(sha), Some(size)) = (&recorded.sha256, recorded.bytes_total) {
            let url = recorded.staged_url.clone();
            disk.staged = self
                .verified_object(&disk, url.as_deref(), sha, size)
                .await?;
        }
        Ok(disk)
    }

    /// The staged object of `disk` when the status names it (its `stagedUrl` is the object at this
    /// migration's key) and it still has the recorded SHA-256 and size.
    async fn verified_object(
        &self,
        disk: &Disk,
        url: Option<&str>,
        sha: &str,
        size: i64,
    ) -> Result<Option<StagedObject>> {
        let name = &disk.source.name;
        let Some(url) = url else {
            return Ok(None);
        };
        match self.stage.stat(&disk.key).await? {
            Some(obj) if obj.url != url => {
                tracing::warn!(
                    "{name}: the status names {url}, not this migration's object {}: it is not \
                     reused",
                    obj.url
                );
                Ok(None)
            }
            Some(obj) if obj.sha256 == sha && obj.size as i64 == size => {
                tracing::info!(
                    "{name}: staged object {} verified, skipping export",
                    obj.url
                );
                Ok(Some(obj))
            }
            Some(obj) => {
                tracing::info!(
                    "{name}: staged object {} differs from the record, exporting again",
                    obj.url
                );
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Scratch bytes the largest disk needs: the export, a converted copy (none when the conversion
    /// streams into staging), and (deleteSource) a raw
    /// copy for the guest-visible hash, and the target's disk read back with its raw copy.
    fn scratch_needed(&self, disks: &[Disk], format: DiskFormat) -> u64 {
        let reads_back = self.plan.cleanup_policy.delete_source;
        disks
            .iter()
            .filter(|d| !d.imported || reads_back)
            .map(|d| {
                let copies = if d.imported {
                    2
                } else {
                    let converted_copy = d.source.format != format
                        && !self.streams_vmdk(format, d.source.virtual_size);
                    1 + u64::from(converted_copy)
                        + u64::from(reads_back && d.source.format != DiskFormat::Raw)
                };
                let copies = if reads_back { copies.max(2) } else { copies };
                d.source.virtual_size.saturating_mul(copies)
            })
            .max()
            .unwrap_or(0)
    }

    /// Gives every disk its entry in the status from the start.
    async fn record_disks(&mut self, disks: &[Disk], format: DiskFormat) -> Result<()> {
        for d in disks {
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
        Ok(())
    }

    /// The target VM as the pipeline defines it: the source's shape, the spec's overrides.
    fn new_vm(&self, vm: &VmShape, disks: &[Disk], format: DiskFormat) -> Result<NewVm> {
        let plan = &self.plan;
        let resources = plan.target_resources.as_ref();
        let memory_bytes = match resources.and_then(|r| r.memory.as_ref()) {
            Some(q) => plan::quantity_bytes(q)?,
            None => vm.memory_bytes,
        };
        Ok(NewVm {
            name: plan.target_name.clone(),
            cpus: resources.and_then(|r| r.cpu).unwrap_or(vm.cpus),
            memory_bytes,
            firmware: vm.firmware,
            os: vm.os,
            disks: disks
                .iter()
                .map(|d| NewDisk {
                    name: d.slug.clone(),
                    virtual_size: d.source.virtual_size,
                    format,
                })
                .collect(),
            networks: plan.target_network_hints.clone(),
            storage_hint: plan.target_storage_hint.clone(),
            owner: plan.migration.uid.clone(),
        })
    }

    fn validated_message(&self, vm: &VmShape, disks: &[Disk], format: DiskFormat) -> String {
        let staged = disks.iter().filter(|d| d.staged.is_some()).count();
        let imported = disks.iter().filter(|d| d.imported).count();
        let resumed = if staged + imported > 0 {
            format!("; resuming: {staged} staged, {imported} imported")
        } else {
            String::new()
        };
        format!(
            "source VM {} ({}, {}), target {} ({format}), {} reachable{resumed}",
            self.plan.source_vm.name,
            count(vm.disks.len(), "disk"),
            human_bytes(vm.disks.iter().map(|d| d.virtual_size).sum()),
            self.plan.target.name,
            self.stage.describe(),
        )
    }

    /// Cutover (spec.cutover.stopSource): a running source is stopped for the final copy. The
    /// status records that the migration stops it before it does, so a later attempt or a failure
    /// that ends the migration knows to start it again. Disks staged while it still ran (it was
    /// started again between attempts) are exported again.
    async fn stop_source(&mut self, w: &mut Work) -> Result<()> {
        let how = self.plan.cutover.stop_source;
        if !w.vm.running || !how.stops() {
            return Ok(());
        }
        let timeout = self
            .plan
            .cutover
            .shutdown_timeout()
            .map_err(|e| Error::Invalid(format!("spec.cutover.shutdownTimeout: {e}")))?;
        let name = self.plan.source_vm.name.clone();
        let wait = match how {
            crd::StopSource::Shutdown => {
                format!(" (guest shutdown, up to {})", crd::format_duration(timeout))
            }
            _ => " (power-off)".to_string(),
        };
        self.enter(
            Phase::Snapshotting,
            format!("Stopping source VM {name}{wait} for the final copy (spec.cutover)"),
        )
        .await?;
        let mut power = self.status.status().source_power.unwrap_or_default();
        power.stopped_by_migration = true;
        self.status.set_source_power(power).await?;
        self.source.stop(&w.vm, how, timeout).await?;
        let source = &*self.source;
        let vm = with_retries("source inspect", self.tries, || source.inspect(&name)).await?;
        if vm.id != w.vm.id || vm.running {
            return Err(Error::Invalid(format!(
                "source VM {name} is {} after it was stopped (was {})",
                if vm.running { "running" } else { "another VM" },
                w.vm.id
            )));
        }
        tracing::info!("source VM {name} stopped for the final copy");
        if w.disks.iter().any(|d| d.staged.is_some() || d.imported) {
            tracing::info!(
                "disks staged earlier were copied while the source ran again: exporting them again"
            );
            self.drop_staged(w).await;
        }
        w.vm = vm;
        Ok(())
    }

    /// Snapshotting: freezes the source disks, unless every disk is already staged or imported.
    async fn snapshotting(&mut self, w: &mut Work) -> Result<Option<SnapshotHandle>> {
        if pending(w) == 0 {
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
        let label = mark::snapshot_label(&self.plan.migration.uid);
        let (source, vm) = (&*self.source, &w.vm);
        let snapshot = with_retries("snapshot", self.tries, || source.snapshot(vm, &label)).await?;
        let reused = w.disks.iter().any(|d| d.staged.is_some() || d.imported);
        if reused && self.status.status().snapshot != snapshot {
            self.forget_other_point_in_time(w).await;
        }
        self.status.set_snapshot(snapshot.clone()).await?;
        let stopped = self
            .status
            .status()
            .source_power
            .is_some_and(|p| p.stopped_by_migration);
        let (reason, message) = match &snapshot {
            Some(s) => ("Snapshotted", format!("snapshot {} taken", s.name())),
            None if stopped => (
                "SourceStopped",
                "the migration stopped the source VM (spec.cutover): its disks are exported as \
                 they are"
                    .to_string(),
            ),
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

    /// The disks staged or imported earlier come from another snapshot: drop them, so that every
    /// disk is exported again from the same point in time.
    async fn forget_other_point_in_time(&mut self, w: &mut Work) {
        tracing::info!(
            "the disks staged earlier come from another snapshot: exporting every disk again"
        );
        self.drop_staged(w).await;
    }

    /// Forgets every staged or imported disk (they are exported again) and deletes the imported ones.
    async fn drop_staged(&mut self, w: &mut Work) {
        let owner = self.plan.migration.uid.as_str();
        for d in &mut w.disks {
            d.staged = None;
            d.imported = false;
            if let Some(old) = d.handle.take()
                && let Err(e) = self.target.delete_disk(&old, owner).await
            {
                tracing::warn!("could not delete stale target disk {old}: {e}");
            }
        }
    }

    /// Exporting, Converting and Transferring of every pending disk, in one export session.
    async fn exporting(&mut self, w: &mut Work, snapshot: Option<&SnapshotHandle>) -> Result<()> {
        if pending(w) == 0 {
            for i in 0..w.disks.len() {
                self.skip_staging(i);
            }
            return Ok(());
        }
        let (source, vm, tries) = (&*self.source, &w.vm, self.tries);
        let mut session =
            with_retries("export session", tries, || source.export(vm, snapshot)).await?;
        for i in 0..w.disks.len() {
            if let Err(e) = self.stage_disk(w, &mut *session, i).await {
                session.abort().await;
                return Err(e);
            }
        }
        session.finish().await
    }

    fn skip_staging(&mut self, i: usize) {
        for step in [Step::Export, Step::Convert, Step::Upload] {
            self.overall.set(i, step, 1.0);
        }
    }

    /// Exporting, Converting and Transferring for disk `i`: export into scratch, check the image,
    /// convert when the target wants another format, upload, record the staged object.
    async fn stage_disk(
        &mut self,
        w: &mut Work,
        session: &mut dyn ExportSession,
        i: usize,
    ) -> Result<()> {
        let d = w.disks[i].clone();
        if d.staged.is_some() || d.imported {
            self.skip_staging(i);
            return Ok(());
        }
        let label = disk_label(i, w.disks.len());
        let exported = self.export_one(w, session, i, &label).await?;
        if self.plan.cleanup_policy.delete_source {
            w.disks[i].guest_sha256 = Some(disk::guest_sha256(&exported, &w.dir).await?);
        }
        let guest = w.disks[i].guest_sha256.clone();
        let object = match self.streamed_conversion(w, i, &exported).await? {
            Some((body, counter)) => {
                let object = self
                    .convert_into_stage(w, i, &label, &exported, &body, &counter)
                    .await?;
                remove(&exported.path).await;
                object
            }
            None => {
                let image = self.convert_one(w, i, &label, exported).await?;
                self.upload_one(&d, i, &label, &image).await?
            }
        };
        self.record_staged(&d, &object, guest).await?;
        w.disks[i].staged = Some(object);
        Ok(())
    }

    /// Whether the converted disk is streamed into staging as it is written (our VMDK writer, on a
    /// stage that takes a body of that size): the body and its guest-bytes counter.
    async fn streamed_conversion(
        &self,
        w: &Work,
        i: usize,
        exported: &LocalImage,
    ) -> Result<Option<(disk::VmdkBody, Progress)>> {
        let size = w.disks[i].source.virtual_size;
        if exported.format == w.format || !self.streams_vmdk(w.format, size) {
            return Ok(None);
        }
        let counter = Progress::new(0);
        Ok(disk::vmdk_body(exported, &counter)
            .await?
            .map(|body| (body, counter)))
    }

    /// Whether a disk of `size` bytes converted to `format` goes straight into staging.
    fn streams_vmdk(&self, format: DiskFormat, size: u64) -> bool {
        format == DiskFormat::Vmdk
            && disk::our_vmdk_writer()
            && self.stage.streams(crate::vmdk::max_len(size))
    }

    /// Converting and Transferring of disk `i` at once: the VMDK writer's output uploaded as it
    /// is written, no converted copy in scratch.
    async fn convert_into_stage(
        &mut self,
        w: &Work,
        i: usize,
        label: &str,
        exported: &LocalImage,
        body: &disk::VmdkBody,
        counter: &Progress,
    ) -> Result<StagedObject> {
        let d = &w.disks[i];
        self.enter(
            Phase::Converting,
            format!(
                "Converting {label} ({}) from {} to {}, streamed into {}",
                d.source.name,
                exported.format,
                w.format,
                self.stage.describe()
            ),
        )
        .await?;
        counter.set_total(d.source.virtual_size);
        let (stage, key) = (&*self.stage, d.key.as_str());
        let object = watch(
            &mut self.status,
            &mut self.overall,
            (i, Step::Convert),
            ("Converting", label),
            counter,
            stage.upload_body(key, body, &Progress::default()),
        )
        .await?;
        self.overall.set(i, Step::Upload, 1.0);
        Ok(object)
    }

    /// Exporting of disk `i` into scratch, checked with qemu-img.
    async fn export_one(
        &mut self,
        w: &Work,
        session: &mut dyn ExportSession,
        i: usize,
        label: &str,
    ) -> Result<LocalImage> {
        let d = &w.disks[i];
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
        let (dir, tries) = (w.dir.as_path(), self.tries);
        let exported = watch(
            &mut self.status,
            &mut self.overall,
            (i, Step::Export),
            ("Exporting", label),
            &counter,
            export_retried(session, tries, &d.source, dir, &counter),
        )
        .await?;
        let info = disk::inspect(&exported.path, exported.format).await?;
        if info.virtual_size != size {
            return Err(Error::Invalid(format!(
                "exported {} has {} bytes, the source reports {}",
                d.source.name, info.virtual_size, size
            )));
        }
        Ok(exported)
    }

    /// Converting of disk `i` when the staged format differs from the exported one.
    async fn convert_one(
        &mut self,
        w: &Work,
        i: usize,
        label: &str,
        exported: LocalImage,
    ) -> Result<LocalImage> {
        if exported.format == w.format {
            self.overall.set(i, Step::Convert, 1.0);
            return Ok(exported);
        }
        let d = &w.disks[i];
        self.enter(
            Phase::Converting,
            format!(
                "Converting {label} ({}) from {} to {}",
                d.source.name, exported.format, w.format
            ),
        )
        .await?;
        let counter = Progress::new(d.source.virtual_size);
        let dest = disk::converted_path(&w.dir, &d.slug, w.format);
        let converted = watch(
            &mut self.status,
            &mut self.overall,
            (i, Step::Convert),
            ("Converting", label),
            &counter,
            disk::convert(&exported, w.format, &dest, &counter),
        )
        .await?;
        remove(&exported.path).await;
        disk::inspect(&converted.path, w.format).await?;
        Ok(converted)
    }

    /// Transferring of disk `d` (index `i`) to staging.
    async fn upload_one(
        &mut self,
        d: &Disk,
        i: usize,
        label: &str,
        image: &LocalImage,
    ) -> Result<StagedObject> {
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
            ("Uploading", label),
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
        Ok(object)
    }

    /// Records the staged object of disk `d` in the status (`guest_sha256`: its guest-visible
    /// hash, for deleteSource).
    async fn record_staged(
        &mut self,
        d: &Disk,
        object: &StagedObject,
        guest_sha256: Option<String>,
    ) -> Result<()> {
        let bytes = object.size;
        let mut entry = self
            .status
            .disk(&d.source.name)
            .cloned()
            .unwrap_or_default();
        entry.bytes_done = Some(bytes as i64);
        entry.bytes_total = Some(bytes as i64);
        entry.sha256 = Some(object.sha256.clone());
        entry.staged_url = Some(object.url.clone());
        entry.target_disk = None;
        entry.guest_sha256 = guest_sha256;
        self.status.set_disk(entry).await?;
        tracing::info!(
            "{} staged at {} ({}, sha256 {})",
            d.source.name,
            object.url,
            human_bytes(bytes),
            object.sha256
        );
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
        let (reason, message) = if converted == 0 {
            (
                "Skipped",
                format!("formats match ({}): no conversion needed", w.format),
            )
        } else {
            (
                "Converted",
                format!("{} converted to {}", count(converted, "disk"), w.format),
            )
        };
        self.status
            .complete(Phase::Converting, reason, &message)
            .await?;
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
    async fn release_snapshot(&mut self, snapshot: &SnapshotHandle) {
        if !self.plan.cleanup_policy.delete_snapshot {
            return;
        }
        let (source, owner) = (&*self.source, self.plan.migration.uid.as_str());
        match with_retries("delete snapshot", self.tries, || {
            source.delete_snapshot(snapshot, owner)
        })
        .await
        {
            Ok(()) => {
                tracing::info!("source snapshot {snapshot} deleted");
                if let Err(e) = self.status.set_snapshot(None).await {
                    tracing::warn!("could not record the snapshot deletion: {e}");
                }
            }
            Err(e) => tracing::warn!("could not delete source snapshot {snapshot}: {e}"),
        }
    }

    /// Importing of every disk in one import session, then Creating, which ends it. A VM an
    /// earlier attempt completed is reused as it is.
    async fn importing_and_creating(&mut self, w: &mut Work) -> Result<TargetVmHandle> {
        let recorded = self.status.status().target_vm.clone();
        if let (Some(vm), Some(_)) = (recorded, &self.status.status().target_vm_id) {
            self.already_created(w, &vm).await?;
            return Ok(vm);
        }
        self.enter(
            Phase::Importing,
            format!("Preparing the import into {}", self.plan.target.name),
        )
        .await?;
        let (target, tries) = (&*self.target, self.tries);
        let handles = w.handles();
        let mut session = with_retries("import session", tries, || {
            target.import(&w.new_vm, &handles)
        })
        .await?;
        if let Err(e) = self.record_session_vm(&*session).await {
            // unrecorded, the VM the session made up front would be found by its mark next time;
            // this attempt removes it itself
            self.abort_import(session).await;
            return Err(e);
        }
        if let Err(e) = self.import_disks(w, &mut *session).await {
            self.abort_import(session).await;
            return Err(e);
        }
        self.creating(session).await
    }

    /// Importing and Creating complete from an earlier attempt's VM.
    async fn already_created(&mut self, w: &mut Work, vm: &TargetVmHandle) -> Result<()> {
        for i in 0..w.disks.len() {
            self.overall.set(i, Step::Download, 1.0);
            self.overall.set(i, Step::Import, 1.0);
            w.disks[i].imported = true;
        }
        self.status
            .complete(
                Phase::Importing,
                "Skipped",
                "the VM was created by an earlier attempt",
            )
            .await?;
        self.status
            .complete(
                Phase::Creating,
                "AlreadyCreated",
                &format!("{vm} was created by an earlier attempt"),
            )
            .await
    }

    /// Records the VM a session made up front (before any disk moves).
    async fn record_session_vm(&mut self, session: &dyn ImportSession) -> Result<()> {
        match session.vm() {
            Some(vm) if self.status.status().target_vm.as_ref() != Some(&vm) => {
                tracing::info!("target {vm} is being created");
                self.status.set_target_vm(vm).await
            }
            _ => Ok(()),
        }
    }

    /// Ends an import session that will not create its VM; forgets the VM it made up front once
    /// the session removed it.
    async fn abort_import(&mut self, session: Box<dyn ImportSession>) {
        let made = session.vm();
        match session.abort().await {
            Ok(()) if made.is_some() => {
                if let Err(e) = self.status.clear_target_vm().await {
                    tracing::warn!("could not record the removal of the partial target VM: {e}");
                }
            }
            Ok(()) => {}
            Err(e) => tracing::warn!("ending the import session: {e}"),
        }
    }

    /// Importing of every disk not imported yet, then the phase's completion.
    async fn import_disks(&mut self, w: &mut Work, session: &mut dyn ImportSession) -> Result<()> {
        for i in 0..w.disks.len() {
            self.import_disk(w, session, i).await?;
            self.record_session_vm(session).await?;
        }
        let message = format!(
            "{} imported into {}",
            count(w.disks.len(), "disk"),
            self.plan.target.name
        );
        self.status
            .complete(Phase::Importing, "Imported", &message)
            .await
    }

    /// Importing for disk `i`: the verified staged image (downloaded, re-hashed and checked here, or
    /// fetched and verified by the target itself) goes into the session; its handle is recorded.
    async fn import_disk(
        &mut self,
        w: &mut Work,
        session: &mut dyn ImportSession,
        i: usize,
    ) -> Result<()> {
        if w.disks[i].imported {
            self.overall.set(i, Step::Download, 1.0);
            self.overall.set(i, Step::Import, 1.0);
            return Ok(());
        }
        let d = w.disks[i].clone();
        let object = d.staged.clone().ok_or_else(|| {
            Error::Invalid(format!("{} was neither staged nor imported", d.source.name))
        })?;
        let label = disk_label(i, w.disks.len());
        let presigned = match self.target.pulls() {
            true => self.stage.presign(&object).await?,
            false => None,
        };
        let local = match &presigned {
            Some(_) => {
                self.overall.set(i, Step::Download, 1.0);
                None
            }
            None => Some(self.download_one(w, i, &label, &object).await?),
        };
        let input = match (&presigned, &local) {
            (Some(url), _) => ImportInput::Url(url),
            (None, Some(image)) => ImportInput::File(image),
            (None, None) => unreachable!("an image is downloaded when no URL is used"),
        };
        self.enter(
            Phase::Importing,
            format!(
                "Importing {label} ({}) into {}",
                d.source.name, self.plan.target.name
            ),
        )
        .await?;
        let counter = Progress::new(object.size);
        let handle = watch(
            &mut self.status,
            &mut self.overall,
            (i, Step::Import),
            ("Importing", &label),
            &counter,
            import_retried(session, self.tries, i, input, &counter),
        )
        .await?;
        if let Some(image) = &local {
            remove(&image.path).await;
        }
        self.record_import(&d, handle.clone()).await?;
        w.disks[i].imported = true;
        w.disks[i].handle = handle;
        Ok(())
    }

    /// Downloads the staged image of disk `i` into scratch, hashed as it is written and checked
    /// against the SHA-256 recorded at its upload, and inspects it.
    async fn download_one(
        &mut self,
        w: &mut Work,
        i: usize,
        label: &str,
        object: &StagedObject,
    ) -> Result<LocalImage> {
        let d = w.disks[i].clone();
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
        watch(
            &mut self.status,
            &mut self.overall,
            (i, Step::Download),
            ("Downloading", label),
            &counter,
            self.stage.download(object, &dest, &counter),
        )
        .await?;
        // the download hashed the bytes as it wrote them and refused a mismatch with the SHA-256
        // this pipeline recorded at the upload (`object`): no second read of the file
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
        if self.plan.cleanup_policy.delete_source && d.guest_sha256.is_none() {
            let guest = disk::guest_sha256(&image, &w.dir).await?;
            w.disks[i].guest_sha256 = Some(guest.clone());
            if let Some(mut entry) = self.status.disk(&d.source.name).cloned() {
                entry.guest_sha256 = Some(guest);
                self.status.set_disk(entry).await?;
            }
        }
        Ok(image)
    }

    /// Records an imported disk's handle (a resume checkpoint).
    async fn record_import(&mut self, d: &Disk, handle: Option<TargetDiskHandle>) -> Result<()> {
        let mut entry = self
            .status
            .disk(&d.source.name)
            .cloned()
            .unwrap_or_default();
        match &handle {
            Some(h) => tracing::info!("{} imported as {h}", d.source.name),
            None => tracing::info!("{} imported", d.source.name),
        }
        entry.target_disk = handle;
        self.status.set_disk(entry).await
    }

    /// Creating: ends the import session, which makes the VM (stopped); records the VM as created.
    async fn creating(&mut self, session: Box<dyn ImportSession>) -> Result<TargetVmHandle> {
        self.enter(
            Phase::Creating,
            format!(
                "Creating VM {} on {}",
                self.plan.target_name, self.plan.target.name
            ),
        )
        .await?;
        // Not retried in-process: creating is not idempotent.
        let vm = session.finish().await?;
        self.status.set_created(vm.clone()).await?;
        self.milestone(Overall::IMPORTED + 2);
        self.status
            .complete(Phase::Creating, "Created", &format!("{vm} created"))
            .await?;
        Ok(vm)
    }

    /// ValidatingTarget: the target checks the VM and its disk capacities; for deleteSource every
    /// disk is read back from the target and its guest-visible SHA-256 must equal the exported one.
    async fn validating_target(&mut self, w: &Work, vm: &TargetVmHandle) -> Result<()> {
        self.enter(Phase::ValidatingTarget, format!("Validating {vm}"))
            .await?;
        let (target, handles) = (&*self.target, w.handles());
        with_retries("validate", self.tries, || {
            target.validate(&w.new_vm, vm, &handles)
        })
        .await?;
        let content = if self.plan.cleanup_policy.delete_source {
            self.read_back(w, vm).await?;
            format!(
                ", guest content of {} read back and matching the source (sha256)",
                count(w.disks.len(), "disk")
            )
        } else {
            String::new()
        };
        let message = format!(
            "{vm}: {} with the source's capacities{content}",
            count(w.disks.len(), "disk")
        );
        self.milestone(99);
        self.status
            .complete(Phase::ValidatingTarget, "Validated", &message)
            .await
    }

    /// Reads every disk of the created (stopped) VM back through the target's source role and
    /// compares its guest-visible SHA-256 with the one computed at export.
    async fn read_back(&mut self, w: &Work, vm: &TargetVmHandle) -> Result<()> {
        let (reader, name, tries) = (self.target.reader(), &self.plan.target_name, self.tries);
        let shape = with_retries("read-back inspect", tries, || reader.inspect(name)).await?;
        if shape.id != vm.id() || shape.running || shape.disks.len() != w.disks.len() {
            return Err(Error::Invalid(format!(
                "read-back: the VM named {name} on {} is {} ({}, {}), expected the stopped {vm} \
                 with {}",
                self.plan.target.name,
                shape.id,
                if shape.running { "running" } else { "stopped" },
                count(shape.disks.len(), "disk"),
                count(w.disks.len(), "disk"),
            )));
        }
        let mut session = reader.export(&shape, None).await?;
        for (i, (d, on_target)) in w.disks.iter().zip(&shape.disks).enumerate() {
            if let Err(e) = self.read_back_disk(w, i, d, on_target, &mut *session).await {
                session.abort().await;
                return Err(e);
            }
        }
        session.finish().await
    }

    /// Reads disk `i` back from the target and compares it with the source's guest hash.
    async fn read_back_disk(
        &mut self,
        w: &Work,
        i: usize,
        d: &Disk,
        on_target: &SourceDisk,
        session: &mut dyn ExportSession,
    ) -> Result<()> {
        let object = format!(
            "target disk {} of VM {}",
            d.source.name, self.plan.target_name
        );
        let expected = d.guest_sha256.clone().ok_or_else(|| {
            Error::Invalid(format!(
                "{object}: no guest-visible SHA-256 of the source was recorded to compare with"
            ))
        })?;
        let label = disk_label(i, w.disks.len());
        self.enter(
            Phase::ValidatingTarget,
            format!("Reading back {label} ({}) from the target", on_target.name),
        )
        .await?;
        let counter = Progress::new(on_target.virtual_size);
        let image = export_retried(session, self.tries, on_target, &w.dir, &counter).await?;
        let actual = disk::guest_sha256(&image, &w.dir).await;
        remove(&image.path).await;
        let actual = actual?;
        if actual != expected {
            return Err(Error::ChecksumMismatch {
                object,
                expected,
                actual,
            });
        }
        tracing::info!("{object} read back: sha256 {actual} matches the source");
        Ok(())
    }

    /// Cleanup policy after a verified target, the target started (spec.cutover.startTarget),
    /// then Ready.
    async fn finish(&mut self, w: &Work, vm: &TargetVmHandle) -> Result<()> {
        let mut notes = Vec::new();
        if self.plan.cleanup_policy.delete_intermediate {
            self.delete_staged(w, &mut notes).await?;
        }
        notes.push(self.start_target(vm).await?);
        if self.plan.cleanup_policy.delete_source {
            notes.push(self.delete_source(&w.vm).await);
        }
        let mut message = format!("{vm} is ready on {}", self.plan.target.name);
        for note in notes {
            message.push_str("; ");
            message.push_str(&note);
        }
        self.status.ready(&message).await
    }

    /// deleteIntermediate: removes every staged object; failures become notes.
    async fn delete_staged(&mut self, w: &Work, notes: &mut Vec<String>) -> Result<()> {
        let mut deleted = 0;
        for d in &w.disks {
            match self.stage.delete(&d.key).await {
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
        Ok(())
    }

    /// Starts the target VM when spec.cutover.startTarget says so; returns the note for the Ready
    /// message.
    async fn start_target(&mut self, vm: &TargetVmHandle) -> Result<String> {
        let power = self.status.status().source_power.unwrap_or_default();
        let cutover = &self.plan.cutover;
        if !cutover.starts_target(power.was_running, power.stopped_by_migration) {
            let why = match cutover.start_target {
                crd::StartTarget::Never => "spec.cutover.startTarget is Never",
                _ if power.was_running => {
                    "the source VM still runs (spec.cutover.stopSource Never); startTarget: Always \
                     starts it anyway"
                }
                _ => "the source VM was not running",
            };
            tracing::info!("target {vm} left stopped: {why}");
            return Ok(format!("left stopped: {why}"));
        }
        let (target, owner) = (&*self.target, self.plan.migration.uid.as_str());
        with_retries("start target", self.tries, || target.start_vm(vm, owner)).await?;
        tracing::info!("target {vm} started");
        Ok("started".into())
    }

    /// deleteSource, once the target's disks were read back and matched; only a source that is
    /// still the stopped, inspected VM is deleted. Returns the note for the Ready message.
    async fn delete_source(&self, vm: &VmShape) -> String {
        let (source, name) = (&*self.source, &vm.name);
        match with_retries("source inspect", self.tries, || source.inspect(name)).await {
            Ok(now) if now.id == vm.id && !now.running => {}
            Ok(now) => {
                let why = if now.running {
                    "it is running again"
                } else {
                    "it is another VM now"
                };
                tracing::warn!("source VM {name} not deleted: {why}");
                return format!("source VM {name} not deleted: {why}");
            }
            Err(e) => return format!("source VM {name} not deleted: {e}"),
        }
        match with_retries("delete source", self.tries, || source.delete(vm)).await {
            Ok(()) => {
                tracing::info!("source VM {name} deleted (cleanupPolicy.deleteSource)");
                format!("source VM {name} deleted")
            }
            Err(e) => {
                tracing::warn!("could not delete source VM {name}: {e}");
                format!("source VM {name} not deleted: {e}")
            }
        }
    }

    /// After a retryable failure with attempts left: the source snapshot (at most one per
    /// migration: its label is the migration's) is kept for the next attempt, and the Snapshotted
    /// condition says so.
    async fn kept_for_retry(&mut self) {
        let Some(snapshot) = self.status.status().snapshot.clone() else {
            return;
        };
        let message = format!(
            "snapshot {} of source VM {} kept for attempt {} (one per migration; removed when the \
             migration ends, fails or is deleted)",
            snapshot.name(),
            self.plan.source_vm.name,
            self.plan.attempt + 1
        );
        let kept = self
            .status
            .complete(Phase::Snapshotting, "KeptForRetry", &message)
            .await;
        if let Err(e) = kept {
            tracing::warn!("could not record the kept snapshot: {e}");
        }
    }

    /// After a failure that ends the migration (terminal, or the final attempt): removes the target
    /// VM and disks this migration created, by policy the source snapshot, and starts the source
    /// again when the migration stopped it. Staged objects stay for inspection until the cleanup
    /// runner.
    async fn discard_partial(&mut self, vm: Option<&VmShape>) {
        if let Err(e) = self
            .discard_target("after a failure that ends the migration")
            .await
        {
            tracing::warn!("could not remove what this attempt made on the target: {e}");
        }
        self.restart_source(vm).await;
        let snapshot = self.status.status().snapshot.clone();
        if let (true, Some(snapshot)) = (self.plan.cleanup_policy.delete_snapshot, snapshot) {
            let owner = self.plan.migration.uid.as_str();
            match self.source.delete_snapshot(&snapshot, owner).await {
                Ok(()) => {
                    let _ = self.status.set_snapshot(None).await;
                }
                Err(Error::NotOurs(detail)) => {
                    tracing::warn!("source snapshot {snapshot} is kept: {detail}");
                    let _ = self.status.set_snapshot(None).await;
                }
                Err(e) => tracing::warn!("could not delete source snapshot {snapshot}: {e}"),
            }
        }
    }

    /// Starts the source again when the migration stopped it (the migration ends without a
    /// target); records that it did.
    async fn restart_source(&mut self, vm: Option<&VmShape>) {
        let Some(mut power) = self.status.status().source_power else {
            return;
        };
        if !power.stopped_by_migration {
            return;
        }
        match restart(&self.plan, &*self.source, vm).await {
            Ok(()) => {
                power.stopped_by_migration = false;
                if let Err(e) = self.status.set_source_power(power).await {
                    tracing::warn!("could not record the source restart: {e}");
                }
            }
            Err(e) => tracing::warn!(
                "could not start source VM {} again: {e}",
                self.plan.source_vm.name
            ),
        }
    }
}

/// Starts the source VM the migration stopped: `vm` when inspected in this run, else the VM of the
/// plan's name, which must still have the plan's id when the plan knows it.
async fn restart(plan: &RunnerPlan, source: &dyn Source, vm: Option<&VmShape>) -> Result<()> {
    let name = &plan.source_vm.name;
    let vm = match vm {
        Some(vm) => vm.clone(),
        None => source.inspect(name).await?,
    };
    if plan.source_vm.id.as_ref().is_some_and(|id| id != &vm.id) {
        return Err(Error::NotOurs(format!(
            "source VM {name} is now {}, not the migrated {:?}: it is not started",
            vm.id, plan.source_vm.id
        )));
    }
    source.start(&vm).await?;
    tracing::info!("source VM {name} started again: the migration ended without a target");
    Ok(())
}

/// Removes what a migration left behind (the `cleanup` mode, run when a VMMigration is deleted or
/// abandoned): its staged objects (at its own keys; a recorded `stagedUrl` naming another object is
/// left alone), the source snapshot recorded in the status, and, when it never reached Ready, the
/// target VM it created and the disks it imported. Continues past failures and returns the first
/// (retryable if any was); what is not this migration's is left with a warning.
pub async fn cleanup(
    plan: &RunnerPlan,
    status: &VMMigrationStatus,
    source: &dyn Source,
    target: &dyn Target,
    stage: &dyn Stage,
) -> Result<()> {
    check_owner(plan)?;
    let owner = plan.migration.uid.as_str();
    let mut errors: Vec<Error> = Vec::new();
    let stopped = status.source_power.is_some_and(|p| p.stopped_by_migration);
    if stopped && status.phase != Some(Phase::Ready) {
        match restart(plan, source, None).await {
            Ok(()) => tracing::info!("cleanup: source VM {} started again", plan.source_vm.name),
            Err(e) => {
                tracing::warn!(
                    "cleanup: source VM {} not started: {e}",
                    plan.source_vm.name
                );
                errors.push(e);
            }
        }
    }
    let mut note = |what: String, r: Result<()>| match r {
        Ok(()) => tracing::info!("cleanup: {what} removed"),
        Err(Error::NotOurs(detail)) => tracing::warn!("cleanup: {what} kept: {detail}"),
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
        if let Some(url) = d.staged_url.as_deref().filter(|u| !names_key(u, &key)) {
            tracing::warn!("cleanup: staged {url} kept: it is not this migration's key {key}");
        }
        note(format!("staged {key}"), stage.delete(&key).await);
    }
    if let Some(snapshot) = &status.snapshot {
        note(
            format!("source snapshot {snapshot}"),
            source.delete_snapshot(snapshot, owner).await,
        );
    }
    if status.phase != Some(Phase::Ready) {
        if let Some(vm) = &status.target_vm {
            note(format!("target {vm}"), target.delete_vm(vm, owner).await);
        }
        for handle in status.disks.iter().filter_map(|d| d.target_disk.as_ref()) {
            note(
                format!("target disk {handle}"),
                target.delete_disk(handle, owner).await,
            );
        }
    }
    match errors.iter().position(Error::is_retryable) {
        Some(i) => Err(errors.swap_remove(i)),
        None => errors.into_iter().next().map_or(Ok(()), Err),
    }
}

/// Refuses a plan whose migration UID has no letters or digits: nothing could be marked with it,
/// so nothing could be proven this migration's.
fn check_owner(plan: &RunnerPlan) -> Result<()> {
    if mark::owner_tag(&plan.migration.uid).is_empty() {
        return Err(Error::Plan(format!(
            "migration {}/{} has no UID ({:?}) to mark what it makes with",
            plan.migration.namespace, plan.migration.name, plan.migration.uid
        )));
    }
    Ok(())
}

/// Whether a staged object's URL (`s3://bucket/<key>`, `https://host/base/<key>`,
/// `nfs://server/path/<key>`) names the object at `key`.
fn names_key(url: &str, key: &str) -> bool {
    url.strip_suffix(key)
        .is_some_and(|rest| rest.ends_with('/'))
}

/// Disks that still need exporting.
fn pending(w: &Work) -> usize {
    w.disks
        .iter()
        .filter(|d| d.staged.is_none() && !d.imported)
        .count()
}

/// Exports one disk through `session`, retrying transient failures in-process.
async fn export_retried(
    session: &mut dyn ExportSession,
    tries: u32,
    disk: &SourceDisk,
    dir: &Path,
    progress: &Progress,
) -> Result<LocalImage> {
    let mut retry = Retry::new("export", tries);
    loop {
        match session.export_disk(disk, dir, progress).await {
            Err(e) if retry.again(&e).await => progress.set_done(0),
            result => return result,
        }
    }
}

/// Imports disk `index` through `session`, retrying transient failures in-process.
async fn import_retried(
    session: &mut dyn ImportSession,
    tries: u32,
    index: usize,
    input: ImportInput<'_>,
    progress: &Progress,
) -> Result<Option<TargetDiskHandle>> {
    let mut retry = Retry::new("import", tries);
    loop {
        match session.import_disk(index, input, progress).await {
            Err(e) if retry.again(&e).await => progress.set_done(0),
            result => return result,
        }
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

    #[test]
    fn staged_urls_name_their_key() {
        let key = "default/move-web/vda.qcow2";
        assert!(names_key(
            "s3://bucket/prefix/default/move-web/vda.qcow2",
            key
        ));
        assert!(names_key(
            "nfs://nfs.local/exports/default/move-web/vda.qcow2",
            key
        ));
        assert!(!names_key("s3://bucket/default/other/vda.qcow2", key));
        assert!(!names_key("s3://bucket/xdefault/move-web/vda.qcow2", key));
    }
}
