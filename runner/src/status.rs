//! The one place the runner writes `VMMigration.status`.
//!
//! [`StatusWriter`] keeps the runner-owned part of the status (phase, progress, message, the pipeline
//! phases' conditions, disks, the snapshot and target VM handles) and sends all of it on every write through a
//! [`StatusSink`]: server-side apply as field manager [`FIELD_MANAGER`] in the cluster
//! ([`KubeStatus`]), an in-memory list in tests ([`Recorder`]). Phase changes and checkpoints are
//! written at once; progress at most once every [`PROGRESS_INTERVAL`]. Every phase change is also one
//! log line, and progress a line every [`LOG_INTERVAL`], for `kubectl logs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use crd::{
    Condition, ConditionStatus, DiskStatus, Phase, SnapshotHandle, SourcePower, TargetVmHandle,
    VMMigration, VMMigrationStatus,
};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::time::Instant;

use crate::Result;
use crate::error::{Error, with_retries};
use crate::progress::{Progress, human_bytes};
use crate::storage::UploadLedger;

/// Field manager of the runner's server-side apply patches.
pub const FIELD_MANAGER: &str = "virtrigaud-runner";
/// Minimum time between two progress patches.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// Minimum time between two progress log lines.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Tries of a status write that records a step (1 + 2 + 4 + 8 + 16 + 30 + 30 s apart): progress
/// writes try once, as the next one comes within seconds.
const STATUS_TRIES: u32 = 8;

/// Where status writes go.
#[async_trait]
pub trait StatusSink: Send + Sync {
    /// Replaces the runner-owned status fields with `status`.
    async fn apply(&self, status: &VMMigrationStatus) -> Result<()>;
}

/// Server-side apply of the status subresource of one VMMigration.
pub struct KubeStatus {
    api: Api<VMMigration>,
    name: String,
}

impl KubeStatus {
    /// Writes the status of VMMigration `name` through `api` (namespaced).
    pub fn new(api: Api<VMMigration>, name: impl Into<String>) -> Self {
        KubeStatus {
            api,
            name: name.into(),
        }
    }

    /// The apply patch body: only the runner-owned fields, so the operator's stay its own.
    pub fn body(status: &VMMigrationStatus) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": format!("{}/{}", crd::GROUP, crd::VERSION),
            "kind": "VMMigration",
            "status": status,
        })
    }
}

#[async_trait]
impl StatusSink for KubeStatus {
    async fn apply(&self, status: &VMMigrationStatus) -> Result<()> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api
            .patch_status(&self.name, &params, &Patch::Apply(Self::body(status)))
            .await?;
        Ok(())
    }
}

/// Keeps every status written, for tests.
#[derive(Clone, Default)]
pub struct Recorder {
    writes: Arc<Mutex<Vec<VMMigrationStatus>>>,
}

impl Recorder {
    /// Every status written so far, oldest first.
    pub fn writes(&self) -> Vec<VMMigrationStatus> {
        self.writes.lock().expect("recorder lock").clone()
    }

    /// The last status written (the default status when nothing was).
    pub fn last(&self) -> VMMigrationStatus {
        self.writes().pop().unwrap_or_default()
    }
}

#[async_trait]
impl StatusSink for Recorder {
    async fn apply(&self, status: &VMMigrationStatus) -> Result<()> {
        self.writes
            .lock()
            .expect("recorder lock")
            .push(status.clone());
        Ok(())
    }
}

/// Writes the runner's part of the status: immediate for phase changes and checkpoints,
/// rate-limited for progress.
pub struct StatusWriter {
    sink: Box<dyn StatusSink>,
    state: VMMigrationStatus,
    last_write: Option<Instant>,
    /// Progress not yet written because of the rate limit.
    dirty: bool,
    last_log: Option<(Instant, u64)>,
    /// Uploads in progress, copied into every write.
    uploads: Option<UploadLedger>,
}

impl StatusWriter {
    /// A writer starting from the status read when the runner started: the runner-owned fields
    /// (pipeline conditions, disks, snapshot, targetVm, targetVmId) carry over so resume state is never
    /// dropped by the first apply; operator-owned fields are left out.
    pub fn new(sink: Box<dyn StatusSink>, previous: &VMMigrationStatus) -> Self {
        let owned: Vec<&str> = Phase::PIPELINE.iter().map(|p| p.condition_type()).collect();
        let state = VMMigrationStatus {
            phase: previous.phase.filter(|p| Phase::PIPELINE.contains(p)),
            progress: previous.progress,
            conditions: previous
                .conditions
                .iter()
                .filter(|c| owned.contains(&c.type_.as_str()))
                .cloned()
                .collect(),
            disks: previous.disks.clone(),
            snapshot: previous.snapshot.clone(),
            source_power: previous.source_power,
            target_vm: previous.target_vm.clone(),
            target_vm_id: previous.target_vm_id.clone(),
            uploads: previous.uploads.clone(),
            ..VMMigrationStatus::default()
        };
        StatusWriter {
            sink,
            state,
            last_write: None,
            dirty: false,
            last_log: None,
            uploads: None,
        }
    }

