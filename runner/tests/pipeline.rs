//! The whole pipeline against a file-backed source and target, a local-directory stage and real
//! qemu-img: multi-disk migration, conversion, resume, integrity, cleanup policy and live progress.

mod pipeline_support;

use crd::{ConditionStatus, DiskFormat, Phase, ProviderType, VMMigrationStatus};
use pipeline_support::*;
use runner::Error;
use runner::progress::human_bytes;
use runner::provider::file::VmFile;

#[tokio::test]
async fn migrates_two_disks_end_to_end() {
    let w = World::two_disks(ProviderType::Libvirt);
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    let id = result.expect("migration succeeds");
    assert_eq!(id, format!("file-{TARGET_VM}"));

    // The target holds the source content, in the target's native format (qcow2): vda was copied
    // as is, vdb converted from raw.
    let images = w.target_images();
    assert_eq!(images.len(), 2);
    for ((name, original), (format, image)) in w.originals.iter().zip(&images) {
        assert_eq!(*format, DiskFormat::Qcow2, "{name}");
        assert!(
            same_content(original, image),
            "{name} differs on the target"
        );
    }
    // The source still runs (spec.cutover.stopSource defaults to Never): the target is left
    // stopped, so two copies of the VM never run at once.
    let vm = w.target.read_vm(TARGET_VM).unwrap();
    assert_eq!((vm.cpus, vm.memory_bytes, vm.running), (2, 2 << 30, false));
    assert!(w.source.read_vm(SOURCE_VM).unwrap().running);
    assert_eq!(w.target.calls("start_vm"), 0);

    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Ready));
    assert_eq!(last.progress, Some(100));
    assert_eq!(last.target_vm_id.as_deref(), Some(id.as_str()));
    for phase in Phase::PIPELINE {
        let c = condition(&last, phase.condition_type());
        assert_eq!(c.status, ConditionStatus::True, "{phase}: {c:?}");
    }
    assert_eq!(
        condition(&last, "Converted").reason.as_deref(),
        Some("Converted")
    );
    let validated = condition(&last, "TargetValidated").message.clone().unwrap();
    assert!(
        validated.ends_with("2 disks with the source's capacities"),
        "no read-back without deleteSource: {validated}"
    );
    let ready = last.message.clone().unwrap();
    assert!(
        ready.contains("left stopped: the source VM still runs"),
        "{ready}"
    );

    // One status entry per disk, with its checksum and target disk.
    assert_eq!(last.disks.len(), 2);
    for (d, name) in last.disks.iter().zip(["vda", "vdb"]) {
        assert_eq!(d.name, name);
        assert_eq!(d.target_format, Some(DiskFormat::Qcow2));
        assert_eq!(d.sha256.as_ref().map(String::len), Some(64));
        assert!(d.target_disk.is_some());
        assert_eq!(d.staged_url, None, "deleted from staging");
    }
    assert_eq!(last.disks[0].source_format, Some(DiskFormat::Qcow2));
    assert_eq!(last.disks[1].source_format, Some(DiskFormat::Raw));
    assert_eq!(last.disks[1].source_size_bytes, Some(3 << 20));

    // deleteIntermediate and deleteSnapshot (defaults): nothing left behind.
    assert!(w.stage.objects().is_empty(), "{:?}", w.stage.objects());
    assert!(w.source.read_vm(SOURCE_VM).unwrap().snapshots.is_empty());
    assert_eq!(w.source.calls("delete_snapshot"), 1);
    assert_eq!(last.snapshot, None);
    assert!(files_under(&w.scratch).is_empty());

    // Progress only moves forward, and phases are written in pipeline order.
    let writes = rec.writes();
    let progress: Vec<i32> = writes.iter().filter_map(|s| s.progress).collect();
    assert!(progress.windows(2).all(|p| p[0] <= p[1]), "{progress:?}");
    assert_eq!(writes[0].progress, Some(0));
    let before_ready = &writes[writes.len() - 2];
    assert_eq!(before_ready.progress, Some(99), "{before_ready:?}");
    let mut phases: Vec<Phase> = writes.iter().filter_map(|s| s.phase).collect();
    phases.dedup();
    assert_eq!(
        phases,
        [
            Phase::Validating,
            Phase::Snapshotting,
            Phase::Exporting,
            Phase::Transferring,
            Phase::Exporting,
            Phase::Converting,
            Phase::Transferring,
            Phase::Importing,
            Phase::Creating,
            Phase::ValidatingTarget,
            Phase::Ready
        ]
    );
}

