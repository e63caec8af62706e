//! Cutover and deleteSource through the pipeline (file-backed providers): the source is stopped
//! only with the spec's consent, deleted only after every target disk was read back and matched,
//! started again when the migration ends without a target; the target is started only when it is
//! the one running copy; a snapshot kept for a retry is said so in the status.

mod pipeline_support;

use crd::{ConditionStatus, Phase, SourcePower, StartTarget, StopSource, VMMigrationStatus};
use pipeline_support::{Fault, SOURCE_VM, TARGET_VM, World, condition};
use runner::Error;

fn deleting(stop: StopSource) -> World {
    let mut w = World::two_disks(crd::ProviderType::Libvirt);
    w.plan.cleanup_policy.delete_source = true;
    w.plan.cutover.stop_source = stop;
    w
}

#[tokio::test]
async fn delete_source_without_consent_to_stop_the_source_is_refused_before_anything_moves() {
    let w = deleting(StopSource::Never);
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("spec.cutover.stopSource"), "{err}");
    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Failed));
    assert_eq!(condition(&last, "Validated").status, ConditionStatus::False);
    let source = w.source.read_vm(SOURCE_VM).unwrap();
    assert!(source.running && source.snapshots.is_empty(), "{source:?}");
    assert_eq!(w.source.calls("stop_vm") + w.source.calls("snapshot"), 0);
    assert!(w.stage.objects().is_empty());
    assert_eq!(w.target.calls("import"), 0);
}

#[tokio::test]
async fn the_source_is_stopped_read_back_compared_then_deleted_and_the_target_started() {
    let w = deleting(StopSource::PowerOff);
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    result.expect("migration succeeds");
    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Ready));

    // stopped instead of snapshotted, recorded before it happened
    assert_eq!(w.source.calls("stop_vm"), 1);
    let stopping = rec
        .writes()
        .into_iter()
        .position(|s| s.source_power.is_some_and(|p| p.stopped_by_migration))
        .expect("the stop is recorded");
    let snapshotted = condition(&last, "Snapshotted");
    assert_eq!(snapshotted.reason.as_deref(), Some("SourceStopped"));
    assert!(
        rec.writes()[stopping]
            .disks
            .iter()
            .all(|d| d.sha256.is_none())
    );
    assert_eq!(
        last.source_power,
        Some(SourcePower {
            was_running: true,
            stopped_by_migration: true
        })
    );

    // every disk's guest content recorded at export and read back from the target
    assert!(
        last.disks
            .iter()
            .all(|d| d.guest_sha256.as_ref().map(String::len) == Some(64))
    );
    let validated = condition(&last, "TargetValidated").message.clone().unwrap();
    assert!(
        validated.contains("guest content of 2 disks read back and matching the source"),
        "{validated}"
    );
    assert_eq!(w.target.calls("export"), 1, "one read-back session");

    // then the target runs and the source is gone
    assert!(w.target.read_vm(TARGET_VM).unwrap().running);
    assert!(matches!(
        w.source.read_vm(SOURCE_VM),
        Err(Error::NotFound { .. })
    ));
    let ready = last.message.unwrap();
    assert!(
        ready.contains("started") && ready.contains("source VM web deleted"),
        "{ready}"
    );
}

#[tokio::test]
async fn a_target_disk_that_reads_back_differently_keeps_the_source_and_starts_it_again() {
    let w = deleting(StopSource::Shutdown);
    w.target.corrupt_next_import();
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("target disk vda of VM web-migrated"),
        "{err}"
    );
    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Failed));
    assert_eq!(
        condition(&last, "TargetValidated").reason.as_deref(),
        Some("ChecksumMismatch")
    );
    assert_eq!(w.source.calls("delete_vm"), 0);
    let source = w.source.read_vm(SOURCE_VM).expect("the source is kept");
    assert!(
        source.running,
        "started again: the migration ended without a target"
    );
    assert_eq!(w.source.calls("start_source"), 1);
    assert_eq!(
        last.source_power.map(|p| p.stopped_by_migration),
        Some(false)
    );
    assert!(
        !w.target.vm_dir(TARGET_VM).join("vm.json").exists(),
        "the unverified target VM is removed"
    );
}