    /// Mirrors `ledger` (the stage's multipart uploads in progress) into every write, so a runner
    /// in a new pod continues them ([`VMMigrationStatus::uploads`]).
    pub fn mirror_uploads(mut self, ledger: UploadLedger) -> Self {
        self.uploads = Some(ledger);
        self
    }

    /// The status as last set (written or pending).
    pub fn status(&self) -> &VMMigrationStatus {
        &self.state
    }

    /// The recorded entry of disk `name`.
    pub fn disk(&self, name: &str) -> Option<&DiskStatus> {
        self.state.disks.iter().find(|d| d.name == name)
    }

    /// Enters `phase`: its condition becomes `Unknown`/`InProgress` (Transferring, whose name is an
    /// activity, becomes `True` as in the guide), and the phase and message are written at once.
    pub async fn begin(&mut self, phase: Phase, message: impl Into<String>) -> Result<()> {
        let message = message.into();
        tracing::info!("phase {phase}: {message}");
        let (status, reason) = if phase == Phase::Transferring {
            (ConditionStatus::True, "Uploading")
        } else {
            (ConditionStatus::Unknown, "InProgress")
        };
        self.set_condition(phase, status, reason, &message);
        self.state.phase = Some(phase);
        self.state.message = Some(message);
        self.write().await
    }

    /// Marks `phase` as done (`True`) with a reason such as `Snapshotted` or `Skipped`.
    pub async fn complete(&mut self, phase: Phase, reason: &str, message: &str) -> Result<()> {
        tracing::info!("{phase} done: {message}");
        self.set_condition(phase, ConditionStatus::True, reason, message);
        self.state.message = Some(message.to_string());
        self.write().await
    }