#[tokio::test]
async fn explicit_target_disk_format_overrides_the_native_one() {
    // A Proxmox-like target (native qcow2) asked for streamOptimized VMDK.
    let mut w = World::two_disks(ProviderType::Proxmox);
    w.plan.target_disk_format = Some(DiskFormat::Vmdk);
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    result.expect("migration succeeds");
    for ((name, original), (format, image)) in w.originals.iter().zip(w.target_images()) {
        assert_eq!(format, DiskFormat::Vmdk);
        assert!(
            same_content(original, &image),
            "{name} differs on the target"
        );
        let info = qemu_img(&[
            "info",
            "--output=json",
            "-f",
            "vmdk",
            image.to_str().unwrap(),
        ]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(
            info["format-specific"]["data"]["create-type"],
            "streamOptimized"
        );
    }
    let converted = condition(&rec.last(), "Converted").message.clone().unwrap();
    assert_eq!(converted, "2 disks converted to vmdk");
    // the runner's VMDK writer streams into staging: no converted copy was ever written to scratch
    let streamed = rec
        .writes()
        .iter()
        .filter_map(|s| s.message.clone())
        .filter(|m| m.starts_with("Converting") && m.contains("to vmdk, streamed into"))
        .count();
    assert!(
        streamed >= 2,
        "each disk's conversion streamed into the stage"
    );
    assert_eq!(w.stage.calls("upload", ".vmdk"), 2, "one upload per disk");
}

#[tokio::test]
async fn matching_formats_skip_conversion() {
    let w = World::new(
        ProviderType::Libvirt,
        &[("vda", DiskFormat::Qcow2, 2 << 20)],
    );
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    result.expect("migration succeeds");
    let last = rec.last();
    assert_eq!(
        condition(&last, "Converted").reason.as_deref(),
        Some("Skipped")
    );
    assert!(
        rec.writes()
            .iter()
            .all(|s| s.phase != Some(Phase::Converting))
    );
}

#[tokio::test]
async fn resume_skips_staged_and_imported_disks() {
    // Attempt 1 stages and imports both disks, then creating the VM fails transiently.
    let w = World::two_disks(ProviderType::Libvirt);
    w.target.fail("create_vm", 1, true);
    let (result, rec1) = w.run(&VMMigrationStatus::default()).await;
    let err = result.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let after1 = rec1.last();
    assert_eq!(after1.phase, Some(Phase::Creating), "retryable: not Failed");
    assert_eq!(condition(&after1, "Created").status, ConditionStatus::False);
    assert!(after1.disks.iter().all(|d| d.target_disk.is_some()));

    // Attempt 2 starts from that status: nothing is exported, uploaded or imported again.
    let (result, rec2) = w.run(&after1).await;
    result.expect("second attempt succeeds");
    assert_eq!(w.source.calls("export_disk"), 2);
    assert_eq!(w.source.calls("snapshot"), 1);
    assert_eq!(w.stage.calls("upload", ""), 2);
    assert_eq!(w.stage.calls("download", ""), 2);
    assert_eq!(w.target.calls("import_disk"), 2);
    assert_eq!(w.target.calls("create_vm"), 2);
    assert_eq!(
        condition(&rec2.last(), "Snapshotted").reason.as_deref(),
        Some("Skipped")
    );
    for ((name, original), (_, image)) in w.originals.iter().zip(w.target_images()) {
        assert!(same_content(original, &image), "{name}");
    }
}

#[tokio::test]
async fn resume_continues_after_a_partly_staged_vm() {
    // Attempt 1: vda is staged, the upload of vdb fails transiently. The snapshot is kept.
    let w = World::two_disks(ProviderType::Libvirt);
    w.stage.inject(Fault::FailUpload("vdb.qcow2".into()));
    let (result, rec1) = w.run(&VMMigrationStatus::default()).await;
    assert!(result.unwrap_err().is_retryable());
    let after1 = rec1.last();
    assert!(after1.snapshot.is_some(), "kept for the next attempt");
    assert_eq!(w.source.read_vm(SOURCE_VM).unwrap().snapshots.len(), 1);

    // Attempt 2 reuses the same snapshot and the verified vda object: only vdb is exported again.
    let (result, _) = w.run(&after1).await;
    result.expect("second attempt succeeds");
    assert_eq!(w.source.calls("export_disk"), 3);
    assert_eq!(w.stage.calls("upload", "vda.qcow2"), 1);
    assert_eq!(w.stage.calls("upload", "vdb.qcow2"), 2);
    for ((name, original), (_, image)) in w.originals.iter().zip(w.target_images()) {
        assert!(same_content(original, &image), "{name}");
    }
    assert!(w.source.read_vm(SOURCE_VM).unwrap().snapshots.is_empty());
}

#[tokio::test]
async fn resume_exports_everything_again_when_the_snapshot_is_gone() {
    // Attempt 1 stages both disks (and deletes the snapshot, by policy), then the first import
    // fails. Then vdb's staged object disappears.
    let w = World::two_disks(ProviderType::Libvirt);
    w.target.fail("import_disk", 1, true);
    let (result, rec1) = w.run(&VMMigrationStatus::default()).await;
    assert!(result.unwrap_err().is_retryable());
    let after1 = rec1.last();
    assert_eq!(after1.snapshot, None);
    for f in w.stage.objects() {
        if f.to_string_lossy().contains("vdb.qcow2") {
            std::fs::remove_file(f).unwrap();
        }
    }

    // vda's object is intact but comes from a snapshot that no longer exists: mixing it with a
    // fresh vdb would give a VM whose disks are from two points in time. Both are exported again.
    let (result, _) = w.run(&after1).await;
    result.expect("second attempt succeeds");
    assert_eq!(w.source.calls("export_disk"), 4);
    assert_eq!(w.source.calls("snapshot"), 2);
}

#[tokio::test]
async fn resume_creates_the_target_vm_again_when_it_was_removed() {
    // Attempt 1 created the VM, then validating it failed transiently; someone removed the VM
    // definition (not the disks) before attempt 2.
    let w = World::one_disk(ProviderType::Libvirt);
    w.target.fail("validate_vm", 1, true);
    let (result, rec1) = w.run(&VMMigrationStatus::default()).await;
    assert!(result.unwrap_err().is_retryable());
    assert!(rec1.last().target_vm_id.is_some());
    std::fs::remove_file(w.target.vm_dir(TARGET_VM).join("vm.json")).unwrap();

    let (result, rec2) = w.run(&rec1.last()).await;
    result.expect("second attempt succeeds");
    assert_eq!(w.target.calls("create_vm"), 2);
    assert_eq!(
        w.target.calls("import_disk"),
        1,
        "the imported disk is reused"
    );
    assert_eq!(
        condition(&rec2.last(), "Created").reason.as_deref(),
        Some("Created")
    );
}

#[tokio::test]
async fn checksum_mismatch_on_import_is_terminal_and_no_vm_is_created() {
    // vdb's staged bytes change after the upload: the download's hash differs from the upload's.
    let w = World::two_disks(ProviderType::Libvirt);
    w.stage.inject(Fault::CorruptDownload("vdb.qcow2".into()));
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(!err.is_retryable());

    assert_eq!(w.target.calls("create_vm"), 0);
    assert!(!w.target.vm_dir(TARGET_VM).join("vm.json").exists());
    // vda had been imported: removed again, nothing is left on the target.
    assert_eq!(w.target.calls("delete_disk"), 1);
    assert!(files_under(&w.target.vm_dir(TARGET_VM)).is_empty());

    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Failed));
    let imported = condition(&last, "Imported");
    assert_eq!(imported.status, ConditionStatus::False);
    assert_eq!(imported.reason.as_deref(), Some("ChecksumMismatch"));
    assert!(imported.message.as_ref().unwrap().contains("vdb.qcow2"));
    assert!(last.disks.iter().all(|d| d.target_disk.is_none()));
}