#[tokio::test]
async fn a_retry_keeps_the_source_stopped_and_reuses_what_was_staged() {
    let mut w = deleting(StopSource::PowerOff);
    w.plan.cleanup_policy.delete_source = false;
    w.target.fail("import_disk", 1, true);
    let (result, rec1) = w.run(&VMMigrationStatus::default()).await;
    assert!(result.unwrap_err().is_retryable());
    assert!(
        !w.source.read_vm(SOURCE_VM).unwrap().running,
        "stays stopped between attempts"
    );
    assert_eq!(w.source.calls("start_source"), 0);
    let uploads = w.stage.calls("upload", "");

    let (result, rec2) = w.run(&rec1.last()).await;
    result.expect("attempt 2 succeeds");
    assert_eq!(
        w.source.calls("stop_vm"),
        1,
        "a stopped source is not stopped again"
    );
    assert_eq!(
        w.stage.calls("upload", ""),
        uploads,
        "the staged disks are reused"
    );
    assert!(
        w.target.read_vm(TARGET_VM).unwrap().running,
        "the one running copy"
    );
    assert!(!w.source.read_vm(SOURCE_VM).unwrap().running);
    assert!(rec2.last().message.unwrap().contains("started"));
}

#[tokio::test]
async fn a_source_started_again_between_attempts_is_stopped_and_exported_again() {
    let mut w = deleting(StopSource::PowerOff);
    w.plan.cleanup_policy.delete_source = false;
    w.target.fail("import_disk", 1, true);
    let (result, rec1) = w.run(&VMMigrationStatus::default()).await;
    assert!(result.unwrap_err().is_retryable());
    let uploads = w.stage.calls("upload", "");
    w.source.set_running(SOURCE_VM, true).unwrap();

    let (result, _) = w.run(&rec1.last()).await;
    result.expect("attempt 2 succeeds");
    assert_eq!(w.source.calls("stop_vm"), 2);
    assert_eq!(
        w.stage.calls("upload", ""),
        2 * uploads,
        "disks copied while the source ran again are exported again"
    );
}

#[tokio::test]
async fn start_target_always_and_never() {
    let mut w = World::one_disk(crd::ProviderType::Libvirt);
    w.plan.cutover.start_target = StartTarget::Always;
    w.run(&VMMigrationStatus::default()).await.0.unwrap();
    assert!(w.target.read_vm(TARGET_VM).unwrap().running);
    assert!(
        w.source.read_vm(SOURCE_VM).unwrap().running,
        "asked for: two copies run"
    );

    let mut w = World::one_disk(crd::ProviderType::Libvirt);
    w.plan.cutover.stop_source = StopSource::PowerOff;
    w.plan.cutover.start_target = StartTarget::Never;
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    result.unwrap();
    assert!(!w.target.read_vm(TARGET_VM).unwrap().running);
    assert_eq!(w.target.calls("start_vm"), 0);
    assert!(rec.last().message.unwrap().contains("startTarget is Never"));
}

#[tokio::test]
async fn a_snapshot_kept_for_a_retry_is_said_so_and_removed_when_the_migration_ends() {
    let w = World::one_disk(crd::ProviderType::Libvirt);
    w.stage.inject(Fault::FailUpload("vda.qcow2".into()));
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    assert!(result.unwrap_err().is_retryable());
    let last = rec.last();
    let snapshotted = condition(&last, "Snapshotted");
    assert_eq!(snapshotted.reason.as_deref(), Some("KeptForRetry"));
    let message = snapshotted.message.clone().unwrap();
    assert!(
        message
            .contains("vrg-5f0c2a8e1b7d4c1e9a8b3d2e1f0a9b8c of source VM web kept for attempt 2"),
        "{message}"
    );
    assert!(last.snapshot.is_some());
    assert_eq!(w.source.read_vm(SOURCE_VM).unwrap().snapshots.len(), 1);

    // the final attempt fails transiently too: the migration ends, the snapshot goes
    let mut w2 = w;
    w2.plan.attempt = 2;
    w2.plan.final_attempt = true;
    w2.stage.inject(Fault::FailUpload("vda.qcow2".into()));
    let (result, rec) = w2.run(&last).await;
    assert!(result.unwrap_err().is_retryable());
    assert_eq!(w2.source.read_vm(SOURCE_VM).unwrap().snapshots.len(), 0);
    assert_eq!(rec.last().snapshot, None);
    assert_ne!(
        condition(&rec.last(), "Snapshotted").reason.as_deref(),
        Some("KeptForRetry")
    );
}