    /// Records progress: the whole-migration percentage and the current phase's condition message.
    /// Written only if the last write is [`PROGRESS_INTERVAL`] old, otherwise kept for the next write.
    /// Sink errors are logged, not returned: a missed progress patch must not stop the bytes.
    pub async fn progress(&mut self, percent: i32, message: String) {
        self.state.progress = Some(percent.clamp(0, 100));
        if let Some(phase) = self.state.phase
            && let Some(c) = self
                .state
                .conditions
                .iter_mut()
                .find(|c| c.type_ == phase.condition_type())
        {
            c.message = Some(message.clone());
        }
        self.state.message = Some(message);
        self.dirty = true;
        let due = self
            .last_write
            .is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL);
        if due && let Err(e) = self.write_tries(1).await {
            tracing::warn!("progress not written: {e}");
        }
    }

    /// Sets the whole-migration percentage without writing (it goes with the next write).
    pub fn set_progress(&mut self, percent: i32) {
        self.state.progress = Some(percent.clamp(0, 100));
    }

    /// Logs a human progress line (percent, bytes, rate) at most every [`LOG_INTERVAL`].
    pub fn log_progress(&mut self, what: &str, counter: &Progress) {
        let now = Instant::now();
        let done = counter.done();
        match self.last_log {
            Some((at, _)) if now.duration_since(at) < LOG_INTERVAL => {}
            Some((at, before)) => {
                let secs = now.duration_since(at).as_secs_f64().max(0.001);
                let rate = (done.saturating_sub(before) as f64 / secs) as u64;
                tracing::info!(
                    "{what}: {:.0}% ({}/{}, {}/s)",
                    counter.fraction() * 100.0,
                    human_bytes(done),
                    human_bytes(counter.total()),
                    human_bytes(rate)
                );
                self.last_log = Some((now, done));
            }
            None => self.last_log = Some((now, done)),
        }
    }

    /// Forgets the rate baseline (a new transfer starts).
    pub fn reset_log(&mut self) {
        self.last_log = None;
    }

    /// Upserts one disk's entry and writes at once (a resume checkpoint).
    pub async fn set_disk(&mut self, disk: DiskStatus) -> Result<()> {
        match self.state.disks.iter_mut().find(|d| d.name == disk.name) {
            Some(existing) => *existing = disk,
            None => self.state.disks.push(disk),
        }
        self.write().await
    }

    /// Records the source snapshot the disks are exported from (`None` once deleted).
    pub async fn set_snapshot(&mut self, snapshot: Option<SnapshotHandle>) -> Result<()> {
        self.state.snapshot = snapshot;
        self.write().await
    }

    /// Records the source VM's power as the migration found and left it.
    pub async fn set_source_power(&mut self, power: SourcePower) -> Result<()> {
        self.state.source_power = Some(power);
        self.write().await
    }

    /// Records the target VM a session is making (not yet complete).
    pub async fn set_target_vm(&mut self, vm: TargetVmHandle) -> Result<()> {
        self.state.target_vm = Some(vm);
        self.state.target_vm_id = None;
        self.write().await
    }

    /// Records the target VM as completely created: `targetVmId` shows its id.
    pub async fn set_created(&mut self, vm: TargetVmHandle) -> Result<()> {
        self.state.target_vm_id = Some(vm.id());
        self.state.target_vm = Some(vm);
        self.write().await
    }

    /// Forgets the target VM (deleted, gone, or not this migration's).
    pub async fn clear_target_vm(&mut self) -> Result<()> {
        self.state.target_vm = None;
        self.state.target_vm_id = None;
        self.write().await
    }

    /// Marks `phase` failed with `error`. A terminal error also sets phase `Failed`; a retryable one
    /// leaves the phase where it stopped, since the operator decides whether another attempt runs.
    pub async fn fail(&mut self, phase: Phase, error: &Error) -> Result<()> {
        let message = error.to_string();
        tracing::error!("{phase} failed: {message}");
        self.set_condition(phase, ConditionStatus::False, error.reason(), &message);
        if !error.is_retryable() {
            self.state.phase = Some(Phase::Failed);
        }
        self.state.message = Some(format!("{phase} failed: {message}"));
        self.write().await
    }

    /// Phase `Ready`, progress 100.
    pub async fn ready(&mut self, message: &str) -> Result<()> {
        tracing::info!("phase Ready: {message}");
        self.state.phase = Some(Phase::Ready);
        self.state.progress = Some(100);
        self.state.message = Some(message.to_string());
        self.write().await
    }

    fn set_condition(
        &mut self,
        phase: Phase,
        status: ConditionStatus,
        reason: &str,
        message: &str,
    ) {
        crd::set_condition(
            &mut self.state.conditions,
            Condition::new(phase.condition_type(), status, reason, message),
        );
    }

    /// Sends the whole runner-owned status, retrying transient API errors for about a minute and
    /// a half (an apiserver restart is waited out, the attempt goes on).
    async fn write(&mut self) -> Result<()> {
        self.write_tries(STATUS_TRIES).await
    }

    /// Sends the whole runner-owned status in at most `tries` tries.
    async fn write_tries(&mut self, tries: u32) -> Result<()> {
        if let Some(ledger) = &self.uploads {
            self.state.uploads = ledger.pending();
        }
        let state = &self.state;
        let sink = &self.sink;
        with_retries("status patch", tries, || sink.apply(state)).await?;
        self.last_write = Some(Instant::now());
        self.dirty = false;
        Ok(())
    }

    /// Writes progress kept back by the rate limit, if any.
    pub async fn flush(&mut self) -> Result<()> {
        if self.dirty {
            self.write().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn uploads_in_progress_go_with_every_write_and_carry_over() {
        let previous = VMMigrationStatus {
            uploads: vec![crd::PendingUpload {
                key: "team-a/web/vda.raw".into(),
                upload_id: "u-1".into(),
            }],
            ..VMMigrationStatus::default()
        };
        let ledger = UploadLedger::seeded(&previous.uploads);
        let rec = Recorder::default();
        let mut w =
            StatusWriter::new(Box::new(rec.clone()), &previous).mirror_uploads(ledger.clone());
        ledger.insert("team-a/web/vdb.raw", "u-2");
        w.begin(Phase::Transferring, "Uploading").await.unwrap();
        let keys: Vec<_> = rec
            .last()
            .uploads
            .iter()
            .map(|u| u.upload_id.clone())
            .collect();
        assert_eq!(keys, ["u-1", "u-2"]);
        ledger.remove("team-a/web/vda.raw");
        ledger.remove("team-a/web/vdb.raw");
        w.complete(Phase::Transferring, "Uploaded", "done")
            .await
            .unwrap();
        assert!(
            rec.last().uploads.is_empty(),
            "completed uploads leave the status"
        );
    }

    fn writer() -> (StatusWriter, Recorder) {
        let rec = Recorder::default();
        (
            StatusWriter::new(Box::new(rec.clone()), &VMMigrationStatus::default()),
            rec,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn progress_is_rate_limited_and_phase_changes_are_not() {
        let (mut w, rec) = writer();
        w.begin(Phase::Transferring, "Uploading disk")
            .await
            .unwrap();
        assert_eq!(rec.writes().len(), 1);

        // 10 s of progress updates every 100 ms: at most one patch per 2 s.
        for i in 0..=100 {
            w.progress(i / 2, format!("Uploading disk ({i}% complete)"))
                .await;
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let writes = rec.writes();
        assert_eq!(writes.len(), 1 + 5, "one patch per 2 s over 10 s");
        let written: Vec<_> = writes.iter().skip(1).map(|s| s.progress.unwrap()).collect();
        assert_eq!(written, [10, 20, 30, 40, 50]);
        // This one falls 100 ms after the last write: kept back.
        w.progress(77, "Uploading disk (77% complete)".into()).await;
        assert_eq!(rec.writes().len(), 6);

        // A phase change is written immediately, carrying the latest progress with it.
        w.begin(Phase::Importing, "Downloading disk").await.unwrap();
        let last = rec.last();
        assert_eq!(rec.writes().len(), 7);
        assert_eq!(last.phase, Some(Phase::Importing));
        assert_eq!(last.progress, Some(77));
        let transferring = last
            .conditions
            .iter()
            .find(|c| c.type_ == "Transferring")
            .unwrap();
        assert_eq!(
            transferring.message.as_deref(),
            Some("Uploading disk (77% complete)")
        );
        // Right after a write, progress waits for the interval; flush sends it.
        w.progress(30, "Downloading disk (10% complete)".into())
            .await;
        assert_eq!(rec.writes().len(), 7);
        w.flush().await.unwrap();
        assert_eq!(rec.writes().len(), 8);
        assert_eq!(rec.last().progress, Some(30));
        w.flush().await.unwrap();
        assert_eq!(rec.writes().len(), 8, "nothing pending, nothing written");
    }

    #[tokio::test]
    async fn carries_runner_fields_over_and_drops_operator_fields() {
        let previous = VMMigrationStatus {
            phase: Some(Phase::Pending),
            attempt: Some(2),
            last_error: Some("boom".into()),
            conditions: vec![
                Condition::new("Ready", ConditionStatus::False, "Retrying", ""),
                Condition::new("Exported", ConditionStatus::True, "Exported", "2 disks"),
            ],
            disks: vec![DiskStatus {
                name: "vda".into(),
                sha256: Some("ab".into()),
                ..DiskStatus::default()
            }],
            snapshot: Some(SnapshotHandle::Libvirt {
                domain_uuid: "u".into(),
                name: "snap".into(),
            }),
            target_vm: Some(TargetVmHandle::Libvirt {
                uuid: "t".into(),
                name: "web".into(),
            }),
            ..VMMigrationStatus::default()
        };
        let rec = Recorder::default();
        let mut w = StatusWriter::new(Box::new(rec.clone()), &previous);
        w.begin(Phase::Validating, "checking").await.unwrap();
        let s = rec.last();
        assert_eq!(s.attempt, None);
        assert_eq!(s.last_error, None);
        let types: Vec<_> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Exported", "Validated"]);
        assert_eq!(s.disks, previous.disks);
        assert_eq!(s.snapshot, previous.snapshot);
        assert_eq!(s.target_vm, previous.target_vm);
        assert_eq!(s.target_vm_id, None, "not created yet");
    }

    #[tokio::test]
    async fn terminal_failures_set_failed_and_retryable_ones_do_not() {
        let (mut w, rec) = writer();
        w.begin(Phase::Transferring, "x").await.unwrap();
        w.fail(Phase::Transferring, &Error::transient("s3", "503"))
            .await
            .unwrap();
        assert_eq!(rec.last().phase, Some(Phase::Transferring));
        let c = &rec.last().conditions[0];
        assert_eq!(c.status, ConditionStatus::False);
        assert_eq!(c.reason.as_deref(), Some("Unavailable"));

        w.fail(Phase::Transferring, &Error::NoSpace("/scratch".into()))
            .await
            .unwrap();
        assert_eq!(rec.last().phase, Some(Phase::Failed));
        assert_eq!(
            rec.last().message.as_deref(),
            Some("Transferring failed: not enough space: /scratch")
        );
    }
}