#[tokio::test]
async fn corrupted_staged_object_is_refused() {
    // The staged bytes rot at rest: the stage's own check refuses them, terminal as well.
    let w = World::one_disk(ProviderType::Libvirt);
    w.target.fail("import_disk", 1, true);
    let (result, rec1) = w.run(&VMMigrationStatus::default()).await;
    assert!(result.unwrap_err().is_retryable());
    let object = w
        .stage
        .objects()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "qcow2"))
        .unwrap();
    flip_byte(&object, 5000);

    // Size and sidecar still match the record, so the object is reused; the download re-hashes
    // and catches the rot.
    let (result, _) = w.run(&rec1.last()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert_eq!(w.target.calls("create_vm"), 0);
}

#[tokio::test]
async fn keeps_what_the_policy_keeps() {
    let mut w = World::one_disk(ProviderType::Libvirt);
    w.plan.cleanup_policy.delete_intermediate = false;
    w.plan.cleanup_policy.delete_snapshot = false;
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    result.expect("migration succeeds");
    assert_eq!(w.stage.objects().len(), 2, "object and checksum sidecar");
    let last = rec.last();
    assert!(
        last.disks[0]
            .staged_url
            .as_ref()
            .unwrap()
            .starts_with("nfs://nfs.local/exports/")
    );
    assert_eq!(
        last.snapshot.as_ref().map(|s| s.name()),
        Some("vrg-5f0c2a8e1b7d4c1e9a8b3d2e1f0a9b8c")
    );
    assert_eq!(w.source.read_vm(SOURCE_VM).unwrap().snapshots.len(), 1);
}

#[tokio::test]
async fn progress_messages_have_the_guides_form() {
    let w = World::one_disk(ProviderType::Libvirt);
    w.stage.inject(Fault::StallUpload);
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    result.expect("migration succeeds");
    let messages: Vec<String> = rec
        .writes()
        .iter()
        .filter(|s| s.phase == Some(Phase::Transferring))
        .filter_map(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Transferring")
                .and_then(|c| c.message.clone())
        })
        .collect();
    // The staged image is the qcow2 file as exported.
    let size = std::fs::metadata(&w.originals[0].1).unwrap().len();
    let stalled = format!(
        "Uploading disk (45% complete, {}/{})",
        human_bytes(forty_five_percent(size)),
        human_bytes(size)
    );
    assert!(
        messages.contains(&stalled),
        "{stalled:?} not in {messages:?}"
    );
    let done = format!("Uploading disk (100% complete, {0}/{0})", human_bytes(size));
    assert!(messages.contains(&done), "{done:?} not in {messages:?}");
    // While stalled, status.progress sat inside the upload's share, short of Importing.
    let during = rec
        .writes()
        .iter()
        .find(|s| {
            s.conditions
                .iter()
                .any(|c| c.message.as_deref() == Some(stalled.as_str()))
        })
        .and_then(|s| s.progress)
        .unwrap();
    assert!((30..=60).contains(&during), "{during}");
}

#[tokio::test]
async fn validating_fails_fast_with_a_precise_message() {
    // The target name is taken by a VM without this migration's mark.
    let w = World::one_disk(ProviderType::Libvirt);
    w.target
        .define_vm(TARGET_VM, &foreign_vm("theirs", None), &[])
        .unwrap();
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    let err = result.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "not created by this migration: a VM named {TARGET_VM} (id theirs) already exists on \
             target default/target and does not carry the mark of migration {}: it is left \
             untouched; choose another targetName or remove that VM",
            w.plan.migration.uid
        )
    );
    assert_eq!(err.reason(), "NotOwned");
    assert_eq!(rec.last().phase, Some(Phase::Failed));
    assert_eq!(
        condition(&rec.last(), "Validated").status,
        ConditionStatus::False
    );
    assert!(
        w.target.vm_dir(TARGET_VM).join("vm.json").exists(),
        "someone else's VM is never touched"
    );
    assert_eq!(w.source.calls("snapshot"), 0);

    // The source VM does not exist.
    let mut w = World::one_disk(ProviderType::Libvirt);
    w.plan.source_vm.name = "nope".into();
    let err = w.run(&VMMigrationStatus::default()).await.0.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(!err.is_retryable());

    // vSphere-like targets import VMDK only.
    let mut w = World::one_disk(ProviderType::Vsphere);
    w.plan.target_disk_format = Some(DiskFormat::Qcow2);
    let err = w.run(&VMMigrationStatus::default()).await.0.unwrap_err();
    assert_eq!(
        err.to_string(),
        "target default/target (vsphere) does not import qcow2 disks (it accepts vmdk)"
    );

    // (Endpoints are judged where providers and stages connect: see the endpoint tests of
    // libvirt_provider.rs, storage_s3.rs and security.rs; the file double connects to nothing.)

    // A disk larger than the scratch space (a sparse 64 TiB qcow2).
    let w = World::one_disk(ProviderType::Libvirt);
    let big = w.source.vm_dir(SOURCE_VM).join("vda.qcow2");
    std::fs::remove_file(&big).unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", big.to_str().unwrap(), "64T"]);
    let err = w.run(&VMMigrationStatus::default()).await.0.unwrap_err();
    assert!(matches!(err, Error::NoSpace(_)), "{err}");
    assert!(
        err.to_string().contains("the largest disk needs 70.4TB"),
        "{err}"
    );
    assert_eq!(w.source.calls("snapshot"), 0);
    assert!(
        std::fs::read_dir(&w.scratch).unwrap().next().is_none(),
        "scratch left clean"
    );
}

#[tokio::test]
async fn cleanup_removes_what_an_abandoned_migration_left() {
    let mut w = World::two_disks(ProviderType::Libvirt);
    w.plan.cleanup_policy.delete_snapshot = false;
    w.target.fail("validate_vm", 1, true);
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    assert!(result.unwrap_err().is_retryable());
    let status = rec.last();
    assert!(status.target_vm_id.is_some());
    assert!(!w.stage.objects().is_empty());
    assert_eq!(w.source.read_vm(SOURCE_VM).unwrap().snapshots.len(), 1);

    runner::phases::cleanup(&w.plan, &status, &w.source, &w.target, &w.stage)
        .await
        .expect("cleanup succeeds");
    assert!(w.stage.objects().is_empty(), "{:?}", w.stage.objects());
    assert!(w.source.read_vm(SOURCE_VM).unwrap().snapshots.is_empty());
    assert!(!w.target.vm_dir(TARGET_VM).exists());
    // The source VM itself is untouched.
    assert_eq!(w.source.read_vm(SOURCE_VM).unwrap().disks.len(), 2);
}

#[tokio::test]
async fn a_target_vm_left_half_made_is_deleted_and_made_again() {
    // Attempt 1 creates the VM, then validating it fails transiently.
    let w = World::one_disk(ProviderType::Libvirt);
    w.target.fail("validate_vm", 1, true);
    let (result, rec1) = w.run(&VMMigrationStatus::default()).await;
    assert!(result.unwrap_err().is_retryable());
    // As if the runner had died while the VM was being made: recorded, never completed.
    let mut status = rec1.last();
    assert!(status.target_vm.is_some());
    status.target_vm_id = None;

    let (result, rec2) = w.run(&status).await;
    result.expect("second attempt succeeds");
    assert_eq!(
        w.target.calls("delete_vm"),
        1,
        "the half-made VM is removed"
    );
    assert_eq!(w.target.calls("create_vm"), 2, "and made again");
    let last = rec2.last();
    assert_eq!(
        last.target_vm_id.as_deref(),
        last.target_vm.as_ref().map(|v| v.id()).as_deref()
    );
}

#[tokio::test]
async fn a_recorded_target_vm_without_the_mark_is_kept_and_the_name_refused() {
    // The status names a target VM, but the VM of that name on the target is someone else's.
    let w = World::one_disk(ProviderType::Libvirt);
    let theirs = foreign_vm("theirs", Some("another-migration"));
    w.target.define_vm(TARGET_VM, &theirs, &[]).unwrap();
    let status = VMMigrationStatus {
        target_vm: Some(crd::TargetVmHandle::Libvirt {
            uuid: "theirs".into(),
            name: TARGET_VM.into(),
        }),
        ..VMMigrationStatus::default()
    };
    let (result, rec) = w.run(&status).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::NotOurs(m) if m.contains("already exists") && m.contains("id theirs")),
        "{err}"
    );
    assert_eq!(
        w.target.read_vm(TARGET_VM).unwrap(),
        theirs,
        "kept as it was"
    );
    assert_eq!(rec.last().target_vm, None, "no longer recorded as ours");
    assert_eq!(w.source.calls("snapshot"), 0, "refused in Validating");
}

/// A VM descriptor with no disks, marked by `owner` (a foreign VM when it is not the migration's).
fn foreign_vm(id: &str, owner: Option<&str>) -> VmFile {
    VmFile {
        id: id.into(),
        cpus: 1,
        memory_bytes: 1 << 30,
        uefi: false,
        running: false,
        nics: 0,
        disks: Vec::new(),
        snapshots: Vec::new(),
        networks: Vec::new(),
        owner: owner.map(str::to_string),
    }
}

#[tokio::test]
async fn a_target_vm_of_ours_the_status_lost_is_found_by_its_mark_and_made_again() {
    // A first run made the VM; its status writes were lost (a fresh, empty status next time).
    let w = World::one_disk(ProviderType::Libvirt);
    let (result, _) = w.run(&VMMigrationStatus::default()).await;
    let first = result.expect("first run succeeds");
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    let second = result.expect("the second run ends Ready too");
    assert_eq!(rec.last().phase, Some(Phase::Ready));
    assert_eq!(
        w.target.calls("delete_vm"),
        1,
        "the unrecorded VM is removed"
    );
    assert_eq!(w.target.calls("create_vm"), 2, "and made again");
    assert_eq!(
        second, first,
        "one VM of the name (the double's id is its name)"
    );
    let vm = w.target.read_vm(TARGET_VM).unwrap();
    assert_eq!(vm.owner.as_deref(), Some(w.plan.migration.uid.as_str()));
    assert_eq!(vm.disks.len(), 1, "one disk file: {:?}", vm.disks);
    assert_eq!(
        files_under(&w.target.vm_dir(TARGET_VM)).len(),
        2,
        "vm.json and the disk"
    );
}

#[tokio::test]
async fn a_recorded_target_disk_that_is_not_ours_is_refused_and_kept() {
    let w = World::one_disk(ProviderType::Libvirt);
    let theirs = w.dir.path().join("images").join("theirs-vda.qcow2");
    std::fs::copy(&w.originals[0].1, &theirs).unwrap();
    let before = std::fs::read(&theirs).unwrap();
    let status = VMMigrationStatus {
        disks: vec![crd::DiskStatus {
            name: "vda".into(),
            target_format: Some(DiskFormat::Qcow2),
            target_disk: Some(crd::TargetDiskHandle::Libvirt {
                path: theirs.to_string_lossy().into_owned(),
            }),
            ..crd::DiskStatus::default()
        }],
        ..VMMigrationStatus::default()
    };
    let (result, rec) = w.run(&status).await;
    let err = result.unwrap_err();
    assert_eq!(err.reason(), "NotOwned", "{err}");
    assert!(err.to_string().contains("theirs-vda.qcow2"), "{err}");
    assert_eq!(std::fs::read(&theirs).unwrap(), before, "kept, unchanged");
    assert_eq!(w.target.calls("create_vm"), 0);
    assert!(
        rec.last().disks.iter().all(|d| d.target_disk.is_none()),
        "forgotten"
    );

    // cleanup keeps it too
    runner::phases::cleanup(&w.plan, &status, &w.source, &w.target, &w.stage)
        .await
        .expect("what is not ours is kept, not an error");
    assert_eq!(std::fs::read(&theirs).unwrap(), before);
}

#[tokio::test]
async fn a_recorded_snapshot_that_is_not_ours_is_kept() {
    let w = World::one_disk(ProviderType::Libvirt);
    let mut vm = w.source.read_vm(SOURCE_VM).unwrap();
    vm.snapshots.push("nightly".into());
    let nightly = w.source.vm_dir(SOURCE_VM).join("snapshots").join("nightly");
    std::fs::create_dir_all(&nightly).unwrap();
    std::fs::copy(&w.originals[0].1, nightly.join("vda.qcow2")).unwrap();
    w.source.define_vm(SOURCE_VM, &vm, &[]).unwrap();
    let status = VMMigrationStatus {
        snapshot: Some(crd::SnapshotHandle::Libvirt {
            domain_uuid: vm.id.clone(),
            name: "nightly".into(),
        }),
        ..VMMigrationStatus::default()
    };
    runner::phases::cleanup(&w.plan, &status, &w.source, &w.target, &w.stage)
        .await
        .expect("what is not ours is kept, not an error");
    assert_eq!(w.source.read_vm(SOURCE_VM).unwrap().snapshots, ["nightly"]);
    assert!(nightly.join("vda.qcow2").exists());

    // a migration that fails terminally (in Validating: the target name is taken) with it
    // recorded keeps it as well, and forgets it
    w.target
        .define_vm(TARGET_VM, &foreign_vm("theirs", None), &[])
        .unwrap();
    let (result, rec) = w.run(&status).await;
    assert!(!result.unwrap_err().is_retryable());
    assert_eq!(
        w.source.calls("delete_snapshot"),
        2,
        "tried by cleanup and by the failure"
    );
    assert_eq!(w.source.read_vm(SOURCE_VM).unwrap().snapshots, ["nightly"]);
    assert!(nightly.join("vda.qcow2").exists());
    assert_eq!(rec.last().snapshot, None, "no longer recorded");
}

#[tokio::test]
async fn a_staged_url_that_is_not_this_migrations_object_is_neither_reused_nor_deleted() {
    // Attempt 1 stages vda, then the import fails transiently.
    let w = World::one_disk(ProviderType::Libvirt);
    w.target.fail("import_disk", 1, true);
    let (result, rec1) = w.run(&VMMigrationStatus::default()).await;
    assert!(result.unwrap_err().is_retryable());
    // Another migration's object, which the status now claims.
    let other = w.stage.root.join("default/other-migration/vda.qcow2");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::copy(&w.originals[0].1, &other).unwrap();
    let mut status = rec1.last();
    status.disks[0].staged_url =
        Some("nfs://nfs.local/exports/default/other-migration/vda.qcow2".into());

    let (result, _) = w.run(&status).await;
    result.expect("second attempt succeeds");
    assert_eq!(
        w.source.calls("export_disk"),
        2,
        "exported again, not reused"
    );
    assert!(
        other.exists(),
        "the other migration's object is not deleted"
    );

    runner::phases::cleanup(&w.plan, &status, &w.source, &w.target, &w.stage)
        .await
        .unwrap();
    assert!(other.exists(), "nor by cleanup");
}

#[tokio::test]
async fn a_plan_without_a_uid_is_refused_before_anything_is_touched() {
    let mut w = World::one_disk(ProviderType::Libvirt);
    w.plan.migration.uid = "--".into();
    let (result, _) = w.run(&VMMigrationStatus::default()).await;
    let err = result.unwrap_err();
    assert_eq!(err.reason(), "InvalidPlan", "{err}");
    assert_eq!(w.source.calls("check"), 0);
    let err = runner::phases::cleanup(
        &w.plan,
        &VMMigrationStatus::default(),
        &w.source,
        &w.target,
        &w.stage,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "InvalidPlan", "{err}");
}
